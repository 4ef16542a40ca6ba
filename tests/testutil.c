/* testutil.c -- see testutil.h. */
#include "testutil.h"

#include <lmdb.h>
#include <math.h>
#include <string.h>

#include <sodium.h>
#include <unistd.h>

static char tmp_paths[16][512];
static int n_tmp;

static void cleanup(void)
{
    if (getenv("MSADB_KEEP_TMP"))
        return;
    for (int i = 0; i < n_tmp; i++)
        tu_rmtree(tmp_paths[i]);
}

void tu_rmtree(const char *path)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", path);
}

const char *tu_tmpdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    static char path[512];
    snprintf(path, sizeof path, "%s/msadb-test-%s-XXXXXX", base, tag);
    if (!mkdtemp(path)) {
        perror("mkdtemp");
        exit(1);
    }
    if (n_tmp == 0)
        atexit(cleanup);
    if (n_tmp < 16)
        snprintf(tmp_paths[n_tmp++], sizeof tmp_paths[0], "%s", path);
    return path;
}

uint64_t tu_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float tu_randn(uint64_t *s)
{
    double u1 = ((tu_rand(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = ((tu_rand(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void tu_fill_randn(uint64_t *s, float *x, size_t n, float sigma)
{
    for (size_t i = 0; i < n; i++)
        x[i] = sigma * tu_randn(s);
}

void tu_make_kv(uint64_t seed, size_t n, float *K, float *V)
{
    uint64_t s = seed;
    tu_fill_randn(&s, K, n, 1.0f);
    tu_fill_randn(&s, V, n, 1.0f);
}

msadb_doc tu_doc_f32(size_t T, const float *K, const float *V)
{
    msadb_doc d = {0};
    d.n_tokens = T;
    d.kv_dtype = MSADB_DTYPE_F32;
    d.keys = K;
    d.values = V;
    return d;
}

int tu_fork_pipe(int *fd)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    int pid = fork();
    CHECK(pid >= 0);
    close(fds[pid == 0 ? 0 : 1]);
    *fd = fds[pid == 0 ? 1 : 0];
    return pid;
}

const char *tu_make_model(const char *dir, const char *name, const char *opts)
{
    static char path[1200];
    const char *root = getenv("MSADB_SOURCE_ROOT"), *py = getenv("MSADB_PYTHON");
    if (!py || !*py)
        py = "/usr/bin/python3";
    if (!root)
        return NULL;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s -c 'import numpy' 2>/dev/null", py);
    if (system(cmd) != 0)
        return NULL;
    snprintf(path, sizeof path, "%s/%s.gguf", dir, name);
    snprintf(cmd, sizeof cmd, "PYTHONPATH=%s/tools %s -m memmodel.make_test_model %s %s", root, py,
             path, opts);
    if (system(cmd) != 0) {
        fprintf(stderr, "command failed: %s\n", cmd);
        exit(1);
    }
    return path;
}

uint64_t tu_append_f32(msadb_store *st, msadb_doc *doc, size_t T, float *K, float *V)
{
    doc->n_tokens = T;
    doc->kv_dtype = MSADB_DTYPE_F32;
    doc->keys = K;
    doc->values = V;
    uint64_t id = 0;
    CHECK_OK(msadb_doc_append(st, doc, &id));
    free(K);
    free(V);
    return id;
}

msadb_store *tu_create(const char *dir, uint32_t kv_heads, uint32_t d, uint32_t block, msadb_dtype dtype,
                       const unsigned char *key)
{
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 2, kv_heads, 2, d));
    sig.block_size = block;
    sig.dtype = dtype;
    msadb_options opt;
    msadb_options_init(&opt);
    opt.key = key;
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, &opt, &st));
    return st;
}

int tu_file_contains(const char *path, const void *needle, size_t n)
{
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len);
    CHECK(buf != NULL && fread(buf, 1, (size_t)len, f) == (size_t)len);
    fclose(f);
    int found = memmem(buf, (size_t)len, needle, n) != NULL;
    free(buf);
    return found;
}

void tu_make_legacy_store(const char *dir, const unsigned char key[32])
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi main_db, meta;
    CHECK_OK(mdb_env_create(&env));
    CHECK_OK(mdb_env_set_maxdbs(env, 16));
    CHECK_OK(mdb_env_open(env, dir, MDB_NOSYNC, 0600));
    CHECK_OK(mdb_txn_begin(env, NULL, 0, &txn));
    CHECK_OK(mdb_dbi_open(txn, NULL, 0, &main_db));
    CHECK_OK(mdb_dbi_open(txn, "meta", 0, &meta));
    /* the names of the databases, from the main database's keys */
    char names[16][64];
    size_t n_names = 0;
    MDB_cursor *cur;
    MDB_val k, v;
    CHECK_OK(mdb_cursor_open(txn, main_db, &cur));
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        CHECK(n_names < 16 && k.mv_size < 64);
        memcpy(names[n_names], k.mv_data, k.mv_size);
        names[n_names++][k.mv_size] = 0;
    }
    mdb_cursor_close(cur);
    MDB_val sk = {8, (void *)"store_id"};
    uint8_t sid[16];
    CHECK_OK(mdb_get(txn, meta, &sk, &v));
    memcpy(sid, v.mv_data, 16);
    for (size_t i = 0; i < n_names; i++) {
        if (!strcmp(names[i], "meta") || !strcmp(names[i], "blocks"))
            continue;
        int sealed = !strcmp(names[i], "summ") || !strcmp(names[i], "route") || !strcmp(names[i], "docs") ||
                     !strcmp(names[i], "slots") || !strcmp(names[i], "spaces") || !strcmp(names[i], "spaceids");
        MDB_dbi dbi;
        CHECK_OK(mdb_dbi_open(txn, names[i], 0, &dbi));
        /* collect, then rewrite (no writes under the cursor) */
        uint8_t *buf = NULL;
        size_t used = 0, cap = 0;
        CHECK_OK(mdb_cursor_open(txn, dbi, &cur));
        for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            CHECK(v.mv_size >= (sealed ? 40u : 16u));
            size_t need = used + 16 + k.mv_size + v.mv_size;
            if (need > cap) {
                cap = need * 2;
                buf = realloc(buf, cap);
                CHECK(buf != NULL);
            }
            uint64_t kl = k.mv_size, vl = v.mv_size - (sealed ? 40 : 16);
            memcpy(buf + used, &kl, 8);
            memcpy(buf + used + 8, &vl, 8);
            memcpy(buf + used + 16, k.mv_data, kl);
            if (sealed) { /* additional data: store id, name, key (docs/format.md) */
                uint8_t ad[16 + 1 + 64 + 4 + 512];
                size_t nl = strlen(names[i]);
                memcpy(ad, sid, 16);
                ad[16] = (uint8_t)nl;
                memcpy(ad + 17, names[i], nl);
                uint32_t kl32 = (uint32_t)kl; /* little-endian host */
                memcpy(ad + 17 + nl, &kl32, 4);
                memcpy(ad + 21 + nl, k.mv_data, kl);
                const uint8_t *sv = v.mv_data;
                CHECK(crypto_aead_xchacha20poly1305_ietf_decrypt(buf + used + 16 + kl, NULL, NULL, sv + 24,
                                                                 v.mv_size - 24, ad, 21 + nl + kl, sv, key) == 0);
            } else {
                memcpy(buf + used + 16 + kl, v.mv_data, vl);
            }
            used += 16 + kl + vl;
        }
        mdb_cursor_close(cur);
        for (size_t off = 0; off < used;) {
            uint64_t kl, vl;
            memcpy(&kl, buf + off, 8);
            memcpy(&vl, buf + off + 8, 8);
            MDB_val nk = {kl, buf + off + 16}, nv = {vl, buf + off + 16 + kl};
            CHECK_OK(mdb_put(txn, dbi, &nk, &nv, 0));
            off += 16 + kl + vl;
        }
        free(buf);
    }
    /* stores before record MACs keyed `spaces` by name (no meta "space_names") */
    MDB_dbi spaces, spaceids;
    CHECK_OK(mdb_dbi_open(txn, "spaces", 0, &spaces));
    CHECK_OK(mdb_dbi_open(txn, "spaceids", 0, &spaceids));
    MDB_val hk = {11, (void *)"space_names"};
    if (mdb_get(txn, meta, &hk, &v) == 0) {
        struct { uint8_t k[64], rec[128]; size_t kl, rl; } sp[16];
        size_t n_sp = 0;
        CHECK_OK(mdb_cursor_open(txn, spaces, &cur));
        for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            CHECK(n_sp < 16 && v.mv_size <= 128 && v.mv_size >= 4);
            uint8_t idk[4] = {((uint8_t *)v.mv_data)[3], ((uint8_t *)v.mv_data)[2], ((uint8_t *)v.mv_data)[1],
                              ((uint8_t *)v.mv_data)[0]};
            MDB_val ik = {4, idk}, nv;
            CHECK_OK(mdb_get(txn, spaceids, &ik, &nv));
            CHECK(nv.mv_size <= 64);
            memcpy(sp[n_sp].k, nv.mv_data, nv.mv_size);
            sp[n_sp].kl = nv.mv_size;
            memcpy(sp[n_sp].rec, v.mv_data, v.mv_size);
            sp[n_sp++].rl = v.mv_size;
        }
        mdb_cursor_close(cur);
        CHECK_OK(mdb_drop(txn, spaces, 0));
        for (size_t i = 0; i < n_sp; i++) {
            MDB_val nk = {sp[i].kl, sp[i].k}, nv = {sp[i].rl, sp[i].rec};
            CHECK_OK(mdb_put(txn, spaces, &nk, &nv, 0));
        }
        CHECK_OK(mdb_del(txn, meta, &hk, NULL));
        uint8_t f3[4] = {3, 0, 0, 0};
        MDB_val fk = {6, (void *)"format"}, fv = {4, f3};
        CHECK_OK(mdb_put(txn, meta, &fk, &fv, 0));
    }
    uint8_t ad[24], sealed[128], text[18];
    memcpy(ad, sid, 16);
    memcpy(ad + 16, "keycheck", 8);
    memcpy(text, "msadb key check v", 17);
    text[17] = '1';
    unsigned long long cl;
    randombytes_buf(sealed, 24);
    crypto_aead_xchacha20poly1305_ietf_encrypt(sealed + 24, &cl, text, sizeof text, ad, sizeof ad, NULL, sealed, key);
    MDB_val kk = {8, (void *)"keycheck"}, kv = {24 + (size_t)cl, sealed};
    CHECK_OK(mdb_put(txn, meta, &kk, &kv, 0));
    MDB_val mk = {8, (void *)"meta_mac"};
    CHECK_OK(mdb_del(txn, meta, &mk, NULL));
    CHECK_OK(mdb_txn_commit(txn));
    mdb_env_close(env);
}

static int cmp_hit(const void *a, const void *b)
{
    const msadb_hit *x = a, *y = b;
    if (x->kv_head != y->kv_head)
        return x->kv_head < y->kv_head ? -1 : 1;
    if (x->query != y->query)
        return x->query < y->query ? -1 : 1;
    return x->block_id < y->block_id ? -1 : x->block_id > y->block_id;
}

void tu_same_hits(msadb_hit *a, size_t na, msadb_hit *b, size_t nb)
{
    CHECK(na == nb);
    qsort(a, na, sizeof *a, cmp_hit);
    qsort(b, nb, sizeof *b, cmp_hit);
    for (size_t i = 0; i < na; i++) {
        CHECK(a[i].kv_head == b[i].kv_head && a[i].query == b[i].query);
        CHECK(a[i].block_id == b[i].block_id && a[i].doc_id == b[i].doc_id);
        CHECK(a[i].token_start == b[i].token_start && a[i].token_end == b[i].token_end);
        CHECK(a[i].score == b[i].score);
    }
}

void tu_store_as_format(const char *dir, uint32_t version)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta, db;
    CHECK_OK(mdb_env_create(&env));
    CHECK_OK(mdb_env_set_maxdbs(env, 32));
    CHECK_OK(mdb_env_open(env, dir, 0, 0600));
    CHECK_OK(mdb_txn_begin(env, NULL, 0, &txn));
    CHECK_OK(mdb_dbi_open(txn, "meta", 0, &meta));
    if (version < 3 && mdb_dbi_open(txn, "dockeys", 0, &db) == 0)
        CHECK_OK(mdb_drop(txn, db, 1));
    if (version < 2) {
        if (mdb_dbi_open(txn, "route", 0, &db) == 0)
            CHECK_OK(mdb_drop(txn, db, 1));
        MDB_val k = {5, (void *)"route"};
        int rc = mdb_del(txn, meta, &k, NULL);
        CHECK(rc == 0 || rc == MDB_NOTFOUND);
    }
    uint8_t v[4] = {(uint8_t)version, 0, 0, 0};
    MDB_val fk = {6, (void *)"format"}, fv = {4, v};
    CHECK_OK(mdb_put(txn, meta, &fk, &fv, 0));
    CHECK_OK(mdb_txn_commit(txn));
    mdb_env_close(env);
}

void tu_copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    CHECK(in && out);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        CHECK(fwrite(buf, 1, n, out) == n);
    fclose(in);
    CHECK(fclose(out) == 0);
}
