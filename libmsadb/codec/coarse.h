/* coarse.h -- the routing index's coarse summary: per super-block of S
 * consecutive slots of one (space, plane), R of the blocks' representative
 * keys, chosen so that the super-block's best representative score is kept
 * for queries that point at any of its outliers.
 *
 * Choice (k-center over the super-block's 3*S block representatives): the
 * first kept vector is the representative farthest (Euclidean, dequantized)
 * from the mean of all of them, each next one the representative farthest
 * from both the mean and every vector kept so far (ties: the earlier one).
 * The kept vectors are copied bit for bit (int8 and scale) from the block
 * summaries, so a super-block's coarse score never exceeds the best block
 * score inside it.  A super-block with fewer than R representatives repeats
 * its first kept vector (a repeated vector cannot change a max).
 *
 * Coarse page: the coarse entries of one summary page (n slots: ceil(n/S)
 * entries), laid out as a REPS-only summary page whose entries hold R
 * vectors instead of MSADB_K_REPS:
 *   scales: [ns][R] f32, then vectors: [ns][R][d] int8,
 * zero-padded to MSADB_SUMM_PAGE_MIN bytes (LMDB overflow pages, 16-byte
 * aligned, as summary pages).  A coarse page is a function of its summary
 * page alone (deleted flags live in slot pages and do not enter it), so it is
 * recomputed whenever the summary page is written, and verify recomputes and
 * compares it bit for bit.
 */
#ifndef MSADB_COARSE_H
#define MSADB_COARSE_H

#include <stddef.h>
#include <stdint.h>

#include "codec/summary.h"

/* Coarse kinds (stored in meta/route): the distance the k-center choice uses. */
#define MSADB_COARSE_KCENTER 1     /* Euclidean, between dequantized vectors */
#define MSADB_COARSE_KCENTER_DIR 2 /* between directions (vectors scaled to unit length) */
#define MSADB_COARSE_KCENTER_MIX 3 /* the first ceil(R/2) Euclidean, the rest by direction */
#define MSADB_COARSE_MAX_R 16
#define MSADB_COARSE_MAX_S 256

/* The index parameters a store keeps (meta/route). */
typedef struct msadb_coarse_layout {
    uint32_t d;
    uint32_t S; /* slots per super-block: divides the page capacity, <= MSADB_COARSE_MAX_S */
    uint32_t R; /* representatives kept per super-block, 1..MSADB_COARSE_MAX_R */
    uint32_t kind;
} msadb_coarse_layout;

/* Coarse entries of a summary page of n slots. */
static inline size_t msadb_coarse_entries(const msadb_coarse_layout *C, size_t n)
{
    return (n + C->S - 1) / C->S;
}

/* Stored size of the coarse page of a summary page of n slots. */
MSADB_HIDDEN size_t msadb_coarse_page_bytes(const msadb_coarse_layout *C, size_t n);

/* Builds the coarse page (msadb_coarse_page_bytes(n) bytes) of the summary
 * page whose regions are `fine` (n slots; REPS must be present). */
MSADB_HIDDEN void msadb_coarse_page_build(const msadb_coarse_layout *C, const msadb_summ_view *fine, size_t n,
                                          uint8_t *page);

/* The coarse page as a summary view of msadb_coarse_entries(n) entries of R
 * representatives each (reps, reps_scale and n_reps set; page 16-byte
 * aligned). */
MSADB_HIDDEN void msadb_coarse_view_of(const msadb_coarse_layout *C, const uint8_t *page, size_t n,
                                       msadb_summ_view *v);

/* Whether the parameters are valid for a page capacity. */
MSADB_HIDDEN int msadb_coarse_valid(const msadb_coarse_layout *C, uint32_t page_cap);

#endif
