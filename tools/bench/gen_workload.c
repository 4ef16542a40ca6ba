/* gen_workload.c -- writes the synthetic memory workload of workload.h into
 * a new store through the public API (msadb_create, batches of documents),
 * plus a sidecar file DIR/workload.bin with the queries and needles that
 * bench_query reads.
 *
 * The store has one memory plane (2 layers, memory layer 1, one kv head)
 * read by G q heads, every summary kind, and the chosen storage dtype; with
 * --kv-heads H and --layers L it has L memory layers (of 2L layers) of H kv
 * heads, G q heads each, every plane a channel permutation of plane 0
 * (wl_plane_perm).  Needles live in every plane, or with --needle-plane one
 * in one plane each (wl_needle_plane).  --summaries reps keeps only the
 * representatives (the engine's default routing; smaller stores).
 *
 * Usage: gen_workload [--tokens N] [--seed S] [--dtype f16|int8|q4|f32|bf16]
 *                     [--margin NATS] [--needle rotate|add] [--queries N]
 *                     [--plain N] [--block B] [--dim D] [--heads G]
 *                     [--delims RATE] [--kv-heads H] [--layers L]
 *                     [--needle-plane all|one] [--summaries all|reps]
 *                     [--map-gb N] DIR
 * Exit status: 0 success, 1 error, 2 usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "msadb.h"
#include "workload.h"

static int tty;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int progress_cal(size_t done, size_t total)
{
    if (tty)
        fprintf(stderr, "\rcalibrating: %zu/%zu documents", done, total);
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: gen_workload [--tokens N] [--seed S] [--dtype f16|int8|q4|f32|bf16] [--margin NATS]\n"
                    "                    [--needle rotate|add] [--queries N] [--plain N] [--block B] [--dim D]\n"
                    "                    [--heads G] [--delims RATE] [--kv-heads H] [--layers L]\n"
                    "                    [--needle-plane all|one] [--summaries all|reps] [--map-gb N] DIR\n");
    exit(2);
}

/* Parses "10M", "1.5m", "250k" or a plain number. */
static uint64_t parse_count(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0)
        usage();
    if (*end == 'k' || *end == 'K')
        v *= 1e3;
    else if (*end == 'm' || *end == 'M')
        v *= 1e6;
    else if (*end == 'g' || *end == 'G')
        v *= 1e9;
    else if (*end)
        usage();
    return (uint64_t)v;
}

/* Creates the store and writes every document; doc_ids gets their ids. */
static int write_store(wl_model *m, const char *dir, int dtype, uint32_t summaries, uint64_t map_gb,
                       uint64_t *doc_ids)
{
    const wl_config *c = &m->c;
    const uint32_t np = c->n_kv * c->n_layers, d = c->d;
    msadb_signature sig;
    int rc = msadb_signature_init(&sig, 2 * c->n_layers, c->n_kv, c->n_kv * c->G, d);
    if (rc)
        return rc;
    sig.block_size = c->block;
    sig.dtype = (uint32_t)dtype;
    sig.summary_kinds = summaries;
    msadb_options opt;
    msadb_options_init(&opt);
    opt.no_sync = 1;
    opt.map_size = map_gb << 30;
    msadb_store *st;
    if ((rc = msadb_create(dir, &sig, &opt, &st)))
        return rc;
    size_t plane_f = (size_t)WL_MAX_DOC * d;
    float *K = malloc(sizeof(float) * plane_f * np), *V = malloc(sizeof(float) * plane_f * np);
    float *Kb = malloc(sizeof(float) * plane_f), *Kp = malloc(sizeof(float) * plane_f);
    uint32_t *perm = malloc(sizeof(uint32_t) * d * np);
    if (!K || !V || !Kb || !Kp || !perm) {
        free(K), free(V), free(Kb), free(Kp), free(perm);
        msadb_close(st);
        return MSADB_ENOMEM;
    }
    for (uint32_t p = 0; p < np; p++)
        wl_plane_perm(d, p, perm + (size_t)p * d);
    msadb_batch *b = NULL;
    size_t first = 0, in_batch = 0;
    double t0 = now_s();
    for (size_t di = 0; di < m->n_docs && !rc; di++) {
        if (!b && (rc = msadb_batch_begin(st, &b)))
            break;
        uint32_t L = m->docs[di].len;
        /* plane 0's keys and values at the front, the other planes after:
         * [plane][L][d] */
        wl_doc_kv(m, di, Kb, V);
        if (!c->needle_one)
            wl_plant(m, di, Kb);
        for (uint32_t p = np; p-- > 0;) {
            const float *src = Kb;
            if (c->needle_one) {
                memcpy(Kp, Kb, sizeof(float) * L * d);
                wl_plant_plane(m, di, Kp, (int)p);
                src = Kp;
            }
            wl_permute(perm + (size_t)p * d, src, K + (size_t)p * L * d, L, d);
            if (p > 0)
                wl_permute(perm + (size_t)p * d, V, V + (size_t)p * L * d, L, d);
        }
        char title[32];
        snprintf(title, sizeof title, "doc %zu", di);
        msadb_doc doc = {0};
        doc.title = title;
        doc.n_tokens = m->docs[di].len;
        doc.kv_dtype = MSADB_DTYPE_F32;
        doc.keys = K;
        doc.values = V;
        if ((rc = msadb_batch_add(b, &doc)))
            break;
        in_batch += doc.n_tokens;
        if (in_batch * np >= 524288 || di + 1 == m->n_docs) { /* bounded batch memory */
            rc = msadb_batch_commit(b, doc_ids + first);
            b = NULL;
            first = di + 1;
            in_batch = 0;
            if (tty) {
                double el = now_s() - t0, done = (double)(m->docs[di].tok0 + m->docs[di].len);
                fprintf(stderr, "\rwriting: %.1fM tokens, %.0fK tokens/s   ", done / 1e6, done / el / 1e3);
            }
        }
    }
    msadb_batch_abort(b);
    if (tty)
        fprintf(stderr, "\n");
    free(K);
    free(V);
    free(Kb);
    free(Kp);
    free(perm);
    msadb_close(st);
    return rc;
}

int main(int argc, char **argv)
{
    wl_config c;
    wl_config_default(&c);
    int dtype = MSADB_DTYPE_F16;
    uint32_t summaries = MSADB_SUMMARY_ALL; /* the bench compares every kind */
    uint64_t map_gb = 1;
    const char *dir = NULL;
    tty = isatty(2);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--tokens") && v)
            c.n_tokens = parse_count(argv[++i]);
        else if (!strcmp(a, "--seed") && v)
            c.seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--dtype") && v) {
            dtype = msadb_dtype_parse(argv[++i]);
            if (dtype < 0)
                usage();
        } else if (!strcmp(a, "--margin") && v)
            c.margin = strtof(argv[++i], NULL);
        else if (!strcmp(a, "--needle") && v) {
            i++;
            if (!strcmp(argv[i], "rotate"))
                c.needle_rotate = 1;
            else if (!strcmp(argv[i], "add"))
                c.needle_rotate = 0;
            else
                usage();
        } else if (!strcmp(a, "--queries") && v)
            c.n_per_size = (uint32_t)parse_count(argv[++i]);
        else if (!strcmp(a, "--plain") && v)
            c.n_plain = (uint32_t)parse_count(argv[++i]);
        else if (!strcmp(a, "--delims") && v)
            c.delim_rate = strtof(argv[++i], NULL);
        else if (!strcmp(a, "--block") && v)
            c.block = (uint32_t)parse_count(argv[++i]);
        else if (!strcmp(a, "--dim") && v)
            c.d = (uint32_t)parse_count(argv[++i]);
        else if (!strcmp(a, "--heads") && v)
            c.G = (uint32_t)parse_count(argv[++i]);
        else if (!strcmp(a, "--kv-heads") && v)
            c.n_kv = (uint32_t)parse_count(argv[++i]);
        else if (!strcmp(a, "--layers") && v)
            c.n_layers = (uint32_t)parse_count(argv[++i]);
        else if (!strcmp(a, "--map-gb") && v)
            map_gb = parse_count(argv[++i]);
        else if (!strcmp(a, "--needle-plane") && v) {
            i++;
            if (!strcmp(argv[i], "all"))
                c.needle_one = 0;
            else if (!strcmp(argv[i], "one"))
                c.needle_one = 1;
            else
                usage();
        } else if (!strcmp(a, "--summaries") && v) {
            i++;
            if (!strcmp(argv[i], "all"))
                summaries = MSADB_SUMMARY_ALL;
            else if (!strcmp(argv[i], "reps"))
                summaries = MSADB_SUMMARY_REPS;
            else
                usage();
        } else if (a[0] == '-' || dir)
            usage();
        else
            dir = a;
    }
    if (!dir || c.n_tokens < 1024 || c.d < 2 || c.d > 1024 || c.d % 2 || c.G < 1 || c.G > WL_MAX_G || c.block < 16 ||
        c.block > 4096 || c.n_kv < 1 || c.n_kv > 64 || c.n_layers < 1 || c.n_layers > 64 || map_gb < 1 || map_gb > 4096)
        usage();
    wl_model m;
    double t0 = now_s();
    if (wl_init(&m, &c)) {
        fprintf(stderr, "gen_workload: out of memory\n");
        return 1;
    }
    if (wl_calibrate(&m, progress_cal)) {
        fprintf(stderr, "gen_workload: out of memory\n");
        return 1;
    }
    if (tty)
        fprintf(stderr, "\n");
    double t1 = now_s();
    uint64_t *ids = malloc(8 * m.n_docs);
    int rc = ids ? write_store(&m, dir, dtype, summaries, map_gb, ids) : MSADB_ENOMEM;
    if (rc) {
        fprintf(stderr, "gen_workload: %s\n", msadb_strerror(rc));
        return 1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/workload.bin", dir);
    if (wl_save(&m, path, ids)) {
        fprintf(stderr, "gen_workload: cannot write %s\n", path);
        return 1;
    }
    printf("{\"tokens\": %llu, \"documents\": %zu, \"queries\": %zu, \"dtype\": \"%s\", \"margin\": %.2f, "
           "\"needle\": \"%s\", \"rotate_capped\": %d, \"calibrate_s\": %.1f, \"write_s\": %.1f}\n",
           (unsigned long long)c.n_tokens, m.n_docs, m.n_q, msadb_dtype_name(dtype), c.margin,
           c.needle_rotate ? "rotate" : "add", m.n_rotate_capped, t1 - t0, now_s() - t1);
    free(ids);
    wl_free(&m);
    return 0;
}
