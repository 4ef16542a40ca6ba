/* bench_ingest.c -- ingest benchmark of the block codec, per storage dtype:
 * encode and decode throughput (tokens per second per plane, one thread),
 * bytes per token, size relative to f16, and the attention-output error each
 * dtype causes.  With --store DIR it also measures end-to-end ingest through
 * the public API (msadb_batch_add / msadb_batch_commit).  With --stream DIR
 * it instead measures streaming ingest: one batch that commits every
 * --chunk MiB (msadb_batch_set_flush) at increasing sizes, each in a child
 * process, reporting token-planes per second, peak resident memory and
 * stored bytes per token against f16, with one batch committed once (the
 * way ingest worked before streaming) and the same stream with one thread
 * (msadb_batch_set_threads) at the first size (at most 1M tokens) as the
 * baselines; --threads
 * sets the streamed runs' thread count (default: the library's).
 *
 * Synthetic data: keys N(0,1) with a few outlier channels (large offset and
 * spread, as seen in real transformer keys), values N(0,1).  A pool of
 * tokens is generated once and cycled, so that N is not limited by memory
 * and the encoder still reads from DRAM rather than from cache.
 *
 * Usage: bench_ingest [--json] [--dim D] [--block B] [--level L]
 *                     [--store DIR] [--planes P] [--no-sync] [N]
 *        bench_ingest --stream DIR [--dtype T] [--chunk MIB] [--dim D]
 *                     [--planes P] [--no-sync] [--max-gb G] [--threads N]
 *                     [--no-baseline] N1[,N2...]
 * Exit status: 0 success, 1 error, 2 usage. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "codec/codec.h"
#include "machine.h"
#include "msadb.h"

#define N_DTYPES 5
#define POOL_MAX (256u * 1024u)  /* tokens generated, then cycled */
#define ATT_TOKENS 8192u         /* context length for the attention-error test */
#define ATT_QUERIES 32u

typedef struct config {
    const char *stream_dir; /* --stream */
    size_t sizes[16];       /* --stream: token counts */
    size_t n_sizes;
    int dtype;              /* --stream: storage dtype */
    size_t chunk_mib;       /* --stream: commit every this much encoded data */
    double max_gb;          /* --stream: stop a run when its store reaches this (0: never) */
    int threads;            /* --stream: msadb_batch_set_threads (0: the library's default) */
    int no_baseline;        /* --stream: skip the one-batch and one-thread runs */
    size_t n_tokens;
    uint32_t d, block;
    int level;
    int json;
    const char *store_dir;
    uint32_t planes;
    int no_sync;
} config;

typedef struct result {
    double enc_tok_s, dec_tok_s;
    double enc_cpu_tok_s, dec_cpu_tok_s; /* by thread CPU time: robust on a busy machine */
    double bytes_per_tok;
    double att_err_mean, att_err_max;
    double store_tok_s;     /* end-to-end, tokens per second per plane; 0 if not run */
    double store_bytes_tok; /* LMDB pages of the blocks database per token per plane */
} result;

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Keys: N(0,1), except 4 outlier channels with mean +-12 and sd 4.  Values:
 * N(0,1). */
static void gen_data(float *K, float *V, size_t n, uint32_t d, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t t = 0; t < n; t++)
        for (uint32_t c = 0; c < d; c++) {
            int outlier = d >= 8 && c % (d / 4) == 3;
            float mean = outlier ? ((c / (d / 4)) & 1 ? -12.0f : 12.0f) : 0.0f;
            K[t * d + c] = mean + (outlier ? 4.0f : 1.0f) * rng_normal(&s);
            V[t * d + c] = rng_normal(&s);
        }
}

/* ------------------------------------------------------------------------ */
/* Machine information                                                      */
/* ------------------------------------------------------------------------ */


static int cpu_flag(const char *flag)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return 0;
    char line[8192];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        size_t n = strlen(flag);
        for (char *p = strstr(line, flag); p; p = strstr(p + 1, flag))
            if ((p[-1] == ' ' || p[-1] == '\t') && (p[n] == ' ' || p[n] == '\n')) {
                found = 1;
                break;
            }
        break;
    }
    fclose(f);
    return found;
}

/* ------------------------------------------------------------------------ */
/* Attention error                                                          */
/* ------------------------------------------------------------------------ */

/* o = softmax(K q / sqrt(d)) V in double. */
static void attend(const float *q, const float *K, const float *V, size_t T, uint32_t d, double *w,
                   double *o)
{
    double scale = 1.0 / sqrt((double)d), mx = -INFINITY, sum = 0.0;
    for (size_t t = 0; t < T; t++) {
        double s = 0.0;
        for (uint32_t c = 0; c < d; c++)
            s += (double)q[c] * K[t * d + c];
        w[t] = s * scale;
        mx = w[t] > mx ? w[t] : mx;
    }
    for (uint32_t c = 0; c < d; c++)
        o[c] = 0.0;
    for (size_t t = 0; t < T; t++) {
        double e = exp(w[t] - mx);
        sum += e;
        for (uint32_t c = 0; c < d; c++)
            o[c] += e * V[t * d + c];
    }
    for (uint32_t c = 0; c < d; c++)
        o[c] /= sum;
}

/* Relative L2 error of the attention output over (Kd, Vd) against (K, V):
 * half the queries random, half "needles" close to one stored key (sharp
 * attention, where key errors matter most). */
static void attention_error(const float *K, const float *V, const float *Kd, const float *Vd, size_t T,
                            uint32_t d, double *mean, double *max)
{
    uint64_t s = 12345;
    float *q = malloc(d * sizeof *q);
    double *w = malloc(T * sizeof *w), *o1 = malloc(d * sizeof *o1), *o2 = malloc(d * sizeof *o2);
    if (!q || !w || !o1 || !o2) {
        fprintf(stderr, "bench_ingest: out of memory\n");
        exit(1);
    }
    *mean = 0.0;
    *max = 0.0;
    for (uint32_t i = 0; i < ATT_QUERIES; i++) {
        size_t pick = rng_next(&s) % T;
        for (uint32_t c = 0; c < d; c++)
            q[c] = i % 2 ? 0.3f * K[pick * d + c] + 0.5f * rng_normal(&s) : rng_normal(&s);
        attend(q, K, V, T, d, w, o1);
        attend(q, Kd, Vd, T, d, w, o2);
        double num = 0.0, den = 0.0;
        for (uint32_t c = 0; c < d; c++) {
            num += (o2[c] - o1[c]) * (o2[c] - o1[c]);
            den += o1[c] * o1[c];
        }
        double e = den > 0.0 ? sqrt(num / den) : sqrt(num);
        *mean += e / ATT_QUERIES;
        *max = e > *max ? e : *max;
    }
    free(q);
    free(w);
    free(o1);
    free(o2);
}

/* ------------------------------------------------------------------------ */
/* Codec benchmark                                                          */
/* ------------------------------------------------------------------------ */

static int bench_codec(const config *cfg, int dtype, const float *K, const float *V, size_t pool,
                       result *r)
{
    uint32_t d = cfg->d, B = cfg->block;
    size_t nb_pool = pool / B, cap = msadb_block_bound(dtype, B, d);
    uint8_t *arena = malloc(nb_pool * cap);
    size_t *len = calloc(nb_pool, sizeof *len);
    float *kdeq = malloc((size_t)B * d * sizeof *kdeq), *vdeq = malloc((size_t)B * d * sizeof *vdeq);
    size_t T = ATT_TOKENS < pool ? ATT_TOKENS : pool;
    float *Kd = malloc(T * d * sizeof *Kd), *Vd = malloc(T * d * sizeof *Vd);
    msadb_codec *c = msadb_codec_new(cfg->level);
    int rc = 0;
    if (!arena || !len || !kdeq || !vdeq || !Kd || !Vd || !c) {
        rc = MSADB_ENOMEM;
        goto out;
    }
    size_t n_blocks = (cfg->n_tokens + B - 1) / B;
    /* touch the output once, so that page faults are not timed */
    memset(arena, 0, nb_pool * cap);
    memset(kdeq, 0, (size_t)B * d * sizeof *kdeq);

    /* Encode, as the store does it: K_deq requested (summaries are computed
     * from stored keys), V_deq not. */
    double bytes = 0.0, t0 = machine_now_s(), c0 = cpu_s();
    for (size_t b = 0; b < n_blocks; b++) {
        size_t j = b % nb_pool;
        rc = msadb_block_encode(c, dtype, K + j * B * d, V + j * B * d, B, d, arena + j * cap, cap,
                                &len[j], kdeq, NULL);
        if (rc)
            goto out;
        bytes += (double)len[j];
    }
    double t1 = machine_now_s(), c1 = cpu_s();
    r->enc_tok_s = (double)n_blocks * B / (t1 - t0);
    r->enc_cpu_tok_s = (double)n_blocks * B / (c1 - c0);
    r->bytes_per_tok = bytes / ((double)n_blocks * B);

    t0 = machine_now_s();
    c0 = cpu_s();
    for (size_t b = 0; b < n_blocks; b++) {
        size_t j = b % nb_pool;
        uint32_t n = 0;
        rc = msadb_block_decode(c, arena + j * cap, len[j], d, B, NULL, NULL, 0, kdeq, vdeq, &n);
        if (rc)
            goto out;
    }
    t1 = machine_now_s();
    c1 = cpu_s();
    r->dec_tok_s = (double)n_blocks * B / (t1 - t0);
    r->dec_cpu_tok_s = (double)n_blocks * B / (c1 - c0);

    for (size_t j = 0; j < T / B; j++) {
        uint32_t n = 0;
        rc = msadb_block_decode(c, arena + j * cap, len[j], d, B, NULL, NULL, 0, Kd + j * B * d,
                                Vd + j * B * d, &n);
        if (rc)
            goto out;
    }
    attention_error(K, V, Kd, Vd, T / B * B, d, &r->att_err_mean, &r->att_err_max);
out:
    msadb_codec_free(c);
    free(arena);
    free(len);
    free(kdeq);
    free(vdeq);
    free(Kd);
    free(Vd);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* End-to-end ingest through the public API (--store DIR)                   */
/* ------------------------------------------------------------------------ */

#define STORE_DOC_TOKENS 2048u
#define STORE_DOCS_PER_BATCH 16u

/* Creates DIR/<dtype> (which must not hold a store yet), ingests
 * cfg->n_tokens tokens as documents of STORE_DOC_TOKENS tokens, committing
 * every STORE_DOCS_PER_BATCH documents, and reports tokens per second per
 * plane, add + commit included. */
static int bench_store(const config *cfg, int dtype, const float *K, const float *V, size_t pool,
                       result *r)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", cfg->store_dir, msadb_dtype_name(dtype));
    msadb_signature sig;
    /* two layers: the default puts memory in the latter half, i.e. layer 1 */
    int rc = msadb_signature_init(&sig, 2, cfg->planes, cfg->planes, cfg->d);
    if (rc)
        return rc;
    sig.block_size = cfg->block;
    sig.dtype = (uint32_t)dtype;
    uint32_t planes = msadb_signature_planes(&sig);
    msadb_options opt;
    msadb_options_init(&opt);
    opt.zstd_level = cfg->level;
    opt.no_sync = cfg->no_sync;
    opt.map_size = 1ull << 30;
    msadb_store *st = NULL;
    if ((rc = msadb_create(path, &sig, &opt, &st)))
        return rc;

    /* one document's K and V: [planes][T][d], each plane a different slice */
    size_t T = STORE_DOC_TOKENS, d = cfg->d, per = T * d;
    float *dk = malloc(planes * per * sizeof *dk), *dv = malloc(planes * per * sizeof *dv);
    if (!dk || !dv) {
        rc = MSADB_ENOMEM;
        goto out;
    }
    size_t done = 0, doc_no = 0;
    double t0 = machine_now_s();
    while (done < cfg->n_tokens && !rc) {
        msadb_batch *batch = NULL;
        if ((rc = msadb_batch_begin(st, &batch)))
            break;
        for (uint32_t i = 0; i < STORE_DOCS_PER_BATCH && done < cfg->n_tokens; i++, doc_no++) {
            size_t n = cfg->n_tokens - done < T ? cfg->n_tokens - done : T;
            for (uint32_t p = 0; p < planes; p++) {
                size_t start = ((doc_no * planes + p) * T) % (pool - T + 1);
                memcpy(dk + p * n * d, K + start * d, n * d * sizeof(float));
                memcpy(dv + p * n * d, V + start * d, n * d * sizeof(float));
            }
            msadb_doc doc = {.n_tokens = n, .kv_dtype = MSADB_DTYPE_F32, .keys = dk, .values = dv};
            if ((rc = msadb_batch_add(batch, &doc)))
                break;
            done += n;
        }
        if (rc) {
            msadb_batch_abort(batch);
            break;
        }
        rc = msadb_batch_commit(batch, NULL);
    }
    double t1 = machine_now_s();
    if (!rc) {
        msadb_stat_info si;
        r->store_tok_s = (double)done * planes / (t1 - t0);
        if (msadb_stat(st, &si) == 0 && done)
            r->store_bytes_tok = (double)si.block_bytes / ((double)done * planes);
    }
out:
    free(dk);
    free(dv);
    msadb_close(st);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Streaming ingest (--stream DIR)                                          */
/* ------------------------------------------------------------------------ */

#define STREAM_POOL (32u * 1024u) /* tokens of input cycled (small: RSS is measured) */
#define BASELINE_MAX 1000000u     /* tokens of the baseline runs, at most */

typedef struct stream_result {
    size_t tokens, chunk_bytes;
    double seconds, token_planes_s, block_bytes_tp, file_bytes_tp;
    uint64_t commits;
    long maxrss_kib;
    int capped;             /* stopped by --max-gb before all the tokens were in */
    double load_end;        /* load average when the run ended */
    double cpu_s;           /* CPU time of the run's process (user + system) */
    int threads;            /* the batch's thread count */
} stream_result;

/* Bytes data.mdb at path takes on disk. */
static double store_file_bytes(const char *path)
{
    char f[4200];
    struct stat sb;
    snprintf(f, sizeof f, "%s/data.mdb", path);
    return stat(f, &sb) == 0 ? (double)sb.st_blocks * 512 : 0;
}

/* Child: ingests cfg->... tokens into a new store at path, in one batch
 * committing every chunk bytes (0: once, at the end). */
static int stream_child(const config *cfg, const char *path, size_t n_tokens, size_t chunk, int threads,
                        const float *K, const float *V, stream_result *r)
{
    msadb_signature sig;
    int rc = msadb_signature_init(&sig, 2, cfg->planes, cfg->planes, cfg->d);
    if (rc)
        return rc;
    sig.block_size = cfg->block;
    sig.dtype = (uint32_t)cfg->dtype;
    uint32_t planes = msadb_signature_planes(&sig);
    msadb_options opt;
    msadb_options_init(&opt);
    opt.no_sync = cfg->no_sync;
    msadb_store *st;
    if ((rc = msadb_create(path, &sig, &opt, &st)))
        return rc;
    size_t T = STORE_DOC_TOKENS, d = cfg->d;
    float *dk = malloc(planes * T * d * sizeof *dk), *dv = malloc(planes * T * d * sizeof *dv);
    msadb_batch *b = NULL;
    if (!dk || !dv)
        rc = MSADB_ENOMEM;
    if (!rc && !(rc = msadb_batch_begin(st, &b)) && !(rc = msadb_batch_set_flush(b, 0, 0, chunk, NULL, NULL)))
        rc = msadb_batch_set_threads(b, threads);
    r->threads = msadb_batch_threads(b);
    size_t done = 0, doc_no = 0;
    double t0 = machine_now_s();
    while (!rc && done < n_tokens) {
        size_t n = n_tokens - done < T ? n_tokens - done : T;
        for (uint32_t p = 0; p < planes; p++) {
            size_t start = ((doc_no * planes + p) * 977) % (STREAM_POOL - T + 1);
            memcpy(dk + p * n * d, K + start * d, n * d * sizeof(float));
            memcpy(dv + p * n * d, V + start * d, n * d * sizeof(float));
        }
        msadb_doc doc = {.n_tokens = n, .kv_dtype = MSADB_DTYPE_F32, .keys = dk, .values = dv};
        rc = msadb_batch_add(b, &doc);
        done += n;
        doc_no++;
        if (!rc && cfg->max_gb > 0 && doc_no % 32 == 0 && store_file_bytes(path) >= cfg->max_gb * 1e9) {
            r->capped = 1; /* the disk budget is spent: commit what is held and stop */
            break;
        }
    }
    msadb_batch_status bs = {0};
    if (!rc) {
        msadb_batch_status_get(b, &bs);
        rc = msadb_batch_commit(b, NULL);
        b = NULL;
    }
    msadb_batch_abort(b);
    double t1 = machine_now_s();
    msadb_stat_info si;
    if (!rc && !(rc = msadb_stat(st, &si))) {
        r->tokens = done;
        r->chunk_bytes = chunk;
        r->seconds = t1 - t0;
        r->token_planes_s = (double)done * planes / (t1 - t0);
        r->block_bytes_tp = (double)si.block_bytes / ((double)done * planes);
        r->file_bytes_tp = store_file_bytes(path) / ((double)done * planes);
        r->commits = bs.commits + 1;
        r->load_end = machine_load();
    }
    free(dk);
    free(dv);
    msadb_close(st);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    r->maxrss_kib = ru.ru_maxrss;
    r->cpu_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
               ru.ru_stime.tv_usec / 1e6;
    return rc;
}

/* Runs one measurement in a child process (its own peak RSS) and removes
 * the store afterwards. */
static int stream_run(const config *cfg, size_t n_tokens, size_t chunk, int threads, const float *K,
                      const float *V, stream_result *r)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/stream-%zu-%zu-%d", cfg->stream_dir, n_tokens, chunk, threads);
    int fds[2];
    if (pipe(fds) != 0)
        return errno;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return errno;
    if (pid == 0) {
        close(fds[0]);
        stream_result cr = {0};
        int rc = stream_child(cfg, path, n_tokens, chunk, threads, K, V, &cr);
        if (rc)
            fprintf(stderr, "bench_ingest: %s: %s\n", path, msadb_strerror(rc));
        _exit(write(fds[1], &cr, sizeof cr) == (ssize_t)sizeof cr && !rc ? 0 : 1);
    }
    close(fds[1]);
    ssize_t got = read(fds[0], r, sizeof *r);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_ingest: could not remove %s\n", path);
    return got == (ssize_t)sizeof *r && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : MSADB_EIO;
}

static void stream_print(const config *cfg, const stream_result *r, const char *what)
{
    double f16 = 4.0 * cfg->d; /* K and V rows in f16 */
    if (cfg->json) {
        printf("{\"mode\": \"stream\", ");
        machine_json();
        printf("\"dtype\":\"%s\",\"d\":%u,\"planes\":%u,\"block\":%u,\"synced\":%s,", msadb_dtype_name(cfg->dtype),
               cfg->d, cfg->planes, cfg->block, cfg->no_sync ? "false" : "true");
        printf("\"run\":\"%s\",\"threads\":%d,\"tokens\":%zu,\"chunk_bytes\":%zu,\"commits\":%llu,"
               "\"seconds\":%.3f,\"token_planes_per_s\":%.6g,\"token_planes_per_cpu_s\":%.6g,\"peak_rss_mib\":%.1f,"
               "\"block_bytes_per_token_plane\":%.2f,"
               "\"file_bytes_per_token_plane\":%.2f,\"vs_f16\":%.4f,\"capped\":%s,\"load_end\":%.2f,"
               "\"cpu_seconds\":%.2f}\n",
               what, r->threads, r->tokens, r->chunk_bytes, (unsigned long long)r->commits,
               r->seconds, r->token_planes_s, r->cpu_s > 0 ? (double)r->tokens * cfg->planes / r->cpu_s : 0.0,
               r->maxrss_kib / 1024.0, r->block_bytes_tp, r->file_bytes_tp, r->file_bytes_tp / f16,
               r->capped ? "true" : "false", r->load_end, r->cpu_s);
    } else
        printf("%-10s %7d %12zu %8.0f %8llu %9.1f %9.1f %14.3e %12.3e %12.1f %10.2f %10.2f %7.4f %6.2f%s\n", what,
               r->threads, r->tokens, r->chunk_bytes / 1048576.0, (unsigned long long)r->commits, r->seconds,
               r->cpu_s, r->token_planes_s, r->cpu_s > 0 ? (double)r->tokens * cfg->planes / r->cpu_s : 0.0,
               r->maxrss_kib / 1024.0, r->block_bytes_tp, r->file_bytes_tp, r->file_bytes_tp / f16, r->load_end,
               r->capped ? " (stopped by --max-gb)" : "");
    fflush(stdout);
}

static int bench_stream(const config *cfg)
{
    float *K = malloc((size_t)STREAM_POOL * cfg->d * sizeof *K), *V = malloc((size_t)STREAM_POOL * cfg->d * sizeof *V);
    if (!K || !V)
        return MSADB_ENOMEM;
    gen_data(K, V, STREAM_POOL, cfg->d, 42);
    if (mkdir(cfg->stream_dir, 0755) != 0 && errno != EEXIST)
        return errno;
    char cpu[256];
    machine_cpu_model(cpu, sizeof cpu);
    if (!cfg->json) {
        printf("msadb %s streaming ingest benchmark; machine: %s, %ld cores, load average %.2f at the start\n",
               msadb_version(), cpu, sysconf(_SC_NPROCESSORS_ONLN), machine_load());
        printf("store: dtype %s, head dim %u, %u planes, block %u, %u-token documents%s; one batch per run\n\n",
               msadb_dtype_name(cfg->dtype), cfg->d, cfg->planes, cfg->block, STORE_DOC_TOKENS,
               cfg->no_sync ? ", no_sync" : ", synced commits");
        printf("%-10s %7s %12s %8s %8s %9s %9s %14s %12s %12s %10s %10s %7s %6s\n", "run", "threads", "tokens",
               "chunk MiB", "commits", "seconds", "CPU s", "token-planes/s", "tp per CPU s", "peak RSS MiB",
               "block B/tp", "file B/tp", "vs f16", "load");
    }
    int rc = 0;
    stream_result base = {0}, one = {0}, r;
    /* baselines at the first size (at most BASELINE_MAX tokens: one batch
     * holds everything in memory): the whole input held and committed once
     * (one thread), and the same stream with one thread */
    size_t n_base = cfg->sizes[0] < BASELINE_MAX ? cfg->sizes[0] : BASELINE_MAX;
    if (!cfg->no_baseline) {
        if ((rc = stream_run(cfg, n_base, 0, 1, K, V, &base)))
            goto out;
        stream_print(cfg, &base, "one-batch");
        if ((rc = stream_run(cfg, n_base, cfg->chunk_mib << 20, 1, K, V, &one)))
            goto out;
        stream_print(cfg, &one, "one-thread");
    }
    for (size_t i = 0; i < cfg->n_sizes; i++) {
        if ((rc = stream_run(cfg, cfg->sizes[i], cfg->chunk_mib << 20, cfg->threads, K, V, &r)))
            goto out;
        stream_print(cfg, &r, "streamed");
        if (i == 0 && !cfg->json && !cfg->no_baseline)
            printf("%-10s against one thread at %zu tokens: throughput x%.2f, per CPU second x%.2f, peak RSS "
                   "x%.3f;\n%-10s against one-batch: throughput x%.2f, peak RSS x%.3f\n", "", n_base,
                   r.token_planes_s / one.token_planes_s,
                   (r.tokens / r.cpu_s) / (one.tokens / one.cpu_s),
                   (double)r.maxrss_kib / (double)one.maxrss_kib, "", r.token_planes_s / base.token_planes_s,
                   (double)r.maxrss_kib / (double)base.maxrss_kib);
    }
    if (!cfg->json)
        printf("\nthreads: msadb_batch_set_threads (0: the library's default, MSADB_INGEST_THREADS or the online\n"
               "CPUs); CPU s: user + system time of the run's process (a load-independent cost);\n"
               "token-planes/s: tokens x planes per second, add + commits included; block B/tp: LMDB pages\n"
               "of the blocks database per token-plane; file B/tp: data.mdb on disk per token-plane (summaries,\n"
               "slots and records included); vs f16: file bytes against %u B (K and V rows in f16);\n"
               "load average %.2f at the end.\n",
               4 * cfg->d, machine_load());
out:
    free(K);
    free(V);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Output                                                                   */
/* ------------------------------------------------------------------------ */

static void print_table(const config *cfg, const result *res, const char *cpu, long cores, double load)
{
    printf("msadb %s block codec ingest benchmark\n", msadb_version());
    printf("machine: %s, %ld cores online, avx512f %s, f16c %s, load average %.2f at the end;\n"
           "compiler %s; zstd %s level %d\n",
           cpu, cores, cpu_flag("avx512f") ? "yes" : "no", cpu_flag("f16c") ? "yes" : "no", load, __VERSION__,
           ZSTD_versionString(), cfg->level);
    printf("data: %zu tokens per dtype, head_dim %u, block %u, one thread; keys N(0,1) with 4 outlier\n"
           "channels (mean +-12, sd 4), values N(0,1); attention error over %u tokens, %u queries\n\n",
           cfg->n_tokens, cfg->d, cfg->block, ATT_TOKENS, ATT_QUERIES);
    printf("%-5s %10s %10s %10s %10s %8s %12s %12s", "dtype", "enc tok/s", "(cpu)", "dec tok/s", "bytes/tok",
           "vs f16", "att err mean", "att err max");
    if (cfg->store_dir)
        printf(" %14s %10s", "store tok/s", "store B/tok");
    printf("\n");
    for (int dt = 0; dt < N_DTYPES; dt++) {
        const result *r = &res[dt];
        printf("%-5s %10.3e %10.3e %10.3e %10.2f %8.4f %12.3e %12.3e", msadb_dtype_name(dt), r->enc_tok_s,
               r->enc_cpu_tok_s, r->dec_tok_s, r->bytes_per_tok,
               r->bytes_per_tok / res[MSADB_DTYPE_F16].bytes_per_tok, r->att_err_mean, r->att_err_max);
        if (cfg->store_dir)
            printf(" %14.3e %10.2f", r->store_tok_s, r->store_bytes_tok);
        printf("\n");
    }
    printf("\ntok/s are tokens per second per plane (one K and one V row per token); encode as the\n"
           "store does it (K_deq requested for summaries).  bytes/tok: encoded block bytes per token per\n"
           "plane, header included.  att err: relative L2 error of softmax attention outputs over the\n"
           "dequantized K/V vs the originals (half random queries, half queries near a stored key).\n");
    if (cfg->store_dir)
        printf("store: msadb_batch_add + msadb_batch_commit, %u planes, %u-token documents, %u per batch%s;\n"
               "store B/tok: LMDB pages of the blocks database per token per plane.\n",
               cfg->planes, STORE_DOC_TOKENS, STORE_DOCS_PER_BATCH, cfg->no_sync ? ", no_sync" : "");
}

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", (unsigned char)*s);
        else
            putchar(*s);
    }
    putchar('"');
}

static void print_json(const config *cfg, const result *res, const char *cpu, long cores, double load)
{
    printf("{\"machine\":{\"cpu\":");
    json_string(cpu);
    printf(",\"cores\":%ld,\"load_average\":%.2f,\"avx512f\":%s,\"compiler\":", cores, load,
           cpu_flag("avx512f") ? "true" : "false");
    json_string(__VERSION__);
    printf(",\"zstd\":\"%s\"},", ZSTD_versionString());
    printf("\"tokens\":%zu,\"head_dim\":%u,\"block\":%u,\"zstd_level\":%d,\"threads\":1,\"dtypes\":[",
           cfg->n_tokens, cfg->d, cfg->block, cfg->level);
    for (int dt = 0; dt < N_DTYPES; dt++) {
        const result *r = &res[dt];
        printf("%s{\"dtype\":\"%s\",\"encode_tokens_per_s\":%.6g,\"encode_cpu_tokens_per_s\":%.6g,"
               "\"decode_tokens_per_s\":%.6g,\"decode_cpu_tokens_per_s\":%.6g,"
               "\"bytes_per_token\":%.6g,\"ratio_vs_f16\":%.6g,\"attention_rel_err_mean\":%.6g,"
               "\"attention_rel_err_max\":%.6g",
               dt ? "," : "", msadb_dtype_name(dt), r->enc_tok_s, r->enc_cpu_tok_s, r->dec_tok_s,
               r->dec_cpu_tok_s, r->bytes_per_tok, r->bytes_per_tok / res[MSADB_DTYPE_F16].bytes_per_tok,
               r->att_err_mean, r->att_err_max);
        if (cfg->store_dir)
            printf(",\"store_tokens_per_s\":%.6g,\"store_bytes_per_token\":%.6g,\"store_planes\":%u",
                   r->store_tok_s, r->store_bytes_tok, cfg->planes);
        printf("}");
    }
    printf("]}\n");
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_ingest [--json] [--dim D] [--block B] [--level L] [--store DIR]\n"
                    "                    [--planes P] [--no-sync] [N]\n"
                    "  N          tokens encoded per dtype (default 1048576)\n"
                    "  --store    also ingest N tokens per dtype end to end into new stores\n"
                    "             DIR/<dtype> through msadb_batch_add/commit\n"
                    "  --planes   kv heads of the --store signature (default 4)\n"
                    "       bench_ingest --stream DIR [--dtype T] [--chunk MIB] [--dim D] [--planes P]\n"
                    "                    [--no-sync] [--max-gb G] [--threads N] [--no-baseline] N1[,N2...]\n"
                    "  --stream   streaming ingest of N1, N2... tokens into new stores under DIR (each\n"
                    "             removed after its run), committing every --chunk MiB (default 8, the CLI's)\n"
                    "             of encoded data, dtype --dtype (default int8); baseline: one batch\n"
                    "             committed once at N1; --max-gb stops a run (committing what it\n"
                    "             holds) once its store takes G GB of disk; --threads N: the streamed\n"
                    "             runs' thread count (default 0: the library's); the baselines, at N1\n"
                    "             (at most 1000000 tokens), are one batch committed once and the\n"
                    "             stream with one thread\n"
                    "             (--no-baseline: skip them)\n");
    return 2;
}

static int parse_u(const char *s, unsigned long long lo, unsigned long long hi, unsigned long long *v)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || end == s || *end || x < lo || x > hi)
        return -1;
    *v = x;
    return 0;
}

/* "1000000,10000000" into cfg->sizes. */
static int parse_sizes(const char *s, config *cfg)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", s);
    cfg->n_sizes = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        unsigned long long v;
        if (cfg->n_sizes == 16 || parse_u(tok, STORE_DOC_TOKENS, 1ull << 40, &v))
            return -1;
        cfg->sizes[cfg->n_sizes++] = (size_t)v;
    }
    return cfg->n_sizes ? 0 : -1;
}

int main(int argc, char **argv)
{
    config cfg = {.n_tokens = 1u << 20, .d = 128, .block = 64, .level = 1, .planes = 4,
                  .dtype = MSADB_DTYPE_INT8, .chunk_mib = 8};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        unsigned long long v;
        if (!strcmp(a, "--stream") && i + 1 < argc) {
            cfg.stream_dir = argv[++i];
        } else if (!strcmp(a, "--dtype") && i + 1 < argc && msadb_dtype_parse(argv[i + 1]) >= 0) {
            cfg.dtype = msadb_dtype_parse(argv[++i]);
        } else if (!strcmp(a, "--chunk") && i + 1 < argc && !parse_u(argv[i + 1], 1, 1u << 20, &v)) {
            cfg.chunk_mib = (size_t)v, i++;
        } else if (cfg.stream_dir && a[0] != '-') {
            if (parse_sizes(a, &cfg))
                return usage();
        } else if (!strcmp(a, "--json")) {
            cfg.json = 1;
        } else if (!strcmp(a, "--max-gb") && i + 1 < argc && !parse_u(argv[i + 1], 1, 100000, &v)) {
            cfg.max_gb = (double)v, i++;
        } else if (!strcmp(a, "--threads") && i + 1 < argc && !parse_u(argv[i + 1], 0, 8, &v)) {
            cfg.threads = (int)v, i++;
        } else if (!strcmp(a, "--no-baseline")) {
            cfg.no_baseline = 1;
        } else if (!strcmp(a, "--no-sync")) {
            cfg.no_sync = 1;
        } else if (!strcmp(a, "--store") && i + 1 < argc) {
            cfg.store_dir = argv[++i];
        } else if (!strcmp(a, "--dim") && i + 1 < argc && !parse_u(argv[i + 1], 1, MSADB_MAX_HEAD_DIM, &v)) {
            cfg.d = (uint32_t)v, i++;
        } else if (!strcmp(a, "--block") && i + 1 < argc && !parse_u(argv[i + 1], 1, MSADB_MAX_BLOCK, &v)) {
            cfg.block = (uint32_t)v, i++;
        } else if (!strcmp(a, "--level") && i + 1 < argc && !parse_u(argv[i + 1], 1, 19, &v)) {
            cfg.level = (int)v, i++;
        } else if (!strcmp(a, "--planes") && i + 1 < argc && !parse_u(argv[i + 1], 1, MSADB_MAX_HEADS, &v)) {
            cfg.planes = (uint32_t)v, i++;
        } else if (a[0] != '-' && !parse_u(a, 1, 1ull << 40, &v)) {
            cfg.n_tokens = (size_t)v;
        } else {
            return usage();
        }
    }

    if (cfg.stream_dir) {
        if (!cfg.n_sizes) {
            cfg.sizes[0] = cfg.n_tokens;
            cfg.n_sizes = 1;
        }
        int rc = bench_stream(&cfg);
        if (rc)
            fprintf(stderr, "bench_ingest: --stream: %s\n", msadb_strerror(rc));
        return rc ? 1 : 0;
    }

    /* The pool: whole blocks, at least one document for --store. */
    size_t pool = cfg.n_tokens < POOL_MAX ? cfg.n_tokens : POOL_MAX;
    if (pool < ATT_TOKENS)
        pool = ATT_TOKENS;
    if (cfg.store_dir && pool < STORE_DOC_TOKENS)
        pool = STORE_DOC_TOKENS;
    pool = (pool + cfg.block - 1) / cfg.block * cfg.block;
    float *K = malloc(pool * cfg.d * sizeof *K), *V = malloc(pool * cfg.d * sizeof *V);
    if (!K || !V) {
        fprintf(stderr, "bench_ingest: out of memory\n");
        return 1;
    }
    gen_data(K, V, pool, cfg.d, 42);

    if (cfg.store_dir && mkdir(cfg.store_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "bench_ingest: %s: %s\n", cfg.store_dir, strerror(errno));
        return 1;
    }
    result res[N_DTYPES];
    memset(res, 0, sizeof res);
    for (int dt = 0; dt < N_DTYPES; dt++) {
        int rc = bench_codec(&cfg, dt, K, V, pool, &res[dt]);
        if (!rc && cfg.store_dir)
            rc = bench_store(&cfg, dt, K, V, pool, &res[dt]);
        if (rc) {
            fprintf(stderr, "bench_ingest: %s: %s\n", msadb_dtype_name(dt), msadb_strerror(rc));
            return 1;
        }
    }
    char cpu[256];
    machine_cpu_model(cpu, sizeof cpu);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    double load = machine_load();
    if (cfg.json)
        print_json(&cfg, res, cpu, cores, load);
    else
        print_table(&cfg, res, cpu, cores, load);
    free(K);
    free(V);
    return 0;
}
