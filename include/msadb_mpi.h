/*
 * msadb_mpi.h -- one sharded store served by the ranks of an MPI job
 * (library msadb_mpi, pkg-config msadb-mpi; built only where MPI is found,
 * so that libmsadb itself never needs MPI).
 *
 * Every rank of the communicator opens its part of a sharded store
 * (msadb_shard.h): rank r of P serves the shards s with s % P == r, so
 * P <= n_shards.  On a cluster, DIR is the same path on every node and each
 * node's disk holds the manifest and the shards of the ranks it runs
 * (docs/distributed.md).
 *
 * Every function below that takes a msadb_mpi handle, except the accessors
 * and msadb_mpi_close(), is *collective*: every rank calls it, in the same
 * order, like an MPI collective.  The root rank (option, default 0) gives
 * the inputs and gets the results; the inputs of the other ranks are
 * ignored (pass NULL/0), and every rank returns the same code: 0, or the
 * error of the lowest rank that failed (msadb_mpi_error() says which rank
 * and where).
 *
 * Failures never hang: every message is a nonblocking MPI operation waited
 * on with a deadline (msadb_mpi_options.timeout_s).  A rank that does not
 * answer in time (it died, or is stalled) makes the others return
 * MSADB_ETIMEDOUT; after that the handle is unusable (pending MPI operations
 * cannot be cancelled) and the process should report msadb_mpi_error() and
 * end (MPI_Abort, or exit without MPI_Finalize).  Errors returned by MPI are
 * reported, not fatal: the communicator's error handler is set to
 * MPI_ERRORS_RETURN.  What Open MPI's launcher does when a rank dies is
 * described in docs/distributed.md.
 *
 * Data crosses ranks as raw bytes: every rank must run on the same
 * architecture (byte order, struct layout) and the same msadb version.
 */
#ifndef MSADB_MPI_H
#define MSADB_MPI_H

#include <mpi.h>

#include "msadb.h"
#include "msadb_shard.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How the ranks' attention results meet at the root. */
#define MSADB_MPI_REDUCE_OP 0     /* MPI_Ireduce with a user-defined LSE-merge operation (default) */
#define MSADB_MPI_REDUCE_GATHER 1 /* MPI_Igather to the root, merged there in rank order */

typedef struct msadb_mpi_options {
    int root;          /* rank that gives inputs and gets results (0) */
    double timeout_s;  /* deadline of each message exchange, seconds (60);
                          0 = wait for ever */
    int reduce;        /* MSADB_MPI_REDUCE_* */
} msadb_mpi_options;

MSADB_API void msadb_mpi_options_init(msadb_mpi_options *o);

typedef struct msadb_mpi msadb_mpi;

/** Opens the calling rank's part of the sharded store at dir (collective).
 * comm is duplicated (the handle's messages never mix with the caller's).
 * Errors: those of msadb_shards_open_part() (MSADB_EINVAL when there are
 * more ranks than shards), MSADB_ESIGNATURE (the ranks' shards differ),
 * MSADB_ETIMEDOUT.  On an error *out may still get a handle that only
 * msadb_mpi_error() (the cause, with its rank) and msadb_mpi_close()
 * accept. */
MSADB_API int msadb_mpi_open(MPI_Comm comm, const char *dir, const msadb_signature *expect,
                             const msadb_options *opt, const msadb_mpi_options *mo, msadb_mpi **out);

/** Creates a sharded store of n_shards shards (collective; sig and
 * n_shards from the root): each rank creates its own shards and writes the
 * manifest (the same bytes everywhere, for nodes that do not share a disk). */
MSADB_API int msadb_mpi_create(MPI_Comm comm, const char *dir, uint32_t n_shards, const msadb_signature *sig,
                               const msadb_options *opt, const msadb_mpi_options *mo, msadb_mpi **out);

/** Closes the rank's shards and frees the handle (not collective); NULL
 * allowed. */
MSADB_API void msadb_mpi_close(msadb_mpi *m);

/** This rank's part of the store (for local reads); valid until close. */
MSADB_API msadb_shards *msadb_mpi_shards(msadb_mpi *m);
MSADB_API int msadb_mpi_rank(const msadb_mpi *m);
MSADB_API int msadb_mpi_size(const msadb_mpi *m);
/** A sentence on the last error ("rank 2: shard-2: ...", "rank 0: timed out
 * after 5.0 s in query reduction waiting for ranks 1, 3"); "" if none.
 * Valid until the next call on the handle. */
MSADB_API const char *msadb_mpi_error(const msadb_mpi *m);

/** Statistics summed over every shard, on the root (collective). */
MSADB_API int msadb_mpi_stat(msadb_mpi *m, msadb_stat_info *out);

/** Memory attention over every shard (collective): the root's query is
 * broadcast (layer, q, n_query, spaces, top_k, select, summary, score,
 * scale, exact, per_token; q->stats stays local), every rank attends its
 * shards (msadb_shards_attend), the outputs meet at the root by an LSE
 * reduction and the hits are gathered and merged into the global
 * selection (msadb_shards_hits_merge).  Results, sizes and meaning as
 * msadb_shards_attend(), on the root only (out, lse, hits may be NULL
 * elsewhere).  *bytes (may be NULL) gets the bytes this rank sent and
 * received for the query. */
MSADB_API int msadb_mpi_attend(msadb_mpi *m, const msadb_query *q, float *out, float *lse, msadb_hit *hits,
                               size_t hits_cap, size_t *n_hits, uint64_t *bytes);

/** Adds the root's n_docs documents (collective): the root places each on
 * the lightest shard (global token counts, as msadb_shards_batch_add),
 * sends it to the rank serving that shard, and every rank commits what it
 * received in one batch per shard.  ids (root, may be NULL) gets the global
 * ids in input order.  Each document is whole or absent; if one rank fails
 * to commit, the others' documents stay (docs/distributed.md). */
MSADB_API int msadb_mpi_ingest(msadb_mpi *m, const msadb_doc *docs, size_t n_docs, uint64_t *ids);

/** The same in steps, for input that arrives document by document: begin
 * (the shards' token counts go to the root), add the root's documents one
 * per call (each placed, sent to its rank and added to that rank's batch;
 * an error there leaves the batch as it was, as msadb_batch_add()), then
 * commit (ids on the root, in add order) or abort.  All collective, except
 * msadb_mpi_batch_abort(), which every rank calls for itself. */
MSADB_API int msadb_mpi_batch_begin(msadb_mpi *m);
MSADB_API int msadb_mpi_batch_add(msadb_mpi *m, const msadb_doc *doc);
MSADB_API int msadb_mpi_batch_commit(msadb_mpi *m, uint64_t *ids);
MSADB_API void msadb_mpi_batch_abort(msadb_mpi *m);

/** Broadcasts n bytes from the root with the handle's deadline
 * (collective): for a program that drives its ranks in a loop (the root
 * reads requests and tells the others what comes next, as msadb-mpi does). */
MSADB_API int msadb_mpi_bcast(msadb_mpi *m, void *buf, size_t n);

/** Deletes the root's ids (collective): every id is checked on its rank
 * first (MSADB_ENOTFOUND: nothing deleted), then each rank deletes its own. */
MSADB_API int msadb_mpi_delete(msadb_mpi *m, const uint64_t *ids, size_t n);

/** msadb_shards_compact() on every rank (collective). */
MSADB_API int msadb_mpi_compact(msadb_mpi *m);

/** Creates / drops the root's space name on every shard (collective);
 * results as msadb_shards_space_create / _drop over all shards. */
MSADB_API int msadb_mpi_space_create(msadb_mpi *m, const char *name);
MSADB_API int msadb_mpi_space_drop(msadb_mpi *m, const char *name);
/** Every space, summed over every shard, to cb on the root (collective). */
MSADB_API int msadb_mpi_space_list(msadb_mpi *m, int (*cb)(const msadb_space_info *info, void *ud), void *ud);

/** Every document of `space` (NULL = all) to cb on the root, shard by shard
 * as msadb_shards_doc_list() (collective).  A non-zero return of cb stops
 * the listing on the root; the other ranks finish sending. */
MSADB_API int msadb_mpi_doc_list(msadb_mpi *m, const char *space,
                                 int (*cb)(const msadb_doc_info *info, void *ud), void *ud);

/** Documents by global id (collective): for each of the root's ids, cb on
 * the root gets its information, its text (NULL if none) and its token
 * spans (NULL if none; [n_tokens][2]), or rc MSADB_ENOTFOUND.  For showing
 * query hits with their text. */
typedef int (*msadb_mpi_doc_cb)(uint64_t id, int rc, const msadb_doc_info *info, const char *text,
                                const int64_t *spans, void *ud);
MSADB_API int msadb_mpi_doc_fetch(msadb_mpi *m, const uint64_t *ids, size_t n, msadb_mpi_doc_cb cb, void *ud);

/** msadb_shards_verify() on every rank; report is called on the root with
 * every rank's problems, "rank R: " in front (collective). */
MSADB_API int msadb_mpi_verify(msadb_mpi *m, void (*report)(const char *problem, void *ud), void *ud);

#ifdef __cplusplus
}
#endif
#endif /* MSADB_MPI_H */
