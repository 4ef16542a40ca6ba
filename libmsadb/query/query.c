/* query.c -- the query engine: memory attention for one memory layer.
 *
 * For every kv head the engine (1) scores the summaries of the queried
 * spaces with the group's queries, a streaming scan of the summary pages
 * straight from the memory map, split over the snapshot's scan threads;
 * (2) keeps the top-k blocks (or documents) with per-thread size-k heaps,
 * merged at the end; (3) reads and decodes the chosen blocks; (4) runs
 * exact softmax attention over their tokens in chunks, merging chunks by
 * log-sum-exp.
 *
 * All working memory lives in the snapshot's scratch slot and is only ever
 * grown, so a host that keeps one snapshot does not allocate per query once
 * the buffers have reached their working size.  The scan threads are
 * created with the scratch and live until the snapshot ends.
 *
 * Determinism: a block's identity during a scan is its position (space,
 * page, entry), and ties in score are broken by that position, so the
 * selection does not depend on how the pages were split between threads.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "query/bcache.h"
#include "query/route.h"
#include "core/kernels.h"
#include "msadb.h"
#include "store/store.h"
#include "core/util.h"

#define MAX_SCAN_THREADS 8
#define MIN_ENTRIES_PER_THREAD 8192 /* below this a second thread costs more than it saves */
#define MAX_QUERY_TOKENS 65536
/* Position-centred routing: a block's position is its first token's block
 * index in its document (the last bucket takes every later one), and a
 * bucket's mean is shrunk toward the mean of all blocks as if CENTRE_PRIOR
 * blocks scoring that mean were in it, so that a position few documents
 * reach is not centred on its own few blocks. */
#define CENTRE_BUCKETS 256
#define CENTRE_PRIOR 16.0
/* The sums are exact integers (scores in units of 2^-16, clamped to
 * +-2^20), so they do not depend on how the scan was split between threads;
 * each entry adds at most 2^36, so 2^26 blocks of a plane (4G tokens of
 * 64-token blocks) cannot overflow the total. */
#define CENTRE_ONE 65536.0
#define CENTRE_CLAMP 1048576.0

static inline int64_t centre_fixed(float s)
{
    double x = s < -CENTRE_CLAMP ? -CENTRE_CLAMP : s > CENTRE_CLAMP ? CENTRE_CLAMP : (double)s;
    return (int64_t)llrint(x * CENTRE_ONE);
}
#define CHUNK_FLOATS (1u << 21) /* scores per attention chunk: bounds the work buffer */

/* A candidate's id: view index (page of one space) and entry within it. */
#define CAND_ID(view, i) (((uint64_t)(view) << 16) | (uint64_t)(i))
#define CAND_VIEW(id) ((size_t)((id) >> 16))
#define CAND_ENTRY(id) ((uint32_t)((id) & 0xffffu))


/* A maximal run of consecutive live entries of one document, as seen by one
 * scan thread (document selection). */
typedef struct doc_run {
    uint64_t doc_id;
    uint64_t first, last; /* CAND_IDs of the run's first and last entry */
} doc_run;

/* One thread's share of a scan and its private results. */
typedef struct scan_part {
    size_t v0, v1; /* views [v0, v1) */
    float *scores; /* n_groups * page entries */
    size_t scores_cap;
    float *tmp;    /* representatives' scores before the max: n_groups * entries * 3 */
    size_t tmp_cap;
    uint32_t *idx;
    size_t idx_cap;
    msadb_topk *heaps; /* one per group */
    float *hs;
    uint64_t *hid;
    size_t heap_cap, heaps_cap;
    doc_run *runs;
    float *run_scores; /* [n_runs][n_groups] */
    size_t n_runs, runs_cap;
    uint32_t runs_g; /* groups the run_scores rows were allocated for */
    int64_t *csum;     /* position-centred routing: [n_groups][CENTRE_BUCKETS] score sums (fixed point) */
    uint64_t *ccnt;    /* [CENTRE_BUCKETS] live blocks summed */
    size_t csum_cap, ccnt_cap;
    uint64_t scanned;
    int rc;
} scan_part;

typedef struct worker {
    pthread_t th;
    struct qscratch *qs;
    int idx;
} worker;

/* A selected block, in the order hits are reported. */
typedef struct sel {
    uint64_t cand; /* CAND_ID */
    float score;
} sel;

typedef struct qscratch {
    /* scan threads */
    pthread_mutex_t mu;
    pthread_cond_t cv_go, cv_done;
    uint64_t gen;      /* bumped for every parallel scan */
    int pending, quit; /* workers still running the current scan */
    int n_threads, n_workers;
    worker workers[MAX_SCAN_THREADS];
    scan_part parts[MAX_SCAN_THREADS];

    /* the scan in progress (read by the workers) */
    const msadb_page_view *views;
    size_t n_views;
    const msadb_kq *kq;
    msadb_summ_score how;
    int doc_mode;
    uint32_t k, d;
    uint32_t n_reps; /* representatives per entry of the views scanned */
    int use_index;   /* route through the index when every page has one */
    const msadb_docmask *mask; /* documents routing must not consider, or NULL */
    int centre;       /* MSADB_SCORE_DOT_CENTRED: scores less their position's mean */
    int sum_pass;     /* the scan sums scores per position (first pass of centre) */
    uint32_t block_size;
    float *bias;      /* [n_groups][CENTRE_BUCKETS]: what centring subtracts */
    size_t bias_cap;

    /* spaces and page views of the current plane */
    uint32_t *space_ids;
    size_t space_cap, n_spaces;
    msadb_page_view *views_all, *views_tmp;
    size_t views_cap, views_tmp_cap;
    uint32_t *view_space; /* index into space_ids, per view */
    size_t view_space_cap;
    const uint32_t *vspace; /* view_space of qs->views (the plane's, or the index's sub-views') */

    /* routing index: level-1 views, chosen super-blocks, level-2 sub-views */
    msadb_page_view *coarse_views, *sub_views;
    size_t coarse_cap;
    uint32_t *sub_space;
    uint64_t *cands;
    size_t cands_cap;

    msadb_kq kqs;

    /* selection */
    sel *sels;
    size_t sels_cap;
    size_t *sel_off; /* per group: start in sels; n_groups + 1 entries */
    size_t sel_off_cap;
    float *ms;       /* merge buffers */
    uint64_t *mid;
    size_t m_cap;
    uint64_t *set_key; /* doc hash set */
    uint32_t *set_val;
    uint8_t *set_used;
    size_t set_cap;
    uint32_t *cnt;
    size_t cnt_cap;

    /* attention */
    float *Qg, *Og, *Lg; /* gathered rows of one kv head */
    size_t qg_cap, og_cap, lg_cap;
    float *Kc, *Vc, *work, *Ot;
    size_t kc_cap, work_cap, ot_cap;
    msadb_bcache cache; /* decoded blocks (bcache.h) */
    struct blk_ref *refs;
    size_t refs_cap;

    /* a selection shared by the kv heads (msadb_query.share) */
    struct rsel *rs;
    size_t rs_cap;
    size_t *rs_off; /* per group: start in rs; n_groups + 1 entries */
    size_t rs_off_cap;
} qscratch;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* ------------------------------------------------------------------------ */
/* The scan                                                                 */
/* ------------------------------------------------------------------------ */

static inline uint16_t slot_flags(const uint8_t *slots, uint32_t i)
{
    return msadb_get_le16(slots + (size_t)i * MSADB_SLOT_BYTES + 22);
}

static inline uint64_t slot_doc(const uint8_t *slots, uint32_t i)
{
    return msadb_get_le64(slots + (size_t)i * MSADB_SLOT_BYTES + 8);
}

/* Whether entry i of a slot page is out of routing: deleted, or its
 * document hidden by the query's mask (filter, expiry). */
static inline int slot_skip(const qscratch *qs, const uint8_t *slots, uint32_t i)
{
    return (slot_flags(slots, i) & MSADB_SLOT_DELETED) || msadb_docmask_hides(qs->mask, slot_doc(slots, i));
}

/* Entry i's position bucket (position-centred routing). */
static inline uint32_t centre_bucket(const qscratch *qs, const uint8_t *slots, uint32_t i)
{
    uint32_t b = msadb_get_le32(slots + (size_t)i * MSADB_SLOT_BYTES + 16) / qs->block_size;
    return b < CENTRE_BUCKETS ? b : CENTRE_BUCKETS - 1;
}

/* Scores every group of view v's n entries into scores ([group][n]), less
 * their position's mean when routing is centred (after the sum pass). */
static void score_entries(const qscratch *qs, scan_part *p, const msadb_page_view *v, float *scores)
{
    msadb_summ_score_page(qs->kq, qs->how, &v->summ, v->n, p->tmp, scores);
    if (!qs->centre || qs->sum_pass)
        return;
    uint32_t G = qs->kq->n_groups;
    for (uint32_t i = 0; i < v->n; i++) {
        uint32_t b = centre_bucket(qs, v->slots, i);
        for (uint32_t g = 0; g < G; g++)
            scores[(size_t)g * v->n + i] -= qs->bias[(size_t)g * CENTRE_BUCKETS + b];
    }
}

static void score_view(const qscratch *qs, scan_part *p, const msadb_page_view *v)
{
    score_entries(qs, p, v, p->scores);
}

/* The sum pass of centred routing: per group and position bucket, the sum
 * of the live entries' scores, and their count per bucket. */
static int sum_positions(qscratch *qs, scan_part *p)
{
    uint32_t G = qs->kq->n_groups;
    memset(p->csum, 0, (size_t)G * CENTRE_BUCKETS * sizeof *p->csum);
    memset(p->ccnt, 0, CENTRE_BUCKETS * sizeof *p->ccnt);
    for (size_t vi = p->v0; vi < p->v1; vi++) {
        const msadb_page_view *v = &qs->views[vi];
        score_view(qs, p, v);
        for (uint32_t i = 0; i < v->n; i++) {
            if (slot_skip(qs, v->slots, i))
                continue;
            uint32_t b = centre_bucket(qs, v->slots, i);
            p->ccnt[b]++;
            for (uint32_t g = 0; g < G; g++)
                p->csum[(size_t)g * CENTRE_BUCKETS + b] += centre_fixed(p->scores[(size_t)g * v->n + i]);
        }
    }
    return 0;
}

/* Block selection over views [p->v0, p->v1): per group, a heap of the k
 * best live entries.  Only entries that reach the heap's threshold are
 * looked up in the slot page, so deleted flags cost nothing in the common
 * case. */
static int scan_blocks(qscratch *qs, scan_part *p)
{
    uint32_t G = qs->kq->n_groups;
    for (size_t vi = p->v0; vi < p->v1; vi++) {
        const msadb_page_view *v = &qs->views[vi];
        score_view(qs, p, v);
        p->scanned += v->n;
        for (uint32_t g = 0; g < G; g++) {
            msadb_topk *h = &p->heaps[g];
            const float *s = p->scores + (size_t)g * v->n;
            size_t c = msadb_k_select_ge(s, v->n, msadb_topk_threshold(h), p->idx);
            for (size_t j = 0; j < c; j++) {
                uint32_t i = p->idx[j];
                if (v->slots && slot_skip(qs, v->slots, i))
                    continue; /* coarse views have no slots: nothing masked */
                msadb_topk_offer(h, s[i], CAND_ID(vi, i));
            }
        }
    }
    return 0;
}

/* Grows a part's run arrays together (runs and their G scores each). */
static int grow_runs(scan_part *p, uint32_t G)
{
    msadb_array a[] = {{&p->runs, sizeof *p->runs}, {&p->run_scores, G * sizeof(float)}};
    return msadb_grow_arrays(a, 2, &p->runs_cap, p->runs_cap + 1, 1024, 0);
}

/* Document selection: per group, the max score of every run of a
 * document's consecutive live entries. */
static int scan_docs(qscratch *qs, scan_part *p)
{
    uint32_t G = qs->kq->n_groups;
    int open = 0;
    for (size_t vi = p->v0; vi < p->v1; vi++) {
        const msadb_page_view *v = &qs->views[vi];
        score_view(qs, p, v);
        p->scanned += v->n;
        for (uint32_t i = 0; i < v->n; i++) {
            if (slot_skip(qs, v->slots, i)) {
                open = 0;
                continue;
            }
            uint64_t doc = slot_doc(v->slots, i);
            if (!open || p->runs[p->n_runs - 1].doc_id != doc) {
                if (p->n_runs == p->runs_cap && grow_runs(p, G))
                    return MSADB_ENOMEM;
                doc_run *r = &p->runs[p->n_runs++];
                r->doc_id = doc;
                r->first = CAND_ID(vi, i);
                for (uint32_t g = 0; g < G; g++)
                    p->run_scores[(p->n_runs - 1) * G + g] = -INFINITY;
                open = 1;
            }
            doc_run *r = &p->runs[p->n_runs - 1];
            r->last = CAND_ID(vi, i);
            float *rs = p->run_scores + (p->n_runs - 1) * G;
            for (uint32_t g = 0; g < G; g++) {
                float s = p->scores[(size_t)g * v->n + i];
                rs[g] = s > rs[g] ? s : rs[g];
            }
        }
    }
    return 0;
}

static void run_part(qscratch *qs, scan_part *p)
{
    p->scanned = 0;
    p->n_runs = 0;
    p->rc = qs->sum_pass ? sum_positions(qs, p) : qs->doc_mode ? scan_docs(qs, p) : scan_blocks(qs, p);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    qscratch *qs = w->qs;
    uint64_t seen = 0;
    pthread_mutex_lock(&qs->mu);
    for (;;) {
        while (!qs->quit && qs->gen == seen)
            pthread_cond_wait(&qs->cv_go, &qs->mu);
        if (qs->quit)
            break;
        seen = qs->gen;
        int active = w->idx < qs->n_threads;
        pthread_mutex_unlock(&qs->mu);
        if (active)
            run_part(qs, &qs->parts[w->idx]);
        pthread_mutex_lock(&qs->mu);
        if (--qs->pending == 0)
            pthread_cond_signal(&qs->cv_done);
    }
    pthread_mutex_unlock(&qs->mu);
    return NULL;
}

static void scratch_destroy(void *ptr)
{
    qscratch *qs = ptr;
    if (!qs)
        return;
    if (qs->n_workers > 0) {
        pthread_mutex_lock(&qs->mu);
        qs->quit = 1;
        pthread_cond_broadcast(&qs->cv_go);
        pthread_mutex_unlock(&qs->mu);
        for (int i = 1; i <= qs->n_workers; i++)
            pthread_join(qs->workers[i].th, NULL);
    }
    pthread_mutex_destroy(&qs->mu);
    pthread_cond_destroy(&qs->cv_go);
    pthread_cond_destroy(&qs->cv_done);
    for (int i = 0; i < MAX_SCAN_THREADS; i++) {
        scan_part *p = &qs->parts[i];
        free(p->scores);
        free(p->tmp);
        free(p->idx);
        free(p->heaps);
        free(p->hs);
        free(p->hid);
        free(p->runs);
        free(p->run_scores);
        free(p->csum);
        free(p->ccnt);
    }
    msadb_kq_free(&qs->kqs);
    free(qs->bias);
    free(qs->space_ids);
    free(qs->views_all);
    free(qs->views_tmp);
    free(qs->view_space);
    free(qs->coarse_views);
    free(qs->sub_views);
    free(qs->sub_space);
    free(qs->cands);
    free(qs->sels);
    free(qs->sel_off);
    free(qs->ms);
    free(qs->mid);
    free(qs->set_key);
    free(qs->set_val);
    free(qs->set_used);
    free(qs->cnt);
    msadb_afree(qs->Qg);
    free(qs->Og);
    free(qs->Lg);
    msadb_afree(qs->Kc);
    msadb_afree(qs->Vc);
    msadb_afree(qs->work);
    free(qs->Ot);
    msadb_bcache_free(&qs->cache);
    free(qs->refs);
    free(qs->rs);
    free(qs->rs_off);
    free(qs);
}

/* Decoded-block cache size: MSADB_BLOCK_CACHE_MB, else 32 MiB (about 500
 * blocks of 64 tokens at head dim 128: the working set of a few layers'
 * top-16 selections for several kv heads). */
static size_t cache_bytes(void)
{
    const char *e = getenv("MSADB_BLOCK_CACHE_MB");
    long mb = e && *e ? strtol(e, NULL, 10) : 32;
    return (size_t)(mb < 0 ? 0 : mb) << 20;
}

/* Scan threads: MSADB_SCAN_THREADS, else the online CPUs (at most 8). */
static int thread_count(void) { return msadb_env_threads("MSADB_SCAN_THREADS", MAX_SCAN_THREADS); }

static int scratch_get(msadb_snapshot *snap, qscratch **out)
{
    qscratch *qs = msadb_snap_scratch(snap);
    if (qs) {
        *out = qs;
        return 0;
    }
    qs = calloc(1, sizeof *qs);
    if (!qs)
        return MSADB_ENOMEM;
    const msadb_signature *sig = msadb_snap_signature(snap);
    if (msadb_bcache_init(&qs->cache, cache_bytes(), sig->block_size, sig->head_dim)) {
        free(qs);
        return MSADB_ENOMEM;
    }
    pthread_mutex_init(&qs->mu, NULL);
    pthread_cond_init(&qs->cv_go, NULL);
    pthread_cond_init(&qs->cv_done, NULL);
    int want = thread_count();
    for (int i = 1; i < want; i++) {
        qs->workers[i].qs = qs;
        qs->workers[i].idx = i;
        if (pthread_create(&qs->workers[i].th, NULL, worker_main, &qs->workers[i]))
            break; /* fewer threads is still correct */
        qs->n_workers = i;
    }
    msadb_snap_set_scratch(snap, qs, scratch_destroy);
    *out = qs;
    return 0;
}

/* Prepares part p's buffers for a scan with page_max entries per page. */
static int part_prepare(qscratch *qs, scan_part *p, size_t page_max)
{
    uint32_t G = qs->kq->n_groups;
    if (msadb_grow(&p->scores, &p->scores_cap, page_max * G, sizeof(float), 16) ||
        msadb_grow(&p->idx, &p->idx_cap, page_max, sizeof(uint32_t), 16))
        return MSADB_ENOMEM;
    if (qs->how == MSADB_SUMM_SCORE_REPS &&
        msadb_grow(&p->tmp, &p->tmp_cap, page_max * G * qs->n_reps, sizeof(float), 16))
        return MSADB_ENOMEM;
    if (qs->centre && (msadb_grow(&p->csum, &p->csum_cap, (size_t)G * CENTRE_BUCKETS, sizeof(int64_t), 16) ||
                       msadb_grow(&p->ccnt, &p->ccnt_cap, CENTRE_BUCKETS, sizeof(uint64_t), 16)))
        return MSADB_ENOMEM;
    if (!qs->doc_mode) {
        size_t hn = (size_t)G * qs->k, hc = p->heap_cap;
        if (msadb_grow(&p->hs, &hc, hn, sizeof(float), 16))
            return MSADB_ENOMEM;
        hc = p->heap_cap;
        if (msadb_grow(&p->hid, &hc, hn, sizeof(uint64_t), 16))
            return MSADB_ENOMEM;
        p->heap_cap = hc;
        if (msadb_grow(&p->heaps, &p->heaps_cap, G, sizeof(msadb_topk), 16))
            return MSADB_ENOMEM;
        for (uint32_t g = 0; g < G; g++)
            msadb_topk_reset(&p->heaps[g], p->hs + (size_t)g * qs->k, p->hid + (size_t)g * qs->k, qs->k);
    }
    if (qs->doc_mode && G > p->runs_g) {
        /* run scores are laid out by G: start over with the wider layout */
        free(p->runs);
        free(p->run_scores);
        p->runs = NULL;
        p->run_scores = NULL;
        p->runs_cap = 0;
        p->runs_g = G;
    }
    p->rc = 0;
    return 0;
}

/* Runs run_part on parts [0, nt): part 0 here, the others on the workers. */
static void run_parts(qscratch *qs, int nt)
{
    if (nt > 1) {
        pthread_mutex_lock(&qs->mu);
        qs->n_threads = nt;
        qs->pending = qs->n_workers;
        qs->gen++;
        pthread_cond_broadcast(&qs->cv_go);
        pthread_mutex_unlock(&qs->mu);
    }
    run_part(qs, &qs->parts[0]);
    if (nt > 1) {
        pthread_mutex_lock(&qs->mu);
        while (qs->pending > 0)
            pthread_cond_wait(&qs->cv_done, &qs->mu);
        pthread_mutex_unlock(&qs->mu);
    }
    qs->n_threads = nt;
}

/* Centred routing's first pass: every part's position sums, merged into
 * qs->bias (per group and bucket, the bucket's shrunk mean score). */
static int centre_positions(qscratch *qs, int nt)
{
    uint32_t G = qs->kq->n_groups;
    if (msadb_grow(&qs->bias, &qs->bias_cap, (size_t)G * CENTRE_BUCKETS, sizeof(float), 16))
        return MSADB_ENOMEM;
    qs->sum_pass = 1;
    run_parts(qs, nt);
    qs->sum_pass = 0;
    for (int t = 0; t < nt; t++)
        if (qs->parts[t].rc)
            return qs->parts[t].rc;
    uint64_t cnt[CENTRE_BUCKETS] = {0}, all = 0;
    for (int t = 0; t < nt; t++)
        for (uint32_t b = 0; b < CENTRE_BUCKETS; b++)
            cnt[b] += qs->parts[t].ccnt[b];
    for (uint32_t b = 0; b < CENTRE_BUCKETS; b++)
        all += cnt[b];
    for (uint32_t g = 0; g < G; g++) {
        int64_t sum[CENTRE_BUCKETS] = {0}, total = 0;
        for (int t = 0; t < nt; t++)
            for (uint32_t b = 0; b < CENTRE_BUCKETS; b++)
                sum[b] += qs->parts[t].csum[(size_t)g * CENTRE_BUCKETS + b];
        for (uint32_t b = 0; b < CENTRE_BUCKETS; b++)
            total += sum[b];
        double mean = all ? (double)total / CENTRE_ONE / (double)all : 0.0;
        for (uint32_t b = 0; b < CENTRE_BUCKETS; b++)
            qs->bias[(size_t)g * CENTRE_BUCKETS + b] =
                (float)(((double)sum[b] / CENTRE_ONE + CENTRE_PRIOR * mean) / ((double)cnt[b] + CENTRE_PRIOR));
    }
    return 0;
}

/* Runs the scan of all views on up to n_threads threads (centred routing:
 * a sum pass first). */
static int scan_all(qscratch *qs, uint64_t *scanned)
{
    size_t total = 0, page_max = 0;
    for (size_t i = 0; i < qs->n_views; i++) {
        total += qs->views[i].n;
        page_max = qs->views[i].n > page_max ? qs->views[i].n : page_max;
    }
    int nt = 1 + qs->n_workers;
    while (nt > 1 && total / (size_t)nt < MIN_ENTRIES_PER_THREAD)
        nt--;
    /* split the views into nt runs of about equal entry counts */
    size_t acc = 0, v = 0;
    for (int t = 0; t < nt; t++) {
        scan_part *p = &qs->parts[t];
        p->v0 = v;
        size_t goal = total * (size_t)(t + 1) / (size_t)nt;
        while (v < qs->n_views && (t == nt - 1 || acc + qs->views[v].n / 2 < goal))
            acc += qs->views[v++].n;
        p->v1 = v;
        int rc = part_prepare(qs, p, page_max);
        if (rc)
            return rc;
    }
    int rc = qs->centre ? centre_positions(qs, nt) : 0;
    if (rc)
        return rc;
    run_parts(qs, nt);
    for (int t = 0; t < nt; t++) {
        if (qs->parts[t].rc)
            return qs->parts[t].rc;
        *scanned += qs->parts[t].scanned;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Selection                                                                */
/* ------------------------------------------------------------------------ */

static int add_sel(qscratch *qs, size_t *n, uint64_t cand, float score)
{
    if (msadb_grow(&qs->sels, &qs->sels_cap, *n + 1, sizeof(sel), 16))
        return MSADB_ENOMEM;
    qs->sels[*n].cand = cand;
    qs->sels[*n].score = score;
    (*n)++;
    return 0;
}

/* Grows the merge buffers (scores and ids) together. */
static int grow_merge(qscratch *qs, size_t n)
{
    msadb_array a[] = {{&qs->ms, sizeof(float)}, {&qs->mid, sizeof(uint64_t)}};
    return msadb_grow_arrays(a, 2, &qs->m_cap, n, 64, 0);
}

/* Block mode: merge the threads' heaps of group g into the best k. */
static int select_blocks(qscratch *qs, uint32_t g, size_t *n)
{
    size_t m = 0;
    for (int t = 0; t < qs->n_threads; t++)
        m += qs->parts[t].heaps[g].n;
    if (grow_merge(qs, m))
        return MSADB_ENOMEM;
    m = 0;
    for (int t = 0; t < qs->n_threads; t++) {
        const msadb_topk *h = &qs->parts[t].heaps[g];
        if (h->n == 0) /* empty memory: the merge buffers may not exist yet */
            continue;
        memcpy(qs->ms + m, h->score, h->n * sizeof(float));
        memcpy(qs->mid + m, h->id, h->n * sizeof(uint64_t));
        m += h->n;
    }
    size_t k = m < qs->k ? m : qs->k;
    msadb_k_topk_array(qs->ms, qs->mid, m, k);
    for (size_t i = 0; i < k; i++)
        if (add_sel(qs, n, qs->mid[i], qs->ms[i]))
            return MSADB_ENOMEM;
    return 0;
}

/* Open-addressing set of chosen documents: doc id -> rank. */
static int set_init(qscratch *qs, size_t k)
{
    size_t cap = 16;
    while (cap < 2 * k)
        cap *= 2;
    if (cap > qs->set_cap) {
        uint64_t *key = realloc(qs->set_key, cap * sizeof(uint64_t));
        if (!key)
            return MSADB_ENOMEM;
        qs->set_key = key;
        uint32_t *val = realloc(qs->set_val, cap * sizeof(uint32_t));
        if (!val)
            return MSADB_ENOMEM;
        qs->set_val = val;
        uint8_t *used = realloc(qs->set_used, cap);
        if (!used)
            return MSADB_ENOMEM;
        qs->set_used = used;
        qs->set_cap = cap;
    }
    memset(qs->set_used, 0, qs->set_cap);
    return 0;
}

static size_t set_slot(const qscratch *qs, uint64_t key)
{
    size_t mask = qs->set_cap - 1, h = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 17) & mask;
    while (qs->set_used[h] && qs->set_key[h] != key)
        h = (h + 1) & mask;
    return h;
}

/* The best k documents of group g by their best run: each chosen
 * document's rank goes to the set (set_val); returns how many were chosen,
 * or -1 out of memory. */
static long choose_docs(qscratch *qs, uint32_t g, size_t nr)
{
    uint32_t G = qs->kq->n_groups;
    if (grow_merge(qs, nr) || set_init(qs, qs->k))
        return -1;
    /* run ids: thread in the top bits, run index below */
    size_t m = qs->k < nr ? qs->k : nr, chosen = 0;
    for (;;) {
        size_t j = 0;
        for (int t = 0; t < qs->n_threads; t++)
            for (size_t r = 0; r < qs->parts[t].n_runs; r++, j++) {
                qs->ms[j] = qs->parts[t].run_scores[r * G + g];
                qs->mid[j] = ((uint64_t)t << 56) | r;
            }
        msadb_k_topk_array(qs->ms, qs->mid, nr, m);
        memset(qs->set_used, 0, qs->set_cap);
        chosen = 0;
        for (size_t i = 0; i < m && chosen < qs->k; i++) {
            const doc_run *r = &qs->parts[qs->mid[i] >> 56].runs[qs->mid[i] & ((1ull << 56) - 1)];
            size_t h = set_slot(qs, r->doc_id);
            if (qs->set_used[h])
                continue;
            qs->set_used[h] = 1;
            qs->set_key[h] = r->doc_id;
            qs->set_val[h] = (uint32_t)chosen++;
        }
        if (chosen == qs->k || m == nr)
            return (long)chosen;
        m = 2 * m < nr ? 2 * m : nr;
    }
}

/* The entries of a run (runs may cross page boundaries): written to out
 * from *pos on when out is not NULL; returns their count. */
static size_t run_entries(const qscratch *qs, const doc_run *dr, sel *out, uint32_t *pos)
{
    size_t len = 0;
    for (uint64_t c = dr->first;;) {
        size_t vi = CAND_VIEW(c);
        uint32_t i = CAND_ENTRY(c);
        uint32_t end = CAND_VIEW(dr->last) == vi ? CAND_ENTRY(dr->last) + 1 : qs->views[vi].n;
        len += end - i;
        for (; out && i < end; i++) {
            out[*pos].cand = CAND_ID(vi, i);
            out[*pos].score = NAN; /* the routing score is filled in later */
            (*pos)++;
        }
        if (CAND_VIEW(dr->last) == vi)
            return len;
        c = CAND_ID(vi + 1, 0);
    }
}

/* The chosen run of a thread's run r, or NULL when its document was not
 * chosen. */
static const doc_run *chosen_run(qscratch *qs, int t, size_t r, size_t *h)
{
    const doc_run *dr = &qs->parts[t].runs[r];
    *h = set_slot(qs, dr->doc_id);
    return qs->set_used[*h] ? dr : NULL;
}

/* Places every block of the chosen documents at base, rank by rank (a
 * document's blocks in storage order); *total gets their count. */
static int place_doc_blocks(qscratch *qs, size_t chosen, size_t at, size_t *total)
{
    if (msadb_grow(&qs->cnt, &qs->cnt_cap, chosen + 1, sizeof(uint32_t), 16))
        return MSADB_ENOMEM;
    memset(qs->cnt, 0, (chosen + 1) * sizeof(uint32_t));
    size_t h, sum = 0;
    for (int t = 0; t < qs->n_threads; t++)
        for (size_t r = 0; r < qs->parts[t].n_runs; r++) {
            const doc_run *dr = chosen_run(qs, t, r, &h);
            if (!dr)
                continue;
            size_t len = run_entries(qs, dr, NULL, NULL);
            qs->cnt[qs->set_val[h] + 1] += (uint32_t)len;
            sum += len;
        }
    for (size_t i = 1; i <= chosen; i++)
        qs->cnt[i] += qs->cnt[i - 1];
    if (msadb_grow(&qs->sels, &qs->sels_cap, at + sum, sizeof(sel), 16))
        return MSADB_ENOMEM;
    for (int t = 0; t < qs->n_threads; t++)
        for (size_t r = 0; r < qs->parts[t].n_runs; r++) {
            const doc_run *dr = chosen_run(qs, t, r, &h);
            if (dr)
                run_entries(qs, dr, qs->sels + at, &qs->cnt[qs->set_val[h]]);
        }
    *total = sum;
    return 0;
}

/* Document mode for group g: documents ranked by their best run (a
 * document split into several runs appears once, with its best run's
 * score, because runs are visited best first); then every live block of the
 * k best documents, documents best first, blocks in storage order. */
static int select_docs(qscratch *qs, uint32_t g, size_t *n)
{
    size_t nr = 0, total = 0;
    for (int t = 0; t < qs->n_threads; t++)
        nr += qs->parts[t].n_runs;
    if (nr == 0)
        return 0;
    long chosen = choose_docs(qs, g, nr);
    if (chosen < 0)
        return MSADB_ENOMEM;
    int rc = place_doc_blocks(qs, (size_t)chosen, *n, &total);
    if (rc)
        return rc;
    sel *base = qs->sels + *n;
    for (size_t i = 0; i < total; i++) {
        const msadb_page_view *v = &qs->views[CAND_VIEW(base[i].cand)];
        uint32_t e = CAND_ENTRY(base[i].cand);
        msadb_page_view pv = *v;
        pv.n = 1;
        pv.slots = v->slots + (size_t)e * MSADB_SLOT_BYTES;
        msadb_summ_view_from(&v->summ, qs->d, e, &pv.summ);
        /* scores every group of this one entry (parts[0] holds room for
         * page_max entries); keep group g's */
        score_view(qs, &qs->parts[0], &pv);
        base[i].score = qs->parts[0].scores[g];
    }
    *n += total;
    return 0;
}

/* Exact mode: every live block, in storage order. */
static int select_all(qscratch *qs, size_t *n)
{
    for (size_t vi = 0; vi < qs->n_views; vi++) {
        const msadb_page_view *v = &qs->views[vi];
        for (uint32_t i = 0; i < v->n; i++)
            if (!slot_skip(qs, v->slots, i))
                if (add_sel(qs, n, CAND_ID(vi, i), 0.0f))
                    return MSADB_ENOMEM;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Reading and attention                                                    */
/* ------------------------------------------------------------------------ */

typedef struct attend_ctx {
    msadb_snapshot *snap;
    const msadb_signature *sig;
    uint32_t plane, d;
    float scale;
    msadb_query_stats *st;
} attend_ctx;

/* Grows the gathered K and V chunk buffers together. */
static int grow_kv(qscratch *qs, size_t n)
{
    msadb_array a[] = {{&qs->Kc, sizeof(float)}, {&qs->Vc, sizeof(float)}};
    return msadb_grow_arrays(a, 2, &qs->kc_cap, n, 4096, 1);
}

/* A block to attend: where it is and how many tokens it must hold (0: as
 * many as it has). */
typedef struct blk_ref {
    uint64_t block_id;
    uint32_t space_id;
    uint32_t n_tok;
} blk_ref;

/* Exact attention of rows Q[nr][d] over the tokens of blocks b[0,nb), in
 * chunks of whole blocks merged by log-sum-exp, into O[nr][d], L[nr]. */
static int attend_refs(qscratch *qs, const attend_ctx *a, const blk_ref *b, size_t nb, const float *Q,
                       uint32_t nr, float *O, float *L)
{
    uint32_t d = a->d, bs = a->sig->block_size;
    size_t chunk = CHUNK_FLOATS / nr;
    chunk = chunk < bs ? bs : chunk - chunk % bs;
    size_t need_tok = nb * (size_t)bs < chunk ? nb * (size_t)bs : chunk;
    if (need_tok == 0)
        need_tok = bs;
    if (grow_kv(qs, need_tok * d))
        return MSADB_ENOMEM;
    if (msadb_grow_scratch(&qs->work, &qs->work_cap, need_tok * nr, sizeof(float), 1024))
        return MSADB_ENOMEM;
    if (msadb_grow(&qs->Ot, &qs->ot_cap, (size_t)nr * d + nr, sizeof(float), 16))
        return MSADB_ENOMEM;
    float *Ot = qs->Ot, *Lt = qs->Ot + (size_t)nr * d;
    size_t T = 0;
    int have = 0;
    double t_read = 0, t_att = 0;
    for (size_t s = 0; s <= nb; s++) {
        if (s == nb || T + bs > need_tok) {
            if (T == 0 && s == nb)
                break;
            double t0 = now_ms();
            if (!have) {
                msadb_k_attend(Q, nr, qs->Kc, qs->Vc, T, d, a->scale, qs->work, O, L);
                have = 1;
            } else {
                msadb_k_attend(Q, nr, qs->Kc, qs->Vc, T, d, a->scale, qs->work, Ot, Lt);
                msadb_k_lse_merge(nr, d, O, L, Ot, Lt, O, L);
            }
            t_att += now_ms() - t0;
            if (a->st)
                a->st->tokens_attended += T;
            T = 0;
            if (s == nb)
                break;
        }
        double t0 = now_ms();
        uint32_t n_tok = 0;
        const float *bk, *bv;
        int rc = msadb_bcache_get(&qs->cache, a->snap, b[s].space_id, b[s].block_id, a->plane, &bk, &bv, &n_tok);
        if (rc)
            return rc;
        if ((b[s].n_tok && n_tok != b[s].n_tok) || n_tok > bs)
            return MSADB_ECORRUPT;
        memcpy(qs->Kc + T * d, bk, (size_t)n_tok * d * sizeof(float));
        memcpy(qs->Vc + T * d, bv, (size_t)n_tok * d * sizeof(float));
        T += n_tok;
        t_read += now_ms() - t0;
        if (a->st)
            a->st->blocks_read++;
    }
    if (!have)
        msadb_k_attend(Q, nr, NULL, NULL, 0, d, a->scale, NULL, O, L);
    if (a->st) {
        a->st->read_ms += t_read;
        a->st->attend_ms += t_att;
    }
    return 0;
}

/* The blocks of selected entries sels[0,ns) of the current views, into
 * qs->refs. */
static int sels_to_refs(qscratch *qs, const sel *sels, size_t ns)
{
    if (msadb_grow(&qs->refs, &qs->refs_cap, ns + 1, sizeof(blk_ref), 16))
        return MSADB_ENOMEM;
    for (size_t s = 0; s < ns; s++) {
        const msadb_page_view *v = &qs->views[CAND_VIEW(sels[s].cand)];
        msadb_slot sl;
        msadb_slot_at(v->slots, CAND_ENTRY(sels[s].cand), &sl);
        qs->refs[s] = (blk_ref){sl.block_id, qs->space_ids[qs->vspace[CAND_VIEW(sels[s].cand)]], sl.n_tok};
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Entry points                                                             */
/* ------------------------------------------------------------------------ */

void msadb_query_init(msadb_query *q)
{
    if (!q)
        return;
    memset(q, 0, sizeof *q);
    q->top_k = 16;
    q->select = MSADB_SELECT_BLOCKS;
}

void msadb_lse_merge(size_t n, size_t d, const float *o1, const float *l1, const float *o2,
                     const float *l2, float *out, float *lse_out)
{
    if (!o1 || !l1 || !o2 || !l2 || !out || !lse_out)
        return;
    msadb_k_lse_merge(n, d, o1, l1, o2, l2, out, lse_out);
}

/* Resolves the query's spaces into qs->space_ids (deduplicated). */
static int resolve_spaces(msadb_snapshot *snap, qscratch *qs, const msadb_query *q)
{
    int rc;
    qs->n_spaces = 0;
    if (q->n_spaces == 0) {
        size_t n = 0;
        if ((rc = msadb_snap_space_ids(snap, NULL, 0, &n)) && rc != MSADB_ELIMIT)
            return rc;
        if (msadb_grow(&qs->space_ids, &qs->space_cap, n ? n : 1, sizeof(uint32_t), 16))
            return MSADB_ENOMEM;
        if ((rc = msadb_snap_space_ids(snap, qs->space_ids, qs->space_cap, &n)))
            return rc;
        qs->n_spaces = n;
        return 0;
    }
    if (msadb_grow(&qs->space_ids, &qs->space_cap, q->n_spaces, sizeof(uint32_t), 16))
        return MSADB_ENOMEM;
    for (size_t i = 0; i < q->n_spaces; i++) {
        uint32_t id;
        if ((rc = msadb_snap_space_id(snap, q->spaces[i], &id)))
            return rc;
        size_t j = 0;
        while (j < qs->n_spaces && qs->space_ids[j] != id)
            j++;
        if (j == qs->n_spaces)
            qs->space_ids[qs->n_spaces++] = id;
    }
    return 0;
}

/* Collects the page views of every queried space for one plane. */
static int collect_views(msadb_snapshot *snap, qscratch *qs, uint32_t plane)
{
    qs->n_views = 0;
    for (size_t s = 0; s < qs->n_spaces; s++) {
        size_t n = 0;
        int rc = msadb_snap_pages(snap, qs->space_ids[s], plane, &qs->views_tmp, &n, &qs->views_tmp_cap);
        if (rc)
            return rc;
        if (msadb_grow(&qs->views_all, &qs->views_cap, qs->n_views + n, sizeof(msadb_page_view), 16) ||
            msadb_grow(&qs->view_space, &qs->view_space_cap, qs->n_views + n, sizeof(uint32_t), 16))
            return MSADB_ENOMEM;
        for (size_t i = 0; i < n; i++) {
            if (qs->views_tmp[i].n == 0 || qs->views_tmp[i].n > 65536)
                return MSADB_ECORRUPT;
            qs->views_all[qs->n_views + i] = qs->views_tmp[i];
            qs->view_space[qs->n_views + i] = (uint32_t)s;
        }
        qs->n_views += n;
    }
    if (qs->n_views >= (1ull << 47))
        return MSADB_ELIMIT;
    qs->views = qs->views_all;
    qs->vspace = qs->view_space;
    return 0;
}

static int validate(msadb_snapshot *snap, const msadb_query *q, const msadb_signature **sig_out,
                    int *mem_index, uint32_t *kind)
{
    if (!snap || !q || !q->q || q->n_query == 0)
        return MSADB_EINVAL;
    const msadb_signature *sig = msadb_snap_signature(snap);
    if (!sig)
        return MSADB_EINVAL;
    int mi = msadb_signature_memory_index(sig, q->layer);
    if (mi < 0)
        return MSADB_EINVAL;
    if (q->n_query > MAX_QUERY_TOKENS)
        return MSADB_ELIMIT;
    if (q->select != MSADB_SELECT_BLOCKS && q->select != MSADB_SELECT_DOCUMENTS)
        return MSADB_EINVAL;
    if (!q->exact && (q->top_k == 0 || q->top_k > MSADB_MAX_TOP_K))
        return q->top_k == 0 ? MSADB_EINVAL : MSADB_ELIMIT;
    if (!(q->scale >= 0.0f) || isinf(q->scale))
        return MSADB_EINVAL;
    if (!msadb_score_valid(q->score))
        return MSADB_EINVAL;
    if (q->route != MSADB_ROUTE_DEFAULT && q->route != MSADB_ROUTE_SCAN && q->route != MSADB_ROUTE_INDEX)
        return MSADB_EINVAL;
    if (q->route_candidates > MSADB_MAX_TOP_K)
        return MSADB_ELIMIT;
    if (q->share != MSADB_SHARE_NONE && q->share != MSADB_SHARE_HEADS && q->share != MSADB_SHARE_ROUTE_HEAD)
        return MSADB_EINVAL;
    if (q->share == MSADB_SHARE_ROUTE_HEAD ? q->route_head >= sig->n_kv_heads : q->route_head != 0)
        return MSADB_EINVAL;
    if ((q->n_spaces > 0 && !q->spaces) || (q->n_where > 0 && !q->where))
        return MSADB_EINVAL;
    for (size_t i = 0; i < q->n_spaces; i++)
        if (!q->spaces[i])
            return MSADB_EINVAL;
    /* Default routing: representatives when stored (they find short needles
     * that a mean averages away), else the mean, else the Quest bound. */
    uint32_t sk = q->summary;
    if (sk == 0)
        sk = (sig->summary_kinds & MSADB_SUMMARY_REPS)   ? MSADB_SUMMARY_REPS
             : (sig->summary_kinds & MSADB_SUMMARY_MEAN) ? MSADB_SUMMARY_MEAN
                                                         : MSADB_SUMMARY_MINMAX;
    if (!msadb_summary_is_one(sk) || !(sig->summary_kinds & sk))
        return MSADB_EINVAL;
    size_t nv = q->n_query * (size_t)sig->n_q_heads * sig->head_dim;
    for (size_t i = 0; i < nv; i++)
        if (!isfinite(q->q[i]))
            return MSADB_ENONFINITE;
    *sig_out = sig;
    *mem_index = mi;
    *kind = sk;
    return 0;
}

/* Scoring of the mean summary: cosine of q with the block's mean key (as in
 * MSA), which found 16-token needles in 91% of the queries where the plain
 * dot product found 70% at 10M tokens, for the same scan time (see
 * docs/benchmarks-query.md).  MSADB_MEAN_SCORE=dot (or dot-centred) selects
 * q . mean (or its position-centred form) where the query leaves the score
 * to the engine (msadb_query.score), for comparisons. */
static int mean_score(int score)
{
    if (score != MSADB_SCORE_DEFAULT)
        return score;
    const char *e = getenv("MSADB_MEAN_SCORE");
    if (e && strcmp(e, "dot-centred") == 0)
        return MSADB_SCORE_DOT_CENTRED;
    return e && strcmp(e, "dot") == 0 ? MSADB_SCORE_DOT : MSADB_SCORE_COSINE;
}

static void emit_hits(qscratch *qs, const sel *s, size_t ns, uint32_t kv_head, uint32_t query,
                      float scale, msadb_hit *hits, size_t hits_cap, size_t *n_hits)
{
    for (size_t i = 0; i < ns; i++, (*n_hits)++) {
        if (!hits || *n_hits >= hits_cap)
            continue;
        const msadb_page_view *v = &qs->views[CAND_VIEW(s[i].cand)];
        msadb_slot sl;
        msadb_slot_at(v->slots, CAND_ENTRY(s[i].cand), &sl);
        msadb_hit *h = &hits[*n_hits];
        h->kv_head = kv_head;
        h->query = query;
        h->doc_id = sl.doc_id;
        h->block_id = sl.block_id;
        h->token_start = sl.tok_start;
        h->token_end = sl.tok_start + sl.n_tok;
        h->score = s[i].score * scale;
    }
}

/* What one query needs for every kv head. */
typedef struct qplan {
    uint32_t d, nkv, nqh, G, n_groups, n_cand;
    size_t nq, nrows;
    float scale, hit_scale;
    int per_token, mem_index;
} qplan;

#define DEFAULT_ROUTE_CANDIDATES 64

/* Validates the query, gets the scratch and sizes its per-query buffers. */
static int plan_query(msadb_snapshot *snap, const msadb_query *q, int attend, qscratch **qs_out, qplan *P)
{
    const msadb_signature *sig;
    uint32_t skind;
    int rc;
    if ((rc = validate(snap, q, &sig, &P->mem_index, &skind)))
        return rc;
    qscratch *qs;
    if ((rc = scratch_get(snap, &qs)) || (rc = resolve_spaces(snap, qs, q)) ||
        (rc = msadb_snap_mask(snap, q->where, q->n_where, &qs->mask)))
        return rc;
    P->d = sig->head_dim;
    P->nkv = sig->n_kv_heads;
    P->nqh = sig->n_q_heads;
    P->G = P->nqh / P->nkv;
    P->nq = q->n_query;
    P->nrows = P->nq * P->G;
    P->scale = q->scale > 0.0f ? q->scale : 1.0f / sqrtf((float)P->d);
    P->per_token = q->per_token && !q->exact;
    P->n_groups = P->per_token ? (uint32_t)P->nq : 1;
    P->n_cand = q->route_candidates ? q->route_candidates : DEFAULT_ROUTE_CANDIDATES;
    int score = mean_score(q->score);
    qs->how = msadb_summ_score_of(skind, score);
    qs->centre = score == MSADB_SCORE_DOT_CENTRED && qs->how == MSADB_SUMM_SCORE_MEAN_DOT;
    qs->block_size = sig->block_size;
    qs->doc_mode = q->select == MSADB_SELECT_DOCUMENTS;
    qs->d = P->d;
    /* the index serves block selection with the representatives, over
     * every live document (its super-blocks mix documents: with a mask the
     * best super-blocks might hold no visible block) */
    int indexable = !q->exact && !qs->doc_mode && qs->how == MSADB_SUMM_SCORE_REPS && !qs->mask &&
                    msadb_snap_has_index(snap);
    if (q->route == MSADB_ROUTE_INDEX && !indexable)
        return MSADB_EINVAL;
    qs->use_index = q->route != MSADB_ROUTE_SCAN && indexable;
    /* the cosine variant scores the scale-free cosine, others in logit units */
    P->hit_scale = qs->how == MSADB_SUMM_SCORE_MEAN_COS ? 1.0f : P->scale;
    if (msadb_grow_scratch(&qs->Qg, &qs->qg_cap, P->nrows * P->d, sizeof(float), 1024) ||
        msadb_grow(&qs->sel_off, &qs->sel_off_cap, P->nq + 1, sizeof(size_t), 16))
        return MSADB_ENOMEM;
    if (attend && (msadb_grow(&qs->Og, &qs->og_cap, P->nrows * P->d, sizeof(float), 16) ||
                   msadb_grow(&qs->Lg, &qs->lg_cap, P->nrows, sizeof(float), 16)))
        return MSADB_ENOMEM;
    *qs_out = qs;
    return 0;
}

/* Scans qs->views with heaps of k and selects per group into qs->sels. */
static int scan_select(qscratch *qs, const qplan *P, uint32_t k, uint64_t *scanned, double *select_ms,
                       size_t *n_sel)
{
    qs->k = k;
    int rc = scan_all(qs, scanned);
    double t1 = now_ms();
    for (uint32_t g = 0; !rc && g < P->n_groups; g++) {
        qs->sel_off[g] = *n_sel;
        rc = qs->doc_mode ? select_docs(qs, g, n_sel) : select_blocks(qs, g, n_sel);
    }
    qs->sel_off[P->n_groups] = *n_sel;
    *select_ms += now_ms() - t1;
    return rc;
}

/* Two-level selection through the routing index (query/route.h): the best
 * n_cand super-blocks per group, then top-k among their blocks. */
static int select_index(qscratch *qs, const qplan *P, uint32_t top_k, msadb_query_stats *st, size_t *n_sel)
{
    const msadb_page_view *plane_views = qs->views;
    size_t n_plane = qs->n_views;
    if (msadb_grow(&qs->coarse_views, &qs->coarse_cap, n_plane + 1, sizeof(msadb_page_view), 16))
        return MSADB_ENOMEM;
    msadb_route_coarse_views(plane_views, n_plane, qs->coarse_views);
    qs->views = qs->coarse_views;
    qs->n_reps = plane_views[0].coarse.n_reps;
    int rc = scan_select(qs, P, P->n_cand, &st->coarse_scanned, &st->select_ms, n_sel);
    if (rc)
        return rc;
    size_t nc = *n_sel;
    msadb_array a[] = {{&qs->cands, sizeof(uint64_t)}, {&qs->sub_views, sizeof(msadb_page_view)},
                       {&qs->sub_space, sizeof(uint32_t)}};
    if (msadb_grow_arrays(a, 3, &qs->cands_cap, nc + 1, 64, 0))
        return MSADB_ENOMEM;
    for (size_t i = 0; i < nc; i++)
        qs->cands[i] = qs->sels[i].cand;
    qs->n_views = msadb_route_fine_views(plane_views, qs->view_space, qs->cands, nc, P->d, qs->sub_views,
                                         qs->sub_space);
    qs->views = qs->sub_views;
    qs->vspace = qs->sub_space;
    qs->n_reps = MSADB_K_REPS;
    *n_sel = 0;
    return scan_select(qs, P, top_k, &st->blocks_scanned, &st->select_ms, n_sel);
}

/* Gathers kv head kh's rows into qs->Qg: row t*G + j is q head kh*G + j of
 * token t. */
static void gather_rows(qscratch *qs, const msadb_query *q, const qplan *P, uint32_t kh)
{
    const uint32_t G = P->G, d = P->d;
    for (size_t t = 0; t < P->nq; t++)
        memcpy(qs->Qg + t * G * d, q->q + (t * P->nqh + (size_t)kh * G) * d, (size_t)G * d * sizeof(float));
}

/* Selection for kv head kh: every block (exact), the index or the scan. */
static int select_plane(msadb_snapshot *snap, qscratch *qs, const msadb_query *q, const qplan *P, uint32_t kh,
                        msadb_query_stats *st, size_t *n_sel)
{
    double t0 = now_ms();
    int rc = collect_views(snap, qs, (uint32_t)P->mem_index * P->nkv + kh);
    if (rc)
        return rc;
    gather_rows(qs, q, P, kh);
    const uint32_t G = P->G, d = P->d;
    *n_sel = 0;
    if (q->exact) {
        qs->sel_off[0] = 0;
        rc = select_all(qs, n_sel);
        qs->sel_off[1] = *n_sel;
        st->scan_ms += now_ms() - t0;
        return rc;
    }
    if ((rc = msadb_kq_prepare(&qs->kqs, qs->Qg, P->n_groups, P->per_token ? G : (uint32_t)P->nrows,
                               (size_t)G * d, d, d, qs->how == MSADB_SUMM_SCORE_MEAN_COS)))
        return rc;
    qs->kq = &qs->kqs;
    qs->n_reps = MSADB_K_REPS;
    double sel0 = st->select_ms;
    if (qs->use_index && qs->n_views > 0 && msadb_route_views_indexed(qs->views, qs->n_views))
        rc = select_index(qs, P, q->top_k, st, n_sel);
    else
        rc = scan_select(qs, P, q->top_k, &st->blocks_scanned, &st->select_ms, n_sel);
    st->scan_ms += now_ms() - t0 - (st->select_ms - sel0); /* both levels, selection apart */
    return rc;
}

/* Copies kv head kh's attention rows (qs->Og, qs->Lg) into out and lse. */
static void scatter_rows(const qscratch *qs, const qplan *P, uint32_t kh, float *out, float *lse)
{
    const uint32_t G = P->G, d = P->d;
    for (size_t t = 0; t < P->nq; t++) {
        memcpy(out + (t * P->nqh + (size_t)kh * G) * d, qs->Og + t * G * d, (size_t)G * d * sizeof(float));
        memcpy(lse + t * P->nqh + (size_t)kh * G, qs->Lg + t * G, G * sizeof(float));
    }
}

/* Attention for kv head kh over the blocks qs->refs, group g's being
 * [off[g], off[g+1]) (one group for all rows, or one per token), into out
 * and lse. */
static int attend_groups(qscratch *qs, const qplan *P, const attend_ctx *ac, uint32_t kh, const size_t *off,
                         float *out, float *lse)
{
    const uint32_t G = P->G, d = P->d;
    int rc = 0;
    if (!P->per_token)
        rc = attend_refs(qs, ac, qs->refs, off[1], qs->Qg, (uint32_t)P->nrows, qs->Og, qs->Lg);
    for (uint32_t g = 0; P->per_token && !rc && g < P->n_groups; g++)
        rc = attend_refs(qs, ac, qs->refs + off[g], off[g + 1] - off[g], qs->Qg + (size_t)g * G * d, G,
                         qs->Og + (size_t)g * G * d, qs->Lg + (size_t)g * G);
    if (rc)
        return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc; /* the slot promised the block */
    scatter_rows(qs, P, kh, out, lse);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* One selection shared by the kv heads (msadb_query.share)                 */
/* ------------------------------------------------------------------------ */

/* A selected block resolved to its slot: the same in every plane. */
typedef struct rsel {
    uint64_t block_id, doc_id;
    uint32_t space_id, tok_start, n_tok, group;
    float score;
    float doc_score; /* document selection: the document's best block */
} rsel;

static int cmp_rsel_block(const void *a, const void *b)
{
    const rsel *x = a, *y = b;
    if (x->group != y->group)
        return x->group < y->group ? -1 : 1;
    return x->block_id < y->block_id ? -1 : x->block_id > y->block_id;
}

/* Best first: by score, ties by block id (storage order). */
static int cmp_rsel_score(const void *a, const void *b)
{
    const rsel *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->block_id < y->block_id ? -1 : x->block_id > y->block_id;
}

/* Documents best first (by their best block, ties by document id), each
 * document's blocks in storage order. */
static int cmp_rsel_doc(const void *a, const void *b)
{
    const rsel *x = a, *y = b;
    if (x->doc_score != y->doc_score)
        return x->doc_score > y->doc_score ? -1 : 1;
    if (x->doc_id != y->doc_id)
        return x->doc_id < y->doc_id ? -1 : 1;
    return x->block_id < y->block_id ? -1 : x->block_id > y->block_id;
}

/* Appends the current selection (qs->sels by group, positions in qs->views)
 * to qs->rs as slots. */
static int resolve_sels(qscratch *qs, const qplan *P, size_t n_sel, size_t *n_rs)
{
    if (msadb_grow(&qs->rs, &qs->rs_cap, *n_rs + n_sel + 1, sizeof(rsel), 16))
        return MSADB_ENOMEM;
    for (uint32_t g = 0; g < P->n_groups; g++)
        for (size_t i = qs->sel_off[g]; i < qs->sel_off[g + 1]; i++) {
            const sel *s = &qs->sels[i];
            msadb_slot sl;
            msadb_slot_at(qs->views[CAND_VIEW(s->cand)].slots, CAND_ENTRY(s->cand), &sl);
            qs->rs[(*n_rs)++] = (rsel){sl.block_id, sl.doc_id, qs->space_ids[qs->vspace[CAND_VIEW(s->cand)]],
                                       sl.tok_start, sl.n_tok, g, s->score, s->score};
        }
    return 0;
}

/* Merges the kv heads' selections in qs->rs[0,n) into one per group: a
 * block once, with its best score; then the top_k blocks, or the blocks of
 * the top_k documents (a document's score is its best block's, which every
 * head's document selection holds with all the document's live blocks).
 * Sets qs->rs_off and returns the entries kept. */
static size_t merge_shared(qscratch *qs, const qplan *P, size_t n, uint32_t top_k)
{
    qsort(qs->rs, n, sizeof(rsel), cmp_rsel_block);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m > 0 && qs->rs[m - 1].group == qs->rs[i].group && qs->rs[m - 1].block_id == qs->rs[i].block_id) {
            if (qs->rs[i].score > qs->rs[m - 1].score)
                qs->rs[m - 1].score = qs->rs[i].score;
            continue;
        }
        qs->rs[m++] = qs->rs[i];
    }
    size_t out = 0, i = 0;
    for (uint32_t g = 0; g < P->n_groups; g++) {
        size_t j = i;
        while (j < m && qs->rs[j].group == g)
            j++;
        rsel *r = qs->rs + i;
        size_t cnt = j - i, keep = cnt;
        if (qs->doc_mode) {
            /* every entry of a document gets the document's best score */
            for (size_t a = 0; a < cnt;) {
                size_t b = a;
                float best = -INFINITY;
                while (b < cnt && r[b].doc_id == r[a].doc_id)
                    best = r[b].score > best ? r[b].score : best, b++;
                for (size_t c = a; c < b; c++)
                    r[c].doc_score = best;
                a = b;
            }
            qsort(r, cnt, sizeof(rsel), cmp_rsel_doc);
            size_t docs = 0;
            for (keep = 0; keep < cnt; keep++) {
                if (keep == 0 || r[keep].doc_id != r[keep - 1].doc_id)
                    docs++;
                if (docs > top_k)
                    break;
            }
        } else {
            qsort(r, cnt, sizeof(rsel), cmp_rsel_score);
            keep = cnt < top_k ? cnt : top_k;
        }
        qs->rs_off[g] = out;
        memmove(qs->rs + out, r, keep * sizeof(rsel));
        out += keep;
        i = j;
    }
    qs->rs_off[P->n_groups] = out;
    return out;
}

/* Shared selection: the routing kv heads select as usual, their selections
 * are merged into one per group, and every kv head attends it. */
static int run_shared(msadb_snapshot *snap, qscratch *qs, const msadb_query *q, const qplan *P, attend_ctx *ac,
                      float *out, float *lse, msadb_hit *hits, size_t hits_cap, size_t *nh)
{
    uint32_t r0 = q->share == MSADB_SHARE_ROUTE_HEAD ? q->route_head : 0;
    uint32_t r1 = q->share == MSADB_SHARE_ROUTE_HEAD ? q->route_head + 1 : P->nkv;
    size_t n_rs = 0;
    int rc;
    if (msadb_grow(&qs->rs_off, &qs->rs_off_cap, P->n_groups + 1, sizeof(size_t), 16))
        return MSADB_ENOMEM;
    for (uint32_t kh = r0; kh < r1; kh++) {
        size_t n_sel = 0;
        if ((rc = select_plane(snap, qs, q, P, kh, ac->st, &n_sel)) || (rc = resolve_sels(qs, P, n_sel, &n_rs)))
            return rc;
    }
    size_t n = merge_shared(qs, P, n_rs, q->top_k);
    if (msadb_grow(&qs->refs, &qs->refs_cap, n + 1, sizeof(blk_ref), 16))
        return MSADB_ENOMEM;
    for (size_t i = 0; i < n; i++)
        qs->refs[i] = (blk_ref){qs->rs[i].block_id, qs->rs[i].space_id, qs->rs[i].n_tok};
    for (uint32_t kh = 0; kh < P->nkv; kh++) {
        for (size_t i = 0; i < n; i++, (*nh)++) {
            if (!hits || *nh >= hits_cap)
                continue;
            const rsel *r = &qs->rs[i];
            hits[*nh] = (msadb_hit){kh, P->per_token ? r->group : 0, r->doc_id, r->block_id,
                                    r->tok_start, r->tok_start + r->n_tok, r->score * P->hit_scale};
        }
        if (!out)
            continue;
        gather_rows(qs, q, P, kh);
        ac->plane = (uint32_t)P->mem_index * P->nkv + kh;
        if ((rc = attend_groups(qs, P, ac, kh, qs->rs_off, out, lse)))
            return rc;
    }
    return 0;
}

/* The engine: selection for every kv head, then (if out) attention. */
static int run_query(msadb_snapshot *snap, const msadb_query *q, float *out, float *lse,
                     msadb_hit *hits, size_t hits_cap, size_t *n_hits)
{
    qscratch *qs;
    qplan P;
    int rc = plan_query(snap, q, out != NULL, &qs, &P);
    if (rc)
        return rc;
    msadb_query_stats local, *st = q->stats ? q->stats : &local;
    memset(st, 0, sizeof *st);
    attend_ctx ac = {snap, msadb_snap_signature(snap), 0, P.d, P.scale, st};
    size_t nh = 0;
    if (q->share != MSADB_SHARE_NONE && !q->exact) {
        if ((rc = run_shared(snap, qs, q, &P, &ac, out, lse, hits, hits_cap, &nh)))
            return rc;
        if (n_hits)
            *n_hits = nh;
        return 0;
    }
    for (uint32_t kh = 0; kh < P.nkv; kh++) {
        size_t n_sel = 0;
        if ((rc = select_plane(snap, qs, q, &P, kh, st, &n_sel)))
            return rc;
        for (uint32_t g = 0; g < P.n_groups; g++)
            emit_hits(qs, qs->sels + qs->sel_off[g], qs->sel_off[g + 1] - qs->sel_off[g], kh,
                      P.per_token ? g : 0, P.hit_scale, hits, hits_cap, &nh);
        ac.plane = (uint32_t)P.mem_index * P.nkv + kh;
        if (out && ((rc = sels_to_refs(qs, qs->sels, n_sel)) ||
                    (rc = attend_groups(qs, &P, &ac, kh, qs->sel_off, out, lse))))
            return rc;
    }
    if (n_hits)
        *n_hits = nh;
    return 0;
}

int msadb_attend(msadb_snapshot *snap, const msadb_query *q, float *out, float *lse, msadb_hit *hits,
                 size_t hits_cap, size_t *n_hits)
{
    if (!out || !lse)
        return MSADB_EINVAL;
    return run_query(snap, q, out, lse, hits, hits_cap, n_hits);
}

int msadb_retrieve(msadb_snapshot *snap, const msadb_query *q, msadb_hit *hits, size_t hits_cap,
                   size_t *n_hits)
{
    return run_query(snap, q, NULL, NULL, hits, hits_cap, n_hits);
}

int msadb_attend_blocks(msadb_snapshot *snap, const msadb_query *q, const msadb_hit *blocks, size_t n_blocks,
                        float *out, float *lse)
{
    if (!snap || !q || !q->q || q->n_query == 0 || !out || !lse || (!blocks && n_blocks))
        return MSADB_EINVAL;
    const msadb_signature *sig = msadb_snap_signature(snap);
    int mi = msadb_signature_memory_index(sig, q->layer);
    if (mi < 0)
        return MSADB_EINVAL;
    if (q->n_query > MAX_QUERY_TOKENS)
        return MSADB_ELIMIT;
    if (!(q->scale >= 0.0f) || isinf(q->scale))
        return MSADB_EINVAL;
    const uint32_t d = sig->head_dim, nkv = sig->n_kv_heads, nqh = sig->n_q_heads, G = nqh / nkv;
    const size_t nq = q->n_query, nrows = nq * G;
    for (size_t i = 0; i < nq * nqh * d; i++)
        if (!isfinite(q->q[i]))
            return MSADB_ENONFINITE;
    for (size_t i = 0; i < n_blocks; i++)
        if (blocks[i].kv_head >= nkv || blocks[i].token_end <= blocks[i].token_start)
            return MSADB_EINVAL;
    qscratch *qs;
    int rc = scratch_get(snap, &qs);
    if (rc)
        return rc;
    msadb_query_stats local, *st = q->stats ? q->stats : &local;
    memset(st, 0, sizeof *st);
    if (msadb_grow_scratch(&qs->Qg, &qs->qg_cap, nrows * d, sizeof(float), 1024) ||
        msadb_grow(&qs->Og, &qs->og_cap, nrows * d, sizeof(float), 16) ||
        msadb_grow(&qs->Lg, &qs->lg_cap, nrows, sizeof(float), 16) ||
        msadb_grow(&qs->refs, &qs->refs_cap, n_blocks + 1, sizeof(blk_ref), 16))
        return MSADB_ENOMEM;
    const float scale = q->scale > 0.0f ? q->scale : 1.0f / sqrtf((float)d);
    attend_ctx ac = {snap, sig, 0, d, scale, st};
    for (uint32_t kh = 0; kh < nkv; kh++) {
        ac.plane = (uint32_t)mi * nkv + kh;
        size_t nb = 0;
        for (size_t i = 0; i < n_blocks; i++) {
            if (blocks[i].kv_head != kh)
                continue;
            blk_ref *r = &qs->refs[nb++];
            r->block_id = blocks[i].block_id;
            r->n_tok = blocks[i].token_end - blocks[i].token_start;
            /* a run of blocks of one document shares its space */
            if (nb > 1 && blocks[i].doc_id == blocks[i - 1].doc_id && blocks[i - 1].kv_head == kh)
                r->space_id = qs->refs[nb - 2].space_id;
            else if ((rc = msadb_snap_doc_space(snap, blocks[i].doc_id, &r->space_id)))
                return rc;
        }
        for (size_t t = 0; t < nq; t++)
            memcpy(qs->Qg + t * G * d, q->q + (t * nqh + (size_t)kh * G) * d, (size_t)G * d * sizeof(float));
        if ((rc = attend_refs(qs, &ac, qs->refs, nb, qs->Qg, (uint32_t)nrows, qs->Og, qs->Lg)))
            return rc;
        for (size_t t = 0; t < nq; t++) {
            memcpy(out + (t * nqh + (size_t)kh * G) * d, qs->Og + t * G * d, (size_t)G * d * sizeof(float));
            memcpy(lse + t * nqh + (size_t)kh * G, qs->Lg + t * G, G * sizeof(float));
        }
    }
    return 0;
}
