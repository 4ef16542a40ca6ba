/* test_mpi.c -- msadb_mpi under mpirun (driven by tests/mpi_run.py).
 *
 *   test_mpi compare DIR   every rank serves its shards of a 4-shard store;
 *                          half of the documents arrive through
 *                          msadb_mpi_ingest; exact mode equals one store
 *                          holding the same documents (both reductions),
 *                          sparse hits equal its selection and find at least
 *                          its needles; stat, doc list, doc fetch, spaces,
 *                          delete, verify across ranks.
 *   test_mpi serve DIR     queries in a loop (deadline 3 s) until a rank is
 *                          killed; a survivor prints its error and exits 3.
 *   test_mpi ingest DIR    ingests batches in a loop until a rank is killed.
 *   test_mpi check DIR     (one process) every shard verifies and every
 *                          listed document is whole.
 * DIR is made by rank 0; every rank writes DIR/pid-RANK. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "msadb.h"
#include "msadb_mpi.h"
#include "msadb_shard.h"
#include "shard_fixture.h"
#include "testutil.h"

enum { NSH = 4, ROWS = SFX_NQH, HCAP = 4096, N_TOKENS = 30000 };

static int rank, size;
static char dir[900];

static msadb_options opts(void)
{
    msadb_options o;
    msadb_options_init(&o);
    o.no_sync = 1;
    return o;
}

static const char *sub(const char *name)
{
    static char buf[4][1024];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 1024, "%s/%s", dir, name);
    return p;
}

/* A failed collective: report like the CLI does and leave at once (no
 * MPI_Finalize: a peer may be dead). */
static void die(msadb_mpi *m, int rc, const char *what)
{
    fprintf(stderr, "test_mpi: %s: %s (%s)\n", what, msadb_mpi_error(m), msadb_strerror(rc));
    fflush(stderr);
    _exit(3);
}

#define MPI_OK(m, expr)                                                                                         \
    do {                                                                                                        \
        int rc__ = (expr);                                                                                      \
        if (rc__)                                                                                               \
            die(m, rc__, #expr);                                                                                \
    } while (0)

static void write_pid(void)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/pid-%d", dir, rank);
    FILE *f = fopen(p, "w");
    CHECK(f);
    fprintf(f, "%ld\n", (long)getpid());
    fclose(f);
}

/* Rank 0 builds the reference store (every document) and the sharded one
 * (the first `first` documents); the others wait. */
static void build(size_t first, uint64_t *ids1, uint64_t *idsn)
{
    if (rank == 0) {
        tu_rmtree(dir);
        CHECK(mkdir(dir, 0775) == 0);
        msadb_signature sig;
        sfx_signature(&sig);
        msadb_options o = opts();
        msadb_store *st;
        CHECK_OK(msadb_create(sub("one"), &sig, &o, &st));
        sfx_fill_store(st, 0, sfx_n_docs(), ids1);
        msadb_close(st);
        msadb_shards *sh;
        CHECK_OK(msadb_shards_create(sub("four"), NSH, &sig, &o, &sh));
        sfx_fill_shards(sh, 0, first, idsn);
        msadb_shards_close(sh);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    write_pid();
}

static msadb_mpi *open_four(int reduce, double timeout)
{
    msadb_mpi_options mo;
    msadb_mpi_options_init(&mo);
    mo.reduce = reduce;
    mo.timeout_s = timeout;
    msadb_options o = opts();
    msadb_mpi *m = NULL;
    int rc = msadb_mpi_open(MPI_COMM_WORLD, sub("four"), NULL, &o, &mo, &m);
    if (rc)
        die(m, rc, "open");
    return m;
}

static void query_init(msadb_query *mq, const float *q)
{
    msadb_query_init(mq);
    mq->layer = SFX_LAYER;
    mq->q = q;
    mq->n_query = 1;
}

static int same_hit_sets(const msadb_hit *a, size_t na, const uint64_t *ida, const msadb_hit *b, size_t nb,
                         const uint64_t *idb)
{
    if (na != nb)
        return 0;
    size_t nd = sfx_n_docs();
    for (size_t i = 0; i < na; i++) {
        size_t da = nd;
        for (size_t k = 0; k < nd; k++)
            if (ida[k] == a[i].doc_id)
                da = k;
        int found = 0;
        for (size_t j = 0; j < nb && !found; j++)
            found = b[j].kv_head == a[i].kv_head && b[j].token_start == a[i].token_start && da < nd &&
                    idb[da] == b[j].doc_id;
        if (!found)
            return 0;
    }
    return 1;
}

static int count_doc(const msadb_doc_info *info, void *ud)
{
    (void)info;
    (*(size_t *)ud)++;
    return 0;
}

typedef struct fetch_ctx {
    size_t n_ok, n_missing;
} fetch_ctx;

static int on_fetch(uint64_t id, int rc, const msadb_doc_info *info, const char *text, const int64_t *spans,
                    void *ud)
{
    fetch_ctx *c = ud;
    (void)spans;
    if (rc == MSADB_ENOTFOUND) {
        c->n_missing++;
        return 0;
    }
    CHECK(rc == 0 && info->id == id && text && strncmp(text, "text of document", 16) == 0);
    c->n_ok++;
    return 0;
}

static int on_space(const msadb_space_info *info, void *ud)
{
    if (strcmp(info->name, "beta") == 0)
        (*(int *)ud)++;
    return 0;
}

static void compare_queries(msadb_mpi *m, msadb_store *st, const uint64_t *ids1, const uint64_t *idsn,
                            uint64_t *bytes_out)
{
    msadb_snapshot *s1 = NULL;
    if (rank == 0)
        CHECK_OK(msadb_snapshot_begin(st, &s1));
    float q[ROWS * SFX_D], o1[ROWS * SFX_D], on[ROWS * SFX_D], oe[ROWS * SFX_D], l1[ROWS], ln[ROWS], le[ROWS];
    static msadb_hit h1[HCAP], hn[HCAP];
    int found1 = 0, foundn = 0;
    for (size_t qi = 0; qi < sfx_n_queries(); qi++) {
        sfx_query_vec(qi, q);
        msadb_query mq;
        query_init(&mq, q);
        mq.exact = 1;
        size_t n1 = 0, nn = 0;
        uint64_t bytes = 0;
        if (rank == 0)
            CHECK_OK(msadb_attend(s1, &mq, oe, le, h1, HCAP, &n1));
        MPI_OK(m, msadb_mpi_attend(m, &mq, on, ln, hn, HCAP, &nn, &bytes));
        *bytes_out = bytes;
        if (rank == 0) {
            double re = sfx_rel_err(on, oe, ROWS, SFX_D), lerr = sfx_lse_err(ln, le, ROWS);
            if (!(re <= 1e-5 && lerr <= 1e-5)) {
                fprintf(stderr, "query %zu: exact rel err %.3g lse err %.3g\n", qi, re, lerr);
                CHECK(0);
            }
            CHECK(n1 == nn);
        }
        mq.exact = 0;
        mq.top_k = 8;
        if (rank == 0)
            CHECK_OK(msadb_attend(s1, &mq, o1, l1, h1, HCAP, &n1));
        MPI_OK(m, msadb_mpi_attend(m, &mq, on, ln, hn, HCAP, &nn, NULL));
        if (rank == 0) {
            CHECK(same_hit_sets(h1, n1, ids1, hn, nn, idsn));
            for (size_t r = 0; r < ROWS; r++) /* mass covered: at least one store's */
                CHECK(ln[r] >= l1[r] - 1e-5f && ln[r] <= le[r] + 1e-5f);
            if (sfx_query_info(qi)->needle_len)
                for (uint32_t kh = 0; kh < SFX_NKV; kh++) {
                    found1 += sfx_hits_needle(h1, n1, qi, ids1, kh);
                    foundn += sfx_hits_needle(hn, nn, qi, idsn, kh);
                }
        }
        /* documents, per token: the selection of one store */
        mq.select = MSADB_SELECT_DOCUMENTS;
        mq.top_k = 2;
        mq.per_token = qi % 2;
        if (rank == 0)
            CHECK_OK(msadb_retrieve(s1, &mq, h1, HCAP, &n1));
        MPI_OK(m, msadb_mpi_attend(m, &mq, on, ln, hn, HCAP, &nn, NULL));
        if (rank == 0)
            CHECK(same_hit_sets(h1, n1, ids1, hn, nn, idsn));
    }
    if (rank == 0) {
        CHECK(found1 > 0 && foundn >= found1);
        printf("needles: one store %d, %d ranks %d\n", found1, size, foundn);
        msadb_snapshot_end(s1);
    }
}

/* Fixture of the comparison cases: the first half of the workload built
 * into the single store and the shards (build), the second half ingested
 * through the ranks; st: the single store (rank 0 only), m: the
 * distributed store; ids1 / idsn: the documents' ids in each. */
typedef struct {
    size_t nd, half;
    uint64_t *ids1, *idsn;
    msadb_store *st;
    msadb_mpi *m;
} compare_fixture;

/* The second half through the ranks, three documents per call (copies:
 * sfx_doc's buffers hold one document). */
static void ingest_second_half(compare_fixture *fx)
{
    enum { PER = 3 };
    msadb_doc docs[PER];
    void *bufs[PER][2] = {{NULL}};
    for (size_t k = fx->half;;) {
        int n = 0;
        if (rank == 0)
            for (; n < PER && k + (size_t)n < fx->nd; n++) {
                sfx_doc(k + (size_t)n, &docs[n]);
                size_t bytes = docs[n].n_tokens * SFX_NKV * SFX_D * sizeof(float);
                for (int j = 0; j < 2; j++) {
                    free(bufs[n][j]);
                    CHECK((bufs[n][j] = malloc(bytes)));
                    memcpy(bufs[n][j], j ? docs[n].values : docs[n].keys, bytes);
                }
                docs[n].keys = bufs[n][0];
                docs[n].values = bufs[n][1];
                docs[n].title = strdup(docs[n].title);
                docs[n].text = strdup(docs[n].text);
            }
        MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
        if (!n)
            break;
        MPI_OK(fx->m,
               msadb_mpi_ingest(fx->m, docs, rank == 0 ? (size_t)n : 0, rank == 0 ? &fx->idsn[k] : NULL));
        for (int j = 0; rank == 0 && j < n; j++)
            free((char *)docs[j].title), free((char *)docs[j].text);
        k += (size_t)n;
    }
    for (int n = 0; n < PER; n++)
        free(bufs[n][0]), free(bufs[n][1]);
}

static void compare_setup(compare_fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    fx->nd = sfx_n_docs();
    fx->half = fx->nd / 2;
    fx->ids1 = calloc(fx->nd, sizeof *fx->ids1);
    fx->idsn = calloc(fx->nd, sizeof *fx->idsn);
    CHECK(fx->ids1 && fx->idsn);
    build(fx->half, fx->ids1, fx->idsn);
    fx->m = open_four(MSADB_MPI_REDUCE_OP, 30);
    CHECK(msadb_mpi_size(fx->m) == size && msadb_shards_local_count(msadb_mpi_shards(fx->m)) * size >= NSH);
    ingest_second_half(fx);
    msadb_options o = opts();
    if (rank == 0)
        CHECK_OK(msadb_open(sub("one"), NULL, &o, &fx->st));
}

static void compare_teardown(compare_fixture *fx)
{
    msadb_mpi_close(fx->m);
    msadb_close(fx->st);
    free(fx->ids1);
    free(fx->idsn);
}

/* Every id unique and on its shard; the counts are the single store's. */
static void compare_counts(compare_fixture *fx)
{
    msadb_stat_info si;
    MPI_OK(fx->m, msadb_mpi_stat(fx->m, &si));
    if (rank == 0) {
        msadb_stat_info s1;
        CHECK_OK(msadb_stat(fx->st, &s1));
        CHECK(si.n_documents == fx->nd && si.n_tokens == s1.n_tokens && si.n_blocks == s1.n_blocks);
        for (size_t i = 0; i < fx->nd; i++)
            for (size_t j = 0; j < i; j++)
                CHECK(fx->idsn[i] != fx->idsn[j]);
    }
}

/* Queries under both reductions (the distributed store is reopened with
 * the gather reduction for the cases after this one). */
static void compare_reductions(compare_fixture *fx)
{
    uint64_t bytes = 0;
    compare_queries(fx->m, fx->st, fx->ids1, fx->idsn, &bytes);
    if (rank == 0)
        printf("bytes one rank exchanges per query (exact, 1 token): %llu\n", (unsigned long long)bytes);
    msadb_mpi_close(fx->m);
    /* the gather reduction gives the same results */
    fx->m = open_four(MSADB_MPI_REDUCE_GATHER, 30);
    compare_queries(fx->m, fx->st, fx->ids1, fx->idsn, &bytes);
}

/* Listing and fetching documents by global id. */
static void compare_list_fetch(compare_fixture *fx)
{
    msadb_mpi *m = fx->m;
    size_t listed = 0;
    MPI_OK(m, msadb_mpi_doc_list(m, NULL, count_doc, &listed));
    if (rank == 0)
        CHECK(listed == fx->nd);
    CHECK_RC(msadb_mpi_doc_list(m, "nope", count_doc, &listed), MSADB_ENOTFOUND);
    fetch_ctx fc = {0, 0};
    uint64_t want[3] = {fx->idsn[0], fx->idsn[fx->nd - 1], fx->idsn[0] + 1000 * NSH};
    MPI_OK(m, msadb_mpi_doc_fetch(m, want, 3, on_fetch, &fc));
    if (rank == 0)
        CHECK(fc.n_ok == 2 && fc.n_missing == 1);
}

/* Spaces; a document of an unknown space commits nothing anywhere. */
static void compare_spaces(compare_fixture *fx)
{
    msadb_mpi *m = fx->m;
    MPI_OK(m, msadb_mpi_space_create(m, "beta"));
    CHECK_RC(msadb_mpi_space_create(m, "beta"), MSADB_EEXIST);
    int seen = 0;
    MPI_OK(m, msadb_mpi_space_list(m, on_space, &seen));
    if (rank == 0)
        CHECK(seen == 1);
    MPI_OK(m, msadb_mpi_space_drop(m, "beta"));
    CHECK_RC(msadb_mpi_space_drop(m, "beta"), MSADB_ENOTFOUND);
    msadb_doc bad;
    if (rank == 0) {
        sfx_doc(0, &bad);
        bad.space = "nope";
    }
    int rc = msadb_mpi_ingest(m, &bad, rank == 0 ? 1 : 0, NULL);
    CHECK(rc != 0);
}

/* Delete: an unknown id deletes nothing; then two documents, after which
 * the answers still match the single store's and the shards verify. */
static void compare_delete(compare_fixture *fx)
{
    msadb_mpi *m = fx->m;
    msadb_stat_info si;
    uint64_t del[2] = {fx->idsn[1], fx->idsn[2] + 1000 * NSH};
    CHECK_RC(msadb_mpi_delete(m, del, 2), MSADB_ENOTFOUND);
    MPI_OK(m, msadb_mpi_stat(m, &si));
    if (rank == 0)
        CHECK(si.n_documents == fx->nd);
    del[1] = fx->idsn[2];
    MPI_OK(m, msadb_mpi_delete(m, del, 2));
    if (rank == 0)
        CHECK_OK(msadb_doc_delete(fx->st, (uint64_t[]){fx->ids1[1], fx->ids1[2]}, 2));
    fx->ids1[1] = fx->ids1[2] = UINT64_MAX;
    fx->idsn[1] = fx->idsn[2] = UINT64_MAX - 1;
    uint64_t bytes = 0;
    compare_queries(m, fx->st, fx->ids1, fx->idsn, &bytes);
    MPI_OK(m, msadb_mpi_verify(m, NULL, NULL));
}

static void run_compare(void)
{
    compare_fixture fx;
    compare_setup(&fx);
    compare_counts(&fx);
    compare_reductions(&fx);
    compare_list_fetch(&fx);
    compare_spaces(&fx);
    compare_delete(&fx);
    compare_teardown(&fx);
    if (rank == 0)
        printf("ok: %d ranks\n", size);
}

static void run_serve(void)
{
    uint64_t *ids = calloc(sfx_n_docs(), sizeof *ids), *idsn = calloc(sfx_n_docs(), sizeof *idsn);
    CHECK(ids && idsn);
    build(sfx_n_docs(), ids, idsn);
    msadb_mpi *m = open_four(MSADB_MPI_REDUCE_OP, 3);
    float q[ROWS * SFX_D], o[ROWS * SFX_D], l[ROWS];
    double t0 = MPI_Wtime();
    for (size_t it = 0; MPI_Wtime() - t0 < 60; it++) {
        sfx_query_vec(it % sfx_n_queries(), q);
        msadb_query mq;
        query_init(&mq, q);
        mq.exact = 1;
        MPI_OK(m, msadb_mpi_attend(m, &mq, o, l, NULL, 0, NULL, NULL));
        if (it == 10 && rank == 0) {
            FILE *f = fopen(sub("running"), "w");
            CHECK(f);
            fclose(f);
        }
    }
    fprintf(stderr, "test_mpi serve: no rank was killed within 60 s\n");
    _exit(4);
}

static void run_ingest(void)
{
    uint64_t *ids = calloc(sfx_n_docs(), sizeof *ids), *idsn = calloc(sfx_n_docs(), sizeof *idsn);
    CHECK(ids && idsn);
    build(0, ids, idsn);
    msadb_mpi *m = open_four(MSADB_MPI_REDUCE_OP, 3);
    msadb_doc doc;
    double t0 = MPI_Wtime();
    for (size_t it = 0; MPI_Wtime() - t0 < 60; it++) {
        if (rank == 0)
            sfx_doc(it % sfx_n_docs(), &doc);
        MPI_OK(m, msadb_mpi_ingest(m, &doc, rank == 0 ? 1 : 0, NULL));
        if (it == 8 && rank == 0) {
            FILE *f = fopen(sub("running"), "w");
            CHECK(f);
            fclose(f);
        }
    }
    fprintf(stderr, "test_mpi ingest: no rank was killed within 60 s\n");
    _exit(4);
}

typedef struct whole_ctx {
    msadb_shards_snapshot *s;
    size_t n;
    float *k, *v;
} whole_ctx;

static int check_whole(const msadb_doc_info *info, void *ud)
{
    whole_ctx *c = ud;
    size_t di;
    CHECK(sscanf(info->title, "doc-%zu", &di) == 1 && di < sfx_n_docs());
    msadb_doc doc;
    sfx_doc(di, &doc);
    CHECK(info->n_tokens == doc.n_tokens);
    const float *K = doc.keys;
    for (uint32_t p = 0; p < SFX_NKV; p++) {
        CHECK_OK(msadb_shards_doc_kv(c->s, info->id, p, c->k, c->v));
        for (size_t i = 0; i < doc.n_tokens * SFX_D; i++) {
            float want = K[(size_t)p * doc.n_tokens * SFX_D + i];
            CHECK(fabsf(c->k[i] - want) <= 1e-3f * fabsf(want) + 1e-3f);
        }
    }
    c->n++;
    return 0;
}

static void report(const char *problem, void *ud)
{
    (void)ud;
    fprintf(stderr, "verify: %s\n", problem);
}

static void run_check(void)
{
    msadb_options o = opts();
    msadb_shards *sh;
    CHECK_OK(msadb_shards_open(sub("four"), NULL, &o, &sh));
    CHECK_OK(msadb_shards_verify(sh, report, NULL));
    whole_ctx c = {NULL, 0, malloc(sizeof(float) * 8192 * SFX_D), malloc(sizeof(float) * 8192 * SFX_D)};
    CHECK(c.k && c.v);
    CHECK_OK(msadb_shards_snapshot_begin(sh, &c.s));
    CHECK_OK(msadb_shards_doc_list(c.s, NULL, check_whole, &c));
    msadb_shards_snapshot_end(c.s);
    msadb_shards_close(sh);
    free(c.k);
    free(c.v);
    printf("ok: %zu documents whole, every shard verifies\n", c.n);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: test_mpi compare|serve|ingest|check DIR\n");
        return 2;
    }
    snprintf(dir, sizeof dir, "%s", argv[2]);
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    CHECK(sfx_init(N_TOKENS, 7) == 0);
    if (strcmp(argv[1], "compare") == 0)
        run_compare();
    else if (strcmp(argv[1], "serve") == 0)
        run_serve();
    else if (strcmp(argv[1], "ingest") == 0)
        run_ingest();
    else if (strcmp(argv[1], "check") == 0)
        run_check();
    else
        return 2;
    sfx_free();
    MPI_Finalize();
    return 0;
}
