/* test_tenants.c -- spaces as tenants: a handle limited to one space
 * (msadb_store_scope) reaches nothing of another space through any call. */
#include <lmdb.h>
#include <string.h>

#include "msadb.h"
#include "testutil.h"

enum { D = 16, B = 8, T = 24 };

static uint64_t add_doc(msadb_store *st, const char *space, uint64_t seed, const char *key)
{
    uint32_t planes = msadb_signature_planes(msadb_store_signature(st));
    float *K = malloc(planes * T * D * 4), *V = malloc(planes * T * D * 4);
    tu_make_kv(seed, planes * T * D, K, V);
    msadb_doc doc = {0};
    doc.space = space;
    doc.title = "a title";
    doc.text = "some text";
    doc.text_len = 9;
    doc.meta = "k=v";
    doc.meta_len = 3;
    doc.key = key;
    doc.key_len = key ? strlen(key) : 0;
    return tu_append_f32(st, &doc, T, K, V);
}

static msadb_store *create_store(const char *dir, const unsigned char *key)
{
    return tu_create(dir, 1, D, B, MSADB_DTYPE_F32, key);
}

/* A query of layer 1 over `spaces` (NULL: all): every hit, exact and
 * routed, is one of the n_ok documents ok (and the exact one has some);
 * returns the attend's result for the routed query. */
static int attend_only(msadb_snapshot *s, const char *const *spaces, size_t n_spaces, const uint64_t *ok,
                       size_t n_ok, msadb_hit *first)
{
    float q[2 * D], out[2 * D], lse[2];
    uint64_t rs = 9;
    tu_fill_randn(&rs, q, 2 * D, 1.0f);
    msadb_query qq;
    msadb_query_init(&qq);
    qq.layer = 1;
    qq.q = q;
    qq.n_query = 1;
    qq.top_k = 64;
    qq.spaces = spaces;
    qq.n_spaces = n_spaces;
    msadb_hit hits[64];
    for (int exact = 1; exact >= 0; exact--) {
        size_t nh = 0;
        qq.exact = exact;
        int rc = msadb_attend(s, &qq, out, lse, hits, 64, &nh);
        if (rc)
            return rc;
        CHECK(nh <= 64 && (nh > 0 || !exact));
        for (size_t i = 0; i < nh; i++) {
            size_t j = 0;
            while (j < n_ok && hits[i].doc_id != ok[j])
                j++;
            CHECK(j < n_ok);
        }
        if (first && nh)
            *first = hits[0];
    }
    return 0;
}

typedef struct seen {
    uint64_t ids[16];
    size_t n;
    char spaces[8][MSADB_NAME_MAX + 1];
    size_t n_spaces;
} seen;

static int doc_cb(const msadb_doc_info *d, void *ud)
{
    seen *s = ud;
    CHECK(s->n < 16);
    s->ids[s->n++] = d->id;
    return 0;
}

static int space_cb(const msadb_space_info *i, void *ud)
{
    seen *s = ud;
    CHECK(s->n_spaces < 8);
    snprintf(s->spaces[s->n_spaces++], MSADB_NAME_MAX + 1, "%s", i->name);
    return 0;
}

static msadb_store *open_store(const char *dir, const unsigned char *key)
{
    msadb_options opt;
    msadb_options_init(&opt);
    opt.key = key;
    msadb_store *st;
    CHECK_OK(msadb_open(dir, NULL, &opt, &st));
    return st;
}

/* Whether document id exists, seen by an unlimited handle. */
static int exists(const char *dir, const unsigned char *key, uint64_t id)
{
    msadb_store *st = open_store(dir, key);
    msadb_snapshot *s;
    msadb_doc_info info;
    CHECK_OK(msadb_snapshot_begin(st, &s));
    int rc = msadb_doc_get(s, id, &info);
    CHECK(rc == 0 || rc == MSADB_ENOTFOUND);
    msadb_snapshot_end(s);
    msadb_close(st);
    return rc == 0;
}

static void test_scope(const unsigned char *key)
{
    const char *dir = tu_tmpdir("tenants");
    msadb_store *st = create_store(dir, key);
    CHECK_OK(msadb_space_create(st, "A", NULL));
    CHECK_OK(msadb_space_create(st, "B", NULL));
    uint64_t a1 = add_doc(st, "A", 1, "key-a1"), a2 = add_doc(st, "A", 2, NULL);
    uint64_t b1 = add_doc(st, "B", 3, "key-b1");
    msadb_close(st);

    st = open_store(dir, key);
    CHECK_RC(msadb_store_scope(NULL, "A"), MSADB_EINVAL);
    CHECK_RC(msadb_store_scope(st, "bad name!"), MSADB_EINVAL);
    CHECK_RC(msadb_store_scope(st, "nope"), MSADB_ENOTFOUND);
    CHECK_OK(msadb_store_scope(st, "A"));
    CHECK_OK(msadb_store_scope(st, "A"));              /* the same space again: nothing */
    CHECK_RC(msadb_store_scope(st, "B"), MSADB_ESCOPE); /* never widened or moved */

    /* every read of B's document is refused */
    msadb_snapshot *s;
    CHECK_OK(msadb_snapshot_begin(st, &s));
    msadb_doc_info info;
    char buf[64];
    size_t len;
    int32_t tok[T];
    float kv[T * D];
    CHECK_OK(msadb_doc_get(s, a1, &info));
    CHECK(strcmp(info.space, "A") == 0);
    CHECK_RC(msadb_doc_get(s, b1, &info), MSADB_ESCOPE);
    CHECK_RC(msadb_doc_text(s, b1, buf, sizeof buf, &len), MSADB_ESCOPE);
    CHECK_RC(msadb_doc_meta(s, b1, buf, sizeof buf, &len), MSADB_ESCOPE);
    CHECK_RC(msadb_doc_tokens(s, b1, tok, NULL, T), MSADB_ESCOPE);
    CHECK_RC(msadb_doc_kv(s, b1, 0, kv, kv), MSADB_ESCOPE);
    CHECK_OK(msadb_doc_kv(s, a1, 0, kv, NULL));
    uint64_t found = 0;
    CHECK_OK(msadb_doc_find_key(s, "key-a1", 6, &found));
    CHECK(found == a1);
    CHECK_RC(msadb_doc_find_key(s, "key-b1", 6, &found), MSADB_ESCOPE);

    /* listings show the space alone */
    seen sn = {0};
    CHECK_OK(msadb_doc_list(s, NULL, doc_cb, &sn));
    CHECK(sn.n == 2 && sn.ids[0] == a1 && sn.ids[1] == a2);
    sn.n = 0;
    CHECK_OK(msadb_doc_list(s, "A", doc_cb, &sn));
    CHECK(sn.n == 2);
    CHECK_RC(msadb_doc_list(s, "B", doc_cb, &sn), MSADB_ESCOPE);
    const char *where[] = {"k=v"};
    sn.n = 0;
    CHECK_OK(msadb_doc_list_where(s, NULL, where, 1, doc_cb, &sn));
    CHECK(sn.n == 2);
    CHECK_OK(msadb_space_list(st, space_cb, &sn));
    CHECK(sn.n_spaces == 1 && strcmp(sn.spaces[0], "A") == 0);
    msadb_space_info si;
    CHECK_OK(msadb_space_get(st, "A", &si));
    CHECK_RC(msadb_space_get(st, "B", &si), MSADB_ESCOPE);
    CHECK_RC(msadb_space_get(st, "default", &si), MSADB_ESCOPE);

    /* queries read the space alone; naming another is refused */
    const uint64_t in_a[] = {a1, a2};
    msadb_hit forged;
    CHECK_OK(attend_only(s, NULL, 0, in_a, 2, &forged));
    const char *other[] = {"B"};
    CHECK_RC(attend_only(s, other, 1, in_a, 2, NULL), MSADB_ESCOPE);
    forged.doc_id = b1;
    float q[2 * D] = {0}, out[2 * D], lse[2];
    msadb_query qq;
    msadb_query_init(&qq);
    qq.layer = 1;
    qq.q = q;
    qq.n_query = 1;
    CHECK_RC(msadb_attend_blocks(s, &qq, &forged, 1, out, lse), MSADB_ESCOPE);
    msadb_snapshot_end(s);

    /* writes: nothing of B can be deleted, dropped or added to */
    uint64_t mixed[] = {a2, b1};
    CHECK_RC(msadb_doc_delete(st, mixed, 2), MSADB_ESCOPE);
    CHECK_RC(msadb_doc_delete(st, &b1, 1), MSADB_ESCOPE);
    CHECK_RC(msadb_space_drop(st, "B"), MSADB_ESCOPE);
    CHECK_RC(msadb_space_create(st, "C", NULL), MSADB_ESCOPE);
    CHECK_RC(msadb_verify(st, NULL, NULL), MSADB_ESCOPE);
    CHECK_RC(msadb_upgrade(st), MSADB_ESCOPE);
    msadb_batch *bt;
    CHECK_OK(msadb_batch_begin(st, &bt));
    float K[T * D * 1], V[T * D * 1];
    tu_make_kv(4, T * D, K, V);
    msadb_doc doc = tu_doc_f32(T, K, V);
    doc.space = "B";
    CHECK_RC(msadb_batch_add(bt, &doc), MSADB_ESCOPE);
    doc.space = NULL; /* the handle's space */
    CHECK_OK(msadb_batch_add(bt, &doc));
    uint64_t a3 = 0;
    CHECK_OK(msadb_batch_commit(bt, &a3));
    CHECK_OK(msadb_doc_delete(st, &a2, 1));
    CHECK_OK(msadb_compact(st));
    msadb_close(st);

    CHECK(exists(dir, key, a1) && !exists(dir, key, a2) && exists(dir, key, b1) && exists(dir, key, a3));
    st = open_store(dir, key);
    CHECK_OK(msadb_snapshot_begin(st, &s));
    CHECK_OK(msadb_doc_get(s, a3, &info));
    CHECK(strcmp(info.space, "A") == 0);
    msadb_snapshot_end(s);
    CHECK_OK(msadb_verify(st, NULL, NULL));

    /* a space dropped and made again under the same name is another space */
    msadb_store *st2 = open_store(dir, key);
    CHECK_OK(msadb_store_scope(st2, "B"));
    CHECK_OK(msadb_space_drop(st, "B"));
    CHECK_OK(msadb_space_create(st, "B", NULL));
    uint64_t b2 = add_doc(st, "B", 5, NULL);
    CHECK_OK(msadb_snapshot_begin(st2, &s));
    CHECK_RC(msadb_doc_get(s, b2, &info), MSADB_ESCOPE);
    msadb_snapshot_end(s);
    msadb_close(st2);
    msadb_close(st);
}

/* Flips one byte of a stored value (offset from its end when negative),
 * or restores it (flip it again). */
static void flip(const char *dir, const char *db, const void *key, size_t klen, long off)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    CHECK_OK(mdb_env_create(&env));
    CHECK_OK(mdb_env_set_maxdbs(env, 32));
    CHECK_OK(mdb_env_open(env, dir, MDB_NOSYNC, 0600));
    CHECK_OK(mdb_txn_begin(env, NULL, 0, &txn));
    CHECK_OK(mdb_dbi_open(txn, db, 0, &dbi));
    MDB_val k = {klen, (void *)key}, v;
    CHECK_OK(mdb_get(txn, dbi, &k, &v));
    uint8_t *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[off < 0 ? (long)v.mv_size + off : off] ^= 0x20;
    MDB_val nv = {v.mv_size, copy};
    CHECK_OK(mdb_put(txn, dbi, &k, &nv, 0));
    CHECK_OK(mdb_txn_commit(txn));
    mdb_env_close(env);
    free(copy);
}

static void be(uint8_t *p, uint64_t x, int n)
{
    for (int i = n - 1; i >= 0; i--, x >>= 8)
        p[i] = (uint8_t)x;
}

static const unsigned char kb[32] = {9, 8, 7, 6, 5, 4, 3, 2, 1};
static const char pc[] = "tenant C's passphrase";

/* A handle with the store key and the keys given (NULL: none). */
static msadb_store *tenant(const char *dir, const unsigned char *key, int with_b, int with_c)
{
    msadb_store *st = open_store(dir, key);
    if (with_b)
        CHECK_OK(msadb_space_unlock(st, "B", kb, NULL));
    if (with_c)
        CHECK_OK(msadb_space_unlock(st, "C", NULL, pc));
    return st;
}

/* Space names are not in an encrypted store's file (the keys of `spaces`
 * are keyed hashes, the names sealed in `spaceids`); listings, compaction
 * and verify walk the names.  A plain store shows them. */
static void test_hidden_names(const unsigned char *key)
{
    const char *dir = tu_tmpdir("names");
    msadb_store *st = create_store(dir, key);
    const char *names[] = {"zeta-project-name", "alpha-project-name", "mid-project-name"};
    for (int i = 0; i < 3; i++)
        CHECK_OK(msadb_space_create(st, names[i], NULL));
    uint64_t id = add_doc(st, "zeta-project-name", 21, NULL), id2 = add_doc(st, "alpha-project-name", 22, NULL);
    CHECK_OK(msadb_doc_delete(st, &id2, 1));
    CHECK_OK(msadb_compact(st));
    seen sn = {0};
    CHECK_OK(msadb_space_list(st, space_cb, &sn));
    CHECK(sn.n_spaces == 4 && !strcmp(sn.spaces[0], "alpha-project-name") && !strcmp(sn.spaces[1], "default") &&
          !strcmp(sn.spaces[2], "mid-project-name") && !strcmp(sn.spaces[3], "zeta-project-name"));
    msadb_space_info si;
    CHECK_OK(msadb_space_get(st, "zeta-project-name", &si));
    CHECK(si.n_documents == 1);
    CHECK_OK(msadb_space_drop(st, "mid-project-name"));
    CHECK_RC(msadb_space_get(st, "mid-project-name", &si), MSADB_ENOTFOUND);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
    char data[600];
    snprintf(data, sizeof data, "%s/data.mdb", dir);
    for (int i = 0; i < 3; i++)
        CHECK(tu_file_contains(data, names[i], strlen(names[i])) == (key == NULL));
    CHECK(exists(dir, key, id));
}

static void test_keyed(void)
{
    const char *dir = tu_tmpdir("keyed");
    unsigned char key[32];
    for (int i = 0; i < 32; i++)
        key[i] = (unsigned char)(200 - i);

    /* a plain store has no keyed spaces */
    msadb_store *st = create_store(dir, NULL);
    CHECK_RC(msadb_space_create_keyed(st, "B", kb, NULL, NULL), MSADB_EINVAL);
    msadb_close(st);
    tu_rmtree(dir);

    st = create_store(dir, key);
    CHECK_RC(msadb_space_create_keyed(st, "B", kb, pc, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_space_create_keyed(st, "B", NULL, NULL, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_space_create_keyed(st, "B", NULL, "", NULL), MSADB_EINVAL);
    CHECK_OK(msadb_space_create(st, "A", NULL));
    uint32_t bid = 0;
    CHECK_OK(msadb_space_create_keyed(st, "B", kb, NULL, &bid));
    CHECK_RC(msadb_space_create_keyed(st, "B", kb, NULL, NULL), MSADB_EEXIST);
    CHECK_OK(msadb_space_create_keyed(st, "C", NULL, pc, NULL));
    msadb_stat_info si;
    CHECK_OK(msadb_stat(st, &si));
    CHECK(si.format_version == 5);
    uint64_t a1 = add_doc(st, "A", 11, "ka"), b1 = add_doc(st, "B", 12, "kb"), c1 = add_doc(st, "C", 13, NULL);
    msadb_close(st);

    /* the store key alone: B and C are names and counts, nothing more */
    st = tenant(dir, key, 0, 0);
    seen sn = {0};
    msadb_space_info info;
    CHECK_OK(msadb_space_get(st, "B", &info));
    CHECK(info.keyed && info.locked && info.id == bid);
    CHECK_OK(msadb_space_get(st, "A", &info));
    CHECK(!info.keyed && !info.locked);
    msadb_snapshot *s;
    msadb_doc_info di;
    char buf[64];
    size_t len;
    float kv[T * D];
    CHECK_OK(msadb_snapshot_begin(st, &s));
    CHECK_RC(msadb_doc_get(s, b1, &di), MSADB_EKEY);
    CHECK_RC(msadb_doc_get(s, c1, &di), MSADB_EKEY);
    CHECK_RC(msadb_doc_text(s, b1, buf, sizeof buf, &len), MSADB_EKEY);
    CHECK_RC(msadb_doc_meta(s, b1, buf, sizeof buf, &len), MSADB_EKEY);
    CHECK_RC(msadb_doc_kv(s, b1, 0, kv, kv), MSADB_EKEY);
    uint64_t found;
    CHECK_RC(msadb_doc_find_key(s, "kb", 2, &found), MSADB_EKEY);
    CHECK_OK(msadb_doc_list(s, NULL, doc_cb, &sn));
    CHECK(sn.n == 1 && sn.ids[0] == a1);
    CHECK_RC(msadb_doc_list(s, "B", doc_cb, &sn), MSADB_EKEY);
    CHECK_OK(attend_only(s, NULL, 0, &a1, 1, NULL));
    const char *onlyb[] = {"B"};
    CHECK_RC(attend_only(s, onlyb, 1, &a1, 1, NULL), MSADB_EKEY);
    msadb_snapshot_end(s);
    CHECK_RC(msadb_doc_delete(st, &b1, 1), MSADB_EKEY);
    CHECK_RC(msadb_space_drop(st, "B"), MSADB_EKEY);
    CHECK_RC(msadb_verify(st, NULL, NULL), MSADB_EKEY);
    CHECK_RC(msadb_upgrade(st), MSADB_EKEY);
    CHECK_OK(msadb_compact(st));
    float K[T * D], V[T * D];
    tu_make_kv(4, T * D, K, V);
    msadb_doc doc = tu_doc_f32(T, K, V);
    doc.space = "B";
    uint64_t nid;
    CHECK_RC(msadb_doc_append(st, &doc, &nid), MSADB_EKEY);
    /* wrong keys */
    unsigned char wrong[32];
    memcpy(wrong, kb, 32);
    wrong[5] ^= 1;
    CHECK_RC(msadb_space_unlock(st, "B", wrong, NULL), MSADB_EKEY);
    CHECK_RC(msadb_space_unlock(st, "B", NULL, pc), MSADB_EKEY);
    CHECK_RC(msadb_space_unlock(st, "C", NULL, "not it"), MSADB_EKEY);
    CHECK_RC(msadb_space_unlock(st, "C", kb, NULL), MSADB_EKEY);
    CHECK_RC(msadb_space_unlock(st, "C", key, NULL), MSADB_EKEY); /* the store key is not C's */
    CHECK_RC(msadb_space_unlock(st, "A", kb, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_space_unlock(st, "nope", kb, NULL), MSADB_ENOTFOUND);
    msadb_close(st);
    CHECK(exists(dir, key, a1));

    /* tenant B: its own documents, nothing of C, and with a scope nothing of A */
    st = tenant(dir, key, 1, 0);
    CHECK_OK(msadb_store_scope(st, "B"));
    CHECK_OK(msadb_snapshot_begin(st, &s));
    CHECK_OK(msadb_doc_get(s, b1, &di));
    CHECK(strcmp(di.space, "B") == 0 && strcmp(di.title, "a title") == 0);
    CHECK_OK(msadb_doc_text(s, b1, buf, sizeof buf, &len));
    CHECK(len == 9 && memcmp(buf, "some text", 9) == 0);
    CHECK_OK(msadb_doc_find_key(s, "kb", 2, &found));
    CHECK(found == b1);
    CHECK_RC(msadb_doc_get(s, a1, &di), MSADB_ESCOPE);
    CHECK_RC(msadb_doc_get(s, c1, &di), MSADB_ESCOPE);
    sn.n = 0;
    CHECK_OK(msadb_doc_list(s, NULL, doc_cb, &sn));
    CHECK(sn.n == 1 && sn.ids[0] == b1);
    CHECK_OK(attend_only(s, NULL, 0, &b1, 1, NULL));
    uint64_t first_block = di.first_block;
    msadb_snapshot_end(s);
    doc.space = NULL;
    uint64_t b2 = 0;
    CHECK_OK(msadb_doc_append(st, &doc, &b2));
    CHECK_OK(msadb_doc_delete(st, &b2, 1));
    CHECK_OK(msadb_compact(st));
    msadb_close(st);

    /* every key: verify passes; flipped bytes of B's records are found */
    st = tenant(dir, key, 1, 1);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
    uint8_t kdoc[8], kslot[12], ksumm[16], kblock[8], kdata[9];
    be(kdoc, b1, 8);
    be(kslot, bid, 4);
    be(kslot + 4, 0, 8);
    memcpy(ksumm, kslot, 4);
    be(ksumm + 4, 0, 4);
    be(ksumm + 8, 0, 8);
    be(kblock, first_block, 8);
    memcpy(kdata, kdoc, 8);
    kdata[8] = 3; /* the text */
    struct {
        const char *db;
        const uint8_t *k;
        size_t n;
        long off;
    } edits[] = {{"docs", kdoc, 8, 30}, {"docs", kdoc, 8, -1}, {"docs", kdoc, 8, 4},
                 {"slots", kslot, 12, 30}, {"summ", ksumm, 16, 40}, {"summ", ksumm, 16, -1},
                 {"blocks", kblock, 8, -3}, {"docdata", kdata, 9, 26}};
    for (size_t e = 0; e < sizeof edits / sizeof edits[0]; e++) {
        flip(dir, edits[e].db, edits[e].k, edits[e].n, edits[e].off);
        st = tenant(dir, key, 1, 1);
        CHECK_RC(msadb_verify(st, NULL, NULL), MSADB_ECORRUPT);
        msadb_close(st);
        flip(dir, edits[e].db, edits[e].k, edits[e].n, edits[e].off);
    }
    st = tenant(dir, key, 1, 1);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    /* dropping a keyed space with its key */
    CHECK_OK(msadb_space_drop(st, "C"));
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
    CHECK(!exists(dir, key, c1) && exists(dir, key, a1));
}

int main(void)
{
    test_scope(NULL);
    unsigned char key[32];
    for (int i = 0; i < 32; i++)
        key[i] = (unsigned char)(i * 5 + 3);
    test_scope(key);
    test_keyed();
    test_hidden_names(NULL);
    test_hidden_names(key);
    puts("test_tenants: ok");
    return 0;
}
