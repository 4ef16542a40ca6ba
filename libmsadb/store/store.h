/* store.h -- internal interface of the storage layer (store.c) for the other
 * library modules (query engine, verify).  Everything here works inside a
 * msadb_snapshot (one LMDB read transaction); pointers into stored values
 * stay valid until that snapshot ends.
 *
 * Slots: the blocks of a space are numbered by *slot* in append order (slot
 * s sits in page s / page_cap at index s % page_cap).  Every plane of a
 * space has the same slots, so one slot page (block id, document id, token
 * range, deleted flag) serves all planes, and each plane has its own
 * summary page for the same slots, laid out as codec/summary.h describes.
 */
#ifndef MSADB_STORE_H
#define MSADB_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "msadb.h"
#include "codec/coarse.h"
#include "codec/summary.h"
#include "core/util.h"

#define MSADB_SLOT_DELETED 1u

/* One slot page entry (decoded from its stored little-endian form). */
typedef struct msadb_slot {
    uint64_t block_id;
    uint64_t doc_id;
    uint32_t tok_start; /* first token of the block inside its document */
    uint16_t n_tok;
    uint16_t flags;     /* MSADB_SLOT_DELETED */
} msadb_slot;

/* A view of page `page_no` of one space and plane: n entries. */
typedef struct msadb_page_view {
    uint64_t page_no;
    uint32_t n;
    const uint8_t *slots;   /* n stored slot entries (MSADB_SLOT_BYTES each); decode with msadb_slot_at() */
    msadb_summ_view summ;   /* the page's summaries (codec/summary.h) */
    msadb_summ_view coarse; /* its routing index page (codec/coarse.h) */
    uint32_t n_coarse;      /* super-blocks in it; 0: no index page */
    uint32_t coarse_S;      /* slots per super-block */
} msadb_page_view;

#define MSADB_SLOT_BYTES 24

static inline void msadb_slot_at(const uint8_t *slots, uint32_t i, msadb_slot *s)
{
    const uint8_t *p = slots + (size_t)i * MSADB_SLOT_BYTES;
    s->block_id = msadb_get_le64(p);
    s->doc_id = msadb_get_le64(p + 8);
    s->tok_start = msadb_get_le32(p + 16);
    s->n_tok = msadb_get_le16(p + 20);
    s->flags = msadb_get_le16(p + 22);
}

/* Looks up a space id by name in the snapshot.  MSADB_ENOTFOUND if none. */
MSADB_HIDDEN int msadb_snap_space_id(msadb_snapshot *snap, const char *name, uint32_t *id);

/* Lists every space id in the snapshot (for "all spaces" queries): up to
 * cap ids into ids, the total count in *n (MSADB_ELIMIT if cap was short;
 * ids may be NULL to count). */
MSADB_HIDDEN int msadb_snap_space_ids(msadb_snapshot *snap, uint32_t *ids, size_t cap, size_t *n);

/* Collects views of every summary page of (space, plane), in slot order,
 * into *views (grown with realloc; *cap is its capacity; *n the count).
 * The vectors point into the memory map (no copy). */
MSADB_HIDDEN int msadb_snap_pages(msadb_snapshot *snap, uint32_t space_id, uint32_t plane,
                                  msadb_page_view **views, size_t *n, size_t *cap);

/* Reads and decodes block `block_id` of `plane`, which belongs to space
 * `space_id` (the space is part of an encrypted block's binding), into K, V
 * ([n_tok][d] each, room for block_size tokens; either may be NULL).
 * Errors: MSADB_ENOTFOUND, MSADB_ECORRUPT, MSADB_EAUTH. */
MSADB_HIDDEN int msadb_snap_block(msadb_snapshot *snap, uint32_t space_id, uint64_t block_id,
                                  uint32_t plane, float *K, float *V, uint32_t *n_tok);

/* A slot for the query engine's per-snapshot scratch memory, kept across
 * msadb_snapshot_renew() and released with `destroy` when the snapshot ends. */
MSADB_HIDDEN void *msadb_snap_scratch(msadb_snapshot *snap);
MSADB_HIDDEN void msadb_snap_set_scratch(msadb_snapshot *snap, void *p, void (*destroy)(void *));

/* The space a document belongs to.  Errors: MSADB_ENOTFOUND. */
MSADB_HIDDEN int msadb_snap_doc_space(msadb_snapshot *snap, uint64_t doc_id, uint32_t *space_id);

/* A float buffer of at least n floats owned by the snapshot and reused
 * across calls: valid until the next call or the snapshot's end.  NULL when
 * out of memory. */
MSADB_HIDDEN float *msadb_snap_floats(msadb_snapshot *snap, size_t n);

/* Nonzero when the store was opened read-only. */
MSADB_HIDDEN int msadb_store_read_only(const msadb_store *st);

/* Rebuilds the routing index with S slots per super-block, R
 * representatives each, chosen by coarse kind `kind` (store/index.c): for the benchmark that chooses the
 * defaults.  Errors: MSADB_EINVAL (no representatives in the store, or
 * parameters msadb_coarse_valid refuses), write errors. */
MSADB_HIDDEN int msadb_route_rebuild(msadb_store *st, uint32_t S, uint32_t R, uint32_t kind);

/* Nonzero when the snapshot's store has a routing index (store/index.c). */
MSADB_HIDDEN int msadb_snap_has_index(msadb_snapshot *snap);

/* Which documents a read may see (store/filter.c): a set of document ids,
 * either the only visible ones (include: a metadata filter was given) or
 * the hidden ones (expired documents).  Built by walking the document
 * records, and kept in the snapshot until its state, the filter or the
 * clock (past the next expiry time) makes it stale. */
typedef struct msadb_docmask {
    int include;
    uint64_t *keys;
    uint8_t *used;
    size_t cap, n;
    /* what it was built for */
    size_t txn_id;
    int64_t built_at, valid_until;
    char *where;
    size_t where_len;
    uint8_t *meta; /* scratch for metadata reads */
    size_t meta_cap;
} msadb_docmask;

static inline size_t msadb_docmask_hash(uint64_t doc, size_t mask)
{
    return (size_t)((doc * 0x9e3779b97f4a7c15ull) >> 17) & mask;
}

/* Whether the mask hides document doc (a NULL mask hides nothing). */
static inline int msadb_docmask_hides(const msadb_docmask *m, uint64_t doc)
{
    if (!m)
        return 0;
    int in = 0;
    if (m->cap) {
        size_t h = msadb_docmask_hash(doc, m->cap - 1);
        while (m->used[h] && m->keys[h] != doc)
            h = (h + 1) & (m->cap - 1);
        in = m->used[h];
    }
    return m->include ? !in : in;
}

/* The mask for filter terms where[0, n_where) ("KEY=VALUE", all must hold)
 * and the expiry times as of now, in the snapshot: *out NULL when every
 * document is visible (no terms, nothing expired: then no document record
 * is read if the store never held an expiry time).  Valid until the next
 * call on the snapshot or its end.  Errors: MSADB_EINVAL (a malformed
 * term), MSADB_ENOMEM, read errors. */
MSADB_HIDDEN int msadb_snap_mask(msadb_snapshot *snap, const char *const *where, size_t n_where,
                                 const msadb_docmask **out);
MSADB_HIDDEN void msadb_docmask_free(msadb_docmask *m);

/* The signature of the snapshot's store. */
MSADB_HIDDEN const msadb_signature *msadb_snap_signature(msadb_snapshot *snap);

/* For hosts that build a document only when it is new (the runtime's text
 * ingest): whether a document key is held by the batch or stored.  If so
 * the lookup counts as a no-op add (msadb_batch_status_get()) and 1 is
 * returned; 0 when the key is new; or an error. */
MSADB_HIDDEN int msadb_batch_skip_key(msadb_batch *b, const void *key, size_t len);

#endif
