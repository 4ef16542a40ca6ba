/* fuzz_pages.c -- everything the storage layer parses from LMDB values
 * besides blocks: the signature, document records, space records, slot and
 * summary pages, document data.
 *
 * Input: byte 0 picks a mode.  Mode 0 feeds the bytes to the record
 * decoders directly.  Otherwise the input is a list of mutations applied to
 * a small valid store (created once per process): each mutation names a
 * database, an entry of it and new bytes for its value (or a truncation).
 * Then every read path runs: open, verify, list, read text/tokens/K/V,
 * page views.  Any outcome but a crash or a sanitizer report is fine; the
 * original values are restored afterwards. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "msadb.h"
#include "fuzz_read.h"
#include "store/store_impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char store_dir[256];

static void build_store(void)
{
    snprintf(store_dir, sizeof store_dir, "/tmp/msadb-fuzz-pages-%d", (int)getpid());
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", store_dir);
    if (system(cmd) != 0)
        abort();
    msadb_signature sig;
    msadb_signature_init(&sig, 2, 1, 2, 8);
    sig.block_size = 4;
    sig.dtype = MSADB_DTYPE_INT8;
    msadb_options opt;
    msadb_options_init(&opt);
    opt.no_sync = 1;
    msadb_store *st;
    if (msadb_create(store_dir, &sig, &opt, &st))
        abort();
    float K[10 * 8], V[10 * 8];
    for (int i = 0; i < 80; i++) {
        K[i] = (float)((i * 37) % 11) - 5.0f;
        V[i] = (float)((i * 13) % 7) - 3.0f;
    }
    int32_t ids[10];
    int64_t spans[20];
    for (int i = 0; i < 10; i++) {
        ids[i] = i;
        spans[2 * i] = i;
        spans[2 * i + 1] = i + 1;
    }
    msadb_doc doc = {0};
    doc.title = "t";
    doc.text = "0123456789";
    doc.text_len = 10;
    doc.token_ids = ids;
    doc.token_spans = spans;
    doc.n_tokens = 10;
    doc.kv_dtype = MSADB_DTYPE_F32;
    doc.keys = K;
    doc.values = V;
    for (int i = 0; i < 3; i++)
        if (msadb_doc_append(st, &doc, NULL))
            abort();
    uint64_t del = 2;
    if (msadb_doc_delete(st, &del, 1))
        abort();
    msadb_close(st);
}

static void exercise(void)
{
    msadb_options opt;
    msadb_options_init(&opt);
    opt.no_sync = 1;
    msadb_store *st;
    if (msadb_open(store_dir, NULL, &opt, &st))
        return;
    msadb_verify(st, NULL, NULL);
    msadb_space_list(st, fuzz_read_space, NULL);
    msadb_stat_info si;
    msadb_stat(st, &si);
    msadb_snapshot *snap;
    if (msadb_snapshot_begin(st, &snap) == 0) {
        msadb_doc_list(snap, NULL, fuzz_read_doc, snap);
        uint32_t sids[8];
        size_t n = 0;
        msadb_snap_space_ids(snap, sids, 8, &n);
        msadb_page_view *views = NULL;
        size_t nv = 0, cv = 0;
        for (size_t i = 0; i < n && i < 8; i++)
            msadb_snap_pages(snap, sids[i], 0, &views, &nv, &cv);
        free(views);
        msadb_snapshot_end(snap);
    }
    msadb_close(st);
}

typedef struct {
    int which; /* index into db_names */
    uint8_t key[64];
    size_t key_len;
    uint8_t *old;
    size_t old_len;
} saved;

/* The databases a mutation can name, in the order of their names. */
static const char *const db_names[8] = {"meta", "spaces", "spaceids", "docs",
                                        "docdata", "blocks", "slots", "summ"};

static void store_dbis(const msadb_store *st, MDB_dbi dbis[8])
{
    const MDB_dbi d[8] = {st->db_meta, st->db_spaces, st->db_spaceids, st->db_docs,
                          st->db_docdata, st->db_blocks, st->db_slots, st->db_summ};
    memcpy(dbis, d, sizeof d);
}

/* Applies the mutations of data[1..size) to the store's records in one
 * committed transaction, saving the old values in undo; returns how many.
 * A mutation: db(1) entry(1) mode(1) len(1) bytes(len). */
static int mutate(const uint8_t *data, size_t size, saved undo[8])
{
    msadb_options opt;
    msadb_options_init(&opt);
    opt.no_sync = 1;
    msadb_store *st;
    if (msadb_open(store_dir, NULL, &opt, &st))
        abort();
    MDB_dbi dbis[8];
    store_dbis(st, dbis);
    int n_undo = 0;
    MDB_txn *txn;
    if (mdb_txn_begin(st->env, NULL, 0, &txn))
        abort();
    size_t pos = 1;
    while (pos + 4 <= size && n_undo < 8) {
        int which = data[pos] % 8;
        MDB_dbi dbi = dbis[which];
        unsigned entry = data[pos + 1], mode = data[pos + 2], len = data[pos + 3];
        pos += 4;
        if (len > size - pos)
            len = (unsigned)(size - pos);
        MDB_cursor *cur;
        if (mdb_cursor_open(txn, dbi, &cur))
            abort();
        MDB_val k, v;
        int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        for (unsigned i = 0; rc == 0 && i < entry % 16; i++)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        if (rc == 0 && k.mv_size <= sizeof undo[0].key) {
            saved *u = &undo[n_undo++];
            u->which = which;
            memcpy(u->key, k.mv_data, k.mv_size);
            u->key_len = k.mv_size;
            u->old = malloc(v.mv_size + 1);
            memcpy(u->old, v.mv_data, v.mv_size);
            u->old_len = v.mv_size;
            uint8_t *nv = malloc(v.mv_size + len + 1);
            size_t nlen;
            if (mode % 3 == 0) { /* replace with the given bytes */
                memcpy(nv, data + pos, len);
                nlen = len;
            } else if (mode % 3 == 1) { /* truncate */
                nlen = v.mv_size ? (size_t)(mode / 3) % v.mv_size : 0;
                memcpy(nv, v.mv_data, nlen);
            } else { /* overwrite bytes at an offset */
                memcpy(nv, v.mv_data, v.mv_size);
                nlen = v.mv_size;
                for (unsigned i = 0; i < len && nlen; i++)
                    nv[(mode / 3 + i) % nlen] = data[pos + i];
            }
            MDB_val kv = {u->key_len, u->key}, nvv = {nlen, nv};
            mdb_cursor_close(cur);
            cur = NULL;
            if (mdb_put(txn, dbi, &kv, &nvv, 0))
                abort();
            free(nv);
        }
        if (cur)
            mdb_cursor_close(cur);
        pos += len;
    }
    if (mdb_txn_commit(txn))
        abort();
    msadb_close(st);
    return n_undo;
}

/* Puts the saved values back, newest first, with raw LMDB (the store may
 * no longer open cleanly). */
static void restore(saved *undo, int n_undo)
{
    MDB_env *env;
    if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 16) ||
        mdb_env_open(env, store_dir, MDB_NOSYNC, 0664))
        abort();
    MDB_txn *t;
    if (mdb_txn_begin(env, NULL, 0, &t))
        abort();
    for (int i = n_undo - 1; i >= 0; i--) {
        MDB_dbi dbi;
        if (mdb_dbi_open(t, db_names[undo[i].which], 0, &dbi))
            abort();
        MDB_val kv = {undo[i].key_len, undo[i].key}, vv = {undo[i].old_len, undo[i].old};
        if (mdb_put(t, dbi, &kv, &vv, 0))
            abort();
        free(undo[i].old);
    }
    if (mdb_txn_commit(t))
        abort();
    mdb_env_close(env);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] % 4 == 0) {
        msadb_signature sig;
        msadb_docrec rec;
        msadb_sig_decode(data + 1, size - 1, &sig);
        msadb_docrec_decode(data + 1, size - 1, &rec);
        return 0;
    }
    if (!store_dir[0])
        build_store();
    saved undo[8];
    int n_undo = mutate(data, size, undo);
    exercise();
    restore(undo, n_undo);
    return 0;
}
