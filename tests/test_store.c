/* test_store.c -- the storage layer: create/open, signatures, spaces,
 * documents, batches, persistence, pages, map growth, verify. */
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "msadb.h"
#include "store/store_impl.h"
#include "testutil.h"

/* Deterministic K/V for a document: [planes][T][d] f32. */
static void make_kv(uint64_t seed, uint32_t planes, size_t T, uint32_t d, float *K, float *V)
{
    tu_make_kv(seed, (size_t)planes * T * d, K, V);
}

static msadb_signature small_sig(int dtype, uint32_t block)
{
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 4, 2, 4, 16));
    sig.dtype = (uint32_t)dtype;
    sig.block_size = block;
    sig.summary_kinds = MSADB_SUMMARY_ALL;
    return sig;
}

static void test_signature(void)
{
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 8, 2, 8, 64));
    CHECK(sig.n_memory_layers == 4 && sig.memory_layers[0] == 4 && sig.memory_layers[3] == 7);
    CHECK(msadb_signature_planes(&sig) == 8);
    CHECK(msadb_signature_memory_index(&sig, 5) == 1);
    CHECK_RC(msadb_signature_memory_index(&sig, 2), MSADB_ENOTFOUND);
    msadb_signature bad = sig;
    bad.n_q_heads = 3; /* not a multiple of kv heads */
    CHECK_RC(msadb_signature_validate(&bad), MSADB_EINVAL);
    bad = sig;
    bad.memory_layers[1] = 4; /* not ascending */
    CHECK_RC(msadb_signature_validate(&bad), MSADB_EINVAL);
    bad = sig;
    bad.block_size = 0;
    CHECK_RC(msadb_signature_validate(&bad), MSADB_EINVAL);
    bad = sig;
    bad.summary_kinds = 8;
    CHECK_RC(msadb_signature_validate(&bad), MSADB_EINVAL);
    CHECK_RC(msadb_signature_init(&sig, 0, 1, 1, 1), MSADB_EINVAL);
    CHECK(msadb_dtype_parse("int8") == MSADB_DTYPE_INT8);
    CHECK(msadb_dtype_parse("fp8") == MSADB_EINVAL);
    CHECK(strcmp(msadb_dtype_name(MSADB_DTYPE_Q4), "q4") == 0);
    CHECK(strstr(msadb_strerror(MSADB_ESIGNATURE), "signature") != NULL);
    CHECK(strstr(msadb_strerror(MDB_MAP_FULL), "MDB_MAP_FULL") != NULL);
    CHECK(strlen(msadb_strerror(ENOENT)) > 0);
    CHECK(strcmp(msadb_strerror(-12345), "unknown error code") == 0);
}

static void test_create_open(void)
{
    const char *dir = tu_tmpdir("create");
    char path[600];
    snprintf(path, sizeof path, "%s/db", dir);
    msadb_signature sig = small_sig(MSADB_DTYPE_F32, 8);
    msadb_store *st;
    CHECK_RC(msadb_open(path, NULL, NULL, &st), ENOENT);
    CHECK_OK(msadb_create(path, &sig, NULL, &st));
    CHECK(msadb_store_encrypted(st) == 0);
    msadb_close(st);
    CHECK_RC(msadb_create(path, &sig, NULL, &st), MSADB_EEXIST);
    CHECK_OK(msadb_open(path, &sig, NULL, &st));
    CHECK(memcmp(msadb_store_signature(st), &sig, sizeof sig) == 0);
    msadb_close(st);
    msadb_signature other = sig;
    other.head_dim = 32;
    CHECK_RC(msadb_open(path, &other, NULL, &st), MSADB_ESIGNATURE);
    CHECK_RC(msadb_open(dir, NULL, NULL, &st), MSADB_ENOTSTORE);
    CHECK_RC(msadb_open(NULL, NULL, NULL, &st), MSADB_EINVAL);
    unsigned char key[32] = {1};
    msadb_options opt;
    msadb_options_init(&opt);
    opt.key = key;
    CHECK_RC(msadb_open(path, NULL, &opt, &st), MSADB_EKEY); /* key for a plain store */

    /* A newer format version is refused. */
    CHECK_OK(msadb_open(path, NULL, NULL, &st));
    MDB_txn *txn;
    CHECK_OK(mdb_txn_begin(st->env, NULL, 0, &txn));
    uint8_t v2[4] = {MSADB_FORMAT_VERSION + 1, 0, 0, 0};
    MDB_val k = {6, "format"}, v = {4, v2};
    CHECK_OK(mdb_put(txn, st->db_meta, &k, &v, 0));
    CHECK_OK(mdb_txn_commit(txn));
    msadb_close(st);
    CHECK_RC(msadb_open(path, NULL, NULL, &st), MSADB_EVERSION);
}

static int count_space(const msadb_space_info *info, void *ud)
{
    (void)info;
    (*(int *)ud)++;
    return 0;
}

static void test_spaces(void)
{
    const char *dir = tu_tmpdir("spaces");
    msadb_signature sig = small_sig(MSADB_DTYPE_F16, 8);
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, NULL, &st));
    uint32_t id1, id2;
    CHECK_OK(msadb_space_create(st, "agent-1", &id1));
    CHECK_OK(msadb_space_create(st, "user/alice", &id2));
    CHECK(id1 != id2);
    CHECK_RC(msadb_space_create(st, "agent-1", NULL), MSADB_EEXIST);
    CHECK_RC(msadb_space_create(st, "bad name", NULL), MSADB_EINVAL);
    CHECK_RC(msadb_space_create(st, "", NULL), MSADB_EINVAL);
    char longname[80];
    memset(longname, 'a', sizeof longname - 1);
    longname[79] = 0;
    CHECK_RC(msadb_space_create(st, longname, NULL), MSADB_EINVAL);
    int n = 0;
    CHECK_OK(msadb_space_list(st, count_space, &n));
    CHECK(n == 3); /* default + 2 */
    msadb_space_info info;
    CHECK_OK(msadb_space_get(st, "user/alice", &info));
    CHECK(info.id == id2 && strcmp(info.name, "user/alice") == 0 && info.n_documents == 0);
    CHECK_OK(msadb_space_drop(st, "agent-1"));
    CHECK_RC(msadb_space_get(st, "agent-1", &info), MSADB_ENOTFOUND);
    CHECK_RC(msadb_space_drop(st, "agent-1"), MSADB_ENOTFOUND);
    n = 0;
    CHECK_OK(msadb_space_list(st, count_space, &n));
    CHECK(n == 2);
    msadb_close(st);
}

typedef struct {
    uint64_t ids[64];
    int n;
} id_list;

static int collect_doc(const msadb_doc_info *info, void *ud)
{
    id_list *l = ud;
    l->ids[l->n++] = info->id;
    return 0;
}

/* Fixture of the document cases: a store of the given dtype with a space
 * "notes" holding document 1 (f32 input with title, metadata, text, token
 * ids and spans: 21 tokens, 3 blocks, the last one short) and document 2
 * in the default space (the same K/V as f16 input, nothing else). */
enum { DOCS_T = 21, DOCS_D = 16 };
static const char DOCS_TEXT[] = "the quick brown fox jumps over the lazy dog";

typedef struct {
    int dtype;
    const char *dir;
    msadb_signature sig;
    uint32_t planes;
    msadb_store *st;
    float *K, *V; /* planes x T x d */
    uint16_t *K16, *V16;
    int32_t ids[DOCS_T];
    int64_t spans[2 * DOCS_T];
    msadb_doc doc; /* document 1 as appended */
    uint64_t id1, id2;
} docs_fixture;

static void docs_setup(docs_fixture *fx, int dtype)
{
    const size_t T = DOCS_T, d = DOCS_D;
    memset(fx, 0, sizeof *fx);
    fx->dtype = dtype;
    fx->dir = tu_tmpdir("docs");
    fx->sig = small_sig(dtype, 8);
    fx->planes = msadb_signature_planes(&fx->sig);
    CHECK_OK(msadb_create(fx->dir, &fx->sig, NULL, &fx->st));
    CHECK_OK(msadb_space_create(fx->st, "notes", NULL));
    const uint32_t planes = fx->planes;
    fx->K = malloc(planes * T * d * 4);
    fx->V = malloc(planes * T * d * 4);
    make_kv(7, planes, T, d, fx->K, fx->V);
    for (size_t i = 0; i < T; i++) {
        fx->ids[i] = (int32_t)(100 + i);
        fx->spans[2 * i] = (int64_t)i;
        fx->spans[2 * i + 1] = (int64_t)i + 2;
    }
    msadb_doc *doc = &fx->doc;
    doc->space = "notes";
    doc->title = "fox";
    doc->meta = "{\"k\":1}";
    doc->meta_len = 7;
    doc->text = DOCS_TEXT;
    doc->text_len = strlen(DOCS_TEXT);
    doc->token_ids = fx->ids;
    doc->token_spans = fx->spans;
    doc->n_tokens = T;
    doc->kv_dtype = MSADB_DTYPE_F32;
    doc->keys = fx->K;
    doc->values = fx->V;
    CHECK_OK(msadb_doc_append(fx->st, doc, &fx->id1));
    CHECK(fx->id1 == 1);

    /* Same document as f16 input into the default space, without text. */
    fx->K16 = malloc(planes * T * d * 2);
    fx->V16 = malloc(planes * T * d * 2);
    for (size_t i = 0; i < planes * T * d; i++) {
        fx->K16[i] = msadb_f32_to_f16(fx->K[i]);
        fx->V16[i] = msadb_f32_to_f16(fx->V[i]);
    }
    msadb_doc doc2 = {0};
    doc2.n_tokens = T;
    doc2.kv_dtype = MSADB_DTYPE_F16;
    doc2.keys = fx->K16;
    doc2.values = fx->V16;
    CHECK_OK(msadb_doc_append(fx->st, &doc2, &fx->id2));
    CHECK(fx->id2 == 2);
}

static void docs_teardown(docs_fixture *fx)
{
    msadb_close(fx->st);
    free(fx->K);
    free(fx->V);
    free(fx->K16);
    free(fx->V16);
}

/* Invalid inputs are refused (docs_stat_verify checks the store did not
 * change). */
static void docs_invalid_inputs(docs_fixture *fx)
{
    const size_t n = (size_t)fx->planes * DOCS_T * DOCS_D;
    msadb_doc bad = fx->doc;
    bad.n_tokens = 0;
    CHECK_RC(msadb_doc_append(fx->st, &bad, NULL), MSADB_EINVAL);
    bad = fx->doc;
    bad.kv_dtype = MSADB_DTYPE_INT8;
    CHECK_RC(msadb_doc_append(fx->st, &bad, NULL), MSADB_EDTYPE);
    bad = fx->doc;
    int64_t badspans[2 * DOCS_T];
    memcpy(badspans, fx->spans, sizeof badspans);
    badspans[5] = 1000; /* past the text */
    bad.token_spans = badspans;
    CHECK_RC(msadb_doc_append(fx->st, &bad, NULL), MSADB_EINVAL);
    bad = fx->doc;
    float *Knan = malloc(n * 4);
    memcpy(Knan, fx->K, n * 4);
    Knan[n - 1] = NAN;
    bad.keys = Knan;
    CHECK_RC(msadb_doc_append(fx->st, &bad, NULL), MSADB_ENONFINITE);
    free(Knan);
    bad = fx->doc;
    bad.space = "nowhere";
    CHECK_RC(msadb_doc_append(fx->st, &bad, NULL), MSADB_ENOTFOUND);
}

/* Document info, text, metadata, token ids and spans read back. */
static void docs_read_back(docs_fixture *fx)
{
    const size_t T = DOCS_T;
    const char *text = DOCS_TEXT;
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(fx->st, &snap));
    msadb_doc_info info;
    CHECK_OK(msadb_doc_get(snap, fx->id1, &info));
    CHECK(info.n_tokens == T && info.n_blocks == 3 && strcmp(info.title, "fox") == 0);
    CHECK(strcmp(info.space, "notes") == 0 && info.has_tokens && info.has_spans);
    CHECK(info.text_len == strlen(text) && info.meta_len == 7);
    CHECK_RC(msadb_doc_get(snap, 99, &info), MSADB_ENOTFOUND);
    char tbuf[64];
    size_t len = 0;
    CHECK_OK(msadb_doc_text(snap, fx->id1, NULL, 0, &len));
    CHECK(len == strlen(text));
    CHECK_RC(msadb_doc_text(snap, fx->id1, tbuf, 4, &len), MSADB_ELIMIT);
    CHECK_OK(msadb_doc_text(snap, fx->id1, tbuf, sizeof tbuf, &len));
    CHECK(len == strlen(text) && memcmp(tbuf, text, len) == 0);
    CHECK_OK(msadb_doc_text(snap, fx->id2, tbuf, sizeof tbuf, &len));
    CHECK(len == 0);
    CHECK_OK(msadb_doc_meta(snap, fx->id1, tbuf, sizeof tbuf, &len));
    CHECK(len == 7 && memcmp(tbuf, "{\"k\":1}", 7) == 0);
    int32_t ids_back[DOCS_T];
    int64_t spans_back[2 * DOCS_T];
    CHECK_OK(msadb_doc_tokens(snap, fx->id1, ids_back, spans_back, 21));
    CHECK(memcmp(ids_back, fx->ids, sizeof fx->ids) == 0 &&
          memcmp(spans_back, fx->spans, sizeof fx->spans) == 0);
    CHECK_RC(msadb_doc_tokens(snap, fx->id2, ids_back, NULL, 21), MSADB_ENOTFOUND);
    CHECK_RC(msadb_doc_tokens(snap, fx->id1, ids_back, NULL, 20), MSADB_ELIMIT);
    msadb_snapshot_end(snap);
}

/* Stored K/V within the dtype's bound, in every plane. */
static void docs_kv_within_bound(docs_fixture *fx)
{
    const size_t T = DOCS_T, d = DOCS_D;
    const int dtype = fx->dtype;
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(fx->st, &snap));
    float *Kb = malloc(T * d * 4), *Vb = malloc(T * d * 4);
    double tol = dtype == MSADB_DTYPE_F32 ? 0 : dtype == MSADB_DTYPE_F16 ? 2e-3 : dtype == MSADB_DTYPE_BF16 ? 1.6e-2
                 : dtype == MSADB_DTYPE_INT8 ? 0.03 : 0.5;
    for (uint32_t p = 0; p < fx->planes; p++) {
        CHECK_OK(msadb_doc_kv(snap, fx->id1, p, Kb, Vb));
        for (size_t i = 0; i < T * d; i++) {
            float k = fx->K[p * T * d + i], v = fx->V[p * T * d + i];
            CHECK(fabs(Kb[i] - k) <= tol * fmax(1.0, fabs(k)) + 1e-7);
            CHECK(fabs(Vb[i] - v) <= tol * fmax(1.0, fabs(v)) + 1e-7);
        }
    }
    CHECK_RC(msadb_doc_kv(snap, fx->id1, fx->planes, Kb, Vb), MSADB_EINVAL);
    msadb_snapshot_end(snap);
    free(Kb);
    free(Vb);
}

/* Listing all documents and those of one space. */
static void docs_list(docs_fixture *fx)
{
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(fx->st, &snap));
    id_list all = {0}, notes = {0};
    CHECK_OK(msadb_doc_list(snap, NULL, collect_doc, &all));
    CHECK(all.n == 2 && all.ids[0] == fx->id1 && all.ids[1] == fx->id2);
    CHECK_OK(msadb_doc_list(snap, "notes", collect_doc, &notes));
    CHECK(notes.n == 1 && notes.ids[0] == fx->id1);
    CHECK_RC(msadb_doc_list(snap, "nowhere", collect_doc, &notes), MSADB_ENOTFOUND);
    msadb_snapshot_end(snap);
}

/* Pages: one per space here, with slots describing the blocks; minmax
 * really bounds the stored keys of block 2 in plane 1. */
static void docs_pages(docs_fixture *fx)
{
    const uint32_t d = DOCS_D;
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(fx->st, &snap));
    uint32_t sid;
    CHECK_OK(msadb_snap_space_id(snap, "notes", &sid));
    msadb_page_view *views = NULL;
    size_t nv = 0, cv = 0;
    CHECK_OK(msadb_snap_pages(snap, sid, 1, &views, &nv, &cv));
    CHECK(nv == 1 && views[0].n == 3 && views[0].summ.mean && views[0].summ.minmax && views[0].summ.reps && views[0].summ.reps_scale);
    CHECK(((uintptr_t)views[0].summ.reps_scale & 15) == 0);
    msadb_slot s;
    msadb_slot_at(views[0].slots, 2, &s);
    CHECK(s.doc_id == fx->id1 && s.tok_start == 16 && s.n_tok == 5 && s.flags == 0);
    float *Kb = malloc((size_t)DOCS_T * d * 4);
    CHECK_OK(msadb_doc_kv(snap, fx->id1, 1, Kb, NULL));
    for (uint32_t t = 16; t < 21; t++)
        for (uint32_t c = 0; c < d; c++) {
            float lo = msadb_f16_to_f32(views[0].summ.minmax[2 * 2 * d + c]);
            float hi = msadb_f16_to_f32(views[0].summ.minmax[2 * 2 * d + d + c]);
            CHECK(lo <= Kb[t * d + c] && Kb[t * d + c] <= hi);
        }
    free(Kb);
    free(views);
    msadb_snapshot_end(snap);
}

/* The counts are the two documents' (the refused ones left no trace) and
 * the store verifies. */
static void docs_stat_verify(docs_fixture *fx)
{
    msadb_stat_info si;
    CHECK_OK(msadb_stat(fx->st, &si));
    CHECK(si.n_documents == 2 && si.n_tokens == 2 * DOCS_T && si.n_blocks == 6 && si.n_spaces == 2);
    CHECK_OK(msadb_verify(fx->st, NULL, NULL));
}

/* Persistence: reopen and read again. */
static void docs_persistence(docs_fixture *fx)
{
    const size_t T = DOCS_T, d = DOCS_D;
    msadb_close(fx->st);
    CHECK_OK(msadb_open(fx->dir, &fx->sig, NULL, &fx->st));
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(fx->st, &snap));
    float *Kb = malloc(T * d * 4), *Vb = malloc(T * d * 4);
    CHECK_OK(msadb_doc_kv(snap, fx->id1, 0, Kb, Vb));
    if (fx->dtype == MSADB_DTYPE_F32)
        CHECK(memcmp(Kb, fx->K, T * d * 4) == 0 && memcmp(Vb, fx->V, T * d * 4) == 0);
    msadb_snapshot_end(snap);
    CHECK_OK(msadb_verify(fx->st, NULL, NULL));
    free(Kb);
    free(Vb);
}

static void test_documents(int dtype)
{
    docs_fixture fx;
    docs_setup(&fx, dtype);
    docs_invalid_inputs(&fx);
    docs_read_back(&fx);
    docs_kv_within_bound(&fx);
    docs_list(&fx);
    docs_pages(&fx);
    docs_stat_verify(&fx);
    docs_persistence(&fx);
    docs_teardown(&fx);
}

/* A batch is all or nothing; ids follow add order; pages span boundaries. */
static void test_batches_and_pages(void)
{
    const char *dir = tu_tmpdir("batch");
    const uint32_t B = 4, d = 16;
    msadb_signature sig = small_sig(MSADB_DTYPE_INT8, B);
    const uint32_t planes = msadb_signature_planes(&sig);
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, NULL, &st));
    CHECK_OK(msadb_space_create(st, "a", NULL));
    CHECK_OK(msadb_space_create(st, "b", NULL));
    const size_t T = 301; /* 76 blocks: several documents cross a 256-slot page */
    float *K = malloc(planes * T * d * 4), *V = malloc(planes * T * d * 4);
    uint64_t ids[8];
    for (int round = 0; round < 2; round++) {
        msadb_batch *b;
        CHECK_OK(msadb_batch_begin(st, &b));
        for (int i = 0; i < 4; i++) {
            make_kv((uint64_t)(round * 10 + i), planes, T, d, K, V);
            msadb_doc doc = {0};
            doc.space = i % 2 ? "b" : "a";
            doc.n_tokens = T;
            doc.kv_dtype = MSADB_DTYPE_F32;
            doc.keys = K;
            doc.values = V;
            CHECK_OK(msadb_batch_add(b, &doc));
            msadb_doc empty = doc;
            empty.n_tokens = 0;
            CHECK_RC(msadb_batch_add(b, &empty), MSADB_EINVAL); /* batch still usable */
        }
        CHECK(msadb_batch_count(b) == 4);
        CHECK_OK(msadb_batch_commit(b, ids + 4 * round));
    }
    for (int i = 0; i < 8; i++)
        CHECK(ids[i] == (uint64_t)i + 1);
    /* A batch naming an unknown space fails whole. */
    msadb_batch *b;
    CHECK_OK(msadb_batch_begin(st, &b));
    msadb_doc doc = {0};
    doc.n_tokens = T;
    doc.kv_dtype = MSADB_DTYPE_F32;
    doc.keys = K;
    doc.values = V;
    CHECK_OK(msadb_batch_add(b, &doc));
    doc.space = "zzz";
    CHECK_OK(msadb_batch_add(b, &doc));
    CHECK_RC(msadb_batch_commit(b, NULL), MSADB_ENOTFOUND);
    msadb_stat_info si;
    CHECK_OK(msadb_stat(st, &si));
    CHECK(si.n_documents == 8);
    msadb_batch_abort(NULL);

    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    uint32_t sid;
    CHECK_OK(msadb_snap_space_id(snap, "a", &sid));
    msadb_page_view *views = NULL;
    size_t nv = 0, cv = 0;
    CHECK_OK(msadb_snap_pages(snap, sid, planes - 1, &views, &nv, &cv));
    /* space a: 4 documents x 76 blocks = 304 slots = pages of 256 + 48 */
    CHECK(nv == 2 && views[0].n == 256 && views[1].n == 48 && views[1].page_no == 1);
    uint64_t expect_doc[] = {1, 3, 5, 7};
    for (uint32_t i = 0; i < 304; i++) {
        msadb_slot s;
        msadb_slot_at(views[i / 256].slots, i % 256, &s);
        CHECK(s.doc_id == expect_doc[i / 76] && s.tok_start == (i % 76) * B);
    }
    uint32_t ids_sp[8];
    size_t nsp;
    CHECK_OK(msadb_snap_space_ids(snap, ids_sp, 8, &nsp));
    CHECK(nsp == 3);
    CHECK_RC(msadb_snap_space_ids(snap, ids_sp, 1, &nsp), MSADB_ELIMIT);
    free(views);
    msadb_snapshot_end(snap);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
    free(K);
    free(V);
}

/* The map starts tiny and grows as documents arrive. */
static void test_map_growth(void)
{
    const char *dir = tu_tmpdir("grow");
    msadb_signature sig = small_sig(MSADB_DTYPE_F32, 64);
    sig.head_dim = 128;
    const uint32_t planes = msadb_signature_planes(&sig);
    msadb_options opt;
    msadb_options_init(&opt);
    opt.map_size = 1 << 20;
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, &opt, &st));
    const size_t T = 2000;
    float *K = malloc(planes * T * 128 * 4), *V = malloc(planes * T * 128 * 4);
    for (int i = 0; i < 6; i++) { /* ~8 MB of f32 per document */
        make_kv((uint64_t)i, planes, T, 128, K, V);
        msadb_doc doc = {0};
        doc.n_tokens = T;
        doc.kv_dtype = MSADB_DTYPE_F32;
        doc.keys = K;
        doc.values = V;
        CHECK_OK(msadb_doc_append(st, &doc, NULL));
    }
    msadb_stat_info si;
    CHECK_OK(msadb_stat(st, &si));
    CHECK(si.map_size > (1u << 20) && si.n_documents == 6);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
    free(K);
    free(V);
}

static void count_problem(const char *p, void *ud)
{
    (void)p;
    (*(int *)ud)++;
}

/* verify finds a corrupted block and a tampered summary. */
static void test_verify_detects(void)
{
    const char *dir = tu_tmpdir("verify");
    msadb_signature sig = small_sig(MSADB_DTYPE_F16, 8);
    const uint32_t planes = msadb_signature_planes(&sig);
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, NULL, &st));
    const size_t T = 40;
    float *K = malloc(planes * T * 16 * 4), *V = malloc(planes * T * 16 * 4);
    make_kv(3, planes, T, 16, K, V);
    msadb_doc doc = {0};
    doc.n_tokens = T;
    doc.kv_dtype = MSADB_DTYPE_F32;
    doc.keys = K;
    doc.values = V;
    CHECK_OK(msadb_doc_append(st, &doc, NULL));
    CHECK_OK(msadb_verify(st, NULL, NULL));

    MDB_txn *txn;
    uint8_t key[16], buf[8192];
    /* flip one byte of block 2, plane 1 */
    msadb_key_block(key, 2);
    CHECK_OK(mdb_txn_begin(st->env, NULL, 0, &txn));
    MDB_val k = {8, key}, v;
    CHECK_OK(mdb_get(txn, st->db_blocks, &k, &v));
    CHECK(v.mv_size < sizeof buf);
    const uint8_t *part;
    size_t part_len;
    CHECK_OK(msadb_block_part(v.mv_data, v.mv_size, planes, 1, &part, &part_len));
    size_t flip = (size_t)(part - (const uint8_t *)v.mv_data) + part_len / 2;
    memcpy(buf, v.mv_data, v.mv_size);
    buf[flip] ^= 0x10;
    v.mv_data = buf;
    CHECK_OK(mdb_put(txn, st->db_blocks, &k, &v, 0));
    CHECK_OK(mdb_txn_commit(txn));
    int problems = 0;
    CHECK_RC(msadb_verify(st, count_problem, &problems), MSADB_ECORRUPT);
    CHECK(problems == 1);
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    float *Kb = malloc(T * 16 * 4);
    CHECK_RC(msadb_doc_kv(snap, 1, 1, Kb, NULL), MSADB_ECORRUPT);
    CHECK_OK(msadb_doc_kv(snap, 1, 0, Kb, NULL));
    msadb_snapshot_end(snap);

    /* put it back, then tamper with a summary (mean of slot 0, plane 0) */
    CHECK_OK(mdb_txn_begin(st->env, NULL, 0, &txn));
    buf[flip] ^= 0x10;
    CHECK_OK(mdb_put(txn, st->db_blocks, &k, &v, 0));
    msadb_key_summ(key, 0, 0, 0);
    MDB_val ks = {16, key};
    CHECK_OK(mdb_get(txn, st->db_summ, &ks, &v));
    memcpy(buf, v.mv_data, v.mv_size);
    buf[0] ^= 1;
    v.mv_data = buf;
    CHECK_OK(mdb_put(txn, st->db_summ, &ks, &v, 0));
    CHECK_OK(mdb_txn_commit(txn));
    problems = 0;
    CHECK_RC(msadb_verify(st, count_problem, &problems), MSADB_ECORRUPT);
    /* the summary, and the index page computed from it when the changed
     * representatives are among those the index keeps */
    CHECK(problems == 1 || problems == 2);
    msadb_close(st);
    free(K);
    free(V);
    free(Kb);
}

/* The model record: absent, set, read back, replaced, refused for another
 * shape or bad input; it survives a reopen. */
static void test_model_record(void)
{
    const char *dir = tu_tmpdir("model");
    msadb_signature sig = small_sig(MSADB_DTYPE_F16, 8);
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, NULL, &st));
    msadb_model_id id, got;
    CHECK_RC(msadb_store_get_model(st, &got), MSADB_ENOTFOUND);
    memset(&id, 0, sizeof id);
    snprintf(id.path, sizeof id.path, "/models/a.gguf");
    for (int i = 0; i < MSADB_MODEL_HASH_BYTES; i++)
        id.hash[i] = (uint8_t)(i * 7 + 1);
    id.file_size = 123456789;
    id.n_layers = sig.n_layers;
    id.n_kv_heads = sig.n_kv_heads;
    id.n_q_heads = sig.n_q_heads;
    id.head_dim = sig.head_dim;
    CHECK_OK(msadb_store_set_model(st, &id));
    CHECK_OK(msadb_store_get_model(st, &got));
    CHECK(memcmp(&id, &got, sizeof id) == 0);
    msadb_model_id other = id;
    other.head_dim = 32;
    CHECK_RC(msadb_store_set_model(st, &other), MSADB_ESIGNATURE);
    other = id;
    other.path[0] = 0;
    CHECK_RC(msadb_store_set_model(st, &other), MSADB_EINVAL);
    CHECK_RC(msadb_store_set_model(NULL, &id), MSADB_EINVAL);
    CHECK_RC(msadb_store_get_model(st, NULL), MSADB_EINVAL);
    snprintf(id.path, sizeof id.path, "/elsewhere/b.gguf");
    id.hash[0] ^= 0xff;
    CHECK_OK(msadb_store_set_model(st, &id));
    msadb_close(st);
    msadb_options ro;
    msadb_options_init(&ro);
    ro.read_only = 1;
    CHECK_OK(msadb_open(dir, NULL, &ro, &st));
    CHECK_OK(msadb_store_get_model(st, &got));
    CHECK(memcmp(&id, &got, sizeof id) == 0);
    CHECK_RC(msadb_store_set_model(st, &id), MSADB_EREADONLY);
    msadb_close(st);
}

/* vacuum: after deleting most documents the data file shrinks, the store
 * keeps what was not deleted and verifies; refused while another process
 * holds the store open. */
static void test_vacuum(void)
{
    const char *dir = tu_tmpdir("vacuum");
    char path[600];
    snprintf(path, sizeof path, "%s/db", dir);
    msadb_signature sig = small_sig(MSADB_DTYPE_F32, 8);
    const uint32_t planes = msadb_signature_planes(&sig), d = sig.head_dim;
    const size_t T = 512;
    float *K = malloc(planes * T * d * 4), *V = malloc(planes * T * d * 4);
    msadb_store *st;
    CHECK_OK(msadb_create(path, &sig, NULL, &st));
    uint64_t ids[40];
    for (int i = 0; i < 40; i++) {
        make_kv((uint64_t)i + 1, planes, T, d, K, V);
        msadb_doc doc = {0};
        doc.n_tokens = T;
        doc.kv_dtype = MSADB_DTYPE_F32;
        doc.keys = K;
        doc.values = V;
        CHECK_OK(msadb_doc_append(st, &doc, &ids[i]));
    }
    CHECK_OK(msadb_doc_delete(st, ids, 39));
    CHECK_OK(msadb_compact(st));
    /* open in this process: LMDB's lock is per process, so the check
     * cannot see it; a child holds it instead */
    msadb_close(st);
    int up[2], down[2]; /* child -> parent: opened; parent -> child: done */
    CHECK(pipe(up) == 0 && pipe(down) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        msadb_store *cst;
        char c = msadb_open(path, NULL, NULL, &cst) == 0 ? 'y' : 'n';
        if (write(up[1], &c, 1) != 1)
            _exit(1);
        char buf;
        if (read(down[0], &buf, 1) < 0)
            _exit(1);
        _exit(0);
    }
    char c = 0;
    CHECK(read(up[0], &c, 1) == 1 && c == 'y');
    uint64_t before = 0, after = 0;
    CHECK_RC(msadb_vacuum(path, NULL, &before, &after), MSADB_EBUSY);
    CHECK(write(down[1], "x", 1) == 1);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status));
    close(up[0]);
    close(up[1]);
    close(down[0]);
    close(down[1]);
    CHECK_OK(msadb_vacuum(path, NULL, &before, &after));
    CHECK(after * 4 < before);
    CHECK_OK(msadb_open(path, NULL, NULL, &st));
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    msadb_doc_info info;
    CHECK_OK(msadb_doc_get(snap, ids[39], &info));
    CHECK(info.n_tokens == T);
    CHECK_RC(msadb_doc_get(snap, ids[0], &info), MSADB_ENOTFOUND);
    float *K2 = malloc(T * d * 4);
    make_kv(40, planes, T, d, K, V);
    CHECK_OK(msadb_doc_kv(snap, ids[39], 1, K2, NULL));
    CHECK(memcmp(K2, K + T * d, T * d * 4) == 0);
    msadb_snapshot_end(snap);
    msadb_close(st);
    char missing[700];
    snprintf(missing, sizeof missing, "%s/none", dir);
    CHECK_RC(msadb_vacuum(missing, NULL, NULL, NULL), ENOENT);
    CHECK_RC(msadb_vacuum(NULL, NULL, NULL, NULL), MSADB_EINVAL);
    free(K);
    free(K2);
    free(V);
}

int main(void)
{
    test_signature();
    test_create_open();
    test_spaces();
    for (int dt = MSADB_DTYPE_F32; dt <= MSADB_DTYPE_Q4; dt++)
        test_documents(dt);
    test_batches_and_pages();
    test_map_growth();
    test_verify_detects();
    test_model_record();
    test_vacuum();
    printf("test_store: ok\n");
    return 0;
}
