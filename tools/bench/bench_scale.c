/* bench_scale.c -- the query engine on stores too large for bench_query's
 * ground truth (which holds every key in RAM), and on stores of many planes.
 * Stores are written by gen_workload; the needle of each query is known
 * from its sidecar (DIR/workload.bin), so hits need no dense pass.
 *
 * --e2e DIR: every query through msadb_attend() on the first memory layer,
 *   with the exhaustive scan (MSADB_ROUTE_SCAN, the reference) and the
 *   routing index (the default), alternately first, one snapshot: p50/p90
 *   latency, hit rate per needle width (the needle's block selected for kv
 *   head 0), and mass recall: the needle head's softmax mass inside the
 *   selected tokens, exp(LSE over them - LSE over the memory), where the
 *   memory's LSE is the workload's calibrated one (generated keys, before
 *   storage) plus the needle's own terms.
 * --open DIR [--cold]: msadb_open, a snapshot and the first query, timed;
 *   then a second query.  --cold first syncs and drops the page cache
 *   (needs root).
 * --planes DIR: a store of L memory layers x H kv heads (gen_workload
 *   --layers L --kv-heads H, needles in one plane each with --needle-plane
 *   one): one question's routing of every plane (msadb_retrieve on each
 *   layer, or once with sharing across layers) and its whole memory
 *   attention, per sharing mode, with the hit rate of the plane that holds
 *   the needle.
 *
 * Usage: bench_scale [--limit N] [--k K] --e2e DIR
 *        bench_scale --open DIR [--cold]
 *        bench_scale [--limit N] [--k K] --planes DIR
 * Output: one JSON object per line.  Exit status: 0 success, 1 error, 2 usage. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "msadb.h"
#include "workload.h"
#include "machine.h"

static void die(const char *what, int rc)
{
    machine_die("bench_scale", what, rc ? msadb_strerror(rc) : NULL);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory", MSADB_ENOMEM);
    return p;
}

static double now_ms(void) { return machine_now_s() * 1e3; }

/* CPU time of the whole process (the engine's scan threads included): on a
 * machine shared with other jobs, wall time also counts the waits for a
 * core, CPU time does not. */
static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* The p-quantile of v[0,n) (v unchanged). */
static double pct(const double *v, size_t n, double p)
{
    double *c = xmalloc((n ? n : 1) * sizeof *c);
    memcpy(c, v, n * sizeof *c);
    double r = machine_percentile(c, n, p);
    free(c);
    return r;
}

/* A workload store: the model with its queries, the store and its shape. */
typedef struct bstore {
    wl_model m;
    uint64_t *ids; /* document index -> id */
    msadb_store *st;
    const msadb_signature *sig;
    uint32_t nkv, G, d, np;
    uint32_t *perm; /* [np][d] (wl_plane_perm) */
} bstore;

static void bstore_open(bstore *b, const char *dir, double *open_ms)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/workload.bin", dir);
    if (wl_load(&b->m, path, &b->ids))
        die("cannot read the workload sidecar (gen_workload writes it)", MSADB_EINVAL);
    msadb_options opt;
    msadb_options_init(&opt);
    opt.read_only = 1;
    double t0 = now_ms();
    int rc = msadb_open(dir, NULL, &opt, &b->st);
    if (open_ms)
        *open_ms = now_ms() - t0;
    if (rc)
        die("msadb_open", rc);
    b->sig = msadb_store_signature(b->st);
    b->nkv = b->sig->n_kv_heads;
    b->G = b->sig->n_q_heads / b->nkv;
    b->d = b->sig->head_dim;
    b->np = msadb_signature_planes(b->sig);
    if (b->G != b->m.c.G || b->d != b->m.c.d || b->nkv != b->m.c.n_kv || b->np != b->nkv * b->m.c.n_layers)
        die("the store does not match its workload sidecar", MSADB_EINVAL);
    b->perm = xmalloc(sizeof(uint32_t) * b->np * b->d);
    for (uint32_t p = 0; p < b->np; p++)
        wl_plane_perm(b->d, p, b->perm + (size_t)p * b->d);
}

static void bstore_close(bstore *b)
{
    msadb_close(b->st);
    wl_free(&b->m);
    free(b->ids);
    free(b->perm);
}

/* The q heads of memory layer li for query qi: kv head h's group reads
 * plane li*nkv + h, so its rows are the query permuted like that plane. */
static void layer_q(const bstore *b, size_t qi, uint32_t li, float *Q)
{
    for (uint32_t h = 0; h < b->nkv; h++) {
        uint32_t p = li * b->nkv + h;
        wl_permute(b->perm + (size_t)p * b->d, b->m.qs[qi].q, Q + (size_t)h * b->G * b->d, b->G, b->d);
    }
}

/* Whether hits name query qi's needle block for kv head h. */
static int needle_hit(const bstore *b, size_t qi, const msadb_hit *h, size_t n, uint32_t kv)
{
    const wl_query *q = &b->m.qs[qi];
    uint64_t doc = b->ids[q->doc];
    for (size_t i = 0; i < n; i++)
        if (h[i].kv_head == kv && h[i].doc_id == doc && h[i].token_start <= q->tok && q->tok < h[i].token_end)
            return 1;
    return 0;
}

static int width_index(uint32_t len) { return len == 1 ? 0 : len == 4 ? 1 : len == 16 ? 2 : -1; }

/* ------------------------------------------------------------------------ */
/* --e2e                                                                    */
/* ------------------------------------------------------------------------ */

static int e2e(const char *dir, size_t limit, uint32_t k)
{
    bstore b;
    bstore_open(&b, dir, NULL);
    size_t nq = b.m.n_q < limit ? b.m.n_q : limit;
    msadb_snapshot *snap;
    int rc = msadb_snapshot_begin(b.st, &snap);
    if (rc)
        die("msadb_snapshot_begin", rc);
    const uint32_t nqh = b.sig->n_q_heads, d = b.d;
    float *Q = xmalloc(sizeof(float) * nqh * d), *O = xmalloc(sizeof(float) * nqh * d), *L = xmalloc(sizeof(float) * nqh);
    size_t cap = (size_t)k * b.nkv;
    msadb_hit *H = xmalloc(sizeof(msadb_hit) * cap);
    const char *names[2] = {"scan", "index"};
    const int routes[2] = {MSADB_ROUTE_SCAN, MSADB_ROUTE_DEFAULT};
    double *lat[2], *scan_ms[2], *cpu[2];
    double hits[2][3] = {{0}}, cnt[3] = {0}, mass[2] = {0}, nmass = 0, bytes[2] = {0}, coarse[2] = {0};
    for (int m = 0; m < 2; m++) {
        lat[m] = xmalloc(sizeof(double) * nq);
        scan_ms[m] = xmalloc(sizeof(double) * nq);
        cpu[m] = xmalloc(sizeof(double) * nq);
    }
    double load0 = machine_load();
    for (size_t qi = 0; qi < nq; qi++) {
        const wl_query *wq = &b.m.qs[qi];
        layer_q(&b, qi, 0, Q);
        int w = width_index(wq->needle_len);
        if (w >= 0)
            cnt[w]++;
        for (int r = 0; r < 2; r++) {
            int m = (int)((qi + (size_t)r) % 2); /* alternately first */
            msadb_query qq;
            msadb_query_init(&qq);
            qq.layer = b.sig->memory_layers[0];
            qq.q = Q;
            qq.n_query = 1;
            qq.top_k = k;
            qq.route = routes[m];
            msadb_query_stats stats;
            qq.stats = &stats;
            size_t n = 0;
            double t0 = now_ms(), c0 = cpu_ms();
            if ((rc = msadb_attend(snap, &qq, O, L, H, cap, &n)))
                die("msadb_attend", rc);
            lat[m][qi] = now_ms() - t0;
            cpu[m][qi] = cpu_ms() - c0;
            scan_ms[m][qi] = stats.scan_ms + stats.select_ms;
            bytes[m] += (double)stats.blocks_scanned * MSADB_K_REPS * (d + 4.0) +
                        (double)stats.coarse_scanned * 8 * (d + 4.0);
            coarse[m] += (double)stats.coarse_scanned;
            if (w < 0)
                continue;
            hits[m][w] += needle_hit(&b, qi, H, n < cap ? n : cap, 0);
            /* the needle head's mass inside the selection (kv head 0) */
            double total = wq->lse_rest + log1p(exp((double)wq->target + log((double)wq->needle_len) - wq->lse_rest));
            if (wq->lse_rest + 30 < wq->target) /* the needle alone */
                total = wq->target + log((double)wq->needle_len);
            mass[m] += exp((double)L[wq->head] - total);
        }
        if (width_index(wq->needle_len) >= 0)
            nmass++;
    }
    for (int m = 0; m < 2; m++) {
        printf("{\"mode\": \"e2e\", ");
        machine_json();
        printf("\"route\": \"%s\", \"tokens\": %llu, \"d\": %u, \"kv_heads\": %u, \"q_heads\": %u, "
               "\"dtype\": \"%s\", \"top_k\": %u, \"queries\": %zu, \"p50_ms\": %.2f, \"p90_ms\": %.2f, "
               "\"cpu_p50_ms\": %.2f, \"routing_p50_ms\": %.2f, \"hit1\": %.3f, \"hit4\": %.3f, \"hit16\": %.3f, \"mass_recall\": %.4f, "
               "\"mb_scored\": %.1f, \"coarse_entries\": %.0f, \"speedup_p50\": %.2f, \"threads\": %s, "
               "\"loadavg_start\": %.2f, \"loadavg_end\": %.2f}\n",
               names[m], (unsigned long long)b.m.c.n_tokens, d, b.nkv, nqh, msadb_dtype_name((int)b.sig->dtype), k,
               nq, pct(lat[m], nq, 0.5), pct(lat[m], nq, 0.9), pct(cpu[m], nq, 0.5), pct(scan_ms[m], nq, 0.5),
               hits[m][0] / cnt[0],
               hits[m][1] / cnt[1], hits[m][2] / cnt[2], nmass ? mass[m] / nmass : NAN, bytes[m] / nq / 1e6,
               coarse[m] / nq, pct(lat[0], nq, 0.5) / pct(lat[m], nq, 0.5),
               getenv("MSADB_SCAN_THREADS") ? getenv("MSADB_SCAN_THREADS") : "\"online CPUs\"", load0,
               machine_load());
    }
    msadb_snapshot_end(snap);
    for (int m = 0; m < 2; m++) {
        free(lat[m]);
        free(scan_ms[m]);
        free(cpu[m]);
    }
    free(Q);
    free(O);
    free(L);
    free(H);
    bstore_close(&b);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* --open                                                                   */
/* ------------------------------------------------------------------------ */

static int open_first(const char *dir, int cold)
{
    if (cold) {
        sync();
        FILE *f = fopen("/proc/sys/vm/drop_caches", "w");
        if (!f || fputs("3\n", f) < 0 || fclose(f) != 0)
            die("cannot drop the page cache (--cold needs root)", MSADB_EINVAL);
    }
    double load0 = machine_load();
    bstore b;
    double open_ms = 0;
    bstore_open(&b, dir, &open_ms);
    const uint32_t nqh = b.sig->n_q_heads, d = b.d;
    float *Q = xmalloc(sizeof(float) * nqh * d), *O = xmalloc(sizeof(float) * nqh * d), *L = xmalloc(sizeof(float) * nqh);
    double t0 = now_ms(), t_first = 0, t_second = 0, t_snap = 0;
    msadb_snapshot *snap;
    int rc = msadb_snapshot_begin(b.st, &snap);
    if (rc)
        die("msadb_snapshot_begin", rc);
    t_snap = now_ms() - t0;
    for (size_t qi = 0; qi < 2 && qi < b.m.n_q; qi++) {
        layer_q(&b, qi, 0, Q);
        msadb_query qq;
        msadb_query_init(&qq);
        qq.layer = b.sig->memory_layers[0];
        qq.q = Q;
        qq.n_query = 1;
        double t1 = now_ms();
        if ((rc = msadb_attend(snap, &qq, O, L, NULL, 0, NULL)))
            die("msadb_attend", rc);
        *(qi ? &t_second : &t_first) = now_ms() - t1;
    }
    msadb_snapshot_end(snap);
    printf("{\"mode\": \"open\", ");
    machine_json();
    printf("\"cache\": \"%s\", \"tokens\": %llu, \"open_ms\": %.1f, \"snapshot_ms\": %.2f, "
           "\"first_query_ms\": %.1f, \"second_query_ms\": %.2f, \"open_plus_first_ms\": %.1f, "
           "\"loadavg_start\": %.2f, \"loadavg_end\": %.2f}\n",
           cold ? "cold" : "warm", (unsigned long long)b.m.c.n_tokens, open_ms, t_snap, t_first, t_second,
           open_ms + t_snap + t_first, load0, machine_load());
    free(Q);
    free(O);
    free(L);
    bstore_close(&b);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* --planes                                                                 */
/* ------------------------------------------------------------------------ */

/* Sharing modes measured: per layer (share, route head, routing), or once
 * for all layers on memory layer 0 (cross). */
typedef struct pmode {
    const char *name;
    int share, route, select, cross;
    uint32_t top_k_docs; /* document selection: documents */
} pmode;

static const pmode PMODES[] = {
    {"per-plane scan", MSADB_SHARE_NONE, MSADB_ROUTE_SCAN, MSADB_SELECT_BLOCKS, 0, 0},
    {"per-plane index (default)", MSADB_SHARE_NONE, MSADB_ROUTE_DEFAULT, MSADB_SELECT_BLOCKS, 0, 0},
    {"heads max, per layer", MSADB_SHARE_HEADS, MSADB_ROUTE_DEFAULT, MSADB_SELECT_BLOCKS, 0, 0},
    {"route head 0, per layer", MSADB_SHARE_ROUTE_HEAD, MSADB_ROUTE_DEFAULT, MSADB_SELECT_BLOCKS, 0, 0},
    {"heads max, layer 0 for all", MSADB_SHARE_HEADS, MSADB_ROUTE_DEFAULT, MSADB_SELECT_BLOCKS, 1, 0},
    {"route head 0, layer 0 for all", MSADB_SHARE_ROUTE_HEAD, MSADB_ROUTE_DEFAULT, MSADB_SELECT_BLOCKS, 1, 0},
    {"documents, heads max, layer 0 for all", MSADB_SHARE_HEADS, MSADB_ROUTE_SCAN, MSADB_SELECT_DOCUMENTS, 1, 2},
};
#define N_PMODES (sizeof PMODES / sizeof PMODES[0])

static int planes(const char *dir, size_t limit, uint32_t k)
{
    bstore b;
    bstore_open(&b, dir, NULL);
    const uint32_t nl = b.m.c.n_layers, nkv = b.nkv, nqh = b.sig->n_q_heads, d = b.d;
    size_t nq = b.m.n_q < limit ? b.m.n_q : limit;
    msadb_snapshot *snap;
    int rc = msadb_snapshot_begin(b.st, &snap);
    if (rc)
        die("msadb_snapshot_begin", rc);
    float *Q = xmalloc(sizeof(float) * nl * nqh * d), *O = xmalloc(sizeof(float) * nqh * d);
    float *L = xmalloc(sizeof(float) * nqh);
    size_t cap = (size_t)64 * 8192 / b.m.c.block * nkv; /* documents: up to 64 of at most 8192 tokens */
    msadb_hit *H = xmalloc(sizeof(msadb_hit) * cap * nl);
    size_t *nh = xmalloc(sizeof(size_t) * nl);
    double *route_ms[N_PMODES], *route_cpu[N_PMODES], *total_ms[N_PMODES], hit[N_PMODES] = {0}, nneedle = 0, load0 = machine_load();
    double planes_routed[N_PMODES] = {0}, scanned[N_PMODES] = {0};
    for (size_t m = 0; m < N_PMODES; m++) {
        route_ms[m] = xmalloc(sizeof(double) * nq);
        route_cpu[m] = xmalloc(sizeof(double) * nq);
        total_ms[m] = xmalloc(sizeof(double) * nq);
    }
    wl_rng shuffle;
    wl_rng_seed(&shuffle, 12345);
    for (size_t qi = 0; qi < nq; qi++) {
        const wl_query *wq = &b.m.qs[qi];
        for (uint32_t li = 0; li < nl; li++)
            layer_q(&b, qi, li, Q + (size_t)li * nqh * d);
        uint32_t np_needle = b.m.c.needle_one ? wl_needle_plane(&b.m, qi) : 0;
        uint32_t nl_needle = np_needle / nkv, nkv_needle = np_needle % nkv;
        if (wq->needle_len)
            nneedle++;
        /* the modes in a fresh order per question: the one after the
         * exhaustive scan finds the caches flushed */
        size_t order[N_PMODES];
        for (size_t r = 0; r < N_PMODES; r++)
            order[r] = r;
        for (size_t r = N_PMODES - 1; r > 0; r--) {
            size_t j = (size_t)(wl_next(&shuffle) % (r + 1)), t = order[r];
            order[r] = order[j];
            order[j] = t;
        }
        for (size_t r = 0; r < N_PMODES; r++) {
            size_t mi = order[r];
            const pmode *pm = &PMODES[mi];
            msadb_query qq;
            msadb_query_init(&qq);
            qq.n_query = 1;
            qq.top_k = pm->select == MSADB_SELECT_DOCUMENTS ? pm->top_k_docs : k;
            qq.share = pm->share;
            qq.route = pm->route;
            qq.select = pm->select;
            msadb_query_stats stats;
            qq.stats = &stats;
            /* routing alone: every layer's selection, or layer 0's once */
            double t0 = now_ms(), c0 = cpu_ms();
            for (uint32_t li = 0; li < (pm->cross ? 1 : nl); li++) {
                qq.layer = b.sig->memory_layers[li];
                qq.q = Q + (size_t)li * nqh * d;
                if ((rc = msadb_retrieve(snap, &qq, H + li * cap, cap, &nh[li])))
                    die("msadb_retrieve", rc);
                if (nh[li] > cap)
                    die("too many hits", MSADB_ELIMIT);
                scanned[mi] += (double)stats.blocks_scanned;
            }
            route_ms[mi][qi] = now_ms() - t0;
            route_cpu[mi][qi] = cpu_ms() - c0;
            planes_routed[mi] = pm->share == MSADB_SHARE_ROUTE_HEAD ? 1 : nkv;
            planes_routed[mi] *= pm->cross ? 1 : nl;
            if (wq->needle_len) {
                uint32_t src = pm->cross ? 0 : nl_needle;
                hit[mi] += needle_hit(&b, qi, H + src * cap, nh[src], nkv_needle);
            }
            /* the question's whole memory attention: routing as above, then
             * every layer attends (the shared selection with
             * msadb_attend_blocks across layers) */
            t0 = now_ms();
            for (uint32_t li = 0; li < nl; li++) {
                qq.layer = b.sig->memory_layers[li];
                qq.q = Q + (size_t)li * nqh * d;
                if (pm->cross) {
                    if (li == 0 && (rc = msadb_retrieve(snap, &qq, H, cap, &nh[0])))
                        die("msadb_retrieve", rc);
                    rc = msadb_attend_blocks(snap, &qq, H, nh[0], O, L);
                } else {
                    rc = msadb_attend(snap, &qq, O, L, NULL, 0, NULL);
                }
                if (rc)
                    die("attend", rc);
            }
            total_ms[mi][qi] = now_ms() - t0;
        }
    }
    double base = pct(route_ms[1], nq, 0.5), base_cpu = pct(route_cpu[1], nq, 0.5);
    for (size_t m = 0; m < N_PMODES; m++) {
        printf("{\"mode\": \"planes\", ");
        machine_json();
        printf("\"share\": \"%s\", \"tokens\": %llu, \"layers\": %u, \"kv_heads\": %u, "
               "\"d\": %u, \"needle_planes\": \"%s\", \"queries\": %zu, \"planes_routed\": %.0f, "
               "\"route_p50_ms\": %.2f, \"route_p90_ms\": %.2f, \"route_vs_per_plane_index\": %.3f, "
               "\"route_cpu_p50_ms\": %.2f, \"route_cpu_vs_per_plane_index\": %.3f, "
               "\"attend_p50_ms\": %.2f, \"blocks_scored\": %.0f, \"needle_hit\": %.3f, \"loadavg_start\": %.2f, "
               "\"loadavg_end\": %.2f}\n",
               PMODES[m].name, (unsigned long long)b.m.c.n_tokens, nl, nkv, d, b.m.c.needle_one ? "one" : "all", nq,
               planes_routed[m], pct(route_ms[m], nq, 0.5), pct(route_ms[m], nq, 0.9),
               pct(route_ms[m], nq, 0.5) / base, pct(route_cpu[m], nq, 0.5), pct(route_cpu[m], nq, 0.5) / base_cpu,
               pct(total_ms[m], nq, 0.5), scanned[m] / nq,
               nneedle ? hit[m] / nneedle : NAN, load0, machine_load());
    }
    msadb_snapshot_end(snap);
    for (size_t m = 0; m < N_PMODES; m++) {
        free(route_ms[m]);
        free(route_cpu[m]);
        free(total_ms[m]);
    }
    free(Q);
    free(O);
    free(L);
    free(H);
    free(nh);
    bstore_close(&b);
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_scale [--limit N] [--k K] --e2e DIR\n"
                    "       bench_scale --open DIR [--cold]\n"
                    "       bench_scale [--limit N] [--k K] --planes DIR\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *e2e_dir = NULL, *open_dir = NULL, *planes_dir = NULL;
    size_t limit = (size_t)-1;
    uint32_t k = 16;
    int cold = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--e2e") && more)
            e2e_dir = argv[++i];
        else if (!strcmp(a, "--open") && more)
            open_dir = argv[++i];
        else if (!strcmp(a, "--planes") && more)
            planes_dir = argv[++i];
        else if (!strcmp(a, "--cold"))
            cold = 1;
        else if (!strcmp(a, "--limit") && more)
            limit = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--k") && more)
            k = (uint32_t)strtoul(argv[++i], NULL, 10);
        else
            usage();
    }
    if (!!e2e_dir + !!open_dir + !!planes_dir != 1 || k == 0 || k > 4096 || limit == 0)
        usage();
    if (e2e_dir)
        return e2e(e2e_dir, limit, k);
    if (open_dir)
        return open_first(open_dir, cold);
    return planes(planes_dir, limit, k);
}
