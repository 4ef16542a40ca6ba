/* bench_runtime.c -- speed of the built-in runtime with memory attention:
 * prefill and decode tokens per second of llama GGUF models with no memory
 * and with stores of growing size (e.g. 1M and 10M tokens), memory read in
 * every memory layer at top-k 16 (the paths of msadb_llm_ask: the model's
 * attend hook calls msadb_attend_merge() / msadb_attend_blocks()).
 *
 * The memory is synthetic: a store created with the model's signature and
 * filled through the public API (msadb_batch_add / msadb_batch_commit) with
 * random K/V documents of the right shape -- what memory attention costs at
 * inference does not depend on how the K/V were made, and running 10M tokens
 * through the model would take hours.  Keys are N(0,1) with a few outlier
 * channels (as in real keys), values N(0,1); each document is a window at a
 * random token offset into one generated pool.
 *
 * Two routing policies are measured (--routing both, the default):
 *   each  every forward pass routes (msadb_ask_params.route_each_token):
 *         each decode step scans every summary of every memory layer;
 *   once  the prompt pass routes and its selection serves every decode step
 *         (msadb_llm_ask's default, MSA's "route, then generate"): each
 *         decode step calls msadb_attend_blocks with the prompt's selection
 *         of its layer (decoded blocks come from the snapshot's cache) and
 *         merges with msadb_lse_merge.  --check verifies that
 *         msadb_attend_blocks equals msadb_attend for the prompt's queries.
 *
 * Usage: bench_runtime [--json | --json-file F] [--check] [--dir DIR] [--keep]
 *            [--sizes N,N,...] [--dtype int8|f16|...] [--prompt P] [--gen G]
 *            [--top-k K] [--doc-tokens T] [--build-budget S] [--reps R]
 *            [--routing each|once|both] MODEL.gguf...
 *
 * Sizes take k and M suffixes ("0,1M,10M", the default).  Ratios are
 * relative to the first size measured for the same model (normally 0: no
 * memory); "cpu" rates use the process CPU time, which with
 * OPENBLAS_NUM_THREADS=1 is robust to other load on the machine.
 *
 * All models must share one signature (layers, heads, head dim): one store
 * serves them all.  Sizes are built in ascending order by appending to one
 * store in DIR (default: a new directory under /tmp, removed at the end
 * unless --keep); building stops when the time spent building exceeds
 * --build-budget seconds (default 300), and the size reached is measured
 * and reported instead.  An existing store in DIR is reused (and grown;
 * sizes below what it holds are skipped).
 * Exit status: 0 success, 1 error, 2 usage. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "runtime/model.h"
#include "machine.h"
#include "msadb.h"

#define MAX_MODELS 8
#define MAX_SIZES 8
#define POOL_TOKENS (1u << 16) /* pool of generated tokens; documents are windows */
#define BATCH_DOCS 16          /* documents per transaction while building */

typedef struct config {
    int json, keep;
    const char *dir;
    uint64_t sizes[MAX_SIZES];
    size_t n_sizes;
    int dtype;
    uint32_t prompt, gen, top_k, doc_tokens, reps;
    double build_budget_s;
    int routing; /* 0 each, 1 once, 2 both */
    const char *json_file; /* --json-file: JSON there, the table on stdout */
    int check;
    const char *models[MAX_MODELS];
    size_t n_models;
} config;

typedef struct result {
    size_t model;
    int once;            /* routing: 0 every step, 1 once per prompt */
    uint64_t mem_tokens; /* 0: no memory */
    double prefill_tok_s, decode_tok_s;
    double decode_cpu_tok_s; /* decode tokens per second of process CPU time */
    double prefill_mem_ms, decode_mem_ms_tok; /* time in msadb_attend_merge */
    double blocks_scanned_tok;                 /* per decode token, all memory layers */
    double scan_ms_tok, select_ms_tok, read_ms_tok, attend_ms_tok; /* msadb_query_stats */
    double tokens_attended_tok;
} result;

/* CPU time of the whole process (all threads): with OPENBLAS_NUM_THREADS=1
 * it is the work done, robust to other load on the machine. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: bench_runtime [--json | --json-file F] [--check] [--dir DIR] [--keep] [--sizes N,N,...] [--dtype T]\n"
            "           [--prompt P] [--gen G] [--top-k K] [--doc-tokens T] [--build-budget S]\n"
            "           [--reps R] [--routing each|once|both] MODEL.gguf...\n");
    return 2;
}

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* "0,1M,10M" or "0,1000000": sizes in tokens (k/K and m/M suffixes). */
static int parse_sizes(const char *s, config *c)
{
    c->n_sizes = 0;
    while (*s) {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || v < 0 || c->n_sizes == MAX_SIZES)
            return -1;
        if (*end == 'k' || *end == 'K')
            v *= 1e3, end++;
        else if (*end == 'm' || *end == 'M')
            v *= 1e6, end++;
        c->sizes[c->n_sizes++] = (uint64_t)llround(v);
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        s = end;
    }
    for (size_t i = 1; i < c->n_sizes; i++)
        if (c->sizes[i] <= c->sizes[i - 1])
            return -1;
    return c->n_sizes ? 0 : -1;
}


/* ------------------------------------------------------------------------ */
/* building the memory                                                      */
/* ------------------------------------------------------------------------ */

typedef struct pool {
    float *k, *v;  /* [POOL_TOKENS + doc span][d]: windows of planes * T tokens */
    size_t tokens; /* tokens in the pool */
    uint32_t d;
} pool;

static int pool_init(pool *p, uint32_t d, size_t window)
{
    p->d = d;
    p->tokens = POOL_TOKENS + window;
    p->k = malloc(p->tokens * d * sizeof(float));
    p->v = malloc(p->tokens * d * sizeof(float));
    if (!p->k || !p->v)
        return -1;
    uint64_t s = 42;
    for (size_t t = 0; t < p->tokens; t++)
        for (uint32_t c = 0; c < d; c++) {
            int outlier = d >= 8 && c % (d / 4) == 3;
            float mean = outlier ? ((c / (d / 4)) & 1 ? -12.0f : 12.0f) : 0.0f;
            p->k[t * d + c] = mean + (outlier ? 4.0f : 1.0f) * rng_normal(&s);
            p->v[t * d + c] = rng_normal(&s);
        }
    return 0;
}

/* Appends documents of doc_tokens tokens until the store holds `target`
 * tokens or the build budget (*spent, seconds) is used up.  Returns 0 or an
 * msadb error; *have gets the tokens held. */
static int grow_store(msadb_store *st, const pool *p, uint32_t planes, uint32_t doc_tokens,
                      uint64_t target, double budget, double *spent, uint64_t *have, int quiet)
{
    uint64_t rng = 7 + *have;
    while (*have < target && *spent < budget) {
        double t0 = machine_now_s();
        msadb_batch *b;
        int rc = msadb_batch_begin(st, &b);
        if (rc)
            return rc;
        uint64_t added = 0;
        for (int i = 0; i < BATCH_DOCS && *have + added < target; i++) {
            uint64_t n = target - *have - added < doc_tokens ? target - *have - added : doc_tokens;
            size_t window = (size_t)planes * n;
            size_t ok = rng_next(&rng) % (POOL_TOKENS + 1), ov = rng_next(&rng) % (POOL_TOKENS + 1);
            if (ok + window > p->tokens || ov + window > p->tokens)
                ok = ov = 0;
            msadb_doc doc = {0};
            doc.n_tokens = (size_t)n;
            doc.kv_dtype = MSADB_DTYPE_F32;
            doc.keys = p->k + ok * p->d;
            doc.values = p->v + ov * p->d;
            if ((rc = msadb_batch_add(b, &doc))) {
                msadb_batch_abort(b);
                return rc;
            }
            added += n;
        }
        if ((rc = msadb_batch_commit(b, NULL)))
            return rc;
        *have += added;
        *spent += machine_now_s() - t0;
        if (!quiet && isatty(2))
            fprintf(stderr, "\rbench_runtime: memory %llu / %llu tokens, %.0f s, %.0f tokens/s   ",
                    (unsigned long long)*have, (unsigned long long)target, *spent,
                    *spent > 0 ? (double)*have / *spent : 0.0);
    }
    if (!quiet && isatty(2))
        fputc('\n', stderr);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* measuring                                                                */
/* ------------------------------------------------------------------------ */

typedef struct mem_hook {
    msadb_snapshot *snap; /* NULL: no memory */
    const msadb_signature *sig;
    uint32_t top_k;
    double ms;            /* time in memory attention */
    uint64_t scanned, attended;
    double scan, select, read, attend; /* msadb_query_stats, ms */
    /* routing policy: 0 = every forward pass routes; 1 = the prompt pass
     * routes, and its selection serves every decode step through
     * msadb_attend_blocks (msadb_llm_ask's default) */
    int once, routed;
    int check;            /* compare msadb_attend_blocks with msadb_attend */
    double check_err;     /* largest difference seen */
    msadb_hit *hits;      /* [n_memory_layers][hits_cap] */
    size_t *n_hits, hits_cap;
    float *mo;            /* memory out/lse scratch */
    size_t mo_cap;
} mem_hook;

static int grow_f(float **p, size_t *cap, size_t n)
{
    if (n <= *cap)
        return 0;
    float *q = realloc(*p, n * sizeof(float));
    if (!q)
        return MSADB_ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

static void hook_free(mem_hook *h)
{
    free(h->hits);
    free(h->n_hits);
    free(h->mo);
}

/* msadb_attend vs msadb_attend_blocks over the blocks it chose. */
static int check_blocks(mem_hook *h, const msadb_query *mq, const msadb_hit *hits, size_t n_hits)
{
    size_t rows = mq->n_query * h->sig->n_q_heads, d = h->sig->head_dim;
    float *a = malloc(2 * rows * (d + 1) * sizeof(float));
    if (!a)
        return MSADB_ENOMEM;
    float *ro = a, *rl = a + rows * d, *bo = rl + rows, *bl = bo + rows * d;
    int rc = msadb_attend(h->snap, mq, ro, rl, NULL, 0, NULL);
    if (!rc)
        rc = msadb_attend_blocks(h->snap, mq, hits, n_hits, bo, bl);
    for (size_t i = 0; !rc && i < rows * (d + 1); i++)
        h->check_err = fmax(h->check_err, fabs((double)ro[i] - bo[i]));
    free(a);
    return rc;
}

static int attend_hook(uint32_t layer, uint32_t first, uint32_t n, const float *q, float *out,
                       float *lse, void *user)
{
    (void)first;
    mem_hook *h = user;
    int mi;
    if (!h->snap || (mi = msadb_signature_memory_index(h->sig, layer)) < 0)
        return 0;
    double t0 = machine_now_s();
    msadb_query mq;
    msadb_query_stats qs;
    msadb_query_init(&mq);
    mq.layer = layer;
    mq.q = q;
    mq.n_query = n;
    mq.top_k = h->top_k;
    mq.stats = &qs;
    msadb_hit *hits = h->hits + (size_t)mi * h->hits_cap;
    int rc;
    if (h->once && h->routed) {
        size_t rows = (size_t)n * h->sig->n_q_heads, d = h->sig->head_dim;
        if (grow_f(&h->mo, &h->mo_cap, rows * (d + 1)))
            return MSADB_ENOMEM;
        rc = msadb_attend_blocks(h->snap, &mq, hits, h->n_hits[mi], h->mo, h->mo + rows * d);
        if (!rc)
            msadb_lse_merge(rows, d, out, lse, h->mo, h->mo + rows * d, out, lse);
    } else {
        size_t got = 0;
        rc = msadb_attend_merge(h->snap, &mq, out, lse, h->once ? hits : NULL, h->once ? h->hits_cap : 0, &got);
        if (h->once)
            h->n_hits[mi] = got < h->hits_cap ? got : h->hits_cap;
        if (!rc && h->once && h->check)
            rc = check_blocks(h, &mq, hits, h->n_hits[mi]);
    }
    h->ms += (machine_now_s() - t0) * 1e3;
    h->scanned += qs.blocks_scanned;
    h->attended += qs.tokens_attended;
    h->scan += qs.scan_ms;
    h->select += qs.select_ms;
    h->read += qs.read_ms;
    h->attend += qs.attend_ms;
    return rc;
}

/* Best of `reps` runs of a prompt pass and `gen` decode steps. */
static int measure(msadb_model *m, msadb_store *st, const config *c, int once, result *r)
{
    const msadb_model_config *mc = msadb_model_get_config(m);
    msadb_model_ctx *ctx;
    int rc = msadb_model_ctx_new(m, c->prompt + c->gen + 1, &ctx);
    if (rc)
        return rc;
    int32_t *tok = malloc((size_t)c->prompt * sizeof *tok);
    float *lg = malloc((size_t)mc->n_vocab * sizeof(float));
    if (!tok || !lg) {
        free(tok);
        free(lg);
        msadb_model_ctx_free(ctx);
        return MSADB_ENOMEM;
    }
    uint64_t s = 1;
    for (uint32_t i = 0; i < c->prompt; i++)
        tok[i] = (int32_t)(rng_next(&s) % mc->n_vocab);
    mem_hook h = {0};
    h.sig = st ? msadb_store_signature(st) : NULL;
    h.top_k = c->top_k;
    h.once = once;
    h.check = c->check;
    if (st && (rc = msadb_snapshot_begin(st, &h.snap)))
        goto out;
    if (st && once) {
        h.hits_cap = (size_t)c->top_k * h.sig->n_kv_heads;
        h.hits = malloc(h.sig->n_memory_layers * h.hits_cap * sizeof *h.hits);
        h.n_hits = calloc(h.sig->n_memory_layers, sizeof *h.n_hits);
        if (!h.hits || !h.n_hits) {
            rc = MSADB_ENOMEM;
            goto out;
        }
    }
    msadb_model_hooks hooks = {NULL, attend_hook, &h};
    double best_p = 1e30, best_d = 1e30, best_c = 1e30;
    for (uint32_t rep = 0; rep < c->reps; rep++) {
        msadb_model_ctx_reset(ctx);
        h.ms = 0;
        h.routed = 0;
        double t0 = machine_now_s();
        if ((rc = msadb_model_forward(ctx, tok, c->prompt, NULL, lg, 0, &hooks)))
            goto out;
        h.routed = 1;
        double tp = machine_now_s() - t0, pm = h.ms;
        h.ms = h.scan = h.select = h.read = h.attend = 0;
        h.scanned = h.attended = 0;
        double c0 = cpu_s();
        t0 = machine_now_s();
        for (uint32_t i = 0; i < c->gen; i++) {
            int32_t t = (int32_t)(i * 7919u % mc->n_vocab);
            if ((rc = msadb_model_forward(ctx, &t, 1, NULL, lg, 0, &hooks)))
                goto out;
        }
        double td = machine_now_s() - t0, tc = cpu_s() - c0;
        if (tc < best_c)
            best_c = tc;
        if (tp < best_p) {
            best_p = tp;
            r->prefill_mem_ms = pm;
        }
        if (td < best_d) {
            best_d = td;
            r->decode_mem_ms_tok = h.ms / c->gen;
            r->blocks_scanned_tok = (double)h.scanned / c->gen;
            r->tokens_attended_tok = (double)h.attended / c->gen;
            r->scan_ms_tok = h.scan / c->gen;
            r->select_ms_tok = h.select / c->gen;
            r->read_ms_tok = h.read / c->gen;
            r->attend_ms_tok = h.attend / c->gen;
        }
    }
    r->prefill_tok_s = c->prompt / best_p;
    r->decode_tok_s = c->gen / best_d;
    if (h.check && once)
        fprintf(stderr, "bench_runtime: check: msadb_attend_blocks vs msadb_attend: max |diff| %.3g\n",
                h.check_err);
    if (h.check && once && !(h.check_err < 1e-3))
        rc = MSADB_ECORRUPT;
    r->decode_cpu_tok_s = c->gen / best_c;
out:
    msadb_snapshot_end(h.snap);
    hook_free(&h);
    msadb_model_ctx_free(ctx);
    free(tok);
    free(lg);
    return rc;
}

/* ------------------------------------------------------------------------ */

/* The first (smallest memory, normally none) result of the same model: the
 * baseline of the ratios. */
static const result *base_of(const result *res, const result *r)
{
    while (res->model != r->model)
        res++;
    return res;
}

static void human(uint64_t n, char *buf, size_t cap)
{
    if (n >= 1000000 && n % 100000 == 0)
        snprintf(buf, cap, "%gM", n / 1e6);
    else if (n >= 1000 && n % 1000 == 0)
        snprintf(buf, cap, "%gk", n / 1e3);
    else
        snprintf(buf, cap, "%llu", (unsigned long long)n);
}

static int rm_rf(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf -- '%s'", dir);
    return system(cmd);
}

int main(int argc, char **argv)
{
    config c = {.dtype = MSADB_DTYPE_INT8, .prompt = 128, .gen = 64, .top_k = 16,
                .doc_tokens = 4096, .reps = 3, .build_budget_s = 300, .routing = 2};
    c.sizes[0] = 0;
    c.sizes[1] = 1000000;
    c.sizes[2] = 10000000;
    c.n_sizes = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        uint64_t v;
        int more = i + 1 < argc;
        if (!strcmp(a, "--json"))
            c.json = 1;
        else if (!strcmp(a, "--keep"))
            c.keep = 1;
        else if (!strcmp(a, "--json-file") && more)
            c.json_file = argv[++i];
        else if (!strcmp(a, "--check"))
            c.check = 1;
        else if (!strcmp(a, "--routing") && more) {
            const char *r = argv[++i];
            c.routing = !strcmp(r, "each") ? 0 : !strcmp(r, "once") ? 1 : !strcmp(r, "both") ? 2 : -1;
            if (c.routing < 0)
                return usage();
        } else if (!strcmp(a, "--dir") && more)
            c.dir = argv[++i];
        else if (!strcmp(a, "--sizes") && more) {
            if (parse_sizes(argv[++i], &c))
                return usage();
        } else if (!strcmp(a, "--dtype") && more) {
            if ((c.dtype = msadb_dtype_parse(argv[++i])) < 0)
                return usage();
        } else if (!strcmp(a, "--prompt") && more && !parse_u64(argv[i + 1], 1, 65536, &v))
            c.prompt = (uint32_t)v, i++;
        else if (!strcmp(a, "--gen") && more && !parse_u64(argv[i + 1], 1, 65536, &v))
            c.gen = (uint32_t)v, i++;
        else if (!strcmp(a, "--top-k") && more && !parse_u64(argv[i + 1], 1, 65536, &v))
            c.top_k = (uint32_t)v, i++;
        else if (!strcmp(a, "--doc-tokens") && more && !parse_u64(argv[i + 1], 1, 1u << 20, &v))
            c.doc_tokens = (uint32_t)v, i++;
        else if (!strcmp(a, "--reps") && more && !parse_u64(argv[i + 1], 1, 100, &v))
            c.reps = (uint32_t)v, i++;
        else if (!strcmp(a, "--build-budget") && more && !parse_u64(argv[i + 1], 0, 1u << 30, &v))
            c.build_budget_s = (double)v, i++;
        else if (a[0] != '-' && c.n_models < MAX_MODELS)
            c.models[c.n_models++] = a;
        else
            return usage();
    }
    if (!c.n_models)
        return usage();

    /* models */
    msadb_model *models[MAX_MODELS] = {0};
    msadb_signature sig;
    int rc = 0;
    for (size_t i = 0; i < c.n_models; i++) {
        if ((rc = msadb_model_open(c.models[i], &models[i]))) {
            fprintf(stderr, "bench_runtime: %s: %s\n", c.models[i], msadb_strerror(rc));
            return 1;
        }
        const msadb_model_config *mc = msadb_model_get_config(models[i]);
        msadb_signature s;
        if ((rc = msadb_signature_init(&s, mc->n_layers, mc->n_kv_heads, mc->n_heads, mc->head_dim))) {
            fprintf(stderr, "bench_runtime: %s: %s\n", c.models[i], msadb_strerror(rc));
            return 1;
        }
        if (i && (s.n_layers != sig.n_layers || s.n_kv_heads != sig.n_kv_heads ||
                  s.n_q_heads != sig.n_q_heads || s.head_dim != sig.head_dim)) {
            fprintf(stderr, "bench_runtime: %s: another signature than %s\n", c.models[i], c.models[0]);
            return 1;
        }
        sig = s;
    }
    sig.dtype = (uint32_t)c.dtype;
    const uint32_t planes = msadb_signature_planes(&sig);

    /* the store */
    char dir[4096];
    int own_dir = !c.dir;
    if (c.dir)
        snprintf(dir, sizeof dir, "%s", c.dir);
    else {
        snprintf(dir, sizeof dir, "/tmp/bench-runtime-XXXXXX");
        if (!mkdtemp(dir)) {
            fprintf(stderr, "bench_runtime: mkdtemp: %s\n", strerror(errno));
            return 1;
        }
        strncat(dir, "/store", sizeof dir - strlen(dir) - 1);
    }
    msadb_options opt;
    msadb_options_init(&opt);
    opt.no_sync = 1;
    msadb_store *st = NULL;
    pool pl = {0};
    result res[MAX_MODELS * MAX_SIZES * 2];
    uint64_t reached[MAX_SIZES] = {0};
    int skipped[MAX_SIZES] = {0};
    double build_s[MAX_SIZES] = {0};
    size_t n_res = 0;
    double spent = 0, t_start = machine_now_s();
    uint64_t have = 0;
    msadb_stat_info si = {0};
    if (c.sizes[c.n_sizes - 1] > 0) {
        if ((rc = msadb_open_or_create(dir, &sig, &opt, &st))) {
            fprintf(stderr, "bench_runtime: %s: %s\n", dir, msadb_strerror(rc));
            return 1;
        }
        if ((rc = msadb_stat(st, &si)) == 0)
            have = si.n_tokens;
        if (pool_init(&pl, sig.head_dim, (size_t)planes * c.doc_tokens)) {
            fprintf(stderr, "bench_runtime: out of memory\n");
            return 1;
        }
    }
    size_t n_sizes_done = 0;
    for (size_t si_ = 0; si_ < c.n_sizes && !rc; si_++) {
        uint64_t target = c.sizes[si_];
        if (target > 0) {
            if (have > target) {
                fprintf(stderr, "bench_runtime: %s already holds %llu tokens: size %llu skipped\n", dir,
                        (unsigned long long)have, (unsigned long long)target);
                skipped[si_] = 1;
                continue;
            }
            double before = spent;
            if ((rc = grow_store(st, &pl, planes, c.doc_tokens, target, c.build_budget_s, &spent, &have,
                                 c.json))) {
                fprintf(stderr, "bench_runtime: building the memory: %s\n", msadb_strerror(rc));
                break;
            }
            build_s[si_] = spent - before;
        }
        reached[si_] = target ? have : 0;
        n_sizes_done = si_ + 1;
        for (int once = 0; once < 2 && !rc; once++) {
            if ((once && (!target || c.routing == 0)) || (!once && target && c.routing == 1))
                continue;
            for (size_t mi = 0; mi < c.n_models; mi++) {
                result *r = &res[n_res++];
                memset(r, 0, sizeof *r);
                r->model = mi;
                r->once = once;
                r->mem_tokens = reached[si_];
                if ((rc = measure(models[mi], target ? st : NULL, &c, once, r))) {
                    fprintf(stderr, "bench_runtime: %s: %s\n", c.models[mi], msadb_strerror(rc));
                    break;
                }
                if (!c.json && isatty(2))
                    fprintf(stderr, "bench_runtime: %s, memory %llu, routing %s: decode %.1f tok/s\n",
                            c.models[mi], (unsigned long long)r->mem_tokens, once ? "once" : "each",
                            r->decode_tok_s);
            }
        }
        if (target && have < target)
            break; /* budget used up: the largest size that fits was measured */
    }
    if (st && msadb_stat(st, &si) != 0)
        memset(&si, 0, sizeof si);

    /* report */
    char cpu[256];
    machine_cpu_model(cpu, sizeof cpu);
    struct utsname un;
    uname(&un);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    const char *blas = getenv("OPENBLAS_NUM_THREADS");
    FILE *jf = c.json ? stdout : NULL;
    if (!rc && c.json_file && !(jf = fopen(c.json_file, "w"))) {
        fprintf(stderr, "bench_runtime: %s: %s\n", c.json_file, strerror(errno));
        rc = 1;
    }
    if (!rc && jf) {
        fprintf(jf, "{\"machine\": {\"cpu\": \"%s\", \"cpus\": %ld, \"kernel\": \"%s\", \"load_avg\": %.2f, "
               "\"openblas_threads\": \"%s\"},\n",
               cpu, ncpu, un.release, machine_load(), blas ? blas : "default");
        fprintf(jf, " \"config\": {\"prompt\": %u, \"gen\": %u, \"top_k\": %u, \"select\": \"blocks\", "
               "\"dtype\": \"%s\", \"block\": %u, \"memory_layers\": %u, \"planes\": %u, "
               "\"doc_tokens\": %u, \"reps\": %u},\n",
               c.prompt, c.gen, c.top_k, msadb_dtype_name(c.dtype), sig.block_size, sig.n_memory_layers,
               planes, c.doc_tokens, c.reps);
        fprintf(jf, " \"store\": {\"tokens\": %llu, \"bytes\": %llu, \"bytes_per_token\": %.1f, "
               "\"build_s\": %.1f},\n",
               (unsigned long long)si.n_tokens, (unsigned long long)(si.block_bytes + si.summary_bytes),
               si.n_tokens ? (double)(si.block_bytes + si.summary_bytes) / si.n_tokens : 0.0, spent);
        fprintf(jf, " \"sizes\": [");
        for (size_t i = 0, first = 1; i < n_sizes_done; i++) {
            if (skipped[i])
                continue;
            fprintf(jf, "%s{\"asked\": %llu, \"reached\": %llu, \"build_s\": %.1f}", first ? "" : ", ",
                   (unsigned long long)c.sizes[i], (unsigned long long)reached[i], build_s[i]);
            first = 0;
        }
        fprintf(jf, "],\n \"results\": [\n");
        for (size_t i = 0; i < n_res; i++) {
            const result *r = &res[i];
            const msadb_model_config *mc = msadb_model_get_config(models[r->model]);
            const result *b0 = base_of(res, r);
            double base = b0->decode_tok_s, cbase = b0->decode_cpu_tok_s;
            fprintf(jf, "  {\"model\": \"%s\", \"weights\": \"%s\", \"memory_tokens\": %llu, \"routing\": \"%s\", "
                   "\"prefill_tok_s\": %.1f, \"decode_tok_s\": %.1f, \"decode_ratio\": %.3f, "
                   "\"decode_cpu_tok_s\": %.1f, \"decode_cpu_ratio\": %.3f, "
                   "\"prefill_memory_ms\": %.2f, \"decode_memory_ms_per_token\": %.3f, "
                   "\"blocks_scanned_per_token\": %.0f, \"tokens_attended_per_token\": %.0f, "
                   "\"decode_memory_breakdown_ms_per_token\": {\"scan\": %.3f, \"select\": %.3f, "
                   "\"read\": %.3f, \"attend\": %.3f}}%s\n",
                   c.models[r->model], msadb_ggml_type_name(mc->weight_type),
                   (unsigned long long)r->mem_tokens, r->mem_tokens ? (r->once ? "once" : "each") : "none",
                   r->prefill_tok_s, r->decode_tok_s,
                   base > 0 ? r->decode_tok_s / base : 0.0, r->decode_cpu_tok_s,
                   cbase > 0 ? r->decode_cpu_tok_s / cbase : 0.0, r->prefill_mem_ms, r->decode_mem_ms_tok,
                   r->blocks_scanned_tok, r->tokens_attended_tok, r->scan_ms_tok, r->select_ms_tok,
                   r->read_ms_tok, r->attend_ms_tok, i + 1 < n_res ? "," : "");
        }
        fprintf(jf, " ],\n \"wall_s\": %.1f}\n", machine_now_s() - t_start);
        if (jf != stdout)
            fclose(jf);
    }
    if (!rc && !c.json) {
        const msadb_model_config *mc = msadb_model_get_config(models[0]);
        printf("machine: %s, %ld CPUs, load %.2f, OPENBLAS_NUM_THREADS=%s\n", cpu, ncpu, machine_load(),
               blas ? blas : "(default)");
        printf("model: %u layers, %u q / %u kv heads x %u, embd %u, ffn %u, vocab %u; memory layers %u "
               "(%u planes), block %u, %s storage, top-k %u blocks\n",
               mc->n_layers, mc->n_heads, mc->n_kv_heads, mc->head_dim, mc->n_embd, mc->n_ff, mc->n_vocab,
               sig.n_memory_layers, planes, sig.block_size, msadb_dtype_name(c.dtype), c.top_k);
        if (si.n_tokens)
            printf("store: %llu tokens, %.2f GB (%.0f bytes/token), built in %.0f s\n",
                   (unsigned long long)si.n_tokens, (si.block_bytes + si.summary_bytes) / 1e9,
                   (double)(si.block_bytes + si.summary_bytes) / si.n_tokens, spent);
        printf("%-16s %-5s %6s %-7s %11s %10s %6s %8s %6s %10s %24s %11s\n", "model", "wtype", "memory", "routing",
               "prefill t/s", "decode t/s", "ratio", "cpu t/s", "ratio", "mem ms/tok",
               "scan/select/read/attend", "prefill mem");
        for (size_t i = 0; i < n_res; i++) {
            const result *r = &res[i];
            const msadb_model_config *m2 = msadb_model_get_config(models[r->model]);
            const char *name = strrchr(c.models[r->model], '/');
            name = name ? name + 1 : c.models[r->model];
            char mem[32];
            human(r->mem_tokens, mem, sizeof mem);
            const result *b0 = base_of(res, r);
            double base = b0->decode_tok_s, cbase = b0->decode_cpu_tok_s;
            char br[64];
            snprintf(br, sizeof br, "%.2f/%.2f/%.2f/%.2f", r->scan_ms_tok, r->select_ms_tok, r->read_ms_tok,
                     r->attend_ms_tok);
            printf("%-16.16s %-5s %6s %-7s %11.1f %10.1f %6.3f %8.1f %6.3f %10.3f %24s %8.1f ms\n", name,
                   msadb_ggml_type_name(m2->weight_type), mem, r->mem_tokens ? (r->once ? "once" : "each") : "-",
                   r->prefill_tok_s, r->decode_tok_s,
                   base > 0 ? r->decode_tok_s / base : 0.0, r->decode_cpu_tok_s,
                   cbase > 0 ? r->decode_cpu_tok_s / cbase : 0.0, r->decode_mem_ms_tok, br, r->prefill_mem_ms);
        }
        for (size_t i = 0; i < n_sizes_done; i++)
            if (c.sizes[i] && !skipped[i] && reached[i] < c.sizes[i])
                printf("note: %llu tokens asked, %llu built within the %.0f s budget\n",
                       (unsigned long long)c.sizes[i], (unsigned long long)reached[i], c.build_budget_s);
    }
    msadb_close(st);
    free(pl.k);
    free(pl.v);
    for (size_t i = 0; i < c.n_models; i++)
        msadb_model_free(models[i]);
    if (!c.keep && own_dir) {
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = 0; /* the mkdtemp directory */
        rm_rf(dir);
    }
    return rc ? 1 : 0;
}
