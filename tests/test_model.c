/* test_model.c -- the llama runtime (libmsadb/runtime/model.c).
 *
 * Without arguments: builds small GGUF models with tools/memmodel/make_test_model.py
 * (needs MSADB_SOURCE_ROOT and a python3 with numpy; exits 77 = skipped
 * otherwise) and checks, for f32 and q8_0, tied and untied, GQA models:
 *   - incremental decoding with the KV cache equals one full-sequence
 *     forward (all logits), also across the internal chunk size;
 *   - the attend hook: merging, by LSE, attention over the captured keys and
 *     values of a prefix equals running the prefix in the local context
 *     (exactly what the memory adapter relies on), both with a dense
 *     attention written here and through a real store (msadb_doc_append,
 *     msadb_attend in exact mode, msadb_lse_merge);
 *   - a hook's error aborts the forward and leaves the cache unchanged;
 *     truncate/reset; capacity limits; invalid tokens and positions;
 *   - sampling (greedy, seeded temperature/top-k/top-p, determinism,
 *     frequencies) and the generate loop (streaming, stop tokens);
 *   - models with bad metadata or missing tensors are refused.
 *
 * With --dump MODEL PREFIX TOKENS POSITIONS (comma-separated lists) it writes
 * what tests/model_reference.py compares with PyTorch: PREFIX.logits
 * [n][vocab], PREFIX.k / PREFIX.v (capture hook, [layers][kv][n][d]),
 * PREFIX.q ([layers][n][heads][d]) and PREFIX.out / PREFIX.lse (attend hook
 * input, [layers][n][heads][d] and [layers][n][heads]), all raw f32, and
 * PREFIX.matmul, the products' mode ("bf16" or "f32", model.h).
 *
 * With --bench MODEL [N_PROMPT [N_GEN]] it measures load time, prefill and
 * decode speed (docs/runtime.md quotes it). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/matmul.h"
#include "runtime/model.h"
#include "msadb.h"
#include "testutil.h"

static char src_root[2048];
static char python[512] = "/usr/bin/python3";
static char tmp[1024];

/* ------------------------------------------------------------------------ */
/* helpers                                                                  */
/* ------------------------------------------------------------------------ */

static int run_cmd(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    return rc;
}

/* Writes tmp/NAME.gguf with memmodel.make_test_model and the given options. */
static const char *make_model(const char *name, const char *opts)
{
    static char path[1200];
    char cmd[4096];
    snprintf(path, sizeof path, "%s/%s.gguf", tmp, name);
    snprintf(cmd, sizeof cmd, "PYTHONPATH=%s/tools %s -m memmodel.make_test_model %s %s",
             src_root, python, path, opts);
    CHECK(run_cmd(cmd) == 0);
    return path;
}

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* max |a - b| relative to max |a| (at least 1) */
static double rel_err(const float *a, const float *b, size_t n)
{
    double m = 0, s = max_abs(a, n);
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        m = e > m ? e : m;
    }
    return m / (s > 1 ? s : 1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* median |a - b| relative to max |a| (at least 1) */
static double rel_err_median(const float *a, const float *b, size_t n)
{
    double *e = malloc(n * sizeof *e), s = max_abs(a, n);
    CHECK(e);
    for (size_t i = 0; i < n; i++)
        e[i] = fabs((double)a[i] - b[i]);
    qsort(e, n, sizeof *e, cmp_double);
    double med = e[n / 2] / (s > 1 ? s : 1);
    free(e);
    return med;
}

/* Whether two logit arrays agree as the model's products allow: f32 products
 * to 2e-5; bf16 ones (model.h) to 1e-6 for the median value and 2e-2 at
 * most, since a 1-ulp f32 difference now and then puts an input on the
 * other side of a bf16 rounding (tests/model_reference.py says more). */
static int logits_agree(const msadb_model *m, const float *a, const float *b, size_t n,
                        const char *what)
{
    double e = rel_err(a, b, n);
    if (strcmp(msadb_model_matmul(m), "bf16")) {
        if (e >= 2e-5)
            fprintf(stderr, "%s: rel err %g\n", what, e);
        return e < 2e-5;
    }
    double med = rel_err_median(a, b, n);
    if (e >= 2e-2 || med >= 1e-6)
        fprintf(stderr, "%s (bf16): rel err %g, median %g\n", what, e, med);
    return e < 2e-2 && med < 1e-6;
}

static void rand_tokens(uint64_t *st, int32_t *t, size_t n, uint32_t vocab)
{
    for (size_t i = 0; i < n; i++)
        t[i] = (int32_t)(tu_rand(st) % vocab);
}

/* ------------------------------------------------------------------------ */
/* incremental == full                                                      */
/* ------------------------------------------------------------------------ */

static void test_incremental(msadb_model *m, size_t n, const size_t *pieces, size_t n_pieces)
{
    const msadb_model_config *c = msadb_model_get_config(m);
    size_t V = c->n_vocab;
    uint64_t st = 99 + n;
    int32_t *tok = malloc(n * sizeof *tok), *pos = malloc(n * sizeof *pos);
    float *full = malloc(n * V * sizeof(float)), *inc = malloc(n * V * sizeof(float));
    CHECK(tok && pos && full && inc);
    rand_tokens(&st, tok, n, c->n_vocab);
    for (size_t i = 0; i < n; i++)
        pos[i] = (int32_t)(i < n / 2 ? i : i - n / 2 + 7); /* two "documents" */
    msadb_model_ctx *ctx;
    CHECK_OK(msadb_model_ctx_new(m, (uint32_t)n, &ctx));
    CHECK_OK(msadb_model_forward(ctx, tok, (uint32_t)n, pos, full, 1, NULL));
    CHECK(msadb_model_ctx_len(ctx) == n);
    /* last-token logits equal the last row of all logits */
    msadb_model_ctx_reset(ctx);
    CHECK_OK(msadb_model_forward(ctx, tok, (uint32_t)n, pos, inc, 0, NULL));
    CHECK(rel_err(full + (n - 1) * V, inc, V) < 1e-6);
    /* pieces of the given sizes, cycling */
    msadb_model_ctx_reset(ctx);
    size_t done = 0, k = 0;
    while (done < n) {
        size_t len = pieces[k++ % n_pieces];
        if (len > n - done)
            len = n - done;
        CHECK_OK(msadb_model_forward(ctx, tok + done, (uint32_t)len, pos + done, inc + done * V,
                                     1, NULL));
        done += len;
    }
    CHECK(logits_agree(m, full, inc, n * V, "incremental vs full"));
    /* a prefix run without logits (the last layer stops at its keys and
     * values), then the rest with logits: the same logits as one full pass */
    msadb_model_ctx_reset(ctx);
    size_t h = n / 2 + 1;
    CHECK_OK(msadb_model_forward(ctx, tok, (uint32_t)h, pos, NULL, 0, NULL));
    CHECK_OK(msadb_model_forward(ctx, tok + h, (uint32_t)(n - h), pos + h, inc + h * V, 1, NULL));
    CHECK(logits_agree(m, full + h * V, inc + h * V, (n - h) * V,
                       "prefix without logits, then the rest"));
    /* the cache is full now */
    CHECK_RC(msadb_model_forward(ctx, tok, 1, NULL, inc, 0, NULL), MSADB_ELIMIT);
    CHECK(msadb_model_ctx_len(ctx) == n);
    msadb_model_ctx_free(ctx);
    free(tok);
    free(pos);
    free(full);
    free(inc);
}

/* ------------------------------------------------------------------------ */
/* the attend hook merges memory exactly                                    */
/* ------------------------------------------------------------------------ */

typedef struct mem {
    const msadb_model_config *c;
    size_t n;       /* tokens in memory */
    float *k, *v;   /* [layers][kv][n][d] */
    int calls, fail_layer, fail_code;
} mem;

static int cap_hook(uint32_t layer, uint32_t first, uint32_t n, const float *k, const float *v,
                    void *user)
{
    mem *M = user;
    const msadb_model_config *c = M->c;
    size_t d = c->head_dim;
    M->calls++;
    if ((int)layer == M->fail_layer)
        return M->fail_code;
    /* [kv][n][d] of this chunk into [layer][kv][M->n][d] at token `first` */
    for (size_t g = 0; g < c->n_kv_heads; g++) {
        float *kd = M->k + (((size_t)layer * c->n_kv_heads + g) * M->n + first) * d;
        float *vd = M->v + (((size_t)layer * c->n_kv_heads + g) * M->n + first) * d;
        memcpy(kd, k + g * n * d, n * d * sizeof(float));
        memcpy(vd, v + g * n * d, n * d * sizeof(float));
    }
    return 0;
}

/* Dense attention over the memory in double, merged into out/lse. */
static int attend_hook(uint32_t layer, uint32_t first, uint32_t n, const float *q, float *out,
                       float *lse, void *user)
{
    mem *M = user;
    const msadb_model_config *c = M->c;
    size_t d = c->head_dim, nq = c->n_heads, grp = nq / c->n_kv_heads, T = M->n;
    M->calls++;
    if ((int)layer == M->fail_layer)
        return M->fail_code;
    float *mo = malloc((size_t)n * nq * d * sizeof(float));
    float *ml = malloc((size_t)n * nq * sizeof(float));
    double *s = malloc((T ? T : 1) * sizeof(double));
    CHECK(mo && ml && s);
    for (size_t i = 0; i < n; i++)
        for (size_t h = 0; h < nq; h++) {
            const float *qv = q + (i * nq + h) * d;
            const float *K = M->k + ((size_t)layer * c->n_kv_heads + h / grp) * T * d;
            const float *Vv = M->v + ((size_t)layer * c->n_kv_heads + h / grp) * T * d;
            double mx = -INFINITY, sum = 0;
            for (size_t t = 0; t < T; t++) {
                double acc = 0;
                for (size_t j = 0; j < d; j++)
                    acc += (double)qv[j] * K[t * d + j];
                s[t] = acc / sqrt((double)d);
                mx = s[t] > mx ? s[t] : mx;
            }
            for (size_t t = 0; t < T; t++)
                sum += (s[t] = exp(s[t] - mx));
            for (size_t j = 0; j < d; j++) {
                double acc = 0;
                for (size_t t = 0; t < T; t++)
                    acc += s[t] * Vv[t * d + j];
                mo[(i * nq + h) * d + j] = T ? (float)(acc / sum) : 0.0f;
            }
            ml[i * nq + h] = T ? (float)(mx + log(sum)) : -INFINITY;
        }
    msadb_lse_merge((size_t)n * nq, d, out, lse, mo, ml, out, lse);
    free(mo);
    free(ml);
    free(s);
    return 0;
}

static void test_memory_merge(msadb_model *m)
{
    const msadb_model_config *c = msadb_model_get_config(m);
    size_t V = c->n_vocab, P = 37, X = 11;
    uint64_t st = 5;
    int32_t tok[64], pos[64];
    rand_tokens(&st, tok, P + X, c->n_vocab);
    for (size_t i = 0; i < P + X; i++)
        pos[i] = (int32_t)i;
    float *full = malloc(X * V * sizeof(float)), *viamem = malloc(X * V * sizeof(float));
    mem M = {c, P, NULL, NULL, 0, -1, 0};
    size_t kvn = (size_t)c->n_layers * c->n_kv_heads * P * c->head_dim;
    M.k = malloc(kvn * sizeof(float));
    M.v = malloc(kvn * sizeof(float));
    CHECK(full && viamem && M.k && M.v);
    msadb_model_ctx *ctx;
    CHECK_OK(msadb_model_ctx_new(m, 64, &ctx));
    /* reference: prefix and queries in one local context */
    CHECK_OK(msadb_model_forward(ctx, tok, (uint32_t)P, pos, NULL, 0, NULL));
    CHECK_OK(msadb_model_forward(ctx, tok + P, (uint32_t)X, pos + P, full, 1, NULL));
    /* ingest: capture the prefix's K/V (in chunks of 10 to exercise `first`) */
    msadb_model_hooks cap = {cap_hook, NULL, &M};
    msadb_model_ctx_reset(ctx);
    for (size_t i = 0; i < P; i += 10) {
        size_t len = P - i < 10 ? P - i : 10;
        /* `first` is relative to each call: shift by writing through a
         * shifted view of the memory */
        mem sub = M;
        sub.k = M.k + i * c->head_dim;
        sub.v = M.v + i * c->head_dim;
        cap.user = &sub;
        CHECK_OK(msadb_model_forward(ctx, tok + i, (uint32_t)len, pos + i, NULL, 0, &cap));
        CHECK(sub.calls == (int)c->n_layers);
    }
    /* inference: the prefix is not in the local context, only in memory */
    msadb_model_ctx_reset(ctx);
    msadb_model_hooks att = {NULL, attend_hook, &M};
    CHECK_OK(msadb_model_forward(ctx, tok + P, (uint32_t)X, pos + P, viamem, 1, &att));
    double e = rel_err(full, viamem, X * V);
    if (e > 2e-5)
        fprintf(stderr, "memory merge vs local: rel err %g\n", e);
    CHECK(e < 2e-5);
    /* without the hook the result differs (the test is not vacuous) */
    msadb_model_ctx_reset(ctx);
    CHECK_OK(msadb_model_forward(ctx, tok + P, (uint32_t)X, pos + P, viamem, 1, NULL));
    CHECK(rel_err(full, viamem, X * V) > 1e-3);

    /* a hook error aborts and leaves the cache as it was */
    msadb_model_ctx_reset(ctx);
    CHECK_OK(msadb_model_forward(ctx, tok, 5, pos, NULL, 0, NULL));
    M.fail_layer = (int)c->n_layers - 1;
    M.fail_code = 4321;
    CHECK_RC(msadb_model_forward(ctx, tok + 5, 3, pos + 5, viamem, 0, &att), 4321);
    CHECK(msadb_model_ctx_len(ctx) == 5);
    CHECK(msadb_model_ctx_next_pos(ctx) == 5);
    M.fail_layer = -1;
    CHECK_OK(msadb_model_forward(ctx, tok + 5, 3, pos + 5, viamem, 0, NULL));
    float *ref = malloc(V * sizeof(float));
    CHECK(ref);
    msadb_model_ctx_reset(ctx);
    CHECK_OK(msadb_model_forward(ctx, tok, 8, pos, ref, 0, NULL));
    CHECK(rel_err(ref, viamem, V) < 1e-5);

    /* truncate: drop the last 3, run different tokens: equals a fresh run */
    int32_t alt[3] = {7, 8, 9};
    CHECK_OK(msadb_model_ctx_truncate(ctx, 5));
    CHECK_RC(msadb_model_ctx_truncate(ctx, 6), MSADB_EINVAL);
    CHECK_OK(msadb_model_forward(ctx, alt, 3, NULL, viamem, 0, NULL)); /* positions 5,6,7 */
    int32_t seq[8];
    memcpy(seq, tok, 5 * sizeof *seq);
    memcpy(seq + 5, alt, sizeof alt);
    msadb_model_ctx_reset(ctx);
    CHECK_OK(msadb_model_forward(ctx, seq, 8, NULL, ref, 0, NULL));
    CHECK(rel_err(ref, viamem, V) < 1e-5);

    /* argument checks */
    int32_t bad = (int32_t)c->n_vocab, neg = -1;
    CHECK_RC(msadb_model_forward(ctx, &bad, 1, NULL, NULL, 0, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_model_forward(ctx, &neg, 1, NULL, NULL, 0, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_model_forward(ctx, tok, 1, &neg, NULL, 0, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_model_forward(ctx, tok, 0, NULL, NULL, 0, NULL), MSADB_EINVAL);
    CHECK(msadb_model_ctx_len(ctx) == 8);
    msadb_model_ctx_free(ctx);
    CHECK_RC(msadb_model_ctx_new(m, 0, &ctx), MSADB_EINVAL);
    CHECK_RC(msadb_model_ctx_new(m, MSADB_MODEL_MAX_CTX + 1, &ctx), MSADB_ELIMIT);
    free(ref);
    free(full);
    free(viamem);
    free(M.k);
    free(M.v);
}

/* The same through a real store: ingest the prefix's captured K/V as a
 * document (f32 storage), then answer the queries with msadb_attend() in
 * exact mode merged by msadb_lse_merge() -- the memory adapter's whole path.
 * Equals running the prefix in the local context. */
typedef struct store_hook {
    msadb_snapshot *snap;
    const msadb_model_config *c;
    float *mo, *ml;
    int err;
} store_hook;

static int store_attend(uint32_t layer, uint32_t first, uint32_t n, const float *q, float *out,
                        float *lse, void *user)
{
    store_hook *S = user;
    size_t rows = (size_t)n * S->c->n_heads;
    msadb_query qr;
    msadb_query_init(&qr);
    qr.layer = layer;
    qr.q = q;
    qr.n_query = n;
    qr.exact = 1;
    int rc = msadb_attend(S->snap, &qr, S->mo, S->ml, NULL, 0, NULL);
    if (rc)
        return rc;
    msadb_lse_merge(rows, S->c->head_dim, out, lse, S->mo, S->ml, out, lse);
    return 0;
}

static void test_store_adapter(msadb_model *m)
{
    const msadb_model_config *c = msadb_model_get_config(m);
    size_t V = c->n_vocab, P = 45, X = 6, d = c->head_dim;
    uint64_t st = 77;
    int32_t tok[64], pos[64];
    rand_tokens(&st, tok, P + X, c->n_vocab);
    for (size_t i = 0; i < P + X; i++)
        pos[i] = (int32_t)i;
    float *full = malloc(X * V * sizeof(float)), *viamem = malloc(X * V * sizeof(float));
    size_t kvn = (size_t)c->n_layers * c->n_kv_heads * P * d;
    mem M = {c, P, malloc(kvn * sizeof(float)), malloc(kvn * sizeof(float)), 0, -1, 0};
    CHECK(full && viamem && M.k && M.v);
    msadb_model_ctx *ctx;
    CHECK_OK(msadb_model_ctx_new(m, 64, &ctx));
    CHECK_OK(msadb_model_forward(ctx, tok, (uint32_t)(P + X), pos, NULL, 0, NULL));
    CHECK_OK(msadb_model_ctx_truncate(ctx, (uint32_t)P));
    CHECK_OK(msadb_model_forward(ctx, tok + P, (uint32_t)X, pos + P, full, 1, NULL));
    msadb_model_ctx_reset(ctx);
    msadb_model_hooks cap = {cap_hook, NULL, &M};
    CHECK_OK(msadb_model_forward(ctx, tok, (uint32_t)P, pos, NULL, 0, &cap));

    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, c->n_layers, c->n_kv_heads, c->n_heads, c->head_dim));
    sig.n_memory_layers = c->n_layers; /* every layer: K/V as captured */
    for (uint32_t l = 0; l < c->n_layers; l++)
        sig.memory_layers[l] = (uint16_t)l;
    sig.block_size = 8;
    sig.dtype = MSADB_DTYPE_F32;
    msadb_options opt;
    msadb_options_init(&opt);
    opt.no_sync = 1;
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/store", tmp);
    tu_rmtree(dir);
    msadb_store *store;
    CHECK_OK(msadb_create(dir, &sig, &opt, &store));
    msadb_doc doc = {0};
    doc.n_tokens = P;
    doc.token_ids = tok;
    doc.kv_dtype = MSADB_DTYPE_F32;
    doc.keys = M.k;
    doc.values = M.v;
    uint64_t id;
    CHECK_OK(msadb_doc_append(store, &doc, &id));

    store_hook S = {NULL, c, malloc(X * c->n_heads * d * sizeof(float)),
                    malloc(X * c->n_heads * sizeof(float)), 0};
    CHECK(S.mo && S.ml);
    CHECK_OK(msadb_snapshot_begin(store, &S.snap));
    msadb_model_hooks att = {NULL, store_attend, &S};
    msadb_model_ctx_reset(ctx);
    CHECK_OK(msadb_model_forward(ctx, tok + P, (uint32_t)X, pos + P, viamem, 1, &att));
    double e = rel_err(full, viamem, X * V);
    if (e > 2e-5)
        fprintf(stderr, "store adapter vs local: rel err %g\n", e);
    CHECK(e < 2e-5);
    msadb_snapshot_end(S.snap);
    msadb_close(store);
    msadb_model_ctx_free(ctx);
    free(S.mo);
    free(S.ml);
    free(M.k);
    free(M.v);
    free(full);
    free(viamem);
}

/* Layer-0 keys depend only on (token, position): the same token at the same
 * position captures the same key whatever came before. */
typedef struct k0 {
    float *k; /* [kv][d] of the last token of layer 0 */
    size_t d, nkv;
} k0;

static int k0_hook(uint32_t layer, uint32_t first, uint32_t n, const float *k, const float *v,
                   void *user)
{
    k0 *K = user;
    if (layer == 0)
        for (size_t g = 0; g < K->nkv; g++)
            memcpy(K->k + g * K->d, k + (g * n + n - 1) * K->d, K->d * sizeof(float));
    return 0;
}

static void test_capture_rope(msadb_model *m)
{
    const msadb_model_config *c = msadb_model_get_config(m);
    k0 a = {malloc(c->n_kv_heads * c->head_dim * sizeof(float)), c->head_dim, c->n_kv_heads};
    k0 b = {malloc(c->n_kv_heads * c->head_dim * sizeof(float)), c->head_dim, c->n_kv_heads};
    CHECK(a.k && b.k);
    msadb_model_ctx *ctx;
    CHECK_OK(msadb_model_ctx_new(m, 16, &ctx));
    int32_t t1[3] = {10, 20, 30}, t2[2] = {99, 30}, p1[3] = {0, 1, 2}, p2[2] = {5, 2};
    msadb_model_hooks h = {k0_hook, NULL, &a};
    CHECK_OK(msadb_model_forward(ctx, t1, 3, p1, NULL, 0, &h));
    msadb_model_ctx_reset(ctx);
    h.user = &b;
    CHECK_OK(msadb_model_forward(ctx, t2, 2, p2, NULL, 0, &h));
    CHECK(rel_err(a.k, b.k, c->n_kv_heads * c->head_dim) < 1e-6);
    /* another position rotates it */
    p2[1] = 3;
    msadb_model_ctx_reset(ctx);
    CHECK_OK(msadb_model_forward(ctx, t2, 2, p2, NULL, 0, &h));
    CHECK(rel_err(a.k, b.k, c->n_kv_heads * c->head_dim) > 1e-3);
    msadb_model_ctx_free(ctx);
    free(a.k);
    free(b.k);
}

/* ------------------------------------------------------------------------ */
/* sampling and generation                                                  */
/* ------------------------------------------------------------------------ */

static void test_sampling(void)
{
    float lg[6] = {0.0f, logf(2.0f), logf(3.0f), logf(4.0f), -INFINITY, logf(4.0f)};
    msadb_sampler s;
    int32_t t;
    msadb_sampler_init(&s, 0.0f, 1.0f, 0, 1);
    CHECK_OK(msadb_sample(&s, lg, 6, &t));
    CHECK(t == 3); /* greedy, tie between 3 and 5: lowest id */
    /* temperature 1: frequencies follow 1:2:3:4:0:4 */
    msadb_sampler_init(&s, 1.0f, 1.0f, 0, 42);
    int cnt[6] = {0};
    const int N = 70000;
    for (int i = 0; i < N; i++) {
        CHECK_OK(msadb_sample(&s, lg, 6, &t));
        CHECK(t >= 0 && t < 6);
        cnt[t]++;
    }
    const double want[6] = {1 / 14.0, 2 / 14.0, 3 / 14.0, 4 / 14.0, 0, 4 / 14.0};
    for (int i = 0; i < 6; i++)
        CHECK(fabs(cnt[i] / (double)N - want[i]) < 0.01);
    CHECK(cnt[4] == 0);
    /* same seed, same draws */
    msadb_sampler s2;
    msadb_sampler_init(&s, 0.8f, 0.9f, 0, 7);
    msadb_sampler_init(&s2, 0.8f, 0.9f, 0, 7);
    for (int i = 0; i < 200; i++) {
        int32_t a, b;
        CHECK_OK(msadb_sample(&s, lg, 6, &a));
        CHECK_OK(msadb_sample(&s2, lg, 6, &b));
        CHECK(a == b);
    }
    /* top_k 2 keeps ids 3 and 5 */
    msadb_sampler_init(&s, 1.0f, 1.0f, 2, 3);
    for (int i = 0; i < 500; i++) {
        CHECK_OK(msadb_sample(&s, lg, 6, &t));
        CHECK(t == 3 || t == 5);
    }
    /* top_p: probabilities 4,4,3,2,1 (/14): 0.5 needs the first two */
    msadb_sampler_init(&s, 1.0f, 0.5f, 0, 4);
    int seen3 = 0, seen5 = 0;
    for (int i = 0; i < 500; i++) {
        CHECK_OK(msadb_sample(&s, lg, 6, &t));
        CHECK(t == 3 || t == 5);
        seen3 += t == 3;
        seen5 += t == 5;
    }
    CHECK(seen3 > 100 && seen5 > 100);
    /* a tiny top_p is greedy */
    msadb_sampler_init(&s, 1.0f, 1e-6f, 0, 4);
    for (int i = 0; i < 50; i++) {
        CHECK_OK(msadb_sample(&s, lg, 6, &t));
        CHECK(t == 3);
    }
    float nan_lg[2] = {0.0f, NAN};
    CHECK_RC(msadb_sample(&s, nan_lg, 2, &t), MSADB_ENONFINITE);
    CHECK_RC(msadb_sample(&s, lg, 0, &t), MSADB_EINVAL);
}

typedef struct stream {
    int32_t got[64];
    int n, stop_after;
} stream;

static int on_tok(int32_t t, void *user)
{
    stream *S = user;
    S->got[S->n++] = t;
    return S->n == S->stop_after ? 1 : 0;
}

static void test_generate(msadb_model *m)
{
    const msadb_model_config *c = msadb_model_get_config(m);
    size_t V = c->n_vocab;
    int32_t prompt[5] = {1, 50, 60, 70, 80}, out[64], manual[20];
    float *lg = malloc(V * sizeof(float));
    CHECK(lg);
    msadb_model_ctx *ctx;
    CHECK_OK(msadb_model_ctx_new(m, 64, &ctx));
    /* manual greedy loop */
    CHECK_OK(msadb_model_forward(ctx, prompt, 5, NULL, lg, 0, NULL));
    msadb_sampler g;
    msadb_sampler_init(&g, 0, 1, 0, 0);
    for (int i = 0; i < 20; i++) {
        CHECK_OK(msadb_sample(&g, lg, (uint32_t)V, &manual[i]));
        if (i < 19)
            CHECK_OK(msadb_model_forward(ctx, &manual[i], 1, NULL, lg, 0, NULL));
    }
    size_t n;
    int why;
    stream S = {{0}, 0, 0};
    msadb_generate_params p = {20, NULL, 0, NULL, NULL, on_tok, &S};
    msadb_model_ctx_reset(ctx);
    CHECK_OK(msadb_model_generate(ctx, prompt, 5, NULL, &p, out, 64, &n, &why));
    CHECK(n == 20 && why == MSADB_GEN_MAX_TOKENS && S.n == 20);
    CHECK(!memcmp(out, manual, sizeof manual) && !memcmp(S.got, manual, sizeof manual));
    CHECK(msadb_model_ctx_len(ctx) == 5 + 19);
    /* stop token: the 4th greedy token */
    p.stop_tokens = &manual[3];
    p.n_stop = 1;
    msadb_model_ctx_reset(ctx);
    CHECK_OK(msadb_model_generate(ctx, prompt, 5, NULL, &p, out, 64, &n, &why));
    size_t first = 0;
    while (manual[first] != manual[3])
        first++;
    CHECK(n == first && why == MSADB_GEN_STOP_TOKEN);
    /* callback stop after 2 */
    p.stop_tokens = NULL;
    p.n_stop = 0;
    S.n = 0;
    S.stop_after = 2;
    msadb_model_ctx_reset(ctx);
    CHECK_OK(msadb_model_generate(ctx, prompt, 5, NULL, &p, out, 64, &n, &why));
    CHECK(n == 2 && why == MSADB_GEN_CALLBACK);
    /* context full: capacity 8 holds the prompt and 3 more tokens */
    msadb_model_ctx *small;
    CHECK_OK(msadb_model_ctx_new(m, 8, &small));
    p.on_token = NULL;
    CHECK_OK(msadb_model_generate(small, prompt, 5, NULL, &p, out, 64, &n, &why));
    CHECK(why == MSADB_GEN_CONTEXT_FULL && n == 4 && msadb_model_ctx_len(small) == 8);
    CHECK(!memcmp(out, manual, 4 * sizeof *out));
    /* seeded sampling is reproducible */
    msadb_sampler s1, s2;
    int32_t o1[16], o2[16];
    msadb_sampler_init(&s1, 1.0f, 0.95f, 40, 1234);
    msadb_sampler_init(&s2, 1.0f, 0.95f, 40, 1234);
    msadb_generate_params q = {16, NULL, 0, &s1, NULL, NULL, NULL};
    msadb_model_ctx_reset(ctx);
    CHECK_OK(msadb_model_generate(ctx, prompt, 5, NULL, &q, o1, 16, &n, &why));
    q.sampler = &s2;
    msadb_model_ctx_reset(ctx);
    CHECK_OK(msadb_model_generate(ctx, prompt, 5, NULL, &q, o2, 16, &n, &why));
    CHECK(n == 16 && !memcmp(o1, o2, sizeof o1));
    msadb_model_ctx_free(small);
    msadb_model_ctx_free(ctx);
    free(lg);
}

/* ------------------------------------------------------------------------ */
/* refused models                                                           */
/* ------------------------------------------------------------------------ */

static void expect_refused(const char *base, const char *edit, int want)
{
    char out[1200], cmd[4096];
    snprintf(out, sizeof out, "%s/edited.gguf", tmp);
    snprintf(cmd, sizeof cmd, "PYTHONPATH=%s/tools %s -m memmodel.gguf edit %s %s %s",
             src_root, python, base, out, edit);
    CHECK(run_cmd(cmd) == 0);
    msadb_model *m = NULL;
    int rc = msadb_model_open(out, &m);
    if (rc != want) {
        fprintf(stderr, "edit '%s': got %d (%s), want %d\n", edit, rc, msadb_strerror(rc), want);
        exit(1);
    }
    CHECK(m == NULL);
}

static void test_refused(const char *base)
{
    expect_refused(base, "set general.architecture string gpt2", MSADB_EINVAL);
    expect_refused(base, "del general.architecture", MSADB_ENOTFOUND);
    expect_refused(base, "del llama.block_count", MSADB_ENOTFOUND);
    expect_refused(base, "set llama.block_count uint32 0", MSADB_ECORRUPT);
    expect_refused(base, "set llama.block_count uint32 3", MSADB_ENOTFOUND); /* blk.2 missing */
    expect_refused(base, "set llama.block_count string two", MSADB_ECORRUPT);
    expect_refused(base, "set llama.attention.head_count_kv uint32 3", MSADB_ECORRUPT);
    expect_refused(base, "set llama.embedding_length uint32 96", MSADB_ECORRUPT);
    expect_refused(base, "set llama.feed_forward_length uint32 95", MSADB_ECORRUPT);
    expect_refused(base, "set llama.rope.dimension_count uint32 7", MSADB_EINVAL);
    expect_refused(base, "set llama.rope.scaling.type string yarn", MSADB_EINVAL);
    expect_refused(base, "set llama.rope.scaling.type string linear", MSADB_ENOTFOUND);
    expect_refused(base, "set llama.rope.freq_base float32 nan", MSADB_ECORRUPT);
    expect_refused(base, "set llama.attention.layer_norm_rms_epsilon float32 0", MSADB_ECORRUPT);
    expect_refused(base, "set llama.attention.head_count uint32 1000", MSADB_ECORRUPT);
    expect_refused(base, "set general.alignment uint32 3", MSADB_ECORRUPT);
    expect_refused(base, "deltensor blk.1.ffn_up.weight", MSADB_ENOTFOUND);
    expect_refused(base, "deltensor output_norm.weight", MSADB_ENOTFOUND);
}

/* ------------------------------------------------------------------------ */
/* --dump for model_reference.py                                            */
/* ------------------------------------------------------------------------ */

typedef struct dump {
    const msadb_model_config *c;
    size_t n;
    float *k, *v, *q, *out, *lse;
} dump;

static int dump_cap(uint32_t layer, uint32_t first, uint32_t n, const float *k, const float *v,
                    void *user)
{
    dump *D = user;
    size_t d = D->c->head_dim, nkv = D->c->n_kv_heads;
    for (size_t g = 0; g < nkv; g++)
        for (size_t i = 0; i < n; i++) {
            size_t dst = (((size_t)layer * nkv + g) * D->n + first + i) * d;
            memcpy(D->k + dst, k + (g * n + i) * d, d * sizeof(float));
            memcpy(D->v + dst, v + (g * n + i) * d, d * sizeof(float));
        }
    return 0;
}

static int dump_att(uint32_t layer, uint32_t first, uint32_t n, const float *q, float *out,
                    float *lse, void *user)
{
    dump *D = user;
    size_t row = (size_t)D->c->n_heads * D->c->head_dim;
    size_t at = (size_t)layer * D->n + first;
    memcpy(D->q + at * row, q, n * row * sizeof(float));
    memcpy(D->out + at * row, out, n * row * sizeof(float));
    memcpy(D->lse + at * D->c->n_heads, lse, (size_t)n * D->c->n_heads * sizeof(float));
    return 0;
}

static size_t parse_list(const char *s, int32_t *out, size_t cap)
{
    size_t n = 0;
    while (*s && n < cap) {
        char *end;
        out[n++] = (int32_t)strtol(s, &end, 10);
        s = *end == ',' ? end + 1 : end;
        if (*end != ',' && *end)
            break;
    }
    return n;
}

static void write_f32(const char *prefix, const char *ext, const float *x, size_t n)
{
    char path[2048];
    snprintf(path, sizeof path, "%s.%s", prefix, ext);
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(x, sizeof(float), n, f) == n);
    fclose(f);
}

static int dump_main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: test_model --dump MODEL PREFIX TOKENS POSITIONS\n");
        return 2;
    }
    static int32_t tok[4096], pos[4096];
    size_t n = parse_list(argv[4], tok, 4096), np = parse_list(argv[5], pos, 4096);
    CHECK(n > 0 && n == np);
    msadb_model *m;
    CHECK_OK(msadb_model_open(argv[2], &m));
    const msadb_model_config *c = msadb_model_get_config(m);
    size_t L = c->n_layers, d = c->head_dim, qrow = (size_t)c->n_heads * d;
    dump D = {c, n, NULL, NULL, NULL, NULL, NULL};
    size_t kvn = L * c->n_kv_heads * n * d;
    D.k = malloc(kvn * sizeof(float));
    D.v = malloc(kvn * sizeof(float));
    D.q = malloc(L * n * qrow * sizeof(float));
    D.out = malloc(L * n * qrow * sizeof(float));
    D.lse = malloc(L * n * c->n_heads * sizeof(float));
    float *logits = malloc(n * c->n_vocab * sizeof(float));
    CHECK(D.k && D.v && D.q && D.out && D.lse && logits);
    msadb_model_ctx *ctx;
    CHECK_OK(msadb_model_ctx_new(m, (uint32_t)n, &ctx));
    msadb_model_hooks h = {dump_cap, dump_att, &D};
    CHECK_OK(msadb_model_forward(ctx, tok, (uint32_t)n, pos, logits, 1, &h));
    write_f32(argv[3], "logits", logits, n * c->n_vocab);
    write_f32(argv[3], "k", D.k, kvn);
    write_f32(argv[3], "v", D.v, kvn);
    write_f32(argv[3], "q", D.q, L * n * qrow);
    write_f32(argv[3], "out", D.out, L * n * qrow);
    write_f32(argv[3], "lse", D.lse, L * n * c->n_heads);
    char mp[4096];
    snprintf(mp, sizeof mp, "%s.matmul", argv[3]);
    FILE *f = fopen(mp, "w");
    CHECK(f && fputs(msadb_model_matmul(m), f) >= 0 && fclose(f) == 0);
    msadb_model_ctx_free(ctx);
    msadb_model_free(m);
    free(D.k);
    free(D.v);
    free(D.q);
    free(D.out);
    free(D.lse);
    free(logits);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* --bench                                                                  */
/* ------------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int noop_cap(uint32_t layer, uint32_t first, uint32_t n, const float *k, const float *v,
                    void *user)
{
    return 0;
}

static int noop_att(uint32_t layer, uint32_t first, uint32_t n, const float *q, float *out,
                    float *lse, void *user)
{
    return 0;
}

static int bench_main(int argc, char **argv)
{
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: test_model --bench MODEL [N_PROMPT [N_GEN]]\n");
        return 2;
    }
    uint32_t np = argc > 3 ? (uint32_t)atoi(argv[3]) : 512;
    uint32_t ng = argc > 4 ? (uint32_t)atoi(argv[4]) : 128;
    CHECK(np >= 1 && ng >= 1);
    double t0 = now_s();
    msadb_model *m;
    CHECK_OK(msadb_model_open(argv[2], &m));
    double t_load = now_s() - t0;
    const msadb_model_config *c = msadb_model_get_config(m);
    printf("model: %u layers, n_embd %u, heads %u/%u x %u, ffn %u, vocab %u, weights %s\n",
           c->n_layers, c->n_embd, c->n_heads, c->n_kv_heads, c->head_dim, c->n_ff, c->n_vocab,
           msadb_ggml_type_name(c->weight_type));
    printf("load: %.1f ms, %.1f MB of weights allocated, %s products\n", t_load * 1e3,
           msadb_model_weight_bytes(m) / 1e6, msadb_model_matmul(m));
    msadb_model_ctx *ctx;
    CHECK_OK(msadb_model_ctx_new(m, np + ng, &ctx));
    int32_t *tok = malloc((size_t)np * sizeof *tok);
    float *lg = malloc((size_t)c->n_vocab * sizeof(float));
    CHECK(tok && lg);
    uint64_t st = 1;
    rand_tokens(&st, tok, np, c->n_vocab);
    msadb_model_hooks hk = {noop_cap, noop_att, NULL};
    for (int hooks = 0; hooks < 2; hooks++) {
        double best_p = 1e30, best_d = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            msadb_model_ctx_reset(ctx);
            t0 = now_s();
            CHECK_OK(msadb_model_forward(ctx, tok, np, NULL, lg, 0, hooks ? &hk : NULL));
            double tp = now_s() - t0;
            t0 = now_s();
            for (uint32_t i = 0; i < ng; i++) {
                int32_t t = (int32_t)(i * 7919u % c->n_vocab);
                CHECK_OK(msadb_model_forward(ctx, &t, 1, NULL, lg, 0, hooks ? &hk : NULL));
            }
            double td = now_s() - t0;
            best_p = tp < best_p ? tp : best_p;
            best_d = td < best_d ? td : best_d;
        }
        printf("%s: prefill %u tokens %.1f tok/s (%.1f ms), decode %u tokens %.1f tok/s "
               "(%.2f ms/token)\n",
               hooks ? "with no-op hooks" : "no hooks", np, np / best_p, best_p * 1e3, ng,
               ng / best_d, best_d * 1e3 / ng);
    }
    msadb_model_ctx_free(ctx);
    msadb_model_free(m);
    free(tok);
    free(lg);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* bf16 products (runtime/matmul.h)                                         */
/* ------------------------------------------------------------------------ */

static double bf16_value(float x)
{
    uint32_t u = (uint32_t)msadb_mm_bf16_of(x) << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void test_bf16_rounding(void)
{
    /* ties go to the even neighbour; below and above a tie to the nearest */
    const float x[] = {1.0f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f,
                       -2.5f, 3.0e38f, 1e-30f};
    const uint16_t want[] = {0x3f80, 0x3f80, 0x3f82, 0x3f81, 0xc020, 0x7f62, 0x0da2};
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        CHECK(msadb_mm_bf16_of(x[i]) == want[i]);
    uint16_t *p;
    float w = 1.0f;
    CHECK_RC(msadb_mm_pack_bf16(NULL, 1, 1, &p), MSADB_EINVAL);
    CHECK_RC(msadb_mm_pack_bf16(&w, 0, 1, &p), MSADB_EINVAL);
    CHECK_RC(msadb_mm_pack_bf16(&w, 1, 0, &p), MSADB_EINVAL);
    CHECK_RC(msadb_mm_pack_bf16(&w, 1, 1, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_mm_pool_new(2, NULL), MSADB_EINVAL);
}

/* msadb_mm_pool_run: every unit exactly once, with workers and without
 * (then in order), over many rounds of the same pool. */
static void count_unit(void *arg, size_t u)
{
    __atomic_fetch_add((unsigned *)arg + u, 1u, __ATOMIC_RELAXED);
}

/* arg: {units seen so far, 1 while they came in order} */
static void order_unit(void *arg, size_t u)
{
    size_t *st = arg;
    st[1] &= u == st[0];
    st[0]++;
}

static void test_pool_run(msadb_mm_pool *pool)
{
    unsigned hits[1000];
    for (int round = 0; round < 200; round++) {
        size_t units = 1 + (size_t)round * 5 % 1000;
        memset(hits, 0, sizeof hits);
        msadb_mm_pool_run(pool, units, count_unit, hits);
        for (size_t u = 0; u < 1000; u++)
            CHECK(hits[u] == (u < units));
    }
    size_t st[2] = {0, 1};
    msadb_mm_pool_run(NULL, 777, order_unit, st);
    CHECK(st[0] == 777 && st[1] == 1);
    msadb_mm_pool_run(pool, 0, order_unit, st); /* nothing */
    msadb_mm_pool_run(pool, 5, NULL, st);
    CHECK(st[0] == 777);
}

/* Every shape class of the kernels (rows around the AVX512 kernel's 6-row
 * block, the tiles' 16 rows and the 48-row unit, inputs odd and even around
 * the 32-input conversion step and the tiles' 16-pair step, outputs around
 * the 16-lane panels and 64-output groups), with and without
 * threads: each output equals the double product of the bf16-rounded
 * inputs to f32 accumulation, bit for bit the same whatever the threads
 * and whether its row is computed alone. */
static size_t matmul_shapes(msadb_mm_pool *pools[3]);

static void test_matmul_bf16(void)
{
    test_bf16_rounding();
    if (!msadb_mm_bf16_available()) {
        fprintf(stderr, "bf16 products: this CPU has no AVX512-BF16; kernel not run\n");
        return;
    }
    msadb_mm_pool *pools[3] = {NULL, NULL, NULL};
    CHECK_OK(msadb_mm_pool_new(2, &pools[1]));
    CHECK_OK(msadb_mm_pool_new(3, &pools[2]));
    /* both kernels where the CPU has AMX: each alone meets the bound and
     * the thread and row equalities */
    int amx = msadb_mm_amx_available();
    CHECK(msadb_mm_set_amx(0) == 0);
    size_t checked = matmul_shapes(pools);
    fprintf(stderr, "bf16 products (AVX512): %zu outputs checked\n", checked);
    if (amx) {
        CHECK(msadb_mm_set_amx(1) == 1);
        checked = matmul_shapes(pools);
        fprintf(stderr, "bf16 products (AMX): %zu outputs checked\n", checked);
    } else {
        CHECK(msadb_mm_set_amx(1) == 0);
        fprintf(stderr, "bf16 products: this CPU or kernel gives no AMX; tile kernel not run\n");
    }
    test_pool_run(pools[2]);
    msadb_mm_pool_free(pools[1]);
    msadb_mm_pool_free(pools[2]);
}

static size_t matmul_shapes(msadb_mm_pool *pools[3])
{
    const size_t ns[] = {1, 2, 5, 6, 7, 13, 16, 17, 48, 49, 97};
    const uint32_t ins[] = {1, 2, 3, 31, 32, 33, 64, 100};
    const uint32_t outs[] = {1, 15, 16, 17, 63, 64, 65, 130, 200};
    uint64_t st = 4242;
    size_t checked = 0;
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (size_t b = 0; b < sizeof ins / sizeof ins[0]; b++)
            for (size_t c = 0; c < sizeof outs / sizeof outs[0]; c++) {
                size_t n = ns[a];
                uint32_t in = ins[b], out = outs[c];
                float *X = malloc(n * in * sizeof(float)), *W = malloc((size_t)out * in * 4);
                float *Y = malloc(n * out * sizeof(float)), *Y2 = malloc(n * out * 4);
                uint32_t *xb = msadb_aalloc(msadb_mm_scratch_words(n, in) * 4);
                CHECK(X && W && Y && Y2 && xb);
                for (size_t i = 0; i < n * in; i++) /* magnitudes over 2^-6 .. 2^6 */
                    X[i] = (float)((tu_rand(&st) % 2001) - 1000.0) / 1000.0f *
                           (float)(1u << (tu_rand(&st) % 13)) / 64.0f;
                for (size_t i = 0; i < (size_t)out * in; i++)
                    W[i] = (float)((tu_rand(&st) % 2001) - 1000.0) / 4000.0f;
                uint16_t *P;
                CHECK_OK(msadb_mm_pack_bf16(W, out, in, &P));
                for (int t = 0; t < 3; t++) {
                    float *dst = t ? Y2 : Y;
                    memset(dst, 0xff, n * out * sizeof(float)); /* NaN: must be overwritten */
                    msadb_mm_bf16(pools[t], X, n, P, out, in, dst, xb);
                    if (t)
                        CHECK(!memcmp(Y, Y2, n * out * sizeof(float)));
                }
                for (size_t r = 0; r < n; r++) {
                    for (uint32_t j = 0; j < out; j++) {
                        double ref = 0, mag = 0;
                        for (uint32_t k = 0; k < in; k++) {
                            double pr = bf16_value(X[r * in + k]) * bf16_value(W[(size_t)j * in + k]);
                            ref += pr;
                            mag += fabs(pr);
                        }
                        double err = fabs(Y[r * out + j] - ref);
                        if (!(err <= (in + 1) * 0x1p-23 * mag)) {
                            fprintf(stderr, "bf16 product n %zu in %u out %u [%zu][%u]: %g, want %g\n",
                                    n, in, out, r, j, Y[r * out + j], ref);
                            CHECK(0);
                        }
                        checked++;
                    }
                    if (r % 11 == 0) { /* a row alone: the same bits */
                        msadb_mm_bf16(pools[1], X + r * in, 1, P, out, in, Y2, xb);
                        CHECK(!memcmp(Y + r * out, Y2, out * sizeof(float)));
                    }
                }
                msadb_afree(P);
                msadb_afree(xb);
                free(X);
                free(W);
                free(Y);
                free(Y2);
            }
    return checked;
}

/* ------------------------------------------------------------------------ */

static void run_model_tests(const char *opts, int chunked)
{
    fprintf(stderr, "model: %s\n", opts);
    const char *path = make_model("m", opts);
    msadb_model *m;
    CHECK_OK(msadb_model_open(path, &m));
    const size_t pieces[] = {1, 7, 1, 3, 16};
    test_incremental(m, 40, pieces, 5);
    if (chunked) {
        /* longer than one internal chunk (MSADB_MODEL_UBATCH) */
        const size_t big[] = {300, 1, 250, 97};
        test_incremental(m, MSADB_MODEL_UBATCH + 150, big, 4);
    }
    test_memory_merge(m);
    test_store_adapter(m);
    test_capture_rope(m);
    test_generate(m);
    msadb_model_free(m);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--dump"))
        return dump_main(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "--bench"))
        return bench_main(argc, argv);
    test_sampling();
    test_matmul_bf16();
    const char *root = getenv("MSADB_SOURCE_ROOT");
    const char *py = getenv("MSADB_PYTHON");
    if (py && *py)
        snprintf(python, sizeof python, "%s", py);
    char probe[1024];
    snprintf(probe, sizeof probe, "%s -c 'import numpy' 2>/dev/null", python);
    if (!root || system(probe) != 0) {
        fprintf(stderr, "skipping model tests: need MSADB_SOURCE_ROOT and python3 with numpy\n");
        return 77;
    }
    snprintf(src_root, sizeof src_root, "%s", root);
    snprintf(tmp, sizeof tmp, "%s", tu_tmpdir("model"));

    /* The runtime's logic on the reference (f32) products, with tight
     * tolerances; then the incremental test on the default products. */
    CHECK(setenv("MSADB_MODEL_F32", "1", 1) == 0);
    run_model_tests("--layers 2 --heads 4 --kv-heads 2 --head-dim 16 --ffn 64", 1);
    run_model_tests("--layers 2 --heads 4 --kv-heads 2 --head-dim 32 --ffn 96 --untied "
                    "--wtype q8_0 --rope-scale 4 --rope-theta 500000",
                    0);
    run_model_tests("--layers 3 --heads 2 --kv-heads 2 --head-dim 8 --embd 24 --ffn 40 "
                    "--wtype bf16",
                    0);
    run_model_tests("--layers 1 --heads 8 --kv-heads 1 --head-dim 8 --ffn 32 --wtype f16 "
                    "--untied",
                    0);

    const char *base = make_model("base", "--layers 2 --heads 4 --kv-heads 2 --head-dim 16");
    test_refused(base);
    CHECK(unsetenv("MSADB_MODEL_F32") == 0);
    if (msadb_mm_bf16_available()) {
        const char *path = make_model("bf16", "--layers 2 --heads 4 --kv-heads 2 --head-dim 32 "
                                              "--ffn 96 --untied --wtype q8_0");
        msadb_model *m;
        CHECK_OK(msadb_model_open(path, &m));
        CHECK(!strcmp(msadb_model_matmul(m), "bf16"));
        const size_t pieces[] = {1, 7, 1, 3, 16}, big[] = {300, 1, 250, 97};
        test_incremental(m, 40, pieces, 5);
        test_incremental(m, MSADB_MODEL_UBATCH + 150, big, 4);
        msadb_model_free(m);
    }
    fprintf(stderr, "ok\n");
    return 0;
}
