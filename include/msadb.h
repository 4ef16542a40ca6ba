/*
 * msadb.h -- the public interface of msadb, an embedded persistent memory
 * database that gives a transformer long-term memory inside its attention.
 *
 * This header is the reference documentation of the library.
 *
 * Model of the store
 * ------------------
 * A *store* is one LMDB environment (a directory) created for one model
 * signature (msadb_signature).  A store holds *spaces* (named partitions),
 * each holding *documents*.  A document is a run of tokens with, for every
 * *memory plane* (one memory layer x one kv head), the attention keys and
 * values the model produced for those tokens.  Token positions restart at 0
 * in every document (document-wise positions).  The tokens of a document are
 * cut into *blocks* of `block_size` tokens (the last one may be shorter);
 * each block of each plane is stored encoded (quantized, byte-shuffled,
 * zstd-compressed, checksummed and optionally encrypted) together with
 * *summaries* (mean key, element-wise min/max of keys) used to route queries.
 *
 * Conventions
 * -----------
 * - Every function that can fail returns int: 0 on success, a negative
 *   msadb error code (MSADB_E*), a negative LMDB code (MDB_*, range
 *   -30800..-30780) or a positive errno value.  msadb_strerror() explains
 *   every one of them.
 * - Every function validates its arguments and returns MSADB_EINVAL for
 *   NULL handles, NULL required pointers or out-of-range values.
 * - Buffers are owned by the caller unless a comment says otherwise.
 *   Functions that fill a caller buffer of variable size take its capacity
 *   and report the size needed; call with a NULL buffer to learn it.
 * - Handles are opaque.  A msadb_store may be used from several threads for
 *   reading (each thread with its own msadb_snapshot); writes (batches,
 *   deletes, space changes) are serialized by the store.  Several processes
 *   may open the same store: readers never block the single writer.
 * - Inputs described as f32/f16/bf16 tensors are little-endian host arrays.
 */
#ifndef MSADB_H
#define MSADB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MSADB_BUILDING) && defined(__GNUC__)
#define MSADB_API __attribute__((visibility("default")))
#else
#define MSADB_API
#endif

#define MSADB_VERSION_MAJOR 0
#define MSADB_VERSION_MINOR 1
#define MSADB_VERSION_PATCH 0
#define MSADB_VERSION_STRING "0.1.0"

/* On-disk format version written by this library.  A store whose format is
 * newer is refused with MSADB_EVERSION.  Version 2 adds the routing index,
 * version 3 document keys, version 4 document expiry times (docs/format.md);
 * older stores open, and msadb_upgrade() brings them to version 3.  A store
 * is raised to version 4 only once a document with an expiry time is
 * written, to version 5 only by its first keyed space
 * (msadb_space_create_keyed), so that a store without them stays readable
 * by older libraries; new encrypted stores start at version 5 (their space
 * names are hidden). */
#define MSADB_FORMAT_VERSION 5

/** Library version as a string ("0.1.0"); static storage. */
MSADB_API const char *msadb_version(void);
/** Format version this library writes (MSADB_FORMAT_VERSION). */
MSADB_API int msadb_format_version(void);
/** Threads the BLAS library (OpenBLAS) the kernels call uses: its
 * configured count (OPENBLAS_NUM_THREADS or the core count). */
MSADB_API int msadb_blas_threads(void);

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* msadb's own codes live in -31000..-30901, clear of LMDB's range. */
enum {
    MSADB_OK = 0,
    MSADB_EINVAL = -31000,   /* invalid argument */
    MSADB_ENOMEM = -30999,   /* out of memory */
    MSADB_ECORRUPT = -30998, /* stored bytes fail a checksum or structure check */
    MSADB_EVERSION = -30997, /* store format newer than this library */
    MSADB_ESIGNATURE = -30996, /* store signature differs from the expected one */
    MSADB_EKEY = -30995,     /* store is encrypted and no key, or a wrong key, was given */
    MSADB_EAUTH = -30994,    /* an encrypted record failed authentication */
    MSADB_ENOTFOUND = -30993, /* no such document, space or record */
    MSADB_EEXIST = -30992,   /* space or store already exists */
    MSADB_EREADONLY = -30991, /* write on a store opened read-only */
    MSADB_ENONFINITE = -30990, /* NaN or Inf in input keys/values/queries */
    MSADB_ESTATE = -30989,   /* handle used in the wrong state */
    MSADB_EDTYPE = -30988,   /* unsupported dtype for this operation */
    MSADB_ENOTSTORE = -30987, /* directory is not an msadb store */
    MSADB_ELIMIT = -30986,   /* a size exceeds a documented limit */
    MSADB_EIO = -30985,      /* I/O error (errno not available) */
    MSADB_ENOTSUP = -30984,  /* a part this library was built without (meson option) */
    MSADB_ETIMEDOUT = -30983, /* distributed operation: a rank did not answer in time */
    MSADB_EPEER = -30982,    /* distributed operation: failed on another rank */
    MSADB_ERANGE = -30981,   /* a key or value too large for the store's dtype or its f16
                                summaries (|x| > 65504, see msadb_batch_add) */
    MSADB_EMODEL = -30980,   /* a model other than the store's (same shape, other weights) */
    MSADB_EBUSY = -30979,    /* another process has the store open */
    MSADB_ESCOPE = -30978,   /* a document or space outside the space the handle is
                                limited to (msadb_store_scope) */
};

/** A static, human-readable description of any code returned by msadb,
 * LMDB or the C library.  Never NULL; thread-safe. */
MSADB_API const char *msadb_strerror(int err);

/* ------------------------------------------------------------------------ */
/* Signatures and options                                                   */
/* ------------------------------------------------------------------------ */

typedef enum msadb_dtype {
    MSADB_DTYPE_F32 = 0,
    MSADB_DTYPE_F16 = 1,
    MSADB_DTYPE_BF16 = 2,
    MSADB_DTYPE_INT8 = 3, /* storage only: 8-bit asymmetric quantization */
    MSADB_DTYPE_Q4 = 4,   /* storage only: 4-bit asymmetric quantization */
} msadb_dtype;

/** Name of a dtype ("f32", "f16", "bf16", "int8", "q4"), or NULL if unknown. */
MSADB_API const char *msadb_dtype_name(int dtype);
/** Parses a dtype name; returns the dtype or MSADB_EINVAL. */
MSADB_API int msadb_dtype_parse(const char *name);

/* Summary kinds (bit flags). */
#define MSADB_SUMMARY_MEAN 1u   /* mean key of the block (MSA chunk pooling) */
#define MSADB_SUMMARY_MINMAX 2u /* element-wise min and max key (Quest bound) */
#define MSADB_SUMMARY_REPS 4u   /* 3 representative keys per block, int8: the two
                                   tokens farthest from the block mean and the
                                   4-token window farthest from it (finds 1- and
                                   4-token needles that a mean averages away;
                                   see docs/benchmarks.md) */
#define MSADB_SUMMARY_ALL 7u

/* How a query meets the mean summary (msadb_query.score): cosine of q with
 * the block's mean key (the engine's default, as in MSA), or the plain dot
 * product q . mean (what a model trained with dot-product routing, such as
 * the bundled msadb-mem, expects).  The other summaries have one scoring. */
#define MSADB_SCORE_DEFAULT 0
#define MSADB_SCORE_COSINE 1
#define MSADB_SCORE_DOT 2
/* q . mean less the mean of that score over the routed blocks at the same
 * position in their documents (the same first token; positions from 256
 * blocks on share one mean), shrunk toward the mean over all of them by 16
 * blocks' weight.  A query's keys meet block means through RoPE, so blocks
 * near the question's positions (a document's first block) score high for
 * every question; centring each position removes that common part and
 * keeps what is particular to a block.  Costs a second pass over the
 * summaries; hits report the centred score.  For the bundled model, which
 * was trained with plain dot (and keeps it), it cuts first blocks from a
 * quarter of the route to 1% at 1M tokens and reads the answer's block for
 * a few more questions, without better answers (docs/model.md section 24). */
#define MSADB_SCORE_DOT_CENTRED 3

/* Position schemes. */
#define MSADB_POSITIONS_DOCUMENT 0u /* each document's positions start at 0 */

#define MSADB_MAX_LAYERS 256
#define MSADB_MAX_HEADS 256
#define MSADB_MAX_HEAD_DIM 1024
#define MSADB_MAX_BLOCK 4096
#define MSADB_NAME_MAX 63    /* bytes of a space name */
#define MSADB_TITLE_MAX 255  /* bytes of a document title */
#define MSADB_KEY_BYTES 32   /* encryption key size */
#define MSADB_MAX_TOP_K 65536 /* msadb_query.top_k */

/** The model signature a store is created for; fixed for the store's life. */
typedef struct msadb_signature {
    uint32_t n_layers;     /* transformer layers, 1..MSADB_MAX_LAYERS */
    uint32_t n_kv_heads;   /* key/value heads, 1..MSADB_MAX_HEADS */
    uint32_t n_q_heads;    /* query heads, a multiple of n_kv_heads */
    uint32_t head_dim;     /* 1..MSADB_MAX_HEAD_DIM */
    uint32_t n_memory_layers;                /* 1..n_layers */
    uint16_t memory_layers[MSADB_MAX_LAYERS]; /* strictly ascending layer indexes */
    uint32_t block_size;   /* tokens per block, 1..MSADB_MAX_BLOCK (default 64) */
    uint32_t dtype;        /* storage dtype, msadb_dtype */
    uint32_t summary_kinds; /* MSADB_SUMMARY_* flags, at least one */
    uint32_t position_scheme; /* MSADB_POSITIONS_* */
} msadb_signature;

/** Fills *sig with defaults for a model: memory in the latter half of the
 * layers (as in MSA), block 64, dtype f16, summaries MEAN and REPS,
 * document-wise positions.  Returns MSADB_EINVAL if a dimension is out of range. */
MSADB_API int msadb_signature_init(msadb_signature *sig, uint32_t n_layers,
                                   uint32_t n_kv_heads, uint32_t n_q_heads,
                                   uint32_t head_dim);
/** Checks every field of a signature; 0 or MSADB_EINVAL. */
MSADB_API int msadb_signature_validate(const msadb_signature *sig);
/** Number of memory planes: n_memory_layers * n_kv_heads. */
MSADB_API uint32_t msadb_signature_planes(const msadb_signature *sig);
/** Index of `layer` among the memory layers, or MSADB_ENOTFOUND. */
MSADB_API int msadb_signature_memory_index(const msadb_signature *sig, uint32_t layer);

/** Options for creating or opening a store.  Initialize with
 * msadb_options_init(), then change fields. */
typedef struct msadb_options {
    int read_only;          /* open read-only (no writes allowed) */
    uint64_t map_size;      /* initial LMDB map size in bytes; 0 = default (64 GiB of
                               address space; the file only grows as it is used).
                               The map doubles by itself when full, provided no
                               snapshot of this process is open at that moment
                               (else the write returns MDB_MAP_FULL). */
    unsigned max_readers;   /* LMDB reader slots; 0 = default (126) */
    int zstd_level;         /* compression level for blocks, 1..19 (default 1) */
    int no_sync;            /* do not fsync at commit (benchmarks only: a
                               system crash may lose recent commits) */
    /* Encryption at rest.  At most one of key / passphrase.  At create, a key
     * or passphrase makes the store encrypted.  At open of an encrypted store
     * one of them is required. */
    const unsigned char *key; /* MSADB_KEY_BYTES bytes, or NULL */
    const char *passphrase;   /* NUL-terminated, or NULL; stretched with Argon2id */
} msadb_options;

/** Sets defaults: read-write, default map size, no encryption. */
MSADB_API void msadb_options_init(msadb_options *opt);

/** Reads an encryption key file: either exactly 32 raw bytes, or 64
 * hexadecimal characters followed by at most one line ending ("\n" or
 * "\r\n").  Anything else, trailing bytes included, is refused.  Errors:
 * MSADB_EINVAL (bad format), errno values (cannot read). */
MSADB_API int msadb_key_file_read(const char *path, unsigned char key[MSADB_KEY_BYTES]);

/* ------------------------------------------------------------------------ */
/* Stores                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct msadb_store msadb_store;

/** Creates a new store in directory `path` (created if missing; it must not
 * already hold a store: MSADB_EEXIST).  A space named "default" is created.
 * On success *out is a handle to close with msadb_close(). */
MSADB_API int msadb_create(const char *path, const msadb_signature *sig,
                           const msadb_options *opt, msadb_store **out);

/** Opens an existing store.  If `expect` is not NULL the stored signature
 * must equal it (MSADB_ESIGNATURE otherwise).  Errors: ENOENT (no such
 * file or directory), MSADB_ENOTSTORE (it exists but holds no store),
 * MSADB_EVERSION, MSADB_EKEY (encrypted store without the right key). */
MSADB_API int msadb_open(const char *path, const msadb_signature *expect,
                         const msadb_options *opt, msadb_store **out);

/** Closes a store; NULL is allowed.  All snapshots and batches of the store
 * must have been ended first. */
MSADB_API void msadb_close(msadb_store *store);

/** The store's signature; valid until msadb_close(). */
MSADB_API const msadb_signature *msadb_store_signature(const msadb_store *store);

/** Limits this handle to one space, for the rest of its life (a tenant's
 * view: there is no call that widens it again).  From then on, through this
 * handle and its snapshots and batches:
 * - a document of another space is refused with MSADB_ESCOPE by every call
 *   that takes a document id (msadb_doc_get(), msadb_doc_text(),
 *   msadb_doc_meta(), msadb_doc_tokens(), msadb_doc_kv(),
 *   msadb_doc_delete(), which then deletes nothing, msadb_attend_blocks(),
 *   msadb_doc_find_key());
 * - listings and queries read the space alone: msadb_doc_list() with a
 *   NULL space lists it, msadb_space_list() shows it alone, a query with
 *   no spaces reads it; naming another space (msadb_doc_list(),
 *   msadb_query.spaces, msadb_space_get(), msadb_space_drop(),
 *   msadb_doc.space of a new document) is MSADB_ESCOPE;
 * - a new document with a NULL msadb_doc.space goes to the space;
 * - msadb_space_create() is MSADB_ESCOPE, msadb_compact() compacts the
 *   space alone, msadb_verify() and msadb_upgrade() (whole-store work) are
 *   MSADB_ESCOPE.
 * The scope is the space's id at this call: a space dropped and created
 * again under the same name is another space.  Calling it again with the
 * same space does nothing.  Call it before beginning snapshots or batches.
 * Errors: MSADB_EINVAL (NULL, invalid name), MSADB_ENOTFOUND (no such
 * space), MSADB_ESCOPE (the handle is already limited to another space). */
MSADB_API int msadb_store_scope(msadb_store *store, const char *space);

/** Whether the store is encrypted (1) or not (0); -EINVAL-style code on NULL. */
MSADB_API int msadb_store_encrypted(const msadb_store *store);

typedef struct msadb_stat_info {
    uint32_t format_version;
    uint64_t n_spaces;
    uint64_t n_documents;
    uint64_t n_tokens;
    uint64_t n_blocks;        /* blocks per plane, summed over documents */
    uint64_t block_bytes;     /* bytes of encoded blocks, all planes */
    uint64_t summary_bytes;   /* bytes of summary pages */
    uint64_t map_size;        /* current LMDB map size */
    uint64_t map_used;        /* bytes of the map in use (last page) */
    int encrypted;
    /* Readers and space.  A snapshot (in any process) keeps every page of
     * its state alive: while it is open, commits cannot reuse the pages
     * they free, and the file grows instead. */
    uint32_t readers;         /* open snapshots, all processes (dead ones cleared) */
    uint64_t oldest_reader_lag; /* commits since the state the oldest open snapshot reads */
    uint64_t live_bytes;      /* bytes of pages the newest state uses; map_used minus
                                 this is free or pinned by older snapshots */
} msadb_stat_info;

/** Statistics of the store as of now (clears dead readers' slots first). */
MSADB_API int msadb_stat(msadb_store *store, msadb_stat_info *out);

/* ------------------------------------------------------------------------ */
/* Spaces                                                                   */
/* ------------------------------------------------------------------------ */

/** Creates a space.  Names are 1..MSADB_NAME_MAX bytes of letters, digits
 * and "._-:@/".  Errors: MSADB_EEXIST, MSADB_EINVAL. */
MSADB_API int msadb_space_create(msadb_store *store, const char *name, uint32_t *id_out);

/** Creates a space with a key of its own (a tenant's), independent of the
 * store's key: exactly one of key (MSADB_KEY_BYTES bytes) and passphrase
 * (non-empty, stretched with Argon2id and the space's own salt).  The
 * store key does not give access to it: the space's document records,
 * document data, blocks and slot, summary and routing pages are sealed
 * with a key derived from this one, and a handle reaches them only after
 * msadb_space_unlock() (this handle holds the key from here on).  Without
 * it the space's documents are not listed, read, attended or deleted, and
 * the space cannot be dropped (MSADB_EKEY).  The store must be encrypted
 * and carry record MACs (created by this library, or msadb_upgrade()):
 * MSADB_EINVAL otherwise.  The first keyed space raises the store to
 * format 5.  Errors: MSADB_EINVAL (NULL store, invalid name, both or
 * neither of key and passphrase, an empty passphrase, a store that is
 * not encrypted), MSADB_EEXIST, MSADB_EREADONLY, MSADB_ESCOPE (a handle
 * limited to a space), MSADB_ELIMIT (the handle already holds
 * MSADB_SPACE_KEYS_MAX keys). */
#define MSADB_SPACE_KEYS_MAX 16
MSADB_API int msadb_space_create_keyed(msadb_store *store, const char *name, const unsigned char *key,
                                       const char *passphrase, uint32_t *id_out);

/** Gives this handle the key of a keyed space (exactly one of key and
 * passphrase, the kind the space was created with), checked against the
 * space's key check before it is kept; the handle then reads and writes
 * the space's documents until msadb_close().  Call it before beginning
 * snapshots or batches that need it.  Errors: MSADB_EINVAL (NULL store,
 * invalid name, both or neither of key and passphrase, a space without a
 * key of its own), MSADB_ENOTFOUND (no such space), MSADB_EKEY (a wrong
 * key or passphrase, or the other kind), MSADB_ECORRUPT (the space's key
 * derivation limits out of bounds), MSADB_ESCOPE, MSADB_ELIMIT (more than
 * MSADB_SPACE_KEYS_MAX spaces). */
MSADB_API int msadb_space_unlock(msadb_store *store, const char *name, const unsigned char *key,
                                 const char *passphrase);

/** Drops a space and every document in it, in one transaction.  Readers that
 * began before keep seeing it.  Errors: MSADB_ENOTFOUND. */
MSADB_API int msadb_space_drop(msadb_store *store, const char *name);

typedef struct msadb_space_info {
    uint32_t id;
    char name[MSADB_NAME_MAX + 1];
    uint64_t n_documents;
    uint64_t n_tokens;
    int keyed;   /* the space has its own key (msadb_space_create_keyed) */
    int locked;  /* keyed, and this handle does not hold its key (msadb_space_unlock):
                    its documents are out of reach */
} msadb_space_info;

/** Calls cb for every space in name order; a non-zero return from cb stops
 * the walk and is returned. */
MSADB_API int msadb_space_list(msadb_store *store,
                               int (*cb)(const msadb_space_info *info, void *ud), void *ud);

/** Looks a space up by name.  Errors: MSADB_ENOTFOUND. */
MSADB_API int msadb_space_get(msadb_store *store, const char *name, msadb_space_info *out);

/* ------------------------------------------------------------------------ */
/* Documents: writing                                                       */
/* ------------------------------------------------------------------------ */

/** One document to append.  K/V layout: [n_memory_layers][n_kv_heads]
 * [n_tokens][head_dim] in kv_dtype (f32, f16 or bf16), i.e. plane p =
 * memory_layer_index * n_kv_heads + kv_head is a contiguous [n_tokens][head_dim]
 * matrix.  Keys are expected after RoPE with document-wise positions. */
typedef struct msadb_doc {
    const char *space;        /* NULL = "default"; must exist */
    const char *title;        /* NULL or up to MSADB_TITLE_MAX bytes */
    const void *meta;         /* opaque metadata bytes, may be NULL */
    size_t meta_len;
    const char *text;         /* source text, may be NULL */
    size_t text_len;
    const int32_t *token_ids; /* [n_tokens] or NULL */
    const int64_t *token_spans; /* [n_tokens][2] byte [start,end) into text, or NULL */
    size_t n_tokens;          /* >= 1 */
    int kv_dtype;             /* MSADB_DTYPE_F32, _F16 or _BF16 */
    const void *keys;
    const void *values;
    /* Idempotency key, or NULL: 1..MSADB_DOCKEY_MAX bytes naming the
     * document's content (see msadb_doc_key_hash()).  A store holds at most
     * one document per key: adding a document whose key is already in the
     * store (or earlier in the same batch) is a no-op, reported by
     * msadb_batch_status_get(), not an error.  The key is stored with the
     * document and removed when it is deleted. */
    const void *key;
    size_t key_len;
    /* Expiry: Unix seconds (msadb_time_now()'s clock) from which every read
     * ignores the document (0 = never); it must be in the future when the
     * document is added.  Expired documents are deleted by msadb_expire()
     * and by every write transaction of msadb_batch_commit(),
     * msadb_doc_append() and msadb_doc_delete(). */
    int64_t expires;
} msadb_doc;

#define MSADB_DOCKEY_MAX 64   /* bytes of a document key */
#define MSADB_DOCKEY_HASH 32  /* bytes msadb_doc_key_hash() writes */

/** Computes a document key: BLAKE2b-256 over the n byte strings parts[i]
 * (lens[i] bytes each; each is preceded in the hash by its length, so
 * ("ab","c") and ("a","bc") differ).  For an encrypted store the hash is
 * keyed with a key derived from the store's encryption key, so a stored
 * key reveals nothing about the content to whoever lacks the store's key;
 * for other stores it is unkeyed (the same content gives the same key in
 * every unencrypted store).  out gets MSADB_DOCKEY_HASH bytes.  Errors:
 * MSADB_EINVAL (NULL store or out, a NULL part of non-zero length). */
MSADB_API int msadb_doc_key_hash(const msadb_store *store, const void *const *parts, const size_t *lens,
                                 size_t n, unsigned char out[MSADB_DOCKEY_HASH]);

/* Document metadata as KEY=VALUE pairs.  msadb_doc.meta is opaque to the
 * store; the CLI (ingest --meta) and the filters below read it as
 * *metadata text*: lines "KEY=VALUE\n", KEY 1..MSADB_META_KEY_MAX bytes of
 * letters, digits and "._-:@/", VALUE up to MSADB_META_VALUE_MAX bytes
 * without a newline or NUL.  A filter (msadb_query.where,
 * msadb_ask_params.where, msadb_doc_list_where()) is a list of terms
 * "KEY=VALUE"; a document passes when its metadata holds every term as a
 * whole line (AND); a document without metadata passes no term. */
#define MSADB_META_KEY_MAX 64
#define MSADB_META_VALUE_MAX 1024

/** Checks one term "KEY=VALUE" (also one line of metadata text, without
 * its newline): 0, or MSADB_EINVAL (NULL, no '=', an empty or too long
 * key, a key byte outside the set above, a too long value, a newline). */
MSADB_API int msadb_meta_term_check(const char *term);

/** Whether metadata bytes (meta, len; meta may be NULL when len is 0) hold
 * every term of where[0, n_where) as a line: 1 yes, 0 no (n_where 0: yes).
 * Errors: MSADB_EINVAL (a malformed term, NULL where with n_where > 0). */
MSADB_API int msadb_meta_match(const void *meta, size_t len, const char *const *where, size_t n_where);

/** The clock that decides expiry: Unix seconds.  For tests only, the
 * environment variable MSADB_TEST_NOW (a positive decimal number of
 * seconds) replaces the system clock, so that expiry can be tested without
 * waiting; never set it in production. */
MSADB_API int64_t msadb_time_now(void);

typedef struct msadb_batch msadb_batch;

/** Starts a batch of documents written in one transaction.  Nothing is
 * visible to readers until msadb_batch_commit() succeeds. */
MSADB_API int msadb_batch_begin(msadb_store *store, msadb_batch **out);

/** Validates and encodes one document into the batch (the costly part of
 * ingest happens here, outside any transaction).  The caller's buffers may
 * be released when this returns.  A document whose key (msadb_doc.key) is
 * already in the store or held by the batch is not added: 0 is returned
 * and msadb_batch_status_get() counts it as a duplicate.  With a flush limit
 * (msadb_batch_set_flush()) the documents held may be committed first.  On
 * error the batch still holds what it held before the call (a failed
 * flush wrote nothing) and may still be committed.  Errors: MSADB_EINVAL
 * (shapes, spans, names, a title that is not UTF-8, a key of 0 or more than
 * MSADB_DOCKEY_MAX bytes; an empty title is no title), MSADB_ENONFINITE,
 * MSADB_ERANGE (a key of magnitude above 65504 in a store with mean or
 * min/max summaries or f16 storage, or a value above it with f16 storage:
 * refused rather than stored as infinity or clamped), MSADB_ENOTFOUND
 * (space unknown at commit), those of msadb_batch_flush(). */
MSADB_API int msadb_batch_add(msadb_batch *batch, const msadb_doc *doc);

/** Number of documents the batch holds: added and not yet committed. */
MSADB_API size_t msadb_batch_count(const msadb_batch *batch);

/** Writes every document the batch holds in one LMDB transaction (all or
 * nothing) and frees the batch, whatever the result.  If doc_ids is not
 * NULL it receives the ids of those documents in add order (at most
 * msadb_batch_count() entries: a background commit that ends during the
 * call, see msadb_batch_set_threads(), reports its documents to on_commit
 * only); a keyed document whose key another writer stored after it was
 * added is not written again, and its entry names the document holding
 * the key. */
MSADB_API int msadb_batch_commit(msadb_batch *batch, uint64_t *doc_ids);

/** Names documents to delete in the transaction that commits the batch,
 * before its documents are written: replacing a document is deleting the
 * old one and adding the new one in one batch (all or nothing: if the
 * commit fails, the old document is still there).  Name them before adding
 * the new documents: a key (msadb_doc.key) held by a document the batch
 * deletes does not make an add a duplicate.  With a flush policy the
 * deletions go with the first commit.  At commit, an id that does not
 * exist (or has expired) fails the whole commit with MSADB_ENOTFOUND.  A
 * repeated id is deleted once.  Errors: MSADB_EINVAL
 * (NULL batch, NULL ids with n > 0), MSADB_ENOMEM. */
MSADB_API int msadb_batch_delete(msadb_batch *batch, const uint64_t *ids, size_t n);

/* Streaming ingest.  A batch that commits in bounded chunks keeps memory
 * bounded whatever the input size: msadb_batch_flush() commits what the
 * batch holds and leaves it open for more, and msadb_batch_set_flush()
 * makes msadb_batch_add() do so by itself.  A document is never split
 * across commits: after a crash every document is whole or absent, and
 * with keys (msadb_doc.key) running the same input again adds only the
 * documents that are missing. */

/** Called after each successful commit of a batch (by a flush or by
 * msadb_batch_commit()) with the ids of the documents it wrote, in add
 * order (entries of keyed documents found stored by another writer name
 * that document); the array is valid during the call only. */
typedef void (*msadb_commit_fn)(const uint64_t *doc_ids, size_t n, void *user);

/** Sets when msadb_batch_add() commits what the batch holds before adding
 * a document: when it holds max_docs documents, or the new document would
 * take it past max_tokens tokens, or its encoded data (keys, values,
 * summaries, text) has reached max_bytes bytes; 0 = no limit of that kind
 * (all 0, the default: never).  on_commit (may be NULL) is called after
 * every commit, user passed along.  Memory held is then about max_bytes
 * (or the tokens' encoded size) plus the largest document, twice over
 * during a commit (LMDB's dirty pages), once more with more than one
 * thread (msadb_batch_set_threads(): a chunk is filled while another is
 * written); after each commit of such a batch
 * the pages of the store's memory map the process touched are dropped from
 * its resident memory (they stay in the OS page cache, and are read back
 * on the next access).  Errors: MSADB_EINVAL (NULL batch). */
MSADB_API int msadb_batch_set_flush(msadb_batch *batch, size_t max_docs, uint64_t max_tokens,
                                    size_t max_bytes, msadb_commit_fn on_commit, void *user);

/** Commits every document the batch holds in one transaction (as
 * msadb_batch_commit()) and keeps the batch open, empty, for more; calls
 * the batch's on_commit.  Nothing held: 0, no transaction.  On error
 * nothing was written and the batch still holds its documents (flush or
 * commit again, or abort). */
MSADB_API int msadb_batch_flush(msadb_batch *batch);

/** Sets how many threads the batch uses, 1..8; 0 = the default: the
 * environment variable MSADB_INGEST_THREADS, else the online CPUs (at most
 * 8), read by msadb_batch_begin().  A document's blocks are encoded by up
 * to n threads (the calling one included).  With n > 1, a commit that
 * msadb_batch_add() makes by itself (msadb_batch_set_flush()) is written by
 * the batch's writer thread while the following documents are encoded:
 * its documents count as held (msadb_batch_count(), status `held`) until
 * the next add that reaches the flush limit, msadb_batch_flush(),
 * msadb_batch_commit() or msadb_batch_abort() sees it done, and on_commit
 * is called then, from the calling thread.  If that commit fails, its
 * error is returned by that next call (an add then does not add its
 * document) and its documents are still held: a flush or commit writes
 * them again, before the later ones, in one transaction.  At most two
 * chunks are held (the one being written, the one being filled).  What is
 * stored does not depend on n.  Errors: MSADB_EINVAL (NULL batch, n out of
 * range). */
MSADB_API int msadb_batch_set_threads(msadb_batch *batch, int n);

/** The batch's thread count (msadb_batch_set_threads()); 0 for NULL. */
MSADB_API int msadb_batch_threads(const msadb_batch *batch);

typedef struct msadb_batch_status {
    size_t held;             /* documents added and not yet committed */
    uint64_t held_tokens;    /* their tokens */
    size_t held_bytes;       /* their encoded bytes held in memory */
    uint64_t committed;      /* documents written by this batch's flushes */
    uint64_t commits;        /* transactions those flushes made */
    uint64_t duplicates;     /* adds that were no-ops: the key was already in */
    uint64_t last_duplicate; /* the document holding the key of the last
                                no-op add; 0 when that document is held by
                                this batch, not yet committed */
} msadb_batch_status;

/** The batch's counters.  Errors: MSADB_EINVAL (NULL argument). */
MSADB_API int msadb_batch_status_get(const msadb_batch *batch, msadb_batch_status *out);

/** Discards a batch; NULL allowed. */
MSADB_API void msadb_batch_abort(msadb_batch *batch);

/** Deletes every document whose expiry time (msadb_doc.expires) has
 * passed, in one transaction; *n_purged (may be NULL) gets their count.
 * Reads ignore expired documents at once whether or not they were purged;
 * this gives their space back to later writes.  Errors: MSADB_EINVAL,
 * MSADB_EREADONLY, LMDB errors. */
MSADB_API int msadb_expire(msadb_store *store, uint64_t *n_purged);

/** Appends one document in its own transaction. */
MSADB_API int msadb_doc_append(msadb_store *store, const msadb_doc *doc, uint64_t *doc_id);

/** Deletes documents in one transaction; their blocks are freed for reuse
 * and their summaries masked.  Errors: MSADB_ENOTFOUND (then nothing is
 * deleted). */
MSADB_API int msadb_doc_delete(msadb_store *store, const uint64_t *doc_ids, size_t n);

/** Rewrites summary pages without the entries of deleted documents.  Readers
 * keep their snapshots.  The pages LMDB frees are reused by later writes
 * inside the store; the data file does not shrink (msadb_vacuum() gives
 * the space back to the file system). */
MSADB_API int msadb_compact(msadb_store *store);

/** Gives free space back to the file system: writes a compacted copy of the
 * store (LMDB's compacting copy: only pages in use, renumbered) into a new
 * directory beside it ("PATH.vacuum-XXXXXX"), syncs it, and renames it
 * over `path` atomically; the old files are removed.  The store must not be
 * open in any process, this one included: MSADB_EBUSY if another process
 * holds it (nothing is changed then).  A crash leaves either the old store
 * or the new one at `path` (and possibly a stale "PATH.vacuum-*" directory
 * or "PATH.old-*" directory beside it, safe to delete).  opt (may be NULL)
 * gives the key of an encrypted store, only to check it: the copy keeps
 * every record as stored.  *before and *after (may be NULL) get the data
 * file's size.  Errors: MSADB_ENOTSTORE, MSADB_EKEY, MSADB_EBUSY, errno
 * values. */
MSADB_API int msadb_vacuum(const char *path, const msadb_options *opt, uint64_t *before,
                           uint64_t *after);

/* ------------------------------------------------------------------------ */
/* The model a store is bound to                                            */
/* ------------------------------------------------------------------------ */

#define MSADB_MODEL_HASH_BYTES 32
#define MSADB_MODEL_PATH_MAX 4095

/** Identity of a model file: where it was, its content hash and shape. */
typedef struct msadb_model_id {
    char path[MSADB_MODEL_PATH_MAX + 1];   /* absolute path when recorded */
    uint8_t hash[MSADB_MODEL_HASH_BYTES];  /* BLAKE2b-256 (libsodium's
                                              crypto_generichash) of the file */
    uint64_t file_size;                    /* bytes */
    uint32_t n_layers, n_kv_heads, n_q_heads, head_dim;
} msadb_model_id;

/** Records the model the store's keys and values come from (a meta record,
 * docs/format.md), replacing any earlier record, in one transaction.  The
 * shape must equal the store's signature (MSADB_ESIGNATURE), path must be
 * a non-empty NUL-terminated string.  The record is not encrypted, even in
 * an encrypted store.  Errors: MSADB_EINVAL, MSADB_EREADONLY,
 * MSADB_ESIGNATURE. */
MSADB_API int msadb_store_set_model(msadb_store *store, const msadb_model_id *id);
/** The recorded model identity, copied into *out.  Errors: MSADB_ENOTFOUND
 * (the store records none: made without a model, or by an older msadb),
 * MSADB_ECORRUPT. */
MSADB_API int msadb_store_get_model(msadb_store *store, msadb_model_id *out);

/* ------------------------------------------------------------------------ */
/* Reading: snapshots                                                       */
/* ------------------------------------------------------------------------ */

/** A consistent read view of the store (an LMDB read transaction). */
typedef struct msadb_snapshot msadb_snapshot;

/** Begins a snapshot.  End it with msadb_snapshot_end(); one thread at a
 * time may use a snapshot. */
MSADB_API int msadb_snapshot_begin(msadb_store *store, msadb_snapshot **out);
/** Ends a snapshot; NULL allowed. */
MSADB_API void msadb_snapshot_end(msadb_snapshot *snap);
/** Moves a snapshot to the newest committed state, keeping its scratch
 * memory (cheaper than end + begin). */
MSADB_API int msadb_snapshot_renew(msadb_snapshot *snap);

typedef struct msadb_doc_info {
    uint64_t id;
    uint32_t space_id;
    char space[MSADB_NAME_MAX + 1];
    char title[MSADB_TITLE_MAX + 1];
    uint64_t n_tokens;
    uint64_t n_blocks;     /* blocks per plane */
    uint64_t first_block;  /* id of the document's first block */
    int64_t created;       /* Unix seconds */
    size_t text_len;       /* 0 if no text */
    size_t meta_len;
    int has_tokens;        /* token ids stored */
    int has_spans;         /* token spans stored */
    int64_t expires;       /* expiry time, Unix seconds; 0 = never */
} msadb_doc_info;

/** The document holding a key (msadb_doc.key) in the snapshot.  Errors:
 * MSADB_ENOTFOUND (no such key), MSADB_EINVAL (NULL, or a length outside
 * 1..MSADB_DOCKEY_MAX). */
MSADB_API int msadb_doc_find_key(msadb_snapshot *snap, const void *key, size_t key_len, uint64_t *doc_id);

/* Expired documents (msadb_doc.expires) are gone for every read below, at
 * once, as if deleted: msadb_doc_get() and the other per-document reads
 * return MSADB_ENOTFOUND, listings and queries skip them. */

/** Information about one document.  Errors: MSADB_ENOTFOUND. */
MSADB_API int msadb_doc_get(msadb_snapshot *snap, uint64_t doc_id, msadb_doc_info *out);

/** Calls cb for every document of `space` (NULL = every space) in id order;
 * a non-zero return from cb stops the walk and is returned.  info is valid
 * during the call only. */
MSADB_API int msadb_doc_list(msadb_snapshot *snap, const char *space,
                             int (*cb)(const msadb_doc_info *info, void *ud), void *ud);

/** Like msadb_doc_list(), only the documents whose metadata holds every
 * term of where[0, n_where) (see msadb_meta_match(); n_where 0: all).
 * Errors: MSADB_EINVAL (a malformed term), MSADB_ENOTFOUND (unknown
 * space), read errors. */
MSADB_API int msadb_doc_list_where(msadb_snapshot *snap, const char *space, const char *const *where,
                                   size_t n_where, int (*cb)(const msadb_doc_info *info, void *ud),
                                   void *ud);

/** Copies the document's source text into buf (capacity cap); *len gets
 * the text length.  buf may be NULL to learn the length.  Returns
 * MSADB_ELIMIT if cap is too small. */
MSADB_API int msadb_doc_text(msadb_snapshot *snap, uint64_t doc_id, char *buf,
                             size_t cap, size_t *len);
/** Copies the metadata bytes, like msadb_doc_text(). */
MSADB_API int msadb_doc_meta(msadb_snapshot *snap, uint64_t doc_id, void *buf,
                             size_t cap, size_t *len);
/** Copies token ids ([n_tokens], or NULL) and spans ([n_tokens][2], or NULL)
 * into caller buffers of n_tokens entries (cap must be >= n_tokens, else
 * MSADB_ELIMIT).  MSADB_ENOTFOUND if the document has none. */
MSADB_API int msadb_doc_tokens(msadb_snapshot *snap, uint64_t doc_id, int32_t *ids,
                               int64_t *spans, size_t cap);

/** Decodes the stored (dequantized) keys and values of one plane of a
 * document into caller buffers of n_tokens * head_dim floats each (either
 * may be NULL).  Errors: MSADB_ECORRUPT, MSADB_EAUTH. */
MSADB_API int msadb_doc_kv(msadb_snapshot *snap, uint64_t doc_id, uint32_t plane,
                           float *keys, float *values);

/* ------------------------------------------------------------------------ */
/* Verification                                                             */
/* ------------------------------------------------------------------------ */

/** Brings a store to format 3 (document keys; format 4 comes with the
 * first document with an expiry time and is kept) and
 * builds (or rebuilds) its routing index (see msadb_query.route): a store
 * written before the index existed (format 1, or format 3 reached from 1 by
 * its first keyed document) opens and is queried by the exhaustive scan
 * until this is called; it then gets the index, the database of document
 * keys and format 3, in one write transaction (all or nothing; about 1/6 of
 * the time of a verify: only the summary pages are read).  On a store that
 * has an index it recomputes every index page (the repair for an index page
 * that msadb_verify() reports as damaged).  A store whose signature keeps no
 * representative keys (MSADB_SUMMARY_REPS) has no index: only its format
 * number changes.  Errors: MSADB_EINVAL (NULL), MSADB_EREADONLY,
 * MSADB_ECORRUPT (a summary page without its slot page), MSADB_EKEY (a
 * keyed space whose key this handle does not hold), MSADB_ESCOPE, LMDB
 * errors. */
MSADB_API int msadb_upgrade(msadb_store *store);

/** Checks the whole store: every block decodes and passes its checksum and
 * authentication, summaries equal those recomputed from the blocks, and all
 * indexes agree.  For every problem found, report (if not NULL) is called
 * with a one-line description.  Returns 0 if sound, MSADB_ECORRUPT if any
 * problem was found, or another error if the check itself failed: among
 * them MSADB_EKEY when a keyed space's key is not held by this handle
 * (msadb_space_unlock(): every record is checked), MSADB_ESCOPE. */
MSADB_API int msadb_verify(msadb_store *store,
                           void (*report)(const char *problem, void *ud), void *ud);

/* ------------------------------------------------------------------------ */
/* Query engine                                                             */
/* ------------------------------------------------------------------------ */
/*
 * Memory attention for one memory layer.  q head h reads kv head
 * h / (n_q_heads / n_kv_heads).  Blocks are chosen per kv head by scoring
 * their summaries with the group's queries (reduced with max over the q
 * heads of the group and over query tokens, unless per_token), then exact
 * softmax attention runs over the tokens of the chosen blocks.  In exact
 * mode every block is attended: the result equals dense softmax attention
 * over the stored (dequantized) keys and values.
 *
 * Each query token and q head gets an output vector and the log-sum-exp
 * (natural log) of its scaled scores, so a caller can merge memory attention
 * with its own local attention with msadb_lse_merge().  When nothing is
 * attended (empty memory) the output is 0 and the LSE is -INFINITY.
 */

/* How blocks are routed (msadb_query.route).  The index (a coarse level of
 * super-blocks of consecutive slots, each summarized by a few of its blocks'
 * representative keys; docs/format.md) is scanned first, then the block
 * summaries of the best `route_candidates` super-blocks only.  It serves
 * block selection with the representatives summary; the scan serves every
 * other query and is the reference the index is measured against. */
#define MSADB_ROUTE_DEFAULT 0 /* the index when it can serve the query, else the scan */
#define MSADB_ROUTE_SCAN 1    /* every block summary (exhaustive) */
#define MSADB_ROUTE_INDEX 2   /* the index; MSADB_EINVAL when the store has none
                                 (written before format 2: see msadb_upgrade) or the query
                                 is not a block selection with representatives */

/* Sharing one selection between the planes of a layer (msadb_query.share).
 * Slots are shared by all planes (a block id names the same tokens in every
 * plane), so one selection can be attended by every kv head:
 *  - NONE: each kv head routes over its own plane (the default);
 *  - HEADS: every kv head's plane is scored by its q group as with NONE,
 *    and a block's score is the max over the kv heads; the top_k blocks (or
 *    documents) by that score are attended by every kv head.  Routing costs
 *    what NONE costs; a block that only one plane finds reaches them all;
 *  - ROUTE_HEAD: only kv head `route_head` routes (its plane, its q group);
 *    every kv head attends its selection.  Routing costs 1/n_kv_heads of
 *    NONE; what only other planes would find is missed.
 * Hits then list the shared selection once per kv head, with its shared
 * score.  Sharing across memory layers: msadb_retrieve() on one layer,
 * then msadb_attend_blocks() on every layer with those hits (a selection
 * names slots, not planes).  Ignored in exact mode. */
#define MSADB_SHARE_NONE 0
#define MSADB_SHARE_HEADS 1
#define MSADB_SHARE_ROUTE_HEAD 2

#define MSADB_SELECT_BLOCKS 0    /* top-k blocks per kv head */
#define MSADB_SELECT_DOCUMENTS 1 /* top-k documents (max over their blocks), all their blocks */

typedef struct msadb_query_stats {
    double scan_ms;      /* scoring the summaries */
    double select_ms;    /* top-k selection */
    double read_ms;      /* reading and decoding the chosen blocks */
    double attend_ms;    /* exact attention over the chosen tokens */
    uint64_t blocks_scanned; /* block summaries scored */
    uint64_t blocks_read;
    uint64_t tokens_attended;
    uint64_t coarse_scanned; /* routing index entries scored (super-blocks) */
} msadb_query_stats;

typedef struct msadb_query {
    uint32_t layer;           /* model layer index; must be a memory layer */
    const float *q;           /* [n_query][n_q_heads][head_dim] f32 */
    size_t n_query;           /* >= 1 */
    const char *const *spaces; /* spaces to read; NULL with n_spaces 0 = all */
    size_t n_spaces;
    uint32_t top_k;           /* blocks or documents per kv head (default 16) */
    int select;               /* MSADB_SELECT_* (default blocks) */
    uint32_t summary;         /* one MSADB_SUMMARY_* kind stored in the store;
                                 0 = the engine's default for the store */
    int score;                /* MSADB_SCORE_*: for the mean summary (default
                                 cosine); other values MSADB_EINVAL */
    float scale;              /* softmax scale; 0 = 1/sqrt(head_dim) */
    int exact;                /* attend every block */
    int per_token;            /* each query token gets its own selection */
    msadb_query_stats *stats; /* optional: filled with timings */
    int route;                /* MSADB_ROUTE_* (default: index when present) */
    uint32_t route_candidates; /* super-blocks whose blocks are scored
                                  (0: 64; at most 65536) */
    int share;                /* MSADB_SHARE_* (default NONE) */
    uint32_t route_head;      /* the kv head that routes with ROUTE_HEAD
                                 (< n_kv_heads; must be 0 otherwise) */
    /* Metadata filter: routing considers only the documents whose metadata
     * holds every term "KEY=VALUE" (msadb_meta_match()), so the top_k are
     * chosen among them.  NULL/0 = no filter.  A filtered query (and any
     * query while expired documents remain unpurged) routes by the scan:
     * the index's super-blocks mix documents.  Sharded stores
     * (msadb_shard.h) apply it in every shard; msadb_mpi_* refuses it
     * (MSADB_ENOTSUP). */
    const char *const *where;
    size_t n_where;
} msadb_query;

/** Fills *q with defaults (top_k 16, blocks, default summary, default scale). */
MSADB_API void msadb_query_init(msadb_query *q);

/** One selected block. */
typedef struct msadb_hit {
    uint32_t kv_head;
    uint32_t query;       /* query token index with per_token, else 0 */
    uint64_t doc_id;
    uint64_t block_id;
    uint32_t token_start; /* token range [start,end) inside the document */
    uint32_t token_end;
    float score;          /* routing score (higher is better) */
} msadb_hit;

/** Attends memory.  out: [n_query][n_q_heads][head_dim]; lse:
 * [n_query][n_q_heads].  If hits is not NULL, up to hits_cap selected blocks
 * are written there and *n_hits gets the number selected (which may exceed
 * hits_cap).  The snapshot's scratch memory is reused across calls, so a
 * host that keeps one snapshot (see msadb_snapshot_renew) does not allocate
 * per query in steady state.  With a filter (q->where) or expired documents
 * in the store, the first query of a snapshot state reads every document
 * record (and, with a filter, the metadata) to build the set of visible
 * documents; later queries with the same filter reuse it until the
 * snapshot moves or the next expiry time passes.  Errors: MSADB_EINVAL (not
 * a memory layer, bad sizes, a malformed where term, an unknown share
 * mode, route_head not a kv head or set without MSADB_SHARE_ROUTE_HEAD),
 * MSADB_ENOTFOUND (unknown space), MSADB_ENONFINITE, MSADB_ECORRUPT,
 * MSADB_EAUTH. */
MSADB_API int msadb_attend(msadb_snapshot *snap, const msadb_query *q, float *out, float *lse,
                           msadb_hit *hits, size_t hits_cap, size_t *n_hits);

/** Attention over the given blocks only, without routing: for each kv
 * head, exact attention of its q heads over the blocks of `blocks` that name
 * that kv head (typically a selection returned earlier by msadb_attend() or
 * msadb_retrieve() for this layer, reused while a transformer generates
 * token after token: route once, attend many times).  Uses q->layer, q->q,
 * q->n_query, q->scale and q->stats; out and lse as msadb_attend().  Decoded
 * blocks are cached in the snapshot.  Errors: MSADB_EINVAL (a kv_head out
 * of range, an empty token range), MSADB_ENOTFOUND (a block or document no
 * longer in the snapshot), MSADB_ECORRUPT, MSADB_EAUTH. */
MSADB_API int msadb_attend_blocks(msadb_snapshot *snap, const msadb_query *q, const msadb_hit *blocks,
                                  size_t n_blocks, float *out, float *lse);

/** Selection only: the blocks msadb_attend() would read, best first per kv
 * head (and per query token with per_token). */
MSADB_API int msadb_retrieve(msadb_snapshot *snap, const msadb_query *q, msadb_hit *hits,
                             size_t hits_cap, size_t *n_hits);

/** Merges two attention results over disjoint key sets into one, exactly as
 * one softmax over their union: for each of n rows of d floats,
 * m = max(l1,l2), o = (e^(l1-m) o1 + e^(l2-m) o2) / (e^(l1-m) + e^(l2-m)),
 * l = m + log(e^(l1-m) + e^(l2-m)).  A row with LSE -INFINITY is empty.
 * out/lse_out may alias o1/l1. */
MSADB_API void msadb_lse_merge(size_t n, size_t d, const float *o1, const float *l1,
                               const float *o2, const float *l2, float *out, float *lse_out);

/* ------------------------------------------------------------------------ */
/* Model adapter: plugging a store into a transformer's attention           */
/* ------------------------------------------------------------------------ */
/*
 * The contract between a transformer (any engine) and a store, per memory
 * layer (see docs/adapter.md for a worked example):
 *
 * 1. Ingest ("capture").  Run a document through the model with
 *    document-wise positions (its tokens at positions 0, 1, ..., T-1) and
 *    hand the store each memory layer's keys (after RoPE) and values, as the
 *    model computes them, chunk by chunk if the document is long.  The
 *    document becomes visible when the capture is committed.
 * 2. Inference ("attend").  In each memory layer, after the layer's local
 *    attention (with its log-sum-exp), give the store the layer's queries
 *    (after RoPE) and the local result: msadb_attend_merge() replaces it with
 *    the merge of local and memory attention, which equals one softmax over
 *    the local keys and the selected memory keys together.
 *
 * Positions: memory keys carry their positions inside their own document.
 * The host chooses the positions of its own tokens (the question); the
 * built-in runtime starts them at msadb_ask_params.query_pos (default 0),
 * i.e. a question is positioned like the start of a document.
 */

/** Opens the store at path if it exists (its signature must equal sig:
 * MSADB_ESIGNATURE otherwise), or creates it for sig. */
MSADB_API int msadb_open_or_create(const char *path, const msadb_signature *sig,
                                   const msadb_options *opt, msadb_store **out);

typedef struct msadb_capture msadb_capture;

/** Starts capturing one document of the store.  End with
 * msadb_capture_commit(), msadb_capture_add() or msadb_capture_abort(). */
MSADB_API int msadb_capture_begin(msadb_store *store, msadb_capture **out);

/** Hands the capture the keys and values that model layer `layer` produced
 * for tokens [first, first + n) of the document: k and v are
 * [n_kv_heads][n][head_dim] f32 (head-major), keys after RoPE.  Calls for
 * a layer that holds no memory are accepted and ignored, so a host may call
 * this for every layer.  Tokens must arrive in order without gaps per layer
 * (first == tokens already given for that layer).  Errors: MSADB_EINVAL,
 * MSADB_ENONFINITE, MSADB_ELIMIT (more than 2^32-1 tokens), MSADB_ENOMEM. */
MSADB_API int msadb_capture_kv(msadb_capture *cap, uint32_t layer, uint64_t first, uint64_t n,
                               const float *k, const float *v);

/** Stores the captured document with the metadata in *doc (space, title,
 * meta, text, token ids and spans; doc->n_tokens must equal the tokens
 * captured in every memory layer; doc->keys/values/kv_dtype are ignored) in
 * one transaction, and frees the capture whatever the result. */
MSADB_API int msadb_capture_commit(msadb_capture *cap, const msadb_doc *doc, uint64_t *doc_id);

/** Like msadb_capture_commit(), but adds the captured document to `batch`
 * (msadb_batch_add()) instead of writing it in its own transaction, so that
 * several captures can be committed together, all or nothing, with
 * msadb_batch_commit().  The batch must have been begun on the capture's
 * store.  Frees the capture whatever the result; on error the batch is
 * unchanged. */
MSADB_API int msadb_capture_add(msadb_capture *cap, msadb_batch *batch, const msadb_doc *doc);

/** Discards a capture; NULL allowed. */
MSADB_API void msadb_capture_abort(msadb_capture *cap);

/** Memory attention merged into a layer's local attention, in place:
 * out [n_query][n_q_heads][head_dim] and lse [n_query][n_q_heads] hold the
 * local result on entry (lse -INFINITY for an empty local context) and the
 * merged one on return.  Other arguments as msadb_attend(). */
MSADB_API int msadb_attend_merge(msadb_snapshot *snap, const msadb_query *q, float *out,
                                 float *lse, msadb_hit *hits, size_t hits_cap, size_t *n_hits);

/* ------------------------------------------------------------------------ */
/* Built-in runtime: llama-architecture GGUF models                         */
/* ------------------------------------------------------------------------ */

/** A model loaded by the built-in runtime (weights and tokenizer). */
typedef struct msadb_llm msadb_llm;

typedef struct msadb_llm_info {
    uint32_t n_layers, n_q_heads, n_kv_heads, head_dim, n_embd, n_vocab, n_ctx_train;
    size_t weight_bytes; /* weights held in memory */
} msadb_llm_info;

/* A library built with -Druntime=disabled has no runtime: every msadb_llm_*
 * function then returns MSADB_ENOTSUP (msadb_llm_close does nothing). */

/** Loads a GGUF file (llama architecture; tensors F32, F16, BF16, Q8_0;
 * tokenizer "llama" or "gpt2" from its metadata).  Errors: those of the
 * GGUF reader (MSADB_ECORRUPT, MSADB_EVERSION), MSADB_EDTYPE, MSADB_ENOTFOUND,
 * MSADB_EINVAL (unsupported architecture or feature, or an unknown value of
 * the optional routing keys msadb.routing.summary / msadb.routing.score,
 * which say how the model was trained to route: msadb_ask_params, or of
 * the optional keys msadb.abstain: msadb_llm_abstain_answer, and
 * msadb.followup: msadb_ask_params.followups), errno
 * values. */
MSADB_API int msadb_llm_open(const char *path, msadb_llm **out);
/** Frees a model; NULL allowed. */
MSADB_API void msadb_llm_close(msadb_llm *llm);
/** 1 if this library has the built-in runtime, 0 if it was built with
 * -Druntime=disabled. */
MSADB_API int msadb_llm_available(void);
/** After msadb_llm_open(path) failed with err: writes into buf (capacity
 * cap, always NUL-terminated when cap > 0) one sentence naming why the file
 * cannot be used and what to do, e.g. "it is not a GGUF file (it does not
 * begin with 'GGUF')" or "its pre-tokenizer 'llama-bpe' (tokenizer.ggml.pre)
 * is not implemented: only GPT-2's ('default', 'gpt-2') is".  Returns 0, or
 * MSADB_EINVAL (NULL path or buf). */
MSADB_API int msadb_llm_explain(const char *path, int err, char *buf, size_t cap);
/** The identity of the loaded model's file (absolute path, BLAKE2b-256 of
 * its bytes, size, shape), for msadb_store_set_model() and comparing with
 * msadb_store_get_model().  The hash is computed at the first call (reading
 * the whole file: about 1 GB/s) and kept with the model.  Errors: errno
 * values (the file cannot be read again), MSADB_EINVAL. */
MSADB_API int msadb_llm_identity(msadb_llm *llm, msadb_model_id *out);
/** Whether the loaded model is the one a store was made with: 0 when the
 * store records no model or records this one (same content hash),
 * MSADB_EMODEL when it records another model of the same shape,
 * MSADB_ESIGNATURE when the shapes differ.  If rec is not NULL it gets the
 * store's record (zeroed when there is none). */
MSADB_API int msadb_llm_check_store(msadb_llm *llm, msadb_store *store, msadb_model_id *rec);
MSADB_API int msadb_llm_get_info(const msadb_llm *llm, msadb_llm_info *out);
/** How the model's matrix products run on this machine: "bf16-amx" (inputs
 * rounded to bf16, f32 sums, on AMX tiles), "bf16-avx512" (the same on the
 * AVX512-BF16 kernel: a CPU without AMX, or MSADB_MODEL_AMX=0 in the
 * environment), or "f32" (OpenBLAS on f32 weights: a CPU without
 * AVX512-BF16, or MSADB_MODEL_F32=1 when the model was opened).  Static
 * storage.  NULL when llm is NULL or the library has no runtime. */
MSADB_API const char *msadb_llm_products(const msadb_llm *llm);
/* How msadb_llm_ingest() and its kin run a document through the model.
 * A model declares its own in the GGUF string key msadb.segment
 * ("document", the default, "paragraph" or "joined"); msadb_llm_set_segment()
 * overrides it for this handle. */
#define MSADB_SEGMENT_DOCUMENT 1  /* one pass: every token attends the whole
                                     document before it (up to MSADB_LLM_DOC_MAX) */
#define MSADB_SEGMENT_PARAGRAPH 2 /* one pass per paragraph (text up to a blank
                                     line, "\n\n"): positions restart at 0 and a
                                     token attends only its own paragraph; the
                                     keys/values are stored as one document, in
                                     order, and cited as usual */
#define MSADB_SEGMENT_JOINED 3    /* one pass over the document, as
                                     _DOCUMENT, but each paragraph tokenized
                                     on its own, as _PARAGRAPH does: every
                                     paragraph's first word is a word start,
                                     as in a text that begins with it */
/** Sets how this handle ingests (MSADB_SEGMENT_*).  Keys/values stored per
 * paragraph differ from whole-document ones, so the document key
 * (msadb_doc.key) differs too: the same text ingested in both modes is
 * stored twice, never mistaken for the other.  Errors: MSADB_EINVAL (NULL
 * llm, unknown mode). */
MSADB_API int msadb_llm_set_segment(msadb_llm *llm, int mode);
/** The handle's MSADB_SEGMENT_* (the model's msadb.segment unless set), or
 * MSADB_EINVAL for NULL.  A model whose msadb.segment is none of these is
 * refused at msadb_llm_open() (MSADB_EINVAL; msadb_llm_explain names it). */
MSADB_API int msadb_llm_get_segment(const msadb_llm *llm);
/** The answer the model was trained to give when memory does not hold what
 * a question asks (GGUF string key msadb.abstain, e.g. "not in memory"; at
 * most 256 bytes, no NUL): *text points at it, NUL-terminated, owned by llm
 * and valid until msadb_llm_close().  Returns 0, MSADB_ENOTFOUND (the model
 * declares none: *text is NULL) or MSADB_EINVAL (NULL argument). */
MSADB_API int msadb_llm_abstain_answer(const msadb_llm *llm, const char **text);
/** Whether an answer (len bytes, as msadb_llm_ask() wrote it) is the
 * model's declared abstain answer: compared without case, white space
 * around it and one closing full stop.  Returns 1 (it is: memory does not
 * hold the answer, by the model's own account), 0 (it is not, or the model
 * declares no abstain answer) or MSADB_EINVAL (NULL llm, or NULL answer with
 * len > 0). */
MSADB_API int msadb_llm_is_abstain(const msadb_llm *llm, const char *answer, size_t len);
/** The default store signature for this model (memory in the latter half
 * of the layers, block 64, f16). */
MSADB_API int msadb_llm_signature(const msadb_llm *llm, msadb_signature *sig);

/** Tokenizes text; ids (and spans [cap][2] byte offsets, may be NULL) get
 * up to cap entries, *n the count (call with ids NULL to count).
 * MSADB_ELIMIT if cap is too small. */
MSADB_API int msadb_llm_tokenize(const msadb_llm *llm, const char *text, size_t len, int add_bos,
                                 int32_t *ids, int64_t *spans, size_t cap, size_t *n);
/** Decodes ids into buf (capacity cap, not NUL-terminated; *len the full
 * length; MSADB_ELIMIT if short). */
MSADB_API int msadb_llm_detokenize(const msadb_llm *llm, const int32_t *ids, size_t n, char *buf,
                                   size_t cap, size_t *len);

/* Most tokens the built-in runtime captures as one document: longer text
 * becomes several consecutive documents of at most this many tokens
 * (positions restart at 0 in each), titled "TITLE [p/n]". */
#define MSADB_LLM_DOC_MAX 4096

/** Ingests text as one document: tokenizes it, runs it through the model
 * (document-wise positions), captures the memory layers' keys and values
 * and commits them with the text, token ids and spans, in one transaction.
 * Text longer than MSADB_LLM_DOC_MAX tokens becomes several documents (each
 * with its own slice of the text), all committed together; *doc_id gets the
 * first one's id (the others follow it).  Each document carries a key
 * (msadb_doc.key): the content hash (msadb_doc_key_hash()) of the text, the
 * space and the part's number, so the same text ingested again into the
 * same space adds nothing (and runs no model); *doc_id then names the
 * stored document of the text's last part.  The store's signature must
 * match the model (MSADB_ESIGNATURE).  Empty text is MSADB_EINVAL. */
MSADB_API int msadb_llm_ingest(msadb_llm *llm, msadb_store *store, const char *space,
                               const char *title, const char *text, size_t len, uint64_t *doc_id);

/** Like msadb_llm_ingest(), but adds the document(s) to `batch`, begun on
 * `store` with msadb_batch_begin(), instead of committing them: nothing is
 * visible until the caller commits the batch, so many texts can be ingested
 * all or nothing.  *n_docs (may be NULL) gets the number of documents added
 * (more than 1 for text longer than MSADB_LLM_DOC_MAX tokens; parts
 * already in the store or the batch are not added, are counted by
 * msadb_batch_status_get() as duplicates and cost no model run);
 * msadb_batch_commit() reports their ids in add order.  The batch's flush
 * policy (msadb_batch_set_flush()) applies: the parts of a long text may be
 * committed in different transactions, each of them whole.  On error the batch
 * may hold the text's first parts: abort it. */
MSADB_API int msadb_llm_ingest_batch(msadb_llm *llm, msadb_store *store, msadb_batch *batch,
                                     const char *space, const char *title, const char *text,
                                     size_t len, size_t *n_docs);

/** Like msadb_llm_ingest_batch(), with the text and its document fields
 * taken from *doc: space, title, text/text_len (required, not empty),
 * meta/meta_len (opaque metadata bytes) and expires, kept with every
 * document the text becomes; its other fields are ignored.  Keys,
 * duplicates and errors as msadb_llm_ingest_batch() (the key does not
 * depend on the metadata or the expiry time). */
MSADB_API int msadb_llm_ingest_doc(msadb_llm *llm, msadb_store *store, msadb_batch *batch,
                                   const msadb_doc *doc, size_t *n_docs);

typedef struct msadb_ask_params {
    const char *const *spaces; /* spaces to read (NULL/0 = all) */
    size_t n_spaces;
    uint32_t top_k;         /* blocks (or documents) per kv head (16) */
    int select;             /* MSADB_SELECT_* */
    int exact;              /* attend every block */
    int no_memory;          /* answer without memory (for comparison) */
    uint32_t max_tokens;    /* answer length limit (64) */
    float temperature;      /* 0 = greedy (default) */
    float top_p;            /* nucleus sampling mass (1) */
    uint64_t seed;          /* sampling seed */
    int32_t query_pos;      /* position of the question's first token (0) */
    int route_each_token;   /* 0 (default): route once, on the question, as MSA
                               does, and let every generated token attend the
                               same selected blocks (msadb_attend_blocks);
                               1: every generated token routes again */
    uint32_t interleave;    /* memory-interleave rounds (0 = off): the text of
                               the best document, tokenized as the model's
                               segment mode reads a document at ingest, is
                               put in front of the question and memory is
                               queried again */
    uint32_t summary;       /* MSADB_SUMMARY_* to route with, 0 = the model's
                               own routing (GGUF keys msadb.routing.summary
                               "mean"|"reps"|"minmax" and msadb.routing.score
                               "dot"|"cosine") where the store holds that
                               summary, else the engine's default */
    int score;              /* MSADB_SCORE_*, 0 = the model's own (as above) */
    /* Streaming: called with each piece of answer text as it is generated;
     * a non-zero return stops generation. */
    int (*on_text)(const char *text, size_t len, void *user);
    void *user;
    /* Metadata filter for routing (msadb_query.where): memory is only the
     * documents whose metadata holds every term.  NULL/0 = no filter. */
    const char *const *where;
    size_t n_where;
    /* Follow-up questions (0..8, default 2; 0 = off).  A model that declares
     * the GGUF string key msadb.followup (e.g. "ask:") was trained to answer
     * a question it cannot answer in one read, such as a two-hop one, with
     * that prefix and a simpler question ("ask: What is the keypad code of
     * room 404?", the room read from memory).  msadb_llm_ask() then asks that
     * question from memory, with these parameters but no interleave round,
     * up to `followups` times, and its answer is the answer; the follow-up
     * text is never passed to on_text.  A model without the key is not
     * affected. */
    uint32_t followups;
    /* Called with each follow-up question (not NUL-terminated, valid during
     * the call) before it is asked; a non-zero return stops: the answer is
     * then the follow-up as the model wrote it.  May be NULL. */
    int (*on_followup)(const char *question, size_t len, void *user);
} msadb_ask_params;

MSADB_API void msadb_ask_params_init(msadb_ask_params *p);

/** Answers a question from memory: runs it with memory attention in every
 * memory layer and generates up to max_tokens tokens (stopping at the end
 * of sequence).  answer (capacity cap, NUL-terminated when it fits; may be
 * NULL) gets the text, *len its length; hits (up to hits_cap, *n_hits the
 * count) the memory blocks the question's tokens drew on in the last memory
 * layer (per kv head, best first); after follow-up questions
 * (msadb_ask_params.followups) the answer and hits are the last one's.  on_text receives whole UTF-8
 * characters (an incomplete one is held back until the next piece).  store
 * may be NULL (no memory); its signature must match the model
 * (MSADB_ESIGNATURE).  Errors also: MSADB_EINVAL (temperature < 0, top_p
 * outside (0, 1], interleave or followups > 8, an unknown summary or score, a summary the
 * store does not hold), MSADB_ENOTFOUND (unknown space),
 * MSADB_ELIMIT (answer longer than cap). */
MSADB_API int msadb_llm_ask(msadb_llm *llm, msadb_store *store, const char *question, size_t qlen,
                            const msadb_ask_params *p, char *answer, size_t cap, size_t *len,
                            msadb_hit *hits, size_t hits_cap, size_t *n_hits);

/** A run of one document's tokens that memory routing selected: the
 * selected blocks of the document (any kv head of the last memory layer)
 * merged where they touch, with the best of their routing scores and the
 * byte range of the document's stored text they cover. */
typedef struct msadb_span {
    uint64_t doc_id;
    uint32_t token_start, token_end; /* [start, end) in the document */
    float score;                     /* best routing score of its blocks */
    uint64_t text_start, text_end;   /* bytes [start, end) of the document's
                                        text; equal when it has no text or spans */
} msadb_span;

/** Merges hits (as msadb_llm_ask() or msadb_retrieve() return them) into
 * spans, best score first: spans (up to cap; may be NULL with cap 0) and
 * *n (the number of spans, which may exceed cap).  The text ranges are read
 * in snap.  Errors: MSADB_EINVAL, MSADB_ENOMEM, read errors. */
MSADB_API int msadb_hits_to_spans(msadb_snapshot *snap, const msadb_hit *hits, size_t n_hits,
                                  msadb_span *spans, size_t cap, size_t *n);

/** Search without generating: runs the question through the model with
 * memory attention (the same routing step as msadb_llm_ask(), parameters
 * from p: spaces, top_k, select, exact, summary, score, query_pos; the
 * sampling fields are ignored) and returns the spans the last memory layer
 * selected whose score is at least min_score (-INFINITY: all), best first:
 * spans (up to cap), *n the count (may exceed cap).  *n == 0 means memory
 * holds nothing scoring min_score for this question: a caller asking a
 * question may then answer "not in memory" instead of calling
 * msadb_llm_ask() (docs/cli.md says how the bundled model's threshold was
 * calibrated).  store is required.  Errors: as msadb_llm_ask(). */
MSADB_API int msadb_llm_search(msadb_llm *llm, msadb_store *store, const char *question,
                               size_t qlen, const msadb_ask_params *p, float min_score,
                               msadb_span *spans, size_t cap, size_t *n);

#ifdef __cplusplus
}
#endif
#endif /* MSADB_H */
