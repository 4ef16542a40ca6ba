/* matmul.h -- the runtime's projections Y = X W^T with bf16 inputs and f32
 * accumulation (AVX512-BF16), on weights packed once at model load, run by
 * a small pool of threads.
 *
 * Numerics.  Every input of a product is rounded to bf16 (round to nearest
 * even: 8 significant bits, relative error at most 2^-9), products are exact
 * in f32 and summed in f32, two at a time in k order (VDPBF16PS), for each
 * output on its own: an output's value does not depend on how many rows are
 * computed together, on the thread count or on which thread computes it.
 * The f32 path (OpenBLAS sgemm on f32 weights) stays the reference; this one
 * is what the model uses where the CPU has AVX512-BF16 (model.h, "Matrix
 * products").
 *
 * Packed layout.  W[out][in] is stored in groups of MSADB_MM_COLS (64)
 * output rows; a group holds, for each pair of inputs kk = 0 .. ld-1 (ld >=
 * ceil(in/2), the group stride in pairs), 64 uint32 words: word j is
 * (bf16(W[g*64+j][2kk]) | bf16(W[g*64+j][2kk+1]) << 16), missing rows and
 * inputs being zero.  One pair step of the kernel thus reads 256 contiguous
 * bytes for 64 outputs.  Packed weights have ld = ceil(in/2); the model's
 * packed KV cache (model.c) grows in place: keys as W[token][dim] (ld =
 * ceil(head_dim/2)), values as W[dim][token] with ld = ceil(capacity/2), so
 * a product over the first T tokens reads a prefix of every group. */
#ifndef MSADB_MATMUL_H
#define MSADB_MATMUL_H

#include <stddef.h>
#include <stdint.h>

#include "core/util.h"

#define MSADB_MM_COLS 64

/* 1 when this build has the bf16 kernel and the CPU runs it (AVX512F, BW,
 * VL and BF16), else 0. */
MSADB_HIDDEN int msadb_mm_bf16_available(void);

/* 1 when the bf16 products run on AMX tiles (AMX-BF16 and AMX-TILE, the
 * kernel's permission granted to this process) and MSADB_MODEL_AMX is not
 * "0", else 0; decided once per process.  AMX computes the same rounded
 * products and sums them in the same order, but its sums may differ from
 * the AVX512 kernel's in the last bits, so a process uses one of the two. */
MSADB_HIDDEN int msadb_mm_amx_available(void);
/* Tests: on 0 the products use the AVX512 kernel even where AMX is
 * available; returns whether AMX is now used. */
MSADB_HIDDEN int msadb_mm_set_amx(int on);
/* 1 when the bf16 products run on AMX tiles now (available and not set
 * off), else 0. */
MSADB_HIDDEN int msadb_mm_amx_used(void);

/* Bytes of a packed W[out][in]. */
MSADB_HIDDEN size_t msadb_mm_packed_bytes(uint32_t out, uint32_t in);

/* Packs W[out][in] (f32, row-major) into a new 64-byte aligned buffer,
 * *packed, owned by the caller (msadb_afree).  Works on any CPU.  Errors:
 * MSADB_EINVAL (NULL pointers, out or in zero), MSADB_ENOMEM. */
MSADB_HIDDEN int msadb_mm_pack_bf16(const float *W, uint32_t out, uint32_t in, uint16_t **packed);

/* Word index of element (j, k) of a packed matrix of group stride ld, and
 * whether it is the high half (k odd). */
static inline size_t msadb_mm_word(size_t ld, size_t j, size_t k)
{
    return ((j / MSADB_MM_COLS) * ld + k / 2) * MSADB_MM_COLS + j % MSADB_MM_COLS;
}

/* Writes row j of a packed matrix of group stride ld: inputs w[0..in-1]
 * (the words of pairs ceil(in/2).. are left alone).  No checks: the caller
 * sized `packed`. */
MSADB_HIDDEN void msadb_mm_pack_row(const float *w, uint32_t in, size_t j, size_t ld,
                                    uint32_t *packed);

/* Sets element (j, k) of a packed matrix of group stride ld to bf16(v),
 * leaving the other half of its word alone. */
MSADB_HIDDEN void msadb_mm_pack_set(uint32_t *packed, size_t ld, size_t j, size_t k, float v);

/* The bf16 value nearest to x (ties to even), as its 16 bits; the rounding
 * the packing and the kernel apply (x finite). */
MSADB_HIDDEN uint16_t msadb_mm_bf16_of(float x);

/* Threads for the products: the caller's thread and `threads` - 1 workers,
 * started here and parked between products.  threads < 1 counts as 1; a
 * worker that cannot be started is done without.  Errors: MSADB_EINVAL
 * (out NULL), MSADB_ENOMEM. */
typedef struct msadb_mm_pool msadb_mm_pool;
MSADB_HIDDEN int msadb_mm_pool_new(int threads, msadb_mm_pool **out);
/* Stops and joins the workers; NULL allowed. */
MSADB_HIDDEN void msadb_mm_pool_free(msadb_mm_pool *p);

/* Runs fn(arg, u) for every u in [0, units), on the caller's thread and the
 * pool's workers (each unit once, in no set order, units taken in turn from
 * a shared counter), and returns when all have run.  pool NULL or without
 * workers: in order on the caller's thread.  Not reentrant: fn must not use
 * the same pool.  For work beside the products (attention's softmax). */
typedef void (*msadb_mm_task)(void *arg, size_t unit);
MSADB_HIDDEN void msadb_mm_pool_run(msadb_mm_pool *pool, size_t units, msadb_mm_task fn,
                                    void *arg);

/* uint32 words of the scratch msadb_mm_bf16() needs for n rows of in inputs. */
MSADB_HIDDEN size_t msadb_mm_scratch_words(size_t n, uint32_t in);

/* Y[n][out] = X[n][in] W^T as above, W packed by msadb_mm_pack_bf16();
 * scratch holds msadb_mm_scratch_words(n, in) words (64-byte aligned).
 * pool NULL: the caller's thread only.  Small products run on the caller's
 * thread alone.  Requires msadb_mm_bf16_available(); returns without
 * writing Y otherwise (a programming error, not a runtime condition). */
MSADB_HIDDEN void msadb_mm_bf16(msadb_mm_pool *pool, const float *X, size_t n,
                                const uint16_t *packed, uint32_t out, uint32_t in, float *Y,
                                uint32_t *scratch);
/* The same on a packed matrix of group stride ld (>= ceil(in/2)) whose
 * words of the pairs from ceil(in/2) on hold finite values; Y has row
 * stride ldy (>= out). */
MSADB_HIDDEN void msadb_mm_bf16_ld(msadb_mm_pool *pool, const float *X, size_t n,
                                   const uint32_t *packed, size_t ld, uint32_t out, uint32_t in,
                                   float *Y, size_t ldy, uint32_t *scratch);

/* Row x[0..in-1] as the bf16 pairs a product reads (ceil(in/2) words into
 * xb, the last one's high half zero when in is odd): the rounding
 * msadb_mm_bf16_ld() applies, for callers that produce inputs row by row
 * (attention's probabilities).  Requires msadb_mm_bf16_available(). */
MSADB_HIDDEN void msadb_mm_bf16_row(const float *x, uint32_t in, uint32_t *xb);
/* msadb_mm_bf16_ld() on inputs already converted: xb holds n rows of
 * ceil(in/2) words (msadb_mm_bf16_row); the same results. */
MSADB_HIDDEN void msadb_mm_bf16_pairs(msadb_mm_pool *pool, const uint32_t *xb, size_t n,
                                      const uint32_t *packed, size_t ld, uint32_t out,
                                      uint32_t in, float *Y, size_t ldy);

#endif
