/* test_delete.c -- deleting documents and spaces, snapshots that predate
 * a delete, compaction, and reuse of freed space. */
#include <string.h>

#include "msadb.h"
#include "store/store_impl.h"
#include "testutil.h"

enum { D = 16, B = 4 };

static msadb_store *open_store(const char *dir, int dtype)
{
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 2, 2, 4, D));
    sig.block_size = B;
    sig.dtype = (uint32_t)dtype;
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, NULL, &st));
    return st;
}

static uint64_t add_doc(msadb_store *st, const char *space, uint64_t seed, size_t T)
{
    uint32_t planes = msadb_signature_planes(msadb_store_signature(st));
    float *K = malloc(planes * T * D * 4), *V = malloc(planes * T * D * 4);
    tu_make_kv(seed, planes * T * D, K, V);
    msadb_doc doc = {0};
    char title[32];
    snprintf(title, sizeof title, "seed %llu", (unsigned long long)seed);
    doc.space = space;
    doc.title = title;
    doc.text = "some text";
    doc.text_len = 9;
    return tu_append_f32(st, &doc, T, K, V);
}

/* The document's stored keys of plane 0 equal those made from its seed. */
static void check_doc(msadb_snapshot *snap, uint64_t id, uint64_t seed, size_t T)
{
    uint32_t planes = msadb_signature_planes(msadb_snap_signature(snap));
    float *K = malloc(planes * T * D * 4), *V = malloc(planes * T * D * 4), *Kb = malloc(T * D * 4);
    tu_make_kv(seed, planes * T * D, K, V);
    for (uint32_t p = 0; p < planes; p++) {
        CHECK_OK(msadb_doc_kv(snap, id, p, Kb, NULL));
        CHECK(memcmp(Kb, K + p * T * D, T * D * 4) == 0);
    }
    free(K);
    free(V);
    free(Kb);
}

static uint64_t live_slots(msadb_snapshot *snap, const char *space, uint64_t *total)
{
    uint32_t sid;
    CHECK_OK(msadb_snap_space_id(snap, space, &sid));
    msadb_page_view *v = NULL;
    size_t n = 0, cap = 0;
    CHECK_OK(msadb_snap_pages(snap, sid, 0, &v, &n, &cap));
    uint64_t live = 0;
    *total = 0;
    for (size_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < v[i].n; j++) {
            msadb_slot s;
            msadb_slot_at(v[i].slots, j, &s);
            live += !(s.flags & MSADB_SLOT_DELETED);
            (*total)++;
        }
    free(v);
    return live;
}

static void test_delete_and_snapshot(void)
{
    const char *dir = tu_tmpdir("del");
    msadb_store *st = open_store(dir, MSADB_DTYPE_F32);
    uint64_t ids[6];
    for (int i = 0; i < 6; i++)
        ids[i] = add_doc(st, NULL, 100 + i, 50 + 37 * i); /* 13..68 blocks each */
    msadb_snapshot *before;
    CHECK_OK(msadb_snapshot_begin(st, &before));

    uint64_t del[] = {ids[1], ids[4], ids[1]}; /* a repeat is fine */
    CHECK_OK(msadb_doc_delete(st, del, 3));
    uint64_t missing[] = {ids[0], 999};
    CHECK_RC(msadb_doc_delete(st, missing, 2), MSADB_ENOTFOUND); /* nothing deleted */
    CHECK_RC(msadb_doc_delete(st, NULL, 1), MSADB_EINVAL);

    /* the old snapshot still sees and reads the deleted documents */
    msadb_doc_info info;
    CHECK_OK(msadb_doc_get(before, ids[1], &info));
    check_doc(before, ids[1], 101, 50 + 37);
    check_doc(before, ids[4], 104, 50 + 37 * 4);
    msadb_snapshot_end(before);

    msadb_snapshot *after;
    CHECK_OK(msadb_snapshot_begin(st, &after));
    CHECK_RC(msadb_doc_get(after, ids[1], &info), MSADB_ENOTFOUND);
    CHECK_OK(msadb_doc_get(after, ids[0], &info));
    check_doc(after, ids[0], 100, 50);
    check_doc(after, ids[5], 105, 50 + 37 * 5);
    uint64_t total, live = live_slots(after, "default", &total);
    uint64_t blocks_all = 0, blocks_del = 0;
    for (int i = 0; i < 6; i++) {
        uint64_t nb = (50 + 37 * i + B - 1) / B;
        blocks_all += nb;
        if (i == 1 || i == 4)
            blocks_del += nb;
    }
    CHECK(total == blocks_all && live == blocks_all - blocks_del);
    msadb_snapshot_end(after);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_space_info si;
    CHECK_OK(msadb_space_get(st, "default", &si));
    CHECK(si.n_documents == 4);

    /* compaction drops the masked slots; documents stay readable */
    CHECK_OK(msadb_compact(st));
    CHECK_OK(msadb_verify(st, NULL, NULL));
    CHECK_OK(msadb_snapshot_begin(st, &after));
    live = live_slots(after, "default", &total);
    CHECK(total == live && live == blocks_all - blocks_del);
    for (int i = 0; i < 6; i++)
        if (i != 1 && i != 4)
            check_doc(after, ids[i], 100 + i, 50 + 37 * i);
    msadb_snapshot_end(after);
    /* appends after compaction continue the slot sequence */
    uint64_t id7 = add_doc(st, NULL, 200, 33);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    CHECK_OK(msadb_snapshot_begin(st, &after));
    check_doc(after, id7, 200, 33);
    msadb_snapshot_end(after);
    msadb_close(st);
}

static void test_space_drop(void)
{
    const char *dir = tu_tmpdir("drop");
    msadb_store *st = open_store(dir, MSADB_DTYPE_INT8);
    CHECK_OK(msadb_space_create(st, "tmp", NULL));
    uint64_t keep = add_doc(st, NULL, 1, 40);
    uint64_t gone1 = add_doc(st, "tmp", 2, 40), gone2 = add_doc(st, "tmp", 3, 900);
    uint64_t del[] = {gone1};
    CHECK_OK(msadb_doc_delete(st, del, 1)); /* a deleted doc inside the dropped space */
    msadb_snapshot *before;
    CHECK_OK(msadb_snapshot_begin(st, &before));
    CHECK_OK(msadb_space_drop(st, "tmp"));
    msadb_doc_info info;
    CHECK_OK(msadb_doc_get(before, gone2, &info));
    float *Kb = malloc(900 * D * 4);
    CHECK_OK(msadb_doc_kv(before, gone2, 0, Kb, NULL));
    msadb_snapshot_end(before);
    msadb_snapshot *after;
    CHECK_OK(msadb_snapshot_begin(st, &after));
    CHECK_RC(msadb_doc_get(after, gone2, &info), MSADB_ENOTFOUND);
    CHECK_OK(msadb_doc_get(after, keep, &info));
    MDB_stat bs;
    CHECK_OK(mdb_stat(after->txn, st->db_blocks, &bs));
    uint32_t planes = msadb_signature_planes(msadb_store_signature(st));
    CHECK(planes == 2);
    CHECK(bs.ms_entries == 10); /* only the kept doc's 10 blocks (all planes in each) */
    MDB_stat ss;
    CHECK_OK(mdb_stat(after->txn, st->db_summ, &ss));
    CHECK(ss.ms_entries == planes); /* one page per plane of "default" */
    msadb_snapshot_end(after);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    /* the name can be used again, starting empty */
    CHECK_OK(msadb_space_create(st, "tmp", NULL));
    msadb_space_info si;
    CHECK_OK(msadb_space_get(st, "tmp", &si));
    CHECK(si.n_documents == 0);
    add_doc(st, "tmp", 4, 10);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    free(Kb);
    msadb_close(st);
}

/* Ingesting and deleting in cycles reuses freed pages: the file stops
 * growing. */
static void test_space_reuse(void)
{
    const char *dir = tu_tmpdir("reuse");
    msadb_store *st = open_store(dir, MSADB_DTYPE_F16);
    msadb_stat_info s1, s2;
    for (int cycle = 0; cycle < 12; cycle++) {
        uint64_t ids[4];
        for (int i = 0; i < 4; i++)
            ids[i] = add_doc(st, NULL, (uint64_t)(cycle * 4 + i), 2000);
        CHECK_OK(msadb_doc_delete(st, ids, 4));
        CHECK_OK(msadb_compact(st));
        if (cycle == 2)
            CHECK_OK(msadb_stat(st, &s1));
    }
    CHECK_OK(msadb_stat(st, &s2));
    CHECK(s2.n_documents == 0 && s2.n_blocks == 0);
    /* one cycle writes ~4 x 2000 tokens x 2 planes x 2 x 16 x 2 bytes = 1 MB */
    CHECK(s2.map_used <= s1.map_used + (1u << 20));
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
}

int main(void)
{
    test_delete_and_snapshot();
    test_space_drop();
    test_space_reuse();
    printf("test_delete: ok\n");
    return 0;
}
