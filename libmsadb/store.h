/* store.h -- internal interface of the storage layer (store.c) for the other
 * library modules (query engine, verify).  Everything here works inside a
 * msadb_snapshot (one LMDB read transaction); pointers into stored values
 * stay valid until that snapshot ends.
 *
 * Summary layout: the blocks of a space are numbered by *slot* in append
 * order (slot s sits in page s / page_cap at index s % page_cap).  Every
 * plane of a space has the same slots, so one slot page (block id, document
 * id, token range, deleted flag) serves all planes, and each (plane, kind)
 * has its own summary page holding, for its n entries, these regions in
 * this order (absent kinds take no room):
 *   REPS scales: [n][3] f32   scales of the representative vectors
 *   MEAN:   [n][d] f16        mean key of the block
 *   MINMAX: [n][2][d] f16     min (rounded down) then max (rounded up)
 *   REPS:   [n][3][d] int8    representative keys (kernels.h)
 * Pages are padded to at least MSADB_SUMM_PAGE_MIN bytes so that LMDB keeps
 * every one in overflow pages, whose data is 16-byte aligned: the f32
 * scales, first in the page, are then properly aligned.
 */
#ifndef MSADB_STORE_H
#define MSADB_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "msadb.h"
#include "util.h"

#define MSADB_SLOT_DELETED 1u

/* The routing choices a query may name (msadb_query, msadb_ask_params):
 * one summary kind, and a score for the mean summary. */
static inline int msadb_summary_is_one(uint32_t k)
{
    return k == MSADB_SUMMARY_MEAN || k == MSADB_SUMMARY_MINMAX || k == MSADB_SUMMARY_REPS;
}

static inline int msadb_score_valid(int s)
{
    return s == MSADB_SCORE_DEFAULT || s == MSADB_SCORE_COSINE || s == MSADB_SCORE_DOT;
}

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
    const uint16_t *mean;   /* [n][d] f16, or NULL when the store has no MEAN summaries */
    const uint16_t *minmax; /* [n][2][d] f16, or NULL when the store has no MINMAX summaries */
    const int8_t *reps;     /* [n][3][d] int8, or NULL without REPS summaries */
    const float *reps_scale; /* [n][3] f32 (16-byte aligned), or NULL without REPS */
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

/* The signature of the snapshot's store. */
MSADB_HIDDEN const msadb_signature *msadb_snap_signature(msadb_snapshot *snap);

/* Computes the summaries of one block from its dequantized keys K[n][d]:
 * mean (f16, nearest) and minmax ([2][d] f16, rounded outward). */
MSADB_HIDDEN void msadb_summarize(const float *K, uint32_t n, uint32_t d, uint16_t *mean,
                                  uint16_t *minmax);

#endif
