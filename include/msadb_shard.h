/*
 * msadb_shard.h -- one memory spread over several stores (shards).
 *
 * A *sharded store* is a directory DIR holding N ordinary msadb stores,
 * DIR/shard-0 ... DIR/shard-(N-1), each with its own LMDB environment,
 * crash safety, encryption and verify, and a small manifest DIR/msadb-shards
 * (docs/format.md, "Sharded stores").  Every shard has the same signature
 * and the same spaces.  Attention over the union of the shards is the
 * log-sum-exp merge of the per-shard attentions (msadb_lse_merge), so a
 * sharded query in exact mode equals a query of one store holding every
 * document, up to float rounding.
 *
 * Document ids.  A document stored in shard s under the shard's own id L
 * (L >= 1, allocated by that shard, never reused) has the global id
 * L * N + s, so its shard is `id mod N` (msadb_shards_id_shard) and no
 * shard needs to ask another for an id.  Block ids in hits and in
 * msadb_doc_info.first_block are global the same way (block j of a
 * document is first_block + j * N).  Everywhere this header takes or
 * returns a document or block id, it is a global id.
 *
 * Placement.  A new document goes to the shard (among the shards opened
 * here) holding the fewest tokens, counting the documents of the batch
 * being built; ties go to the lowest index.  This keeps the shards' scan
 * costs, hence a sharded query's latency, balanced.
 *
 * A handle may open every shard (msadb_shards_open) or one part of them
 * (msadb_shards_open_part: the shards s with s % n_parts == part), which is
 * what each rank of a distributed job does (msadb_mpi.h).  Functions that
 * take an id of a shard not opened here return MSADB_ENOTFOUND.
 *
 * Conventions are those of msadb.h (return codes, argument validation,
 * caller-owned buffers).  Writes to several shards are not one transaction:
 * each document is whole or absent, and each shard's part of a batch is all
 * or nothing, but a crash while a batch commits shard after shard may keep
 * the parts of the shards already committed (docs/distributed.md).
 */
#ifndef MSADB_SHARD_H
#define MSADB_SHARD_H

#include "msadb.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Version of the sharded-store manifest written by this library. */
#define MSADB_SHARDS_FORMAT_VERSION 1
/* Most shards in one sharded store. */
#define MSADB_SHARDS_MAX 1024
/* Placement rules (manifest field). */
#define MSADB_PLACE_FEWEST_TOKENS 1 /* id mod N; new documents to the lightest shard */

/** What the manifest DIR/msadb-shards holds. */
typedef struct msadb_shards_manifest {
    uint32_t format_version;   /* MSADB_SHARDS_FORMAT_VERSION */
    uint32_t n_shards;         /* 1..MSADB_SHARDS_MAX */
    uint32_t placement;        /* MSADB_PLACE_* */
    unsigned char store_id[16]; /* random, fixed at creation; also in every shard's label */
} msadb_shards_manifest;

typedef struct msadb_shards msadb_shards;

/** Whether `dir` is a sharded store: 1 (it holds a manifest), 0 (no
 * manifest: maybe an ordinary store), or an error (MSADB_ECORRUPT for a
 * damaged manifest, MSADB_EVERSION for a newer one, errno values). */
MSADB_API int msadb_shards_probe(const char *dir);

/** Reads DIR's manifest.  Errors: MSADB_ENOTSTORE (none), MSADB_ECORRUPT,
 * MSADB_EVERSION, errno values. */
MSADB_API int msadb_shards_manifest_read(const char *dir, msadb_shards_manifest *out);

/** Creates a sharded store of n_shards shards in `dir` (created if missing;
 * MSADB_EEXIST if it holds a manifest or a store).  The shards are created
 * first and the manifest last, so a crash leaves no manifest.  Each shard
 * is created with `opt` (a key or passphrase encrypts every shard).
 * On success *out opens every shard. */
MSADB_API int msadb_shards_create(const char *dir, uint32_t n_shards, const msadb_signature *sig,
                                  const msadb_options *opt, msadb_shards **out);

/** The part of msadb_shards_create() that one of n_parts cooperating
 * processes does: creates the shards s with s % n_parts == part, writes
 * the manifest `m` (every part writes the same bytes, atomically) and opens
 * those shards.  m->store_id must be the same in every part (the MPI layer
 * broadcasts it); m->format_version and m->placement must be the current
 * ones.  part < n_parts <= m->n_shards. */
MSADB_API int msadb_shards_create_part(const char *dir, const msadb_shards_manifest *m,
                                       const msadb_signature *sig, const msadb_options *opt,
                                       uint32_t part, uint32_t n_parts, msadb_shards **out);

/** Fills m with a new manifest: current version and placement, n_shards,
 * a random store id. */
MSADB_API int msadb_shards_manifest_new(msadb_shards_manifest *m, uint32_t n_shards);

/** Opens every shard of a sharded store.  expect (may be NULL) as in
 * msadb_open().  Each shard must carry the manifest's store id and its own
 * index (MSADB_ECORRUPT otherwise: a shard directory from another store or
 * another position) and the same signature as shard 0 (MSADB_ESIGNATURE).
 * Errors also: MSADB_ENOTSTORE (no manifest, or a missing shard), those of
 * msadb_open(). */
MSADB_API int msadb_shards_open(const char *dir, const msadb_signature *expect,
                                const msadb_options *opt, msadb_shards **out);

/** Opens the shards s with s % n_parts == part only (part < n_parts <=
 * n_shards, else MSADB_EINVAL). */
MSADB_API int msadb_shards_open_part(const char *dir, const msadb_signature *expect,
                                     const msadb_options *opt, uint32_t part, uint32_t n_parts,
                                     msadb_shards **out);

/** Closes every shard; NULL allowed.  Snapshots and batches must have been
 * ended first. */
MSADB_API void msadb_shards_close(msadb_shards *sh);

/** The manifest read at open; valid until msadb_shards_close(). */
MSADB_API const msadb_shards_manifest *msadb_shards_get_manifest(const msadb_shards *sh);
/** The signature shared by the shards; valid until msadb_shards_close(). */
MSADB_API const msadb_signature *msadb_shards_signature(const msadb_shards *sh);
/** Number of shards opened by this handle (1..n_shards). */
MSADB_API uint32_t msadb_shards_local_count(const msadb_shards *sh);
/** Index of the i-th shard opened by this handle (ascending), or
 * MSADB_EINVAL-style negative value if i is out of range. */
MSADB_API int msadb_shards_local_index(const msadb_shards *sh, uint32_t i);
/** The store of shard `shard` (for reading its own statistics or verifying
 * it alone); valid until msadb_shards_close().  MSADB_ENOTFOUND if that
 * shard is not opened here. */
MSADB_API int msadb_shards_store(msadb_shards *sh, uint32_t shard, msadb_store **out);

/** The shard a global id lives in: id mod n_shards. */
MSADB_API uint32_t msadb_shards_id_shard(uint64_t id, uint32_t n_shards);
/** The shard's own id of a global id: id / n_shards. */
MSADB_API uint64_t msadb_shards_id_local(uint64_t id, uint32_t n_shards);
/** The global id of a shard's own id: local * n_shards + shard (MSADB_ELIMIT-free:
 * ids below 2^64 / n_shards only; larger local ids are never allocated). */
MSADB_API uint64_t msadb_shards_id_global(uint64_t local, uint32_t shard, uint32_t n_shards);
/** The placement rule: index of the smallest of tokens[0..n) (the lowest
 * index on ties); 0 when n is 0. */
MSADB_API uint32_t msadb_shards_pick(const uint64_t *tokens, uint32_t n);

/** Statistics summed over the opened shards (format_version and encrypted
 * from shard 0 of those; n_spaces is that of one shard, as every shard
 * holds the same spaces). */
MSADB_API int msadb_shards_stat(msadb_shards *sh, msadb_stat_info *out);

/* ---- spaces: the same on every shard ----------------------------------- */

/** Creates the space on every opened shard (where missing).  MSADB_EEXIST
 * only if every opened shard had it already.  id_out (may be NULL) gets the
 * id on the lowest opened shard. */
MSADB_API int msadb_shards_space_create(msadb_shards *sh, const char *name, uint32_t *id_out);
/** Drops the space on every opened shard that has it; MSADB_ENOTFOUND if
 * none had it. */
MSADB_API int msadb_shards_space_drop(msadb_shards *sh, const char *name);
/** Calls cb for every space in name order with documents and tokens summed
 * over the opened shards (id: that of the lowest opened shard).  A space
 * missing on some shard is listed too (verify reports it). */
MSADB_API int msadb_shards_space_list(msadb_shards *sh,
                                      int (*cb)(const msadb_space_info *info, void *ud), void *ud);
/** One space, summed as msadb_shards_space_list().  MSADB_ENOTFOUND. */
MSADB_API int msadb_shards_space_get(msadb_shards *sh, const char *name, msadb_space_info *out);

/* ---- writing ----------------------------------------------------------- */

typedef struct msadb_shards_batch msadb_shards_batch;

/** Starts a batch (one msadb_batch per shard, begun when first needed).
 * Reads the opened shards' token counts for placement. */
MSADB_API int msadb_shards_batch_begin(msadb_shards *sh, msadb_shards_batch **out);
/** Adds a document to the shard the placement rule picks; *shard (may be
 * NULL) gets it.  Errors as msadb_batch_add(); on error the batch is
 * unchanged. */
MSADB_API int msadb_shards_batch_add(msadb_shards_batch *b, const msadb_doc *doc, uint32_t *shard);
/** Adds a document to a given (opened) shard: the placement decided
 * elsewhere (msadb_mpi's root decides for every rank). */
MSADB_API int msadb_shards_batch_add_to(msadb_shards_batch *b, uint32_t shard, const msadb_doc *doc);
/** Documents added so far. */
MSADB_API size_t msadb_shards_batch_count(const msadb_shards_batch *b);
/** Commits each shard's part in turn (each all or nothing) and frees the
 * batch whatever the result.  doc_ids (may be NULL) gets the global ids in
 * add order.  On an error, the shards before the failing one are committed
 * (their ids are in doc_ids; the others are 0). */
MSADB_API int msadb_shards_batch_commit(msadb_shards_batch *b, uint64_t *doc_ids);
/** Discards a batch; NULL allowed. */
MSADB_API void msadb_shards_batch_abort(msadb_shards_batch *b);
/** One document in its own batch. */
MSADB_API int msadb_shards_doc_append(msadb_shards *sh, const msadb_doc *doc, uint64_t *doc_id);

/** Deletes documents: every id is checked first (MSADB_ENOTFOUND, nothing
 * deleted, if one is unknown or lives on a shard not opened here), then each
 * shard deletes its own in one transaction. */
MSADB_API int msadb_shards_doc_delete(msadb_shards *sh, const uint64_t *doc_ids, size_t n);
/** msadb_compact() on every opened shard. */
MSADB_API int msadb_shards_compact(msadb_shards *sh);

/* ---- reading ----------------------------------------------------------- */

/** One snapshot per opened shard (each consistent on its own; shards are
 * not read at one common instant). */
typedef struct msadb_shards_snapshot msadb_shards_snapshot;

MSADB_API int msadb_shards_snapshot_begin(msadb_shards *sh, msadb_shards_snapshot **out);
MSADB_API void msadb_shards_snapshot_end(msadb_shards_snapshot *s);
MSADB_API int msadb_shards_snapshot_renew(msadb_shards_snapshot *s);

/** As msadb_doc_get(), with global ids in *out (id, first_block). */
MSADB_API int msadb_shards_doc_get(msadb_shards_snapshot *s, uint64_t doc_id, msadb_doc_info *out);
/** Calls cb for every document of `space` (NULL = all), shard by shard
 * (ascending shard index, id order within a shard), with global ids. */
MSADB_API int msadb_shards_doc_list(msadb_shards_snapshot *s, const char *space,
                                    int (*cb)(const msadb_doc_info *info, void *ud), void *ud);
/** msadb_doc_text(), msadb_doc_meta(), msadb_doc_tokens(), msadb_doc_kv()
 * of a global id. */
MSADB_API int msadb_shards_doc_text(msadb_shards_snapshot *s, uint64_t doc_id, char *buf, size_t cap,
                                    size_t *len);
MSADB_API int msadb_shards_doc_meta(msadb_shards_snapshot *s, uint64_t doc_id, void *buf, size_t cap,
                                    size_t *len);
MSADB_API int msadb_shards_doc_tokens(msadb_shards_snapshot *s, uint64_t doc_id, int32_t *ids,
                                      int64_t *spans, size_t cap);
MSADB_API int msadb_shards_doc_kv(msadb_shards_snapshot *s, uint64_t doc_id, uint32_t plane, float *keys,
                                  float *values);

/* ---- attention --------------------------------------------------------- */

/** Memory attention over the opened shards: each shard attends in its own
 * thread (msadb_attend), the outputs are merged with msadb_lse_merge in
 * shard order, and the hits of every shard are merged into one global
 * selection: per kv head (and query token with per_token), the top_k blocks
 * by score (SELECT_BLOCKS) or every block of the top_k documents by their
 * best block (SELECT_DOCUMENTS), best first, exactly the selection one
 * store holding every document would make.  The attention itself covers
 * each shard's own top_k, a superset of that selection, so its mass recall
 * is at least the single store's.  Exact mode: every block, hits listed
 * shard by shard.  Arguments, sizes and errors as msadb_attend(); with
 * q->stats, counts are summed and times are those of the slowest shard. */
MSADB_API int msadb_shards_attend(msadb_shards_snapshot *s, const msadb_query *q, float *out, float *lse,
                                  msadb_hit *hits, size_t hits_cap, size_t *n_hits);
/** The global selection attended: every shard routes (in threads), the
 * global top_k is kept as msadb_shards_retrieve() reports it, then each
 * shard attends only its blocks of it (msadb_shards_attend_blocks).  The
 * output is that of one store holding every document (the same selection),
 * and the blocks read are that one store's (top_k per kv head in all,
 * where msadb_shards_attend() reads top_k per kv head on every shard): read
 * and decode dominate a query's time (docs/benchmarks.md), so this is the
 * cheaper of the two when the shards share a machine.  Exact and per_token
 * queries are msadb_shards_attend()'s.  Arguments as msadb_shards_attend(). */
MSADB_API int msadb_shards_attend_global(msadb_shards_snapshot *s, const msadb_query *q, float *out, float *lse,
                                         msadb_hit *hits, size_t hits_cap, size_t *n_hits);
/** Selection only, merged as above. */
MSADB_API int msadb_shards_retrieve(msadb_shards_snapshot *s, const msadb_query *q, msadb_hit *hits,
                                    size_t hits_cap, size_t *n_hits);
/** msadb_attend_blocks() over hits with global ids: each shard attends the
 * blocks it holds (MSADB_ENOTFOUND for a block of a shard not opened here). */
MSADB_API int msadb_shards_attend_blocks(msadb_shards_snapshot *s, const msadb_query *q,
                                         const msadb_hit *blocks, size_t n_blocks, float *out, float *lse);
/** msadb_attend_merge() over the shards: out/lse hold the local result on
 * entry and the merge with sharded memory on return. */
MSADB_API int msadb_shards_attend_merge(msadb_shards_snapshot *s, const msadb_query *q, float *out,
                                        float *lse, msadb_hit *hits, size_t hits_cap, size_t *n_hits);

/** Merges per-part hit lists (global ids) into the global selection that
 * msadb_shards_attend() reports, for q's mode (exact, select, top_k,
 * per_token).  parts[i] has counts[i] hits.  out gets up to cap hits, *n
 * the number selected.  The MPI layer uses it on gathered hits. */
MSADB_API int msadb_shards_hits_merge(const msadb_query *q, uint32_t n_kv_heads,
                                      const msadb_hit *const *parts, const size_t *counts, size_t n_parts,
                                      msadb_hit *out, size_t cap, size_t *n);

/* ---- checking, splitting, merging -------------------------------------- */

/** Checks the manifest, each opened shard's label (store id, index) and
 * signature, that every space exists on every opened shard, that every
 * document id maps to its shard, and msadb_verify() on every opened shard.
 * report gets one line per problem, prefixed "shard-S: " where it concerns
 * one shard.  0 if sound, MSADB_ECORRUPT if a problem was found. */
MSADB_API int msadb_shards_verify(msadb_shards *sh, void (*report)(const char *problem, void *ud),
                                  void *ud);

/** Called for every document copied by split or merge: its id in the
 * source and in the destination (global ids on the sharded side). */
typedef void (*msadb_shards_copy_cb)(uint64_t old_id, uint64_t new_id, const msadb_doc_info *info,
                                     void *ud);

/** Splits the ordinary store at `src` into a new sharded store `dst` of
 * n_shards shards: spaces, then documents in id order (K/V as stored,
 * dequantized and re-encoded, which keeps quantized values bit for bit;
 * title, metadata, text, token ids and spans), placed by the placement
 * rule, committed in batches of bounded size.  Ids change (cb reports each
 * pair).  src_opt opens the source (read-only is enough), dst_opt creates
 * the shards.  On error dst is left without a manifest.  A store with a
 * space of its own key (msadb_space_create_keyed) is refused with
 * MSADB_ENOTSUP: the copy would make it a plain space. */
MSADB_API int msadb_shards_split(const char *src, const msadb_options *src_opt, const char *dst,
                                 uint32_t n_shards, const msadb_options *dst_opt, msadb_shards_copy_cb cb,
                                 void *ud);

/** Merges the sharded store `src` into a new ordinary store `dst`: spaces,
 * then every shard's documents, shard by shard.  Ids change (cb). */
MSADB_API int msadb_shards_merge(const char *src, const msadb_options *src_opt, const char *dst,
                                 const msadb_options *dst_opt, msadb_shards_copy_cb cb, void *ud);

#ifdef __cplusplus
}
#endif
#endif /* MSADB_SHARD_H */
