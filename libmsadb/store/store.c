/* store.c -- the store's environment: creating and opening stores, the
 * meta records, keys and record layouts, spaces, the write-transaction
 * helper and statistics (see docs/format.md).  Ingest is in ingest.c,
 * reads in read.c, deletion in delete.c. */
#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "core/crypto.h"
#include "store/index.h"
#include "store/store_impl.h"

/* ------------------------------------------------------------------------ */
/* Environment                                                              */
/* ------------------------------------------------------------------------ */

/* The key check's sealed constant, "msadb key check vN": v1 in stores
 * whose meta records carry no MAC, v2 once they do, v3 once every record
 * does (record.c); so that deleting a MAC never turns a store back into one
 * without. */
#define KEYCHECK_TEXT "msadb key check v"
#define KEYCHECK_LEN (sizeof KEYCHECK_TEXT) /* the text and its one-digit version */

/* The meta records covered by the MAC of a v2 store, in MAC order
 * (docs/format.md); a v3 store's MAC covers every meta record. */
static const char *const mac_names[] = {"format", "signature", "store_id", "page_cap", "crypt",
                                        "next_doc", "next_block", "next_space"};

static int get_meta(MDB_txn *txn, msadb_store *st, const char *name, MDB_val *v)
{
    MDB_val k = {strlen(name), (void *)name};
    return msadb_rec_get(txn, st, st->db_meta, &k, v);
}

static int put_meta(MDB_txn *txn, msadb_store *st, const char *name, const void *data, size_t len)
{
    MDB_val k = {strlen(name), (void *)name}, v = {len, (void *)data};
    return msadb_rec_put(txn, st, st->db_meta, &k, &v, 0);
}

int msadb_meta_u64(MDB_txn *txn, msadb_store *st, const char *name, uint64_t *out)
{
    MDB_val v;
    int rc = get_meta(txn, st, name, &v);
    if (rc == MDB_NOTFOUND) {
        *out = 0;
        return 0;
    }
    if (rc)
        return rc;
    if (v.mv_size != 8)
        return MSADB_ECORRUPT;
    *out = msadb_get_le64(v.mv_data);
    return 0;
}

/* v3: every meta record but the MAC itself, in key order: name length
 * u32 LE, name, value length u64 LE, value. */
static int meta_mac_all(msadb_store *st, MDB_txn *txn, crypto_generichash_state *h)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, st->db_meta, &cur);
    if (rc)
        return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size == 8 && memcmp(k.mv_data, "meta_mac", 8) == 0)
            continue;
        uint8_t len[12];
        msadb_put_le32(len, (uint32_t)k.mv_size);
        msadb_put_le64(len + 4, (uint64_t)v.mv_size);
        crypto_generichash_update(h, len, 4);
        crypto_generichash_update(h, k.mv_data, k.mv_size);
        crypto_generichash_update(h, len + 4, 8);
        crypto_generichash_update(h, v.mv_data, v.mv_size);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int msadb_meta_mac(msadb_store *st, MDB_txn *txn, uint8_t mac[32])
{
    crypto_generichash_state h;
    crypto_generichash_init(&h, st->mac_key, sizeof st->mac_key, 32);
    crypto_generichash_update(&h, st->store_id, sizeof st->store_id);
    if (st->rec_mac) {
        int rc = meta_mac_all(st, txn, &h);
        if (rc)
            return rc;
        crypto_generichash_final(&h, mac, 32);
        return 0;
    }
    for (size_t i = 0; i < sizeof mac_names / sizeof mac_names[0]; i++) {
        MDB_val v = {0, NULL};
        int rc = get_meta(txn, st, mac_names[i], &v);
        if (rc && rc != MDB_NOTFOUND)
            return rc;
        uint8_t len[9];
        msadb_put_le64(len, rc ? UINT64_MAX : (uint64_t)v.mv_size); /* absent != empty */
        len[8] = (uint8_t)i;
        crypto_generichash_update(&h, len, sizeof len);
        if (!rc)
            crypto_generichash_update(&h, v.mv_data, v.mv_size);
    }
    crypto_generichash_final(&h, mac, 32);
    return 0;
}

/* Seals the key check constant of version ver into meta "keycheck". */
static int put_keycheck(msadb_store *st, MDB_txn *txn, int ver);

/* Writes the meta MAC inside a write transaction, after its other changes,
 * and raises the key check to the version the store now has (3 with
 * record MACs, else 2). */
static int meta_mac_put(msadb_store *st, MDB_txn *txn)
{
    int want = st->rec_mac ? 3 : 2, rc = 0;
    if (st->kc_ver < want) {
        rc = put_keycheck(st, txn, want);
        st->kc_pending = rc ? 0 : want;
    }
    uint8_t mac[32];
    if (!rc)
        rc = msadb_meta_mac(st, txn, mac);
    if (!rc)
        rc = put_meta(txn, st, "meta_mac", mac, sizeof mac);
    return rc;
}

int msadb_meta_put_u64(MDB_txn *txn, msadb_store *st, const char *name, uint64_t val)
{
    uint8_t b[8];
    msadb_put_le64(b, val);
    return put_meta(txn, st, name, b, 8);
}

/* The format record; `missing` is returned when there is none. */
static int read_format(MDB_txn *txn, msadb_store *st, int missing, uint32_t *format)
{
    MDB_val v;
    int rc = get_meta(txn, st, "format", &v);
    if (rc)
        return rc == MDB_NOTFOUND ? missing : rc;
    if (v.mv_size != 4)
        return MSADB_ECORRUPT;
    *format = msadb_get_le32(v.mv_data);
    return 0;
}

int msadb_meta_format(MDB_txn *txn, msadb_store *st, uint32_t *format)
{
    return read_format(txn, st, MSADB_ECORRUPT, format);
}

int msadb_meta_raise_format(MDB_txn *txn, msadb_store *st, uint32_t version)
{
    uint32_t cur;
    int rc = msadb_meta_format(txn, st, &cur);
    return rc || cur >= version ? rc : msadb_meta_put_format(txn, st, version);
}

int msadb_meta_put_format(MDB_txn *txn, msadb_store *st, uint32_t version)
{
    uint8_t b[4];
    msadb_put_le32(b, version);
    return put_meta(txn, st, "format", b, 4);
}

void msadb_map_release(msadb_store *st)
{
#ifdef __linux__
    /* LMDB does not tell where its map is (mdb_env_info gives an address
     * only with MDB_FIXEDMAP): find the mapping holding a value read from
     * it.  The map is shared and read-only (no MDB_WRITEMAP), so dropped
     * pages are read back from the page cache on the next access. */
    MDB_txn *txn;
    MDB_envinfo info;
    MDB_stat es;
    if (mdb_env_info(st->env, &info) || mdb_env_stat(st->env, &es) || msadb_txn_read(st, &txn))
        return;
    MDB_val k = {6, "format"}, v;
    uintptr_t p = mdb_get(txn, st->db_meta, &k, &v) == 0 ? (uintptr_t)v.mv_data : 0;
    msadb_txn_done(st, txn);
    FILE *f = p ? fopen("/proc/self/maps", "r") : NULL;
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx", &lo, &hi) != 2 || p < lo || p >= hi)
            continue;
        size_t used = (size_t)(info.me_last_pgno + 1) * es.ms_psize;
        madvise((void *)lo, used < hi - lo ? used : hi - lo, MADV_DONTNEED);
        break;
    }
    if (f)
        fclose(f);
#else
    (void)st;
#endif
}

static int env_open(msadb_store *st, const char *path, const msadb_options *opt, int creating)
{
    int rc = mdb_env_create(&st->env);
    if (rc)
        return rc;
    mdb_env_set_maxdbs(st->env, 16);
    if (opt->max_readers)
        mdb_env_set_maxreaders(st->env, opt->max_readers);
    uint64_t map = opt->map_size ? opt->map_size : MSADB_DEFAULT_MAP_SIZE;
    if ((rc = mdb_env_set_mapsize(st->env, (size_t)map)))
        return rc;
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD;
    if (opt->read_only)
        flags |= MDB_RDONLY;
    if (opt->no_sync)
        flags |= MDB_NOSYNC;
    if (creating) {
        if (mkdir(path, 0700) != 0 && errno != EEXIST)
            return errno;
    } else {
        char probe[4096];
        snprintf(probe, sizeof probe, "%s/data.mdb", path);
        struct stat sb;
        if (stat(path, &sb) != 0)
            return errno; /* ENOENT: no such file or directory */
        if (!S_ISDIR(sb.st_mode) || stat(probe, &sb) != 0)
            return MSADB_ENOTSTORE;
    }
    rc = mdb_env_open(st->env, path, flags, 0600);
    if (rc)
        return rc;
    /* Free the reader slots of processes that died holding them, so the
     * pages they pinned can be reused. */
    int dead = 0;
    mdb_reader_check(st->env, &dead);
    return 0;
}

static const char *const db_names[] = {"meta", "spaces", "spaceids", "docs", "docdata", "blocks", "slots", "summ"};

static int open_dbs(msadb_store *st, MDB_txn *txn, unsigned flags)
{
    MDB_dbi *dbis[] = {&st->db_meta,  &st->db_spaces, &st->db_spaceids, &st->db_docs,
                       &st->db_docdata, &st->db_blocks, &st->db_slots,    &st->db_summ};
    for (size_t i = 0; i < sizeof dbis / sizeof dbis[0]; i++) {
        int rc = msadb_dbi_open(st, txn, db_names[i], flags, dbis[i]);
        if (rc == MDB_NOTFOUND)
            return MSADB_ENOTSTORE;
        if (rc)
            return rc;
    }
    return 0;
}

/* The optional database of document keys (format 3): opened when it
 * exists; created by the first read-write open (one write transaction). */
static int dockeys_create_fn(msadb_store *st, MDB_txn *txn, void *ud)
{
    (void)ud;
    return msadb_dbi_open(st, txn, "dockeys", MDB_CREATE, &st->db_dockeys);
}

static int dockeys_open_txn(msadb_store *st, MDB_txn *txn)
{
    int rc = msadb_dbi_open(st, txn, "dockeys", 0, &st->db_dockeys);
    if (rc == MDB_NOTFOUND)
        return MSADB_ENOTFOUND;
    return rc;
}

int msadb_dockeys_open(msadb_store *st)
{
    if (st->has_dockeys)
        return 0;
    /* mdb_dbi_open must not run concurrently with itself: writers are
     * serialized by write_lock, so take it too. */
    pthread_mutex_lock(&st->write_lock);
    int rc = 0;
    if (!st->has_dockeys) {
        MDB_txn *txn;
        if (!(rc = msadb_txn_read(st, &txn))) {
            rc = dockeys_open_txn(st, txn);
            if (!rc) {
                rc = mdb_txn_commit(txn); /* keeps the handle */
                pthread_mutex_lock(&st->snap_lock);
                st->n_readers--;
                pthread_mutex_unlock(&st->snap_lock);
            } else {
                msadb_txn_done(st, txn);
            }
            if (!rc)
                st->has_dockeys = 1;
        }
    }
    pthread_mutex_unlock(&st->write_lock);
    return rc;
}

int msadb_dockey_get(MDB_txn *txn, msadb_store *st, const void *key, size_t len, uint64_t *id)
{
    if (!st->has_dockeys)
        return MSADB_ENOTFOUND;
    MDB_val k = {len, (void *)key}, v;
    int rc = msadb_rec_get(txn, st, st->db_dockeys, &k, &v);
    if (rc == MDB_NOTFOUND || rc == EINVAL || rc == MDB_BAD_DBI)
        return MSADB_ENOTFOUND; /* EINVAL, MDB_BAD_DBI: the database is newer than txn */
    if (rc)
        return rc;
    if (v.mv_size != 8)
        return MSADB_ECORRUPT;
    *id = msadb_get_le64(v.mv_data);
    return 0;
}

/* Copies the value under key (klen bytes) of dbi, 1..max bytes, to out:
 * 0, MSADB_ENOTFOUND, MSADB_ECORRUPT (size out of range) or an LMDB error. */
static int get_bounded(MDB_txn *txn, const msadb_store *st, MDB_dbi dbi, void *key, size_t klen, size_t max,
                       void *out, size_t *len)
{
    MDB_val kv = {klen, key};
    int rc = msadb_rec_get_into(txn, st, dbi, &kv, out, max, len);
    if (rc == MDB_NOTFOUND)
        return MSADB_ENOTFOUND;
    if (rc)
        return rc;
    return *len < 1 ? MSADB_ECORRUPT : 0;
}

int msadb_dockey_of(MDB_txn *txn, msadb_store *st, uint64_t doc, uint8_t *key, size_t *len)
{
    uint8_t k[9];
    msadb_key_docdata(k, doc, DD_KEY);
    return get_bounded(txn, st, st->db_docdata, k, 9, MSADB_DOCKEY_MAX, key, len);
}

int msadb_doc_key_hash(const msadb_store *st, const void *const *parts, const size_t *lens, size_t n,
                       unsigned char out[MSADB_DOCKEY_HASH])
{
    if (!st || !out || (n && (!parts || !lens)))
        return MSADB_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (lens[i] && !parts[i])
            return MSADB_EINVAL;
    /* Encrypted stores: keyed with BLAKE2b(key = the store key, "msadb
     * document key v1" || store id), so equal content gives unrelated keys
     * in different stores and nothing can be learnt without the key. */
    uint8_t hkey[32];
    size_t hkey_len = 0;
    if (st->encrypted) {
        static const char label[] = "msadb document key v1";
        uint8_t msg[sizeof label - 1 + 16];
        memcpy(msg, label, sizeof label - 1);
        memcpy(msg + sizeof label - 1, st->store_id, 16);
        crypto_generichash(hkey, sizeof hkey, msg, sizeof msg, st->key, 32);
        hkey_len = sizeof hkey;
    }
    crypto_generichash_state h;
    crypto_generichash_init(&h, hkey_len ? hkey : NULL, hkey_len, MSADB_DOCKEY_HASH);
    for (size_t i = 0; i < n; i++) {
        uint8_t l8[8];
        msadb_put_le64(l8, lens[i]);
        crypto_generichash_update(&h, l8, 8);
        if (lens[i])
            crypto_generichash_update(&h, parts[i], lens[i]);
    }
    crypto_generichash_final(&h, out, MSADB_DOCKEY_HASH);
    sodium_memzero(hkey, sizeof hkey);
    return 0;
}

static void store_free(msadb_store *st)
{
    if (!st)
        return;
    if (st->env)
        mdb_env_close(st->env);
    pthread_mutex_destroy(&st->write_lock);
    pthread_mutex_destroy(&st->snap_lock);
    sodium_memzero(st->key, sizeof st->key);
    sodium_memzero(st->mac_key, sizeof st->mac_key);
    sodium_memzero(st->rec_key, sizeof st->rec_key);
    free(st->seal_buf);
    free(st->wread_buf);
    free(st->path);
    free(st);
}

static msadb_store *store_alloc(const char *path, const msadb_options *opt)
{
    msadb_store *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->path = strdup(path);
    pthread_mutex_init(&st->write_lock, NULL);
    pthread_mutex_init(&st->snap_lock, NULL);
    st->read_only = opt->read_only;
    st->zstd_level = opt->zstd_level;
    if (!st->path) {
        store_free(st);
        return NULL;
    }
    return st;
}

static int check_options(const msadb_options *opt)
{
    if (opt->key && opt->passphrase)
        return MSADB_EINVAL;
    if (opt->zstd_level < 1 || opt->zstd_level > 19)
        return MSADB_EINVAL;
    if (opt->passphrase && !*opt->passphrase)
        return MSADB_EINVAL;
    return 0;
}

/* Crypto record in meta "crypt": mode u32 (1 raw key, 2 passphrase),
 * opslimit u64, memlimit u64, salt[16]; "keycheck" holds a sealed constant. */
static int keycheck_ad(const msadb_store *st, uint8_t *ad)
{
    memcpy(ad, st->store_id, 16);
    memcpy(ad + 16, "keycheck", 8);
    return 24;
}

static void derive_mac_key(msadb_store *st)
{
    static const char label[] = "msadb meta mac v1", names[] = "msadb space name v1";
    crypto_generichash(st->mac_key, sizeof st->mac_key, (const uint8_t *)label, sizeof label - 1,
                       st->key, sizeof st->key);
    crypto_generichash(st->name_key, sizeof st->name_key, (const uint8_t *)names, sizeof names - 1, st->key,
                       sizeof st->key);
    msadb_rec_key_derive(st);
}

static int setup_crypto_create(msadb_store *st, MDB_txn *txn, const msadb_options *opt)
{
    if (!opt->key && !opt->passphrase)
        return 0;
    uint8_t rec[36];
    uint32_t mode = opt->key ? 1 : 2;
    uint64_t ops = crypto_pwhash_opslimit_interactive(), mem = crypto_pwhash_memlimit_interactive();
    msadb_put_le32(rec, mode);
    msadb_put_le64(rec + 4, ops);
    msadb_put_le64(rec + 12, mem);
    msadb_random(rec + 20, MSADB_SALT_BYTES);
    if (mode == 1) {
        memcpy(st->key, opt->key, 32);
    } else {
        int rc = msadb_kdf(opt->passphrase, rec + 20, ops, mem, st->key);
        if (rc)
            return rc;
    }
    st->encrypted = 1;
    st->rec_mac = 1; /* new stores authenticate every record from the start */
    derive_mac_key(st);
    return put_meta(txn, st, "crypt", rec, sizeof rec);
}

static int put_keycheck(msadb_store *st, MDB_txn *txn, int ver)
{
    uint8_t ad[24], sealed[64], text[KEYCHECK_LEN];
    memcpy(text, KEYCHECK_TEXT, KEYCHECK_LEN - 1);
    text[KEYCHECK_LEN - 1] = (uint8_t)('0' + ver);
    msadb_seal(st->key, ad, (size_t)keycheck_ad(st, ad), text, KEYCHECK_LEN, sealed);
    return put_meta(txn, st, "keycheck", sealed, KEYCHECK_LEN + MSADB_SEAL_OVERHEAD);
}

static int setup_crypto_open(msadb_store *st, MDB_txn *txn, const msadb_options *opt)
{
    MDB_val rec;
    int rc = get_meta(txn, st, "crypt", &rec);
    if (rc == MDB_NOTFOUND)
        return (opt->key || opt->passphrase) ? MSADB_EKEY : 0;
    if (rc)
        return rc;
    if (rec.mv_size != 36)
        return MSADB_ECORRUPT;
    const uint8_t *r = rec.mv_data;
    uint32_t mode = msadb_get_le32(r);
    if (mode != 1 && mode != 2)
        return MSADB_ECORRUPT;
    if (opt->key) {
        memcpy(st->key, opt->key, 32);
    } else if (opt->passphrase) {
        /* Checked before any work: the record is not authenticated until a
         * key exists, so an edit may ask for at most the work msadb's own
         * stores ask for (Argon2id "interactive" limits). */
        uint64_t ops = msadb_get_le64(r + 4), mem = msadb_get_le64(r + 12);
        if (ops < crypto_pwhash_opslimit_min() || ops > crypto_pwhash_opslimit_interactive() ||
            mem < crypto_pwhash_memlimit_min() || mem > crypto_pwhash_memlimit_interactive())
            return MSADB_ECORRUPT;
        if ((rc = msadb_kdf(opt->passphrase, r + 20, ops, mem, st->key)))
            return rc;
    } else {
        return MSADB_EKEY;
    }
    MDB_val kc;
    if ((rc = get_meta(txn, st, "keycheck", &kc)))
        return rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
    if (kc.mv_size != KEYCHECK_LEN + MSADB_SEAL_OVERHEAD)
        return MSADB_ECORRUPT;
    uint8_t ad[24], plain[64];
    if (msadb_unseal(st->key, ad, (size_t)keycheck_ad(st, ad), kc.mv_data, kc.mv_size, plain) != 0)
        return MSADB_EKEY;
    int ver = plain[KEYCHECK_LEN - 1] - '0';
    if (memcmp(plain, KEYCHECK_TEXT, KEYCHECK_LEN - 1) != 0 || ver < 1 || ver > 3)
        return MSADB_EKEY;
    st->kc_ver = ver;
    st->rec_mac = ver >= 3;
    st->encrypted = 1;
    derive_mac_key(st);
    /* The meta MAC: required once the key check says the store has one;
     * checked too when an older store (v1) happens to have one. */
    MDB_val mv;
    rc = get_meta(txn, st, "meta_mac", &mv);
    if (rc == MDB_NOTFOUND)
        return st->kc_ver >= 2 ? MSADB_EAUTH : 0;
    if (rc)
        return rc;
    uint8_t mac[32];
    if ((rc = msadb_meta_mac(st, txn, mac)))
        return rc;
    if (mv.mv_size != sizeof mac || sodium_memcmp(mac, mv.mv_data, sizeof mac) != 0)
        return MSADB_EAUTH;
    /* hidden space names (authenticated by the meta MAC just checked) */
    if ((rc = get_meta(txn, st, "space_names", &mv)) == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (mv.mv_size != 4 || msadb_get_le32(mv.mv_data) != 1 || !st->rec_mac)
        return MSADB_ECORRUPT;
    st->hashed_names = 1;
    return 0;
}

int msadb_create(const char *path, const msadb_signature *sig, const msadb_options *opt_in,
                 msadb_store **out)
{
    if (!path || !*path || !sig || !out)
        return MSADB_EINVAL;
    *out = NULL;
    msadb_options defaults;
    msadb_options_init(&defaults);
    const msadb_options *opt = opt_in ? opt_in : &defaults;
    int rc = check_options(opt);
    if (rc || (rc = msadb_signature_validate(sig)))
        return rc;
    if (opt->read_only)
        return MSADB_EREADONLY;
    if ((rc = msadb_crypto_init()))
        return rc;
    char probe[4096];
    struct stat sb;
    snprintf(probe, sizeof probe, "%s/data.mdb", path);
    if (stat(probe, &sb) == 0)
        return MSADB_EEXIST;
    msadb_store *st = store_alloc(path, opt);
    if (!st)
        return MSADB_ENOMEM;
    MDB_txn *txn = NULL;
    if ((rc = env_open(st, path, opt, 1)) || (rc = mdb_txn_begin(st->env, NULL, 0, &txn)))
        goto fail;
    MDB_val v;
    if ((rc = open_dbs(st, txn, MDB_CREATE)) || (rc = dockeys_create_fn(st, txn, NULL)))
        goto fail;
    if (get_meta(txn, st, "format", &v) == 0) {
        rc = MSADB_EEXIST;
        goto fail;
    }
    st->sig = *sig;
    msadb_summ_layout_init(&st->summ, sig->head_dim, sig->summary_kinds);
    st->page_cap = MSADB_PAGE_CAP;
    msadb_random(st->store_id, sizeof st->store_id);
    uint8_t sigbuf[36 + 2 * MSADB_MAX_LAYERS], u32[4];
    msadb_put_le32(u32, MSADB_FORMAT_DOCKEYS); /* raised when a later layout is first used */
    if ((rc = put_meta(txn, st, "format", u32, 4)))
        goto fail;
    if ((rc = put_meta(txn, st, "signature", sigbuf, msadb_sig_encode(sig, sigbuf))))
        goto fail;
    if ((rc = put_meta(txn, st, "store_id", st->store_id, 16)))
        goto fail;
    msadb_put_le32(u32, st->page_cap);
    if ((rc = put_meta(txn, st, "page_cap", u32, 4)))
        goto fail;
    if ((rc = setup_crypto_create(st, txn, opt)))
        goto fail;
    st->format = MSADB_FORMAT_DOCKEYS;
    if (st->encrypted) { /* space names hidden: keyed hashes as the keys of `spaces` (format 5) */
        msadb_put_le32(u32, 1);
        if ((rc = put_meta(txn, st, "space_names", u32, 4)) ||
            (rc = msadb_meta_raise_format(txn, st, MSADB_FORMAT_SPACEKEYS)))
            goto fail;
        st->hashed_names = 1;
    }
    if ((rc = msadb_route_create(st, txn)))
        goto fail;
    if ((rc = msadb_space_create_txn(st, txn, "default", NULL)))
        goto fail;
    if (st->encrypted && (rc = meta_mac_put(st, txn)))
        goto fail;
    st->kc_ver = st->encrypted ? 3 : 0;
    st->kc_pending = 0;
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc)
        goto fail;
    st->has_dockeys = 1;
    st->format = st->hashed_names ? MSADB_FORMAT_SPACEKEYS : MSADB_FORMAT_DOCKEYS;
    *out = st;
    return 0;
fail:
    if (txn)
        mdb_txn_abort(txn);
    store_free(st);
    return rc;
}

/* msadb_open, step 2: the format version, signature, store id and page
 * capacity from meta (read before the key: the meta MAC, checked by step
 * 3, covers them). */
static int open_layout(msadb_store *st, MDB_txn *txn, const msadb_signature *expect)
{
    MDB_val v;
    int rc = read_format(txn, st, MSADB_ENOTSTORE, &st->format);
    if (rc)
        return rc;
    if (st->format > MSADB_FORMAT_VERSION)
        return MSADB_EVERSION;
    if (st->format < 1)
        return MSADB_ECORRUPT;
    if ((rc = get_meta(txn, st, "signature", &v)) || (rc = msadb_sig_decode(v.mv_data, v.mv_size, &st->sig)))
        return rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
    msadb_summ_layout_init(&st->summ, st->sig.head_dim, st->sig.summary_kinds);
    if (expect && !msadb_sig_equal(expect, &st->sig))
        return MSADB_ESIGNATURE;
    if ((rc = get_meta(txn, st, "store_id", &v)))
        return rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
    if (v.mv_size != 16)
        return MSADB_ECORRUPT;
    memcpy(st->store_id, v.mv_data, 16);
    if ((rc = get_meta(txn, st, "page_cap", &v)))
        return rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
    st->page_cap = v.mv_size == 4 ? msadb_get_le32(v.mv_data) : 0;
    if (st->page_cap < 1 || st->page_cap > 65536)
        return MSADB_ECORRUPT;
    return 0;
}

/* msadb_open, step 4: the database of document keys, when it exists. */
static int open_dockeys(msadb_store *st, MDB_txn *txn)
{
    int rc = dockeys_open_txn(st, txn);
    st->has_dockeys = rc == 0;
    return rc == MSADB_ENOTFOUND ? 0 : rc;
}

/* msadb_open, last step: ends the read transaction by committing it, which
 * keeps the database handles opened in it. */
static int open_keep_handles(msadb_store *st, MDB_txn *txn)
{
    int rc = mdb_txn_commit(txn);
    pthread_mutex_lock(&st->snap_lock);
    st->n_readers--;
    pthread_mutex_unlock(&st->snap_lock);
    return rc;
}

int msadb_open(const char *path, const msadb_signature *expect, const msadb_options *opt_in,
               msadb_store **out)
{
    if (!path || !*path || !out)
        return MSADB_EINVAL;
    *out = NULL;
    msadb_options defaults;
    msadb_options_init(&defaults);
    const msadb_options *opt = opt_in ? opt_in : &defaults;
    int rc = check_options(opt);
    if (rc || (rc = msadb_crypto_init()))
        return rc;
    msadb_store *st = store_alloc(path, opt);
    if (!st)
        return MSADB_ENOMEM;
    MDB_txn *txn = NULL;
    /* 1. the environment and its databases; 2. the layout; 3. the key and
     * the meta MAC; 4. the optional databases: document keys, routing index */
    if ((rc = env_open(st, path, opt, 0)) || (rc = msadb_txn_read(st, &txn)) || (rc = open_dbs(st, txn, 0)) ||
        (rc = open_layout(st, txn, expect)) || (rc = setup_crypto_open(st, txn, opt)) ||
        (rc = open_dockeys(st, txn)) || (rc = msadb_route_open(st, txn))) {
        if (txn)
            msadb_txn_done(st, txn);
        store_free(st);
        return rc;
    }
    if ((rc = open_keep_handles(st, txn))) {
        store_free(st);
        return rc;
    }
    /* A store written by a library without document keys gets their
     * (empty) database now; the format number changes with the first key. */
    if (!st->has_dockeys && !st->read_only) {
        if ((rc = msadb_write(st, dockeys_create_fn, NULL))) {
            store_free(st);
            return rc;
        }
        st->has_dockeys = 1;
    }
    *out = st;
    return 0;
}

void msadb_close(msadb_store *st) { store_free(st); }

const msadb_signature *msadb_store_signature(const msadb_store *st) { return st ? &st->sig : NULL; }

int msadb_store_read_only(const msadb_store *st) { return st->read_only; }

int msadb_store_encrypted(const msadb_store *st) { return st ? st->encrypted : MSADB_EINVAL; }

/* Begins a read transaction, adopting a map grown by another process when
 * no other reader of this process could be holding pointers into it. */
int msadb_txn_read(msadb_store *st, MDB_txn **txn)
{
    pthread_mutex_lock(&st->snap_lock);
    int rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, txn);
    if (rc == MDB_MAP_RESIZED && st->n_readers == 0) {
        rc = mdb_env_set_mapsize(st->env, 0);
        if (!rc)
            rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, txn);
    }
    if (!rc)
        st->n_readers++;
    pthread_mutex_unlock(&st->snap_lock);
    return rc;
}

void msadb_txn_done(msadb_store *st, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_mutex_lock(&st->snap_lock);
    st->n_readers--;
    pthread_mutex_unlock(&st->snap_lock);
}

/* ------------------------------------------------------------------------ */
/* Keys                                                                     */
/* ------------------------------------------------------------------------ */

void msadb_key_doc(uint8_t k[8], uint64_t doc) { msadb_put_be64(k, doc); }

void msadb_key_docdata(uint8_t k[9], uint64_t doc, uint8_t kind)
{
    msadb_put_be64(k, doc);
    k[8] = kind;
}

void msadb_key_block(uint8_t k[8], uint64_t block) { msadb_put_be64(k, block); }

int msadb_block_part(const uint8_t *rec, size_t len, uint32_t planes, uint32_t p, const uint8_t **part,
                     size_t *part_len)
{
    size_t head = 4 + 4 * ((size_t)planes + 1);
    if (len < head || msadb_get_le32(rec) != planes || p >= planes)
        return MSADB_ECORRUPT;
    uint32_t a = msadb_get_le32(rec + 4 + 4 * (size_t)p), b = msadb_get_le32(rec + 8 + 4 * (size_t)p);
    if (a < head || b < a || b > len)
        return MSADB_ECORRUPT;
    *part = rec + a;
    *part_len = b - a;
    return 0;
}

void msadb_key_slots(uint8_t k[12], uint32_t space, uint64_t page)
{
    msadb_put_be32(k, space);
    msadb_put_be64(k + 4, page);
}

void msadb_key_summ(uint8_t k[16], uint32_t space, uint32_t plane, uint64_t page)
{
    msadb_put_be32(k, space);
    msadb_put_be32(k + 4, plane);
    msadb_put_be64(k + 8, page);
}

void msadb_block_ad(const msadb_store *st, uint32_t space, uint32_t plane, uint64_t block, uint8_t ad[32])
{
    memcpy(ad, st->store_id, 16);
    msadb_put_le32(ad + 16, space);
    msadb_put_le32(ad + 20, plane);
    msadb_put_le64(ad + 24, block);
}

void msadb_docdata_ad(const msadb_store *st, uint64_t doc, uint8_t kind, uint8_t ad[26])
{
    memcpy(ad, st->store_id, 16);
    ad[16] = 'D';
    msadb_put_le64(ad + 17, doc);
    ad[25] = kind;
}

/* ------------------------------------------------------------------------ */
/* Document records                                                         */
/* ------------------------------------------------------------------------ */

size_t msadb_docrec_encode(const msadb_docrec *d, uint8_t *p)
{
    size_t len = d->expires ? DOC_REC_BYTES_V2 : DOC_REC_BYTES;
    memset(p, 0, len);
    p[0] = d->expires ? 2 : 1;
    p[1] = (uint8_t)d->flags;
    msadb_put_le32(p + 4, d->space_id);
    msadb_put_le64(p + 8, d->n_tokens);
    msadb_put_le64(p + 16, d->n_blocks);
    msadb_put_le64(p + 24, d->first_block);
    msadb_put_le64(p + 32, d->first_slot);
    msadb_put_le64(p + 40, (uint64_t)d->created);
    msadb_put_le64(p + 48, d->text_len);
    msadb_put_le64(p + 56, d->meta_len);
    msadb_put_le64(p + 64, d->title_len);
    if (d->expires)
        msadb_put_le64(p + 72, (uint64_t)d->expires);
    return len;
}

int msadb_docrec_decode(const uint8_t *p, size_t len, msadb_docrec *d)
{
    /* version 1: 72 bytes; version 2: 80, the expiry time (never 0) last */
    if (len < 1 || !((p[0] == 1 && len == DOC_REC_BYTES) || (p[0] == 2 && len == DOC_REC_BYTES_V2)) ||
        (p[1] & ~DOC_F_ALL))
        return MSADB_ECORRUPT;
    d->flags = p[1];
    d->space_id = msadb_get_le32(p + 4);
    d->n_tokens = msadb_get_le64(p + 8);
    d->n_blocks = msadb_get_le64(p + 16);
    d->first_block = msadb_get_le64(p + 24);
    d->first_slot = msadb_get_le64(p + 32);
    d->created = (int64_t)msadb_get_le64(p + 40);
    d->text_len = msadb_get_le64(p + 48);
    d->meta_len = msadb_get_le64(p + 56);
    d->title_len = msadb_get_le64(p + 64);
    d->expires = p[0] == 2 ? (int64_t)msadb_get_le64(p + 72) : 0;
    if (d->n_tokens == 0 || d->n_tokens > UINT32_MAX || d->n_blocks == 0 || d->n_blocks > d->n_tokens ||
        d->title_len > MSADB_TITLE_MAX || (p[0] == 2 && d->expires <= 0))
        return MSADB_ECORRUPT;
    return 0;
}

struct docs_each_ctx {
    const msadb_store *st;
    int (*fn)(uint64_t id, const msadb_docrec *r, void *ud);
    void *ud;
};

/* Documents of keyed spaces whose key this handle lacks are skipped. */
static int docs_each_one(const MDB_val *k, const MDB_val *v, void *ud)
{
    struct docs_each_ctx *c = ud;
    msadb_docrec r;
    if (k->mv_size != 8)
        return MSADB_ECORRUPT;
    uint64_t id = msadb_get_be64(k->mv_data);
    int rc = msadb_docrec_open(c->st, id, v->mv_data, v->mv_size, &r);
    if (rc == MSADB_EKEY)
        return 0;
    return rc ? rc : c->fn(id, &r, c->ud);
}

int msadb_docs_each(MDB_txn *txn, msadb_store *st, int (*fn)(uint64_t id, const msadb_docrec *r, void *ud),
                    void *ud)
{
    struct docs_each_ctx c = {st, fn, ud};
    return msadb_rec_each(txn, st, st->db_docs, docs_each_one, &c);
}

int msadb_docrec_put(MDB_txn *txn, msadb_store *st, uint64_t id, const msadb_docrec *d, unsigned flags)
{
    uint8_t k[8], rb[DOC_REC_BYTES_MAX];
    msadb_key_doc(k, id);
    MDB_val kv = {8, k}, v = {msadb_docrec_store(st, id, d, rb), rb};
    return msadb_rec_put(txn, st, st->db_docs, &kv, &v, flags);
}

int msadb_doc_lookup(MDB_txn *txn, msadb_store *st, uint64_t id, msadb_docrec *d)
{
    uint8_t k[8];
    msadb_key_doc(k, id);
    MDB_val kv = {8, k};
    uint8_t rec[DOC_REC_BYTES_MAX];
    size_t len = 0;
    int rc = msadb_rec_get_into(txn, st, st->db_docs, &kv, rec, sizeof rec, &len);
    if (rc == MDB_NOTFOUND)
        return MSADB_ENOTFOUND;
    if (rc)
        return rc;
    return msadb_docrec_open(st, id, rec, len, d);
}

/* ------------------------------------------------------------------------ */
/* Spaces                                                                   */
/* ------------------------------------------------------------------------ */

/* Space record: id u32, flags u32, n_docs u64, n_tokens u64, n_slots u64;
 * a keyed space's (flags & SPACE_F_KEYED, format 5) adds its key info. */
#define SPACE_REC_BYTES 32
#define SPACE_REC_BYTES_KEYED (SPACE_REC_BYTES + SPACE_KEYINFO_BYTES)

static size_t spacerec_encode(const msadb_spacerec *s, uint8_t *p)
{
    memset(p, 0, SPACE_REC_BYTES);
    msadb_put_le32(p, s->id);
    msadb_put_le32(p + 4, s->flags);
    msadb_put_le64(p + 8, s->n_docs);
    msadb_put_le64(p + 16, s->n_tokens);
    msadb_put_le64(p + 24, s->n_slots);
    if (!(s->flags & SPACE_F_KEYED))
        return SPACE_REC_BYTES;
    memcpy(p + SPACE_REC_BYTES, s->keyinfo, SPACE_KEYINFO_BYTES);
    return SPACE_REC_BYTES_KEYED;
}

static int spacerec_decode(const MDB_val *v, msadb_spacerec *s)
{
    const uint8_t *p = v->mv_data;
    if (v->mv_size < SPACE_REC_BYTES)
        return MSADB_ECORRUPT;
    memset(s, 0, sizeof *s);
    s->id = msadb_get_le32(p);
    s->flags = msadb_get_le32(p + 4);
    s->n_docs = msadb_get_le64(p + 8);
    s->n_tokens = msadb_get_le64(p + 16);
    s->n_slots = msadb_get_le64(p + 24);
    if (s->flags & ~SPACE_F_KEYED ||
        v->mv_size != (s->flags & SPACE_F_KEYED ? SPACE_REC_BYTES_KEYED : SPACE_REC_BYTES))
        return MSADB_ECORRUPT;
    if (s->flags & SPACE_F_KEYED)
        memcpy(s->keyinfo, p + SPACE_REC_BYTES, SPACE_KEYINFO_BYTES);
    return 0;
}

int msadb_space_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 1 || n > MSADB_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("._-:@/", c)))
            return 0;
    }
    return 1;
}

MDB_val msadb_space_dbkey(const msadb_store *st, const char *name, uint8_t h[32])
{
    MDB_val k = {strlen(name), (void *)name};
    if (st->hashed_names) {
        crypto_generichash(h, 32, (const uint8_t *)name, k.mv_size, st->name_key, sizeof st->name_key);
        k.mv_size = 32;
        k.mv_data = h;
    }
    return k;
}

struct names_each_ctx {
    int (*fn)(uint32_t id, const char *name, void *ud);
    void *ud;
};

static int names_each_one(const MDB_val *k, const MDB_val *v, void *ud)
{
    struct names_each_ctx *c = ud;
    char name[MSADB_NAME_MAX + 1];
    if (k->mv_size != 4 || v->mv_size < 1 || v->mv_size > MSADB_NAME_MAX)
        return MSADB_ECORRUPT;
    memcpy(name, v->mv_data, v->mv_size);
    name[v->mv_size] = 0;
    return msadb_space_name_valid(name) ? c->fn(msadb_get_be32(k->mv_data), name, c->ud) : MSADB_ECORRUPT;
}

int msadb_space_names_each(MDB_txn *txn, msadb_store *st, int (*fn)(uint32_t id, const char *name, void *ud),
                           void *ud)
{
    struct names_each_ctx c = {fn, ud};
    return msadb_rec_each(txn, st, st->db_spaceids, names_each_one, &c);
}

int msadb_space_get_txn(MDB_txn *txn, msadb_store *st, const char *name, msadb_spacerec *rec)
{
    if (!msadb_space_name_valid(name))
        return MSADB_EINVAL;
    uint8_t h[32];
    MDB_val k = msadb_space_dbkey(st, name, h), v;
    uint8_t buf[SPACE_REC_BYTES_KEYED];
    int rc = msadb_rec_get_into(txn, st, st->db_spaces, &k, buf, sizeof buf, &v.mv_size);
    if (rc == MDB_NOTFOUND)
        return MSADB_ENOTFOUND;
    v.mv_data = buf;
    return rc ? rc : spacerec_decode(&v, rec);
}

int msadb_space_put_txn(MDB_txn *txn, msadb_store *st, const char *name, const msadb_spacerec *rec)
{
    uint8_t buf[SPACE_REC_BYTES_KEYED], h[32];
    MDB_val k = msadb_space_dbkey(st, name, h), v = {spacerec_encode(rec, buf), buf};
    return msadb_rec_put(txn, st, st->db_spaces, &k, &v, 0);
}

int msadb_space_name_txn(MDB_txn *txn, msadb_store *st, uint32_t id, char name[MSADB_NAME_MAX + 1])
{
    uint8_t kb[4];
    msadb_put_be32(kb, id);
    size_t len;
    int rc = get_bounded(txn, st, st->db_spaceids, kb, 4, MSADB_NAME_MAX, name, &len);
    if (!rc)
        name[len] = 0;
    return rc;
}

int msadb_space_create_txn(msadb_store *st, MDB_txn *txn, const char *name, uint32_t *id_out)
{
    if (!msadb_space_name_valid(name))
        return MSADB_EINVAL;
    msadb_spacerec rec;
    int rc = msadb_space_get_txn(txn, st, name, &rec);
    if (rc == 0)
        return MSADB_EEXIST;
    if (rc != MSADB_ENOTFOUND)
        return rc;
    uint64_t next;
    if ((rc = msadb_meta_u64(txn, st, "next_space", &next)))
        return rc;
    if (next >= UINT32_MAX)
        return MSADB_ELIMIT;
    memset(&rec, 0, sizeof rec);
    rec.id = (uint32_t)next;
    if ((rc = msadb_space_put_txn(txn, st, name, &rec)))
        return rc;
    uint8_t kb[4];
    msadb_put_be32(kb, rec.id);
    MDB_val k = {4, kb}, v = {strlen(name), (void *)name};
    if ((rc = msadb_rec_put(txn, st, st->db_spaceids, &k, &v, 0)))
        return rc;
    if ((rc = msadb_meta_put_u64(txn, st, "next_space", next + 1)))
        return rc;
    if (id_out)
        *id_out = rec.id;
    return 0;
}

/* LMDB reports a short write as EIO.  When the file has reached the
 * process's file size limit (RLIMIT_FSIZE) or the filesystem has no room
 * left, say so: EFBIG or ENOSPC name the cause and the fix. */
static int write_error_cause(const msadb_store *st, int rc)
{
    if (rc != EIO)
        return rc;
    char path[4096];
    snprintf(path, sizeof path, "%s/data.mdb", st->path);
    struct rlimit rl;
    struct stat sb;
    long page = sysconf(_SC_PAGESIZE);
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && stat(path, &sb) == 0 &&
        (uint64_t)sb.st_size + (uint64_t)(page > 0 ? page : 4096) > (uint64_t)rl.rlim_cur)
        return EFBIG;
    struct statvfs vs;
    if (statvfs(st->path, &vs) == 0) {
        uint64_t avail = (uint64_t)(geteuid() == 0 ? vs.f_bfree : vs.f_bavail) * vs.f_frsize;
        if (avail < (1u << 20))
            return ENOSPC;
    }
    return rc;
}

/* Clears the reader slots of dead processes at most once a second (a
 * write transaction begins with it): a crashed reader must not pin pages
 * for the life of the store. */
static void reader_check(msadb_store *st)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t now = (int64_t)ts.tv_sec;
    if (now == st->last_reader_check)
        return;
    st->last_reader_check = now;
    int dead = 0;
    mdb_reader_check(st->env, &dead);
}

/* Runs fn inside a write transaction: serialized within the process, the
 * map grown and fn retried when LMDB reports MDB_MAP_FULL. */
int msadb_write(msadb_store *st, int (*fn)(msadb_store *, MDB_txn *, void *), void *ud)
{
    if (st->read_only)
        return MSADB_EREADONLY;
    pthread_mutex_lock(&st->write_lock);
    reader_check(st);
    int rc;
    for (int attempt = 0;; attempt++) {
        MDB_txn *txn = NULL;
        rc = mdb_txn_begin(st->env, NULL, 0, &txn);
        if (rc == 0) {
            rc = msadb_route_refresh(st, txn);
            if (rc == 0)
                rc = fn(st, txn, ud);
            if (rc == 0 && st->encrypted)
                rc = meta_mac_put(st, txn); /* the counters fn changed */
            if (rc == 0)
                rc = mdb_txn_commit(txn);
            else
                mdb_txn_abort(txn);
            if (st->kc_pending && rc == 0)
                st->kc_ver = st->kc_pending;
            st->kc_pending = 0;
            st->rec_mac = st->encrypted && st->kc_ver >= 3; /* an upgrade that failed is undone */
        }
        if ((rc != MDB_MAP_FULL && rc != MDB_MAP_RESIZED) || attempt >= 40)
            break;
        /* Growing remaps the file: only when no reader of this process holds
         * pointers into the map; otherwise MDB_MAP_FULL goes to the caller. */
        pthread_mutex_lock(&st->snap_lock);
        int rc2 = MDB_MAP_FULL;
        if (st->n_readers == 0) {
            MDB_envinfo info;
            mdb_env_info(st->env, &info);
            rc2 = mdb_env_set_mapsize(st->env, rc == MDB_MAP_RESIZED ? 0 : info.me_mapsize * 2);
        }
        pthread_mutex_unlock(&st->snap_lock);
        if (rc2) {
            rc = rc2;
            break;
        }
    }
    pthread_mutex_unlock(&st->write_lock);
    return write_error_cause(st, rc);
}

struct space_create_args {
    const char *name;
    uint32_t id;
};

static int space_create_fn(msadb_store *st, MDB_txn *txn, void *ud)
{
    struct space_create_args *a = ud;
    return msadb_space_create_txn(st, txn, a->name, &a->id);
}

int msadb_space_create(msadb_store *st, const char *name, uint32_t *id_out)
{
    if (!st || !msadb_space_name_valid(name))
        return MSADB_EINVAL;
    if (st->scoped)
        return MSADB_ESCOPE;
    struct space_create_args a = {name, 0};
    int rc = msadb_write(st, space_create_fn, &a);
    if (!rc && id_out)
        *id_out = a.id;
    return rc;
}

int msadb_scope_name(const msadb_store *st, const char *name)
{
    return st->scoped && strcmp(name, st->scope_name) != 0 ? MSADB_ESCOPE : 0;
}

int msadb_scope_id(const msadb_store *st, uint32_t id)
{
    return st->scoped && id != st->scope_id ? MSADB_ESCOPE : 0;
}

int msadb_space_read(msadb_store *st, const char *name, msadb_spacerec *rec)
{
    MDB_txn *txn;
    int rc = msadb_txn_read(st, &txn);
    if (rc)
        return rc;
    rc = msadb_space_get_txn(txn, st, name, rec);
    msadb_txn_done(st, txn);
    return rc;
}

int msadb_store_scope(msadb_store *st, const char *name)
{
    if (!st || !msadb_space_name_valid(name))
        return MSADB_EINVAL;
    msadb_spacerec rec;
    int rc = msadb_space_read(st, name, &rec);
    if (rc)
        return rc;
    if (st->scoped)
        return st->scope_id == rec.id && strcmp(st->scope_name, name) == 0 ? 0 : MSADB_ESCOPE;
    snprintf(st->scope_name, sizeof st->scope_name, "%s", name);
    st->scope_id = rec.id;
    st->scoped = 1;
    return 0;
}

static void space_info_fill(const msadb_store *st, msadb_space_info *info, const char *name, size_t len,
                            const msadb_spacerec *r)
{
    memset(info, 0, sizeof *info);
    info->id = r->id;
    memcpy(info->name, name, len);
    info->n_documents = r->n_docs;
    info->n_tokens = r->n_tokens;
    info->keyed = (r->flags & SPACE_F_KEYED) != 0;
    info->locked = msadb_space_access(st, r) != 0;
}

int msadb_space_get(msadb_store *st, const char *name, msadb_space_info *out)
{
    if (!st || !out || !msadb_space_name_valid(name))
        return MSADB_EINVAL;
    if (msadb_scope_name(st, name))
        return MSADB_ESCOPE;
    msadb_spacerec rec;
    int rc = msadb_space_read(st, name, &rec);
    if (!rc)
        rc = msadb_scope_id(st, rec.id);
    if (!rc)
        space_info_fill(st, out, name, strlen(name), &rec);
    return rc;
}

struct space_list_ctx {
    msadb_store *st;
    MDB_txn *txn;
    msadb_space_info *infos;
    size_t n, cap;
};

static int space_list_one(uint32_t id, const char *name, void *ud)
{
    struct space_list_ctx *c = ud;
    msadb_spacerec rec;
    int rc = msadb_space_get_txn(c->txn, c->st, name, &rec);
    if (rc)
        return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
    if (rec.id != id)
        return MSADB_ECORRUPT;
    if (msadb_scope_id(c->st, rec.id))
        return 0;
    if (msadb_grow(&c->infos, &c->cap, c->n + 1, sizeof *c->infos, 8))
        return MSADB_ENOMEM;
    space_info_fill(c->st, &c->infos[c->n++], name, strlen(name), &rec);
    return 0;
}

static int info_name_cmp(const void *a, const void *b)
{
    return strcmp(((const msadb_space_info *)a)->name, ((const msadb_space_info *)b)->name);
}

/* Walks the names (`spaceids`), not the keys of `spaces`: those are keyed
 * hashes in a store with hidden names. */
int msadb_space_list(msadb_store *st, int (*cb)(const msadb_space_info *, void *), void *ud)
{
    if (!st || !cb)
        return MSADB_EINVAL;
    MDB_txn *txn;
    int rc = msadb_txn_read(st, &txn);
    if (rc)
        return rc;
    struct space_list_ctx c = {st, txn, NULL, 0, 0};
    rc = msadb_space_names_each(txn, st, space_list_one, &c);
    msadb_txn_done(st, txn);
    if (!rc)
        qsort(c.infos, c.n, sizeof *c.infos, info_name_cmp);
    for (size_t i = 0; !rc && i < c.n; i++)
        rc = cb(&c.infos[i], ud);
    free(c.infos);
    return rc;
}

/* Records that fail authentication or do not decode are left to verify,
 * which reports them by name. */
int msadb_spaces_open(msadb_store *st)
{
    MDB_txn *txn;
    int rc = msadb_txn_read(st, &txn);
    if (rc)
        return rc;
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, st->db_spaces, &cur))) {
        msadb_txn_done(st, txn);
        return rc;
    }
    uint8_t *buf = NULL;
    size_t cap = 0;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        msadb_spacerec r;
        int orc = msadb_rec_open(st, st->db_spaces, &k, &v, &buf, &cap);
        if (orc == MSADB_ENOMEM) {
            rc = orc;
            break;
        }
        if (!orc && !spacerec_decode(&v, &r) && msadb_space_access(st, &r)) {
            rc = MSADB_EKEY;
            break;
        }
    }
    free(buf);
    mdb_cursor_close(cur);
    msadb_txn_done(st, txn);
    return rc == MDB_NOTFOUND ? 0 : rc;
}


/* ------------------------------------------------------------------------ */
/* Statistics                                                               */
/* ------------------------------------------------------------------------ */

static uint64_t db_bytes(MDB_txn *txn, MDB_dbi dbi, unsigned psize)
{
    MDB_stat s;
    if (mdb_stat(txn, dbi, &s))
        return 0;
    return (uint64_t)(s.ms_branch_pages + s.ms_leaf_pages + s.ms_overflow_pages) * psize;
}

static int stat_space_cb(const msadb_space_info *info, void *ud)
{
    msadb_stat_info *out = ud;
    out->n_spaces++;
    out->n_documents += info->n_documents;
    out->n_tokens += info->n_tokens;
    return 0;
}

typedef struct {
    uint32_t readers;
    uint64_t oldest;
} reader_tally;

/* One line of mdb_reader_list: "pid thread txnid" ("-" for a free slot). */
static int reader_line(const char *msg, void *ctx)
{
    reader_tally *t = ctx;
    long pid;
    unsigned long thread;
    unsigned long long txnid;
    if (sscanf(msg, "%ld %lx %llu", &pid, &thread, &txnid) == 3) {
        t->readers++;
        if (txnid < t->oldest)
            t->oldest = txnid;
    }
    return 0;
}

static uint64_t live_bytes(msadb_store *st, MDB_txn *txn, unsigned psize)
{
    MDB_dbi dbis[] = {st->db_meta,  st->db_spaces, st->db_spaceids, st->db_docs,
                      st->db_docdata, st->db_blocks, st->db_slots,    st->db_summ};
    MDB_dbi main_db;
    uint64_t total = 0;
    for (size_t i = 0; i < sizeof dbis / sizeof dbis[0]; i++)
        total += db_bytes(txn, dbis[i], psize);
    if (mdb_dbi_open(txn, NULL, 0, &main_db) == 0)
        total += db_bytes(txn, main_db, psize);
    return total + 2 * (uint64_t)psize; /* the two meta pages */
}

int msadb_stat(msadb_store *st, msadb_stat_info *out)
{
    if (!st || !out)
        return MSADB_EINVAL;
    memset(out, 0, sizeof *out);
    int dead = 0;
    mdb_reader_check(st->env, &dead);
    reader_tally rt = {0, UINT64_MAX};
    mdb_reader_list(st->env, reader_line, &rt);
    int rc = msadb_space_list(st, stat_space_cb, out);
    if (rc)
        return rc;
    MDB_txn *txn;
    if ((rc = msadb_txn_read(st, &txn)))
        return rc;
    MDB_stat es;
    MDB_envinfo info;
    mdb_env_stat(st->env, &es);
    mdb_env_info(st->env, &info);
    MDB_stat bs;
    mdb_stat(txn, st->db_blocks, &bs);
    out->format_version = st->format;
    msadb_meta_format(txn, st, &out->format_version); /* another writer may have raised it */
    out->n_blocks = bs.ms_entries;
    out->block_bytes = db_bytes(txn, st->db_blocks, es.ms_psize);
    out->summary_bytes = db_bytes(txn, st->db_summ, es.ms_psize) + db_bytes(txn, st->db_slots, es.ms_psize);
    out->map_size = info.me_mapsize;
    out->map_used = (uint64_t)(info.me_last_pgno + 1) * es.ms_psize;
    out->encrypted = st->encrypted;
    out->readers = rt.readers;
    out->oldest_reader_lag = rt.readers && info.me_last_txnid > rt.oldest ? info.me_last_txnid - rt.oldest : 0;
    out->live_bytes = live_bytes(st, txn, es.ms_psize);
    msadb_txn_done(st, txn);
    return 0;
}


/* ------------------------------------------------------------------------ */
/* The model record                                                         */
/* ------------------------------------------------------------------------ */

/* meta "model": u32 version (1), u32 n_layers, n_kv_heads, n_q_heads,
 * head_dim, u64 file size, 32-byte BLAKE2b-256 hash, u32 path length, the
 * path bytes (no NUL).  docs/format.md. */
#define MODEL_REC_FIXED (4 + 16 + 8 + MSADB_MODEL_HASH_BYTES + 4)

static int set_model_fn(msadb_store *st, MDB_txn *txn, void *ud)
{
    const msadb_model_id *id = ud;
    size_t pl = strlen(id->path);
    uint8_t rec[MODEL_REC_FIXED + MSADB_MODEL_PATH_MAX];
    uint8_t *p = rec;
    msadb_put_le32(p, 1);
    msadb_put_le32(p + 4, id->n_layers);
    msadb_put_le32(p + 8, id->n_kv_heads);
    msadb_put_le32(p + 12, id->n_q_heads);
    msadb_put_le32(p + 16, id->head_dim);
    msadb_put_le64(p + 20, id->file_size);
    memcpy(p + 28, id->hash, MSADB_MODEL_HASH_BYTES);
    msadb_put_le32(p + 28 + MSADB_MODEL_HASH_BYTES, (uint32_t)pl);
    memcpy(p + MODEL_REC_FIXED, id->path, pl);
    return put_meta(txn, st, "model", rec, MODEL_REC_FIXED + pl);
}

int msadb_store_set_model(msadb_store *st, const msadb_model_id *id)
{
    if (!st || !id || !id->path[0] || !memchr(id->path, 0, sizeof id->path))
        return MSADB_EINVAL;
    if (st->read_only)
        return MSADB_EREADONLY;
    if (id->n_layers != st->sig.n_layers || id->n_kv_heads != st->sig.n_kv_heads ||
        id->n_q_heads != st->sig.n_q_heads || id->head_dim != st->sig.head_dim)
        return MSADB_ESIGNATURE;
    return msadb_write(st, set_model_fn, (void *)id);
}

int msadb_store_get_model(msadb_store *st, msadb_model_id *out)
{
    if (!st || !out)
        return MSADB_EINVAL;
    memset(out, 0, sizeof *out);
    MDB_txn *txn;
    int rc = msadb_txn_read(st, &txn);
    if (rc)
        return rc;
    MDB_val v;
    rc = get_meta(txn, st, "model", &v);
    if (rc == MDB_NOTFOUND) {
        rc = MSADB_ENOTFOUND;
    } else if (!rc) {
        const uint8_t *p = v.mv_data;
        uint32_t pl = v.mv_size >= MODEL_REC_FIXED ? msadb_get_le32(p + 28 + MSADB_MODEL_HASH_BYTES) : 0;
        if (v.mv_size < MODEL_REC_FIXED || msadb_get_le32(p) != 1 || pl == 0 ||
            pl > MSADB_MODEL_PATH_MAX || v.mv_size != MODEL_REC_FIXED + pl) {
            rc = MSADB_ECORRUPT;
        } else {
            out->n_layers = msadb_get_le32(p + 4);
            out->n_kv_heads = msadb_get_le32(p + 8);
            out->n_q_heads = msadb_get_le32(p + 12);
            out->head_dim = msadb_get_le32(p + 16);
            out->file_size = msadb_get_le64(p + 20);
            memcpy(out->hash, p + 28, MSADB_MODEL_HASH_BYTES);
            memcpy(out->path, p + MODEL_REC_FIXED, pl);
        }
    }
    msadb_txn_done(st, txn);
    return rc;
}

/* The LMDB environment, for vacuum.c's copy. */
MDB_env *msadb_store_env(msadb_store *st) { return st->env; }
