/* bench_query.c -- speed and quality of the query engine on a store written
 * by gen_workload (one memory plane, G q heads, planted needles).
 *
 * For every query of the workload it measures, per method:
 *  - latency of msadb_attend() (engine methods) or of the scan + top-k over
 *    an in-memory summary array (candidate summaries not stored yet);
 *  - needle hit rate: the block holding the exact top token of the needle
 *    head is selected;
 *  - attention-mass recall: the needle head's exact softmax mass inside the
 *    selected tokens;
 *  - output relative error of the needle head against exact attention.
 * The ground truth is dense attention over the stored (dequantized) keys
 * and values, read back with msadb_doc_kv(); the same run times exact
 * OpenBLAS attention over all keys (the "dense" line).  With --faiss the
 * keys are exported and tools/bench/faiss_baseline.py runs FAISS IndexIVFFlat and
 * IndexHNSWFlat (inner product) over them token by token; their hit rates
 * are reported at the setting whose latency matches the engine's.
 *
 * --scan-only N: no store; times scan + top-k of mean summaries for a
 * memory of N tokens (f16 and int8 layouts, 1 and 2 threads), from
 * synthetic arrays in RAM -- the 100M-token check.
 *
 * Usage: bench_query [--json] [--k K] [--limit Q] [--exact-reps R]
 *                    [--faiss SCRIPT] [--hnsw-max N] [--workdir DIR] [--no-raw]
 *                    [--no-engine] [--recipes fga,fgab,...] STORE
 *        bench_query [--json] --scan-only N
 * Exit status: 0 success, 1 error, 2 usage. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "codec/coarse.h"
#include "codec/summary.h"
#include "core/kernels.h"
#include "store/store.h"
#include "msadb.h"
#include "core/util.h"
#include "workload.h"
#include "machine.h"

#define MAXM 24
#define GT_CHUNK 32768

static int tty, json;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* CPU time of the whole process (scan threads included). */
static double proc_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void die(const char *what, int rc)
{
    machine_die("bench_query", what, rc ? msadb_strerror(rc) : NULL);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory", MSADB_ENOMEM);
    return p;
}

static double percentile(double *v, size_t n, double p) { return machine_percentile(v, n, p); }

/* ------------------------------------------------------------------------ */
/* The loaded memory                                                        */
/* ------------------------------------------------------------------------ */

typedef struct mem {
    wl_model m;
    uint64_t *doc_ids;
    size_t N, nb;
    uint32_t d, G, B;
    float *K, *V;
    uint64_t *blk_tok0; /* global block -> first token (memory order) */
    uint32_t *blk_len;
    size_t *doc_blk0;   /* document -> first global block */
    float scale;
} mem;

static size_t doc_of_token(const mem *M, uint64_t t)
{
    size_t lo = 0, hi = M->m.n_docs;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (M->m.docs[mid].tok0 <= t)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static size_t block_of_token(const mem *M, uint64_t t)
{
    size_t di = doc_of_token(M, t);
    return M->doc_blk0[di] + (t - M->m.docs[di].tok0) / M->B;
}

static size_t doc_index(const mem *M, uint64_t id)
{
    size_t lo = 0, hi = M->m.n_docs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (M->doc_ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo >= M->m.n_docs || M->doc_ids[lo] != id)
        die("hit names an unknown document", MSADB_ECORRUPT);
    return lo;
}

static void load_memory(mem *M, msadb_snapshot *snap)
{
    M->N = M->m.c.n_tokens;
    M->d = M->m.c.d;
    M->G = M->m.c.G;
    M->B = M->m.c.block;
    M->scale = 1.0f / sqrtf((float)M->d);
    M->K = xmalloc(sizeof(float) * M->N * M->d);
    M->V = xmalloc(sizeof(float) * M->N * M->d);
    M->doc_blk0 = xmalloc(sizeof(size_t) * (M->m.n_docs + 1));
    size_t nb = 0;
    for (size_t di = 0; di < M->m.n_docs; di++) {
        M->doc_blk0[di] = nb;
        nb += (M->m.docs[di].len + M->B - 1) / M->B;
    }
    M->doc_blk0[M->m.n_docs] = nb;
    M->nb = nb;
    M->blk_tok0 = xmalloc(sizeof(uint64_t) * nb);
    M->blk_len = xmalloc(sizeof(uint32_t) * nb);
    for (size_t di = 0; di < M->m.n_docs; di++) {
        const wl_doc *dd = &M->m.docs[di];
        for (size_t b = M->doc_blk0[di]; b < M->doc_blk0[di + 1]; b++) {
            uint32_t off = (uint32_t)(b - M->doc_blk0[di]) * M->B;
            M->blk_tok0[b] = dd->tok0 + off;
            M->blk_len[b] = dd->len - off < M->B ? dd->len - off : M->B;
        }
        int rc = msadb_doc_kv(snap, M->doc_ids[di], 0, M->K + dd->tok0 * M->d, M->V + dd->tok0 * M->d);
        if (rc)
            die("msadb_doc_kv", rc);
        if (tty && (di % 512 == 0 || di + 1 == M->m.n_docs))
            fprintf(stderr, "\rloading: %zu/%zu documents", di + 1, M->m.n_docs);
    }
    if (tty)
        fprintf(stderr, "\n");
}

/* ------------------------------------------------------------------------ */
/* Ground truth: exact attention of every needle head over all memory       */
/* ------------------------------------------------------------------------ */

typedef struct gt {
    float lse;
    uint64_t arg; /* top token */
    float *out;   /* [d] */
    float needle_mass;
} gt;

static void ground_truth(mem *M, gt *g, size_t nq)
{
    uint32_t d = M->d;
    float *Q = xmalloc(sizeof(float) * nq * d), *O = xmalloc(sizeof(float) * nq * d);
    float *L = xmalloc(sizeof(float) * nq), *Oc = xmalloc(sizeof(float) * nq * d), *Lc = xmalloc(sizeof(float) * nq);
    float *W = xmalloc(sizeof(float) * nq * GT_CHUNK);
    float *best = xmalloc(sizeof(float) * nq);
    for (size_t i = 0; i < nq; i++) {
        const wl_query *q = &M->m.qs[i];
        memcpy(Q + i * d, q->q + (size_t)q->head * d, sizeof(float) * d);
        best[i] = -INFINITY;
    }
    for (size_t t0 = 0; t0 < M->N; t0 += GT_CHUNK) {
        size_t T = M->N - t0 < GT_CHUNK ? M->N - t0 : GT_CHUNK;
        int first = t0 == 0;
        msadb_k_attend(Q, (uint32_t)nq, M->K + t0 * d, M->V + t0 * d, T, d, M->scale, W, first ? O : Oc,
                       first ? L : Lc);
        /* the chunk's weights are in W: its argmax is the chunk's top token,
         * and log(w) + lse_chunk its logit */
        for (size_t i = 0; i < nq; i++) {
            const float *w = W + i * T;
            size_t a = 0;
            for (size_t t = 1; t < T; t++)
                if (w[t] > w[a])
                    a = t;
            float lg = logf(w[a]) + (first ? L[i] : Lc[i]);
            if (lg > best[i]) {
                best[i] = lg;
                g[i].arg = t0 + a;
            }
        }
        if (!first)
            msadb_k_lse_merge(nq, d, O, L, Oc, Lc, O, L);
        if (tty && (t0 / GT_CHUNK) % 32 == 0)
            fprintf(stderr, "\rground truth: %.0f%%", 100.0 * (t0 + T) / M->N);
    }
    if (tty)
        fprintf(stderr, "\n");
    for (size_t i = 0; i < nq; i++) {
        g[i].lse = L[i];
        g[i].out = xmalloc(sizeof(float) * d);
        memcpy(g[i].out, O + i * d, sizeof(float) * d);
        /* the needle's actual mass */
        const wl_query *q = &M->m.qs[i];
        double mass = 0;
        for (uint32_t j = 0; j < q->needle_len; j++) {
            const float *k = M->K + (M->m.docs[q->doc].tok0 + q->tok + j) * d;
            double s = 0;
            for (uint32_t c = 0; c < d; c++)
                s += (double)Q[i * d + c] * k[c];
            mass += exp(s * M->scale - L[i]);
        }
        g[i].needle_mass = (float)mass;
    }
    free(Q);
    free(O);
    free(L);
    free(Oc);
    free(Lc);
    free(W);
    free(best);
}

/* Exact dense attention of one query (all G heads) over all memory, in
 * chunks merged by LSE: the baseline the engine is compared with. */
static double time_dense(mem *M, const float *q, float *out, float *lse)
{
    uint32_t d = M->d, G = M->G;
    float *W = xmalloc(sizeof(float) * G * GT_CHUNK * 2), *Oc = xmalloc(sizeof(float) * G * d), *Lc = xmalloc(4 * G);
    double t0 = now_ms();
    for (size_t t = 0; t < M->N; t += 2 * GT_CHUNK) {
        size_t T = M->N - t < 2 * GT_CHUNK ? M->N - t : 2 * GT_CHUNK;
        if (t == 0) {
            msadb_k_attend(q, G, M->K, M->V, T, d, M->scale, W, out, lse);
        } else {
            msadb_k_attend(q, G, M->K + t * d, M->V + t * d, T, d, M->scale, W, Oc, Lc);
            msadb_k_lse_merge(G, d, out, lse, Oc, Lc, out, lse);
        }
    }
    double ms = now_ms() - t0;
    free(W);
    free(Oc);
    free(Lc);
    return ms;
}

/* ------------------------------------------------------------------------ */
/* Methods                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct result {
    char name[48];
    double bytes_per_block;
    double *lat;           /* per query, ms */
    int *hit;              /* per query */
    double *mass, *err;    /* per query (needle head) */
    double scan_ms, select_ms, read_ms, attend_ms; /* engine stats, sums */
    size_t n;
    int engine;
} result;

static void result_init(result *r, const char *name, size_t nq, double bpb, int engine)
{
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->bytes_per_block = bpb;
    r->lat = calloc(nq, sizeof(double));
    r->hit = calloc(nq, sizeof(int));
    r->mass = calloc(nq, sizeof(double));
    r->err = calloc(nq, sizeof(double));
    r->engine = engine;
    r->n = nq;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* Scores a selection of global blocks for query qi: hit, mass and (if out
 * is NULL) the sparse output computed here. */
static void evaluate(mem *M, const gt *g, size_t qi, size_t *blocks, size_t nbk, const float *out_head,
                     result *r)
{
    const wl_query *q = &M->m.qs[qi];
    uint32_t d = M->d;
    const float *qh = q->q + (size_t)q->head * d;
    qsort(blocks, nbk, sizeof *blocks, cmp_size);
    size_t tb = block_of_token(M, g[qi].arg);
    int hit = 0;
    double mass = 0;
    size_t T = 0;
    for (size_t i = 0; i < nbk; i++) {
        if (i > 0 && blocks[i] == blocks[i - 1])
            continue;
        hit |= blocks[i] == tb;
        T += M->blk_len[blocks[i]];
        for (uint32_t t = 0; t < M->blk_len[blocks[i]]; t++) {
            const float *k = M->K + (M->blk_tok0[blocks[i]] + t) * d;
            float s = 0;
            for (uint32_t c = 0; c < d; c++)
                s += qh[c] * k[c];
            mass += exp((double)s * M->scale - g[qi].lse);
        }
    }
    float o[MSADB_MAX_HEAD_DIM], l;
    if (!out_head) {
        /* sparse attention over the selected tokens (what the engine does) */
        float *Kg = xmalloc(sizeof(float) * (T + 1) * d), *Vg = xmalloc(sizeof(float) * (T + 1) * d),
              *W = xmalloc(sizeof(float) * (T + 1));
        size_t off = 0;
        for (size_t i = 0; i < nbk; i++) {
            if (i > 0 && blocks[i] == blocks[i - 1])
                continue;
            size_t n = M->blk_len[blocks[i]];
            memcpy(Kg + off * d, M->K + M->blk_tok0[blocks[i]] * d, sizeof(float) * n * d);
            memcpy(Vg + off * d, M->V + M->blk_tok0[blocks[i]] * d, sizeof(float) * n * d);
            off += n;
        }
        msadb_k_attend(qh, 1, Kg, Vg, T, d, M->scale, W, o, &l);
        free(Kg);
        free(Vg);
        free(W);
        out_head = o;
    }
    double e = 0, n2 = 0;
    for (uint32_t c = 0; c < d; c++) {
        e += (double)(out_head[c] - g[qi].out[c]) * (out_head[c] - g[qi].out[c]);
        n2 += (double)g[qi].out[c] * g[qi].out[c];
    }
    if (getenv("DEBUG_MISS") && !hit && q->needle_len && strstr(r->name, getenv("DEBUG_MISS"))) {
        size_t nbk2 = block_of_token(M, M->m.docs[q->doc].tok0 + q->tok);
        fprintf(stderr, "miss q%zu len %u: top token %llu (block %zu), needle block %zu, needle mass %.3f\n", qi,
                q->needle_len, (unsigned long long)g[qi].arg, tb, nbk2, g[qi].needle_mass);
        /* distances of the tokens of the needle block from its mean */
        const float *K = M->K + M->blk_tok0[tb] * d;
        uint32_t n = M->blk_len[tb];
        float mean[MSADB_MAX_HEAD_DIM];
        for (uint32_t c = 0; c < d; c++) {
            double s2 = 0;
            for (uint32_t t = 0; t < n; t++)
                s2 += K[t * d + c];
            mean[c] = (float)(s2 / n);
        }
        for (uint32_t t = 0; t < n; t++) {
            double dd = 0, sc = 0;
            for (uint32_t c = 0; c < d; c++) {
                dd += (double)(K[t * d + c] - mean[c]) * (K[t * d + c] - mean[c]);
                sc += (double)K[t * d + c] * qh[c];
            }
            if (dd > 500 || M->blk_tok0[tb] + t == g[qi].arg)
                fprintf(stderr, "   tok %u dist %.0f logit %.2f%s\n", t, sqrt(dd), sc * M->scale,
                        M->blk_tok0[tb] + t == g[qi].arg ? " <== top" : "");
        }
    }
    r->hit[qi] = hit;
    r->mass[qi] = mass;
    r->err[qi] = sqrt(e / (n2 > 0 ? n2 : 1));
}

/* Routing of the engine runs (msadb_query.route, route_candidates) and the
 * index entries and block summaries they scored (summed over queries). */
static int eng_route;
static uint32_t eng_cands;
static double eng_coarse, eng_fine;

/* Engine: msadb_attend with one summary kind (and mean scoring variant). */
static void run_engine(mem *M, msadb_snapshot *snap, const gt *g, size_t nq, uint32_t kind, const char *variant,
                       uint32_t k, int select, result *r)
{
    uint32_t d = M->d, G = M->G;
    if (variant)
        setenv("MSADB_MEAN_SCORE", variant, 1);
    else
        unsetenv("MSADB_MEAN_SCORE");
    size_t cap = 1 << 16;
    msadb_hit *hits = xmalloc(sizeof(msadb_hit) * cap);
    size_t *blocks = xmalloc(sizeof(size_t) * cap);
    float *out = xmalloc(sizeof(float) * G * d), *lse = xmalloc(sizeof(float) * G);
    for (size_t qi = 0; qi < nq; qi++) {
        msadb_query q;
        msadb_query_init(&q);
        msadb_query_stats st;
        q.layer = 1;
        q.q = M->m.qs[qi].q;
        q.n_query = 1;
        q.top_k = k;
        q.summary = kind;
        q.select = select;
        q.stats = &st;
        q.route = eng_route;
        q.route_candidates = eng_cands;
        size_t nh = 0;
        double t0 = now_ms();
        int rc = msadb_attend(snap, &q, out, lse, hits, cap, &nh);
        r->lat[qi] = now_ms() - t0;
        if (rc)
            die("msadb_attend", rc);
        r->scan_ms += st.scan_ms;
        r->select_ms += st.select_ms;
        r->read_ms += st.read_ms;
        r->attend_ms += st.attend_ms;
        eng_coarse += (double)st.coarse_scanned;
        eng_fine += (double)st.blocks_scanned;
        if (nh > cap)
            nh = cap;
        for (size_t i = 0; i < nh; i++)
            blocks[i] = M->doc_blk0[doc_index(M, hits[i].doc_id)] + hits[i].token_start / M->B;
        evaluate(M, g, qi, blocks, nh, out + (size_t)M->m.qs[qi].head * d, r);
    }
    unsetenv("MSADB_MEAN_SCORE");
    free(hits);
    free(blocks);
    free(out);
    free(lse);
}

/* Candidate summaries computed here from the loaded keys: r vectors per
 * block (f16), block score = max over them (and over the group's heads). */
typedef struct rawsum {
    uint32_t r;      /* vectors per block */
    uint16_t *v;     /* [nb][r][d] */
    int8_t *v8;      /* int8 copy of v (r == 1 only) */
    float *s8;
} rawsum;

static void summarize_mean(const mem *M, size_t b, uint32_t t0, uint32_t n, uint16_t *out)
{
    uint32_t d = M->d;
    for (uint32_t c = 0; c < d; c++) {
        double s = 0;
        for (uint32_t t = t0; t < t0 + n; t++)
            s += M->K[(M->blk_tok0[b] + t) * d + c];
        out[c] = msadb_f32_to_f16((float)(s / n));
    }
}

/* sub-block means: r means of B/r consecutive tokens */
static void build_sub(const mem *M, rawsum *rs, uint32_t r)
{
    rs->r = r;
    rs->v = xmalloc(2 * M->nb * r * M->d);
    for (size_t b = 0; b < M->nb; b++) {
        uint32_t n = M->blk_len[b];
        for (uint32_t j = 0; j < r; j++) {
            uint32_t a = n * j / r, e = n * (j + 1) / r;
            if (e <= a) /* short block: reuse the whole block */
                a = 0, e = n;
            summarize_mean(M, b, a, e - a, rs->v + (b * r + j) * M->d);
        }
    }
}

/* Representative vectors of each block, by a recipe of letters:
 *  m  the mean key;
 *  f  the token farthest from the mean (k-center step: a lone outlier);
 *  g  the token farthest from the mean and from f (second k-center step);
 *  P  both extreme points m + max/min_t((k_t - m).u) u along the first
 *     principal axis u of the centered keys (power iteration): a coherent run
 *     of tokens that moved together dominates the variance and owns u;
 *  p  only the extreme on the side of u that lies farther from the mean
 *     (where a displaced run sits; the other side is the bulk);
 *  Q  both extremes along the second principal axis.
 * Block score = max over the vectors (and the group's q heads). */
static uint32_t block_axis(const float *X, uint32_t n, uint32_t d, float *u, float *pr, float *w)
{
    uint32_t a = 0;
    double best = -1;
    for (uint32_t t = 0; t < n; t++) {
        double s = 0;
        for (uint32_t c = 0; c < d; c++)
            s += (double)X[t * d + c] * X[t * d + c];
        if (s > best)
            best = s, a = t;
    }
    double nn = best;
    for (uint32_t c = 0; c < d; c++)
        u[c] = nn > 0 ? X[a * d + c] / (float)sqrt(nn) : (c == 0);
    for (int it = 0; it < 12; it++) {
        for (uint32_t t = 0; t < n; t++) {
            float s = 0;
            for (uint32_t c = 0; c < d; c++)
                s += X[t * d + c] * u[c];
            pr[t] = s;
        }
        for (uint32_t c = 0; c < d; c++)
            w[c] = 0;
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t c = 0; c < d; c++)
                w[c] += pr[t] * X[t * d + c];
        nn = 0;
        for (uint32_t c = 0; c < d; c++)
            nn += (double)w[c] * w[c];
        if (nn <= 0)
            break;
        for (uint32_t c = 0; c < d; c++)
            u[c] = w[c] / (float)sqrt(nn);
    }
    for (uint32_t t = 0; t < n; t++) {
        float s = 0;
        for (uint32_t c = 0; c < d; c++)
            s += X[t * d + c] * u[c];
        pr[t] = s;
    }
    return a;
}

/* The store-wide whitening matrix W = L^-1 with L L^T = cov(keys) + eps I,
 * estimated from a sample of tokens: distances in W-space discount the
 * directions every block varies along (topics, delimiter tokens, outlier
 * channels) and expose what is unusual for this memory. */
static float *whitening(const mem *M, int within)
{
    uint32_t d = M->d;
    size_t step = M->nb / 4000 ? M->nb / 4000 : 1, ns = 0;
    double *mu = calloc(d, sizeof(double)), *C = calloc((size_t)d * d, sizeof(double));
    float kk[MSADB_MAX_HEAD_DIM], bm[MSADB_MAX_HEAD_DIM];
    for (size_t b = 0; b < M->nb; b += step)
    for (uint32_t tt = 0; tt < M->blk_len[b]; tt++, ns++) {
        const float *k = M->K + (M->blk_tok0[b] + tt) * d;
        if (tt == 0) {
            for (uint32_t i = 0; i < d; i++) {
                double s = 0;
                for (uint32_t t2 = 0; t2 < M->blk_len[b]; t2++)
                    s += M->K[(M->blk_tok0[b] + t2) * d + i];
                bm[i] = within ? (float)(s / M->blk_len[b]) : 0.0f;
            }
        }
        for (uint32_t i = 0; i < d; i++)
            kk[i] = k[i] - bm[i];
        k = kk;
        for (uint32_t i = 0; i < d; i++) {
            mu[i] += k[i];
            for (uint32_t j = 0; j <= i; j++)
                C[i * d + j] += (double)k[i] * k[j];
        }
    }
    double tr = 0;
    for (uint32_t i = 0; i < d; i++)
        mu[i] /= ns;
    for (uint32_t i = 0; i < d; i++)
        for (uint32_t j = 0; j <= i; j++) {
            C[i * d + j] = C[i * d + j] / ns - mu[i] * mu[j];
            if (i == j)
                tr += C[i * d + i];
        }
    for (uint32_t i = 0; i < d; i++)
        C[i * d + i] += 1e-3 * tr / d;
    /* Cholesky, lower triangle in place */
    for (uint32_t j = 0; j < d; j++) {
        double s = C[j * d + j];
        for (uint32_t k = 0; k < j; k++)
            s -= C[j * d + k] * C[j * d + k];
        C[j * d + j] = sqrt(s > 1e-12 ? s : 1e-12);
        for (uint32_t i = j + 1; i < d; i++) {
            double x = C[i * d + j];
            for (uint32_t k = 0; k < j; k++)
                x -= C[i * d + k] * C[j * d + k];
            C[i * d + j] = x / C[j * d + j];
        }
    }
    /* W = L^-1 (lower triangular), by forward substitution per column */
    float *W = calloc((size_t)d * d, sizeof(float));
    double *col = malloc(sizeof(double) * d);
    for (uint32_t c = 0; c < d; c++) {
        for (uint32_t i = 0; i < d; i++) {
            double x = i == c ? 1.0 : 0.0;
            for (uint32_t k = 0; k < i; k++)
                x -= C[i * d + k] * col[k];
            col[i] = x / C[i * d + i];
        }
        for (uint32_t i = 0; i < d; i++)
            W[i * d + c] = (float)col[i];
    }
    free(col);
    free(mu);
    free(C);
    return W;
}

/* Representative vectors of each block, by a recipe of letters:
 *  m  the mean key;
 *  f  the token farthest from the mean (k-center step: a lone outlier);
 *  g  the token farthest from the mean and from f (second k-center step);
 *  P  both extreme points m + max/min_t((k_t - m).u) u along the first
 *     principal axis u of the centered keys (power iteration): a coherent run
 *     of tokens that moved together dominates the variance and owns u;
 *  p  only the extreme on the side of u that lies farther from the mean
 *     (where a displaced run sits; the other side is the bulk);
 *  Q  both extremes along the second principal axis;
 *  w  the token farthest from the mean in whitened space (whitening());
 *  v  the next whitened k-center token;
 *  x  the token most extreme along the first principal axis of the
 *     whitened centered keys, on its farther side.
 * Block score = max over the vectors (and the group's q heads). */
static void build_reps(const mem *M, rawsum *rs, const char *recipe, const float *Wh)
{
    uint32_t d = M->d, r = 0;
    for (const char *c = recipe; *c; c++)
        r += (*c == 'P' || *c == 'Q') ? 2 : 1;
    rs->r = r;
    rs->v = xmalloc(2 * M->nb * r * d);
    float *X = xmalloc(sizeof(float) * M->B * d), *Z = xmalloc(sizeof(float) * M->B * d), mean[MSADB_MAX_HEAD_DIM],
          u[MSADB_MAX_HEAD_DIM], w[MSADB_MAX_HEAD_DIM], pr[4096], dist[4096], zd[4096], zp[4096];
    for (size_t b = 0; b < M->nb; b++) {
        uint32_t n = M->blk_len[b];
        const float *K = M->K + M->blk_tok0[b] * d;
        for (uint32_t c = 0; c < d; c++) {
            double s = 0;
            for (uint32_t t = 0; t < n; t++)
                s += K[t * d + c];
            mean[c] = (float)(s / n);
        }
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t c = 0; c < d; c++)
                X[t * d + c] = K[t * d + c] - mean[c];
        uint16_t *out = rs->v + b * r * d;
        uint32_t o = 0, far = 0, zfar = 0;
        for (uint32_t t = 0; t < n; t++) {
            double s = 0;
            for (uint32_t c = 0; c < d; c++)
                s += (double)X[t * d + c] * X[t * d + c];
            dist[t] = (float)s;
            if (dist[t] > dist[far])
                far = t;
        }
        if (Wh) { /* Z = X W^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)d, (int)d, 1.0f, X, (int)d, Wh, (int)d,
                        0.0f, Z, (int)d);
            for (uint32_t t = 0; t < n; t++) {
                double s = 0;
                for (uint32_t c = 0; c < d; c++)
                    s += (double)Z[t * d + c] * Z[t * d + c];
                zd[t] = (float)s;
                if (zd[t] > zd[zfar])
                    zfar = t;
            }
        }
        int axis_done = 0;
        for (const char *c = recipe; *c; c++) {
            if (*c == 'm') {
                for (uint32_t j = 0; j < d; j++)
                    out[o * d + j] = msadb_f32_to_f16(mean[j]);
                o++;
            } else if (*c == 'f' || *c == 'g' || *c == 'w' || *c == 'v') {
                uint32_t a = *c == 'w' || *c == 'v' ? zfar : far;
                if (*c == 'g' || *c == 'v') {
                    const float *S = *c == 'g' ? X : Z;
                    float *dd = *c == 'g' ? dist : zd;
                    for (uint32_t t = 0; t < n; t++) {
                        double s = 0;
                        for (uint32_t j = 0; j < d; j++)
                            s += (double)(S[t * d + j] - S[a * d + j]) * (S[t * d + j] - S[a * d + j]);
                        if (s < dd[t])
                            dd[t] = (float)s;
                    }
                    a = 0;
                    for (uint32_t t = 1; t < n; t++)
                        if (dd[t] > dd[a])
                            a = t;
                }
                for (uint32_t j = 0; j < d; j++)
                    out[o * d + j] = msadb_f32_to_f16(K[a * d + j]);
                o++;
            } else if (*c == 'a' || *c == 'b') {
                /* the window mean (4 or 16 consecutive tokens) farthest from
                 * the block mean: a run of needle tokens averages up, a lone
                 * delimiter averages down */
                uint32_t wsz = *c == 'a' ? 4 : 16, best = 0;
                double bd = -1;
                for (uint32_t s0 = 0; s0 < n; s0 += wsz) {
                    uint32_t e = s0 + wsz < n ? s0 + wsz : n;
                    double dd = 0;
                    for (uint32_t j = 0; j < d; j++) {
                        double sm = 0;
                        for (uint32_t t = s0; t < e; t++)
                            sm += X[t * d + j];
                        sm /= (e - s0);
                        dd += sm * sm;
                    }
                    if (dd > bd)
                        bd = dd, best = s0;
                }
                uint32_t e = best + wsz < n ? best + wsz : n;
                for (uint32_t j = 0; j < d; j++) {
                    double sm = 0;
                    for (uint32_t t = best; t < e; t++)
                        sm += K[t * d + j];
                    out[o * d + j] = msadb_f32_to_f16((float)(sm / (e - best)));
                }
                o++;
            } else if (*c == 'x') {
                block_axis(Z, n, d, u, zp, w);
                float pmax = -INFINITY, pmin = INFINITY;
                uint32_t amax = 0, amin = 0;
                for (uint32_t t = 0; t < n; t++) {
                    if (zp[t] > pmax)
                        pmax = zp[t], amax = t;
                    if (zp[t] < pmin)
                        pmin = zp[t], amin = t;
                }
                uint32_t a = pmax >= -pmin ? amax : amin;
                for (uint32_t j = 0; j < d; j++)
                    out[o * d + j] = msadb_f32_to_f16(K[a * d + j]);
                o++;
            } else {
                if (*c == 'Q' && axis_done == 1) { /* deflate the first axis */
                    for (uint32_t t = 0; t < n; t++)
                        for (uint32_t j = 0; j < d; j++)
                            X[t * d + j] -= pr[t] * u[j];
                }
                if ((*c == 'Q' && axis_done < 2) || (*c != 'Q' && axis_done < 1)) {
                    block_axis(X, n, d, u, pr, w);
                    axis_done++;
                }
                float pmax = -INFINITY, pmin = INFINITY;
                for (uint32_t t = 0; t < n; t++) {
                    pmax = pr[t] > pmax ? pr[t] : pmax;
                    pmin = pr[t] < pmin ? pr[t] : pmin;
                }
                if (*c == 'p') {
                    float e = pmax >= -pmin ? pmax : pmin;
                    for (uint32_t j = 0; j < d; j++)
                        out[o * d + j] = msadb_f32_to_f16(mean[j] + e * u[j]);
                    o++;
                } else {
                    for (uint32_t j = 0; j < d; j++) {
                        out[o * d + j] = msadb_f32_to_f16(mean[j] + pmax * u[j]);
                        out[(o + 1) * d + j] = msadb_f32_to_f16(mean[j] + pmin * u[j]);
                    }
                    o += 2;
                }
            }
        }
    }
    free(X);
    free(Z);
}

static void build_i8(const mem *M, rawsum *rs)
{
    uint32_t d = M->d;
    rs->v8 = xmalloc(M->nb * d);
    rs->s8 = xmalloc(sizeof(float) * M->nb);
    float tmp[MSADB_MAX_HEAD_DIM];
    for (size_t b = 0; b < M->nb; b++) {
        for (uint32_t c = 0; c < d; c++)
            tmp[c] = msadb_f16_to_f32(rs->v[b * d + c]);
        rs->s8[b] = msadb_k_quantize_i8(tmp, d, rs->v8 + b * d);
    }
}

/* Top-k over per-vector scores reduced by max over r vectors per block. */
static size_t topk_blocks(const float *sv, size_t nb, uint32_t r, uint32_t k, float *hs, uint64_t *hid,
                          float *red, uint32_t *idx)
{
    const float *s = sv;
    if (r > 1) {
        for (size_t b = 0; b < nb; b++) {
            float m = sv[b * r];
            for (uint32_t j = 1; j < r; j++)
                m = sv[b * r + j] > m ? sv[b * r + j] : m;
            red[b] = m;
        }
        s = red;
    }
    msadb_topk t;
    msadb_topk_reset(&t, hs, hid, k);
    for (size_t i0 = 0; i0 < nb; i0 += 4096) {
        size_t n = nb - i0 < 4096 ? nb - i0 : 4096;
        size_t c = msadb_k_select_ge(s + i0, n, msadb_topk_threshold(&t), idx);
        for (size_t j = 0; j < c; j++)
            msadb_topk_offer(&t, s[i0 + idx[j]], i0 + idx[j]);
    }
    msadb_topk_sort(&t);
    return t.n;
}

/* A candidate summary: scan (one thread) + top-k, then evaluate.  With
 * rescore (int8 mean), the int8 scan keeps 4k candidates that are then
 * rescored with the f16 mean. */
static void run_raw(mem *M, const gt *g, size_t nq, const rawsum *rs, int use_i8, uint32_t k, result *r)
{
    uint32_t d = M->d, R = use_i8 ? 1 : rs->r;
    size_t nv = M->nb * R;
    float *sv = xmalloc(sizeof(float) * nv), *red = xmalloc(sizeof(float) * M->nb);
    uint32_t *idx = xmalloc(sizeof(uint32_t) * 4096);
    uint32_t kk = use_i8 ? 4 * k : k;
    float *hs = xmalloc(sizeof(float) * kk);
    uint64_t *hid = xmalloc(8 * kk);
    size_t *blocks = xmalloc(sizeof(size_t) * kk);
    msadb_kq kq;
    memset(&kq, 0, sizeof kq);
    for (size_t qi = 0; qi < nq; qi++) {
        double t0 = now_ms();
        if (msadb_kq_prepare(&kq, M->m.qs[qi].q, 1, M->G, 0, d, d, 0))
            die("kq", MSADB_ENOMEM);
        size_t n;
        if (use_i8) {
            msadb_k_score_i8(&kq, rs->v8, rs->s8, M->nb, sv, M->nb);
            n = topk_blocks(sv, M->nb, 1, kk, hs, hid, red, idx);
            /* rescore the candidates with the f16 means */
            for (size_t i = 0; i < n; i++)
                msadb_k_score_mean(&kq, rs->v + hid[i] * d, 1, 0, &hs[i], 1);
            msadb_k_topk_array(hs, hid, n, k);
            n = n < k ? n : k;
        } else {
            msadb_k_score_mean(&kq, rs->v, nv, 0, sv, nv);
            n = topk_blocks(sv, M->nb, R, k, hs, hid, red, idx);
        }
        r->lat[qi] = now_ms() - t0;
        for (size_t i = 0; i < n; i++)
            blocks[i] = hid[i];
        evaluate(M, g, qi, blocks, n, NULL, r);
    }
    msadb_kq_free(&kq);
    free(sv);
    free(red);
    free(idx);
    free(hs);
    free(hid);
    free(blocks);
}

/* The proposed stored summary, exactly as the library would compute and
 * scan it (msadb_summarize_reps, int8, two scan threads over 256-block
 * pages with per-thread heaps): the latency is scan + select; the engine
 * adds its read + attend time (about the same as for any summary). */
typedef struct reps_job {
    const msadb_kq *kq;
    const int8_t *v8;
    const float *sc;
    size_t b0, b1;
    uint32_t k;
    float tmp[256 * MSADB_K_REPS], s[256], hs[64];
    uint64_t hid[64];
    uint32_t idx[256], n;
} reps_job;

static void *reps_job_run(void *arg)
{
    reps_job *j = arg;
    msadb_topk t;
    msadb_topk_reset(&t, j->hs, j->hid, j->k);
    size_t vb = (size_t)MSADB_K_REPS * j->kq->d;
    for (size_t b = j->b0; b < j->b1; b += 256) {
        size_t n = j->b1 - b < 256 ? j->b1 - b : 256;
        msadb_k_score_reps_i8(j->kq, j->v8 + b * vb, j->sc + b * MSADB_K_REPS, n, MSADB_K_REPS, j->tmp, j->s, n);
        size_t c = msadb_k_select_ge(j->s, n, msadb_topk_threshold(&t), j->idx);
        for (size_t x = 0; x < c; x++)
            msadb_topk_offer(&t, j->s[j->idx[x]], b + j->idx[x]);
    }
    j->n = t.n;
    return NULL;
}

static void run_reps_i8(mem *M, const gt *g, size_t nq, uint32_t k, result *r)
{
    uint32_t d = M->d;
    int8_t *v8 = msadb_aalloc(M->nb * MSADB_K_REPS * d);
    float *sc = xmalloc(sizeof(float) * M->nb * MSADB_K_REPS);
    for (size_t b = 0; b < M->nb; b++)
        msadb_summarize_reps(M->K + M->blk_tok0[b] * d, M->blk_len[b], d, v8 + b * MSADB_K_REPS * d,
                               sc + b * MSADB_K_REPS);
    static reps_job jobs[2];
    msadb_kq kq;
    memset(&kq, 0, sizeof kq);
    size_t blocks[128];
    float ms[128];
    uint64_t mid[128];
    for (size_t qi = 0; qi < nq; qi++) {
        double t0 = now_ms();
        if (msadb_kq_prepare(&kq, M->m.qs[qi].q, 1, M->G, 0, d, d, 0))
            die("kq", MSADB_ENOMEM);
        pthread_t th;
        for (int t = 0; t < 2; t++) {
            jobs[t].kq = &kq;
            jobs[t].v8 = v8;
            jobs[t].sc = sc;
            jobs[t].b0 = M->nb * t / 2;
            jobs[t].b1 = M->nb * (t + 1) / 2;
            jobs[t].k = k;
        }
        pthread_create(&th, NULL, reps_job_run, &jobs[1]);
        reps_job_run(&jobs[0]);
        pthread_join(th, NULL);
        size_t m = 0;
        for (int t = 0; t < 2; t++)
            for (uint32_t i = 0; i < jobs[t].n; i++) {
                ms[m] = jobs[t].hs[i];
                mid[m++] = jobs[t].hid[i];
            }
        msadb_k_topk_array(ms, mid, m, k);
        r->lat[qi] = now_ms() - t0;
        size_t n = m < k ? m : k;
        for (size_t i = 0; i < n; i++)
            blocks[i] = mid[i];
        evaluate(M, g, qi, blocks, n, NULL, r);
    }
    msadb_kq_free(&kq);
    msadb_afree(v8);
    free(sc);
}

/* ------------------------------------------------------------------------ */
/* FAISS                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct faiss_cfg {
    char index[16];
    int32_t param;
    float build_s, lat_med, lat_p90;
    double hit[4]; /* needle lengths 1, 4, 16, all */
} faiss_cfg;

static int run_faiss(mem *M, const gt *g, size_t nq, const char *script, const char *workdir, size_t hnsw_max,
                     uint32_t k, faiss_cfg **out, size_t *n_out)
{
    char path[4096], cmd[8192];
    mkdir(workdir, 0755);
    snprintf(path, sizeof path, "%s/keys.f32", workdir);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(M->K, sizeof(float) * M->d, M->N, f) != M->N || fclose(f))
        return -1;
    snprintf(path, sizeof path, "%s/queries.f32", workdir);
    f = fopen(path, "wb");
    for (size_t qi = 0; f && qi < nq; qi++)
        if (fwrite(M->m.qs[qi].q, sizeof(float) * M->d, M->G, f) != M->G)
            return -1;
    if (!f || fclose(f))
        return -1;
    /* the keys are on disk now: give the memory to FAISS */
    free(M->V);
    M->V = NULL;
    free(M->K);
    M->K = NULL;
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' --dir '%s' --n %zu --d %u --nq %zu --g %u --k %u --hnsw-max %zu %s",
             script, workdir, M->N, M->d, nq, M->G, k, hnsw_max, tty ? "" : "--quiet");
    if (system(cmd) != 0)
        return -1;
    snprintf(path, sizeof path, "%s/faiss_results.bin", workdir);
    f = fopen(path, "rb");
    if (!f)
        return -1;
    int32_t ncfg = 0;
    if (fread(&ncfg, 4, 1, f) != 1 || ncfg < 0 || ncfg > 1000)
        return -1;
    faiss_cfg *cf = calloc((size_t)ncfg, sizeof *cf);
    int64_t *ids = xmalloc(sizeof(int64_t) * M->G * k);
    for (int c = 0; c < ncfg; c++) {
        char name[16];
        float hdr[3];
        if (fread(name, 16, 1, f) != 1 || fread(&cf[c].param, 4, 1, f) != 1 || fread(hdr, 4, 3, f) != 3)
            return -1;
        memcpy(cf[c].index, name, 16);
        cf[c].index[15] = 0;
        cf[c].build_s = hdr[0];
        cf[c].lat_med = hdr[1];
        cf[c].lat_p90 = hdr[2];
        double hits[4] = {0}, cnt[4] = {0};
        for (size_t qi = 0; qi < nq; qi++) {
            if (fread(ids, sizeof(int64_t), (size_t)M->G * k, f) != (size_t)M->G * k)
                return -1;
            const wl_query *q = &M->m.qs[qi];
            if (!q->needle_len)
                continue;
            size_t tb = block_of_token(M, g[qi].arg);
            int hit = 0;
            for (size_t i = 0; i < (size_t)M->G * k; i++)
                if (ids[i] >= 0 && block_of_token(M, (uint64_t)ids[i]) == tb)
                    hit = 1;
            int li = q->needle_len == 1 ? 0 : q->needle_len == 4 ? 1 : 2;
            hits[li] += hit;
            cnt[li]++;
            hits[3] += hit;
            cnt[3]++;
        }
        for (int i = 0; i < 4; i++)
            cf[c].hit[i] = cnt[i] ? hits[i] / cnt[i] : NAN;
    }
    fclose(f);
    free(ids);
    *out = cf;
    *n_out = (size_t)ncfg;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Scan-only mode: 100M tokens                                              */
/* ------------------------------------------------------------------------ */

typedef struct scan_job {
    const msadb_kq *kq;
    const uint16_t *v;
    const int8_t *v8;
    const float *s8;
    size_t n;
    float *scores;
    float hs[64];
    uint64_t hid[64];
    uint32_t *idx;
    uint32_t k;
    size_t base;
} scan_job;

static void *scan_job_run(void *arg)
{
    scan_job *j = arg;
    msadb_topk t;
    msadb_topk_reset(&t, j->hs, j->hid, j->k);
    for (size_t i0 = 0; i0 < j->n; i0 += 256) { /* page by page, as the engine */
        size_t n = j->n - i0 < 256 ? j->n - i0 : 256;
        if (j->v8)
            msadb_k_score_i8(j->kq, j->v8 + i0 * j->kq->d, j->s8 + i0, n, j->scores, n);
        else
            msadb_k_score_mean(j->kq, j->v + i0 * j->kq->d, n, 0, j->scores, n);
        size_t c = msadb_k_select_ge(j->scores, n, msadb_topk_threshold(&t), j->idx);
        for (size_t x = 0; x < c; x++)
            msadb_topk_offer(&t, j->scores[j->idx[x]], j->base + i0 + j->idx[x]);
    }
    return NULL;
}

/* A random query of G heads (q: G * d floats) prepared into kq, and eight
 * scan jobs with room for cap scores each (scan_jobs_free). */
static void scan_setup(wl_rng *g, uint32_t G, uint32_t d, float *q, msadb_kq *kq, scan_job jobs[8], size_t cap)
{
    for (uint32_t i = 0; i < G * d; i++)
        q[i] = wl_randn(g);
    memset(kq, 0, sizeof *kq);
    msadb_kq_prepare(kq, q, 1, G, 0, d, d, 0);
    for (int t = 0; t < 8; t++) {
        jobs[t].scores = xmalloc(sizeof(float) * cap);
        jobs[t].idx = xmalloc(sizeof(uint32_t) * cap);
    }
}

static void scan_jobs_free(scan_job jobs[8])
{
    for (int t = 0; t < 8; t++) {
        free(jobs[t].scores);
        free(jobs[t].idx);
    }
}

static double scan_once(const msadb_kq *kq, const uint16_t *v, const int8_t *v8, const float *s8, size_t nb,
                        int threads, uint32_t k, scan_job *jobs)
{
    pthread_t th[8];
    double t0 = now_ms();
    for (int t = 0; t < threads; t++) {
        size_t a = nb * t / threads, b = nb * (t + 1) / threads;
        jobs[t].kq = kq;
        jobs[t].v = v ? v + a * kq->d : NULL;
        jobs[t].v8 = v8 ? v8 + a * kq->d : NULL;
        jobs[t].s8 = s8 ? s8 + a : NULL;
        jobs[t].n = b - a;
        jobs[t].base = a;
        jobs[t].k = k;
        if (t > 0)
            pthread_create(&th[t], NULL, scan_job_run, &jobs[t]);
    }
    scan_job_run(&jobs[0]);
    for (int t = 1; t < threads; t++)
        pthread_join(th[t], NULL);
    /* merge */
    float ms[8 * 64];
    uint64_t mid[8 * 64];
    size_t m = 0;
    for (int t = 0; t < threads; t++)
        for (uint32_t i = 0; i < k; i++) {
            ms[m] = jobs[t].hs[i];
            mid[m++] = jobs[t].hid[i];
        }
    msadb_k_topk_array(ms, mid, m, k);
    return now_ms() - t0;
}

static int scan_only(uint64_t n_tokens, uint32_t k)
{
    const uint32_t d = 128, G = 4, B = 64;
    size_t nb = (size_t)((n_tokens + B - 1) / B);
    uint16_t *v = msadb_aalloc(2 * nb * d);
    int8_t *v8 = msadb_aalloc(nb * d);
    float *s8 = xmalloc(sizeof(float) * nb);
    if (!v || !v8)
        die("out of memory", MSADB_ENOMEM);
    wl_rng g;
    wl_rng_seed(&g, 7);
    wl_ntab_init();
    float tmp[128];
    for (size_t b = 0; b < nb; b++) {
        for (uint32_t c = 0; c < d; c++) {
            tmp[c] = 0.3f * wl_fastn(&g);
            v[b * d + c] = msadb_f32_to_f16(tmp[c]);
            tmp[c] = msadb_f16_to_f32(v[b * d + c]);
        }
        s8[b] = msadb_k_quantize_i8(tmp, d, v8 + b * d);
    }
    float q[4 * 128];
    msadb_kq kq;
    scan_job jobs[8];
    scan_setup(&g, G, d, q, &kq, jobs, 256);
    const char *names[4] = {"f16 mean, 1 thread", "f16 mean, 2 threads", "int8 mean, 1 thread", "int8 mean, 2 threads"};
    double med[4];
    for (int m = 0; m < 4; m++) {
        double lat[15];
        for (int rep = 0; rep < 15; rep++)
            lat[rep] = scan_once(&kq, m < 2 ? v : NULL, m < 2 ? NULL : v8, m < 2 ? NULL : s8, nb, m % 2 ? 2 : 1, k,
                                 jobs);
        med[m] = percentile(lat, 15, 0.5);
    }
    if (json) {
        printf("{\"mode\": \"scan-only\", ");
        machine_json();
        printf("\"tokens\": %llu, \"blocks\": %zu, \"d\": %u, \"q_heads\": %u, \"k\": %u, "
               "\"results\": [",
               (unsigned long long)n_tokens, nb, d, G, k);
        for (int m = 0; m < 4; m++)
            printf("%s{\"method\": \"%s\", \"ms\": %.3f, \"bytes\": %zu, \"gb_s\": %.2f}", m ? ", " : "", names[m],
                   med[m], (m < 2 ? 2 * d : d + 4) * nb, (m < 2 ? 2.0 * d : d + 4.0) * nb / med[m] / 1e6);
        printf("]}\n");
    } else {
        printf("scan + top-%u over %zu blocks (%llu tokens, d %u, %u q heads), median of 15:\n", k, nb,
               (unsigned long long)n_tokens, d, G);
        for (int m = 0; m < 4; m++)
            printf("  %-22s %8.2f ms  %6.1f GB/s\n", names[m], med[m],
                   (m < 2 ? 2.0 * d : d + 4.0) * nb / med[m] / 1e6);
    }
    msadb_afree(v);
    msadb_afree(v8);
    free(s8);
    scan_jobs_free(jobs);
    msadb_kq_free(&kq);
    return 0;
}

/* --route-scale TOKENS --dim D [--planes P]: routing cost at a size no
 * store is built for: random int8 representatives of TOKENS/64 blocks per
 * plane (3 per block, in RAM; planes after the first are copies of it at
 * their own addresses), their coarse pages built as the store builds them
 * (S 16, R 8, mixed k-center), then per question
 * (4 q heads, top-16) the exhaustive scan and the two levels (coarse scan,
 * then the blocks of the best 64 super-blocks) of every plane, one plane
 * after the other as the engine routes them, with 1 and 2 threads, best
 * and median of 9.  With P planes the lines also give the routing of P/8
 * planes (one routing plane per layer of 8 kv heads) and of one plane
 * (one selection for the whole question).  Quality is not measured here
 * (random vectors have no needles): --route-sweep and bench_scale do that. */
static int route_scale(uint64_t n_tokens, uint32_t d, uint32_t k, uint32_t P)
{
    size_t nb = (size_t)((n_tokens + 63) / 64), nv = 3 * nb;
    msadb_coarse_layout C = {d, 16, 8, MSADB_COARSE_KCENTER_MIX};
    size_t n_pages = (nb + 255) / 256, ns = (nb + C.S - 1) / C.S, nc = ns * C.R;
    int8_t *v8 = msadb_aalloc(P * nv * d), *c8 = msadb_aalloc(P * nc * d);
    float *s8 = xmalloc(sizeof(float) * nv * P), *cs = xmalloc(sizeof(float) * nc * P);
    uint8_t *page = msadb_aalloc(msadb_coarse_page_bytes(&C, 256));
    if (!v8 || !c8 || !page)
        die("out of memory", MSADB_ENOMEM);
    wl_rng g;
    wl_rng_seed(&g, 7);
    wl_ntab_init();
    float tmp[1024];
    for (size_t b = 0; b < nv; b++) {
        for (uint32_t c = 0; c < d; c++)
            tmp[c] = 0.3f * wl_fastn(&g);
        s8[b] = msadb_k_quantize_i8(tmp, d, v8 + b * d);
    }
    double t0 = now_ms();
    for (uint32_t pl = 0; pl < 1; pl++)
        for (size_t p = 0; p < n_pages; p++) {
            size_t n = nb - p * 256 < 256 ? nb - p * 256 : 256;
            msadb_summ_view fine = {0}, cv;
            fine.reps = v8 + (pl * nv + p * 256 * 3) * d;
            fine.reps_scale = s8 + pl * nv + p * 256 * 3;
            fine.n_reps = 3;
            msadb_coarse_page_build(&C, &fine, n, page);
            msadb_coarse_view_of(&C, page, n, &cv);
            size_t e0 = pl * ns + p * 256 / C.S, ne = msadb_coarse_entries(&C, n);
            memcpy(c8 + e0 * C.R * d, cv.reps, ne * C.R * d);
            memcpy(cs + e0 * C.R, cv.reps_scale, ne * C.R * sizeof(float));
        }
    double build_ms = now_ms() - t0;
    /* the other planes: copies of plane 0 at their own addresses (the cost
     * of a scan does not depend on the random values) */
    for (uint32_t pl = 1; pl < P; pl++) {
        memcpy(v8 + pl * nv * d, v8, nv * d);
        memcpy(s8 + pl * nv, s8, nv * sizeof(float));
        memcpy(c8 + pl * nc * d, c8, nc * d);
        memcpy(cs + pl * nc, cs, nc * sizeof(float));
    }
    float q[4 * 1024];
    msadb_kq kq;
    scan_job jobs[8];
    scan_setup(&g, 4, d, q, &kq, jobs, 256 * 3);
    printf("{\"mode\": \"route-scale\", ");
    machine_json();
    printf("\"tokens\": %llu, \"d\": %u, \"planes\": %u, \"blocks\": %zu, "
           "\"coarse_vectors\": %zu, \"build_ms\": %.0f, \"results\": [",
           (unsigned long long)n_tokens, d, P, nb, nc, build_ms);
    double load0 = machine_load();
    for (int th = 1; th <= 2; th++) {
        double scan[9], idx[9], idx_l[9], idx_1[9], idx_cpu[9], scan_cpu[9];
        uint32_t per_layer = P >= 8 ? P / 8 : 1;
        for (int rep = 0; rep < 9; rep++) {
            scan[rep] = idx[rep] = idx_cpu[rep] = scan_cpu[rep] = 0;
            for (uint32_t pl = 0; pl < P; pl++) {
                const int8_t *pv = v8 + pl * nv * d, *pc = c8 + pl * nc * d;
                const float *ps = s8 + pl * nv, *pcs = cs + pl * nc;
                double c0 = proc_cpu_ms();
                scan[rep] += scan_once(&kq, NULL, pv, ps, nv, th, k, jobs);
                double c1 = proc_cpu_ms();
                scan_cpu[rep] += c1 - c0;
                /* level 1 over the coarse vectors (top 64 * R vectors: at
                 * most 64 super-blocks' worth), then level 2 over 64
                 * super-blocks of 16 blocks at places spread over the memory */
                double a = scan_once(&kq, NULL, pc, pcs, nc, th, 64 > k ? 64 : k, jobs);
                double b = 0;
                for (int c = 0; c < 64; c++) {
                    size_t sb = (size_t)(jobs[0].hid[c % k] / C.R) % ns;
                    size_t v0 = sb * C.S * 3, n = (nv - v0) < C.S * 3 ? nv - v0 : C.S * 3;
                    b += scan_once(&kq, NULL, pv + v0 * d, ps + v0, n, 1, k, jobs);
                }
                idx[rep] += a + b;
                idx_cpu[rep] += proc_cpu_ms() - c1;
                if (pl + 1 == 1)
                    idx_1[rep] = idx[rep];
                if (pl + 1 == per_layer)
                    idx_l[rep] = idx[rep];
            }
        }
        printf("%s{\"threads\": %d, \"scan_best_ms\": %.3f, \"scan_p50_ms\": %.3f, \"index_best_ms\": %.3f, "
               "\"index_p50_ms\": %.3f, \"index_%u_planes_p50_ms\": %.3f, \"index_1_plane_p50_ms\": %.3f, "
               "\"scan_cpu_p50_ms\": %.3f, \"index_cpu_p50_ms\": %.3f, \"scan_mb\": %.1f, \"index_mb\": %.1f}",
               th > 1 ? ", " : "", th, percentile(scan, 9, 0.0), percentile(scan, 9, 0.5), percentile(idx, 9, 0.0),
               percentile(idx, 9, 0.5), per_layer, percentile(idx_l, 9, 0.5), percentile(idx_1, 9, 0.5),
               percentile(scan_cpu, 9, 0.5), percentile(idx_cpu, 9, 0.5),
               P * nv * (d + 4.0) / 1e6, P * (nc + 64.0 * C.S * 3) * (d + 4.0) / 1e6);
    }
    printf("], \"loadavg_start\": %.2f, \"loadavg\": %.2f}\n", load0, machine_load());
    msadb_afree(v8);
    msadb_afree(c8);
    msadb_afree(page);
    free(s8);
    free(cs);
    scan_jobs_free(jobs);
    msadb_kq_free(&kq);
    return 0;
}

static void summarize(const mem *M, const result *r, size_t nq, double out[8]);

/* --route-sweep "S:R,..." --cands "C,...": for every index shape, the
 * exhaustive scan (reference, same run) and the index at every candidate
 * count: hit rates, mass recall, latency, entries scored, bytes touched. */
static void route_sweep(mem *M, msadb_store *st, const gt *g, size_t nq, uint32_t k, const char *shapes,
                        const char *cands)
{
    const char *sp = shapes;
    while (*sp) {
        unsigned S, R, kind = 1;
        if (sscanf(sp, "%u:%u:%u", &S, &R, &kind) < 2)
            die("--route-sweep wants S:R[:kind],...", MSADB_EINVAL);
        double t0 = now_ms();
        int rc = msadb_route_rebuild(st, S, R, kind);
        if (rc)
            die("msadb_route_rebuild", rc);
        double build_ms = now_ms() - t0;
        msadb_snapshot *snap;
        if ((rc = msadb_snapshot_begin(st, &snap)))
            die("msadb_snapshot_begin", rc);
        const char *cp = cands;
        for (int first = 1; first || *cp; first = 0) {
            result r;
            unsigned C = 0;
            if (!first && sscanf(cp, "%u", &C) != 1)
                die("--cands wants C,...", MSADB_EINVAL);
            eng_route = first ? MSADB_ROUTE_SCAN : MSADB_ROUTE_INDEX;
            eng_cands = C;
            eng_coarse = eng_fine = 0;
            result_init(&r, first ? "scan" : "index", nq, 0, 1);
            run_engine(M, snap, g, nq, MSADB_SUMMARY_REPS, NULL, k, MSADB_SELECT_BLOCKS, &r);
            double o[8];
            summarize(M, &r, nq, o);
            double ce = eng_coarse / nq, fe = eng_fine / nq;
            double bytes = ce * R * (M->d + 4.0) + fe * MSADB_K_REPS * (M->d + 4.0);
            printf("{\"kind\": %u, \"S\": %u, \"R\": %u, \"route\": \"%s\", \"C\": %u, \"p50_ms\": %.3f, \"p90_ms\": %.3f, "
                   "\"hit1\": %.3f, \"hit4\": %.3f, \"hit16\": %.3f, \"mass\": %.4f, \"coarse\": %.0f, "
                   "\"fine\": %.0f, \"mb_touched\": %.2f, \"build_ms\": %.0f, \"loadavg\": %.2f}\n",
                   kind, S, R, r.name, C, o[0], o[1], o[2], o[3], o[4], o[5], ce, fe, bytes / 1e6, build_ms,
                   machine_load());
            fflush(stdout);
            free(r.lat);
            free(r.hit);
            free(r.mass);
            free(r.err);
            if (!first) {
                cp = strchr(cp, ',');
                cp = cp ? cp + 1 : "";
            }
        }
        msadb_snapshot_end(snap);
        sp = strchr(sp, ',');
        sp = sp ? sp + 1 : "";
    }
    eng_route = 0;
    eng_cands = 0;
}

static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* --scan-dims N: the int8 representatives scan (3 vectors of d int8 + 3
 * f32 scales per block, top-k of the per-block max, page by page) at every
 * common head dim and GQA group size, with the four-at-a-time kernel tiles
 * and without them (the previous kernel), 1 and 2 threads, same run. */
static int scan_dims(uint64_t n_tokens, uint32_t k)
{
    const uint32_t dims[] = {64, 80, 96, 128, 256}, groups[] = {1, 2, 4, 8};
    size_t nb = (size_t)((n_tokens + 63) / 64), nv = 3 * nb;
    wl_rng g;
    wl_rng_seed(&g, 7);
    wl_ntab_init();
    if (json) {
        printf("{\"mode\": \"scan-dims\", ");
        machine_json();
        printf("\"tokens\": %llu, \"blocks\": %zu, \"k\": %u, \"loadavg\": %.2f, \"results\": [",
               (unsigned long long)n_tokens, nb, k, machine_load());
    }
    int first = 1;
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        uint32_t d = dims[di];
        int8_t *v8 = msadb_aalloc(nv * d);
        float *s8 = xmalloc(sizeof(float) * nv);
        float tmp[256];
        for (size_t b = 0; b < nv; b++) {
            for (uint32_t c = 0; c < d; c++)
                tmp[c] = 0.3f * wl_fastn(&g);
            s8[b] = msadb_k_quantize_i8(tmp, d, v8 + b * d);
        }
        for (size_t gi = 0; gi < sizeof groups / sizeof groups[0]; gi++) {
            uint32_t G = groups[gi];
            float q[8 * 256];
            msadb_kq kq;
            scan_job jobs[8];
            scan_setup(&g, G, d, q, &kq, jobs, 256 * 3);
            /* best of 7 wall clock (the shared machine's other work only
             * ever adds time), and thread CPU time of the 1-thread runs */
            double med[2][2], cpu[2];
            for (int tiles = 0; tiles <= 1; tiles++)
                for (int th = 1; th <= 2; th++) {
                    msadb_k_i8_tiles(tiles);
                    double lat[7], c0 = cpu_ms();
                    for (int rep = 0; rep < 7; rep++)
                        lat[rep] = scan_once(&kq, NULL, v8, s8, nv, th, k, jobs);
                    if (th == 1)
                        cpu[tiles] = (cpu_ms() - c0) / 7;
                    med[tiles][th - 1] = percentile(lat, 7, 0.0);
                }
            msadb_k_i8_tiles(1);
            double bytes = (double)nv * (d + 4);
            if (json)
                printf("%s{\"d\": %u, \"gqa\": %u, \"old_ms_1t\": %.3f, \"old_ms_2t\": %.3f, \"ms_1t\": %.3f, "
                       "\"ms_2t\": %.3f, \"gb_s_2t\": %.2f, \"old_gb_s_2t\": %.2f, \"cpu_ms\": %.3f, "
                       "\"old_cpu_ms\": %.3f}",
                       first ? "" : ", ", d, G, med[0][0], med[0][1], med[1][0], med[1][1], bytes / med[1][1] / 1e6,
                       bytes / med[0][1] / 1e6, cpu[1], cpu[0]);
            else
                printf("d %3u gqa %u: tiles %6.2f ms 1t, %6.2f ms 2t (%5.1f GB/s), %5.1f GB/s per CPU s; one at a "
                       "time %6.2f / %6.2f ms (%5.1f GB/s), %5.1f GB/s per CPU s; CPU x%.2f\n",
                       d, G, med[1][0], med[1][1], bytes / med[1][1] / 1e6, bytes / cpu[1] / 1e6, med[0][0], med[0][1],
                       bytes / med[0][1] / 1e6, bytes / cpu[0] / 1e6, cpu[0] / cpu[1]);
            first = 0;
            scan_jobs_free(jobs);
            msadb_kq_free(&kq);
        }
        msadb_afree(v8);
        free(s8);
    }
    if (json)
        printf("]}\n");
    else
        printf("load average %.2f\n", machine_load());
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Report                                                                   */
/* ------------------------------------------------------------------------ */

static void summarize(const mem *M, const result *r, size_t nq, double out[8])
{
    /* hit rate per needle length, mass and error medians over needle queries */
    double h[3] = {0}, c[3] = {0}, mass = 0, nm = 0;
    double *lat = xmalloc(sizeof(double) * nq), *err = xmalloc(sizeof(double) * nq);
    size_t ne = 0;
    for (size_t qi = 0; qi < nq; qi++) {
        lat[qi] = r->lat[qi];
        const wl_query *q = &M->m.qs[qi];
        if (!q->needle_len)
            continue;
        int li = q->needle_len == 1 ? 0 : q->needle_len == 4 ? 1 : 2;
        h[li] += r->hit[qi];
        c[li]++;
        mass += r->mass[qi];
        nm++;
        err[ne++] = r->err[qi];
    }
    out[0] = percentile(lat, nq, 0.5);
    out[1] = percentile(lat, nq, 0.9);
    for (int i = 0; i < 3; i++)
        out[2 + i] = c[i] ? h[i] / c[i] : NAN;
    out[5] = nm ? mass / nm : NAN;
    out[6] = percentile(err, ne, 0.5);
    out[7] = ne ? err[(size_t)(0.9 * (ne - 1) + 0.5)] : NAN;
    free(lat);
    free(err);
}

/* Whether `item` is one of the comma-separated words of `list`. */
static int in_list(const char *list, const char *item)
{
    size_t n = strlen(item);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, item, n))
            return 1;
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_query [--json] [--k K] [--limit Q] [--exact-reps R] [--faiss SCRIPT]\n"
                    "                   [--hnsw-max N] [--workdir DIR] [--no-raw] [--no-engine]\n"
                    "                   [--recipes LIST] STORE\n"
                    "       bench_query [--json] [--k K] --scan-only TOKENS\n"
                    "       bench_query [--json] [--k K] --scan-dims TOKENS\n"
                    "       bench_query [--k K] [--limit N] --route-sweep S:R[:kind],... [--cands C,...] DIR\n"
                    "       bench_query [--k K] [--dim D] [--planes P] --route-scale TOKENS\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *store_dir = NULL, *faiss = NULL, *workdir = "/tmp/msadb-bench-faiss";
    uint32_t k = 16;
    size_t limit = 0, hnsw_max = 2000000;
    int exact_reps = 3, no_raw = 0, no_engine = 0;
    const char *recipe_list = NULL;
    uint64_t scan_tokens = 0, scan_dims_tokens = 0;
    const char *sweep = NULL, *sweep_cands = "16,32,64,128";
    uint64_t scale_tokens = 0;
    uint32_t scale_dim = 64, scale_planes = 1;
    tty = isatty(2);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--json"))
            json = 1;
        else if (!strcmp(a, "--k") && more)
            k = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--limit") && more)
            limit = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--exact-reps") && more)
            exact_reps = atoi(argv[++i]);
        else if (!strcmp(a, "--faiss") && more)
            faiss = argv[++i];
        else if (!strcmp(a, "--hnsw-max") && more)
            hnsw_max = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--workdir") && more)
            workdir = argv[++i];
        else if (!strcmp(a, "--no-raw"))
            no_raw = 1;
        else if (!strcmp(a, "--recipes") && more)
            recipe_list = argv[++i];
        else if (!strcmp(a, "--no-engine"))
            no_engine = 1;
        else if (!strcmp(a, "--scan-only") && more)
            scan_tokens = (uint64_t)strtod(argv[++i], NULL);
        else if (!strcmp(a, "--planes") && more)
            scale_planes = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--route-scale") && more)
            scale_tokens = (uint64_t)strtod(argv[++i], NULL);
        else if (!strcmp(a, "--dim") && more)
            scale_dim = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(a, "--route-sweep") && more)
            sweep = argv[++i];
        else if (!strcmp(a, "--cands") && more)
            sweep_cands = argv[++i];
        else if (!strcmp(a, "--scan-dims") && more)
            scan_dims_tokens = (uint64_t)strtod(argv[++i], NULL);
        else if (a[0] == '-' || store_dir)
            usage();
        else
            store_dir = a;
    }
    if (k < 1 || k > 64 || exact_reps < 1)
        usage();
    if (scan_tokens)
        return scan_only(scan_tokens, k);
    if (scan_dims_tokens)
        return scan_dims(scan_dims_tokens, k);
    if (scale_tokens)
        return scale_dim < 1 || scale_dim > 1024 || scale_planes < 1 || scale_planes > 1024
                   ? (usage(), 2)
                   : route_scale(scale_tokens, scale_dim, k, scale_planes);
    if (!store_dir)
        usage();

    mem M;
    memset(&M, 0, sizeof M);
    char path[4096];
    snprintf(path, sizeof path, "%s/workload.bin", store_dir);
    if (wl_load(&M.m, path, &M.doc_ids)) {
        fprintf(stderr, "bench_query: cannot read %s (write the store with gen_workload)\n", path);
        return 1;
    }
    msadb_options opt;
    msadb_options_init(&opt);
    opt.read_only = sweep == NULL; /* the sweep rebuilds the index */
    msadb_store *st;
    int rc = msadb_open(store_dir, NULL, &opt, &st);
    if (rc)
        die("msadb_open", rc);
    const msadb_signature *sig = msadb_store_signature(st);
    msadb_snapshot *snap;
    if ((rc = msadb_snapshot_begin(st, &snap)))
        die("msadb_snapshot_begin", rc);
    load_memory(&M, snap);
    size_t nq = M.m.n_q;
    if (limit && limit < nq)
        nq = limit;

    double t0 = now_ms();
    gt *g = calloc(nq, sizeof(gt));
    ground_truth(&M, g, nq);
    double gt_ms = now_ms() - t0;

    if (sweep) {
        msadb_snapshot_end(snap);
        route_sweep(&M, st, g, nq, k, sweep, sweep_cands);
        msadb_close(st);
        return 0;
    }

    /* dense baseline */
    double dense[16];
    float *dout = xmalloc(sizeof(float) * M.G * M.d), *dlse = xmalloc(sizeof(float) * M.G);
    for (int r = 0; r < exact_reps && r < 16; r++)
        dense[r] = time_dense(&M, M.m.qs[r % nq].q, dout, dlse);
    double dense_ms = percentile(dense, (size_t)(exact_reps < 16 ? exact_reps : 16), 0.5);

    result res[MAXM];
    int nm = 0;
    double bpb_mean = 2.0 * M.d, bpb_mm = 4.0 * M.d;
    if (!no_engine) {
        if (msadb_snap_signature(snap)->summary_kinds & MSADB_SUMMARY_REPS) {
            result_init(&res[nm], "engine reps (default)", nq, MSADB_K_REPS * (M.d + 4.0), 1);
            run_engine(&M, snap, g, nq, MSADB_SUMMARY_REPS, NULL, k, MSADB_SELECT_BLOCKS, &res[nm++]);
        }
        result_init(&res[nm], "engine mean (dot)", nq, bpb_mean, 1);
        run_engine(&M, snap, g, nq, MSADB_SUMMARY_MEAN, "dot", k, MSADB_SELECT_BLOCKS, &res[nm++]);
        result_init(&res[nm], "engine mean (dot-centred)", nq, bpb_mean, 1);
        run_engine(&M, snap, g, nq, MSADB_SUMMARY_MEAN, "dot-centred", k, MSADB_SELECT_BLOCKS, &res[nm++]);
        result_init(&res[nm], "engine mean (cosine)", nq, bpb_mean, 1);
        run_engine(&M, snap, g, nq, MSADB_SUMMARY_MEAN, "cosine", k, MSADB_SELECT_BLOCKS, &res[nm++]);
        result_init(&res[nm], "engine minmax (Quest)", nq, bpb_mm, 1);
        run_engine(&M, snap, g, nq, MSADB_SUMMARY_MINMAX, NULL, k, MSADB_SELECT_BLOCKS, &res[nm++]);
        result_init(&res[nm], "engine mean (cos), 1 doc", nq, bpb_mean, 1);
        run_engine(&M, snap, g, nq, MSADB_SUMMARY_MEAN, NULL, 1, MSADB_SELECT_DOCUMENTS, &res[nm++]);
}
    if (!no_raw) {
        rawsum mean1, sub4;
        memset(&mean1, 0, sizeof mean1);
        build_sub(&M, &mean1, 1);
        build_i8(&M, &mean1);
        result_init(&res[nm], "raw int8 mean+rescore", nq, M.d + 4.0, 0);
        run_raw(&M, g, nq, &mean1, 1, k, &res[nm++]);
        result_init(&res[nm], "raw mean f16 (1 thr)", nq, bpb_mean, 0);
        run_raw(&M, g, nq, &mean1, 0, k, &res[nm++]);
        build_sub(&M, &sub4, 4);
        result_init(&res[nm], "raw 4 sub-block means", nq, 4 * bpb_mean, 0);
        run_raw(&M, g, nq, &sub4, 0, k, &res[nm++]);
        result_init(&res[nm], "proposed reps int8 (2 thr)", nq, MSADB_K_REPS * (M.d + 4.0), 0);
        run_reps_i8(&M, g, nq, k, &res[nm++]);
        /* candidate representative summaries (see build_reps) */
        static const char *recipes[][2] = {
            {"fp", "reps: far+pca1s"},       {"fga", "reps: 2far+win4"},
            {"fgb", "reps: 2far+win16"},     {"fgab", "reps: 2far+win4+win16"},
            {"fgpa", "reps: 2far+pca1s+win4"}, {"wvx", "reps: 2wfar+wpca"},
        };
        float *Wh = recipe_list && !strchr(recipe_list, 'w') ? NULL : whitening(&M, 1);
        for (size_t i = 0; i < sizeof recipes / sizeof recipes[0] && nm < MAXM; i++) {
            if (recipe_list && !in_list(recipe_list, recipes[i][0]))
                continue;
            rawsum rs;
            memset(&rs, 0, sizeof rs);
            build_reps(&M, &rs, recipes[i][0], Wh);
            result_init(&res[nm], recipes[i][1], nq, rs.r * bpb_mean, 0);
            run_raw(&M, g, nq, &rs, 0, k, &res[nm++]);
            free(rs.v);
        }
    }
    double needle_mass[3] = {0}, ncnt[3] = {0};
    for (size_t qi = 0; qi < nq; qi++) {
        const wl_query *q = &M.m.qs[qi];
        if (q->needle_len) {
            int li = q->needle_len == 1 ? 0 : q->needle_len == 4 ? 1 : 2;
            needle_mass[li] += g[qi].needle_mass;
            ncnt[li]++;
        }
    }
    msadb_snapshot_end(snap);

    faiss_cfg *fc = NULL;
    size_t nfc = 0;
    if (faiss && run_faiss(&M, g, nq, faiss, workdir, hnsw_max, k, &fc, &nfc)) {
        fprintf(stderr, "bench_query: FAISS baseline failed\n");
        nfc = 0;
    }

    double sm[MAXM][8];
    for (int i = 0; i < nm; i++)
        summarize(&M, &res[i], nq, sm[i]);
    double eng_lat = sm[0][0], load[3] = {0, 0, 0};
    if (getloadavg(load, 3) < 0)
        load[0] = NAN;
    if (json) {
        printf("{\"tokens\": %zu, \"blocks\": %zu, \"d\": %u, \"q_heads\": %u, \"block\": %u, \"dtype\": \"%s\", "
               "\"k\": %u, \"queries\": %zu, \"margin\": %.2f, \"needle\": \"%s\", \"simd\": %d,\n"
               " \"loadavg\": %.2f, \"needle_mass\": [%.4f, %.4f, %.4f], \"dense_ms\": %.2f, \"ground_truth_s\": %.1f,\n"
               " \"methods\": [\n",
               M.N, M.nb, M.d, M.G, M.B, msadb_dtype_name((int)sig->dtype), k, nq, M.m.c.margin,
               M.m.c.needle_rotate ? "rotate" : "add", msadb_k_simd(), load[0], needle_mass[0] / (ncnt[0] ? ncnt[0] : 1),
               needle_mass[1] / (ncnt[1] ? ncnt[1] : 1), needle_mass[2] / (ncnt[2] ? ncnt[2] : 1), dense_ms,
               gt_ms / 1e3);
        for (int i = 0; i < nm; i++)
            printf("  {\"method\": \"%s\", \"engine\": %d, \"summary_bytes_per_block\": %.0f, \"lat_ms_p50\": %.3f, "
                   "\"lat_ms_p90\": %.3f, \"speedup_vs_dense\": %.1f, \"hit1\": %.4f, \"hit4\": %.4f, \"hit16\": %.4f, "
                   "\"mass_recall\": %.4f, \"out_err_p50\": %.5f, \"out_err_p90\": %.5f, \"scan_ms\": %.3f, "
                   "\"select_ms\": %.3f, \"read_ms\": %.3f, \"attend_ms\": %.3f}%s\n",
                   res[i].name, res[i].engine, res[i].bytes_per_block, sm[i][0], sm[i][1], dense_ms / sm[i][0],
                   sm[i][2], sm[i][3], sm[i][4], sm[i][5], sm[i][6], sm[i][7], res[i].scan_ms / nq,
                   res[i].select_ms / nq, res[i].read_ms / nq, res[i].attend_ms / nq, i + 1 < nm || nfc ? "," : "");
        for (size_t i = 0; i < nfc; i++)
            printf("  {\"method\": \"faiss %s\", \"param\": %d, \"build_s\": %.1f, \"lat_ms_p50\": %.3f, "
                   "\"lat_ms_p90\": %.3f, \"hit1\": %.4f, \"hit4\": %.4f, \"hit16\": %.4f}%s\n",
                   fc[i].index, fc[i].param, fc[i].build_s, fc[i].lat_med, fc[i].lat_p90, fc[i].hit[0], fc[i].hit[1],
                   fc[i].hit[2], i + 1 < nfc ? "," : "");
        printf(" ]}\n");
    } else {
        printf("memory: %zu tokens, %zu blocks of %u, d %u, %u q heads/kv head, dtype %s, top-%u, %zu queries, "
               "%s needles, margin %.1f nats\n",
               M.N, M.nb, M.B, M.d, M.G, msadb_dtype_name((int)sig->dtype), k, nq,
               M.m.c.needle_rotate ? "rotate" : "add", M.m.c.margin);
        printf("needle mass (exact): 1-token %.3f, 4-token %.3f, 16-token %.3f\n",
               needle_mass[0] / (ncnt[0] ? ncnt[0] : 1), needle_mass[1] / (ncnt[1] ? ncnt[1] : 1),
               needle_mass[2] / (ncnt[2] ? ncnt[2] : 1));
        printf("dense OpenBLAS attention over all keys: %.1f ms per query (median of %d); load average %.2f\n\n",
               dense_ms, exact_reps, load[0]);
        printf("%-24s %6s %8s %8s %7s %6s %6s %6s %6s %8s\n", "method", "B/blk", "p50 ms", "p90 ms", "speedup",
               "hit1", "hit4", "hit16", "mass", "out err");
        for (int i = 0; i < nm; i++)
            printf("%-24s %6.0f %8.3f %8.3f %6.0fx %6.3f %6.3f %6.3f %6.3f %8.5f\n", res[i].name,
                   res[i].bytes_per_block, sm[i][0], sm[i][1], dense_ms / sm[i][0], sm[i][2], sm[i][3], sm[i][4],
                   sm[i][5], sm[i][6]);
        for (int i = 0; i < nm; i++)
            if (res[i].engine)
                printf("  %s: scan %.3f, select %.3f, read %.3f, attend %.3f ms per query\n", res[i].name,
                       res[i].scan_ms / nq, res[i].select_ms / nq, res[i].read_ms / nq, res[i].attend_ms / nq);
        if (nfc) {
            printf("\nFAISS, token by token, %u tokens per q head (engine p50 %.3f ms):\n", k, eng_lat);
            printf("%-10s %6s %8s %8s %8s %6s %6s %6s\n", "index", "param", "build s", "p50 ms", "p90 ms", "hit1",
                   "hit4", "hit16");
            for (size_t i = 0; i < nfc; i++)
                printf("%-10s %6d %8.1f %8.3f %8.3f %6.3f %6.3f %6.3f\n", fc[i].index, fc[i].param, fc[i].build_s,
                       fc[i].lat_med, fc[i].lat_p90, fc[i].hit[0], fc[i].hit[1], fc[i].hit[2]);
        }
    }
    msadb_close(st);
    return 0;
}
