/* bench_shard.c -- a sharded store's queries: one store, N shards in one
 * process (threads), and N shards served by the ranks of an MPI job.
 *
 *   bench_shard DIR build [TOKENS]       (one process) writes DIR/one and
 *                                        DIR/four (4 shards), the same
 *                                        documents of the needle workload
 *                                        (tools/bench/workload.h), d 128,
 *                                        2 kv heads, 8 q heads, f16
 *   mpirun -np P bench_shard DIR run [QUERIES] [TOP_K]
 *                                        rank 0 times one store and the
 *                                        4 shards in one process (the
 *                                        baselines, in the same run), then
 *                                        all ranks serve DIR/four:
 *                                        latency, throughput, the slowest
 *                                        rank's local attention and the
 *                                        bytes a query moves, for both
 *                                        reductions (MPI_Op, gather)
 *
 * Run with MSADB_BLOCK_CACHE_MB=0 (the queries repeat, and a snapshot's
 * decoded-block cache would serve the later methods from memory); each
 * method first runs the queries once untimed, to warm the page cache alike.
 * Prints the machine and its load: on a small machine the ranks share
 * cores, so P ranks are not P times the compute (docs/benchmarks.md models
 * a cluster from the per-shard cost and the message sizes). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "machine.h"
#include "msadb.h"
#include "msadb_mpi.h"
#include "msadb_shard.h"
#include "workload.h"

enum { NKV = 2, G = 4, NQH = NKV * G, D = 128, NSH = 4 };

static wl_model wm;

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_shard: %s: %s\n", what, msadb_strerror(rc));
    exit(1);
}

static void signature(msadb_signature *sig)
{
    int rc = msadb_signature_init(sig, 2, NKV, NQH, D);
    if (rc)
        die("signature", rc);
}

static void model(uint64_t tokens)
{
    wl_config c;
    wl_config_default(&c);
    c.n_tokens = tokens;
    c.d = D;
    c.G = G;
    c.n_per_size = 8;
    c.n_plain = 8;
    if (wl_init(&wm, &c) || wl_calibrate(&wm, NULL)) {
        fprintf(stderr, "bench_shard: out of memory building the workload\n");
        exit(1);
    }
}

/* kv head 1 holds kv head 0's vectors reversed (wl_mirror) */
static void query_vec(size_t qi, float *q)
{
    memcpy(q, wm.qs[qi].q, sizeof(float) * G * D);
    wl_mirror(wm.qs[qi].q, q + G * D, G, D);
}

static void build(const char *dir, uint64_t tokens)
{
    model(tokens);
    mkdir(dir, 0775);
    char one[4096], four[4096];
    snprintf(one, sizeof one, "%s/one", dir);
    snprintf(four, sizeof four, "%s/four", dir);
    msadb_signature sig;
    signature(&sig);
    msadb_options o;
    msadb_options_init(&o);
    msadb_store *st;
    msadb_shards *sh;
    int rc;
    if ((rc = msadb_create(one, &sig, &o, &st)))
        die(one, rc);
    if ((rc = msadb_shards_create(four, NSH, &sig, &o, &sh)))
        die(four, rc);
    float *K = malloc(sizeof(float) * WL_MAX_DOC * D * NKV), *V = malloc(sizeof(float) * WL_MAX_DOC * D * NKV);
    float *k1 = malloc(sizeof(float) * WL_MAX_DOC * D), *v1 = malloc(sizeof(float) * WL_MAX_DOC * D);
    if (!K || !V || !k1 || !v1)
        die("build", MSADB_ENOMEM);
    double t0 = machine_now_s();
    for (size_t di = 0; di < wm.n_docs; di += 32) {
        msadb_batch *b;
        msadb_shards_batch *sb;
        if ((rc = msadb_batch_begin(st, &b)) || (rc = msadb_shards_batch_begin(sh, &sb)))
            die("batch", rc);
        for (size_t j = di; j < wm.n_docs && j < di + 32; j++) {
            uint32_t L = wm.docs[j].len;
            wl_doc_kv(&wm, j, k1, v1);
            wl_plant(&wm, j, k1);
            memcpy(K, k1, sizeof(float) * L * D);
            memcpy(V, v1, sizeof(float) * L * D);
            wl_mirror(k1, K + (size_t)L * D, L, D);
            wl_mirror(v1, V + (size_t)L * D, L, D);
            msadb_doc doc = {.n_tokens = L, .kv_dtype = MSADB_DTYPE_F32, .keys = K, .values = V};
            if ((rc = msadb_batch_add(b, &doc)) || (rc = msadb_shards_batch_add(sb, &doc, NULL)))
                die("add", rc);
        }
        if ((rc = msadb_batch_commit(b, NULL)) || (rc = msadb_shards_batch_commit(sb, NULL)))
            die("commit", rc);
    }
    printf("built %s and %s: %zu documents, %llu tokens, %.1f s\n", one, four, wm.n_docs,
           (unsigned long long)tokens, machine_now_s() - t0);
    msadb_close(st);
    msadb_shards_close(sh);
    free(K);
    free(V);
    free(k1);
    free(v1);
}

static void query_init(msadb_query *mq, const float *q, uint32_t top_k)
{
    msadb_query_init(mq);
    mq->layer = 1;
    mq->q = q;
    mq->n_query = 1;
    mq->top_k = top_k;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct timing {
    double p50, mean, qps;
} timing;

static timing summarize(double *ms, size_t n, double wall_s)
{
    timing t = {0, 0, n / wall_s};
    for (size_t i = 0; i < n; i++)
        t.mean += ms[i] / n;
    qsort(ms, n, sizeof *ms, cmp_d);
    t.p50 = ms[n / 2];
    return t;
}

/* Where a query's time goes in one store (mean over nq queries, one
 * process): the cost model of docs/benchmarks.md takes the scan as
 * proportional to the tokens and the rest as fixed per shard. */
static void breakdown(const char *path, size_t nq, uint32_t top_k)
{
    msadb_options o;
    msadb_options_init(&o);
    o.read_only = 1;
    msadb_store *st;
    msadb_snapshot *s;
    int rc;
    if ((rc = msadb_open(path, NULL, &o, &st)) || (rc = msadb_snapshot_begin(st, &s)))
        die(path, rc);
    msadb_stat_info si;
    msadb_stat(st, &si);
    float q[NQH * D], out[NQH * D], lse[NQH];
    double sum[4] = {0};
    for (size_t i = 0; i < nq + wm.n_q; i++) { /* the first n_q: warm-up */
        if (i == wm.n_q)
            memset(sum, 0, sizeof sum);
        query_vec(i % wm.n_q, q);
        msadb_query mq;
        msadb_query_stats qs;
        query_init(&mq, q, top_k);
        mq.stats = &qs;
        if ((rc = msadb_attend(s, &mq, out, lse, NULL, 0, NULL)))
            die("attend", rc);
        sum[0] += qs.scan_ms / nq;
        sum[1] += qs.select_ms / nq;
        sum[2] += qs.read_ms / nq;
        sum[3] += qs.attend_ms / nq;
    }
    printf("%-24s %9llu tokens: scan %.3f ms, select %.3f, read %.3f, attend %.3f (means)\n", path + strlen(path) -
           (strlen(path) > 20 ? 20 : strlen(path)), (unsigned long long)si.n_tokens, sum[0], sum[1], sum[2], sum[3]);
    msadb_snapshot_end(s);
    msadb_close(st);
}

/* One store and 4 shards in this process, on rank 0 only. */
static void baselines(const char *dir, size_t nq, uint32_t top_k, timing *one_t, timing *shards_t,
                      timing *global_t)
{
    char one[4096], four[4096];
    snprintf(one, sizeof one, "%s/one", dir);
    snprintf(four, sizeof four, "%s/four", dir);
    msadb_options o;
    msadb_options_init(&o);
    o.read_only = 1;
    msadb_store *st;
    msadb_shards *sh;
    msadb_snapshot *s1;
    msadb_shards_snapshot *s4;
    int rc;
    if ((rc = msadb_open(one, NULL, &o, &st)) || (rc = msadb_snapshot_begin(st, &s1)))
        die(one, rc);
    if ((rc = msadb_shards_open(four, NULL, &o, &sh)) || (rc = msadb_shards_snapshot_begin(sh, &s4)))
        die(four, rc);
    float q[NQH * D], out[NQH * D], lse[NQH];
    double *ms = malloc(nq * sizeof *ms);
    for (int which = 0; which < 3; which++) {
        double t0 = 0;
        /* a first pass over the queries, untimed, warms the page cache
         * alike for every method */
        for (size_t i = 0; i < nq + wm.n_q; i++) {
            if (i == wm.n_q)
                t0 = machine_now_s();
            query_vec(i % wm.n_q, q);
            msadb_query mq;
            query_init(&mq, q, top_k);
            double a = machine_now_s();
            rc = which == 2 ? msadb_shards_attend_global(s4, &mq, out, lse, NULL, 0, NULL)
                 : which  ? msadb_shards_attend(s4, &mq, out, lse, NULL, 0, NULL)
                          : msadb_attend(s1, &mq, out, lse, NULL, 0, NULL);
            if (rc)
                die("attend", rc);
            if (i >= wm.n_q)
                ms[i - wm.n_q] = (machine_now_s() - a) * 1e3;
        }
        *(which == 2 ? global_t : which ? shards_t : one_t) = summarize(ms, nq, machine_now_s() - t0);
    }
    free(ms);
    msadb_snapshot_end(s1);
    msadb_shards_snapshot_end(s4);
    msadb_close(st);
    msadb_shards_close(sh);
}

static void run(const char *dir, size_t nq, uint32_t top_k)
{
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    model(1000); /* the queries only: they do not depend on the memory size */
    timing one_t = {0}, sh_t = {0}, gl_t = {0};
    if (rank == 0) {
        char one[4096], shard0[4096];
        snprintf(one, sizeof one, "%s/one", dir);
        snprintf(shard0, sizeof shard0, "%s/four/shard-0", dir);
        breakdown(one, nq, top_k);
        breakdown(shard0, nq, top_k);
        baselines(dir, nq, top_k, &one_t, &sh_t, &gl_t);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    char four[4096];
    snprintf(four, sizeof four, "%s/four", dir);
    msadb_options o;
    msadb_options_init(&o);
    o.read_only = 1;
    char cpu[128];
    machine_cpu_model(cpu, sizeof cpu);
    if (rank == 0) {
        printf("machine: %s, %ld cores online, load %.2f; %d ranks on it\n", cpu, sysconf(_SC_NPROCESSORS_ONLN),
               machine_load(), size);
        printf("%-34s %9s %7s %9s %9s %11s %12s\n", "", "p50 ms", "vs one", "mean ms", "q/s", "local ms",
               "bytes/query");
        printf("%-34s %9.3f %7.2f %9.3f %9.1f %11s %12s\n", "one store (1 process)", one_t.p50, 1.0, one_t.mean,
               one_t.qps, "", "");
        printf("%-34s %9.3f %7.2f %9.3f %9.1f %11s %12s\n", "4 shards, 1 process (threads)", sh_t.p50,
               sh_t.p50 / one_t.p50, sh_t.mean, sh_t.qps, "", "");
        printf("%-34s %9.3f %7.2f %9.3f %9.1f %11s %12s\n", "4 shards, 1 process, global top-k", gl_t.p50,
               gl_t.p50 / one_t.p50, gl_t.mean, gl_t.qps, "", "");
    }
    for (int red = 0; red < 2; red++) {
        msadb_mpi_options mo;
        msadb_mpi_options_init(&mo);
        mo.reduce = red ? MSADB_MPI_REDUCE_GATHER : MSADB_MPI_REDUCE_OP;
        msadb_mpi *m = NULL;
        int rc = msadb_mpi_open(MPI_COMM_WORLD, four, NULL, &o, &mo, &m);
        if (rc) {
            fprintf(stderr, "bench_shard: %s\n", msadb_mpi_error(m));
            exit(1);
        }
        float q[NQH * D], out[NQH * D], lse[NQH];
        double *ms = malloc(nq * sizeof *ms), local = 0;
        uint64_t bytes = 0;
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = 0;
        for (size_t i = 0; i < nq + wm.n_q; i++) { /* the first n_q: warm-up */
            if (i == wm.n_q) {
                t0 = machine_now_s();
                local = 0;
            }
            query_vec(i % wm.n_q, q);
            msadb_query mq;
            msadb_query_stats st;
            query_init(&mq, q, top_k);
            mq.stats = &st;
            double a = machine_now_s();
            if ((rc = msadb_mpi_attend(m, &mq, out, lse, NULL, 0, NULL, &bytes))) {
                fprintf(stderr, "bench_shard: %s\n", msadb_mpi_error(m));
                exit(1);
            }
            if (i >= wm.n_q)
                ms[i - wm.n_q] = (machine_now_s() - a) * 1e3;
            local += (st.scan_ms + st.select_ms + st.read_ms + st.attend_ms) / nq;
        }
        timing t = summarize(ms, nq, machine_now_s() - t0);
        if (rank == 0) {
            char label[64];
            snprintf(label, sizeof label, "4 shards, %d rank%s, %s", size, size == 1 ? "" : "s",
                     red ? "gather" : "MPI_Op reduce");
            printf("%-34s %9.3f %7.2f %9.3f %9.1f %11.3f %12llu\n", label, t.p50, t.p50 / one_t.p50, t.mean,
                   t.qps, local, (unsigned long long)bytes);
        }
        free(ms);
        msadb_mpi_close(m);
    }
    if (rank == 0)
        printf("(vs one: p50 over one store's p50, same run; local ms: the slowest rank's scan + select + "
               "read + attend; bytes/query: what one non-root rank exchanges)\n");
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_shard DIR build [TOKENS] | mpirun -np P bench_shard DIR run [QUERIES] [TOP_K]\n");
        return 2;
    }
    if (strcmp(argv[2], "build") == 0) {
        build(argv[1], argc > 3 ? strtoull(argv[3], NULL, 10) : 200000);
        return 0;
    }
    MPI_Init(&argc, &argv);
    run(argv[1], argc > 3 ? strtoul(argv[3], NULL, 10) : 200, argc > 4 ? (uint32_t)strtoul(argv[4], NULL, 10) : 16);
    wl_free(&wm);
    MPI_Finalize();
    return 0;
}
