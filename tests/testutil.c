/* testutil.c -- see testutil.h. */
#include "testutil.h"

#include <lmdb.h>
#include <math.h>
#include <string.h>
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
