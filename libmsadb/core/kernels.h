/* kernels.h -- the query engine's hot loops: scoring summaries, partial
 * top-k selection, exact softmax attention and log-sum-exp merging.
 *
 * Every kernel has a portable C version and, on x86-64, an AVX-512 version
 * chosen at run time (msadb_k_simd()).  The scoring kernels are written so
 * that both versions perform the very same float operations in the very same
 * order (16 lanes, one fused multiply-add chain per lane, a fixed reduction
 * tree), so they return bit-identical scores and therefore the same block
 * selection on every machine.  The attention kernel uses OpenBLAS and a
 * vectorized exp; there the versions agree to float rounding only.
 *
 * Query vectors are prepared once per query (msadb_kq_prepare): rows padded
 * with zeros to a multiple of 16 floats, and each group of rows padded to a
 * multiple of 4 rows by repeating its first row (a repeated row cannot change
 * a max, and lets the kernels reduce four rows at a time).
 */
#ifndef MSADB_KERNELS_H
#define MSADB_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "core/util.h"

/* Prepared query rows for scoring.  `n_groups` groups of `gsize` rows; a
 * block's score for group g is the max over the group's rows.  With one
 * selection for all query tokens there is one group (the kv head's q heads
 * times the query tokens); with per-token selection one group per token. */
typedef struct msadb_kq {
    float *q;           /* [n_groups][gpad][dpad], 64-byte aligned, owned */
    int8_t *q8;         /* [n_groups][gpad][dpad] int8 copy for int8 scans */
    float *q8_scale;    /* [n_groups][gpad]: q ~= q8 * q8_scale */
    int32_t *q8_corr;   /* [n_groups][gpad]: 128 * sum(q8), see score_i8 */
    size_t cap;         /* floats allocated in q (and bytes in q8) */
    uint32_t d, dpad;   /* head dim and its multiple of 16 */
    uint32_t dpad8;     /* head dim rounded up to 64 (int8 rows) */
    uint32_t n_groups, gsize, gpad;
} msadb_kq;

/* Whether the AVX-512 versions are in use (CPU support, not disabled by the
 * environment variable MSADB_NO_SIMD). */
MSADB_HIDDEN int msadb_k_simd(void);
/* Forces the portable versions (1) or restores the automatic choice (0);
 * for tests and benchmarks. */
MSADB_HIDDEN void msadb_k_force_portable(int on);

/* Fills kq from rows: row r of group g is rows + (g * row_gstride + r *
 * row_stride) floats, d floats long.  With normalize the rows are scaled to
 * unit length (cosine scoring).  Reuses kq's memory; returns MSADB_ENOMEM. */
MSADB_HIDDEN int msadb_kq_prepare(msadb_kq *kq, const float *rows, uint32_t n_groups,
                                  uint32_t gsize, size_t row_gstride, size_t row_stride,
                                  uint32_t d, int normalize);
MSADB_HIDDEN void msadb_kq_free(msadb_kq *kq);

/* Mean-key scores of n blocks: mean is [n][d] f16.  scores[g * stride + i]
 * = max over group g's rows of q . mean_i, or with cosine of
 * q . mean_i / |mean_i| (0 when the mean is 0). */
MSADB_HIDDEN void msadb_k_score_mean(const msadb_kq *kq, const uint16_t *mean, size_t n,
                                     int cosine, float *scores, size_t stride);

/* Quest bound of n blocks: minmax is [n][2][d] f16 (min row, max row).
 * scores[g * stride + i] = max over group g's rows of
 * sum_j max(q_j * min_j, q_j * max_j), an upper bound of q . k for every key
 * k of the block. */
MSADB_HIDDEN void msadb_k_score_minmax(const msadb_kq *kq, const uint16_t *minmax, size_t n,
                                       float *scores, size_t stride);

/* int8 summaries: v is [n][d] int8 with per-block scales (v ~= v8 * scale).
 * Score = max over rows of q8_scale * (v8 . q8) * scale, computed exactly in
 * integers (AVX-512 VNNI when available), so every version agrees. */
MSADB_HIDDEN void msadb_k_score_i8(const msadb_kq *kq, const int8_t *v, const float *scale,
                                   size_t n, float *scores, size_t stride);

/* Turns the int8 kernel's four-summaries-at-a-time tiles off (0) or on (1,
 * the default); off scores one summary at a time as before the tiles: for
 * benchmarks that measure the tiles against it in the same run. */
MSADB_HIDDEN void msadb_k_i8_tiles(int on);

/* Quantizes one f32 vector to int8 with a symmetric absmax scale; returns
 * the scale (0 for a zero vector). */
MSADB_HIDDEN float msadb_k_quantize_i8(const float *x, uint32_t d, int8_t *out);

/* Representative keys per block (codec/summary.h computes them). */
#define MSADB_K_REPS 3
/* Scores n blocks of representatives: v8 [n][r][d], scale [n][r];
 * tmp holds n * r * n_groups floats. */
MSADB_HIDDEN void msadb_k_score_reps_i8(const msadb_kq *kq, const int8_t *v8, const float *scale,
                                        size_t n, uint32_t r, float *tmp, float *scores,
                                        size_t stride);

/* Writes to idx the indexes i < n with s[i] >= thr, in increasing order;
 * returns their count.  NaN scores are never written. */
MSADB_HIDDEN size_t msadb_k_select_ge(const float *s, size_t n, float thr, uint32_t *idx);

/* Partial top-k selection: a size-k min-heap whose root is the worst entry
 * kept.  Order: higher score first; equal scores: smaller id first.  NaN
 * scores are refused.  Memory is owned by the caller's arrays (k entries). */
typedef struct msadb_topk {
    float *score;
    uint64_t *id;
    uint32_t k, n;
} msadb_topk;

MSADB_HIDDEN void msadb_topk_reset(msadb_topk *t, float *score, uint64_t *id, uint32_t k);
/* The score an entry must reach to be kept (-INFINITY until full); an entry
 * equal to it is kept only if its id is smaller than the root's. */
static inline float msadb_topk_threshold(const msadb_topk *t)
{
    return t->n < t->k ? -INFINITY : t->score[0];
}
MSADB_HIDDEN void msadb_topk_offer(msadb_topk *t, float score, uint64_t id);
/* Sorts the kept entries best first (destroys the heap order). */
MSADB_HIDDEN void msadb_topk_sort(msadb_topk *t);

/* Selects the k best of n (score, id) pairs in place into the first k
 * positions, best first, by the same order as msadb_topk. */
MSADB_HIDDEN void msadb_k_topk_array(float *score, uint64_t *id, size_t n, size_t k);

/* Exact softmax attention of nq query rows Q[nq][d] over T keys K[T][d] and
 * values V[T][d]: O[nq][d] and lse[nq] = log sum_t exp(scale * q . k_t).
 * work holds nq * T floats and on return holds the attention weights
 * P[nq][T] (rows sum to 1).  T == 0 gives O = 0 and lse = -INFINITY. */
MSADB_HIDDEN void msadb_k_attend(const float *Q, uint32_t nq, const float *K, const float *V,
                                 size_t T, uint32_t d, float scale, float *work, float *O,
                                 float *lse);

/* LSE merge of two partial attention results over disjoint key sets (see
 * msadb_lse_merge in msadb.h).  out/lse_out may alias o1/l1. */
MSADB_HIDDEN void msadb_k_lse_merge(size_t n, size_t d, const float *o1, const float *l1,
                                    const float *o2, const float *l2, float *out,
                                    float *lse_out);

/* f16 -> f32 of n values (vectorized when possible). */
MSADB_HIDDEN void msadb_k_f16_to_f32(const uint16_t *h, float *f, size_t n);

#endif
