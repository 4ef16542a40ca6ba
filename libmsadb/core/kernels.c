/* kernels.c -- see kernels.h.
 *
 * The scan over summaries is a streaming loop that reads every summary of
 * the queried spaces once per query, so it runs at memory bandwidth only if
 * the arithmetic per byte stays small: f16 -> f32 with vcvtph2ps, one FMA
 * per 16 lanes per query row, and a horizontal reduction shared by four rows
 * at a time.  The portable versions replay the exact operation order of the
 * vector versions (16 lanes, fmaf chains, the same reduction tree), which is
 * what makes block selection independent of the machine.
 */
#include "core/kernels.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "msadb.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define MSADB_X86 1
#define TARGET_AVX512 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")))
#else
#define MSADB_X86 0
#endif

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                 */
/* ------------------------------------------------------------------------ */

static int simd_cpu = -1; /* -1 unknown, 0 no, 1 yes */
static int simd_forced_off;

#if MSADB_X86
/* A CPUID feature bit of ECX (read directly: not every compiler's
 * __builtin_cpu_supports knows VNNI or F16C by name). */
static int cpuid_ecx_bit(unsigned leaf, unsigned bit)
{
    unsigned a, b, c, d;
    return __get_cpuid_count(leaf, 0, &a, &b, &c, &d) && ((c >> bit) & 1u);
}
#endif

static int detect_simd(void)
{
#if MSADB_X86
    const char *e = getenv("MSADB_NO_SIMD");
    if (e && *e && strcmp(e, "0") != 0)
        return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           cpuid_ecx_bit(7, 11) /* AVX512-VNNI */ && cpuid_ecx_bit(1, 29) /* F16C */ &&
           cpuid_ecx_bit(1, 12) /* FMA */;
#else
    return 0;
#endif
}

int msadb_k_simd(void)
{
    if (__atomic_load_n(&simd_forced_off, __ATOMIC_RELAXED))
        return 0;
    int s = __atomic_load_n(&simd_cpu, __ATOMIC_RELAXED);
    if (s < 0) { /* benign race: every thread computes the same answer */
        s = detect_simd();
        __atomic_store_n(&simd_cpu, s, __ATOMIC_RELAXED);
    }
    return s;
}

void msadb_k_force_portable(int on) { __atomic_store_n(&simd_forced_off, on != 0, __ATOMIC_RELAXED); }

/* ------------------------------------------------------------------------ */
/* Query preparation                                                        */
/* ------------------------------------------------------------------------ */

void msadb_kq_free(msadb_kq *kq)
{
    if (!kq)
        return;
    msadb_afree(kq->q);
    msadb_afree(kq->q8);
    free(kq->q8_scale);
    free(kq->q8_corr);
    memset(kq, 0, sizeof *kq);
}

float msadb_k_quantize_i8(const float *x, uint32_t d, int8_t *out)
{
    float amax = 0.0f;
    for (uint32_t j = 0; j < d; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    if (amax == 0.0f) {
        memset(out, 0, d);
        return 0.0f;
    }
    float inv = 127.0f / amax;
    for (uint32_t j = 0; j < d; j++) {
        long v = lrintf(x[j] * inv);
        out[j] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
    }
    return amax / 127.0f;
}

int msadb_kq_prepare(msadb_kq *kq, const float *rows, uint32_t n_groups, uint32_t gsize,
                     size_t row_gstride, size_t row_stride, uint32_t d, int normalize)
{
    uint32_t dpad = (d + 15u) & ~15u, dpad8 = (d + 63u) & ~63u;
    uint32_t gpad = (gsize + 3u) & ~3u;
    size_t nrows = (size_t)n_groups * gpad;
    size_t need = nrows * dpad;
    if (need > kq->cap || nrows * dpad8 > kq->cap) {
        size_t cap = need > nrows * dpad8 ? need : nrows * dpad8;
        float *q = msadb_aalloc(cap * sizeof(float));
        int8_t *q8 = msadb_aalloc(cap);
        float *qs = malloc(nrows * sizeof(float));
        int32_t *qc = malloc(nrows * sizeof(int32_t));
        if (!q || !q8 || !qs || !qc) {
            msadb_afree(q);
            msadb_afree(q8);
            free(qs);
            free(qc);
            return MSADB_ENOMEM;
        }
        msadb_kq_free(kq);
        kq->q = q;
        kq->q8 = q8;
        kq->q8_scale = qs;
        kq->q8_corr = qc;
        kq->cap = cap;
    }
    kq->d = d;
    kq->dpad = dpad;
    kq->dpad8 = dpad8;
    kq->n_groups = n_groups;
    kq->gsize = gsize;
    kq->gpad = gpad;
    for (uint32_t g = 0; g < n_groups; g++) {
        for (uint32_t r = 0; r < gpad; r++) {
            /* pad rows repeat the group's first row: max is unchanged */
            const float *src = rows + g * row_gstride + (r < gsize ? r : 0) * row_stride;
            size_t ri = (size_t)g * gpad + r;
            float *dst = kq->q + ri * dpad;
            float nrm = 1.0f;
            if (normalize) {
                double s = 0.0;
                for (uint32_t j = 0; j < d; j++)
                    s += (double)src[j] * src[j];
                nrm = s > 0.0 ? (float)(1.0 / sqrt(s)) : 0.0f;
            }
            for (uint32_t j = 0; j < d; j++)
                dst[j] = src[j] * nrm;
            for (uint32_t j = d; j < dpad; j++)
                dst[j] = 0.0f;
            int8_t *d8 = kq->q8 + ri * dpad8;
            kq->q8_scale[ri] = msadb_k_quantize_i8(dst, d, d8);
            memset(d8 + d, 0, dpad8 - d);
            int32_t sum = 0;
            for (uint32_t j = 0; j < d; j++)
                sum += d8[j];
            kq->q8_corr[ri] = 128 * sum;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Portable scoring: the reference operation order                          */
/* ------------------------------------------------------------------------ */

/* The fixed reduction tree of 16 lanes, identical to the vector code:
 * f[j] = l[j] + l[j+8]; g[j] = f[j] + f[j+4]; (g0 + g1) + (g2 + g3). */
static float reduce16(const float *l)
{
    float f[8], g[4];
    for (int j = 0; j < 8; j++)
        f[j] = l[j] + l[j + 8];
    for (int j = 0; j < 4; j++)
        g[j] = f[j] + f[j + 4];
    return (g[0] + g[1]) + (g[2] + g[3]);
}

static void load_f16_chunk(const uint16_t *src, uint32_t c, uint32_t d, float *dst)
{
    for (uint32_t l = 0; l < 16; l++) {
        uint32_t j = c * 16 + l;
        dst[l] = j < d ? msadb_f16_to_f32(src[j]) : 0.0f;
    }
}

static void score_mean_portable(const msadb_kq *kq, const uint16_t *mean, size_t n, int cosine,
                                float *scores, size_t stride)
{
    uint32_t d = kq->d, C = kq->dpad / 16;
    float mf[MSADB_MAX_HEAD_DIM + 16];
    for (size_t i = 0; i < n; i++) {
        const uint16_t *m = mean + i * d;
        for (uint32_t c = 0; c < C; c++)
            load_f16_chunk(m, c, d, mf + c * 16);
        float inv_norm = 1.0f;
        if (cosine) {
            float acc[16] = {0};
            for (uint32_t c = 0; c < C; c++)
                for (int l = 0; l < 16; l++)
                    acc[l] = fmaf(mf[c * 16 + l], mf[c * 16 + l], acc[l]);
            float n2 = reduce16(acc);
            inv_norm = n2 > 0.0f ? sqrtf(n2) : 0.0f;
        }
        for (uint32_t g = 0; g < kq->n_groups; g++) {
            float best = -INFINITY;
            for (uint32_t r = 0; r < kq->gpad; r++) {
                const float *q = kq->q + ((size_t)g * kq->gpad + r) * kq->dpad;
                float acc[16] = {0};
                for (uint32_t c = 0; c < C; c++)
                    for (int l = 0; l < 16; l++)
                        acc[l] = fmaf(q[c * 16 + l], mf[c * 16 + l], acc[l]);
                float s = reduce16(acc);
                best = s > best ? s : best;
            }
            if (cosine)
                best = inv_norm > 0.0f ? best / inv_norm : 0.0f;
            scores[g * stride + i] = best;
        }
    }
}

static void score_minmax_portable(const msadb_kq *kq, const uint16_t *mm, size_t n,
                                  float *scores, size_t stride)
{
    uint32_t d = kq->d, C = kq->dpad / 16;
    float lo[MSADB_MAX_HEAD_DIM + 16], hi[MSADB_MAX_HEAD_DIM + 16];
    for (size_t i = 0; i < n; i++) {
        const uint16_t *b = mm + i * 2 * (size_t)d;
        for (uint32_t c = 0; c < C; c++) {
            load_f16_chunk(b, c, d, lo + c * 16);
            load_f16_chunk(b + d, c, d, hi + c * 16);
        }
        for (uint32_t g = 0; g < kq->n_groups; g++) {
            float best = -INFINITY;
            for (uint32_t r = 0; r < kq->gpad; r++) {
                const float *q = kq->q + ((size_t)g * kq->gpad + r) * kq->dpad;
                float acc[16] = {0};
                /* max(q lo, q hi) is q hi when q >= 0 and q lo otherwise:
                 * one fused multiply-add on the selected bound */
                for (uint32_t c = 0; c < C; c++)
                    for (int l = 0; l < 16; l++) {
                        float qv = q[c * 16 + l];
                        acc[l] = fmaf(qv, qv >= 0.0f ? hi[c * 16 + l] : lo[c * 16 + l], acc[l]);
                    }
                float s = reduce16(acc);
                best = s > best ? s : best;
            }
            scores[g * stride + i] = best;
        }
    }
}

static void score_i8_portable(const msadb_kq *kq, const int8_t *v, const float *scale, size_t n,
                              float *scores, size_t stride)
{
    uint32_t d = kq->d;
    for (size_t i = 0; i < n; i++) {
        const int8_t *b = v + i * d;
        for (uint32_t g = 0; g < kq->n_groups; g++) {
            float best = -INFINITY;
            for (uint32_t r = 0; r < kq->gpad; r++) {
                size_t ri = (size_t)g * kq->gpad + r;
                const int8_t *q = kq->q8 + ri * kq->dpad8;
                int32_t acc = 0;
                for (uint32_t j = 0; j < d; j++)
                    acc += (int32_t)b[j] * q[j];
                float s = (float)acc * kq->q8_scale[ri];
                best = s > best ? s : best;
            }
            scores[g * stride + i] = best * scale[i];
        }
    }
}

/* ------------------------------------------------------------------------ */
/* AVX-512 scoring                                                          */
/* ------------------------------------------------------------------------ */

#if MSADB_X86
/* Reduces four 16-lane accumulators with the reduce16() tree; every lane of
 * 128-bit lane r of the result holds the total of accumulator r. */
TARGET_AVX512 static inline __m512 reduce4x16(__m512 a0, __m512 a1, __m512 a2, __m512 a3)
{
    __m512 t0 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
    __m512 t1 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
    __m512 u = _mm512_add_ps(_mm512_shuffle_f32x4(t0, t1, 0x88), _mm512_shuffle_f32x4(t0, t1, 0xDD));
    __m512 v = _mm512_add_ps(u, _mm512_permute_ps(u, 0xB1));
    return _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
}

/* Masked loads only for a partial last chunk: AMD's stream prefetchers do
 * not train on masked loads, which made a streaming scan 3x slower. */
TARGET_AVX512 static inline __m512 load_f16_16(const uint16_t *p, __mmask16 m)
{
    if (m == 0xffff)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

/* Scores one block whose f32 mean (zero padded) is in mf[C*16]. */
TARGET_AVX512 static inline __m512 dot_rows4(const float *q, uint32_t dpad, const float *mf, uint32_t C)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (uint32_t c = 0; c < C; c++) {
        __m512 m = _mm512_load_ps(mf + c * 16);
        a0 = _mm512_fmadd_ps(_mm512_load_ps(q + c * 16), m, a0);
        a1 = _mm512_fmadd_ps(_mm512_load_ps(q + dpad + c * 16), m, a1);
        a2 = _mm512_fmadd_ps(_mm512_load_ps(q + 2 * dpad + c * 16), m, a2);
        a3 = _mm512_fmadd_ps(_mm512_load_ps(q + 3 * dpad + c * 16), m, a3);
    }
    return reduce4x16(a0, a1, a2, a3);
}

/* The common case (d = 128, one group of 4 rows) with the query kept in
 * registers; same operations as the general loop (and the same norm for the
 * cosine variant). */
TARGET_AVX512 static void score_mean_d128_g4(const float *q, const uint16_t *mean, size_t n, int cosine,
                                             float *scores)
{
    __m512 q0[8], q1[8], q2[8], q3[8];
    for (int c = 0; c < 8; c++) {
        q0[c] = _mm512_load_ps(q + c * 16);
        q1[c] = _mm512_load_ps(q + 128 + c * 16);
        q2[c] = _mm512_load_ps(q + 256 + c * 16);
        q3[c] = _mm512_load_ps(q + 384 + c * 16);
    }
    for (size_t i = 0; i < n; i++) {
        const uint16_t *p = mean + i * 128;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, na = a0;
        for (int c = 0; c < 8; c++) {
            __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + c * 16)));
            a0 = _mm512_fmadd_ps(q0[c], m, a0);
            a1 = _mm512_fmadd_ps(q1[c], m, a1);
            a2 = _mm512_fmadd_ps(q2[c], m, a2);
            a3 = _mm512_fmadd_ps(q3[c], m, a3);
            if (cosine)
                na = _mm512_fmadd_ps(m, m, na);
        }
        __m512 t = reduce4x16(a0, a1, a2, a3);
        /* max of the four row totals (lanes 0, 4, 8, 12) */
        __m128 x = _mm_max_ps(_mm512_castps512_ps128(t), _mm512_extractf32x4_ps(t, 1));
        __m128 y = _mm_max_ps(_mm512_extractf32x4_ps(t, 2), _mm512_extractf32x4_ps(t, 3));
        float s = _mm_cvtss_f32(_mm_max_ps(x, y));
        if (cosine) {
            float n2 = _mm_cvtss_f32(_mm512_castps512_ps128(reduce4x16(na, na, na, na)));
            float nrm = n2 > 0.0f ? sqrtf(n2) : 0.0f;
            s = nrm > 0.0f ? s / nrm : 0.0f;
        }
        scores[i] = s;
    }
}

TARGET_AVX512 static void score_mean_avx512(const msadb_kq *kq, const uint16_t *mean, size_t n,
                                            int cosine, float *scores, size_t stride)
{
    uint32_t d = kq->d, C = kq->dpad / 16, dpad = kq->dpad;
    if (d == 128 && kq->n_groups == 1 && kq->gpad == 4) {
        score_mean_d128_g4(kq->q, mean, n, cosine, scores);
        return;
    }
    __attribute__((aligned(64))) float mf[MSADB_MAX_HEAD_DIM + 16];
    __mmask16 tail = (d % 16) ? (__mmask16)((1u << (d % 16)) - 1) : (__mmask16)0xffff;
    for (size_t i = 0; i < n; i++) {
        const uint16_t *m = mean + i * d;
        for (uint32_t c = 0; c < C; c++)
            _mm512_store_ps(mf + c * 16, load_f16_16(m + c * 16, c + 1 == C ? tail : 0xffff));
        float norm = 1.0f;
        if (cosine) {
            __m512 a = _mm512_setzero_ps();
            for (uint32_t c = 0; c < C; c++) {
                __m512 x = _mm512_load_ps(mf + c * 16);
                a = _mm512_fmadd_ps(x, x, a);
            }
            float n2 = _mm_cvtss_f32(_mm512_castps512_ps128(reduce4x16(a, a, a, a)));
            norm = n2 > 0.0f ? sqrtf(n2) : 0.0f;
        }
        for (uint32_t g = 0; g < kq->n_groups; g++) {
            const float *qg = kq->q + (size_t)g * kq->gpad * dpad;
            __m512 best = _mm512_set1_ps(-INFINITY);
            for (uint32_t r = 0; r < kq->gpad; r += 4)
                best = _mm512_max_ps(best, dot_rows4(qg + (size_t)r * dpad, dpad, mf, C));
            float s = _mm512_reduce_max_ps(best);
            if (cosine)
                s = norm > 0.0f ? s / norm : 0.0f;
            scores[g * stride + i] = s;
        }
    }
}

TARGET_AVX512 static void score_minmax_avx512(const msadb_kq *kq, const uint16_t *mm, size_t n,
                                              float *scores, size_t stride)
{
    uint32_t d = kq->d, C = kq->dpad / 16, dpad = kq->dpad;
    __attribute__((aligned(64))) float lo[MSADB_MAX_HEAD_DIM + 16], hi[MSADB_MAX_HEAD_DIM + 16];
    __mmask16 tail = (d % 16) ? (__mmask16)((1u << (d % 16)) - 1) : (__mmask16)0xffff;
    const __m512 zero = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i++) {
        const uint16_t *b = mm + i * 2 * (size_t)d;
        for (uint32_t c = 0; c < C; c++) {
            __mmask16 k = c + 1 == C ? tail : 0xffff;
            _mm512_store_ps(lo + c * 16, load_f16_16(b + c * 16, k));
            _mm512_store_ps(hi + c * 16, load_f16_16(b + d + c * 16, k));
        }
        for (uint32_t g = 0; g < kq->n_groups; g++) {
            const float *qg = kq->q + (size_t)g * kq->gpad * dpad;
            __m512 best = _mm512_set1_ps(-INFINITY);
            for (uint32_t r = 0; r < kq->gpad; r += 4) {
                const float *q = qg + (size_t)r * dpad;
                __m512 acc[4];
                for (int k = 0; k < 4; k++)
                    acc[k] = _mm512_setzero_ps();
                for (uint32_t c = 0; c < C; c++) {
                    __m512 l = _mm512_load_ps(lo + c * 16), h = _mm512_load_ps(hi + c * 16);
                    for (int k = 0; k < 4; k++) {
                        __m512 qq = _mm512_load_ps(q + (size_t)k * dpad + c * 16);
                        /* q >= 0 ? hi : lo, then one FMA (as the portable code) */
                        __m512 sel = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(qq, zero, _CMP_GE_OQ), l, h);
                        acc[k] = _mm512_fmadd_ps(qq, sel, acc[k]);
                    }
                }
                best = _mm512_max_ps(best, reduce4x16(acc[0], acc[1], acc[2], acc[3]));
            }
            scores[g * stride + i] = _mm512_reduce_max_ps(best);
        }
    }
}

/* Integer twin of reduce4x16 (integer sums are exact in any order). */
TARGET_AVX512 static inline __m512i reduce4x16i(__m512i a0, __m512i a1, __m512i a2, __m512i a3)
{
    __m512i t0 = _mm512_add_epi32(_mm512_shuffle_i32x4(a0, a1, 0x44), _mm512_shuffle_i32x4(a0, a1, 0xEE));
    __m512i t1 = _mm512_add_epi32(_mm512_shuffle_i32x4(a2, a3, 0x44), _mm512_shuffle_i32x4(a2, a3, 0xEE));
    __m512i u = _mm512_add_epi32(_mm512_shuffle_i32x4(t0, t1, 0x88), _mm512_shuffle_i32x4(t0, t1, 0xDD));
    __m512i v = _mm512_add_epi32(u, _mm512_shuffle_epi32(u, (_MM_PERM_ENUM)0xB1));
    return _mm512_add_epi32(v, _mm512_shuffle_epi32(v, (_MM_PERM_ENUM)0x4E));
}

/* Sums each of 16 accumulators: lane j of the result is the total of a[j].
 * Integer sums are exact in any order. */
TARGET_AVX512 static inline __m512i reduce16x16i(const __m512i *a)
{
    __m512i s2[8], s4[4];
    for (int j = 0; j < 8; j++)
        s2[j] = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2 * j], a[2 * j + 1]),
                                 _mm512_unpackhi_epi32(a[2 * j], a[2 * j + 1]));
    for (int j = 0; j < 4; j++) /* 128-bit lane L: partial totals of a[4j..4j+3] */
        s4[j] = _mm512_add_epi32(_mm512_unpacklo_epi64(s2[2 * j], s2[2 * j + 1]),
                                 _mm512_unpackhi_epi64(s2[2 * j], s2[2 * j + 1]));
    __m512i u0 = _mm512_add_epi32(_mm512_shuffle_i32x4(s4[0], s4[1], 0x88), _mm512_shuffle_i32x4(s4[0], s4[1], 0xDD));
    __m512i u1 = _mm512_add_epi32(_mm512_shuffle_i32x4(s4[2], s4[3], 0x88), _mm512_shuffle_i32x4(s4[2], s4[3], 0xDD));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(u0, u1, 0x88), _mm512_shuffle_i32x4(u0, u1, 0xDD));
}

/* Four summary vectors at a time against each four rows of every group:
 * the 16 dot products of a (vector, row) tile are reduced together, which
 * keeps small head dims (one or two 64-byte chunks per vector) from being
 * bound by horizontal reductions.  Lane 4v + k of a tile is vector v, row
 * k; the same float operations as the portable code follow (convert,
 * times the row's scale, max over rows, times the vector's scale). */
TARGET_AVX512 static size_t score_i8_x4_avx512(const msadb_kq *kq, const int8_t *v, const float *scale, size_t n,
                                               float *scores, size_t stride)
{
    uint32_t d = kq->d, C = kq->dpad8 / 64, dp = kq->dpad8;
    uint64_t tailbits = d % 64;
    __mmask64 tail = tailbits ? (((__mmask64)1 << tailbits) - 1) : ~(__mmask64)0;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i pick = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const int8_t *b = v + i * d;
        for (uint32_t g = 0; g < kq->n_groups; g++) {
            size_t r0 = (size_t)g * kq->gpad;
            __m512 best = _mm512_set1_ps(-INFINITY);
            for (uint32_t r = 0; r < kq->gpad; r += 4) {
                const int8_t *q = kq->q8 + (r0 + r) * dp;
                __m512i acc[16];
                for (int j = 0; j < 16; j++)
                    acc[j] = _mm512_setzero_si512();
                for (uint32_t c = 0; c < C; c++) {
                    __m512i qr[4];
                    for (int k = 0; k < 4; k++)
                        qr[k] = _mm512_loadu_si512(q + (size_t)k * dp + c * 64);
                    for (int u = 0; u < 4; u++) {
                        const int8_t *p = b + (size_t)u * d + c * 64;
                        __m512i raw = c + 1 < C || tailbits == 0 ? _mm512_loadu_si512(p)
                                                                  : _mm512_maskz_loadu_epi8(tail, p);
                        __m512i x = _mm512_xor_si512(raw, flip);
                        for (int k = 0; k < 4; k++)
                            acc[4 * u + k] = _mm512_dpbusd_epi32(acc[4 * u + k], x, qr[k]);
                    }
                }
                __m512i t = reduce16x16i(acc);
                __m512i corr = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(kq->q8_corr + r0 + r)));
                __m512 sc = _mm512_broadcast_f32x4(_mm_loadu_ps(kq->q8_scale + r0 + r));
                best = _mm512_max_ps(best, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(t, corr)), sc));
            }
            /* max over the four rows of each vector (lanes 4v..4v+3) */
            __m512 m = _mm512_max_ps(best, _mm512_permute_ps(best, 0xB1));
            m = _mm512_max_ps(m, _mm512_permute_ps(m, 0x4E));
            __m128 top = _mm512_castps512_ps128(_mm512_permutexvar_ps(pick, m));
            _mm_storeu_ps(scores + g * stride + i, _mm_mul_ps(top, _mm_loadu_ps(scale + i)));
        }
    }
    return i;
}

/* vpdpbusd multiplies unsigned by signed bytes: the summary bytes are
 * flipped to v + 128 and 128 * sum(q8) is subtracted afterwards.  The block
 * bytes are re-read from L1 for every four rows rather than kept in a stack
 * array (64-byte reloads of misaligned stack slots stall store forwarding). */
TARGET_AVX512 static void score_i8_avx512(const msadb_kq *kq, const int8_t *v, const float *scale,
                                          size_t n, float *scores, size_t stride)
{
    uint32_t d = kq->d, C = kq->dpad8 / 64, dp = kq->dpad8;
    uint64_t tailbits = d % 64;
    __mmask64 tail = tailbits ? (((__mmask64)1 << tailbits) - 1) : ~(__mmask64)0;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (size_t i = 0; i < n; i++) {
        const int8_t *b = v + i * d;
        for (uint32_t g = 0; g < kq->n_groups; g++) {
            size_t r0 = (size_t)g * kq->gpad;
            __m512 best = _mm512_set1_ps(-INFINITY);
            for (uint32_t r = 0; r < kq->gpad; r += 4) {
                const int8_t *q = kq->q8 + (r0 + r) * dp;
                __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
                for (uint32_t c = 0; c < C; c++) {
                    /* padded lanes read 0 ^ 0x80 = 128 but meet q8 = 0 */
                    __m512i raw = c + 1 < C || tailbits == 0 ? _mm512_loadu_si512(b + c * 64)
                                                              : _mm512_maskz_loadu_epi8(tail, b + c * 64);
                    __m512i x = _mm512_xor_si512(raw, flip);
                    a0 = _mm512_dpbusd_epi32(a0, x, _mm512_loadu_si512(q + c * 64));
                    a1 = _mm512_dpbusd_epi32(a1, x, _mm512_loadu_si512(q + dp + c * 64));
                    a2 = _mm512_dpbusd_epi32(a2, x, _mm512_loadu_si512(q + 2 * (size_t)dp + c * 64));
                    a3 = _mm512_dpbusd_epi32(a3, x, _mm512_loadu_si512(q + 3 * (size_t)dp + c * 64));
                }
                /* lane group k (4 lanes) holds row k's total */
                __m512i t = reduce4x16i(a0, a1, a2, a3);
                __m512i corr = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(kq->q8_corr + r0 + r)));
                __m512 sc = _mm512_broadcast_f32x4(_mm_loadu_ps(kq->q8_scale + r0 + r));
                /* lanes 0,4,8,12 (row k in lane 4k): subtract row k's correction */
                __m512i idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
                __m512i ck = _mm512_permutexvar_epi32(idx, corr);
                __m512 sk = _mm512_permutexvar_ps(idx, sc);
                best = _mm512_max_ps(best, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(t, ck)), sk));
            }
            scores[g * stride + i] = _mm512_reduce_max_ps(best) * scale[i];
        }
    }
}
#endif

void msadb_k_score_mean(const msadb_kq *kq, const uint16_t *mean, size_t n, int cosine,
                        float *scores, size_t stride)
{
#if MSADB_X86
    if (msadb_k_simd()) {
        score_mean_avx512(kq, mean, n, cosine, scores, stride);
        return;
    }
#endif
    score_mean_portable(kq, mean, n, cosine, scores, stride);
}

void msadb_k_score_minmax(const msadb_kq *kq, const uint16_t *minmax, size_t n, float *scores,
                          size_t stride)
{
#if MSADB_X86
    if (msadb_k_simd()) {
        score_minmax_avx512(kq, minmax, n, scores, stride);
        return;
    }
#endif
    score_minmax_portable(kq, minmax, n, scores, stride);
}

static int i8_tiles_off;

void msadb_k_i8_tiles(int on) { __atomic_store_n(&i8_tiles_off, on == 0, __ATOMIC_RELAXED); }

void msadb_k_score_i8(const msadb_kq *kq, const int8_t *v, const float *scale, size_t n,
                      float *scores, size_t stride)
{
#if MSADB_X86
    if (msadb_k_simd()) {
        size_t done = __atomic_load_n(&i8_tiles_off, __ATOMIC_RELAXED) ? 0
                                                                       : score_i8_x4_avx512(kq, v, scale, n, scores, stride);
        if (done < n)
            score_i8_avx512(kq, v + done * kq->d, scale + done, n - done, scores + done, stride);
        return;
    }
#endif
    score_i8_portable(kq, v, scale, n, scores, stride);
}

#if MSADB_X86
TARGET_AVX512 static size_t f16_to_f32_avx512(const uint16_t *h, float *f, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(f + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    return i;
}
#endif

void msadb_k_f16_to_f32(const uint16_t *h, float *f, size_t n)
{
    size_t i = 0;
#if MSADB_X86
    if (msadb_k_simd())
        i = f16_to_f32_avx512(h, f, n);
#endif
    for (; i < n; i++)
        f[i] = msadb_f16_to_f32(h[i]);
}

/* ------------------------------------------------------------------------ */
/* Representatives summary                                                  */
/* ------------------------------------------------------------------------ */

void msadb_k_score_reps_i8(const msadb_kq *kq, const int8_t *v8, const float *scale, size_t n,
                           uint32_t r, float *tmp, float *scores, size_t stride)
{
    size_t nv = n * r;
    msadb_k_score_i8(kq, v8, scale, nv, tmp, nv);
    for (uint32_t g = 0; g < kq->n_groups; g++)
        for (size_t i = 0; i < n; i++) {
            const float *s = tmp + g * nv + i * r;
            float best = s[0];
            for (uint32_t j = 1; j < r; j++)
                best = s[j] > best ? s[j] : best;
            scores[g * stride + i] = best;
        }
}

/* ------------------------------------------------------------------------ */
/* Selection                                                                */
/* ------------------------------------------------------------------------ */

#if MSADB_X86
/* Candidates are rare once the heap is full: test 16 scores at a time and
 * walk the set bits of the mask. */
TARGET_AVX512 static size_t select_ge_avx512(const float *s, size_t n, float thr, uint32_t *idx)
{
    size_t cnt = 0, i = 0;
    __m512 t = _mm512_set1_ps(thr);
    for (; i + 16 <= n; i += 16) {
        unsigned m = _mm512_cmp_ps_mask(_mm512_loadu_ps(s + i), t, _CMP_GE_OQ);
        while (m) {
            idx[cnt++] = (uint32_t)(i + (unsigned)__builtin_ctz(m));
            m &= m - 1;
        }
    }
    for (; i < n; i++)
        if (s[i] >= thr)
            idx[cnt++] = (uint32_t)i;
    return cnt;
}
#endif

size_t msadb_k_select_ge(const float *s, size_t n, float thr, uint32_t *idx)
{
#if MSADB_X86
    if (msadb_k_simd())
        return select_ge_avx512(s, n, thr, idx);
#endif
    size_t cnt = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] >= thr)
            idx[cnt++] = (uint32_t)i;
    return cnt;
}

/* a is better than b: higher score, or equal score and smaller id. */
static inline int better(float sa, uint64_t ia, float sb, uint64_t ib)
{
    return sa > sb || (sa == sb && ia < ib);
}

void msadb_topk_reset(msadb_topk *t, float *score, uint64_t *id, uint32_t k)
{
    t->score = score;
    t->id = id;
    t->k = k;
    t->n = 0;
}

/* Min-heap by "better": the root is the worst kept entry. */
static void heap_sift_down(float *sc, uint64_t *id, uint32_t n, uint32_t i)
{
    float s = sc[i];
    uint64_t v = id[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && better(sc[c], id[c], sc[c + 1], id[c + 1]))
            c++; /* pick the worse child */
        if (!better(s, v, sc[c], id[c]))
            break;
        sc[i] = sc[c];
        id[i] = id[c];
        i = c;
    }
    sc[i] = s;
    id[i] = v;
}

void msadb_topk_offer(msadb_topk *t, float score, uint64_t id)
{
    if (score != score || t->k == 0)
        return;
    if (t->n < t->k) { /* sift up */
        uint32_t i = t->n++;
        while (i > 0) {
            uint32_t p = (i - 1) / 2;
            if (!better(t->score[p], t->id[p], score, id))
                break;
            t->score[i] = t->score[p];
            t->id[i] = t->id[p];
            i = p;
        }
        t->score[i] = score;
        t->id[i] = id;
        return;
    }
    if (!better(score, id, t->score[0], t->id[0]))
        return;
    t->score[0] = score;
    t->id[0] = id;
    heap_sift_down(t->score, t->id, t->n, 0);
}

void msadb_topk_sort(msadb_topk *t)
{
    /* heap sort: repeatedly move the worst entry to the end */
    for (uint32_t n = t->n; n > 1; n--) {
        float s = t->score[0];
        uint64_t v = t->id[0];
        t->score[0] = t->score[n - 1];
        t->id[0] = t->id[n - 1];
        t->score[n - 1] = s;
        t->id[n - 1] = v;
        heap_sift_down(t->score, t->id, n - 1, 0);
    }
}

static inline void swap_pair(float *s, uint64_t *id, size_t a, size_t b)
{
    float ts = s[a];
    s[a] = s[b];
    s[b] = ts;
    uint64_t ti = id[a];
    id[a] = id[b];
    id[b] = ti;
}

/* nth_element-style selection: after it, positions [0,k) hold the k best
 * (unordered).  Quickselect with a median-of-three pivot; ids are unique
 * in practice but the order is total anyway, so duplicates are harmless. */
static void quickselect(float *s, uint64_t *id, size_t n, size_t k)
{
    size_t lo = 0, hi = n; /* the k-th boundary lies in [lo, hi) */
    int budget = 64;
    while (hi - lo > 16 && budget-- > 0) {
        size_t mid = lo + (hi - lo) / 2;
        /* order lo, mid, hi-1 best..worst, use mid as pivot */
        if (better(s[mid], id[mid], s[lo], id[lo]))
            swap_pair(s, id, mid, lo);
        if (better(s[hi - 1], id[hi - 1], s[lo], id[lo]))
            swap_pair(s, id, hi - 1, lo);
        if (better(s[hi - 1], id[hi - 1], s[mid], id[mid]))
            swap_pair(s, id, hi - 1, mid);
        float ps = s[mid];
        uint64_t pi = id[mid];
        swap_pair(s, id, mid, hi - 1);
        size_t store = lo;
        for (size_t i = lo; i < hi - 1; i++)
            if (better(s[i], id[i], ps, pi))
                swap_pair(s, id, i, store++);
        swap_pair(s, id, store, hi - 1);
        /* [lo,store) better than pivot, store = pivot */
        if (store == k || store + 1 == k)
            return;
        if (store > k)
            hi = store;
        else
            lo = store + 1;
    }
    /* small range (or a bad pivot streak): finish with a heap over [lo,hi) */
    if (hi - lo > 1 && k > lo && k < hi) {
        uint32_t kk = (uint32_t)(k - lo);
        msadb_topk t;
        msadb_topk_reset(&t, s + lo, id + lo, kk);
        /* heapify the first kk entries of the range, then offer the rest */
        for (uint32_t i = 0; i < kk; i++) {
            float sc = s[lo + i];
            uint64_t v = id[lo + i];
            t.n = i;
            msadb_topk_offer(&t, sc, v);
        }
        t.n = kk;
        for (size_t i = lo + kk; i < hi; i++) {
            if (better(s[i], id[i], t.score[0], t.id[0])) {
                float sc = s[i];
                uint64_t v = id[i];
                s[i] = t.score[0];
                id[i] = t.id[0];
                t.score[0] = sc;
                t.id[0] = v;
                heap_sift_down(t.score, t.id, kk, 0);
            }
        }
    }
}

void msadb_k_topk_array(float *score, uint64_t *id, size_t n, size_t k)
{
    if (k > n)
        k = n;
    if (k == 0)
        return;
    if (k < n)
        quickselect(score, id, n, k);
    /* sort the k winners: build a min-heap by "better", then heap sort */
    msadb_topk t;
    msadb_topk_reset(&t, score, id, (uint32_t)k);
    for (uint32_t i = (uint32_t)(k / 2); i-- > 0;)
        heap_sift_down(score, id, (uint32_t)k, i);
    t.n = (uint32_t)k;
    msadb_topk_sort(&t);
}

/* ------------------------------------------------------------------------ */
/* Attention                                                                */
/* ------------------------------------------------------------------------ */

#if MSADB_X86
/* exp(x) for x <= 0 (softmax after subtracting the row max): Cody-Waite
 * reduction x = n ln2 + r, |r| <= ln2/2, degree-7 Taylor polynomial (error
 * below 2 ulp), scaled by 2^n with vscalefps (which flushes large negative
 * n to 0). */
TARGET_AVX512 static inline __m512 exp_avx512(__m512 x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* In place: row <- exp(row - max); returns the sum (the max in *mx). */
TARGET_AVX512 static float softmax_row_avx512(float *row, size_t T, float *mx)
{
    __m512 vm = _mm512_set1_ps(-INFINITY);
    size_t t = 0;
    for (; t + 16 <= T; t += 16)
        vm = _mm512_max_ps(vm, _mm512_loadu_ps(row + t));
    float m = _mm512_reduce_max_ps(vm);
    for (; t < T; t++)
        m = row[t] > m ? row[t] : m;
    __m512 vmax = _mm512_set1_ps(m), vs = _mm512_setzero_ps();
    for (t = 0; t + 16 <= T; t += 16) {
        __m512 e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(row + t), vmax));
        _mm512_storeu_ps(row + t, e);
        vs = _mm512_add_ps(vs, e);
    }
    if (t < T) {
        __mmask16 k = (__mmask16)((1u << (T - t)) - 1);
        __m512 e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, row + t), vmax));
        e = _mm512_maskz_mov_ps(k, e);
        _mm512_mask_storeu_ps(row + t, k, e);
        vs = _mm512_add_ps(vs, e);
    }
    *mx = m;
    return _mm512_reduce_add_ps(vs);
}
#endif

static float softmax_row(float *row, size_t T, float *mx)
{
#if MSADB_X86
    if (msadb_k_simd())
        return softmax_row_avx512(row, T, mx);
#endif
    float m = -INFINITY;
    for (size_t t = 0; t < T; t++)
        m = row[t] > m ? row[t] : m;
    float lanes[16] = {0};
    for (size_t t = 0; t < T; t++) {
        row[t] = expf(row[t] - m);
        lanes[t % 16] += row[t];
    }
    *mx = m;
    return reduce16(lanes);
}

#if MSADB_X86
/* S[r][t] = scale * q_r . k_t for small problems, four rows at a time: no
 * BLAS call, so no thread hand-off (OpenBLAS may split even a 4 x 1024
 * product over its threads, which costs milliseconds on a busy machine). */
TARGET_AVX512 static void small_scores(const float *Q, uint32_t nq, const float *K, size_t T, uint32_t d,
                                       float scale, float *S)
{
    uint32_t C = d / 16;
    for (uint32_t r = 0; r < nq; r += 4) {
        const float *q0 = Q + (size_t)r * d, *q1 = r + 1 < nq ? q0 + d : q0, *q2 = r + 2 < nq ? q0 + 2 * d : q0,
                    *q3 = r + 3 < nq ? q0 + 3 * d : q0;
        for (size_t t = 0; t < T; t++) {
            const float *k = K + t * d;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (uint32_t c = 0; c < C; c++) {
                __m512 kv = _mm512_loadu_ps(k + c * 16);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + c * 16), kv, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + c * 16), kv, a1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q2 + c * 16), kv, a2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q3 + c * 16), kv, a3);
            }
            __m512 tot = reduce4x16(a0, a1, a2, a3);
            float x[16];
            _mm512_storeu_ps(x, tot);
            for (uint32_t j = 0; j < 4 && r + j < nq; j++)
                S[(size_t)(r + j) * T + t] = x[4 * j] * scale;
        }
    }
}

/* O[r] = sum_t P[r][t] v_t for small problems. */
TARGET_AVX512 static void small_pv(const float *P, uint32_t nq, const float *V, size_t T, uint32_t d, float *O)
{
    uint32_t C = d / 16;
    for (uint32_t r = 0; r < nq; r++) {
        const float *p = P + (size_t)r * T;
        __m512 acc[MSADB_MAX_HEAD_DIM / 16];
        for (uint32_t c = 0; c < C; c++)
            acc[c] = _mm512_setzero_ps();
        for (size_t t = 0; t < T; t++) {
            __m512 w = _mm512_set1_ps(p[t]);
            for (uint32_t c = 0; c < C; c++)
                acc[c] = _mm512_fmadd_ps(w, _mm512_loadu_ps(V + t * d + c * 16), acc[c]);
        }
        for (uint32_t c = 0; c < C; c++)
            _mm512_storeu_ps(O + (size_t)r * d + c * 16, acc[c]);
    }
}
#endif

/* Problems below this many multiply-adds per product skip BLAS. */
#define SMALL_ATTEND_FMAS (1u << 23)

void msadb_k_attend(const float *Q, uint32_t nq, const float *K, const float *V, size_t T,
                    uint32_t d, float scale, float *work, float *O, float *lse)
{
    if (T == 0) {
        memset(O, 0, (size_t)nq * d * sizeof(float));
        for (uint32_t r = 0; r < nq; r++)
            lse[r] = -INFINITY;
        return;
    }
    /* S = scale * Q K^T: one pass over K (the expensive, bandwidth-bound
     * part for long T), then P = softmax(S) and O = P V / sum. */
#if MSADB_X86
    int small = msadb_k_simd() && d % 16 == 0 && (double)nq * T * d <= SMALL_ATTEND_FMAS;
#else
    int small = 0;
#endif
#if MSADB_X86
    if (small)
        small_scores(Q, nq, K, T, d, scale, work);
    else
#endif
    if (nq == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)T, (int)d, scale, K, (int)d, Q, 1, 0.0f,
                    work, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)T, (int)d, scale, Q,
                    (int)d, K, (int)d, 0.0f, work, (int)T);
    for (uint32_t r = 0; r < nq; r++) {
        float m, *row = work + (size_t)r * T;
        float s = softmax_row(row, T, &m);
        lse[r] = m + logf(s);
        /* normalize P before the second product: O = P V needs no fix-up */
        float inv = 1.0f / s;
        for (size_t t = 0; t < T; t++)
            row[t] *= inv;
    }
#if MSADB_X86
    if (small)
        small_pv(work, nq, V, T, d, O);
    else
#endif
    if (nq == 1)
        cblas_sgemv(CblasRowMajor, CblasTrans, (int)T, (int)d, 1.0f, V, (int)d, work, 1, 0.0f, O,
                    1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)d, (int)T, 1.0f, work,
                    (int)T, V, (int)d, 0.0f, O, (int)d);
}

void msadb_k_lse_merge(size_t n, size_t d, const float *o1, const float *l1, const float *o2,
                       const float *l2, float *out, float *lse_out)
{
    for (size_t i = 0; i < n; i++) {
        float a = l1[i], b = l2[i];
        const float *x = o1 + i * d, *y = o2 + i * d;
        float *z = out + i * d;
        if (b == -INFINITY || b != b) {
            if (a == -INFINITY || a != a) {
                memset(z, 0, d * sizeof(float));
                lse_out[i] = -INFINITY;
            } else {
                if (z != x)
                    memmove(z, x, d * sizeof(float));
                lse_out[i] = a;
            }
            continue;
        }
        if (a == -INFINITY || a != a) {
            if (z != y)
                memmove(z, y, d * sizeof(float));
            lse_out[i] = b;
            continue;
        }
        double m = a > b ? a : b;
        double wa = exp((double)a - m), wb = exp((double)b - m), s = wa + wb;
        float fa = (float)(wa / s), fb = (float)(wb / s);
        for (size_t j = 0; j < d; j++)
            z[j] = fa * x[j] + fb * y[j];
        lse_out[i] = (float)(m + log(s));
    }
}

int msadb_blas_threads(void) { return openblas_get_num_threads(); }
