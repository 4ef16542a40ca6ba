/* store.c -- the storage layer: one LMDB environment per store holding
 * spaces, documents, encoded blocks and summary pages (see docs/format.md).
 *
 * Writes are batched: msadb_batch_add() validates and encodes a document
 * (quantize, compress, summarize) outside any transaction; commit then
 * assigns ids, seals blocks when encrypted and writes everything in one
 * LMDB write transaction, retrying after growing the map when it is full. */
#include "store.h"

#include <errno.h>
#include <lmdb.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <sodium.h>

#include "codec.h"
#include "crypto.h"
#include "store_impl.h"

/* ------------------------------------------------------------------------ */
/* Signatures                                                               */
/* ------------------------------------------------------------------------ */

const char *msadb_dtype_name(int dtype)
{
    static const char *names[] = {"f32", "f16", "bf16", "int8", "q4"};
    return dtype >= 0 && dtype <= MSADB_DTYPE_Q4 ? names[dtype] : NULL;
}

int msadb_dtype_parse(const char *name)
{
    if (!name)
        return MSADB_EINVAL;
    for (int i = 0; i <= MSADB_DTYPE_Q4; i++)
        if (strcmp(name, msadb_dtype_name(i)) == 0)
            return i;
    return MSADB_EINVAL;
}

int msadb_signature_init(msadb_signature *sig, uint32_t n_layers, uint32_t n_kv_heads,
                         uint32_t n_q_heads, uint32_t head_dim)
{
    if (!sig)
        return MSADB_EINVAL;
    memset(sig, 0, sizeof *sig);
    sig->n_layers = n_layers;
    sig->n_kv_heads = n_kv_heads;
    sig->n_q_heads = n_q_heads;
    sig->head_dim = head_dim;
    uint32_t first = n_layers / 2;
    sig->n_memory_layers = n_layers - first;
    for (uint32_t l = first; l < n_layers && l < MSADB_MAX_LAYERS; l++)
        sig->memory_layers[l - first] = (uint16_t)l;
    sig->block_size = 64;
    sig->dtype = MSADB_DTYPE_F16;
    sig->summary_kinds = MSADB_SUMMARY_ALL;
    sig->position_scheme = MSADB_POSITIONS_DOCUMENT;
    return msadb_signature_validate(sig);
}

int msadb_signature_validate(const msadb_signature *s)
{
    if (!s)
        return MSADB_EINVAL;
    if (s->n_layers < 1 || s->n_layers > MSADB_MAX_LAYERS || s->n_kv_heads < 1 ||
        s->n_kv_heads > MSADB_MAX_HEADS || s->n_q_heads < s->n_kv_heads ||
        s->n_q_heads > MSADB_MAX_HEADS || s->n_q_heads % s->n_kv_heads != 0 || s->head_dim < 1 ||
        s->head_dim > MSADB_MAX_HEAD_DIM)
        return MSADB_EINVAL;
    if (s->n_memory_layers < 1 || s->n_memory_layers > s->n_layers)
        return MSADB_EINVAL;
    for (uint32_t i = 0; i < s->n_memory_layers; i++) {
        if (s->memory_layers[i] >= s->n_layers)
            return MSADB_EINVAL;
        if (i > 0 && s->memory_layers[i] <= s->memory_layers[i - 1])
            return MSADB_EINVAL;
    }
    for (uint32_t i = s->n_memory_layers; i < MSADB_MAX_LAYERS; i++)
        if (s->memory_layers[i] != 0)
            return MSADB_EINVAL; /* unused entries are zero so signatures compare bytewise */
    if (s->block_size < 1 || s->block_size > MSADB_MAX_BLOCK)
        return MSADB_EINVAL;
    if (s->dtype > MSADB_DTYPE_Q4)
        return MSADB_EINVAL;
    if (s->summary_kinds == 0 || (s->summary_kinds & ~MSADB_SUMMARY_ALL))
        return MSADB_EINVAL;
    if (s->position_scheme != MSADB_POSITIONS_DOCUMENT)
        return MSADB_EINVAL;
    return 0;
}

uint32_t msadb_signature_planes(const msadb_signature *sig)
{
    return sig ? sig->n_memory_layers * sig->n_kv_heads : 0;
}

int msadb_signature_memory_index(const msadb_signature *sig, uint32_t layer)
{
    if (!sig)
        return MSADB_EINVAL;
    for (uint32_t i = 0; i < sig->n_memory_layers && i < MSADB_MAX_LAYERS; i++)
        if (sig->memory_layers[i] == layer)
            return (int)i;
    return MSADB_ENOTFOUND;
}

/* Serialized signature: 9 LE u32 fields then n_memory_layers LE u16. */
static size_t sig_encode(const msadb_signature *s, uint8_t *out)
{
    uint32_t f[9] = {s->n_layers,   s->n_kv_heads, s->n_q_heads,     s->head_dim,      s->n_memory_layers,
                     s->block_size, s->dtype,      s->summary_kinds, s->position_scheme};
    for (int i = 0; i < 9; i++)
        msadb_put_le32(out + 4 * i, f[i]);
    for (uint32_t i = 0; i < s->n_memory_layers; i++)
        msadb_put_le16(out + 36 + 2 * i, s->memory_layers[i]);
    return 36 + 2 * (size_t)s->n_memory_layers;
}

int msadb_sig_decode(const uint8_t *p, size_t len, msadb_signature *s)
{
    if (len < 36)
        return MSADB_ECORRUPT;
    memset(s, 0, sizeof *s);
    uint32_t f[9];
    for (int i = 0; i < 9; i++)
        f[i] = msadb_get_le32(p + 4 * i);
    s->n_layers = f[0];
    s->n_kv_heads = f[1];
    s->n_q_heads = f[2];
    s->head_dim = f[3];
    s->n_memory_layers = f[4];
    s->block_size = f[5];
    s->dtype = f[6];
    s->summary_kinds = f[7];
    s->position_scheme = f[8];
    if (s->n_memory_layers > MSADB_MAX_LAYERS || len != 36 + 2 * (size_t)s->n_memory_layers)
        return MSADB_ECORRUPT;
    for (uint32_t i = 0; i < s->n_memory_layers; i++)
        s->memory_layers[i] = msadb_get_le16(p + 36 + 2 * i);
    return msadb_signature_validate(s) == 0 ? 0 : MSADB_ECORRUPT;
}

static int sig_equal(const msadb_signature *a, const msadb_signature *b)
{
    uint8_t ea[36 + 2 * MSADB_MAX_LAYERS], eb[36 + 2 * MSADB_MAX_LAYERS];
    size_t na = sig_encode(a, ea), nb = sig_encode(b, eb);
    return na == nb && memcmp(ea, eb, na) == 0;
}

/* ------------------------------------------------------------------------ */
/* Options, keys                                                            */
/* ------------------------------------------------------------------------ */

#define DEFAULT_MAP_SIZE (64ull << 30)

void msadb_options_init(msadb_options *opt)
{
    if (!opt)
        return;
    memset(opt, 0, sizeof *opt);
    opt->zstd_level = 1;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int msadb_key_file_read(const char *path, unsigned char key[MSADB_KEY_BYTES])
{
    if (!path || !key)
        return MSADB_EINVAL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno ? errno : MSADB_EIO;
    uint8_t buf[80];
    size_t n = fread(buf, 1, sizeof buf, f);
    int err = ferror(f);
    fclose(f);
    if (err)
        return MSADB_EIO;
    if (n == MSADB_KEY_BYTES) {
        memcpy(key, buf, MSADB_KEY_BYTES);
        return 0;
    }
    while (n > 64 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (n != 64)
        return MSADB_EINVAL;
    for (int i = 0; i < MSADB_KEY_BYTES; i++) {
        int hi = hexval(buf[2 * i]), lo = hexval(buf[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return MSADB_EINVAL;
        key[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Environment                                                              */
/* ------------------------------------------------------------------------ */

static const char *const meta_keycheck_text = "msadb key check v1";

static int get_meta(MDB_txn *txn, msadb_store *st, const char *name, MDB_val *v)
{
    MDB_val k = {strlen(name), (void *)name};
    return mdb_get(txn, st->db_meta, &k, v);
}

static int put_meta(MDB_txn *txn, msadb_store *st, const char *name, const void *data, size_t len)
{
    MDB_val k = {strlen(name), (void *)name}, v = {len, (void *)data};
    return mdb_put(txn, st->db_meta, &k, &v, 0);
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

int msadb_meta_put_u64(MDB_txn *txn, msadb_store *st, const char *name, uint64_t val)
{
    uint8_t b[8];
    msadb_put_le64(b, val);
    return put_meta(txn, st, name, b, 8);
}

static int env_open(msadb_store *st, const char *path, const msadb_options *opt, int creating)
{
    int rc = mdb_env_create(&st->env);
    if (rc)
        return rc;
    mdb_env_set_maxdbs(st->env, 16);
    if (opt->max_readers)
        mdb_env_set_maxreaders(st->env, opt->max_readers);
    uint64_t map = opt->map_size ? opt->map_size : DEFAULT_MAP_SIZE;
    if ((rc = mdb_env_set_mapsize(st->env, (size_t)map)))
        return rc;
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD;
    if (opt->read_only)
        flags |= MDB_RDONLY;
    if (opt->no_sync)
        flags |= MDB_NOSYNC;
    if (creating) {
        if (mkdir(path, 0775) != 0 && errno != EEXIST)
            return errno;
    } else {
        char probe[4096];
        snprintf(probe, sizeof probe, "%s/data.mdb", path);
        struct stat sb;
        if (stat(path, &sb) != 0)
            return errno == ENOENT ? MSADB_ENOTSTORE : errno;
        if (!S_ISDIR(sb.st_mode) || stat(probe, &sb) != 0)
            return MSADB_ENOTSTORE;
    }
    rc = mdb_env_open(st->env, path, flags, 0664);
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
        int rc = mdb_dbi_open(txn, db_names[i], flags, dbis[i]);
        if (rc == MDB_NOTFOUND)
            return MSADB_ENOTSTORE;
        if (rc)
            return rc;
    }
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
    uint8_t ad[24], sealed[64];
    size_t tl = strlen(meta_keycheck_text);
    msadb_seal(st->key, ad, (size_t)keycheck_ad(st, ad), (const uint8_t *)meta_keycheck_text, tl, sealed);
    int rc = put_meta(txn, st, "crypt", rec, sizeof rec);
    if (!rc)
        rc = put_meta(txn, st, "keycheck", sealed, tl + MSADB_SEAL_OVERHEAD);
    return rc;
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
        uint64_t ops = msadb_get_le64(r + 4), mem = msadb_get_le64(r + 12);
        if (ops < 1 || ops > 64 || mem < 8192 || mem > (4ull << 30))
            return MSADB_ECORRUPT;
        if ((rc = msadb_kdf(opt->passphrase, r + 20, ops, mem, st->key)))
            return rc;
    } else {
        return MSADB_EKEY;
    }
    MDB_val kc;
    if ((rc = get_meta(txn, st, "keycheck", &kc)))
        return rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
    size_t tl = strlen(meta_keycheck_text);
    if (kc.mv_size != tl + MSADB_SEAL_OVERHEAD)
        return MSADB_ECORRUPT;
    uint8_t ad[24], plain[64];
    if (msadb_unseal(st->key, ad, (size_t)keycheck_ad(st, ad), kc.mv_data, kc.mv_size, plain) != 0 ||
        memcmp(plain, meta_keycheck_text, tl) != 0)
        return MSADB_EKEY;
    st->encrypted = 1;
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
    if ((rc = open_dbs(st, txn, MDB_CREATE)))
        goto fail;
    if (get_meta(txn, st, "format", &v) == 0) {
        rc = MSADB_EEXIST;
        goto fail;
    }
    st->sig = *sig;
    st->page_cap = MSADB_PAGE_CAP;
    msadb_random(st->store_id, sizeof st->store_id);
    uint8_t sigbuf[36 + 2 * MSADB_MAX_LAYERS], u32[4];
    msadb_put_le32(u32, MSADB_FORMAT_VERSION);
    if ((rc = put_meta(txn, st, "format", u32, 4)))
        goto fail;
    if ((rc = put_meta(txn, st, "signature", sigbuf, sig_encode(sig, sigbuf))))
        goto fail;
    if ((rc = put_meta(txn, st, "store_id", st->store_id, 16)))
        goto fail;
    msadb_put_le32(u32, st->page_cap);
    if ((rc = put_meta(txn, st, "page_cap", u32, 4)))
        goto fail;
    if ((rc = setup_crypto_create(st, txn, opt)))
        goto fail;
    if ((rc = msadb_space_create_txn(st, txn, "default", NULL)))
        goto fail;
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc)
        goto fail;
    *out = st;
    return 0;
fail:
    if (txn)
        mdb_txn_abort(txn);
    store_free(st);
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
    if (rc)
        return rc;
    if ((rc = msadb_crypto_init()))
        return rc;
    msadb_store *st = store_alloc(path, opt);
    if (!st)
        return MSADB_ENOMEM;
    MDB_txn *txn = NULL;
    if ((rc = env_open(st, path, opt, 0)))
        goto fail;
    if ((rc = msadb_txn_read(st, &txn)))
        goto fail;
    if ((rc = open_dbs(st, txn, 0)))
        goto fail;
    MDB_val v;
    if ((rc = get_meta(txn, st, "format", &v))) {
        rc = rc == MDB_NOTFOUND ? MSADB_ENOTSTORE : rc;
        goto fail;
    }
    if (v.mv_size != 4) {
        rc = MSADB_ECORRUPT;
        goto fail;
    }
    uint32_t format = msadb_get_le32(v.mv_data);
    if (format > MSADB_FORMAT_VERSION) {
        rc = MSADB_EVERSION;
        goto fail;
    }
    if (format < 1) {
        rc = MSADB_ECORRUPT;
        goto fail;
    }
    if ((rc = get_meta(txn, st, "signature", &v)) || (rc = msadb_sig_decode(v.mv_data, v.mv_size, &st->sig)))
        goto fail_nf;
    if (expect && !sig_equal(expect, &st->sig)) {
        rc = MSADB_ESIGNATURE;
        goto fail;
    }
    if ((rc = get_meta(txn, st, "store_id", &v)))
        goto fail_nf;
    if (v.mv_size != 16) {
        rc = MSADB_ECORRUPT;
        goto fail;
    }
    memcpy(st->store_id, v.mv_data, 16);
    if ((rc = get_meta(txn, st, "page_cap", &v)))
        goto fail_nf;
    st->page_cap = v.mv_size == 4 ? msadb_get_le32(v.mv_data) : 0;
    if (st->page_cap < 1 || st->page_cap > 65536) {
        rc = MSADB_ECORRUPT;
        goto fail;
    }
    if ((rc = setup_crypto_open(st, txn, opt)))
        goto fail;
    /* Committing (not aborting) keeps the database handles opened here. */
    rc = mdb_txn_commit(txn);
    pthread_mutex_lock(&st->snap_lock);
    st->n_readers--;
    pthread_mutex_unlock(&st->snap_lock);
    txn = NULL;
    if (rc)
        goto fail;
    *out = st;
    return 0;
fail_nf:
    if (rc == MDB_NOTFOUND)
        rc = MSADB_ECORRUPT;
fail:
    if (txn)
        msadb_txn_done(st, txn);
    store_free(st);
    return rc;
}

void msadb_close(msadb_store *st) { store_free(st); }

const msadb_signature *msadb_store_signature(const msadb_store *st) { return st ? &st->sig : NULL; }

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

void msadb_key_block(uint8_t k[12], uint64_t block, uint32_t plane)
{
    msadb_put_be64(k, block);
    msadb_put_be32(k + 8, plane);
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

size_t msadb_summ_entry_bytes(const msadb_store *st)
{
    size_t d = st->sig.head_dim, b = 0;
    if (st->sig.summary_kinds & MSADB_SUMMARY_MEAN)
        b += 2 * d;
    if (st->sig.summary_kinds & MSADB_SUMMARY_MINMAX)
        b += 4 * d;
    return b;
}

void msadb_block_ad(const msadb_store *st, uint32_t space, uint32_t plane, uint64_t block, uint8_t ad[32])
{
    memcpy(ad, st->store_id, 16);
    msadb_put_le32(ad + 16, space);
    msadb_put_le32(ad + 20, plane);
    msadb_put_le64(ad + 24, block);
}

static void docdata_ad(const msadb_store *st, uint64_t doc, uint8_t kind, uint8_t ad[26])
{
    memcpy(ad, st->store_id, 16);
    ad[16] = 'D';
    msadb_put_le64(ad + 17, doc);
    ad[25] = kind;
}

/* ------------------------------------------------------------------------ */
/* Document records                                                         */
/* ------------------------------------------------------------------------ */

void msadb_docrec_encode(const msadb_docrec *d, uint8_t *p)
{
    memset(p, 0, DOC_REC_BYTES);
    p[0] = 1;
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
}

int msadb_docrec_decode(const uint8_t *p, size_t len, msadb_docrec *d)
{
    if (len != DOC_REC_BYTES || p[0] != 1 || (p[1] & ~DOC_F_ALL))
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
    if (d->n_tokens == 0 || d->n_tokens > UINT32_MAX || d->n_blocks == 0 || d->n_blocks > d->n_tokens ||
        d->title_len > MSADB_TITLE_MAX)
        return MSADB_ECORRUPT;
    return 0;
}

int msadb_doc_lookup(MDB_txn *txn, msadb_store *st, uint64_t id, msadb_docrec *d)
{
    uint8_t k[8];
    msadb_key_doc(k, id);
    MDB_val kv = {8, k}, v;
    int rc = mdb_get(txn, st->db_docs, &kv, &v);
    if (rc == MDB_NOTFOUND)
        return MSADB_ENOTFOUND;
    if (rc)
        return rc;
    return msadb_docrec_decode(v.mv_data, v.mv_size, d);
}

/* ------------------------------------------------------------------------ */
/* Spaces                                                                   */
/* ------------------------------------------------------------------------ */

/* Space record: id u32, pad u32, n_docs u64, n_tokens u64, n_slots u64. */
#define SPACE_REC_BYTES 32

static void spacerec_encode(const msadb_spacerec *s, uint8_t *p)
{
    memset(p, 0, SPACE_REC_BYTES);
    msadb_put_le32(p, s->id);
    msadb_put_le64(p + 8, s->n_docs);
    msadb_put_le64(p + 16, s->n_tokens);
    msadb_put_le64(p + 24, s->n_slots);
}

static int spacerec_decode(const MDB_val *v, msadb_spacerec *s)
{
    if (v->mv_size != SPACE_REC_BYTES)
        return MSADB_ECORRUPT;
    const uint8_t *p = v->mv_data;
    s->id = msadb_get_le32(p);
    s->n_docs = msadb_get_le64(p + 8);
    s->n_tokens = msadb_get_le64(p + 16);
    s->n_slots = msadb_get_le64(p + 24);
    return 0;
}

static int valid_space_name(const char *name)
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

int msadb_space_get_txn(MDB_txn *txn, msadb_store *st, const char *name, msadb_spacerec *rec)
{
    if (!valid_space_name(name))
        return MSADB_EINVAL;
    MDB_val k = {strlen(name), (void *)name}, v;
    int rc = mdb_get(txn, st->db_spaces, &k, &v);
    if (rc == MDB_NOTFOUND)
        return MSADB_ENOTFOUND;
    return rc ? rc : spacerec_decode(&v, rec);
}

int msadb_space_put_txn(MDB_txn *txn, msadb_store *st, const char *name, const msadb_spacerec *rec)
{
    uint8_t buf[SPACE_REC_BYTES];
    spacerec_encode(rec, buf);
    MDB_val k = {strlen(name), (void *)name}, v = {SPACE_REC_BYTES, buf};
    return mdb_put(txn, st->db_spaces, &k, &v, 0);
}

int msadb_space_name_txn(MDB_txn *txn, msadb_store *st, uint32_t id, char name[MSADB_NAME_MAX + 1])
{
    uint8_t kb[4];
    msadb_put_be32(kb, id);
    MDB_val k = {4, kb}, v;
    int rc = mdb_get(txn, st->db_spaceids, &k, &v);
    if (rc == MDB_NOTFOUND)
        return MSADB_ENOTFOUND;
    if (rc)
        return rc;
    if (v.mv_size < 1 || v.mv_size > MSADB_NAME_MAX)
        return MSADB_ECORRUPT;
    memcpy(name, v.mv_data, v.mv_size);
    name[v.mv_size] = 0;
    return 0;
}

int msadb_space_create_txn(msadb_store *st, MDB_txn *txn, const char *name, uint32_t *id_out)
{
    if (!valid_space_name(name))
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
    if ((rc = mdb_put(txn, st->db_spaceids, &k, &v, 0)))
        return rc;
    if ((rc = msadb_meta_put_u64(txn, st, "next_space", next + 1)))
        return rc;
    if (id_out)
        *id_out = rec.id;
    return 0;
}

/* Runs fn inside a write transaction: serialized within the process, the
 * map grown and fn retried when LMDB reports MDB_MAP_FULL. */
int msadb_write(msadb_store *st, int (*fn)(msadb_store *, MDB_txn *, void *), void *ud)
{
    if (st->read_only)
        return MSADB_EREADONLY;
    pthread_mutex_lock(&st->write_lock);
    int rc;
    for (int attempt = 0;; attempt++) {
        MDB_txn *txn = NULL;
        rc = mdb_txn_begin(st->env, NULL, 0, &txn);
        if (rc == 0) {
            rc = fn(st, txn, ud);
            if (rc == 0)
                rc = mdb_txn_commit(txn);
            else
                mdb_txn_abort(txn);
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
    return rc;
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
    if (!st || !valid_space_name(name))
        return MSADB_EINVAL;
    struct space_create_args a = {name, 0};
    int rc = msadb_write(st, space_create_fn, &a);
    if (!rc && id_out)
        *id_out = a.id;
    return rc;
}

static void space_info_fill(msadb_space_info *info, const char *name, size_t len, const msadb_spacerec *r)
{
    memset(info, 0, sizeof *info);
    info->id = r->id;
    memcpy(info->name, name, len);
    info->n_documents = r->n_docs;
    info->n_tokens = r->n_tokens;
}

int msadb_space_get(msadb_store *st, const char *name, msadb_space_info *out)
{
    if (!st || !out || !valid_space_name(name))
        return MSADB_EINVAL;
    MDB_txn *txn;
    int rc = msadb_txn_read(st, &txn);
    if (rc)
        return rc;
    msadb_spacerec rec;
    rc = msadb_space_get_txn(txn, st, name, &rec);
    if (!rc)
        space_info_fill(out, name, strlen(name), &rec);
    msadb_txn_done(st, txn);
    return rc;
}

int msadb_space_list(msadb_store *st, int (*cb)(const msadb_space_info *, void *), void *ud)
{
    if (!st || !cb)
        return MSADB_EINVAL;
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = msadb_txn_read(st, &txn);
    if (rc)
        return rc;
    if ((rc = mdb_cursor_open(txn, st->db_spaces, &cur))) {
        msadb_txn_done(st, txn);
        return rc;
    }
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        msadb_spacerec rec;
        msadb_space_info info;
        if (k.mv_size < 1 || k.mv_size > MSADB_NAME_MAX || spacerec_decode(&v, &rec)) {
            rc = MSADB_ECORRUPT;
            break;
        }
        space_info_fill(&info, k.mv_data, k.mv_size, &rec);
        if ((rc = cb(&info, ud)) != 0)
            break;
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    mdb_cursor_close(cur);
    msadb_txn_done(st, txn);
    return rc;
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

int msadb_stat(msadb_store *st, msadb_stat_info *out)
{
    if (!st || !out)
        return MSADB_EINVAL;
    memset(out, 0, sizeof *out);
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
    uint32_t planes = msadb_signature_planes(&st->sig);
    out->format_version = MSADB_FORMAT_VERSION;
    out->n_blocks = planes ? bs.ms_entries / planes : 0;
    out->block_bytes = db_bytes(txn, st->db_blocks, es.ms_psize);
    out->summary_bytes = db_bytes(txn, st->db_summ, es.ms_psize) + db_bytes(txn, st->db_slots, es.ms_psize);
    out->map_size = info.me_mapsize;
    out->map_used = (uint64_t)(info.me_last_pgno + 1) * es.ms_psize;
    out->encrypted = st->encrypted;
    msadb_txn_done(st, txn);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Batches                                                                  */
/* ------------------------------------------------------------------------ */

/* A growable byte buffer. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return MSADB_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_append(buf_t *b, const void *data, size_t len)
{
    int rc = buf_reserve(b, len);
    if (rc)
        return rc;
    if (len)
        memcpy(b->p + b->len, data, len);
    b->len += len;
    return 0;
}

/* One encoded document of a batch.  Offsets point into the batch arena. */
typedef struct {
    char space[MSADB_NAME_MAX + 1];
    uint64_t n_tokens, n_blocks;
    size_t title_off, title_len, meta_off, meta_len, text_off, text_len;
    size_t ids_off, spans_off; /* (size_t)-1 when absent */
    size_t blocks_off;         /* n_planes * n_blocks (offset u64, length u64) pairs in the arena */
    size_t summ_off;           /* [plane][block] summary entries */
    int64_t created;
} batch_doc;

struct msadb_batch {
    msadb_store *st;
    msadb_codec *codec;
    batch_doc *docs;
    size_t n_docs, cap_docs;
    buf_t arena;
    float *kbuf, *vbuf, *kdeq, *vdeq; /* one plane of the current document */
    size_t tok_cap;
    uint8_t *enc;
    size_t enc_cap;
};

int msadb_batch_begin(msadb_store *st, msadb_batch **out)
{
    if (!st || !out)
        return MSADB_EINVAL;
    *out = NULL;
    if (st->read_only)
        return MSADB_EREADONLY;
    msadb_batch *b = calloc(1, sizeof *b);
    if (!b)
        return MSADB_ENOMEM;
    b->st = st;
    b->codec = msadb_codec_new(st->zstd_level);
    b->enc_cap = msadb_block_bound(st->sig.dtype, st->sig.block_size, st->sig.head_dim);
    b->enc = malloc(b->enc_cap);
    if (!b->codec || !b->enc) {
        msadb_batch_abort(b);
        return MSADB_ENOMEM;
    }
    *out = b;
    return 0;
}

size_t msadb_batch_count(const msadb_batch *b) { return b ? b->n_docs : 0; }

void msadb_batch_abort(msadb_batch *b)
{
    if (!b)
        return;
    msadb_codec_free(b->codec);
    free(b->docs);
    free(b->arena.p);
    free(b->kbuf);
    free(b->vbuf);
    free(b->kdeq);
    free(b->vdeq);
    free(b->enc);
    free(b);
}

static int validate_doc(const msadb_store *st, const msadb_doc *d)
{
    if (!d || d->n_tokens < 1 || d->n_tokens > UINT32_MAX || !d->keys || !d->values)
        return MSADB_EINVAL;
    if (d->kv_dtype != MSADB_DTYPE_F32 && d->kv_dtype != MSADB_DTYPE_F16 && d->kv_dtype != MSADB_DTYPE_BF16)
        return MSADB_EDTYPE;
    if (d->space && !valid_space_name(d->space))
        return MSADB_EINVAL;
    if (d->title && strlen(d->title) > MSADB_TITLE_MAX)
        return MSADB_ELIMIT;
    if ((d->meta_len && !d->meta) || (d->text_len && !d->text))
        return MSADB_EINVAL;
    if (d->token_spans) {
        if (!d->text)
            return MSADB_EINVAL;
        for (size_t i = 0; i < d->n_tokens; i++) {
            int64_t s = d->token_spans[2 * i], e = d->token_spans[2 * i + 1];
            if (s < 0 || e < s || (uint64_t)e > d->text_len)
                return MSADB_EINVAL;
        }
    }
    (void)st;
    return 0;
}

static int arena_put(buf_t *a, const void *p, size_t len, size_t *off)
{
    *off = a->len;
    return buf_append(a, p, len);
}

static int ensure_tok(msadb_batch *b, size_t n, size_t d)
{
    if (n <= b->tok_cap)
        return 0;
    float **bufs[] = {&b->kbuf, &b->vbuf, &b->kdeq, &b->vdeq};
    for (int i = 0; i < 4; i++) {
        float *p = realloc(*bufs[i], n * d * sizeof(float));
        if (!p)
            return MSADB_ENOMEM;
        *bufs[i] = p;
    }
    b->tok_cap = n;
    return 0;
}

int msadb_batch_add(msadb_batch *b, const msadb_doc *doc)
{
    if (!b)
        return MSADB_EINVAL;
    msadb_store *st = b->st;
    int rc = validate_doc(st, doc);
    if (rc)
        return rc;
    const msadb_signature *sig = &st->sig;
    const uint32_t d = sig->head_dim, B = sig->block_size, planes = msadb_signature_planes(sig);
    const uint64_t T = doc->n_tokens, nb = (T + B - 1) / B;
    const size_t esz = doc->kv_dtype == MSADB_DTYPE_F32 ? 4 : 2;
    const size_t se = msadb_summ_entry_bytes(st);
    if ((rc = ensure_tok(b, T, d)))
        return rc;
    /* Everything appended from here on is rolled back on error. */
    size_t arena_mark = b->arena.len;
    if (b->n_docs == b->cap_docs) {
        size_t nc = b->cap_docs ? 2 * b->cap_docs : 16;
        batch_doc *nd = realloc(b->docs, nc * sizeof *nd);
        if (!nd)
            return MSADB_ENOMEM;
        b->docs = nd;
        b->cap_docs = nc;
    }
    batch_doc *bd = &b->docs[b->n_docs];
    memset(bd, 0, sizeof *bd);
    snprintf(bd->space, sizeof bd->space, "%s", doc->space ? doc->space : "default");
    bd->n_tokens = T;
    bd->n_blocks = nb;
    bd->created = (int64_t)time(NULL);
    bd->ids_off = bd->spans_off = (size_t)-1;
    bd->title_len = doc->title ? strlen(doc->title) : 0;
    bd->meta_len = doc->meta_len;
    bd->text_len = doc->text_len;
    if ((rc = arena_put(&b->arena, doc->title, bd->title_len, &bd->title_off)) ||
        (rc = arena_put(&b->arena, doc->meta, bd->meta_len, &bd->meta_off)) ||
        (rc = arena_put(&b->arena, doc->text, bd->text_len, &bd->text_off)))
        goto fail;
    if (doc->token_ids && (rc = arena_put(&b->arena, doc->token_ids, T * 4, &bd->ids_off)))
        goto fail;
    if (doc->token_spans && (rc = arena_put(&b->arena, doc->token_spans, T * 16, &bd->spans_off)))
        goto fail;
    /* Block directory and summaries are fixed-size: reserve them up front. */
    bd->blocks_off = b->arena.len;
    if ((rc = buf_reserve(&b->arena, (size_t)planes * nb * 16)))
        goto fail;
    b->arena.len += (size_t)planes * nb * 16;
    bd->summ_off = b->arena.len;
    if ((rc = buf_reserve(&b->arena, (size_t)planes * nb * se)))
        goto fail;
    b->arena.len += (size_t)planes * nb * se;
    for (uint32_t p = 0; p < planes; p++) {
        const uint8_t *ksrc = (const uint8_t *)doc->keys + (size_t)p * T * d * esz;
        const uint8_t *vsrc = (const uint8_t *)doc->values + (size_t)p * T * d * esz;
        if (msadb_to_f32(doc->kv_dtype, ksrc, b->kbuf, T * d) ||
            msadb_to_f32(doc->kv_dtype, vsrc, b->vbuf, T * d)) {
            rc = MSADB_ENONFINITE;
            goto fail;
        }
        for (uint64_t j = 0; j < nb; j++) {
            uint32_t n = (uint32_t)(j + 1 < nb ? B : T - j * B);
            size_t off = (size_t)j * B * d, len = 0;
            rc = msadb_block_encode(b->codec, (int)sig->dtype, b->kbuf + off, b->vbuf + off, n, d, b->enc,
                                    b->enc_cap, &len, b->kdeq, NULL);
            if (rc)
                goto fail;
            size_t enc_off;
            if ((rc = arena_put(&b->arena, b->enc, len, &enc_off)))
                goto fail;
            uint8_t *dir = b->arena.p + bd->blocks_off + ((size_t)p * nb + j) * 16;
            msadb_put_le64(dir, enc_off);
            msadb_put_le64(dir + 8, len);
            uint8_t *sum = b->arena.p + bd->summ_off + ((size_t)p * nb + j) * se;
            msadb_summarize_store(st, b->kdeq, n, sum);
        }
    }
    b->n_docs++;
    return 0;
fail:
    b->arena.len = arena_mark;
    return rc;
}

void msadb_summarize(const float *K, uint32_t n, uint32_t d, uint16_t *mean, uint16_t *minmax)
{
    for (uint32_t c = 0; c < d; c++) {
        double s = 0;
        float lo = K[c], hi = K[c];
        for (uint32_t t = 0; t < n; t++) {
            float x = K[(size_t)t * d + c];
            s += x;
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
        }
        if (mean)
            mean[c] = msadb_f32_to_f16((float)(s / n));
        if (minmax) {
            minmax[c] = msadb_f32_to_f16_down(lo);
            minmax[d + c] = msadb_f32_to_f16_up(hi);
        }
    }
}

/* A summary entry as stored: mean[d] (if kept) then min[d], max[d] (if
 * kept), f16 little-endian.  On disk a page splits the entry into the mean
 * region and the minmax region. */
void msadb_summarize_store(const msadb_store *st, const float *K, uint32_t n, uint8_t *out)
{
    uint32_t d = st->sig.head_dim;
    uint16_t mean[MSADB_MAX_HEAD_DIM], mm[2 * MSADB_MAX_HEAD_DIM];
    int has_mean = (st->sig.summary_kinds & MSADB_SUMMARY_MEAN) != 0;
    int has_mm = (st->sig.summary_kinds & MSADB_SUMMARY_MINMAX) != 0;
    msadb_summarize(K, n, d, has_mean ? mean : NULL, has_mm ? mm : NULL);
    if (has_mean) {
        memcpy(out, mean, 2 * (size_t)d);
        out += 2 * (size_t)d;
    }
    if (has_mm)
        memcpy(out, mm, 4 * (size_t)d);
}

/* The new slot entries of one space in a commit, with a pointer to each
 * entry's summaries (plane p's summary is at summ[i] + p * stride[i]). */
typedef struct {
    char name[MSADB_NAME_MAX + 1];
    msadb_spacerec rec;
    uint64_t first_slot; /* space's slot count before this commit */
    buf_t slots;         /* new slot entries, MSADB_SLOT_BYTES each */
    buf_t refs;          /* per entry: const uint8_t *summ, size_t stride */
} space_group;

typedef struct {
    const uint8_t *summ;
    size_t stride;
} summ_ref;

/* Writes (or rewrites, for a partial last page) the slot page and the
 * per-plane summary pages covering the group's new entries. */
static int write_pages(msadb_store *st, MDB_txn *txn, const space_group *g, buf_t *page_buf)
{
    const uint32_t cap = st->page_cap, planes = msadb_signature_planes(&st->sig), d = st->sig.head_dim;
    const size_t se = msadb_summ_entry_bytes(st);
    const size_t mean_b = (st->sig.summary_kinds & MSADB_SUMMARY_MEAN) ? 2 * (size_t)d : 0;
    const size_t mm_b = se - mean_b;
    const uint64_t n = g->slots.len / MSADB_SLOT_BYTES;
    const summ_ref *refs = (const summ_ref *)(const void *)g->refs.p;
    page_buf->len = 0;
    int rc = buf_reserve(page_buf, (size_t)cap * (se > MSADB_SLOT_BYTES ? se : MSADB_SLOT_BYTES));
    if (rc)
        return rc;
    uint8_t *page = page_buf->p;
    for (uint64_t done = 0; done < n;) {
        uint64_t slot = g->first_slot + done, pg = slot / cap;
        uint32_t have = (uint32_t)(slot % cap);
        uint32_t add = (uint32_t)((n - done) < (uint64_t)(cap - have) ? (n - done) : (cap - have));
        uint32_t tot = have + add;
        uint8_t k[16];
        MDB_val kv = {12, k}, v;
        msadb_key_slots(k, g->rec.id, pg);
        if (have) {
            if ((rc = mdb_get(txn, st->db_slots, &kv, &v)))
                return rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
            if (v.mv_size != (size_t)have * MSADB_SLOT_BYTES)
                return MSADB_ECORRUPT;
            memcpy(page, v.mv_data, v.mv_size);
        }
        memcpy(page + (size_t)have * MSADB_SLOT_BYTES, g->slots.p + done * MSADB_SLOT_BYTES,
               (size_t)add * MSADB_SLOT_BYTES);
        v.mv_size = (size_t)tot * MSADB_SLOT_BYTES;
        v.mv_data = page;
        if ((rc = mdb_put(txn, st->db_slots, &kv, &v, 0)))
            return rc;
        /* One page per plane: the mean region [tot][d], then the minmax
         * region [tot][2][d]. */
        for (uint32_t p = 0; p < planes; p++) {
            msadb_key_summ(k, g->rec.id, p, pg);
            kv.mv_size = 16;
            if (have) {
                if ((rc = mdb_get(txn, st->db_summ, &kv, &v)))
                    return rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
                if (v.mv_size != (size_t)have * se)
                    return MSADB_ECORRUPT;
                memcpy(page, v.mv_data, (size_t)have * mean_b);
                memcpy(page + (size_t)tot * mean_b, (const uint8_t *)v.mv_data + (size_t)have * mean_b,
                       (size_t)have * mm_b);
            }
            for (uint32_t i = 0; i < add; i++) {
                const summ_ref *r = &refs[done + i];
                const uint8_t *e = r->summ + (size_t)p * r->stride;
                memcpy(page + (size_t)(have + i) * mean_b, e, mean_b);
                memcpy(page + (size_t)tot * mean_b + (size_t)(have + i) * mm_b, e + mean_b, mm_b);
            }
            v.mv_size = (size_t)tot * se;
            v.mv_data = page;
            if ((rc = mdb_put(txn, st->db_summ, &kv, &v, 0)))
                return rc;
        }
        done += add;
    }
    return 0;
}

static int put_docdata(msadb_store *st, MDB_txn *txn, uint64_t doc, uint8_t kind, const uint8_t *data, size_t len)
{
    if (!len)
        return 0;
    uint8_t k[9];
    msadb_key_docdata(k, doc, kind);
    MDB_val kv = {9, k}, v;
    if (!st->encrypted) {
        v.mv_size = len;
        v.mv_data = (void *)data;
        return mdb_put(txn, st->db_docdata, &kv, &v, 0);
    }
    v.mv_size = len + MSADB_SEAL_OVERHEAD;
    int rc = mdb_put(txn, st->db_docdata, &kv, &v, MDB_RESERVE);
    if (rc)
        return rc;
    uint8_t ad[26];
    docdata_ad(st, doc, kind, ad);
    return msadb_seal(st->key, ad, sizeof ad, data, len, v.mv_data);
}

struct commit_args {
    msadb_batch *b;
    uint64_t *ids;
};

static space_group *find_group(space_group **groups, size_t *n, msadb_store *st, MDB_txn *txn,
                               const char *name, int *rc)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*groups)[i].name, name) == 0)
            return &(*groups)[i];
    space_group *g = realloc(*groups, (*n + 1) * sizeof *g);
    if (!g) {
        *rc = MSADB_ENOMEM;
        return NULL;
    }
    *groups = g;
    g = &g[*n];
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "%s", name);
    if ((*rc = msadb_space_get_txn(txn, st, name, &g->rec)))
        return NULL;
    g->first_slot = g->rec.n_slots;
    (*n)++;
    return g;
}

static int write_doc_blocks(msadb_store *st, MDB_txn *txn, const msadb_batch *b, const batch_doc *bd,
                            uint32_t space_id, uint64_t blk0, uint8_t *sealed, size_t sealed_cap)
{
    const uint32_t planes = msadb_signature_planes(&st->sig);
    for (uint64_t j = 0; j < bd->n_blocks; j++) {
        for (uint32_t p = 0; p < planes; p++) {
            const uint8_t *dir = b->arena.p + bd->blocks_off + ((size_t)p * bd->n_blocks + j) * 16;
            uint8_t k[12];
            msadb_key_block(k, blk0 + j, p);
            MDB_val kv = {12, k}, v = {msadb_get_le64(dir + 8), b->arena.p + msadb_get_le64(dir)};
            if (st->encrypted) {
                uint8_t ad[32];
                msadb_block_ad(st, space_id, p, blk0 + j, ad);
                int rc = msadb_block_seal(v.mv_data, v.mv_size, st->key, ad, sizeof ad, sealed, sealed_cap,
                                          &v.mv_size);
                if (rc)
                    return rc;
                v.mv_data = sealed;
            }
            int rc = mdb_put(txn, st->db_blocks, &kv, &v, MDB_APPEND);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int write_doc_record(msadb_store *st, MDB_txn *txn, const msadb_batch *b, const batch_doc *bd,
                            uint64_t id, const msadb_docrec *rec)
{
    uint8_t k[8], rb[DOC_REC_BYTES];
    msadb_key_doc(k, id);
    msadb_docrec_encode(rec, rb);
    MDB_val kv = {8, k}, v = {DOC_REC_BYTES, rb};
    int rc = mdb_put(txn, st->db_docs, &kv, &v, MDB_APPEND);
    const uint8_t *A = b->arena.p;
    if (rc || (rc = put_docdata(st, txn, id, DD_TITLE, A + bd->title_off, bd->title_len)) ||
        (rc = put_docdata(st, txn, id, DD_META, A + bd->meta_off, bd->meta_len)) ||
        (rc = put_docdata(st, txn, id, DD_TEXT, A + bd->text_off, bd->text_len)))
        return rc;
    if (bd->ids_off != (size_t)-1 && (rc = put_docdata(st, txn, id, DD_TOKENS, A + bd->ids_off, bd->n_tokens * 4)))
        return rc;
    if (bd->spans_off != (size_t)-1)
        rc = put_docdata(st, txn, id, DD_SPANS, A + bd->spans_off, bd->n_tokens * 16);
    return rc;
}

/* Appends the document's slot entries and summary references to its group. */
static int group_add_doc(msadb_store *st, const msadb_batch *b, const batch_doc *bd, space_group *g, uint64_t id,
                         uint64_t blk0)
{
    const size_t se = msadb_summ_entry_bytes(st);
    const uint32_t B = st->sig.block_size;
    int rc;
    if ((rc = buf_reserve(&g->slots, bd->n_blocks * MSADB_SLOT_BYTES)) ||
        (rc = buf_reserve(&g->refs, bd->n_blocks * sizeof(summ_ref))))
        return rc;
    for (uint64_t j = 0; j < bd->n_blocks; j++) {
        uint8_t *e = g->slots.p + g->slots.len;
        uint64_t left = bd->n_tokens - j * B;
        msadb_put_le64(e, blk0 + j);
        msadb_put_le64(e + 8, id);
        msadb_put_le32(e + 16, (uint32_t)(j * B));
        msadb_put_le16(e + 20, (uint16_t)(left < B ? left : B));
        msadb_put_le16(e + 22, 0);
        g->slots.len += MSADB_SLOT_BYTES;
        summ_ref r = {b->arena.p + bd->summ_off + j * se, (size_t)bd->n_blocks * se};
        memcpy(g->refs.p + g->refs.len, &r, sizeof r);
        g->refs.len += sizeof r;
    }
    g->rec.n_slots += bd->n_blocks;
    g->rec.n_docs++;
    g->rec.n_tokens += bd->n_tokens;
    return 0;
}

static int commit_fn(msadb_store *st, MDB_txn *txn, void *ud)
{
    struct commit_args *a = ud;
    msadb_batch *b = a->b;
    uint64_t next_doc, next_block;
    int rc;
    if ((rc = msadb_meta_u64(txn, st, "next_doc", &next_doc)) ||
        (rc = msadb_meta_u64(txn, st, "next_block", &next_block)))
        return rc;
    if (next_doc == 0)
        next_doc = 1; /* document ids start at 1 */
    space_group *groups = NULL;
    size_t n_groups = 0;
    buf_t page_buf = {0};
    size_t sealed_cap = msadb_block_bound((int)st->sig.dtype, st->sig.block_size, st->sig.head_dim);
    uint8_t *sealed = st->encrypted ? malloc(sealed_cap) : NULL;
    if (st->encrypted && !sealed) {
        rc = MSADB_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < b->n_docs; i++) {
        const batch_doc *bd = &b->docs[i];
        space_group *g = find_group(&groups, &n_groups, st, txn, bd->space, &rc);
        if (!g)
            goto out;
        uint64_t id = next_doc + i, blk0 = next_block;
        next_block += bd->n_blocks;
        msadb_docrec rec = {0};
        rec.space_id = g->rec.id;
        rec.n_tokens = bd->n_tokens;
        rec.n_blocks = bd->n_blocks;
        rec.first_block = blk0;
        rec.first_slot = g->rec.n_slots;
        rec.created = bd->created;
        rec.text_len = bd->text_len;
        rec.meta_len = bd->meta_len;
        rec.title_len = bd->title_len;
        rec.flags = (bd->text_len ? DOC_F_TEXT : 0) | (bd->meta_len ? DOC_F_META : 0) |
                    (bd->title_len ? DOC_F_TITLE : 0) | (bd->ids_off != (size_t)-1 ? DOC_F_TOKENS : 0) |
                    (bd->spans_off != (size_t)-1 ? DOC_F_SPANS : 0);
        if ((rc = write_doc_blocks(st, txn, b, bd, g->rec.id, blk0, sealed, sealed_cap)) ||
            (rc = write_doc_record(st, txn, b, bd, id, &rec)) || (rc = group_add_doc(st, b, bd, g, id, blk0)))
            goto out;
        if (a->ids)
            a->ids[i] = id;
    }
    for (size_t i = 0; i < n_groups; i++)
        if ((rc = write_pages(st, txn, &groups[i], &page_buf)) ||
            (rc = msadb_space_put_txn(txn, st, groups[i].name, &groups[i].rec)))
            goto out;
    if ((rc = msadb_meta_put_u64(txn, st, "next_doc", next_doc + b->n_docs)) ||
        (rc = msadb_meta_put_u64(txn, st, "next_block", next_block)))
        goto out;
out:
    for (size_t i = 0; i < n_groups; i++) {
        free(groups[i].slots.p);
        free(groups[i].refs.p);
    }
    free(groups);
    free(page_buf.p);
    free(sealed);
    return rc;
}

int msadb_batch_commit(msadb_batch *b, uint64_t *doc_ids)
{
    if (!b)
        return MSADB_EINVAL;
    int rc = 0;
    if (b->n_docs) {
        struct commit_args a = {b, doc_ids};
        rc = msadb_write(b->st, commit_fn, &a);
    }
    msadb_batch_abort(b);
    return rc;
}

int msadb_doc_append(msadb_store *st, const msadb_doc *doc, uint64_t *doc_id)
{
    msadb_batch *b;
    int rc = msadb_batch_begin(st, &b);
    if (rc)
        return rc;
    if ((rc = msadb_batch_add(b, doc))) {
        msadb_batch_abort(b);
        return rc;
    }
    uint64_t id = 0;
    rc = msadb_batch_commit(b, &id);
    if (!rc && doc_id)
        *doc_id = id;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Snapshots and reads                                                      */
/* ------------------------------------------------------------------------ */

int msadb_snapshot_begin(msadb_store *st, msadb_snapshot **out)
{
    if (!st || !out)
        return MSADB_EINVAL;
    *out = NULL;
    msadb_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return MSADB_ENOMEM;
    s->st = st;
    s->codec = msadb_codec_new(1);
    if (!s->codec) {
        free(s);
        return MSADB_ENOMEM;
    }
    int rc = msadb_txn_read(st, &s->txn);
    if (rc) {
        msadb_codec_free(s->codec);
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int msadb_snapshot_renew(msadb_snapshot *s)
{
    if (!s || !s->txn)
        return MSADB_EINVAL;
    mdb_txn_reset(s->txn);
    int rc = mdb_txn_renew(s->txn);
    if (rc) { /* e.g. MDB_MAP_RESIZED: start a fresh transaction */
        msadb_txn_done(s->st, s->txn);
        s->txn = NULL;
        if ((rc = msadb_txn_read(s->st, &s->txn)))
            s->txn = NULL;
    }
    return rc;
}

void msadb_snapshot_end(msadb_snapshot *s)
{
    if (!s)
        return;
    if (s->scratch_free)
        s->scratch_free(s->scratch);
    if (s->txn)
        msadb_txn_done(s->st, s->txn);
    msadb_codec_free(s->codec);
    free(s);
}

void *msadb_snap_scratch(msadb_snapshot *s) { return s->scratch; }

void msadb_snap_set_scratch(msadb_snapshot *s, void *p, void (*destroy)(void *))
{
    s->scratch = p;
    s->scratch_free = destroy;
}

const msadb_signature *msadb_snap_signature(msadb_snapshot *s) { return &s->st->sig; }

static int snap_ok(msadb_snapshot *s) { return s && s->txn; }

/* Reads a docdata record into buf (decrypting), or just its length. */
int msadb_docdata_read(msadb_snapshot *s, uint64_t doc, uint8_t kind, void *buf, size_t cap, size_t *len)
{
    msadb_store *st = s->st;
    uint8_t k[9];
    msadb_key_docdata(k, doc, kind);
    MDB_val kv = {9, k}, v;
    int rc = mdb_get(s->txn, st->db_docdata, &kv, &v);
    if (rc == MDB_NOTFOUND)
        return MSADB_ENOTFOUND;
    if (rc)
        return rc;
    size_t n = v.mv_size;
    if (st->encrypted) {
        if (n < MSADB_SEAL_OVERHEAD)
            return MSADB_ECORRUPT;
        n -= MSADB_SEAL_OVERHEAD;
    }
    if (len)
        *len = n;
    if (!buf)
        return 0;
    if (cap < n)
        return MSADB_ELIMIT;
    if (!st->encrypted) {
        memcpy(buf, v.mv_data, n);
        return 0;
    }
    uint8_t ad[26];
    docdata_ad(st, doc, kind, ad);
    return msadb_unseal(st->key, ad, sizeof ad, v.mv_data, v.mv_size, buf);
}

static int msadb_doc_info_fill(msadb_snapshot *s, uint64_t id, const msadb_docrec *r, msadb_doc_info *out)
{
    memset(out, 0, sizeof *out);
    out->id = id;
    out->space_id = r->space_id;
    out->n_tokens = r->n_tokens;
    out->n_blocks = r->n_blocks;
    out->first_block = r->first_block;
    out->created = r->created;
    out->text_len = (size_t)r->text_len;
    out->meta_len = (size_t)r->meta_len;
    out->has_tokens = (r->flags & DOC_F_TOKENS) != 0;
    out->has_spans = (r->flags & DOC_F_SPANS) != 0;
    int rc = msadb_space_name_txn(s->txn, s->st, r->space_id, out->space);
    if (rc)
        return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
    if (r->flags & DOC_F_TITLE) {
        size_t n = 0;
        rc = msadb_docdata_read(s, id, DD_TITLE, out->title, MSADB_TITLE_MAX, &n);
        if (rc)
            return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
        out->title[n] = 0;
    }
    return 0;
}

int msadb_doc_get(msadb_snapshot *s, uint64_t id, msadb_doc_info *out)
{
    if (!snap_ok(s) || !out)
        return MSADB_EINVAL;
    msadb_docrec r;
    int rc = msadb_doc_lookup(s->txn, s->st, id, &r);
    return rc ? rc : msadb_doc_info_fill(s, id, &r, out);
}

int msadb_doc_list(msadb_snapshot *s, const char *space, int (*cb)(const msadb_doc_info *, void *), void *ud)
{
    if (!snap_ok(s) || !cb)
        return MSADB_EINVAL;
    uint32_t want = 0;
    int rc;
    if (space) {
        msadb_spacerec sr;
        if ((rc = msadb_space_get_txn(s->txn, s->st, space, &sr)))
            return rc;
        want = sr.id;
    }
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(s->txn, s->st->db_docs, &cur)))
        return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        msadb_docrec r;
        if (k.mv_size != 8 || msadb_docrec_decode(v.mv_data, v.mv_size, &r)) {
            rc = MSADB_ECORRUPT;
            break;
        }
        if (space && r.space_id != want)
            continue;
        msadb_doc_info info;
        if ((rc = msadb_doc_info_fill(s, msadb_get_be64(k.mv_data), &r, &info)) || (rc = cb(&info, ud)))
            break;
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    mdb_cursor_close(cur);
    return rc;
}

static int docdata_copy(msadb_snapshot *s, uint64_t id, uint8_t kind, void *buf, size_t cap, size_t *len)
{
    if (!snap_ok(s) || !len)
        return MSADB_EINVAL;
    msadb_docrec r;
    int rc = msadb_doc_lookup(s->txn, s->st, id, &r);
    if (rc)
        return rc;
    rc = msadb_docdata_read(s, id, kind, buf, cap, len);
    if (rc == MSADB_ENOTFOUND) { /* a document without text/meta has length 0 */
        *len = 0;
        return 0;
    }
    return rc;
}

int msadb_doc_text(msadb_snapshot *s, uint64_t id, char *buf, size_t cap, size_t *len)
{
    return docdata_copy(s, id, DD_TEXT, buf, cap, len);
}

int msadb_doc_meta(msadb_snapshot *s, uint64_t id, void *buf, size_t cap, size_t *len)
{
    return docdata_copy(s, id, DD_META, buf, cap, len);
}

int msadb_doc_tokens(msadb_snapshot *s, uint64_t id, int32_t *ids, int64_t *spans, size_t cap)
{
    if (!snap_ok(s))
        return MSADB_EINVAL;
    msadb_docrec r;
    int rc = msadb_doc_lookup(s->txn, s->st, id, &r);
    if (rc)
        return rc;
    if (cap < r.n_tokens)
        return MSADB_ELIMIT;
    if ((ids && !(r.flags & DOC_F_TOKENS)) || (spans && !(r.flags & DOC_F_SPANS)))
        return MSADB_ENOTFOUND;
    size_t n;
    if (ids && (rc = msadb_docdata_read(s, id, DD_TOKENS, ids, (size_t)r.n_tokens * 4, &n)))
        return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
    if (ids && n != r.n_tokens * 4)
        return MSADB_ECORRUPT;
    if (spans && (rc = msadb_docdata_read(s, id, DD_SPANS, spans, (size_t)r.n_tokens * 16, &n)))
        return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
    if (spans && n != r.n_tokens * 16)
        return MSADB_ECORRUPT;
    return 0;
}

int msadb_snap_block(msadb_snapshot *s, uint32_t space_id, uint64_t block_id, uint32_t plane, float *K,
                     float *V, uint32_t *n_tok)
{
    if (!snap_ok(s) || !n_tok || plane >= msadb_signature_planes(&s->st->sig))
        return MSADB_EINVAL;
    msadb_store *st = s->st;
    uint8_t k[12];
    msadb_key_block(k, block_id, plane);
    MDB_val kv = {12, k}, v;
    int rc = mdb_get(s->txn, st->db_blocks, &kv, &v);
    if (rc == MDB_NOTFOUND)
        return MSADB_ENOTFOUND;
    if (rc)
        return rc;
    uint8_t ad[32];
    msadb_block_ad(st, space_id, plane, block_id, ad);
    return msadb_block_decode(s->codec, v.mv_data, v.mv_size, st->sig.head_dim, st->sig.block_size,
                              st->encrypted ? st->key : NULL, ad, sizeof ad, K, V, n_tok);
}

int msadb_doc_kv(msadb_snapshot *s, uint64_t id, uint32_t plane, float *K, float *V)
{
    if (!snap_ok(s))
        return MSADB_EINVAL;
    const msadb_signature *sig = &s->st->sig;
    if (plane >= msadb_signature_planes(sig))
        return MSADB_EINVAL;
    msadb_docrec r;
    int rc = msadb_doc_lookup(s->txn, s->st, id, &r);
    if (rc)
        return rc;
    size_t d = sig->head_dim;
    for (uint64_t j = 0; j < r.n_blocks; j++) {
        uint32_t n = 0;
        uint64_t t0 = j * sig->block_size;
        uint64_t want = r.n_tokens - t0 < sig->block_size ? r.n_tokens - t0 : sig->block_size;
        rc = msadb_snap_block(s, r.space_id, r.first_block + j, plane, K ? K + t0 * d : NULL,
                                 V ? V + t0 * d : NULL, &n);
        if (rc)
            return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
        if (n != want)
            return MSADB_ECORRUPT;
    }
    return 0;
}

int msadb_snap_space_id(msadb_snapshot *s, const char *name, uint32_t *id)
{
    if (!snap_ok(s) || !id)
        return MSADB_EINVAL;
    msadb_spacerec sr;
    int rc = msadb_space_get_txn(s->txn, s->st, name, &sr);
    if (!rc)
        *id = sr.id;
    return rc;
}

int msadb_snap_space_ids(msadb_snapshot *s, uint32_t *ids, size_t cap, size_t *n)
{
    if (!snap_ok(s) || !n)
        return MSADB_EINVAL;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(s->txn, s->st->db_spaceids, &cur);
    if (rc)
        return rc;
    MDB_val k, v;
    size_t cnt = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 4) {
            rc = MSADB_ECORRUPT;
            break;
        }
        if (ids && cnt < cap)
            ids[cnt] = msadb_get_be32(k.mv_data);
        cnt++;
    }
    mdb_cursor_close(cur);
    *n = cnt;
    if (rc == MDB_NOTFOUND)
        rc = 0;
    if (!rc && ids && cnt > cap)
        rc = MSADB_ELIMIT;
    return rc;
}

int msadb_snap_pages(msadb_snapshot *s, uint32_t space_id, uint32_t plane, msadb_page_view **views, size_t *n,
                     size_t *cap)
{
    if (!snap_ok(s) || !views || !n || !cap)
        return MSADB_EINVAL;
    msadb_store *st = s->st;
    if (plane >= msadb_signature_planes(&st->sig))
        return MSADB_EINVAL;
    const size_t d = st->sig.head_dim, se = msadb_summ_entry_bytes(st);
    const size_t mean_b = (st->sig.summary_kinds & MSADB_SUMMARY_MEAN) ? 2 * d : 0;
    *n = 0;
    MDB_cursor *cs, *cp;
    int rc = mdb_cursor_open(s->txn, st->db_slots, &cs);
    if (rc)
        return rc;
    if ((rc = mdb_cursor_open(s->txn, st->db_summ, &cp))) {
        mdb_cursor_close(cs);
        return rc;
    }
    uint8_t k0[16];
    msadb_key_slots(k0, space_id, 0);
    MDB_val k = {12, k0}, v;
    for (rc = mdb_cursor_get(cs, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cs, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 12 || msadb_get_be32(k.mv_data) != space_id)
            break;
        uint64_t pg = msadb_get_be64((const uint8_t *)k.mv_data + 4);
        if (v.mv_size == 0 || v.mv_size % MSADB_SLOT_BYTES || v.mv_size / MSADB_SLOT_BYTES > st->page_cap) {
            rc = MSADB_ECORRUPT;
            break;
        }
        uint32_t cnt = (uint32_t)(v.mv_size / MSADB_SLOT_BYTES);
        uint8_t ks[16];
        msadb_key_summ(ks, space_id, plane, pg);
        MDB_val sk = {16, ks}, sv;
        if ((rc = mdb_cursor_get(cp, &sk, &sv, MDB_SET_KEY))) {
            rc = rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
            break;
        }
        if (sv.mv_size != (size_t)cnt * se) {
            rc = MSADB_ECORRUPT;
            break;
        }
        if (*n == *cap) {
            size_t nc = *cap ? *cap * 2 : 64;
            msadb_page_view *nv = realloc(*views, nc * sizeof *nv);
            if (!nv) {
                rc = MSADB_ENOMEM;
                break;
            }
            *views = nv;
            *cap = nc;
        }
        msadb_page_view *pv = &(*views)[(*n)++];
        pv->page_no = pg;
        pv->n = cnt;
        pv->slots = v.mv_data;
        const uint8_t *base = sv.mv_data;
        pv->mean = mean_b ? (const uint16_t *)base : NULL;
        pv->minmax = (st->sig.summary_kinds & MSADB_SUMMARY_MINMAX) ? (const uint16_t *)(base + (size_t)cnt * mean_b)
                                                                    : NULL;
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    mdb_cursor_close(cs);
    mdb_cursor_close(cp);
    return rc;
}
