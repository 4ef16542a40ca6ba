/* test_route.c -- the routing index: coarse summaries bound their blocks,
 * the two-level search equals the scan when every super-block is a
 * candidate and finds a planted needle with few, the index follows ingest,
 * delete, compaction and space drops, verify catches a damaged index page,
 * and a format 1 store opens, scans, and is upgraded. */
#include <math.h>
#include <string.h>

#include "codec/coarse.h"
#include "msadb.h"
#include "store/store_impl.h"
#include "testutil.h"

enum { D = 16, B = 4, MEM_LAYER = 1 };

static msadb_store *open_store(const char *dir, uint32_t kinds)
{
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 2, 2, 4, D));
    sig.block_size = B;
    sig.summary_kinds = kinds;
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, NULL, &st));
    return st;
}

/* A document of T tokens from seed; with needle, token T/2 of every plane
 * is a long copy of the direction `needle` (D floats). */
static uint64_t add_doc(msadb_store *st, const char *space, uint64_t seed, size_t T, const float *needle)
{
    uint32_t planes = msadb_signature_planes(msadb_store_signature(st));
    float *K = malloc(planes * T * D * 4), *V = malloc(planes * T * D * 4);
    tu_make_kv(seed, planes * T * D, K, V);
    for (uint32_t p = 0; needle && p < planes; p++)
        for (int j = 0; j < D; j++)
            K[((size_t)p * T + T / 2) * D + j] = 8.0f * needle[j];
    msadb_doc doc = {0};
    doc.space = space;
    return tu_append_f32(st, &doc, T, K, V);
}

/* Selection of q (one token, 4 q heads) with the given routing. */
static size_t route(msadb_store *st, const float *q, int how, uint32_t cands, msadb_hit *hits, size_t cap,
                    msadb_query_stats *stats)
{
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    msadb_query qq;
    msadb_query_init(&qq);
    qq.layer = MEM_LAYER;
    qq.q = q;
    qq.n_query = 1;
    qq.route = how;
    qq.route_candidates = cands;
    qq.stats = stats;
    size_t n = 0;
    CHECK_OK(msadb_retrieve(snap, &qq, hits, cap, &n));
    msadb_snapshot_end(snap);
    return n < cap ? n : cap;
}

static void count_problem(const char *line, void *ud)
{
    (void)line;
    (*(int *)ud)++;
}

/* The coarse entry's vectors are copies of its blocks' representatives, so
 * its score never exceeds the best block's; parameters are checked. */
static void test_coarse_bound(uint32_t kind)
{
    uint64_t rng = 5;
    enum { N = 40, S = 8, R = 3 };
    static int8_t v8[N * MSADB_K_REPS * D];
    static float sc[N * MSADB_K_REPS];
    for (size_t i = 0; i < sizeof v8; i++)
        v8[i] = (int8_t)(tu_rand(&rng) % 255 - 127);
    for (size_t i = 0; i < N * MSADB_K_REPS; i++)
        sc[i] = 0.01f + (float)(tu_rand(&rng) % 100) * 1e-3f;
    msadb_summ_view fine = {0};
    fine.reps = v8;
    fine.reps_scale = sc;
    fine.n_reps = MSADB_K_REPS;
    msadb_coarse_layout C = {D, S, R, kind};
    CHECK(msadb_coarse_valid(&C, 256));
    msadb_coarse_layout bad = C;
    bad.S = 7; /* does not divide the page */
    CHECK(!msadb_coarse_valid(&bad, 256));
    bad = C;
    bad.R = MSADB_COARSE_MAX_R + 1;
    CHECK(!msadb_coarse_valid(&bad, 256));
    bad = C;
    bad.kind = 4;
    CHECK(!msadb_coarse_valid(&bad, 256));
    size_t bytes = msadb_coarse_page_bytes(&C, N);
    CHECK(bytes >= 2048 && bytes >= (size_t)5 * R * (4 + D));
    uint8_t *page = msadb_aalloc(bytes);
    msadb_coarse_page_build(&C, &fine, N, page);
    msadb_summ_view cv;
    msadb_coarse_view_of(&C, page, N, &cv);
    CHECK(msadb_coarse_entries(&C, N) == 5);
    for (size_t e = 0; e < 5; e++)
        for (int r = 0; r < R; r++) { /* each kept vector is one of its blocks' */
            int found = 0;
            for (size_t j = e * S * MSADB_K_REPS; j < (e + 1) * S * MSADB_K_REPS && !found; j++)
                found = !memcmp(cv.reps + (e * R + r) * D, v8 + j * D, D) && cv.reps_scale[e * R + r] == sc[j];
            CHECK(found);
        }
    /* and the build is a function of the summaries (verify recomputes it) */
    uint8_t *again = msadb_aalloc(bytes);
    msadb_coarse_page_build(&C, &fine, N, again);
    CHECK(!memcmp(page, again, bytes));
    msadb_afree(page);
    msadb_afree(again);
}

/* Index == scan when every super-block is a candidate; few candidates
 * still find a planted needle; the index scores fewer blocks. */
static void test_index_matches_scan(void)
{
    const char *dir = tu_tmpdir("route");
    msadb_store *st = open_store(dir, MSADB_SUMMARY_MEAN | MSADB_SUMMARY_REPS);
    uint64_t rng = 11;
    float needle[D], q[4 * D];
    tu_fill_randn(&rng, needle, D, 1.0f);
    for (int h = 0; h < 4; h++)
        for (int j = 0; j < D; j++)
            q[h * D + j] = needle[j] + 0.3f * tu_randn(&rng);
    for (uint64_t i = 0; i < 60; i++)
        add_doc(st, NULL, 100 + i, 40 + (size_t)(i * 37 % 300), i == 41 ? needle : NULL);
    msadb_stat_info si;
    CHECK_OK(msadb_stat(st, &si));
    CHECK(si.format_version == MSADB_FORMAT_DOCKEYS);
    CHECK_OK(msadb_verify(st, NULL, NULL));

    msadb_hit a[64], b[64];
    msadb_query_stats s1, s2;
    size_t na = route(st, q, MSADB_ROUTE_SCAN, 0, a, 64, &s1);
    size_t nb = route(st, q, MSADB_ROUTE_INDEX, 65536, b, 64, &s2);
    CHECK(na == 32 && s1.coarse_scanned == 0 && s2.coarse_scanned > 0);
    tu_same_hits(a, na, b, nb);
    /* 4 candidates of 16 slots: the needle's block comes first either way */
    na = route(st, q, MSADB_ROUTE_SCAN, 0, a, 64, &s1);
    nb = route(st, q, MSADB_ROUTE_DEFAULT, 4, b, 64, &s2);
    CHECK(nb == 32 && s2.blocks_scanned <= 2 * 4 * 16 && s2.blocks_scanned < s1.blocks_scanned / 4);
    CHECK(a[0].block_id == b[0].block_id && a[0].score == b[0].score);
    CHECK(a[16].block_id == b[16].block_id); /* kv head 1's best */

    /* deleted blocks are never routed to; compaction keeps the index true */
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    uint64_t doc = b[0].doc_id;
    msadb_snapshot_end(snap);
    CHECK_OK(msadb_doc_delete(st, &doc, 1));
    nb = route(st, q, MSADB_ROUTE_INDEX, 4, b, 64, &s2);
    for (size_t i = 0; i < nb; i++)
        CHECK(b[i].doc_id != doc);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    CHECK_OK(msadb_compact(st));
    CHECK_OK(msadb_verify(st, NULL, NULL));
    na = route(st, q, MSADB_ROUTE_SCAN, 0, a, 64, &s1);
    nb = route(st, q, MSADB_ROUTE_INDEX, 65536, b, 64, &s2);
    tu_same_hits(a, na, b, nb);

    /* a second space, dropped: its index pages go with it */
    CHECK_OK(msadb_space_create(st, "other", NULL));
    for (uint64_t i = 0; i < 5; i++)
        add_doc(st, "other", 900 + i, 500, NULL);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    CHECK_OK(msadb_space_drop(st, "other"));
    CHECK_OK(msadb_verify(st, NULL, NULL));

    /* bad routing requests */
    msadb_query qq;
    msadb_query_init(&qq);
    qq.layer = MEM_LAYER;
    qq.q = q;
    qq.n_query = 1;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    size_t n;
    qq.route = 3;
    CHECK_RC(msadb_retrieve(snap, &qq, a, 64, &n), MSADB_EINVAL);
    qq.route = MSADB_ROUTE_INDEX;
    qq.route_candidates = 65537;
    CHECK_RC(msadb_retrieve(snap, &qq, a, 64, &n), MSADB_ELIMIT);
    qq.route_candidates = 0;
    qq.summary = MSADB_SUMMARY_MEAN; /* the index is over representatives */
    CHECK_RC(msadb_retrieve(snap, &qq, a, 64, &n), MSADB_EINVAL);
    qq.summary = 0;
    qq.select = MSADB_SELECT_DOCUMENTS;
    CHECK_RC(msadb_retrieve(snap, &qq, a, 64, &n), MSADB_EINVAL);
    qq.route = MSADB_ROUTE_DEFAULT; /* the default falls back to the scan */
    CHECK_OK(msadb_retrieve(snap, &qq, a, 64, &n));
    msadb_snapshot_end(snap);
    msadb_close(st);
}

/* verify reports a damaged index page; msadb_upgrade rebuilds it. */
static void test_verify_and_repair(void)
{
    const char *dir = tu_tmpdir("route-v");
    msadb_store *st = open_store(dir, MSADB_SUMMARY_REPS);
    for (uint64_t i = 0; i < 8; i++)
        add_doc(st, NULL, 7 + i, 300, NULL);
    MDB_txn *txn;
    CHECK_OK(mdb_txn_begin(st->env, NULL, 0, &txn));
    uint8_t key[16];
    msadb_key_summ(key, 0, 1, 1);
    MDB_val k = {16, key}, v;
    CHECK_OK(mdb_get(txn, st->db_route, &k, &v));
    uint8_t *buf = malloc(v.mv_size);
    memcpy(buf, v.mv_data, v.mv_size);
    buf[v.mv_size / 2] ^= 4;
    v.mv_data = buf;
    CHECK_OK(mdb_put(txn, st->db_route, &k, &v, 0));
    CHECK_OK(mdb_txn_commit(txn));
    int problems = 0;
    CHECK_RC(msadb_verify(st, count_problem, &problems), MSADB_ECORRUPT);
    CHECK(problems == 1);
    CHECK_OK(msadb_upgrade(st));
    CHECK_OK(msadb_verify(st, NULL, NULL));
    free(buf);
    msadb_close(st);
    /* a store without representatives has no index */
    dir = tu_tmpdir("route-m");
    st = open_store(dir, MSADB_SUMMARY_MEAN);
    add_doc(st, NULL, 3, 100, NULL);
    CHECK(!st->has_route);
    CHECK_OK(msadb_upgrade(st));
    CHECK(!st->has_route);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
}

/* A store as format 1 wrote it (no index database, no meta/route, no
 * document keys): opens, routes by the scan, takes documents, and
 * msadb_upgrade gives it the index and the format (3) that new stores have. */
static void test_format1_upgrade(void)
{
    const char *dir = tu_tmpdir("route-f1");
    msadb_store *st = open_store(dir, MSADB_SUMMARY_MEAN | MSADB_SUMMARY_REPS);
    uint64_t rng = 3;
    float q[4 * D];
    tu_fill_randn(&rng, q, 4 * D, 1.0f);
    for (uint64_t i = 0; i < 10; i++)
        add_doc(st, NULL, 50 + i, 200, NULL);
    msadb_close(st);
    tu_store_as_format(dir, 1);

    CHECK_OK(msadb_open(dir, NULL, NULL, &st));
    msadb_stat_info si;
    CHECK_OK(msadb_stat(st, &si));
    CHECK(si.format_version == 1);
    add_doc(st, NULL, 77, 200, NULL); /* written without an index */
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_hit a[64], b[64];
    msadb_query_stats s1, s2;
    size_t na = route(st, q, MSADB_ROUTE_DEFAULT, 0, a, 64, &s1);
    CHECK(s1.coarse_scanned == 0);
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    msadb_query qq;
    msadb_query_init(&qq);
    qq.layer = MEM_LAYER;
    qq.q = q;
    qq.n_query = 1;
    qq.route = MSADB_ROUTE_INDEX;
    size_t n;
    CHECK_RC(msadb_retrieve(snap, &qq, b, 64, &n), MSADB_EINVAL);
    msadb_snapshot_end(snap);

    CHECK_OK(msadb_upgrade(st));
    CHECK_OK(msadb_stat(st, &si));
    CHECK(si.format_version == 3);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    add_doc(st, NULL, 78, 200, NULL); /* now maintained */
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
    CHECK_OK(msadb_open(dir, NULL, NULL, &st));
    na = route(st, q, MSADB_ROUTE_SCAN, 0, a, 64, &s1);
    size_t nb = route(st, q, MSADB_ROUTE_INDEX, 65536, b, 64, &s2);
    CHECK(s2.coarse_scanned > 0);
    tu_same_hits(a, na, b, nb);
    msadb_close(st);
}

static uint64_t find_key(msadb_store *st, const char *key)
{
    msadb_snapshot *snap;
    uint64_t id = 0;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    int rc = msadb_doc_find_key(snap, key, strlen(key), &id);
    CHECK(rc == 0 || rc == MSADB_ENOTFOUND);
    msadb_snapshot_end(snap);
    return rc ? 0 : id;
}

/* A document of T tokens from seed carrying key. */
static uint64_t add_keyed(msadb_store *st, uint64_t seed, size_t T, const char *key)
{
    uint32_t planes = msadb_signature_planes(msadb_store_signature(st));
    float *K = malloc(planes * T * D * sizeof *K), *V = malloc(planes * T * D * sizeof *V);
    tu_make_kv(seed, planes * T * D, K, V);
    msadb_doc d = {0};
    d.key = key;
    d.key_len = strlen(key);
    return tu_append_f32(st, &d, T, K, V);
}

/* A store of n documents as a library of format `version` wrote it, opened
 * read-write; *dir gets its path. */
static msadb_store *old_store(const char *tag, uint64_t seed, int n, uint32_t version, const char **dir)
{
    *dir = tu_tmpdir(tag);
    msadb_store *st = open_store(*dir, MSADB_SUMMARY_MEAN | MSADB_SUMMARY_REPS);
    for (int i = 0; i < n; i++)
        add_doc(st, NULL, seed + (uint64_t)i, 150, NULL);
    msadb_close(st);
    tu_store_as_format(*dir, version);
    CHECK_OK(msadb_open(*dir, NULL, NULL, &st));
    return st;
}

/* A store as format 2 wrote it (the index, no document keys): opens with
 * its index; the first keyed document makes it format 3 and keeps the
 * index; msadb_upgrade of another such store gives format 3 too. */
static void test_format2(void)
{
    float q[4 * D];
    uint64_t rng = 5;
    tu_fill_randn(&rng, q, 4 * D, 1.0f);
    for (int upgrade = 0; upgrade < 2; upgrade++) {
        const char *dir;
        msadb_store *st = old_store("route-f2", 60, 8, 2, &dir);
        msadb_stat_info si;
        CHECK_OK(msadb_stat(st, &si));
        CHECK(si.format_version == 2 && si.n_documents == 8);
        CHECK(find_key(st, "k") == 0);
        msadb_hit a[64], b[64];
        msadb_query_stats s1, s2;
        size_t na = route(st, q, MSADB_ROUTE_SCAN, 0, a, 64, &s1);
        size_t nb = route(st, q, MSADB_ROUTE_INDEX, 65536, b, 64, &s2);
        CHECK(s2.coarse_scanned > 0); /* the index is found by its database */
        tu_same_hits(a, na, b, nb);
        if (upgrade) {
            CHECK_OK(msadb_upgrade(st));
        } else {
            uint64_t id = add_keyed(st, 99, 150, "k");
            CHECK(find_key(st, "k") == id);
        }
        CHECK_OK(msadb_stat(st, &si));
        CHECK(si.format_version == 3);
        CHECK_OK(msadb_verify(st, NULL, NULL));
        msadb_close(st);
        CHECK_OK(msadb_open(dir, NULL, NULL, &st));
        nb = route(st, q, MSADB_ROUTE_INDEX, 65536, b, 64, &s2);
        CHECK(s2.coarse_scanned > 0);
        CHECK_OK(msadb_verify(st, NULL, NULL));
        msadb_close(st);
    }
}

/* A format 1 store's first keyed document makes it format 3 without an
 * index: it routes by the scan until msadb_upgrade builds the index. */
static void test_format1_keyed(void)
{
    const char *dir;
    msadb_store *st = old_store("route-f1k", 80, 4, 1, &dir);
    uint64_t id = add_keyed(st, 7, 100, "key-1");
    msadb_close(st);
    CHECK_OK(msadb_open(dir, NULL, NULL, &st));
    msadb_stat_info si;
    CHECK_OK(msadb_stat(st, &si));
    CHECK(si.format_version == 3 && find_key(st, "key-1") == id);
    float q[4 * D];
    uint64_t rng = 8;
    tu_fill_randn(&rng, q, 4 * D, 1.0f);
    msadb_hit a[64], b[64];
    msadb_query_stats s1, s2;
    size_t na = route(st, q, MSADB_ROUTE_DEFAULT, 0, a, 64, &s1);
    CHECK(s1.coarse_scanned == 0); /* no index: the scan */
    CHECK_OK(msadb_verify(st, NULL, NULL));
    CHECK_OK(msadb_upgrade(st));
    size_t nb = route(st, q, MSADB_ROUTE_INDEX, 65536, b, 64, &s2);
    CHECK(s2.coarse_scanned > 0);
    tu_same_hits(a, na, b, nb);
    CHECK(find_key(st, "key-1") == id);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
}

int main(void)
{
    test_coarse_bound(MSADB_COARSE_KCENTER);
    test_coarse_bound(MSADB_COARSE_KCENTER_DIR);
    test_coarse_bound(MSADB_COARSE_KCENTER_MIX);
    test_index_matches_scan();
    test_verify_and_repair();
    test_format1_upgrade();
    test_format2();
    test_format1_keyed();
    printf("test_route: ok\n");
    return 0;
}
