/* test_reliability.c -- the store's honest edges and encrypted metadata:
 * Argon2 parameters bounded before any work, meta records (signature,
 * counters, key parameters) authenticated in encrypted stores (every byte
 * of every meta record flipped, one at a time), stores made before the MAC
 * still opening and gaining it on their first write, counters checked by
 * verify, magnitudes an f16 store cannot hold refused, titles UTF-8, files
 * 0600, and stat's readers and space. */
#include <lmdb.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

#include <sodium.h>

#include "core/crypto.h"
#include "msadb.h"
#include "testutil.h"

enum { D = 8, T = 20 };
static const unsigned char key[MSADB_KEY_BYTES] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
static float K[2 * T * D], V[2 * T * D];

static void sig_init(msadb_signature *sig, int dtype)
{
    CHECK_OK(msadb_signature_init(sig, 2, 1, 2, D));
    sig->block_size = 8;
    sig->dtype = (uint32_t)dtype;
}

static msadb_doc doc_init(void)
{
    msadb_doc d = {0};
    d.title = "doc";
    d.n_tokens = T;
    d.kv_dtype = MSADB_DTYPE_F32;
    d.keys = K;
    d.values = V;
    return d;
}

static void opts(msadb_options *o, const unsigned char *k, const char *pass)
{
    msadb_options_init(o);
    o->no_sync = 1;
    o->key = k;
    o->passphrase = pass;
}

/* Raw LMDB access to the meta database of a closed store. */
typedef struct {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta;
} raw;

static void raw_begin(raw *r, const char *dir)
{
    CHECK_OK(mdb_env_create(&r->env));
    CHECK_OK(mdb_env_set_maxdbs(r->env, 16));
    CHECK_OK(mdb_env_open(r->env, dir, MDB_NOSYNC, 0600));
    CHECK_OK(mdb_txn_begin(r->env, NULL, 0, &r->txn));
    CHECK_OK(mdb_dbi_open(r->txn, "meta", 0, &r->meta));
}

static void raw_end(raw *r)
{
    CHECK_OK(mdb_txn_commit(r->txn));
    mdb_env_close(r->env);
}

static size_t meta_get(raw *r, const char *name, uint8_t *buf, size_t cap)
{
    MDB_val k = {strlen(name), (void *)name}, v;
    CHECK_OK(mdb_get(r->txn, r->meta, &k, &v));
    CHECK(v.mv_size <= cap);
    memcpy(buf, v.mv_data, v.mv_size);
    return v.mv_size;
}

static void meta_put(raw *r, const char *name, const uint8_t *buf, size_t len)
{
    MDB_val k = {strlen(name), (void *)name}, v = {len, (void *)buf};
    CHECK_OK(mdb_put(r->txn, r->meta, &k, &v, 0));
}

static int open_rc(const char *dir, const unsigned char *k, const char *pass)
{
    msadb_options o;
    opts(&o, k, pass);
    msadb_store *st = NULL;
    int rc = msadb_open(dir, NULL, &o, &st);
    msadb_close(st);
    return rc;
}

static const char *make_store(const char *tag, const unsigned char *k, const char *pass, int dtype)
{
    const char *dir = tu_tmpdir(tag);
    msadb_signature sig;
    sig_init(&sig, dtype);
    msadb_options o;
    opts(&o, k, pass);
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, &o, &st));
    msadb_doc d = doc_init();
    CHECK_OK(msadb_doc_append(st, &d, NULL));
    CHECK_OK(msadb_doc_append(st, &d, NULL));
    msadb_close(st);
    return dir;
}

/* An edited crypt record may not ask for more Argon2 work than msadb's
 * own: refused before the KDF runs. */
static void test_kdf_bounds(void)
{
    const char *dir = make_store("kdf", NULL, "pw", MSADB_DTYPE_F32);
    CHECK_OK(open_rc(dir, NULL, "pw"));
    raw r;
    uint8_t rec[64], orig[64];
    raw_begin(&r, dir);
    size_t n = meta_get(&r, "crypt", orig, sizeof orig);
    CHECK(n == 36);
    memcpy(rec, orig, n);
    uint64_t ops = crypto_pwhash_opslimit_interactive() + 1;
    for (int i = 0; i < 8; i++)
        rec[4 + i] = (uint8_t)(ops >> (8 * i));
    meta_put(&r, "crypt", rec, n);
    raw_end(&r);
    CHECK_RC(open_rc(dir, NULL, "pw"), MSADB_ECORRUPT);
    raw_begin(&r, dir);
    memcpy(rec, orig, n);
    uint64_t mem = crypto_pwhash_memlimit_interactive() * 2;
    for (int i = 0; i < 8; i++)
        rec[12 + i] = (uint8_t)(mem >> (8 * i));
    meta_put(&r, "crypt", rec, n);
    raw_end(&r);
    CHECK_RC(open_rc(dir, NULL, "pw"), MSADB_ECORRUPT);
}

/* Every byte of every meta record of an encrypted store, flipped one at a
 * time: the store refuses to open (nothing is used unauthenticated). */
static void test_meta_flips(void)
{
    const char *dir = make_store("metaflip", key, NULL, MSADB_DTYPE_F16);
    static const char *const names[] = {"format", "signature", "store_id", "page_cap", "crypt",
                                        "next_doc", "next_block", "next_space", "keycheck",
                                        "meta_mac"};
    size_t flips = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        uint8_t orig[1024], mod[1024];
        raw r;
        raw_begin(&r, dir);
        size_t n = meta_get(&r, names[i], orig, sizeof orig);
        raw_end(&r);
        for (size_t b = 0; b < n; b++) {
            memcpy(mod, orig, n);
            mod[b] ^= 0x01;
            raw_begin(&r, dir);
            meta_put(&r, names[i], mod, n);
            raw_end(&r);
            int rc = open_rc(dir, key, NULL);
            if (rc == 0)
                fprintf(stderr, "meta %s byte %zu: an edit opened\n", names[i], b);
            CHECK(rc != 0);
            flips++;
            raw_begin(&r, dir);
            meta_put(&r, names[i], orig, n);
            raw_end(&r);
        }
        /* and the record removed */
        raw_begin(&r, dir);
        MDB_val k = {strlen(names[i]), (void *)names[i]};
        CHECK_OK(mdb_del(r.txn, r.meta, &k, NULL));
        raw_end(&r);
        CHECK(open_rc(dir, key, NULL) != 0);
        raw_begin(&r, dir);
        meta_put(&r, names[i], orig, n);
        raw_end(&r);
    }
    CHECK_OK(open_rc(dir, key, NULL));
    printf("test_reliability: %zu meta byte flips refused at open\n", flips);
}

/* A store written before meta records had a MAC (key check v1, no
 * meta_mac) opens, and its first write adds the MAC; from then on,
 * removing the MAC is refused. */
static void test_legacy_store(void)
{
    const char *dir = make_store("legacy", key, NULL, MSADB_DTYPE_F32);
    raw r;
    raw_begin(&r, dir);
    uint8_t sid[16], sealed[128], ad[24];
    meta_get(&r, "store_id", sid, sizeof sid);
    memcpy(ad, sid, 16);
    memcpy(ad + 16, "keycheck", 8);
    const char *v1 = "msadb key check v1";
    CHECK_OK(msadb_seal(key, ad, 24, (const uint8_t *)v1, strlen(v1), sealed));
    meta_put(&r, "keycheck", sealed, strlen(v1) + MSADB_SEAL_OVERHEAD);
    MDB_val k = {8, (void *)"meta_mac"};
    CHECK_OK(mdb_del(r.txn, r.meta, &k, NULL));
    raw_end(&r);

    msadb_options o;
    opts(&o, key, NULL);
    msadb_store *st;
    CHECK_OK(msadb_open(dir, NULL, &o, &st));
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_doc d = doc_init();
    CHECK_OK(msadb_doc_append(st, &d, NULL));
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
    CHECK_OK(open_rc(dir, key, NULL));
    raw_begin(&r, dir);
    uint8_t mac[32];
    CHECK(meta_get(&r, "meta_mac", mac, sizeof mac) == 32);
    CHECK_OK(mdb_del(r.txn, r.meta, &k, NULL));
    raw_end(&r);
    CHECK_RC(open_rc(dir, key, NULL), MSADB_EAUTH);
}

static int n_problems;
static void count_problem(const char *p, void *ud)
{
    (void)ud;
    (void)p;
    n_problems++;
}

/* A counter behind the ids in use is reported by verify (plain stores,
 * where nothing authenticates it): a later write would collide. */
static void test_counters_verified(void)
{
    const char *dir = make_store("counters", NULL, NULL, MSADB_DTYPE_F32);
    raw r;
    raw_begin(&r, dir);
    uint8_t one[8] = {1};
    meta_put(&r, "next_doc", one, 8);
    raw_end(&r);
    msadb_store *st;
    CHECK_OK(msadb_open(dir, NULL, NULL, &st));
    n_problems = 0;
    CHECK_RC(msadb_verify(st, count_problem, NULL), MSADB_ECORRUPT);
    CHECK(n_problems == 1);
    msadb_close(st);
}

/* f16 holds magnitudes up to 65504: a bigger key (mean summaries, f16
 * storage) or value (f16 storage) is refused, not clamped or infinite. */
static void test_magnitudes(void)
{
    const char *dir = make_store("range", NULL, NULL, MSADB_DTYPE_F16);
    msadb_store *st;
    CHECK_OK(msadb_open(dir, NULL, NULL, &st));
    msadb_doc d = doc_init();
    K[5] = 65504.0f;
    CHECK_OK(msadb_doc_append(st, &d, NULL));
    K[5] = 3e38f;
    CHECK_RC(msadb_doc_append(st, &d, NULL), MSADB_ERANGE);
    K[5] = 0.5f;
    V[7] = -70000.0f;
    CHECK_RC(msadb_doc_append(st, &d, NULL), MSADB_ERANGE);
    V[7] = 0.5f;
    CHECK(strstr(msadb_strerror(MSADB_ERANGE), "65504") != NULL);
    /* titles: UTF-8 or refused; an empty one is no title */
    d.title = "caf\xe9";
    CHECK_RC(msadb_doc_append(st, &d, NULL), MSADB_EINVAL);
    d.title = "caf\xc3\xa9";
    CHECK_OK(msadb_doc_append(st, &d, NULL));
    msadb_close(st);
    /* f32 storage with reps summaries only: any finite magnitude */
    const char *dir2 = tu_tmpdir("range32");
    msadb_signature sig;
    sig_init(&sig, MSADB_DTYPE_F32);
    sig.summary_kinds = MSADB_SUMMARY_REPS;
    CHECK_OK(msadb_create(dir2, &sig, NULL, &st));
    K[5] = 3e38f;
    d.title = NULL;
    CHECK_OK(msadb_doc_append(st, &d, NULL));
    K[5] = 0.5f;
    msadb_close(st);
}

/* Files of a store are created 0600; stat reports readers and space. */
static void test_files_and_readers(void)
{
    const char *dir = make_store("readers", NULL, NULL, MSADB_DTYPE_F32);
    char path[600];
    struct stat sb;
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 077) == 0);
    CHECK(stat(dir, &sb) == 0 && (sb.st_mode & 077) == 0);
    msadb_store *st;
    CHECK_OK(msadb_open(dir, NULL, NULL, &st));
    msadb_stat_info si;
    CHECK_OK(msadb_stat(st, &si));
    CHECK(si.readers == 0 && si.oldest_reader_lag == 0);
    CHECK(si.live_bytes > 0 && si.live_bytes <= si.map_used);
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    msadb_doc d = doc_init();
    for (int i = 0; i < 3; i++)
        CHECK_OK(msadb_doc_append(st, &d, NULL));
    CHECK_OK(msadb_stat(st, &si));
    CHECK(si.readers == 1 && si.oldest_reader_lag == 3);
    msadb_snapshot_end(snap);
    CHECK_OK(msadb_stat(st, &si));
    CHECK(si.readers == 0 && si.oldest_reader_lag == 0);
    msadb_close(st);
}

int main(void)
{
    CHECK(sodium_init() >= 0);
    tu_make_kv(7, 2 * T * D, K, V);
    test_kdf_bounds();
    test_meta_flips();
    test_legacy_store();
    test_counters_verified();
    test_magnitudes();
    test_files_and_readers();
    printf("test_reliability: ok\n");
    return 0;
}
