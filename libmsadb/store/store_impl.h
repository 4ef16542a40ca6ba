/* store_impl.h -- private to the storage layer (signature.c, store.c,
 * ingest.c, read.c, delete.c, verify.c): handle layouts, record codecs and transaction helpers. */
#ifndef MSADB_STORE_IMPL_H
#define MSADB_STORE_IMPL_H

#include <lmdb.h>
#include <pthread.h>

#include "codec/codec.h"
#include "codec/coarse.h"
#include "codec/summary.h"
#include "store/store.h"

#define MSADB_PAGE_CAP 256 /* slot entries per summary page (stored in meta) */
#define MSADB_DEFAULT_MAP_SIZE (64ull << 30) /* virtual address space only; the file grows as used */
#define MSADB_MAX_DBI 32       /* LMDB handles below this (maxdbs 16, plus LMDB's own two) */
#define MSADB_REC_MAC_BYTES 16 /* the MAC ending each record value (record.c) */
/* Per-space keys (store/tenant.c, docs/format.md *Per-space keys*). */
#define SPACE_F_KEYED 1u
#define SPACE_KEYINFO_BYTES 68 /* mode u32, opslimit u64, memlimit u64, salt[16], key check[32] */


struct msadb_store {
    MDB_env *env;
    MDB_dbi db_meta, db_spaces, db_spaceids, db_docs, db_docdata, db_blocks, db_slots, db_summ;
    MDB_dbi db_route;           /* routing index (format 2; store/index.c) */
    int has_route;              /* the index exists and is maintained */
    msadb_coarse_layout route;
    MDB_dbi db_dockeys;         /* document key -> id (format 3); valid when has_dockeys */
    int has_dockeys;            /* the dockeys database exists and is open */
    uint32_t format;            /* the store's format version (meta "format") */
    msadb_signature sig;
    uint8_t store_id[16];
    uint8_t key[32];
    uint8_t mac_key[32];        /* meta MAC key, derived from key (encrypted stores) */
    int encrypted, read_only, zstd_level;
    int kc_ver;      /* key check version: 1 no MACs, 2 meta MAC, 3 meta and record MACs */
    int kc_pending;  /* the version a write transaction in flight writes, 0 if none */
    int rec_mac;     /* every record carries a MAC (keycheck v3; record.c) */
    uint8_t rec_key[32];                /* record MAC key, derived from key */
    int hashed_names;                   /* spaces keyed by a keyed hash of the name (meta "space_names") */
    uint8_t name_key[32];               /* that hash's key, derived from key */
    const char *db_name[MSADB_MAX_DBI]; /* names of the handles opened by msadb_dbi_open */
    uint8_t db_mac[MSADB_MAX_DBI];      /* the handle's values carry a MAC when rec_mac */
    uint8_t db_seal[MSADB_MAX_DBI];     /* ... or are sealed (summary and routing pages) */
    uint8_t db_spaced[MSADB_MAX_DBI];   /* keys start with a space id (slots, summ, route) */
    uint8_t *seal_buf;                  /* a reserved sealed put's plaintext (write_lock) */
    size_t seal_cap;
    void *seal_dst;                     /* where msadb_rec_seal seals it */
    uint8_t *wread_buf;                 /* sealed pages a writer reads (write_lock) */
    size_t wread_cap;
    uint32_t page_cap;
    struct {
        uint32_t id;
        uint8_t key[32];                /* the space's sealing key (tenant.c) */
    } space_keys[MSADB_SPACE_KEYS_MAX]; /* keyed spaces this handle holds the key of */
    unsigned n_space_keys;
    int scoped;                         /* limited to one space (msadb_store_scope) */
    uint32_t scope_id;
    char scope_name[MSADB_NAME_MAX + 1];
    msadb_summ_layout summ; /* summary page layout (from sig) */
    char *path;
    pthread_mutex_t write_lock; /* one writer at a time in this process */
    pthread_mutex_t snap_lock;  /* guards n_readers and remapping */
    unsigned n_readers;         /* read transactions open in this process */
    int64_t last_reader_check;  /* monotonic second of the last mdb_reader_check (write_lock) */
};

struct msadb_snapshot {
    msadb_store *st;
    struct msadb_docmask *mask; /* the last document mask built (store/filter.c) */
    MDB_txn *txn;
    msadb_codec *codec;
    void *scratch;
    void (*scratch_free)(void *);
    float *merge_buf; /* msadb_attend_merge()'s memory result, reused */
    struct msadb_page_cache *pages; /* unsealed summary and routing pages (read.c) */
    size_t merge_cap;
};

/* Document record flags and docdata kinds. */
#define DOC_F_TEXT 1u
#define DOC_F_META 2u
#define DOC_F_TITLE 4u
#define DOC_F_TOKENS 8u
#define DOC_F_SPANS 16u
#define DOC_F_KEY 32u /* the document has a key (docdata DD_KEY, database dockeys) */
#define DOC_F_ALL 63u
#define DD_TITLE 1
#define DD_META 2
#define DD_TEXT 3
#define DD_TOKENS 4
#define DD_SPANS 5
#define DD_KEY 6 /* the document's key, stored as given (never sealed) */

typedef struct msadb_docrec {
    uint32_t flags, space_id;
    uint64_t n_tokens, n_blocks, first_block, first_slot;
    int64_t created;
    uint64_t text_len, meta_len, title_len;
    int64_t expires; /* Unix seconds after which reads ignore the document; 0: never */
} msadb_docrec;

typedef struct msadb_spacerec {
    uint32_t id;
    uint32_t flags; /* SPACE_F_KEYED: the space has its own key (format 5) */
    uint64_t n_docs, n_tokens, n_slots;
    uint8_t keyinfo[SPACE_KEYINFO_BYTES]; /* keyed: mode, KDF limits, salt, key check */
} msadb_spacerec;

#define DOC_REC_BYTES 72    /* record version 1: no expiry time */
#define DOC_REC_BYTES_V2 80 /* record version 2: the expiry time at offset 72 */
/* Record version 3: a document of a keyed space, u8 3, 3 zero bytes, space
 * id u32 LE, then the version 1 or 2 record sealed with the space's key. */
#define DOC_REC_WRAP_HEAD 8
#define DOC_REC_BYTES_MAX (DOC_REC_WRAP_HEAD + DOC_REC_BYTES_V2 + 40)

/* Format versions of the layouts added after version 1 (docs/format.md):
 * the routing index (2), document keys (database "dockeys", 3; a new store
 * starts there), expiry times (4).  A store carries the lowest version its
 * contents need: the expiry version only once a document with an expiry
 * time has been written, so that a store without one stays readable by
 * older libraries. */
#define MSADB_FORMAT_ROUTE 2u
#define MSADB_FORMAT_DOCKEYS 3u
#define MSADB_FORMAT_EXPIRY 4u
#define MSADB_FORMAT_SPACEKEYS 5u /* also: an encrypted store's hidden space names */

MSADB_HIDDEN size_t msadb_sig_encode(const msadb_signature *s, uint8_t *out);
MSADB_HIDDEN int msadb_sig_equal(const msadb_signature *a, const msadb_signature *b);
MSADB_HIDDEN int msadb_space_name_valid(const char *name);
MSADB_HIDDEN void msadb_docdata_ad(const msadb_store *st, uint64_t doc, uint8_t kind, uint8_t ad[26]);
MSADB_HIDDEN int msadb_sig_decode(const uint8_t *p, size_t len, msadb_signature *s);
/* Encodes a record into p[DOC_REC_BYTES_V2]: version 1 (72 bytes) when it
 * has no expiry time, else version 2 (80); returns the size. */
MSADB_HIDDEN size_t msadb_docrec_encode(const msadb_docrec *d, uint8_t *p);
/* Writes a document record (flags: mdb_put flags). */
MSADB_HIDDEN int msadb_docrec_put(MDB_txn *txn, msadb_store *st, uint64_t id, const msadb_docrec *d,
                                  unsigned flags);
/* Calls fn for every document record in id order (decoded; MSADB_ECORRUPT
 * for one that does not decode); a non-zero return from fn stops the walk
 * and is returned. */
MSADB_HIDDEN int msadb_docs_each(MDB_txn *txn, msadb_store *st,
                                 int (*fn)(uint64_t id, const msadb_docrec *r, void *ud), void *ud);
/* Whether a document is visible at time now (not expired). */
static inline int msadb_docrec_live(const msadb_docrec *d, int64_t now)
{
    return d->expires == 0 || d->expires > now;
}
MSADB_HIDDEN int msadb_docrec_decode(const uint8_t *p, size_t len, msadb_docrec *d);
/* A stored document record (any version, docs/format.md): a record of a
 * keyed space is opened with its key; MSADB_EKEY when this handle does not
 * hold it (d->space_id is then set, the rest is not). */
MSADB_HIDDEN int msadb_docrec_open(const msadb_store *st, uint64_t id, const uint8_t *p, size_t len,
                                   msadb_docrec *d);

/* Per-space keys (store/tenant.c).  The key that seals the records of a
 * space: its own when this handle holds it, else the store's. */
MSADB_HIDDEN const uint8_t *msadb_space_seal_key(const msadb_store *st, uint32_t space);
/* Whether this handle holds the key of space id. */
MSADB_HIDDEN int msadb_space_unlocked(const msadb_store *st, uint32_t space);
/* 0 when the space can be read and written through this handle: not keyed,
 * or keyed and its key held; MSADB_EKEY otherwise. */
MSADB_HIDDEN int msadb_space_access(const msadb_store *st, const msadb_spacerec *r);
/* MSADB_EKEY when a keyed space's key is not held by this handle (whole-store
 * work: verify, upgrade), else 0. */
MSADB_HIDDEN int msadb_spaces_open(msadb_store *st);
/* Encodes a document record for storage (wrapped and sealed when its space
 * is keyed) into p[DOC_REC_BYTES_MAX]; returns the size. */
MSADB_HIDDEN size_t msadb_docrec_store(const msadb_store *st, uint64_t id, const msadb_docrec *d, uint8_t *p);

/* Read transactions counted so the map is never remapped under a reader. */
MSADB_HIDDEN int msadb_txn_read(msadb_store *st, MDB_txn **txn);
MSADB_HIDDEN void msadb_txn_done(msadb_store *st, MDB_txn *txn);
/* Runs fn in a write transaction (grows the map and retries when full). */
MSADB_HIDDEN int msadb_write(msadb_store *st, int (*fn)(msadb_store *, MDB_txn *, void *), void *ud);

/* The record layer (record.c).  Every read and write of a named database
 * goes through these, so that in a store with record MACs (rec_mac) each
 * value is checked and written with its MAC; callers see values without
 * it.  msadb_dbi_open opens (or creates, with MDB_CREATE) a database and
 * registers its name, which the MAC binds. */
MSADB_HIDDEN int msadb_dbi_open(msadb_store *st, MDB_txn *txn, const char *name, unsigned flags, MDB_dbi *dbi);
MSADB_HIDDEN void msadb_rec_key_derive(msadb_store *st);
/* mdb_get / mdb_cursor_get, then the MAC check: MSADB_EAUTH when it fails.
 * Not for sealed databases (MSADB_EINVAL): those are read with
 * msadb_rec_read / msadb_rec_open, which decrypt into a buffer. */
MSADB_HIDDEN int msadb_rec_get(MDB_txn *txn, const msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v);
/* mdb_cursor_get, then msadb_rec_open (buf, cap as there). */
MSADB_HIDDEN int msadb_rec_cursor_get(const msadb_store *st, MDB_cursor *cur, MDB_val *k, MDB_val *v,
                                      MDB_cursor_op op, uint8_t **buf, size_t *cap);
/* Calls fn(key, plaintext value) for every record of dbi in key order, each
 * authenticated (MSADB_EAUTH) or decrypted first; stops at fn's first
 * nonzero return and returns it.  The value lives until fn returns. */
MSADB_HIDDEN int msadb_rec_each(MDB_txn *txn, const msadb_store *st, MDB_dbi dbi,
                                int (*fn)(const MDB_val *k, const MDB_val *v, void *ud), void *ud);
/* Checks the MAC of a value read by other means; strips it from v. */
MSADB_HIDDEN int msadb_rec_check(const msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v);
/* Nonzero when dbi's values are sealed in this store. */
MSADB_HIDDEN int msadb_rec_sealed(const msadb_store *st, MDB_dbi dbi);
/* A value read by other means (a cursor): a sealed one is decrypted into
 * *buf (grown with msadb_grow; *cap its size) and v points there; others
 * as msadb_rec_check.  MSADB_EAUTH when authentication fails. */
MSADB_HIDDEN int msadb_rec_open(const msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v, uint8_t **buf,
                                size_t *cap);
/* Decrypts a sealed value into out (v->mv_size - MSADB_SEAL_OVERHEAD
 * bytes); v then points there.  MSADB_EAUTH. */
MSADB_HIDDEN int msadb_rec_unseal(const msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v, uint8_t *out);
/* A small record's plaintext copied into out (cap bytes; *len its size):
 * MSADB_ECORRUPT (MSADB_EAUTH when sealed) if larger. */
MSADB_HIDDEN int msadb_rec_get_into(MDB_txn *txn, const msadb_store *st, MDB_dbi dbi, const MDB_val *k, void *out,
                                    size_t cap, size_t *len);
/* mdb_get, then msadb_rec_open. */
MSADB_HIDDEN int msadb_rec_read(MDB_txn *txn, const msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v,
                                uint8_t **buf, size_t *cap);
/* mdb_put with the MAC appended, or sealed.  With MDB_RESERVE, v->mv_data
 * receives room for v->mv_size bytes: the caller fills it, then calls
 * msadb_rec_seal(st, dbi, k, v) before any other write. */
MSADB_HIDDEN int msadb_rec_put(MDB_txn *txn, msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v,
                               unsigned flags);
MSADB_HIDDEN void msadb_rec_seal(msadb_store *st, MDB_dbi dbi, const MDB_val *k, const MDB_val *v);
/* Adds the MAC to every record of every covered database and sets rec_mac
 * (an encrypted store written before record MACs; msadb_upgrade). */
MSADB_HIDDEN int msadb_rec_upgrade(msadb_store *st, MDB_txn *txn);
/* Calls bad(database, key) for every record whose MAC fails (verify). */
MSADB_HIDDEN int msadb_rec_walk(msadb_store *st, MDB_txn *txn,
                                void (*bad)(const char *db, const MDB_val *k, void *ud), void *ud);

/* The MAC of the meta records (encrypted stores): fills mac[32].  0 or an
 * LMDB error. */
MSADB_HIDDEN int msadb_meta_mac(msadb_store *st, MDB_txn *txn, uint8_t mac[32]);
/* The store's LMDB environment (vacuum.c). */
MSADB_HIDDEN MDB_env *msadb_store_env(msadb_store *st);
MSADB_HIDDEN int msadb_meta_u64(MDB_txn *txn, msadb_store *st, const char *name, uint64_t *out);
MSADB_HIDDEN int msadb_meta_put_u64(MDB_txn *txn, msadb_store *st, const char *name, uint64_t val);
/* The format version stored in txn (it can be newer than st->format when
 * another process raised it). */
MSADB_HIDDEN int msadb_meta_format(MDB_txn *txn, msadb_store *st, uint32_t *format);
/* Raises the stored format version to at least `version` in txn (the
 * caller sets st->format once the transaction commits). */
MSADB_HIDDEN int msadb_meta_raise_format(MDB_txn *txn, msadb_store *st, uint32_t version);

/* Deletes documents in txn (store/delete.c): their blocks, data and
 * records, their slots marked deleted, their spaces' counts updated.
 * MSADB_ENOTFOUND if one does not exist. */
MSADB_HIDDEN int msadb_delete_txn(msadb_store *st, MDB_txn *txn, const uint64_t *ids, size_t n);
/* Deletes every document expired at `now` in txn (store/delete.c); *n (may
 * be NULL) gets their count.  Nothing to do (0) in a store whose format
 * predates expiry times. */
MSADB_HIDDEN int msadb_expire_txn(msadb_store *st, MDB_txn *txn, int64_t now, uint64_t *n);
/* Drops the pages of the memory map this process touched from its resident
 * memory (streaming ingest: a commit reads the pages it rewrites, and over a
 * large ingest those would add up). */
MSADB_HIDDEN void msadb_map_release(msadb_store *st);
/* Writes meta "format" (the caller updates st->format once committed). */
MSADB_HIDDEN int msadb_meta_put_format(MDB_txn *txn, msadb_store *st, uint32_t version);

MSADB_HIDDEN void msadb_key_doc(uint8_t k[8], uint64_t doc);
MSADB_HIDDEN void msadb_key_docdata(uint8_t k[9], uint64_t doc, uint8_t kind);
MSADB_HIDDEN void msadb_key_block(uint8_t k[8], uint64_t block);
/* A block record holds every plane of one block id: u32 n_planes, then
 * n_planes + 1 ascending u32 offsets from the record's start (the last is
 * the record's size), then the encoded blocks.  Finds plane p's bytes. */
MSADB_HIDDEN int msadb_block_part(const uint8_t *rec, size_t len, uint32_t planes, uint32_t p,
                                  const uint8_t **part, size_t *part_len);
MSADB_HIDDEN void msadb_key_slots(uint8_t k[12], uint32_t space, uint64_t page);
MSADB_HIDDEN void msadb_key_summ(uint8_t k[16], uint32_t space, uint32_t plane, uint64_t page);
MSADB_HIDDEN void msadb_block_ad(const msadb_store *st, uint32_t space, uint32_t plane, uint64_t block,
                                 uint8_t ad[32]);

/* MSADB_ESCOPE when the handle is limited to a space other than the one
 * named, or with this id (msadb_store_scope); 0 otherwise. */
MSADB_HIDDEN int msadb_scope_name(const msadb_store *st, const char *name);
MSADB_HIDDEN int msadb_scope_id(const msadb_store *st, uint32_t id);
MSADB_HIDDEN int msadb_doc_lookup(MDB_txn *txn, msadb_store *st, uint64_t id, msadb_docrec *d);
/* msadb_space_get_txn in a read transaction of its own. */
MSADB_HIDDEN int msadb_space_read(msadb_store *st, const char *name, msadb_spacerec *rec);
MSADB_HIDDEN int msadb_space_get_txn(MDB_txn *txn, msadb_store *st, const char *name, msadb_spacerec *rec);
/* The key of a space's record in `spaces`: the name, or in a store with
 * hidden names its keyed hash (h receives it). */
MSADB_HIDDEN MDB_val msadb_space_dbkey(const msadb_store *st, const char *name, uint8_t h[32]);
/* Calls fn(id, name) for every space, in id order (the `spaceids` walk). */
MSADB_HIDDEN int msadb_space_names_each(MDB_txn *txn, msadb_store *st,
                                        int (*fn)(uint32_t id, const char *name, void *ud), void *ud);
MSADB_HIDDEN int msadb_space_put_txn(MDB_txn *txn, msadb_store *st, const char *name, const msadb_spacerec *rec);
MSADB_HIDDEN int msadb_space_name_txn(MDB_txn *txn, msadb_store *st, uint32_t id, char name[MSADB_NAME_MAX + 1]);
MSADB_HIDDEN int msadb_space_create_txn(msadb_store *st, MDB_txn *txn, const char *name, uint32_t *id_out);
/* Document keys.  msadb_dockeys_open() makes st->db_dockeys usable when the
 * database exists (opened by another process after this one opened the
 * store); 0, or MSADB_ENOTFOUND when it does not exist yet. */
MSADB_HIDDEN int msadb_dockeys_open(msadb_store *st);
/* The id of the document holding `key`, in txn: 0 or MSADB_ENOTFOUND. */
MSADB_HIDDEN int msadb_dockey_get(MDB_txn *txn, msadb_store *st, const void *key, size_t len, uint64_t *id);
/* The key stored with a document (DD_KEY) into key[MSADB_DOCKEY_MAX]. */
MSADB_HIDDEN int msadb_dockey_of(MDB_txn *txn, msadb_store *st, uint64_t doc, uint8_t *key, size_t *len);
MSADB_HIDDEN int msadb_docdata_read(msadb_snapshot *s, uint64_t doc, uint32_t space, uint8_t kind, void *buf,
                                    size_t cap, size_t *len);

#endif
