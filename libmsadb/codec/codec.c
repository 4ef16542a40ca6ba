/* codec.c -- the block codec: quantization, byte-shuffle, zstd, CRC-32C and
 * sealing of one block of one plane.  The byte layout is specified in
 * docs/format.md ("Encoded blocks"); the comments here explain the choices.
 *
 * Pipeline (encode):  f32 K/V -> storage elements (little-endian arrays)
 *   -> byte-shuffle multi-byte arrays -> zstd if smaller -> header + CRC.
 * Decode runs it backwards and validates every step before writing a single
 * float to the caller, so a failing block never yields partial data.
 *
 * Determinism: a block must decode to the same bits on every build, because
 * summaries computed from the encoder's K_deq/V_deq are compared with
 * decoded blocks (by msadb_verify, possibly in another build).  So:
 * - dequantization is defined as fmaf(q, scale, min): one correctly rounded
 *   f32 operation.  A plain `min + q * scale` would be contracted into an
 *   FMA by some compilers and modes (clang by default, gcc in GNU modes) and
 *   not by others, giving different bits for the same stored block;
 * - f16/bf16 conversions round to nearest even, in hardware (F16C) or in
 *   software (util.c), which give identical results. */
#include "codec/codec.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "core/crypto.h"
#include "msadb.h"

/* The decoder's validation relies on IEEE semantics (isfinite, comparisons
 * with NaN), which -ffast-math / -ffinite-math-only compile away. */
#if defined(__FAST_MATH__) || defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__
#error "codec.c must not be compiled with -ffast-math or -ffinite-math-only"
#endif

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define CODEC_F16C 1
#endif

/* Flag bits beyond codec.h's: quantization parameters of the keys (bit 3)
 * or of the values (bit 4) are stored as f32 instead of f16.  Only int8 and
 * q4 blocks may set them. */
#define F_KPAR32 8u
#define F_VPAR32 16u
#define F_KNOWN (MSADB_BLOCK_F_SHUFFLE | MSADB_BLOCK_F_ZSTD | MSADB_BLOCK_F_ENCRYPTED | F_KPAR32 | F_VPAR32)

/* Hot loops run over chunks of VL elements with a constant-trip inner loop,
 * then a scalar tail: gcc -O2's "very cheap" vectorizer cost model only
 * vectorizes loops that need no scalar epilogue, and the constant trip count
 * gives it exactly that (at -O3 the plain loop would do as well). */
#define VL 32

/* A grid whose f16 parameters inflate the step by more than this fraction
 * over the ideal (max - min) / levels is stored with f32 parameters. */
#define F16_GRID_SLACK (1.0 / 64.0)

struct msadb_codec {
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    uint8_t *raw;   /* raw payload: built by encode, decompressed by decode */
    uint8_t *work;  /* element arrays before shuffle / after unshuffle, q4 codes */
    uint8_t *plain; /* decrypted payload */
    uint8_t *par;   /* quantization statistics and parameters */
    uint8_t *ad;    /* AEAD additional data: header bytes + caller's bytes */
    size_t raw_cap, work_cap, plain_cap, par_cap, ad_cap;
};

/* Grows a scratch buffer to at least `need` bytes.  Buffers only grow, so
 * a codec reused for blocks of one shape stops allocating after the first. */
static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    return msadb_grow_scratch(buf, cap, need, 1, 4096);
}

msadb_codec *msadb_codec_new(int zstd_level)
{
    if (zstd_level < 1)
        zstd_level = 1;
    if (zstd_level > 19)
        zstd_level = 19;
    msadb_codec *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->cctx = ZSTD_createCCtx();
    c->dctx = ZSTD_createDCtx();
    if (!c->cctx || !c->dctx ||
        ZSTD_isError(ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel, zstd_level)) ||
        /* the block has its own CRC; the frame needs no checksum or dict id */
        ZSTD_isError(ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_checksumFlag, 0)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_dictIDFlag, 0))) {
        msadb_codec_free(c);
        return NULL;
    }
    return c;
}

void msadb_codec_free(msadb_codec *c)
{
    if (!c)
        return;
    ZSTD_freeCCtx(c->cctx);
    ZSTD_freeDCtx(c->dctx);
    msadb_afree(c->raw);
    msadb_afree(c->work);
    msadb_afree(c->plain);
    msadb_afree(c->par);
    msadb_afree(c->ad);
    free(c);
}

/* ------------------------------------------------------------------------ */
/* Sizes                                                                    */
/* ------------------------------------------------------------------------ */

static int dtype_quantized(int dtype) { return dtype == MSADB_DTYPE_INT8 || dtype == MSADB_DTYPE_Q4; }

/* Highest code of a quantized dtype: codes are 0..levels. */
static float dtype_levels(int dtype) { return dtype == MSADB_DTYPE_Q4 ? 15.0f : 255.0f; }

/* Bytes of the codes of one plane (K or V) of n*d elements. */
static size_t codes_bytes(int dtype, size_t nd) { return dtype == MSADB_DTYPE_Q4 ? (nd + 1) / 2 : nd; }

/* Bytes of the raw payload of a block; 0 for an unknown dtype. */
static size_t raw_size(int dtype, uint32_t n, uint32_t d, unsigned flags)
{
    size_t nd = (size_t)n * d;
    switch (dtype) {
    case MSADB_DTYPE_F32:
        return 8 * nd;
    case MSADB_DTYPE_F16:
    case MSADB_DTYPE_BF16:
        return 4 * nd;
    case MSADB_DTYPE_INT8:
    case MSADB_DTYPE_Q4: {
        size_t pk = (flags & F_KPAR32) ? 4 : 2, pv = (flags & F_VPAR32) ? 4 : 2;
        return 2 * (size_t)d * pk + 2 * (size_t)n * pv + 2 * codes_bytes(dtype, nd);
    }
    default:
        return 0;
    }
}

static int shape_ok(int dtype, uint32_t n, uint32_t d)
{
    return dtype >= MSADB_DTYPE_F32 && dtype <= MSADB_DTYPE_Q4 && n >= 1 && n <= MSADB_MAX_BLOCK &&
           d >= 1 && d <= MSADB_MAX_HEAD_DIM;
}

size_t msadb_block_bound(int dtype, uint32_t n_tok, uint32_t d)
{
    if (!shape_ok(dtype, n_tok, d))
        return 0;
    /* zstd output is kept only when smaller than the raw payload */
    return MSADB_BLOCK_HEADER + raw_size(dtype, n_tok, d, F_KPAR32 | F_VPAR32) + MSADB_SEAL_OVERHEAD;
}

/* ------------------------------------------------------------------------ */
/* Header and CRC                                                           */
/* ------------------------------------------------------------------------ */

static uint32_t block_crc(const uint8_t *blk, size_t len)
{
    uint32_t crc = msadb_crc32c(0, blk, 20);
    return msadb_crc32c(crc, blk + MSADB_BLOCK_HEADER, len - MSADB_BLOCK_HEADER);
}

static void put_header(uint8_t *p, const msadb_block_header *h)
{
    memcpy(p, MSADB_BLOCK_MAGIC, 4);
    p[4] = h->version;
    p[5] = h->dtype;
    p[6] = h->flags;
    p[7] = 0;
    msadb_put_le16(p + 8, (uint16_t)h->n_tok);
    msadb_put_le16(p + 10, (uint16_t)h->head_dim);
    msadb_put_le32(p + 12, h->raw_len);
    msadb_put_le32(p + 16, h->payload_len);
    msadb_put_le32(p + 20, h->crc);
}

/* Parses and checks everything that the header alone can tell, plus the
 * CRC.  Magic and version come first: a newer version may lay out (and
 * checksum) the rest differently, so nothing after the version byte means
 * anything until the version is known. */
static int parse_header(const uint8_t *in, size_t len, msadb_block_header *h)
{
    if (len < MSADB_BLOCK_HEADER || memcmp(in, MSADB_BLOCK_MAGIC, 4) != 0)
        return MSADB_ECORRUPT;
    if (in[4] > 1)
        return MSADB_EVERSION;
    if (in[4] != 1)
        return MSADB_ECORRUPT;
    h->version = in[4];
    h->dtype = in[5];
    h->flags = in[6];
    h->n_tok = msadb_get_le16(in + 8);
    h->head_dim = msadb_get_le16(in + 10);
    h->raw_len = msadb_get_le32(in + 12);
    h->payload_len = msadb_get_le32(in + 16);
    h->crc = msadb_get_le32(in + 20);
    if (h->crc != block_crc(in, len))
        return MSADB_ECORRUPT;

    if (in[7] != 0 || !shape_ok(h->dtype, h->n_tok, h->head_dim) || (h->flags & ~F_KNOWN) ||
        (!dtype_quantized(h->dtype) && (h->flags & (F_KPAR32 | F_VPAR32))) ||
        h->payload_len != len - MSADB_BLOCK_HEADER ||
        h->raw_len != raw_size(h->dtype, h->n_tok, h->head_dim, h->flags))
        return MSADB_ECORRUPT;
    /* Stored size: exactly raw_len, or a zstd frame strictly smaller (the
     * encoder keeps zstd output only when it saves bytes). */
    size_t stored = h->payload_len;
    if (h->flags & MSADB_BLOCK_F_ENCRYPTED) {
        if (stored < MSADB_SEAL_OVERHEAD)
            return MSADB_ECORRUPT;
        stored -= MSADB_SEAL_OVERHEAD;
    }
    if ((h->flags & MSADB_BLOCK_F_ZSTD) ? (stored == 0 || stored >= h->raw_len) : stored != h->raw_len)
        return MSADB_ECORRUPT;
    return 0;
}

int msadb_block_peek(const uint8_t *in, size_t len, msadb_block_header *h)
{
    if (!in || !h)
        return MSADB_EINVAL;
    return parse_header(in, len, h);
}

/* ------------------------------------------------------------------------ */
/* Byte shuffle                                                             */
/* ------------------------------------------------------------------------ */

/* Writes n elements of w bytes (w = 2 or 4) from src into the byte planes of
 * dst: byte b of element i goes to dst[b * stride + i].  Grouping bytes by
 * significance puts the slowly varying sign/exponent bytes together, which
 * zstd compresses far better than the interleaved form. */
static void shuffle2(uint8_t *restrict d0, uint8_t *restrict d1, const uint8_t *restrict src, size_t n)
{
    size_t i = 0;
    for (; i + VL <= n; i += VL)
        for (size_t j = 0; j < VL; j++) {
            d0[i + j] = src[2 * (i + j)];
            d1[i + j] = src[2 * (i + j) + 1];
        }
    for (; i < n; i++) {
        d0[i] = src[2 * i];
        d1[i] = src[2 * i + 1];
    }
}

static void shuffle4(uint8_t *restrict d0, uint8_t *restrict d1, uint8_t *restrict d2,
                     uint8_t *restrict d3, const uint8_t *restrict src, size_t n)
{
    size_t i = 0;
    for (; i + VL <= n; i += VL)
        for (size_t j = 0; j < VL; j++) {
            d0[i + j] = src[4 * (i + j)];
            d1[i + j] = src[4 * (i + j) + 1];
            d2[i + j] = src[4 * (i + j) + 2];
            d3[i + j] = src[4 * (i + j) + 3];
        }
    for (; i < n; i++) {
        d0[i] = src[4 * i];
        d1[i] = src[4 * i + 1];
        d2[i] = src[4 * i + 2];
        d3[i] = src[4 * i + 3];
    }
}

static void shuffle(uint8_t *dst, size_t stride, const uint8_t *src, size_t n, size_t w)
{
    if (w == 2)
        shuffle2(dst, dst + stride, src, n);
    else
        shuffle4(dst, dst + stride, dst + 2 * stride, dst + 3 * stride, src, n);
}

static void unshuffle2(uint8_t *restrict dst, const uint8_t *restrict s0, const uint8_t *restrict s1,
                       size_t n)
{
    size_t i = 0;
    for (; i + VL <= n; i += VL)
        for (size_t j = 0; j < VL; j++) {
            dst[2 * (i + j)] = s0[i + j];
            dst[2 * (i + j) + 1] = s1[i + j];
        }
    for (; i < n; i++) {
        dst[2 * i] = s0[i];
        dst[2 * i + 1] = s1[i];
    }
}

static void unshuffle4(uint8_t *restrict dst, const uint8_t *restrict s0, const uint8_t *restrict s1,
                       const uint8_t *restrict s2, const uint8_t *restrict s3, size_t n)
{
    size_t i = 0;
    for (; i + VL <= n; i += VL)
        for (size_t j = 0; j < VL; j++) {
            dst[4 * (i + j)] = s0[i + j];
            dst[4 * (i + j) + 1] = s1[i + j];
            dst[4 * (i + j) + 2] = s2[i + j];
            dst[4 * (i + j) + 3] = s3[i + j];
        }
    for (; i < n; i++) {
        dst[4 * i] = s0[i];
        dst[4 * i + 1] = s1[i];
        dst[4 * i + 2] = s2[i];
        dst[4 * i + 3] = s3[i];
    }
}

/* Inverse of shuffle() with stride n. */
static void unshuffle(uint8_t *dst, const uint8_t *src, size_t n, size_t w)
{
    if (w == 2)
        unshuffle2(dst, src, src + n, n);
    else
        unshuffle4(dst, src, src + n, src + 2 * n, src + 3 * n, n);
}

/* ------------------------------------------------------------------------ */
/* f16 / bf16 element conversion                                            */
/* ------------------------------------------------------------------------ */

static inline void f16_saturate(uint8_t *h16, size_t i)
{
    uint16_t h = msadb_get_le16(h16 + 2 * i);
    h = (h & 0x7fffu) == 0x7c00u ? (uint16_t)((h & 0x8000u) | 0x7bffu) : h;
    msadb_put_le16(h16 + 2 * i, h);
}

/* f32 -> f16 (round to nearest even) of finite values, saturating: a value
 * beyond the f16 range is stored as +-65504 rather than as an infinity,
 * which would poison every attention score it touches.  Output is
 * little-endian u16. */
static void f32_to_f16_n(const float *restrict x, uint8_t *restrict out, size_t n)
{
    size_t i = 0;
#ifdef CODEC_F16C
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(void *)(out + 2 * i), h);
    }
#endif
    for (; i < n; i++)
        msadb_put_le16(out + 2 * i, msadb_f32_to_f16(x[i]));
    for (i = 0; i + VL <= n; i += VL)
        for (size_t j = 0; j < VL; j++)
            f16_saturate(out, i + j);
    for (; i < n; i++)
        f16_saturate(out, i);
}

/* f16 (little-endian u16, finite) -> f32; exact. */
static void f16_to_f32_n(const uint8_t *restrict in, float *restrict x, size_t n)
{
    size_t i = 0;
#ifdef CODEC_F16C
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(in + 2 * i));
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
    }
#endif
    for (; i < n; i++)
        x[i] = msadb_f16_to_f32(msadb_get_le16(in + 2 * i));
}

/* f32 -> bf16, round to nearest even (msadb_f32_to_bf16 for finite input,
 * written branch-free so it vectorizes), saturating like f32_to_f16_n. */
static inline void bf16_one(const float *restrict x, uint8_t *restrict out, size_t i)
{
    uint32_t u;
    memcpy(&u, x + i, 4);
    uint32_t h = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    h = (h & 0x7fffu) == 0x7f80u ? (h & 0x8000u) | 0x7f7fu : h;
    msadb_put_le16(out + 2 * i, (uint16_t)h);
}

static void f32_to_bf16_n(const float *restrict x, uint8_t *restrict out, size_t n)
{
    size_t i = 0;
    for (; i + VL <= n; i += VL)
        for (size_t j = 0; j < VL; j++)
            bf16_one(x, out, i + j);
    for (; i < n; i++)
        bf16_one(x, out, i);
}

static inline void bf16_back(const uint8_t *restrict in, float *restrict x, size_t i)
{
    uint32_t u = (uint32_t)msadb_get_le16(in + 2 * i) << 16;
    memcpy(x + i, &u, 4);
}

static void bf16_to_f32_n(const uint8_t *restrict in, float *restrict x, size_t n)
{
    size_t i = 0;
    for (; i + VL <= n; i += VL)
        for (size_t j = 0; j < VL; j++)
            bf16_back(in, x, i + j);
    for (; i < n; i++)
        bf16_back(in, x, i);
}

/* ------------------------------------------------------------------------ */
/* Quantization (int8, q4)                                                  */
/* ------------------------------------------------------------------------ */
/*
 * Asymmetric: element = fmaf(q, scale, min) with q in 0..levels.  Keys are
 * quantized per channel over the block's tokens (outlier channels get their
 * own range instead of crushing the others), values per token (KIVI).
 * Parameters are stored as f16 when that loses nothing worth keeping, else as
 * f32; either way the codes are computed from the stored (rounded)
 * parameters, so the only error is the code rounding, at most scale/2.
 */

/* Element-wise range over the rows: lo[c], hi[c] = min, max of x[.][c]. */
static inline void range_one(const float *restrict r, float *restrict lo, float *restrict hi, size_t c)
{
    lo[c] = r[c] < lo[c] ? r[c] : lo[c];
    hi[c] = r[c] > hi[c] ? r[c] : hi[c];
}

static void range_channels(const float *restrict x, uint32_t n, uint32_t d, float *restrict lo,
                           float *restrict hi)
{
    size_t c = 0;
    /* VL channels at a time down all rows, in local lanes */
    for (; c + VL <= d; c += VL) {
        float l[VL], h[VL];
        memcpy(l, x + c, sizeof l);
        memcpy(h, x + c, sizeof h);
        for (uint32_t t = 1; t < n; t++)
            for (size_t j = 0; j < VL; j++)
                range_one(x + (size_t)t * d + c, l, h, j);
        memcpy(lo + c, l, sizeof l);
        memcpy(hi + c, h, sizeof h);
    }
    for (; c < d; c++) {
        lo[c] = hi[c] = x[c];
        for (uint32_t t = 1; t < n; t++)
            range_one(x + (size_t)t * d, lo, hi, c);
    }
}

/* Range of each row: lo[t], hi[t] = min, max of x[t][.].  VL running lanes
 * keep the inner loop element-wise, which vectorizes without -ffast-math (a
 * float min reduction would not). */
static void range_tokens(const float *restrict x, uint32_t n, uint32_t d, float *restrict lo,
                         float *restrict hi)
{
    for (uint32_t t = 0; t < n; t++) {
        const float *r = x + (size_t)t * d;
        float mn = r[0], mx = r[0];
        size_t c = 0;
        if (d >= VL) {
            float l[VL], h[VL];
            memcpy(l, r, sizeof l);
            memcpy(h, r, sizeof h);
            for (c = VL; c + VL <= d; c += VL)
                for (size_t j = 0; j < VL; j++)
                    range_one(r + c, l, h, j);
            for (size_t j = 0; j < VL; j++) {
                mn = l[j] < mn ? l[j] : mn;
                mx = h[j] > mx ? h[j] : mx;
            }
        }
        for (; c < d; c++) {
            mn = r[c] < mn ? r[c] : mn;
            mx = r[c] > mx ? r[c] : mx;
        }
        lo[t] = mn;
        hi[t] = mx;
    }
}

/* Nearest code of v = (x - min) / scale, clamped to [0, levels].  The first
 * comparison also maps NaN (0 * inf) to 0. */
static inline uint8_t quant_one(float v, float levels)
{
    v = v > 0.0f ? v : 0.0f;
    v = v < levels ? v : levels;
    return (uint8_t)(int)(v + 0.5f);
}

/* A positive scale of a parameter format from its bits (half or float
 * bits: for positive values the bits sort like the values). */
static float scale_at(uint32_t bits, int f16)
{
    if (f16)
        return msadb_f16_to_f32((uint16_t)bits);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static int covers(uint32_t bits, int f16, float m, float hi, float levels)
{
    return fmaf(levels, scale_at(bits, f16), m) >= hi;
}

/* The smallest scale of the format (as bits) whose top code reaches hi:
 * fmaf(levels, s, m) >= hi, for m < hi.  Minimal is what makes re-encoding
 * decoded data idempotent: a decoded group spans exactly
 * [m, fmaf(levels, s, m)], and for that range s is again the minimum (a
 * smaller scale missed hi, so it misses the higher top too).  Gallops from
 * `guess` (normally within an ulp), then bisects.  Returns 0 if no finite
 * scale reaches hi. */
static int min_scale(float m, float hi, float levels, int f16, uint32_t guess, uint32_t *out)
{
    const uint32_t top = f16 ? 0x7bffu : 0x7f7fffffu;
    uint32_t ok = guess < top ? guess : top, miss, step = 1;
    while (!covers(ok, f16, m, hi, levels)) {
        if (ok == top)
            return 0;
        ok = top - ok > step ? ok + step : top;
        step *= 2;
    }
    for (step = 1;; step *= 2) { /* scale 0 never covers: m < hi */
        miss = ok > step ? ok - step : 0;
        if (miss == 0 || !covers(miss, f16, m, hi, levels))
            break;
        ok = miss;
    }
    while (ok - miss > 1) {
        uint32_t mid = miss + (ok - miss) / 2;
        if (covers(mid, f16, m, hi, levels))
            ok = mid;
        else
            miss = mid;
    }
    *out = ok;
    return 1;
}

/* f16 grid for [lo, hi]: min = lo rounded down, the minimal covering scale.
 * Returns 0 if f16 does not represent the range well: out of range, a
 * constant that is not exactly an f16, a step inflated by the rounding of
 * min (narrow ranges far from 0, scales in the f16 subnormals), or extremes
 * that would not get the end codes 0 and levels (re-encoding needs them). */
static int grid_f16(float lo, float hi, float levels, uint16_t *hm, uint16_t *hs)
{
    uint16_t bm = msadb_f32_to_f16_down(lo);
    float m = msadb_f16_to_f32(bm);
    if (!isfinite(m))
        return 0;
    if (hi == lo) { /* constant: exact only if lo is an f16 */
        if (m != lo)
            return 0;
        *hm = bm;
        *hs = signbit(lo) ? 0x8000u : 0; /* -0 scale keeps -0.0 exact */
        return 1;
    }
    uint32_t bs;
    uint16_t guess = msadb_f32_to_f16_up((float)(((double)hi - m) / levels));
    if (!min_scale(m, hi, levels, 1, guess, &bs))
        return 0;
    float s = msadb_f16_to_f32((uint16_t)bs), inv = 1.0f / s;
    if (s > ((double)hi - lo) / levels * (1.0 + F16_GRID_SLACK) || quant_one((lo - m) * inv, levels) != 0 ||
        quant_one((hi - m) * inv, levels) != levels)
        return 0;
    *hm = bm;
    *hs = (uint16_t)bs;
    return 1;
}

/* f32 grid for [lo, hi]: min = lo exactly, the minimal covering scale.  A
 * range wider than FLT_MAX may have no covering scale with a finite top;
 * it then gets the largest scale with one (hi clamps to the top code). */
static void grid_f32(float lo, float hi, float levels, float *m, float *s)
{
    *m = lo;
    if (hi == lo) {
        *s = copysignf(0.0f, lo);
        return;
    }
    float guess = (float)(((double)hi - lo) / levels);
    uint32_t bg, bs;
    memcpy(&bg, &guess, 4);
    min_scale(lo, hi, levels, 0, bg, &bs); /* FLT_MAX always covers */
    if (!isfinite(fmaf(levels, scale_at(bs, 0), lo)))
        bs--; /* the one below misses hi, so its top is finite */
    *s = scale_at(bs, 0);
}

/* Chooses the grids of k ranges: f16 for all of them if every one fits,
 * else f32 for all.  Fills m, s, inv (1/s, or 0 for a constant) and the
 * little-endian parameter array bits = min[k] then scale[k].  Returns the
 * parameter width in bytes (2 or 4). */
static size_t choose_grids(const float *lo, const float *hi, size_t k, float levels, float *m,
                           float *s, float *inv, uint8_t *bits)
{
    size_t w = 2;
    for (size_t i = 0; i < k; i++) {
        uint16_t hm, hs;
        if (!grid_f16(lo[i], hi[i], levels, &hm, &hs)) {
            w = 4;
            break;
        }
        msadb_put_le16(bits + 2 * i, hm);
        msadb_put_le16(bits + 2 * (k + i), hs);
        m[i] = msadb_f16_to_f32(hm);
        s[i] = msadb_f16_to_f32(hs);
    }
    if (w == 4) {
        for (size_t i = 0; i < k; i++) {
            grid_f32(lo[i], hi[i], levels, &m[i], &s[i]);
            uint32_t um, us;
            memcpy(&um, &m[i], 4);
            memcpy(&us, &s[i], 4);
            msadb_put_le32(bits + 4 * i, um);
            msadb_put_le32(bits + 4 * (k + i), us);
        }
    }
    /* A division per parameter, none per element.  A scale in the f32
     * subnormals may give inv = inf; the clamps in the quantizers turn the
     * resulting inf/nan into valid codes. */
    for (size_t i = 0; i < k; i++)
        inv[i] = s[i] > 0.0f ? 1.0f / s[i] : 0.0f;
    return w;
}

/* x - min overflows when a range is wider than FLT_MAX (values of both
 * signs near the limits).  A plane holding such a range is quantized on a
 * half scale, (x/2 - min/2) * (2/scale): power-of-two scalings, exact but
 * for f32 subnormals (off by 2^-150 at most), and every other plane computes
 * exactly what it would without them (x * 1.0f is x).  Writes the scaled
 * minimums to mq, scales inv, returns the factor applied to x. */
static float quant_prescale(const float *hi, const float *m, size_t k, float *mq, float *inv)
{
    float pre = 1.0f;
    for (size_t i = 0; i < k; i++)
        if (!(hi[i] - m[i] <= FLT_MAX))
            pre = 0.5f;
    for (size_t i = 0; i < k; i++) {
        mq[i] = m[i] * pre;
        inv[i] = inv[i] / pre;
    }
    return pre;
}

/* Codes of one row: per-element (channel) or row-wide (token) grids. */
static void quant_row_ch(const float *restrict r, float pre, const float *restrict mq,
                         const float *restrict inv, float levels, uint8_t *restrict o, uint32_t d)
{
    size_t c = 0;
    for (; c + VL <= d; c += VL)
        for (size_t j = 0; j < VL; j++)
            o[c + j] = quant_one((r[c + j] * pre - mq[c + j]) * inv[c + j], levels);
    for (; c < d; c++)
        o[c] = quant_one((r[c] * pre - mq[c]) * inv[c], levels);
}

static void quant_row_tok(const float *restrict r, float pre, float mq, float inv, float levels,
                          uint8_t *restrict o, uint32_t d)
{
    size_t c = 0;
    for (; c + VL <= d; c += VL)
        for (size_t j = 0; j < VL; j++)
            o[c + j] = quant_one((r[c + j] * pre - mq) * inv, levels);
    for (; c < d; c++)
        o[c] = quant_one((r[c] * pre - mq) * inv, levels);
}

static void quant_channels(const float *x, uint32_t n, uint32_t d, float pre, const float *mq,
                           const float *inv, float levels, uint8_t *q)
{
    for (uint32_t t = 0; t < n; t++)
        quant_row_ch(x + (size_t)t * d, pre, mq, inv, levels, q + (size_t)t * d, d);
}

static void quant_tokens(const float *x, uint32_t n, uint32_t d, float pre, const float *mq,
                         const float *inv, float levels, uint8_t *q)
{
    for (uint32_t t = 0; t < n; t++)
        quant_row_tok(x + (size_t)t * d, pre, mq[t], inv[t], levels, q + (size_t)t * d, d);
}

/* The dequantization formula of the format (see the top of this file). */
static void dequant_row_ch(const uint8_t *restrict q, const float *restrict m, const float *restrict s,
                           float *restrict o, uint32_t d)
{
    size_t c = 0;
    for (; c + VL <= d; c += VL)
        for (size_t j = 0; j < VL; j++)
            o[c + j] = fmaf((float)q[c + j], s[c + j], m[c + j]);
    for (; c < d; c++)
        o[c] = fmaf((float)q[c], s[c], m[c]);
}

static void dequant_row_tok(const uint8_t *restrict q, float m, float s, float *restrict o, uint32_t d)
{
    size_t c = 0;
    for (; c + VL <= d; c += VL)
        for (size_t j = 0; j < VL; j++)
            o[c + j] = fmaf((float)q[c + j], s, m);
    for (; c < d; c++)
        o[c] = fmaf((float)q[c], s, m);
}

static void dequant_channels(const uint8_t *q, uint32_t n, uint32_t d, const float *m, const float *s,
                             float *x)
{
    for (uint32_t t = 0; t < n; t++)
        dequant_row_ch(q + (size_t)t * d, m, s, x + (size_t)t * d, d);
}

static void dequant_tokens(const uint8_t *q, uint32_t n, uint32_t d, const float *m, const float *s,
                           float *x)
{
    for (uint32_t t = 0; t < n; t++)
        dequant_row_tok(q + (size_t)t * d, m[t], s[t], x + (size_t)t * d, d);
}

/* q4: element i in the low nibble of byte i/2 when i is even, in the high
 * nibble when odd; an odd count leaves the last high nibble 0. */
static void pack4(const uint8_t *restrict q, size_t nd, uint8_t *restrict out)
{
    size_t half = nd / 2, i = 0;
    for (; i + VL <= half; i += VL)
        for (size_t j = 0; j < VL; j++)
            out[i + j] = (uint8_t)(q[2 * (i + j)] | (q[2 * (i + j) + 1] << 4));
    for (; i < half; i++)
        out[i] = (uint8_t)(q[2 * i] | (q[2 * i + 1] << 4));
    if (nd & 1)
        out[half] = q[nd - 1];
}

static void unpack4(const uint8_t *restrict in, size_t nd, uint8_t *restrict q)
{
    size_t half = nd / 2, i = 0;
    for (; i + VL <= half; i += VL)
        for (size_t j = 0; j < VL; j++) {
            q[2 * (i + j)] = in[i + j] & 15u;
            q[2 * (i + j) + 1] = in[i + j] >> 4;
        }
    for (; i < half; i++) {
        q[2 * i] = in[i] & 15u;
        q[2 * i + 1] = in[i] >> 4;
    }
    if (nd & 1)
        q[nd - 1] = in[half] & 15u;
}

/* Whether any of n little-endian elements of w bytes (4: f32, 2: f16 or
 * bf16 with the given exponent mask) is an infinity or a NaN. */
static inline uint32_t nonfinite_one(const uint8_t *e, size_t i, size_t w, uint32_t mask)
{
    uint32_t u = w == 4 ? msadb_get_le32(e + 4 * i) : msadb_get_le16(e + 2 * i);
    return (u & mask) == mask;
}

static int any_nonfinite(const void *elems, size_t n, size_t w, uint32_t mask)
{
    const uint8_t *e = elems;
    uint32_t bad = 0;
    size_t i = 0;
    for (; i + VL <= n; i += VL)
        for (size_t j = 0; j < VL; j++)
            bad |= nonfinite_one(e, i + j, w, mask);
    for (; i < n; i++)
        bad |= nonfinite_one(e, i, w, mask);
    return bad != 0;
}

#define F32_EXP 0x7f800000u
#define F16_EXP 0x7c00u
#define BF16_EXP 0x7f80u

/* ------------------------------------------------------------------------ */
/* Encode                                                                   */
/* ------------------------------------------------------------------------ */

/* Scratch for the quantization parameters of a block: per key channel and
 * per value token, lo/hi/min/scale/inv floats and the stored bytes. */
typedef struct grids {
    float *lo, *hi, *m, *s, *inv;
    uint8_t *bits;
} grids;

static int carve_grids(msadb_codec *c, uint32_t n, uint32_t d, grids *gk, grids *gv)
{
    size_t k = (size_t)n + d;
    int rc = grow(&c->par, &c->par_cap, k * (5 * sizeof(float) + 8));
    if (rc)
        return rc;
    float *f = (float *)(void *)c->par;
    grids *g[2] = {gk, gv};
    size_t len[2] = {d, n};
    for (int i = 0; i < 2; i++) {
        g[i]->lo = f;
        g[i]->hi = f + len[i];
        g[i]->m = f + 2 * len[i];
        g[i]->s = f + 3 * len[i];
        g[i]->inv = f + 4 * len[i];
        f += 5 * len[i];
    }
    gk->bits = (uint8_t *)f;
    gv->bits = gk->bits + 8 * (size_t)d;
    return 0;
}

/* Builds the raw payload of an int8/q4 block in c->raw; sets *flags' KPAR32
 * and VPAR32 bits and *raw_len. */
static int encode_quant(msadb_codec *c, int dtype, const float *K, const float *V, uint32_t n,
                        uint32_t d, unsigned *flags, size_t *raw_len, float *K_deq, float *V_deq)
{
    grids gk, gv;
    int rc = carve_grids(c, n, d, &gk, &gv);
    if (rc)
        return rc;
    float levels = dtype_levels(dtype);
    range_channels(K, n, d, gk.lo, gk.hi);
    range_tokens(V, n, d, gv.lo, gv.hi);
    size_t wk = choose_grids(gk.lo, gk.hi, d, levels, gk.m, gk.s, gk.inv, gk.bits);
    size_t wv = choose_grids(gv.lo, gv.hi, n, levels, gv.m, gv.s, gv.inv, gv.bits);
    *flags |= (wk == 4 ? F_KPAR32 : 0) | (wv == 4 ? F_VPAR32 : 0);
    /* the ranges' lo[] are done with: they take the scaled minimums */
    float kpre = quant_prescale(gk.hi, gk.m, d, gk.lo, gk.inv);
    float vpre = quant_prescale(gv.hi, gv.m, n, gv.lo, gv.inv);

    size_t nd = (size_t)n * d, cb = codes_bytes(dtype, nd);
    *raw_len = raw_size(dtype, n, d, *flags);
    if ((rc = grow(&c->raw, &c->raw_cap, *raw_len)))
        return rc;
    uint8_t *kpar = c->raw, *vpar = kpar + 2 * (size_t)d * wk;
    uint8_t *kq = vpar + 2 * (size_t)n * wv, *vq = kq + cb;
    shuffle(kpar, 2 * (size_t)d, gk.bits, 2 * (size_t)d, wk);
    shuffle(vpar, 2 * (size_t)n, gv.bits, 2 * (size_t)n, wv);

    if (dtype == MSADB_DTYPE_INT8) {
        quant_channels(K, n, d, kpre, gk.lo, gk.inv, levels, kq);
        quant_tokens(V, n, d, vpre, gv.lo, gv.inv, levels, vq);
        if (K_deq)
            dequant_channels(kq, n, d, gk.m, gk.s, K_deq);
        if (V_deq)
            dequant_tokens(vq, n, d, gv.m, gv.s, V_deq);
        return 0;
    }
    /* q4: codes one per byte in work, then packed */
    if ((rc = grow(&c->work, &c->work_cap, nd)))
        return rc;
    quant_channels(K, n, d, kpre, gk.lo, gk.inv, levels, c->work);
    if (K_deq)
        dequant_channels(c->work, n, d, gk.m, gk.s, K_deq);
    pack4(c->work, nd, kq);
    quant_tokens(V, n, d, vpre, gv.lo, gv.inv, levels, c->work);
    if (V_deq)
        dequant_tokens(c->work, n, d, gv.m, gv.s, V_deq);
    pack4(c->work, nd, vq);
    return 0;
}

/* Builds the raw payload of an f32/f16/bf16 block in c->raw: K's elements
 * then V's, as one byte-shuffled array of 2*n*d elements. */
static int encode_float(msadb_codec *c, int dtype, const float *K, const float *V, size_t nd,
                        size_t *raw_len, float *K_deq, float *V_deq)
{
    size_t w = dtype == MSADB_DTYPE_F32 ? 4 : 2;
    int rc;
    *raw_len = 2 * nd * w;
    if ((rc = grow(&c->raw, &c->raw_cap, *raw_len)))
        return rc;
    if (dtype == MSADB_DTYPE_F32) {
        shuffle(c->raw, 2 * nd, (const uint8_t *)K, nd, 4);
        shuffle(c->raw + nd, 2 * nd, (const uint8_t *)V, nd, 4);
        if (K_deq)
            memcpy(K_deq, K, nd * sizeof(float));
        if (V_deq)
            memcpy(V_deq, V, nd * sizeof(float));
        return 0;
    }
    if ((rc = grow(&c->work, &c->work_cap, *raw_len)))
        return rc;
    uint8_t *hk = c->work, *hv = c->work + 2 * nd;
    if (dtype == MSADB_DTYPE_F16) {
        f32_to_f16_n(K, hk, nd);
        f32_to_f16_n(V, hv, nd);
        if (K_deq)
            f16_to_f32_n(hk, K_deq, nd);
        if (V_deq)
            f16_to_f32_n(hv, V_deq, nd);
    } else {
        f32_to_bf16_n(K, hk, nd);
        f32_to_bf16_n(V, hv, nd);
        if (K_deq)
            bf16_to_f32_n(hk, K_deq, nd);
        if (V_deq)
            bf16_to_f32_n(hv, V_deq, nd);
    }
    shuffle(c->raw, 2 * nd, c->work, 2 * nd, 2);
    return 0;
}

int msadb_block_encode(msadb_codec *c, int dtype, const float *K, const float *V, uint32_t n_tok,
                       uint32_t d, uint8_t *out, size_t cap, size_t *out_len, float *K_deq,
                       float *V_deq)
{
    if (!c || !K || !V || !out || !out_len || !shape_ok(dtype, n_tok, d))
        return MSADB_EINVAL;
    *out_len = 0;
    size_t nd = (size_t)n_tok * d;
    if (any_nonfinite(K, nd, 4, F32_EXP) || any_nonfinite(V, nd, 4, F32_EXP))
        return MSADB_ENONFINITE;
    if (cap < MSADB_BLOCK_HEADER + 1)
        return MSADB_ELIMIT;

    unsigned flags = MSADB_BLOCK_F_SHUFFLE;
    size_t raw_len = 0;
    int rc = dtype_quantized(dtype)
                 ? encode_quant(c, dtype, K, V, n_tok, d, &flags, &raw_len, K_deq, V_deq)
                 : encode_float(c, dtype, K, V, nd, &raw_len, K_deq, V_deq);
    if (rc)
        return rc;

    /* zstd straight into out, with room for strictly less than raw_len:
     * output that would not save a byte fails and the raw bytes go in. */
    size_t room = cap - MSADB_BLOCK_HEADER, stored = 0;
    size_t zcap = room < raw_len - 1 ? room : raw_len - 1;
    if (zcap > 0) {
        size_t z = ZSTD_compress2(c->cctx, out + MSADB_BLOCK_HEADER, zcap, c->raw, raw_len);
        if (!ZSTD_isError(z)) {
            stored = z;
            flags |= MSADB_BLOCK_F_ZSTD;
        }
    }
    if (!stored) {
        if (raw_len > room)
            return MSADB_ELIMIT;
        memcpy(out + MSADB_BLOCK_HEADER, c->raw, raw_len);
        stored = raw_len;
    }
    msadb_block_header h = {.version = 1, .dtype = (uint8_t)dtype, .flags = (uint8_t)flags,
                            .n_tok = n_tok, .head_dim = d, .raw_len = (uint32_t)raw_len,
                            .payload_len = (uint32_t)stored};
    put_header(out, &h);
    *out_len = MSADB_BLOCK_HEADER + stored;
    msadb_put_le32(out + 20, block_crc(out, *out_len));
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Seal                                                                     */
/* ------------------------------------------------------------------------ */

int msadb_block_seal(const uint8_t *in, size_t len, const uint8_t key[32], const uint8_t *ad,
                     size_t ad_len, uint8_t *out, size_t cap, size_t *out_len)
{
    if (!in || !key || !out || !out_len || (!ad && ad_len) || ad_len > SIZE_MAX - 64)
        return MSADB_EINVAL;
    uintptr_t i0 = (uintptr_t)in, o0 = (uintptr_t)out;
    if (o0 < i0 + len && i0 < o0 + cap)
        return MSADB_EINVAL;
    msadb_block_header h;
    /* Checking the CRC first means a block damaged in memory is refused
     * here instead of being made authentic by the seal. */
    int rc = parse_header(in, len, &h);
    if (rc)
        return rc;
    if (h.flags & MSADB_BLOCK_F_ENCRYPTED)
        return MSADB_EINVAL;
    size_t plen = len - MSADB_BLOCK_HEADER;
    if (plen > UINT32_MAX - MSADB_SEAL_OVERHEAD)
        return MSADB_ELIMIT;
    if (cap < len + MSADB_SEAL_OVERHEAD)
        return MSADB_ELIMIT;
    if (msadb_crypto_init() != 0)
        return MSADB_EIO;

    h.flags |= MSADB_BLOCK_F_ENCRYPTED;
    h.payload_len = (uint32_t)(plen + MSADB_SEAL_OVERHEAD);
    h.crc = 0;
    put_header(out, &h);

    /* AD = the new header's first 20 bytes (shape, dtype, flags and
     * lengths are authenticated too) followed by the caller's binding. */
    uint8_t stack_ad[256];
    uint8_t *adb = 20 + ad_len <= sizeof stack_ad ? stack_ad : malloc(20 + ad_len);
    if (!adb)
        return MSADB_ENOMEM;
    memcpy(adb, out, 20);
    if (ad_len)
        memcpy(adb + 20, ad, ad_len);
    rc = msadb_seal(key, adb, 20 + ad_len, in + MSADB_BLOCK_HEADER, plen, out + MSADB_BLOCK_HEADER);
    if (adb != stack_ad)
        free(adb);
    if (rc)
        return rc;
    *out_len = len + MSADB_SEAL_OVERHEAD;
    msadb_put_le32(out + 20, block_crc(out, *out_len));
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Decode                                                                   */
/* ------------------------------------------------------------------------ */

/* f32/f16/bf16: every stored element must be finite (the encoder never
 * writes anything else), so callers never see inf or nan. */
static int decode_float(msadb_codec *c, const msadb_block_header *h, const uint8_t *p, float *K,
                        float *V)
{
    size_t nd = (size_t)h->n_tok * h->head_dim, n = 2 * nd;
    size_t w = h->dtype == MSADB_DTYPE_F32 ? 4 : 2;
    const uint8_t *e = p;
    if (h->flags & MSADB_BLOCK_F_SHUFFLE) {
        int rc = grow(&c->work, &c->work_cap, n * w);
        if (rc)
            return rc;
        unshuffle(c->work, p, n, w);
        e = c->work;
    }
    uint32_t mask = w == 4 ? F32_EXP : h->dtype == MSADB_DTYPE_F16 ? F16_EXP : BF16_EXP;
    if (any_nonfinite(e, n, w, mask))
        return MSADB_ECORRUPT;

    const uint8_t *ek = e, *ev = e + nd * w;
    if (h->dtype == MSADB_DTYPE_F32) {
        if (K)
            memcpy(K, ek, nd * 4);
        if (V)
            memcpy(V, ev, nd * 4);
    } else if (h->dtype == MSADB_DTYPE_F16) {
        if (K)
            f16_to_f32_n(ek, K, nd);
        if (V)
            f16_to_f32_n(ev, V, nd);
    } else {
        if (K)
            bf16_to_f32_n(ek, K, nd);
        if (V)
            bf16_to_f32_n(ev, V, nd);
    }
    return 0;
}

/* Reads k (min, scale) pairs stored as `w`-byte little-endian floats (min[k]
 * then scale[k], byte-shuffled if `shuffled`) into m and s.  Refuses any
 * grid that could decode to a non-finite value or that runs backwards. */
static int read_grids(const uint8_t *p, size_t k, size_t w, int shuffled, float levels,
                      uint8_t *tmp, float *m, float *s)
{
    if (shuffled) {
        unshuffle(tmp, p, 2 * k, w);
        p = tmp;
    }
    for (size_t i = 0; i < k; i++) {
        if (w == 2) {
            m[i] = msadb_f16_to_f32(msadb_get_le16(p + 2 * i));
            s[i] = msadb_f16_to_f32(msadb_get_le16(p + 2 * (k + i)));
        } else {
            uint32_t um = msadb_get_le32(p + 4 * i), us = msadb_get_le32(p + 4 * (k + i));
            memcpy(&m[i], &um, 4);
            memcpy(&s[i], &us, 4);
        }
        /* s >= 0 and m + levels*s finite bound every code's value */
        if (!isfinite(m[i]) || !(s[i] >= 0.0f) || !isfinite(fmaf(levels, s[i], m[i])))
            return MSADB_ECORRUPT;
    }
    return 0;
}

static int decode_quant(msadb_codec *c, const msadb_block_header *h, const uint8_t *p, float *K,
                        float *V)
{
    uint32_t n = h->n_tok, d = h->head_dim;
    size_t nd = (size_t)n * d, cb = codes_bytes(h->dtype, nd);
    size_t wk = (h->flags & F_KPAR32) ? 4 : 2, wv = (h->flags & F_VPAR32) ? 4 : 2;
    int shuffled = (h->flags & MSADB_BLOCK_F_SHUFFLE) != 0;
    float levels = dtype_levels(h->dtype);
    grids gk, gv;
    int rc = carve_grids(c, n, d, &gk, &gv);
    if (rc)
        return rc;
    const uint8_t *kpar = p, *vpar = kpar + 2 * (size_t)d * wk;
    const uint8_t *kq = vpar + 2 * (size_t)n * wv, *vq = kq + cb;
    if ((rc = read_grids(kpar, d, wk, shuffled, levels, gk.bits, gk.m, gk.s)) ||
        (rc = read_grids(vpar, n, wv, shuffled, levels, gv.bits, gv.m, gv.s)))
        return rc;

    if (h->dtype == MSADB_DTYPE_INT8) {
        if (K)
            dequant_channels(kq, n, d, gk.m, gk.s, K);
        if (V)
            dequant_tokens(vq, n, d, gv.m, gv.s, V);
        return 0;
    }
    /* q4: the padding nibble of an odd count must be 0 (one encoding per
     * block: a flipped padding bit is corruption, not a different block). */
    if ((nd & 1) && ((kq[cb - 1] >> 4) || (vq[cb - 1] >> 4)))
        return MSADB_ECORRUPT;
    if ((rc = grow(&c->work, &c->work_cap, nd)))
        return rc;
    if (K) {
        unpack4(kq, nd, c->work);
        dequant_channels(c->work, n, d, gk.m, gk.s, K);
    }
    if (V) {
        unpack4(vq, nd, c->work);
        dequant_tokens(c->work, n, d, gv.m, gv.s, V);
    }
    return 0;
}

/* Authenticates and decrypts the payload into c->plain. */
static int open_sealed(msadb_codec *c, const uint8_t *in, const msadb_block_header *h,
                       const uint8_t *key, const uint8_t *ad, size_t ad_len, const uint8_t **p,
                       size_t *plen)
{
    size_t clen = h->payload_len, mlen = clen - MSADB_SEAL_OVERHEAD;
    int rc;
    if ((rc = grow(&c->plain, &c->plain_cap, mlen)) || (rc = grow(&c->ad, &c->ad_cap, 20 + ad_len)))
        return rc;
    if (msadb_crypto_init() != 0)
        return MSADB_EIO;
    memcpy(c->ad, in, 20);
    if (ad_len)
        memcpy(c->ad + 20, ad, ad_len);
    rc = msadb_unseal(key, c->ad, 20 + ad_len, in + MSADB_BLOCK_HEADER, clen, c->plain);
    if (rc)
        return rc == MSADB_EAUTH ? MSADB_EAUTH : MSADB_ECORRUPT;
    *p = c->plain;
    *plen = mlen;
    return 0;
}

int msadb_block_decode(msadb_codec *c, const uint8_t *in, size_t len, uint32_t expect_d,
                       uint32_t max_tok, const uint8_t *key, const uint8_t *ad, size_t ad_len,
                       float *K, float *V, uint32_t *n_tok)
{
    if (!c || !in || (!ad && ad_len) || ad_len > SIZE_MAX - 64 || expect_d == 0 ||
        expect_d > MSADB_MAX_HEAD_DIM || max_tok == 0)
        return MSADB_EINVAL;
    msadb_block_header h;
    int rc = parse_header(in, len, &h);
    if (rc)
        return rc;
    if (h.head_dim != expect_d || h.n_tok > max_tok)
        return MSADB_ECORRUPT;

    const uint8_t *p = in + MSADB_BLOCK_HEADER;
    size_t plen = h.payload_len;
    if (h.flags & MSADB_BLOCK_F_ENCRYPTED) {
        if (!key)
            return MSADB_EKEY;
        if ((rc = open_sealed(c, in, &h, key, ad, ad_len, &p, &plen)))
            return rc;
    } else if (key) {
        /* A caller holding a key expects sealed blocks: a plain one in its
         * place is a substitution (or downgrade) that nothing authenticates. */
        return MSADB_EAUTH;
    }
    if (h.flags & MSADB_BLOCK_F_ZSTD) {
        if ((rc = grow(&c->raw, &c->raw_cap, h.raw_len)))
            return rc;
        /* exactly one frame, filling exactly raw_len bytes */
        if (ZSTD_findFrameCompressedSize(p, plen) != plen)
            return MSADB_ECORRUPT;
        size_t r = ZSTD_decompressDCtx(c->dctx, c->raw, h.raw_len, p, plen);
        if (ZSTD_isError(r) || r != h.raw_len)
            return MSADB_ECORRUPT;
        p = c->raw;
    }
    rc = dtype_quantized(h.dtype) ? decode_quant(c, &h, p, K, V) : decode_float(c, &h, p, K, V);
    if (rc)
        return rc;
    if (n_tok)
        *n_tok = h.n_tok;
    return 0;
}
