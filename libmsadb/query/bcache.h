/* bcache.h -- a cache of decoded blocks for the query engine, kept in a
 * snapshot's scratch.  A decode-time saving for the common case of a
 * transformer asking about the same memory token after token: the blocks a
 * layer selects change little from one generated token to the next.
 *
 * Blocks never change once written (ids are never reused; deletion removes
 * a block id for good), so entries stay valid across snapshot renewals. */
#ifndef MSADB_BCACHE_H
#define MSADB_BCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "msadb.h"
#include "core/util.h"

typedef struct msadb_bcache_entry {
    uint64_t block_id;
    uint32_t plane;
    uint32_t n_tok;  /* 0: empty */
    uint64_t used;   /* clock of the last use */
} msadb_bcache_entry;

typedef struct msadb_bcache {
    msadb_bcache_entry *e; /* n_sets * WAYS */
    float *data;           /* per entry: K then V, block_floats each */
    size_t n_sets, block_floats;
    uint64_t clock;
    uint64_t hits, misses;
} msadb_bcache;

/* Sizes the cache for blocks of block_size x head_dim within about `bytes`
 * of memory (at least one set).  Returns 0 or MSADB_ENOMEM. */
MSADB_HIDDEN int msadb_bcache_init(msadb_bcache *c, size_t bytes, uint32_t block_size, uint32_t head_dim);
MSADB_HIDDEN void msadb_bcache_free(msadb_bcache *c);

/* The decoded keys and values of block (block_id, plane) of space
 * space_id: from the cache, or decoded through msadb_snap_block() and
 * cached.  *K and *V ([n_tok][d]) stay valid until the next call.  Errors
 * are those of msadb_snap_block(). */
MSADB_HIDDEN int msadb_bcache_get(msadb_bcache *c, msadb_snapshot *snap, uint32_t space_id,
                                  uint64_t block_id, uint32_t plane, const float **K,
                                  const float **V, uint32_t *n_tok);

#endif
