/* attend.c -- reading a sharded store: snapshots, documents by global id,
 * and attention: every opened shard attends in its own thread, the outputs
 * are merged by log-sum-exp, the hits into one global selection. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "msadb_shard.h"
#include "shard/shard_impl.h"
#include "core/util.h"

typedef struct shard_job {
    msadb_snapshot *snap;
    msadb_query qc;           /* q with this job's stats */
    msadb_query_stats stats;
    float *out, *lse;         /* NULL: selection only */
    msadb_hit *hits;          /* this shard's hits (local ids until globalized) */
    size_t hits_cap, n_hits;
    int want_hits;            /* collect hits (all of them: taken again when short) */
    int blocks_mode;          /* attend_blocks over blocks[0..n_blocks) */
    const msadb_hit *blocks;
    size_t n_blocks;
    int rc;
} shard_job;

struct msadb_shards_snapshot {
    msadb_shards *sh;
    msadb_snapshot **snap;    /* [n_local] */
    shard_job *jobs;          /* [n_local] */
    float *buf;               /* per-shard out and lse, [n_local] x (rows*d + rows) */
    size_t buf_cap;
    msadb_hit *blk;           /* attend_blocks: blocks regrouped by shard */
    size_t blk_cap;
    msadb_hit *sel;           /* attend_global: the global selection */
    size_t sel_cap;
};

int msadb_shards_snapshot_begin(msadb_shards *sh, msadb_shards_snapshot **out)
{
    if (!sh || !out)
        return MSADB_EINVAL;
    msadb_shards_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return MSADB_ENOMEM;
    s->sh = sh;
    s->snap = calloc(sh->n_local, sizeof *s->snap);
    s->jobs = calloc(sh->n_local, sizeof *s->jobs);
    if (!s->snap || !s->jobs) {
        msadb_shards_snapshot_end(s);
        return MSADB_ENOMEM;
    }
    for (uint32_t i = 0; i < sh->n_local; i++) {
        int rc = msadb_snapshot_begin(sh->st[i], &s->snap[i]);
        if (rc) {
            msadb_shards_snapshot_end(s);
            return rc;
        }
    }
    *out = s;
    return 0;
}

void msadb_shards_snapshot_end(msadb_shards_snapshot *s)
{
    if (!s)
        return;
    for (uint32_t i = 0; s->snap && i < s->sh->n_local; i++)
        msadb_snapshot_end(s->snap[i]);
    for (uint32_t i = 0; s->jobs && i < s->sh->n_local; i++)
        free(s->jobs[i].hits);
    free(s->snap);
    free(s->jobs);
    free(s->buf);
    free(s->blk);
    free(s->sel);
    free(s);
}

int msadb_shards_snapshot_renew(msadb_shards_snapshot *s)
{
    if (!s)
        return MSADB_EINVAL;
    for (uint32_t i = 0; i < s->sh->n_local; i++) {
        int rc = msadb_snapshot_renew(s->snap[i]);
        if (rc)
            return rc;
    }
    return 0;
}

/* The snapshot of the shard holding global id `id`, and the local id. */
static int route(msadb_shards_snapshot *s, uint64_t id, msadb_snapshot **snap, uint64_t *local)
{
    if (!s)
        return MSADB_EINVAL;
    uint32_t n = s->sh->m.n_shards;
    int i = msadb_shards_local_of(s->sh, msadb_shards_id_shard(id, n));
    if (i < 0 || msadb_shards_id_local(id, n) == 0)
        return MSADB_ENOTFOUND;
    *snap = s->snap[i];
    *local = msadb_shards_id_local(id, n);
    return 0;
}

static void info_globalize(msadb_doc_info *info, uint32_t shard, uint32_t n)
{
    info->id = msadb_shards_id_global(info->id, shard, n);
    info->first_block = msadb_shards_id_global(info->first_block, shard, n);
}

int msadb_shards_doc_get(msadb_shards_snapshot *s, uint64_t doc_id, msadb_doc_info *out)
{
    msadb_snapshot *snap;
    uint64_t local;
    int rc = route(s, doc_id, &snap, &local);
    if (rc || !out)
        return rc ? rc : MSADB_EINVAL;
    if ((rc = msadb_doc_get(snap, local, out)))
        return rc;
    info_globalize(out, msadb_shards_id_shard(doc_id, s->sh->m.n_shards), s->sh->m.n_shards);
    return 0;
}

typedef struct list_ctx {
    int (*cb)(const msadb_doc_info *, void *);
    void *ud;
    uint32_t shard, n;
} list_ctx;

static int list_one(const msadb_doc_info *info, void *ud)
{
    list_ctx *c = ud;
    msadb_doc_info g = *info;
    info_globalize(&g, c->shard, c->n);
    return c->cb(&g, c->ud);
}

int msadb_shards_doc_list(msadb_shards_snapshot *s, const char *space, int (*cb)(const msadb_doc_info *, void *),
                          void *ud)
{
    if (!s || !cb)
        return MSADB_EINVAL;
    for (uint32_t i = 0; i < s->sh->n_local; i++) {
        list_ctx c = {cb, ud, s->sh->part + i * s->sh->n_parts, s->sh->m.n_shards};
        int rc = msadb_doc_list(s->snap[i], space, list_one, &c);
        if (rc)
            return rc;
    }
    return 0;
}

int msadb_shards_doc_text(msadb_shards_snapshot *s, uint64_t doc_id, char *buf, size_t cap, size_t *len)
{
    msadb_snapshot *snap;
    uint64_t local;
    int rc = route(s, doc_id, &snap, &local);
    return rc ? rc : msadb_doc_text(snap, local, buf, cap, len);
}

int msadb_shards_doc_meta(msadb_shards_snapshot *s, uint64_t doc_id, void *buf, size_t cap, size_t *len)
{
    msadb_snapshot *snap;
    uint64_t local;
    int rc = route(s, doc_id, &snap, &local);
    return rc ? rc : msadb_doc_meta(snap, local, buf, cap, len);
}

int msadb_shards_doc_tokens(msadb_shards_snapshot *s, uint64_t doc_id, int32_t *ids, int64_t *spans, size_t cap)
{
    msadb_snapshot *snap;
    uint64_t local;
    int rc = route(s, doc_id, &snap, &local);
    return rc ? rc : msadb_doc_tokens(snap, local, ids, spans, cap);
}

int msadb_shards_doc_kv(msadb_shards_snapshot *s, uint64_t doc_id, uint32_t plane, float *keys, float *values)
{
    msadb_snapshot *snap;
    uint64_t local;
    int rc = route(s, doc_id, &snap, &local);
    return rc ? rc : msadb_doc_kv(snap, local, plane, keys, values);
}

/* ---- hits: one global selection ---------------------------------------- */

/* Hits and runs group by (kv head, query token) first. */
static int group_cmp(uint32_t kh1, uint32_t q1, uint32_t kh2, uint32_t q2)
{
    if (kh1 != kh2)
        return kh1 < kh2 ? -1 : 1;
    return q1 < q2 ? -1 : q1 > q2;
}

/* Order within a (kv head, query) group: best score first, then block id. */
static int hit_cmp_score(const void *x, const void *y)
{
    const msadb_hit *a = x, *b = y;
    int g = group_cmp(a->kv_head, a->query, b->kv_head, b->query);
    if (g)
        return g;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return a->block_id < b->block_id ? -1 : a->block_id > b->block_id;
}

/* Group, then document, then block id: a document's blocks in storage order
 * (block j of a document is first_block + j * N: ascending). */
static int hit_cmp_doc(const void *x, const void *y)
{
    const msadb_hit *a = x, *b = y;
    int g = group_cmp(a->kv_head, a->query, b->kv_head, b->query);
    if (g)
        return g;
    if (a->doc_id != b->doc_id)
        return a->doc_id < b->doc_id ? -1 : 1;
    return a->block_id < b->block_id ? -1 : a->block_id > b->block_id;
}

typedef struct doc_run {
    uint32_t kv_head, query;
    uint64_t doc_id;
    float score;       /* best block */
    size_t first, n;   /* its blocks in the sorted array */
} doc_run;

static int run_cmp(const void *x, const void *y)
{
    const doc_run *a = x, *b = y;
    int g = group_cmp(a->kv_head, a->query, b->kv_head, b->query);
    if (g)
        return g;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return a->doc_id < b->doc_id ? -1 : a->doc_id > b->doc_id;
}

static void put_hit(msadb_hit *out, size_t cap, size_t *n, const msadb_hit *h)
{
    if (out && *n < cap)
        out[*n] = *h;
    (*n)++;
}

int msadb_shards_hits_merge(const msadb_query *q, uint32_t n_kv_heads, const msadb_hit *const *parts,
                            const size_t *counts, size_t n_parts, msadb_hit *out, size_t cap, size_t *n)
{
    if (!q || !n || (!parts && n_parts) || (!counts && n_parts))
        return MSADB_EINVAL;
    *n = 0;
    size_t total = 0;
    for (size_t p = 0; p < n_parts; p++)
        total += counts[p];
    if (q->exact) { /* every block: kv head by kv head, part by part */
        for (uint32_t kh = 0; kh < n_kv_heads; kh++)
            for (size_t p = 0; p < n_parts; p++)
                for (size_t i = 0; i < counts[p]; i++)
                    if (parts[p][i].kv_head == kh)
                        put_hit(out, cap, n, &parts[p][i]);
        return 0;
    }
    if (total == 0)
        return 0;
    msadb_hit *all = malloc(total * sizeof *all);
    if (!all)
        return MSADB_ENOMEM;
    size_t m = 0;
    for (size_t p = 0; p < n_parts; p++) {
        memcpy(all + m, parts[p], counts[p] * sizeof *all);
        m += counts[p];
    }
    if (q->select != MSADB_SELECT_DOCUMENTS) {
        qsort(all, total, sizeof *all, hit_cmp_score);
        size_t in_group = 0;
        for (size_t i = 0; i < total; i++) {
            if (i == 0 || all[i].kv_head != all[i - 1].kv_head || all[i].query != all[i - 1].query)
                in_group = 0;
            if (in_group++ < q->top_k)
                put_hit(out, cap, n, &all[i]);
        }
        free(all);
        return 0;
    }
    qsort(all, total, sizeof *all, hit_cmp_doc);
    doc_run *runs = malloc(total * sizeof *runs);
    if (!runs) {
        free(all);
        return MSADB_ENOMEM;
    }
    size_t nr = 0;
    for (size_t i = 0; i < total; i++) {
        if (nr && runs[nr - 1].kv_head == all[i].kv_head && runs[nr - 1].query == all[i].query &&
            runs[nr - 1].doc_id == all[i].doc_id) {
            doc_run *r = &runs[nr - 1];
            r->n++;
            if (all[i].score > r->score)
                r->score = all[i].score;
            continue;
        }
        runs[nr++] = (doc_run){all[i].kv_head, all[i].query, all[i].doc_id, all[i].score, i, 1};
    }
    qsort(runs, nr, sizeof *runs, run_cmp);
    size_t in_group = 0;
    for (size_t r = 0; r < nr; r++) {
        if (r == 0 || runs[r].kv_head != runs[r - 1].kv_head || runs[r].query != runs[r - 1].query)
            in_group = 0;
        if (in_group++ >= q->top_k)
            continue;
        for (size_t i = 0; i < runs[r].n; i++)
            put_hit(out, cap, n, &all[runs[r].first + i]);
    }
    free(runs);
    free(all);
    return 0;
}

/* ---- attention ---------------------------------------------------------- */

static void *job_run(void *arg)
{
    shard_job *j = arg;
    if (j->blocks_mode) {
        j->rc = msadb_attend_blocks(j->snap, &j->qc, j->blocks, j->n_blocks, j->out, j->lse);
        return NULL;
    }
    j->n_hits = 0;
    msadb_hit *h0 = j->want_hits ? j->hits : NULL;
    size_t cap0 = j->want_hits ? j->hits_cap : 0;
    if (j->out)
        j->rc = msadb_attend(j->snap, &j->qc, j->out, j->lse, h0, cap0, &j->n_hits);
    else
        j->rc = msadb_retrieve(j->snap, &j->qc, h0, cap0, &j->n_hits);
    /* more hits than room: the selection is deterministic, take it again */
    if (j->rc == 0 && j->want_hits && j->n_hits > j->hits_cap && !j->qc.exact) {
        if ((j->rc = msadb_grow(&j->hits, &j->hits_cap, j->n_hits, sizeof *j->hits, 64)))
            return NULL;
        j->rc = msadb_retrieve(j->snap, &j->qc, j->hits, j->hits_cap, &j->n_hits);
    }
    return NULL;
}

/* Runs every job, shards 1.. in threads and shard 0 here. */
static int run_jobs(msadb_shards_snapshot *s)
{
    uint32_t n = s->sh->n_local;
    pthread_t *th = n > 1 ? malloc((n - 1) * sizeof *th) : NULL;
    int *started = n > 1 ? calloc(n - 1, sizeof *started) : NULL;
    if (n > 1 && (!th || !started)) {
        free(th);
        free(started);
        return MSADB_ENOMEM;
    }
    for (uint32_t i = 1; i < n; i++)
        started[i - 1] = pthread_create(&th[i - 1], NULL, job_run, &s->jobs[i]) == 0;
    job_run(&s->jobs[0]);
    for (uint32_t i = 1; i < n; i++) {
        if (started[i - 1])
            pthread_join(th[i - 1], NULL);
        else
            job_run(&s->jobs[i]); /* no thread: run it here */
    }
    free(th);
    free(started);
    int rc = 0;
    for (uint32_t i = 0; i < n && !rc; i++)
        rc = s->jobs[i].rc;
    return rc;
}

static int bufs_get(msadb_shards_snapshot *s, size_t rows, size_t d)
{
    if (msadb_grow(&s->buf, &s->buf_cap, (size_t)s->sh->n_local * rows * (d + 1), sizeof *s->buf, 1024))
        return MSADB_ENOMEM;
    for (uint32_t i = 0; i < s->sh->n_local; i++) {
        s->jobs[i].out = s->buf + (size_t)i * rows * (d + 1);
        s->jobs[i].lse = s->jobs[i].out + rows * d;
    }
    return 0;
}

/* Sets up the jobs (stats, hit buffers), runs them and sums the stats. */
static int attend_all(msadb_shards_snapshot *s, const msadb_query *q, int with_out, int want_hits, size_t hits_cap)
{
    uint32_t n = s->sh->n_local;
    const msadb_signature *sig = msadb_shards_signature(s->sh);
    size_t rows = q->n_query * sig->n_q_heads;
    int rc;
    if (with_out && (rc = bufs_get(s, rows, sig->head_dim)))
        return rc;
    /* room for a typical selection; run_jobs takes it again when short */
    size_t groups = q->per_token ? q->n_query : 1;
    size_t guess = q->exact ? hits_cap : (size_t)q->top_k * sig->n_kv_heads * groups *
                                             (q->select == MSADB_SELECT_DOCUMENTS ? 4 : 1);
    for (uint32_t i = 0; i < n; i++) {
        shard_job *j = &s->jobs[i];
        j->snap = s->snap[i];
        j->qc = *q;
        j->qc.stats = &j->stats;
        j->blocks_mode = 0;
        j->want_hits = want_hits;
        j->rc = 0;
        j->n_hits = 0;
        if (!with_out)
            j->out = j->lse = NULL;
        if (want_hits && msadb_grow(&j->hits, &j->hits_cap, guess + 1, sizeof *j->hits, 64))
            return MSADB_ENOMEM;
    }
    if ((rc = run_jobs(s)))
        return rc;
    if (q->stats) {
        msadb_query_stats *st = q->stats;
        memset(st, 0, sizeof *st);
        for (uint32_t i = 0; i < n; i++) {
            const msadb_query_stats *js = &s->jobs[i].stats;
            st->scan_ms = fmax(st->scan_ms, js->scan_ms);
            st->select_ms = fmax(st->select_ms, js->select_ms);
            st->read_ms = fmax(st->read_ms, js->read_ms);
            st->attend_ms = fmax(st->attend_ms, js->attend_ms);
            st->blocks_scanned += js->blocks_scanned;
            st->blocks_read += js->blocks_read;
            st->tokens_attended += js->tokens_attended;
        }
    }
    return 0;
}

static int hits_finish(msadb_shards_snapshot *s, const msadb_query *q, msadb_hit *hits, size_t hits_cap,
                       size_t *n_hits)
{
    uint32_t n = s->sh->n_local, N = s->sh->m.n_shards;
    const msadb_hit *parts[MSADB_SHARDS_MAX];
    size_t counts[MSADB_SHARDS_MAX];
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        shard_job *j = &s->jobs[i];
        uint32_t shard = s->sh->part + i * s->sh->n_parts;
        size_t have = j->n_hits < j->hits_cap ? j->n_hits : j->hits_cap;
        for (size_t k = 0; k < have; k++) {
            j->hits[k].doc_id = msadb_shards_id_global(j->hits[k].doc_id, shard, N);
            j->hits[k].block_id = msadb_shards_id_global(j->hits[k].block_id, shard, N);
        }
        parts[i] = j->hits;
        counts[i] = have;
        total += j->n_hits;
    }
    int rc = msadb_shards_hits_merge(q, msadb_shards_signature(s->sh)->n_kv_heads, parts, counts, n, hits,
                                     hits_cap, n_hits);
    if (!rc && q->exact)
        *n_hits = total; /* every block, even those past the room */
    return rc;
}

/* out/lse = the LSE merge of the jobs' results, in shard order. */
static void outputs_merge(msadb_shards_snapshot *s, size_t rows, size_t d, float *out, float *lse)
{
    memcpy(out, s->jobs[0].out, rows * d * sizeof *out);
    memcpy(lse, s->jobs[0].lse, rows * sizeof *lse);
    for (uint32_t i = 1; i < s->sh->n_local; i++)
        msadb_lse_merge(rows, d, out, lse, s->jobs[i].out, s->jobs[i].lse, out, lse);
}

int msadb_shards_attend(msadb_shards_snapshot *s, const msadb_query *q, float *out, float *lse, msadb_hit *hits,
                        size_t hits_cap, size_t *n_hits)
{
    if (!s || !q || !out || !lse)
        return MSADB_EINVAL;
    const msadb_signature *sig = msadb_shards_signature(s->sh);
    int want = hits || n_hits;
    int rc = attend_all(s, q, 1, want, hits_cap);
    if (rc)
        return rc;
    outputs_merge(s, q->n_query * sig->n_q_heads, sig->head_dim, out, lse);
    if (!want)
        return 0;
    size_t nh = 0;
    rc = hits_finish(s, q, hits, hits ? hits_cap : 0, &nh);
    if (!rc && n_hits)
        *n_hits = nh;
    return rc;
}

int msadb_shards_retrieve(msadb_shards_snapshot *s, const msadb_query *q, msadb_hit *hits, size_t hits_cap,
                          size_t *n_hits)
{
    if (!s || !q)
        return MSADB_EINVAL;
    int rc = attend_all(s, q, 0, 1, hits_cap);
    if (rc)
        return rc;
    size_t nh = 0;
    rc = hits_finish(s, q, hits, hits ? hits_cap : 0, &nh);
    if (!rc && n_hits)
        *n_hits = nh;
    return rc;
}

int msadb_shards_attend_blocks(msadb_shards_snapshot *s, const msadb_query *q, const msadb_hit *blocks,
                               size_t n_blocks, float *out, float *lse)
{
    if (!s || !q || !out || !lse || (!blocks && n_blocks))
        return MSADB_EINVAL;
    msadb_shards *sh = s->sh;
    const msadb_signature *sig = msadb_shards_signature(sh);
    size_t rows = q->n_query * sig->n_q_heads;
    if (msadb_grow(&s->blk, &s->blk_cap, n_blocks, sizeof *s->blk, 64))
        return MSADB_ENOMEM;
    int rc = bufs_get(s, rows, sig->head_dim);
    if (rc)
        return rc;
    /* regroup by shard, keeping the order within each, with local ids */
    size_t k = 0;
    for (uint32_t i = 0; i < sh->n_local; i++) {
        shard_job *j = &s->jobs[i];
        j->snap = s->snap[i];
        j->qc = *q;
        j->qc.stats = &j->stats;
        j->blocks_mode = 1;
        j->want_hits = 0;
        j->blocks = s->blk + k;
        j->n_blocks = 0;
        j->rc = 0;
        for (size_t b = 0; b < n_blocks; b++) {
            int li = msadb_shards_local_of(sh, msadb_shards_id_shard(blocks[b].doc_id, sh->m.n_shards));
            if (li < 0 || msadb_shards_id_shard(blocks[b].block_id, sh->m.n_shards) !=
                              msadb_shards_id_shard(blocks[b].doc_id, sh->m.n_shards))
                return MSADB_ENOTFOUND;
            if ((uint32_t)li != i)
                continue;
            msadb_hit h = blocks[b];
            h.doc_id = msadb_shards_id_local(h.doc_id, sh->m.n_shards);
            h.block_id = msadb_shards_id_local(h.block_id, sh->m.n_shards);
            s->blk[k++] = h;
            j->n_blocks++;
        }
    }
    if ((rc = run_jobs(s)))
        return rc;
    outputs_merge(s, rows, sig->head_dim, out, lse);
    return 0;
}

int msadb_shards_attend_merge(msadb_shards_snapshot *s, const msadb_query *q, float *out, float *lse,
                              msadb_hit *hits, size_t hits_cap, size_t *n_hits)
{
    if (!s || !q || !out || !lse)
        return MSADB_EINVAL;
    const msadb_signature *sig = msadb_shards_signature(s->sh);
    size_t rows = q->n_query * sig->n_q_heads, d = sig->head_dim;
    float *mo = malloc((rows * d + rows) * sizeof *mo);
    if (!mo)
        return MSADB_ENOMEM;
    int rc = msadb_shards_attend(s, q, mo, mo + rows * d, hits, hits_cap, n_hits);
    if (!rc)
        msadb_lse_merge(rows, d, out, lse, mo, mo + rows * d, out, lse);
    free(mo);
    return rc;
}

int msadb_shards_attend_global(msadb_shards_snapshot *s, const msadb_query *q, float *out, float *lse,
                               msadb_hit *hits, size_t hits_cap, size_t *n_hits)
{
    if (!s || !q || !out || !lse)
        return MSADB_EINVAL;
    if (q->exact || q->per_token)
        return msadb_shards_attend(s, q, out, lse, hits, hits_cap, n_hits);
    msadb_query_stats st_sel, st_att;
    msadb_query qq = *q;
    qq.stats = &st_sel;
    size_t n = 0;
    int rc;
    for (;;) {
        if ((rc = msadb_shards_retrieve(s, &qq, s->sel, s->sel_cap, &n)))
            return rc;
        if (n <= s->sel_cap)
            break;
        if (msadb_grow(&s->sel, &s->sel_cap, n, sizeof *s->sel, 64))
            return MSADB_ENOMEM;
    }
    qq.stats = &st_att;
    if ((rc = msadb_shards_attend_blocks(s, &qq, s->sel, n, out, lse)))
        return rc;
    if (q->stats) {
        *q->stats = st_sel;
        q->stats->read_ms = st_att.read_ms;
        q->stats->attend_ms = st_att.attend_ms;
        q->stats->blocks_read = st_att.blocks_read;
        q->stats->tokens_attended = st_att.tokens_attended;
    }
    if (hits)
        memcpy(hits, s->sel, (n < hits_cap ? n : hits_cap) * sizeof *hits);
    if (n_hits)
        *n_hits = n;
    return 0;
}
