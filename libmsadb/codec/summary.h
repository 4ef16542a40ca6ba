/* summary.h -- the block summary: the routing keys of one block of one plane,
 * how they are computed from the block's keys, how a summary page lays them
 * out, and how a page of them is scored against a query.
 *
 * Kinds (a store keeps any non-empty set, msadb_signature.summary_kinds):
 *   MEAN:   the mean key [d] f16 (MSA's pooled chunk key)
 *   MINMAX: element-wise min and max [2][d] f16, rounded outward so the
 *           stored bounds still bound every key (Quest's page bound)
 *   REPS:   MSADB_K_REPS representative keys [3][d] int8 with one f32 scale
 *           each:
 *             0: the token farthest from the block mean (a lone outlier: a
 *                needle),
 *             1: the token farthest from both the mean and token 0 (the next
 *                outlier: delimiter or sink tokens take the first place in
 *                many blocks),
 *             2: the mean of the aligned 4-token window farthest from the
 *                block mean (a run of tokens that moved together).
 *
 * Page layout: a summary page holds the summaries of n consecutive slots of
 * one (space, plane), region by region in this order (absent kinds take no
 * room):
 *   REPS scales: [n][3] f32
 *   MEAN:   [n][d] f16
 *   MINMAX: [n][2][d] f16 (min row, then max row)
 *   REPS:   [n][3][d] int8
 * Pages are padded to at least MSADB_SUMM_PAGE_MIN bytes so that LMDB keeps
 * every one in overflow pages, whose data is 16-byte aligned: the f32
 * scales, first in the page, are then properly aligned.  An entry "in
 * concatenated form" is its regions' bytes one after another (what ingest
 * computes per block and what compaction moves).
 *
 * Nothing here touches storage: the store layer (store/) keeps the pages in
 * LMDB and the query engine (query/) drives the scan.
 */
#ifndef MSADB_SUMMARY_H
#define MSADB_SUMMARY_H

#include <stddef.h>
#include <stdint.h>

#include "core/kernels.h"
#include "core/util.h"
#include "msadb.h"

enum { MSADB_REG_REPS_SCALE, MSADB_REG_MEAN, MSADB_REG_MINMAX, MSADB_REG_REPS, MSADB_SUMM_REGIONS };
#define MSADB_SUMM_PAGE_MIN 2048

/* A page layout: bytes per entry of each region, their sum, and the
 * smallest stored page (summary pages are padded; other fixed-entry pages,
 * such as the store's slot pages, use one region and no padding). */
typedef struct msadb_summ_layout {
    uint32_t d;
    size_t eb[MSADB_SUMM_REGIONS];
    size_t entry;
    size_t min_bytes;
} msadb_summ_layout;

/* The summary page layout of a store of head dim d keeping `kinds`. */
MSADB_HIDDEN void msadb_summ_layout_init(msadb_summ_layout *L, uint32_t d, uint32_t kinds);
/* A layout of one region of `entry` bytes per entry and no padding. */
MSADB_HIDDEN void msadb_summ_layout_flat(msadb_summ_layout *L, size_t entry);
/* Stored size of a page of n entries (padding included). */
MSADB_HIDDEN size_t msadb_summ_page_bytes(const msadb_summ_layout *L, size_t n);
/* Entry i of a page of n entries, to / from concatenated form. */
MSADB_HIDDEN void msadb_summ_entry_get(const msadb_summ_layout *L, const uint8_t *page, size_t n, size_t i,
                                       uint8_t *out);
MSADB_HIDDEN void msadb_summ_entry_put(const msadb_summ_layout *L, uint8_t *page, size_t n, size_t i,
                                       const uint8_t *entry);
/* Lays out n concatenated entries as a page of msadb_summ_page_bytes(n)
 * bytes (padding zeroed). */
MSADB_HIDDEN void msadb_summ_page_build(const msadb_summ_layout *L, const uint8_t *entries, uint32_t n,
                                        uint8_t *page);

/* Computing summaries from a block's dequantized keys K[n][d]. */
/* Mean (f16, nearest) and minmax ([2][d] f16, rounded outward); either
 * output may be NULL. */
MSADB_HIDDEN void msadb_summarize(const float *K, uint32_t n, uint32_t d, uint16_t *mean, uint16_t *minmax);
/* The representatives: v8 [MSADB_K_REPS][d], scale [MSADB_K_REPS]. */
MSADB_HIDDEN void msadb_summarize_reps(const float *K, uint32_t n, uint32_t d, int8_t *v8, float *scale);
/* Every kind of layout L, in concatenated form (L->entry bytes at out). */
MSADB_HIDDEN void msadb_summarize_entry(const msadb_summ_layout *L, const float *K, uint32_t n, uint8_t *out);

/* A page's regions (NULL for kinds the layout does not keep). */
typedef struct msadb_summ_view {
    const uint16_t *mean;    /* [n][d] f16 */
    const uint16_t *minmax;  /* [n][2][d] f16 */
    const int8_t *reps;      /* [n][3][d] int8 */
    const float *reps_scale; /* [n][3] f32 */
    uint32_t n_reps;         /* representatives per entry: MSADB_K_REPS in
                                summary pages, R in coarse pages (coarse.h) */
} msadb_summ_view;

/* The regions of a page of n entries (page 16-byte aligned). */
MSADB_HIDDEN void msadb_summ_view_of(const msadb_summ_layout *L, const uint8_t *page, size_t n,
                                     msadb_summ_view *v);
/* The same regions from entry e on. */
MSADB_HIDDEN void msadb_summ_view_from(const msadb_summ_view *v, uint32_t d, uint32_t e, msadb_summ_view *out);

/* The routing choices a query may name (msadb_query, msadb_ask_params):
 * one summary kind, and a score for the mean summary. */
static inline int msadb_summary_is_one(uint32_t k)
{
    return k == MSADB_SUMMARY_MEAN || k == MSADB_SUMMARY_MINMAX || k == MSADB_SUMMARY_REPS;
}

static inline int msadb_score_valid(int s)
{
    return s == MSADB_SCORE_DEFAULT || s == MSADB_SCORE_COSINE || s == MSADB_SCORE_DOT ||
           s == MSADB_SCORE_DOT_CENTRED;
}

/* How a scan scores a summary page. */
typedef enum msadb_summ_score {
    MSADB_SUMM_SCORE_MEAN_DOT,  /* q . mean */
    MSADB_SUMM_SCORE_MEAN_COS,  /* cosine of q and mean */
    MSADB_SUMM_SCORE_MINMAX,    /* Quest's upper bound of q . k */
    MSADB_SUMM_SCORE_REPS       /* max over the representatives of q . r */
} msadb_summ_score;

/* The score used for summary kind `kind` (one of MSADB_SUMMARY_*) with mean
 * score `score` (MSADB_SCORE_*; DEFAULT is cosine). */
MSADB_HIDDEN msadb_summ_score msadb_summ_score_of(uint32_t kind, int score);

/* Scores n entries of a page for every group of kq: scores[g * n + i].
 * tmp holds n * v->n_reps * kq->n_groups floats (used by REPS only). */
MSADB_HIDDEN void msadb_summ_score_page(const msadb_kq *kq, msadb_summ_score how, const msadb_summ_view *v,
                                        size_t n, float *tmp, float *scores);

#endif
