/* fuzz_shadow.c -- "shadow corruption": edits to the stored LMDB records of
 * a small real store (blocks, summary pages, slot pages, documents, document
 * data, spaces, meta), made with LMDB itself so that only msadb's own
 * records are wrong, then everything a user runs: open, verify, stat, list,
 * read every document, queries (exact, top-k blocks, top-k documents, each
 * summary kind) and one more ingest.
 *
 * Input: byte 0 picks the store (bit 0: plain int8 or encrypted f16).
 * Then edits of 5 bytes each: database, entry, operation, argument, byte.
 * Operations: set a byte, flip a bit, truncate, append a byte, delete the
 * record, swap the record's value with the next entry's (a record moved
 * under another key).  Each input starts from a fresh copy of the store.
 *
 * Besides crashes and sanitizer reports, one rule: a store that opens and
 * passes verify takes one more document and passes verify again (an edit
 * may be refused, never left to break later writes silently). */
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "msadb.h"
#include "fuzz_read.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define D 8
#define NT 10
static const unsigned char shadow_key[MSADB_KEY_BYTES] = {7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
static char root[128];
static uint8_t *tmpl[2];
static size_t tmpl_len[2];
static float K[NT * D], V[NT * D];

static void opts(msadb_options *opt, int enc)
{
    msadb_options_init(opt);
    opt->no_sync = 1;
    opt->map_size = 8u << 20;
    if (enc)
        opt->key = shadow_key;
}

static msadb_doc make_doc(const char *space)
{
    msadb_doc doc = {0};
    doc.space = space;
    doc.title = "t";
    doc.text = "0123456789";
    doc.text_len = NT;
    doc.n_tokens = NT;
    doc.kv_dtype = MSADB_DTYPE_F32;
    doc.keys = K;
    doc.values = V;
    return doc;
}

static void slurp(const char *path, uint8_t **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f || fseek(f, 0, SEEK_END) != 0)
        abort();
    long n = ftell(f);
    rewind(f);
    *buf = malloc((size_t)n);
    if (!*buf || fread(*buf, 1, (size_t)n, f) != (size_t)n)
        abort();
    fclose(f);
    *len = (size_t)n;
}

static void build(int enc)
{
    char dir[200], cmd[600], compact[200];
    snprintf(dir, sizeof dir, "%s/build%d", root, enc);
    snprintf(compact, sizeof compact, "%s/tmpl%d", root, enc);
    msadb_signature sig;
    msadb_signature_init(&sig, 2, 1, 2, D);
    sig.block_size = 4;
    sig.summary_kinds = MSADB_SUMMARY_ALL;
    sig.dtype = enc ? MSADB_DTYPE_F16 : MSADB_DTYPE_INT8;
    msadb_options opt;
    opts(&opt, enc);
    msadb_store *st;
    if (msadb_create(dir, &sig, &opt, &st) || msadb_space_create(st, "b", NULL))
        abort();
    int32_t ids[NT];
    int64_t spans[2 * NT];
    for (int i = 0; i < NT; i++) {
        ids[i] = i;
        spans[2 * i] = i;
        spans[2 * i + 1] = i + 1;
    }
    for (int d = 0; d < 4; d++) {
        msadb_doc doc = make_doc(d % 2 ? "b" : NULL);
        doc.token_ids = ids;
        doc.token_spans = spans;
        doc.meta = "m";
        doc.meta_len = 1;
        if (msadb_doc_append(st, &doc, NULL))
            abort();
    }
    uint64_t del = 1;
    if (msadb_doc_delete(st, &del, 1))
        abort();
    msadb_close(st);
    /* a compact copy: the smallest file to copy per input */
    MDB_env *env;
    mkdir(compact, 0700);
    if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 16) || mdb_env_open(env, dir, MDB_RDONLY, 0600) ||
        mdb_env_copy2(env, compact, MDB_CP_COMPACT))
        abort();
    mdb_env_close(env);
    char path[400];
    snprintf(path, sizeof path, "%s/data.mdb", compact);
    slurp(path, &tmpl[enc], &tmpl_len[enc]);
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", dir, compact);
    if (system(cmd) != 0)
        abort();
}

static void init(void)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(root, sizeof root, "%s/msadb-fuzz-shadow-%d", base, (int)getpid());
    mkdir(root, 0700);
    for (int i = 0; i < NT * D; i++) {
        K[i] = (float)((i * 37) % 11) - 5.0f;
        V[i] = (float)((i * 13) % 7) - 3.0f;
    }
    build(0);
    build(1);
}

static const char *const dbs[] = {"meta", "spaces", "spaceids", "docs", "docdata", "blocks", "slots", "summ"};

/* One edit through LMDB on the copy in dir. */
static void edit(MDB_txn *txn, MDB_dbi dbi, const uint8_t *e)
{
    MDB_cursor *cur;
    MDB_val k, v, k2, v2;
    if (mdb_cursor_open(txn, dbi, &cur))
        abort();
    int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    for (unsigned i = 0; rc == 0 && i < e[1] % 32; i++)
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    if (rc) {
        mdb_cursor_close(cur);
        return;
    }
    uint8_t key[512];
    size_t klen = k.mv_size < sizeof key ? k.mv_size : sizeof key;
    memcpy(key, k.mv_data, klen);
    size_t n = v.mv_size;
    uint8_t *nv = malloc(n + 2);
    if (!nv)
        abort();
    memcpy(nv, v.mv_data, n);
    size_t at = n ? ((size_t)e[3] * 257 + e[4]) % n : 0;
    MDB_val kv = {klen, key};
    switch (e[2] % 6) {
    case 0: if (n) nv[at] = e[4]; break;
    case 1: if (n) nv[at] ^= (uint8_t)(1u << (e[4] % 8)); break;
    case 2: n = n ? (size_t)e[3] % n : 0; break;
    case 3: nv[n++] = e[4]; break;
    case 4:
        mdb_cursor_close(cur);
        free(nv);
        mdb_del(txn, dbi, &kv, NULL);
        return;
    default:
        if (mdb_cursor_get(cur, &k2, &v2, MDB_NEXT) == 0 && k2.mv_size <= sizeof key) {
            uint8_t key2[512];
            memcpy(key2, k2.mv_data, k2.mv_size);
            MDB_val kv2 = {k2.mv_size, key2}, ov = {n, nv};
            uint8_t *nv2 = malloc(v2.mv_size + 1);
            memcpy(nv2, v2.mv_data, v2.mv_size);
            MDB_val ov2 = {v2.mv_size, nv2};
            mdb_cursor_close(cur);
            if (mdb_put(txn, dbi, &kv, &ov2, 0) || mdb_put(txn, dbi, &kv2, &ov, 0))
                abort();
            free(nv2);
            free(nv);
            return;
        }
        break;
    }
    mdb_cursor_close(cur);
    MDB_val nvv = {n, nv};
    if (mdb_put(txn, dbi, &kv, &nvv, 0))
        abort();
    free(nv);
}

/* The query and output buffers are sized from the signature the store
 * opened with (an edited meta record may declare other dimensions: the
 * caller sizes q by the store it holds, as the API asks). */
static void queries(msadb_store *st, msadb_snapshot *snap)
{
    const msadb_signature *sig = msadb_store_signature(st);
    size_t per = (size_t)sig->n_q_heads * sig->head_dim;
    float *q = malloc(2 * per * sizeof *q), *out = malloc(2 * per * sizeof *out);
    float *lse = malloc(2 * (size_t)sig->n_q_heads * sizeof *lse);
    if (!q || !out || !lse)
        abort();
    for (size_t i = 0; i < 2 * per; i++)
        q[i] = (float)((i * 7) % 5) - 2.0f;
    msadb_hit hits[16];
    size_t nh;
    static const uint32_t kinds[] = {0, MSADB_SUMMARY_MEAN, MSADB_SUMMARY_MINMAX, MSADB_SUMMARY_REPS};
    for (int mode = 0; mode < 6; mode++) {
        msadb_query qq;
        msadb_query_init(&qq);
        qq.layer = 1;
        qq.q = q;
        qq.n_query = 2;
        qq.top_k = 2;
        qq.exact = mode == 0;
        qq.select = mode == 1 ? MSADB_SELECT_DOCUMENTS : MSADB_SELECT_BLOCKS;
        qq.summary = kinds[mode % 4];
        qq.per_token = mode == 5;
        if (msadb_attend(snap, &qq, out, lse, hits, 16, &nh) == 0 && nh)
            msadb_attend_blocks(snap, &qq, hits, nh < 16 ? nh : 16, out, lse);
    }
    free(lse);
    free(out);
    free(q);
}

/* One more document, its keys and values sized by the signature the store
 * opened with (the same values as K and V where the shape is unchanged). */
static int append_one(msadb_store *st)
{
    const msadb_signature *sig = msadb_store_signature(st);
    size_t n = (size_t)NT * msadb_signature_planes(sig) * sig->head_dim;
    float *kv = malloc(2 * n * sizeof *kv);
    if (!kv)
        abort();
    for (size_t i = 0; i < n; i++) {
        kv[i] = (float)((i * 37) % 11) - 5.0f;
        kv[n + i] = (float)((i * 13) % 7) - 3.0f;
    }
    msadb_doc doc = make_doc("b");
    doc.keys = kv;
    doc.values = kv + n;
    int rc = msadb_doc_append(st, &doc, NULL);
    free(kv);
    return rc;
}

static void exercise(const char *dir, int enc)
{
    msadb_options opt;
    opts(&opt, enc);
    msadb_store *st;
    if (msadb_open(dir, NULL, &opt, &st))
        return;
    int verified = msadb_verify(st, NULL, NULL) == 0;
    msadb_stat_info si;
    msadb_stat(st, &si);
    msadb_space_list(st, fuzz_read_space, NULL);
    msadb_snapshot *snap;
    if (msadb_snapshot_begin(st, &snap) == 0) {
        msadb_doc_list(snap, NULL, fuzz_read_doc, snap);
        queries(st, snap);
        msadb_snapshot_end(snap);
    }
    int added = append_one(st);
    if (verified && (added != 0 || msadb_verify(st, NULL, NULL) != 0)) {
        fprintf(stderr, "a store that passed verify broke on the next write: %s\n",
                msadb_strerror(added));
        abort();
    }
    msadb_close(st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 5 * 16 + 1)
        return 0;
    if (!root[0])
        init();
    int enc = data[0] & 1;
    char dir[256], path[300];
    snprintf(dir, sizeof dir, "%s/work", root);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/lock.mdb", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(tmpl[enc], 1, tmpl_len[enc], f) != tmpl_len[enc] || fclose(f) != 0)
        abort();
    MDB_env *env;
    MDB_txn *txn;
    if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 16) || mdb_env_set_mapsize(env, 8u << 20) ||
        mdb_env_open(env, dir, MDB_NOSYNC, 0600) || mdb_txn_begin(env, NULL, 0, &txn))
        abort();
    for (size_t pos = 1; pos + 5 <= size; pos += 5) {
        MDB_dbi dbi;
        if (mdb_dbi_open(txn, dbs[data[pos] % 8], 0, &dbi))
            abort();
        edit(txn, dbi, data + pos);
    }
    if (mdb_txn_commit(txn))
        abort();
    mdb_env_close(env);
    exercise(dir, enc);
    return 0;
}
