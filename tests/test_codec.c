/* test_codec.c -- the block codec (libmsadb/codec/codec.c): round trips with
 * error bounds for every dtype, the stored layout read back by an
 * independent parser written from docs/format.md, rejection of every
 * corruption, sealing, and the size targets. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "codec/codec.h"
#include "core/crypto.h"
#include "msadb.h"
#include "testutil.h"

#define F_KPAR32 8u
#define F_VPAR32 16u

static msadb_codec *C;
static uint64_t rng = 0x5eed;

static const uint8_t KEY[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static const uint8_t AD[32] = "store:1 space:2 plane:3 block:4";

static float *falloc(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    CHECK(p);
    return p;
}

static uint8_t *encode_new(int dt, const float *K, const float *V, uint32_t n, uint32_t d, size_t *len,
                           float *Kd, float *Vd)
{
    size_t cap = msadb_block_bound(dt, n, d);
    CHECK(cap > MSADB_BLOCK_HEADER);
    uint8_t *b = malloc(cap);
    CHECK(b);
    CHECK_OK(msadb_block_encode(C, dt, K, V, n, d, b, cap, len, Kd, Vd));
    CHECK(*len <= cap - MSADB_SEAL_OVERHEAD);
    return b;
}

static uint8_t *seal_new(const uint8_t *blk, size_t len, const uint8_t *ad, size_t ad_len, size_t *slen)
{
    uint8_t *s = malloc(len + MSADB_SEAL_OVERHEAD);
    CHECK(s);
    CHECK_OK(msadb_block_seal(blk, len, KEY, ad, ad_len, s, len + MSADB_SEAL_OVERHEAD, slen));
    CHECK(*slen == len + MSADB_SEAL_OVERHEAD);
    return s;
}

static void fix_crc(uint8_t *b, size_t len)
{
    uint32_t crc = msadb_crc32c(0, b, 20);
    crc = msadb_crc32c(crc, b + MSADB_BLOCK_HEADER, len - MSADB_BLOCK_HEADER);
    msadb_put_le32(b + 20, crc);
}

/* ------------------------------------------------------------------------ */
/* An independent reader of the raw payload, from docs/format.md            */
/* ------------------------------------------------------------------------ */

typedef struct parsed {
    int dtype;
    unsigned flags;
    uint32_t n, d;
    uint8_t *raw; /* unshuffled: parameters as plain little-endian arrays */
    size_t raw_len;
    size_t wk, wv;          /* parameter widths */
    size_t kpar, vpar, kq, vq; /* section offsets */
} parsed;

static void parse_block(const uint8_t *b, size_t len, parsed *p)
{
    CHECK(len >= 24 && memcmp(b, "MSB1", 4) == 0 && b[4] == 1);
    p->dtype = b[5];
    p->flags = b[6];
    p->n = msadb_get_le16(b + 8);
    p->d = msadb_get_le16(b + 10);
    p->raw_len = msadb_get_le32(b + 12);
    CHECK(msadb_get_le32(b + 16) == len - 24);
    CHECK(!(p->flags & MSADB_BLOCK_F_ENCRYPTED));
    uint8_t *raw = malloc(p->raw_len);
    CHECK(raw);
    if (p->flags & MSADB_BLOCK_F_ZSTD) {
        CHECK(ZSTD_decompress(raw, p->raw_len, b + 24, len - 24) == p->raw_len);
    } else {
        CHECK(len - 24 == p->raw_len);
        memcpy(raw, b + 24, p->raw_len);
    }
    size_t nd = (size_t)p->n * p->d;
    p->wk = (p->flags & F_KPAR32) ? 4 : 2;
    p->wv = (p->flags & F_VPAR32) ? 4 : 2;
    /* sections that hold multi-byte elements, in order, and their widths */
    size_t sec_off[2], sec_n[2], sec_w[2], nsec = 0;
    if (p->dtype <= MSADB_DTYPE_BF16) {
        size_t w = p->dtype == MSADB_DTYPE_F32 ? 4 : 2;
        CHECK(p->raw_len == 2 * nd * w);
        sec_off[0] = 0, sec_n[0] = 2 * nd, sec_w[0] = w, nsec = 1;
    } else {
        size_t cb = p->dtype == MSADB_DTYPE_Q4 ? (nd + 1) / 2 : nd;
        p->kpar = 0;
        p->vpar = 2 * p->d * p->wk;
        p->kq = p->vpar + 2 * p->n * p->wv;
        p->vq = p->kq + cb;
        CHECK(p->raw_len == p->vq + cb);
        sec_off[0] = p->kpar, sec_n[0] = 2 * p->d, sec_w[0] = p->wk;
        sec_off[1] = p->vpar, sec_n[1] = 2 * p->n, sec_w[1] = p->wv;
        nsec = 2;
    }
    if (p->flags & MSADB_BLOCK_F_SHUFFLE) {
        for (size_t s = 0; s < nsec; s++) {
            uint8_t *tmp = malloc(sec_n[s] * sec_w[s]);
            CHECK(tmp);
            for (size_t i = 0; i < sec_n[s]; i++)
                for (size_t k = 0; k < sec_w[s]; k++)
                    tmp[i * sec_w[s] + k] = raw[sec_off[s] + k * sec_n[s] + i];
            memcpy(raw + sec_off[s], tmp, sec_n[s] * sec_w[s]);
            free(tmp);
        }
    }
    p->raw = raw;
}

static float par_at(const uint8_t *base, size_t w, size_t i)
{
    if (w == 2)
        return msadb_f16_to_f32(msadb_get_le16(base + 2 * i));
    uint32_t u = msadb_get_le32(base + 4 * i);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Grid (min, scale) of key channel c or value token t. */
static void grid_k(const parsed *p, uint32_t c, float *m, float *s)
{
    *m = par_at(p->raw + p->kpar, p->wk, c);
    *s = par_at(p->raw + p->kpar, p->wk, p->d + c);
}

static void grid_v(const parsed *p, uint32_t t, float *m, float *s)
{
    *m = par_at(p->raw + p->vpar, p->wv, t);
    *s = par_at(p->raw + p->vpar, p->wv, p->n + t);
}

static unsigned code_at(const parsed *p, size_t off, size_t i)
{
    if (p->dtype == MSADB_DTYPE_INT8)
        return p->raw[off + i];
    uint8_t b = p->raw[off + i / 2];
    return i & 1 ? b >> 4 : b & 15u;
}

/* ------------------------------------------------------------------------ */
/* Round trips                                                              */
/* ------------------------------------------------------------------------ */

static float f16_ref(float x)
{
    uint16_t h = msadb_f32_to_f16(x);
    if ((h & 0x7fffu) == 0x7c00u) /* documented saturation */
        h = (uint16_t)((h & 0x8000u) | 0x7bffu);
    return msadb_f16_to_f32(h);
}

static float bf16_ref(float x)
{
    uint16_t h = msadb_f32_to_bf16(x);
    if ((h & 0x7fffu) == 0x7f80u)
        h = (uint16_t)((h & 0x8000u) | 0x7f7fu);
    return msadb_bf16_to_f32(h);
}

static int same_bits(float a, float b) { return memcmp(&a, &b, 4) == 0; }

/* Checks one quantized element: the decoded value is the documented
 * formula applied to the stored code and grid, and within half a step
 * (plus float rounding) of the original. */
static void check_q(float x, float got, unsigned q, float m, float s, float levels)
{
    CHECK(q <= (unsigned)levels);
    CHECK(same_bits(got, fmaf((float)q, s, m)));
    CHECK(isfinite(m) && s >= 0.0f);
    double err = fabs((double)x - got);
    double eps = 1e-4 * s + 2.4e-7 * (fabs(x) + fabs(m) + levels * s) + 1e-44;
    if (s < 1.2e-38f) /* subnormal scales: only the range bound holds */
        eps += levels * (double)s;
    if (!(err <= s / 2.0 + eps)) {
        fprintf(stderr, "x=%.9g got=%.9g q=%u m=%.9g s=%.9g err=%.3g bound=%.3g\n", x, got, q, m, s, err,
                s / 2.0 + eps);
        CHECK(0);
    }
}

/* Encodes K/V in dtype dt, decodes, and checks everything: K_deq/V_deq
 * equal decode output bitwise, per-dtype error bounds, the documented
 * layout.  Returns the encoded size. */
static size_t roundtrip(int dt, const float *K, const float *V, uint32_t n, uint32_t d)
{
    size_t nd = (size_t)n * d, len = 0;
    float *Kd = falloc(nd), *Vd = falloc(nd), *Ko = falloc(nd), *Vo = falloc(nd);
    uint8_t *b = encode_new(dt, K, V, n, d, &len, Kd, Vd);

    msadb_block_header h;
    CHECK_OK(msadb_block_peek(b, len, &h));
    CHECK(h.version == 1 && h.dtype == dt && h.n_tok == n && h.head_dim == d && h.payload_len == len - 24);

    uint32_t got_n = 0;
    CHECK_OK(msadb_block_decode(C, b, len, d, n, NULL, NULL, 0, Ko, Vo, &got_n));
    CHECK(got_n == n);
    CHECK(memcmp(Ko, Kd, nd * 4) == 0);
    CHECK(memcmp(Vo, Vd, nd * 4) == 0);
    /* either output may be NULL */
    CHECK_OK(msadb_block_decode(C, b, len, d, MSADB_MAX_BLOCK, NULL, NULL, 0, NULL, Vo, NULL));
    CHECK(memcmp(Vo, Vd, nd * 4) == 0);

    for (size_t i = 0; i < nd; i++) {
        CHECK(isfinite(Ko[i]) && isfinite(Vo[i]));
        switch (dt) {
        case MSADB_DTYPE_F32:
            CHECK(same_bits(Ko[i], K[i]) && same_bits(Vo[i], V[i]));
            break;
        case MSADB_DTYPE_F16:
            CHECK(same_bits(Ko[i], f16_ref(K[i])) && same_bits(Vo[i], f16_ref(V[i])));
            if (fabsf(K[i]) >= 6.1035156e-05f && fabsf(K[i]) <= 65504.0f)
                CHECK(fabsf(Ko[i] - K[i]) <= fabsf(K[i]) * 0x1p-11f);
            break;
        case MSADB_DTYPE_BF16:
            CHECK(same_bits(Ko[i], bf16_ref(K[i])) && same_bits(Vo[i], bf16_ref(V[i])));
            if (fabsf(K[i]) >= 1.2e-38f)
                CHECK(fabsf(Ko[i] - K[i]) <= fabsf(K[i]) * 0x1p-8f);
            break;
        default:
            break;
        }
    }
    if (dt == MSADB_DTYPE_INT8 || dt == MSADB_DTYPE_Q4) {
        parsed p;
        parse_block(b, len, &p);
        float levels = dt == MSADB_DTYPE_Q4 ? 15.0f : 255.0f;
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t c = 0; c < d; c++) {
                size_t i = (size_t)t * d + c;
                float m, s;
                grid_k(&p, c, &m, &s);
                check_q(K[i], Ko[i], code_at(&p, p.kq, i), m, s, levels);
                grid_v(&p, t, &m, &s);
                check_q(V[i], Vo[i], code_at(&p, p.vq, i), m, s, levels);
            }
        if (dt == MSADB_DTYPE_Q4 && (nd & 1)) /* padding nibbles are zero */
            CHECK((p.raw[p.kq + nd / 2] >> 4) == 0 && (p.raw[p.vq + nd / 2] >> 4) == 0);
        free(p.raw);
    } else {
        parsed p; /* the float layout reads back too */
        parse_block(b, len, &p);
        size_t w = dt == MSADB_DTYPE_F32 ? 4 : 2;
        for (size_t i = 0; i < nd; i += 1 + nd / 17) {
            float k = dt == MSADB_DTYPE_F32   ? par_at(p.raw, 4, i)
                      : dt == MSADB_DTYPE_F16 ? msadb_f16_to_f32(msadb_get_le16(p.raw + w * i))
                                              : msadb_bf16_to_f32(msadb_get_le16(p.raw + w * i));
            CHECK(same_bits(k, Ko[i]));
        }
        free(p.raw);
    }
    /* sealed: same data back */
    size_t slen;
    uint8_t *s = seal_new(b, len, AD, sizeof AD, &slen);
    CHECK(slen <= msadb_block_bound(dt, n, d));
    memset(Ko, 0, nd * 4);
    CHECK_OK(msadb_block_decode(C, s, slen, d, n, KEY, AD, sizeof AD, Ko, Vo, &got_n));
    CHECK(memcmp(Ko, Kd, nd * 4) == 0 && memcmp(Vo, Vd, nd * 4) == 0);
    free(s);
    free(b);
    free(Kd);
    free(Vd);
    free(Ko);
    free(Vo);
    return len;
}

/* Keys: N(0,1) with outlier channels (mean +-12, sd 4); values N(0,1). */
static void gen_kv(float *K, float *V, uint32_t n, uint32_t d)
{
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t c = 0; c < d; c++) {
            int out = d >= 8 && c % (d / 4) == 3;
            K[(size_t)t * d + c] = (out ? ((c / (d / 4)) & 1 ? -12.0f : 12.0f) : 0.0f) +
                                   (out ? 4.0f : 1.0f) * tu_randn(&rng);
            V[(size_t)t * d + c] = tu_randn(&rng);
        }
}

static void test_shapes(void)
{
    const uint32_t shapes[][2] = {{64, 128}, {1, 1}, {1, 7}, {13, 33}, {64, 1}, {37, 255}, {64, 256},
                                  {2, 1024}, {200, 64}, {17, 128}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        uint32_t n = shapes[si][0], d = shapes[si][1];
        float *K = falloc((size_t)n * d), *V = falloc((size_t)n * d);
        gen_kv(K, V, n, d);
        for (int dt = 0; dt <= MSADB_DTYPE_Q4; dt++)
            roundtrip(dt, K, V, n, d);
        free(K);
        free(V);
    }
    /* every odd head_dim up to 255, token counts varying with it */
    for (uint32_t d = 1; d < 256; d += 2) {
        uint32_t n = 1 + (d * 7) % 64;
        float *K = falloc((size_t)n * d), *V = falloc((size_t)n * d);
        tu_fill_randn(&rng, K, (size_t)n * d, 0.5f + d / 64.0f);
        tu_fill_randn(&rng, V, (size_t)n * d, 2.0f);
        for (int dt = 0; dt <= MSADB_DTYPE_Q4; dt++)
            roundtrip(dt, K, V, n, d);
        free(K);
        free(V);
    }
}

/* Constant key channels and constant value tokens decode exactly, in both
 * parameter widths; -0.0 keeps its sign. */
static void test_constants(void)
{
    const uint32_t n = 24, d = 40;
    const float consts[] = {0.0f, -0.0f, 1.0f, -2.5f, 0.3f, 1e-30f, -7e-42f, 5e4f, -1e6f, 3.0e38f};
    const size_t nc = sizeof consts / sizeof consts[0];
    float *K = falloc(n * d), *V = falloc(n * d), *Ko = falloc(n * d), *Vo = falloc(n * d);
    for (int big = 0; big < 2; big++) {
        tu_fill_randn(&rng, K, n * d, 1.0f);
        tu_fill_randn(&rng, V, n * d, 1.0f);
        /* with big = 0 only f16-exact constants, so the f16 parameters stay */
        for (size_t k = 0; k < nc; k++) {
            float v = big || k < 4 ? consts[k] : 0.5f;
            for (uint32_t t = 0; t < n; t++)
                K[t * d + 2 * k] = v;
            for (uint32_t c = 0; c < d; c++)
                V[(2 * k) * d + c] = v;
        }
        for (int dt = MSADB_DTYPE_INT8; dt <= MSADB_DTYPE_Q4; dt++) {
            size_t len;
            uint8_t *b = encode_new(dt, K, V, n, d, &len, NULL, NULL);
            CHECK(!!(b[6] & F_KPAR32) == big && !!(b[6] & F_VPAR32) == big);
            CHECK_OK(msadb_block_decode(C, b, len, d, n, NULL, NULL, 0, Ko, Vo, NULL));
            for (size_t k = 0; k < nc; k++) {
                for (uint32_t t = 0; t < n; t++)
                    CHECK(same_bits(Ko[t * d + 2 * k], K[t * d + 2 * k]));
                for (uint32_t c = 0; c < d; c++)
                    CHECK(same_bits(Vo[(2 * k) * d + c], V[(2 * k) * d + c]));
            }
            free(b);
            roundtrip(dt, K, V, n, d);
        }
    }
    /* n_tok = 1: every key channel is constant, so keys are exact */
    for (int dt = MSADB_DTYPE_INT8; dt <= MSADB_DTYPE_Q4; dt++) {
        size_t len;
        tu_fill_randn(&rng, K, d, 3.0f);
        tu_fill_randn(&rng, V, d, 3.0f);
        uint8_t *b = encode_new(dt, K, V, 1, d, &len, NULL, NULL);
        CHECK_OK(msadb_block_decode(C, b, len, d, 1, NULL, NULL, 0, Ko, Vo, NULL));
        CHECK(memcmp(Ko, K, d * 4) == 0);
        free(b);
    }
    free(K);
    free(V);
    free(Ko);
    free(Vo);
}

/* Outliers of 1e6 next to tiny values, subnormals, values near FLT_MAX. */
static void test_extremes(void)
{
    const uint32_t n = 33, d = 29;
    float *K = falloc(n * d), *V = falloc(n * d);
    const float scales[] = {1e6f, 1e-30f, 1e-41f, 1e30f, 1.0f};
    for (size_t si = 0; si < sizeof scales / sizeof scales[0]; si++) {
        tu_fill_randn(&rng, K, n * d, scales[si]);
        tu_fill_randn(&rng, V, n * d, 1.0f);
        K[5] = 1e6f;
        K[7 * d + 3] = -1e6f;
        V[3 * d + 1] = 1e6f;
        V[4 * d + 2] = 1e-30f;
        V[9 * d + 2] = -3.0e38f;
        V[9 * d + 3] = 3.0e38f;
        for (int dt = 0; dt <= MSADB_DTYPE_Q4; dt++)
            roundtrip(dt, K, V, n, d);
    }
    /* whole block at the edge of f32: parameters must keep every value finite */
    for (size_t i = 0; i < (size_t)n * d; i++) {
        K[i] = (i & 1 ? 1.0f : -1.0f) * 3.4e38f * ((float)(i % 7) / 6.0f);
        V[i] = (i % 3 ? -3.4028235e38f : 3.4028235e38f);
    }
    for (int dt = MSADB_DTYPE_INT8; dt <= MSADB_DTYPE_Q4; dt++) {
        size_t len;
        float *Ko = falloc(n * d), *Vo = falloc(n * d);
        uint8_t *b = encode_new(dt, K, V, n, d, &len, NULL, NULL);
        CHECK_OK(msadb_block_decode(C, b, len, d, n, NULL, NULL, 0, Ko, Vo, NULL));
        for (size_t i = 0; i < (size_t)n * d; i++)
            CHECK(isfinite(Ko[i]) && isfinite(Vo[i]));
        free(b);
        free(Ko);
        free(Vo);
    }
    /* ranges [lo, FLT_MAX] wider than FLT_MAX: some have no scale whose top
     * is finite and at least FLT_MAX; they take the largest finite top */
    {
        const uint32_t rn = 4, rd = 64;
        float rk[4 * 64], rv[4 * 64];
        for (uint32_t c = 0; c < rd; c++)
            for (uint32_t t = 0; t < rn; t++) {
                rk[t * rd + c] = t & 1 ? FLT_MAX : -FLT_MAX * (1.0f - (float)c * 0.003f);
                rv[t * rd + c] = c & 1 ? FLT_MAX : -FLT_MAX * (1.0f - (float)(t * rd + c) * 0.001f);
            }
        for (int dt = MSADB_DTYPE_INT8; dt <= MSADB_DTYPE_Q4; dt++)
            roundtrip(dt, rk, rv, rn, rd);
    }
    /* f16 saturates instead of storing infinities */
    {
        float k1[2] = {1e6f, -70000.0f}, v1[2] = {65519.0f, 65520.0f}, ko[2], vo[2];
        size_t len;
        uint8_t *b = encode_new(MSADB_DTYPE_F16, k1, v1, 1, 2, &len, NULL, NULL);
        CHECK_OK(msadb_block_decode(C, b, len, 2, 1, NULL, NULL, 0, ko, vo, NULL));
        CHECK(ko[0] == 65504.0f && ko[1] == -65504.0f && vo[0] == 65504.0f && vo[1] == 65504.0f);
        free(b);
    }
    free(K);
    free(V);
}

/* The f16 path (hardware F16C when compiled in) matches util.c's scalar
 * conversion on every half-way and subnormal corner. */
static void test_f16_conversion(void)
{
    enum { N = 4096, D = 1024 };
    float *K = falloc(N), *V = falloc(N), *Ko = falloc(N);
    for (size_t i = 0; i < N; i++) {
        uint32_t u = (uint32_t)tu_rand(&rng);
        uint32_t e = 100 + (u >> 8) % 45; /* 2^-27 .. 2^17 */
        u = (u & 0x807fffffu) | (e << 23);
        if (i % 4 == 0)
            u = (u & ~0x1fffu) | 0x1000u; /* ties */
        memcpy(&K[i], &u, 4);
        V[i] = 0.0f;
    }
    size_t len;
    uint8_t *b = encode_new(MSADB_DTYPE_F16, K, V, N / D, D, &len, Ko, NULL);
    for (size_t i = 0; i < N; i++)
        CHECK(same_bits(Ko[i], f16_ref(K[i])));
    free(b);
    free(K);
    free(V);
    free(Ko);
}

/* ------------------------------------------------------------------------ */
/* Corruption                                                               */
/* ------------------------------------------------------------------------ */

/* Output buffers of the failure checks, larger than any block they see. */
#define FAIL_BUF (1u << 13)
static float fail_k[FAIL_BUF], fail_v[FAIL_BUF];

/* Decodes and requires failure with outputs untouched. */
static int decode_fails(const uint8_t *b, size_t len, uint32_t d, uint32_t max_tok, const uint8_t *key,
                        const uint8_t *ad, size_t ad_len)
{
    float *Ko = fail_k, *Vo = fail_v;
    size_t nd = FAIL_BUF;
    memset(Ko, 0xa5, nd * 4);
    memset(Vo, 0xa5, nd * 4);
    uint32_t got = 0xdeadbeef;
    int rc = msadb_block_decode(C, b, len, d, max_tok, key, ad, ad_len, Ko, Vo, &got);
    CHECK(rc != 0);
    CHECK(got == 0xdeadbeef);
    for (size_t i = 0; i < nd * 4; i++)
        CHECK(((uint8_t *)Ko)[i] == 0xa5 && ((uint8_t *)Vo)[i] == 0xa5);
    return rc;
}

/* Every single-byte change of a valid block (plain and sealed, every dtype)
 * and every truncation is refused. */
static void test_flips(void)
{
    const uint32_t n = 9, d = 12;
    float *K = falloc(n * d), *V = falloc(n * d), *Ko = falloc(n * d), *Vo = falloc(n * d);
    gen_kv(K, V, n, d);
    const uint8_t xors[] = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff, 0x5a};
    for (int dt = 0; dt <= MSADB_DTYPE_Q4; dt++) {
        size_t plen, slen;
        uint8_t *plain = encode_new(dt, K, V, n, d, &plen, NULL, NULL);
        uint8_t *sealed = seal_new(plain, plen, AD, sizeof AD, &slen);
        for (int sealed_pass = 0; sealed_pass < 2; sealed_pass++) {
            uint8_t *b = sealed_pass ? sealed : plain;
            size_t len = sealed_pass ? slen : plen;
            const uint8_t *key = sealed_pass ? KEY : NULL;
            uint8_t *m = malloc(len + 1);
            CHECK(m);
            for (size_t pos = 0; pos < len; pos++)
                for (size_t x = 0; x < sizeof xors; x++) {
                    memcpy(m, b, len);
                    m[pos] ^= xors[x];
                    int rc = decode_fails(m, len, d, n, key, AD, sizeof AD);
                    CHECK(rc == MSADB_ECORRUPT || (pos == 4 && rc == MSADB_EVERSION));
                }
            for (size_t cut = 0; cut < len; cut++)
                CHECK(decode_fails(b, cut, d, n, key, AD, sizeof AD) == MSADB_ECORRUPT);
            memcpy(m, b, len);
            m[len] = 0;
            CHECK(decode_fails(m, len + 1, d, n, key, AD, sizeof AD) == MSADB_ECORRUPT);
            free(m);
        }
        free(plain);
        free(sealed);
    }
    free(K);
    free(V);
    free(Ko);
    free(Vo);
}

/* Bytes that pass the CRC (as an attacker can arrange) but break a
 * structural rule: each must be refused with ECORRUPT, outputs untouched.
 * The cases below share the block shape of HOSTILE_N tokens of HOSTILE_D. */
enum { HOSTILE_N = 6, HOSTILE_D = 10 };

/* Fixture: a hand-built int8 block (f32 parameters, stored raw, no zstd,
 * unshuffled) with the CRC fixed up; variant 0 is well formed, 1..8 each
 * break one rule (non-finite or negative parameters, an overflowing top
 * code, an unknown flag, the reserved byte, the raw length, the dtype).
 * Returns the block's length. */
static size_t hostile_int8_block(uint8_t *blk, int variant)
{
    const uint32_t n = HOSTILE_N, d = HOSTILE_D;
    const size_t nd = (size_t)n * d;
    size_t raw_len = 2 * d * 4 + 2 * n * 4 + 2 * nd;
    uint8_t *p = blk + 24;
    for (size_t i = 0; i < d; i++) {
        float m = -1.0f, s = 0.01f;
        if (variant == 1 && i == 3)
            m = INFINITY;
        if (variant == 2 && i == 4)
            s = NAN;
        if (variant == 3 && i == 5)
            s = -0.5f;
        if (variant == 4 && i == 6)
            m = 3.0e38f, s = 1e37f; /* top code overflows */
        memcpy(p + 4 * i, &m, 4);
        memcpy(p + 4 * (d + i), &s, 4);
    }
    for (size_t t = 0; t < n; t++) {
        float m = 0.0f, s = 1.0f / 255.0f;
        memcpy(p + 8 * d + 4 * t, &m, 4);
        memcpy(p + 8 * d + 4 * (n + t), &s, 4);
    }
    memset(p + 8 * d + 8 * n, 0x80, 2 * nd);
    uint8_t flags = F_KPAR32 | F_VPAR32;
    uint8_t dtype = MSADB_DTYPE_INT8, reserved = 0;
    uint32_t rl = (uint32_t)raw_len, nn = n, dd = d;
    if (variant == 5)
        flags |= 32; /* unknown flag */
    if (variant == 6)
        reserved = 1;
    if (variant == 7)
        rl -= 1;
    if (variant == 8)
        dtype = 5;
    memcpy(blk, "MSB1", 4);
    blk[4] = 1, blk[5] = dtype, blk[6] = flags, blk[7] = reserved;
    msadb_put_le16(blk + 8, (uint16_t)nn);
    msadb_put_le16(blk + 10, (uint16_t)dd);
    msadb_put_le32(blk + 12, rl);
    msadb_put_le32(blk + 16, (uint32_t)raw_len);
    fix_crc(blk, 24 + raw_len);
    return 24 + raw_len;
}

/* The well-formed hand-built block decodes, to the formula. */
static void test_hostile_int8_wellformed(void)
{
    const uint32_t n = HOSTILE_N, d = HOSTILE_D;
    float *Ko = falloc((size_t)n * d), *Vo = falloc((size_t)n * d);
    uint8_t blk[1024];
    size_t len = hostile_int8_block(blk, 0);
    CHECK_OK(msadb_block_decode(C, blk, len, d, n, NULL, NULL, 0, Ko, Vo, NULL));
    CHECK(same_bits(Ko[0], fmaf(128.0f, 0.01f, -1.0f)) &&
          same_bits(Vo[0], fmaf(128.0f, 1.0f / 255.0f, 0.0f)));
    free(Ko);
    free(Vo);
}

/* Each broken variant of the hand-built block is refused. */
static void test_hostile_int8_broken(void)
{
    uint8_t blk[1024];
    for (int variant = 1; variant < 9; variant++) {
        size_t len = hostile_int8_block(blk, variant);
        CHECK(decode_fails(blk, len, HOSTILE_D, HOSTILE_N, NULL, NULL, 0) == MSADB_ECORRUPT);
    }
}

/* Header fields of a real block of every dtype changed with the CRC fixed
 * up; n_tok above max_tok; a head_dim other than the expected one. */
static void test_hostile_header_fields(void)
{
    const uint32_t n = HOSTILE_N, d = HOSTILE_D;
    float K[60], V[60];
    gen_kv(K, V, n, d);
    for (int dt = 0; dt <= MSADB_DTYPE_Q4; dt++) {
        size_t len;
        uint8_t *b = encode_new(dt, K, V, n, d, &len, NULL, NULL);
        uint8_t m[2048];
        CHECK(len + 64 < sizeof m);
        /* header fields changed with the CRC fixed up */
        for (int f = 0; f < 9; f++) {
            memcpy(m, b, len);
            switch (f) {
            case 0: msadb_put_le16(m + 8, (uint16_t)(n + 1)); break;
            case 1: msadb_put_le16(m + 8, 0); break;
            case 2: msadb_put_le16(m + 10, (uint16_t)(d + 1)); break;
            case 3: msadb_put_le16(m + 10, 0); break;
            case 4: msadb_put_le32(m + 12, msadb_get_le32(m + 12) + 1); break;
            case 5: msadb_put_le32(m + 16, msadb_get_le32(m + 16) - 1); break;
            case 6: m[6] |= MSADB_BLOCK_F_ENCRYPTED; break;
            case 7: m[6] ^= MSADB_BLOCK_F_ZSTD; break;
            case 8: m[6] |= (dt >= MSADB_DTYPE_INT8 ? 64 : F_KPAR32); break;
            }
            fix_crc(m, len);
            int rc = decode_fails(m, len, d, FAIL_BUF / d, NULL, NULL, 0);
            /* a zstd block marked encrypted may pass the size checks */
            CHECK(rc == MSADB_ECORRUPT || (f == 6 && rc == MSADB_EKEY));
        }
        /* n_tok above max_tok, head_dim not the expected one */
        CHECK(decode_fails(b, len, d, n - 1, NULL, NULL, 0) == MSADB_ECORRUPT);
        CHECK(decode_fails(b, len, d + 1, n, NULL, NULL, 0) == MSADB_ECORRUPT);
        free(b);
    }
}

/* zstd frames that are not exactly one frame of exactly raw_len bytes are
 * refused; the same bytes recompressed at another level decode. */
static void test_hostile_zstd_frames(void)
{
    for (int dt = 0; dt <= MSADB_DTYPE_Q4; dt++) {
        float zk[16 * 16], zv[16 * 16];
        for (size_t i = 0; i < 256; i++)
            zk[i] = (float)(i % 5), zv[i] = (float)(i % 3) * 0.25f; /* compressible */
        size_t len;
        uint8_t *b = encode_new(dt, zk, zv, 16, 16, &len, NULL, NULL);
        CHECK(b[6] & MSADB_BLOCK_F_ZSTD);
        msadb_block_header h;
        CHECK_OK(msadb_block_peek(b, len, &h));
        uint8_t m[8192], raw[8192];
        CHECK(h.raw_len <= sizeof raw && len + 64 < sizeof m);
        CHECK(ZSTD_decompress(raw, sizeof raw, b + 24, len - 24) == h.raw_len);
        /* trailing byte after the frame */
        memcpy(m, b, len);
        m[len] = 0;
        msadb_put_le32(m + 16, (uint32_t)(len + 1 - 24));
        fix_crc(m, len + 1);
        CHECK(decode_fails(m, len + 1, 16, 16, NULL, NULL, 0) == MSADB_ECORRUPT);
        /* two frames that together make raw_len bytes */
        size_t half = h.raw_len / 2;
        size_t z1 = ZSTD_compress(m + 24, sizeof m - 24, raw, half, 1);
        CHECK(!ZSTD_isError(z1));
        size_t z2 = ZSTD_compress(m + 24 + z1, sizeof m - 24 - z1, raw + half, h.raw_len - half, 1);
        CHECK(!ZSTD_isError(z2) && z1 + z2 < h.raw_len);
        memcpy(m, b, 24);
        msadb_put_le32(m + 16, (uint32_t)(z1 + z2));
        fix_crc(m, 24 + z1 + z2);
        CHECK(decode_fails(m, 24 + z1 + z2, 16, 16, NULL, NULL, 0) == MSADB_ECORRUPT);
        /* one frame holding one byte too few or too many */
        for (int delta = -1; delta <= 1; delta += 2) {
            size_t z = ZSTD_compress(m + 24, sizeof m - 24, raw, h.raw_len + delta, 1);
            CHECK(!ZSTD_isError(z) && z < h.raw_len);
            msadb_put_le32(m + 16, (uint32_t)z);
            fix_crc(m, 24 + z);
            CHECK(decode_fails(m, 24 + z, 16, 16, NULL, NULL, 0) == MSADB_ECORRUPT);
        }
        /* the well-formed frame, recompressed at another level, is fine */
        size_t z = ZSTD_compress(m + 24, sizeof m - 24, raw, h.raw_len, 19);
        CHECK(!ZSTD_isError(z) && z < h.raw_len);
        msadb_put_le32(m + 16, (uint32_t)z);
        fix_crc(m, 24 + z);
        CHECK_OK(msadb_block_decode(C, m, 24 + z, 16, 16, NULL, NULL, 0, fail_k, fail_v, NULL));
        free(b);
    }
}

/* A tiny block marked encrypted: too short to hold nonce and tag. */
static void test_hostile_tiny_sealed(void)
{
    float k1[1] = {1}, v1[1] = {2};
    size_t len;
    uint8_t *b = encode_new(MSADB_DTYPE_F16, k1, v1, 1, 1, &len, NULL, NULL);
    b[6] |= MSADB_BLOCK_F_ENCRYPTED;
    fix_crc(b, len);
    CHECK(decode_fails(b, len, 1, 1, KEY, AD, sizeof AD) == MSADB_ECORRUPT);
    free(b);
}

/* A non-finite f16 element or a set q4 padding nibble, stored raw. */
static void test_hostile_raw_elements(void)
{
    float k1[3] = {1, 2, 3}, v1[3] = {4, 5, 6};
    size_t len;
    uint8_t *b = encode_new(MSADB_DTYPE_F16, k1, v1, 1, 3, &len, NULL, NULL);
    CHECK(!(b[6] & MSADB_BLOCK_F_ZSTD)); /* too small to compress */
    b[24 + 6 + 1] = 0x7c; /* K[1]'s high byte (shuffled plane 1): inf or nan */
    fix_crc(b, len);
    CHECK(decode_fails(b, len, 3, 1, NULL, NULL, 0) == MSADB_ECORRUPT);
    free(b);
    b = encode_new(MSADB_DTYPE_Q4, k1, v1, 1, 3, &len, NULL, NULL);
    CHECK(!(b[6] & MSADB_BLOCK_F_ZSTD));
    /* raw: kpar 2*3*2, vpar 2*1*2, kq 2 bytes, vq 2 bytes */
    b[24 + 12 + 4 + 1] |= 0x10;
    fix_crc(b, len);
    CHECK(decode_fails(b, len, 3, 1, NULL, NULL, 0) == MSADB_ECORRUPT);
    free(b);
}

/* ------------------------------------------------------------------------ */
/* Sealing, versions, limits                                                */
/* ------------------------------------------------------------------------ */

static void test_seal(void)
{
    const uint32_t n = 16, d = 24;
    float *K = falloc(n * d), *V = falloc(n * d), *Ko = falloc(n * d), *Vo = falloc(n * d);
    gen_kv(K, V, n, d);
    uint8_t key2[32];
    memcpy(key2, KEY, 32);
    key2[31] ^= 1;
    uint8_t ad2[32];
    memcpy(ad2, AD, 32);
    ad2[31] ^= 0x40; /* the same block id in another plane / block */
    for (int dt = 0; dt <= MSADB_DTYPE_Q4; dt++) {
        size_t len, slen, slen2;
        uint8_t *b = encode_new(dt, K, V, n, d, &len, NULL, NULL);
        uint8_t *s = seal_new(b, len, AD, sizeof AD, &slen);
        CHECK(s[6] & MSADB_BLOCK_F_ENCRYPTED);
        CHECK_OK(msadb_block_decode(C, s, slen, d, n, KEY, AD, sizeof AD, Ko, Vo, NULL));
        CHECK(decode_fails(s, slen, d, n, key2, AD, sizeof AD) == MSADB_EAUTH);
        CHECK(decode_fails(s, slen, d, n, KEY, ad2, sizeof ad2) == MSADB_EAUTH);
        CHECK(decode_fails(s, slen, d, n, KEY, AD, sizeof AD - 1) == MSADB_EAUTH);
        CHECK(decode_fails(s, slen, d, n, KEY, NULL, 0) == MSADB_EAUTH);
        CHECK(decode_fails(s, slen, d, n, NULL, AD, sizeof AD) == MSADB_EKEY);
        /* a plain block where a sealed one is expected (downgrade) */
        CHECK(decode_fails(b, len, d, n, KEY, AD, sizeof AD) == MSADB_EAUTH);
        /* nonces are random: two seals differ, both open */
        uint8_t *s2 = seal_new(b, len, ad2, sizeof ad2, &slen2);
        CHECK(slen2 == slen && memcmp(s, s2, slen) != 0);
        CHECK_OK(msadb_block_decode(C, s2, slen2, d, n, KEY, ad2, sizeof ad2, Ko, Vo, NULL));
        /* authenticated header: any change, even with the CRC fixed, fails */
        for (size_t pos = 5; pos < 20; pos++) {
            uint8_t *m = malloc(slen);
            CHECK(m);
            memcpy(m, s, slen);
            m[pos] ^= pos == 6 ? 0x01 : 0x80;
            fix_crc(m, slen);
            int rc = decode_fails(m, slen, d, FAIL_BUF / d, KEY, AD, sizeof AD);
            CHECK(rc == MSADB_EAUTH || rc == MSADB_ECORRUPT);
            free(m);
        }
        /* sealing errors */
        size_t out_len;
        uint8_t *o = malloc(slen + 64);
        CHECK(o);
        CHECK_RC(msadb_block_seal(s, slen, KEY, AD, sizeof AD, o, slen + 64, &out_len), MSADB_EINVAL);
        CHECK_RC(msadb_block_seal(b, len, KEY, AD, sizeof AD, o, len + 39, &out_len), MSADB_ELIMIT);
        CHECK_RC(msadb_block_seal(b, len, KEY, AD, sizeof AD, b, len + 40, &out_len), MSADB_EINVAL);
        CHECK_RC(msadb_block_seal(b, len - 1, KEY, AD, sizeof AD, o, len + 40, &out_len), MSADB_ECORRUPT);
        CHECK_RC(msadb_block_seal(b, len, KEY, NULL, 5, o, len + 40, &out_len), MSADB_EINVAL);
        /* long additional data goes through the heap path */
        uint8_t big_ad[1000];
        memset(big_ad, 7, sizeof big_ad);
        CHECK_OK(msadb_block_seal(b, len, KEY, big_ad, sizeof big_ad, o, len + 40, &out_len));
        CHECK_OK(msadb_block_decode(C, o, out_len, d, n, KEY, big_ad, sizeof big_ad, Ko, Vo, NULL));
        big_ad[999] = 8;
        CHECK(decode_fails(o, out_len, d, n, KEY, big_ad, sizeof big_ad) == MSADB_EAUTH);
        free(o);
        free(s2);
        free(s);
        free(b);
    }
    free(K);
    free(V);
    free(Ko);
    free(Vo);
}

static void test_version_and_limits(void)
{
    const uint32_t n = 8, d = 8;
    float K[64], V[64], Ko[64], Vo[64];
    gen_kv(K, V, n, d);
    size_t len;
    uint8_t *b = encode_new(MSADB_DTYPE_INT8, K, V, n, d, &len, NULL, NULL);
    uint8_t m[4096];
    CHECK(len <= sizeof m);
    /* newer version: refused as such, whatever the CRC says */
    memcpy(m, b, len);
    m[4] = 2;
    CHECK(decode_fails(m, len, d, n, NULL, NULL, 0) == MSADB_EVERSION);
    fix_crc(m, len);
    CHECK(decode_fails(m, len, d, n, NULL, NULL, 0) == MSADB_EVERSION);
    msadb_block_header h;
    CHECK_RC(msadb_block_peek(m, len, &h), MSADB_EVERSION);
    m[4] = 0;
    fix_crc(m, len);
    CHECK(decode_fails(m, len, d, n, NULL, NULL, 0) == MSADB_ECORRUPT);
    memcpy(m, b, len);
    m[0] = 'X';
    CHECK_RC(msadb_block_peek(m, len, &h), MSADB_ECORRUPT);

    /* encode limits */
    for (int dt = 0; dt <= MSADB_DTYPE_Q4; dt++) {
        size_t need, l2;
        uint8_t *e = encode_new(dt, K, V, n, d, &need, NULL, NULL);
        uint8_t out[8192];
        CHECK_RC(msadb_block_encode(C, dt, K, V, n, d, out, need - 1, &l2, NULL, NULL), MSADB_ELIMIT);
        CHECK_RC(msadb_block_encode(C, dt, K, V, n, d, out, 0, &l2, NULL, NULL), MSADB_ELIMIT);
        CHECK_OK(msadb_block_encode(C, dt, K, V, n, d, out, need, &l2, NULL, NULL));
        CHECK(l2 == need && memcmp(out, e, need) == 0); /* deterministic */
        free(e);
    }
    uint8_t out[8192];
    size_t l2;
    CHECK_RC(msadb_block_encode(C, 5, K, V, n, d, out, sizeof out, &l2, NULL, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_block_encode(C, -1, K, V, n, d, out, sizeof out, &l2, NULL, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_block_encode(C, 0, K, V, 0, d, out, sizeof out, &l2, NULL, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_block_encode(C, 0, K, V, n, 0, out, sizeof out, &l2, NULL, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_block_encode(C, 0, K, V, MSADB_MAX_BLOCK + 1, d, out, sizeof out, &l2, NULL, NULL),
             MSADB_EINVAL);
    CHECK_RC(msadb_block_encode(C, 0, K, V, n, MSADB_MAX_HEAD_DIM + 1, out, sizeof out, &l2, NULL, NULL),
             MSADB_EINVAL);
    CHECK_RC(msadb_block_encode(NULL, 0, K, V, n, d, out, sizeof out, &l2, NULL, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_block_encode(C, 0, NULL, V, n, d, out, sizeof out, &l2, NULL, NULL), MSADB_EINVAL);
    float bad[64];
    memcpy(bad, K, sizeof bad);
    bad[17] = NAN;
    CHECK_RC(msadb_block_encode(C, MSADB_DTYPE_INT8, bad, V, n, d, out, sizeof out, &l2, NULL, NULL),
             MSADB_ENONFINITE);
    bad[17] = -INFINITY;
    CHECK_RC(msadb_block_encode(C, MSADB_DTYPE_F32, K, bad, n, d, out, sizeof out, &l2, NULL, NULL),
             MSADB_ENONFINITE);
    CHECK(msadb_block_bound(5, 1, 1) == 0 && msadb_block_bound(0, 0, 1) == 0);
    CHECK(msadb_block_bound(MSADB_DTYPE_F32, MSADB_MAX_BLOCK, MSADB_MAX_HEAD_DIM) ==
          24 + 8ull * MSADB_MAX_BLOCK * MSADB_MAX_HEAD_DIM + 40);
    /* decode argument checks */
    CHECK_RC(msadb_block_decode(NULL, b, len, d, n, NULL, NULL, 0, Ko, Vo, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_block_decode(C, b, len, 0, n, NULL, NULL, 0, Ko, Vo, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_block_decode(C, b, len, d, 0, NULL, NULL, 0, Ko, Vo, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_block_peek(NULL, len, &h), MSADB_EINVAL);
    free(b);
}

/* One codec serves blocks of changing shapes (scratch regrows). */
static void test_reuse(void)
{
    const uint32_t shapes[][2] = {{4, 4}, {512, 512}, {3, 5}, {64, 128}, {1, 1024}, {2, 2}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        uint32_t n = shapes[i][0], d = shapes[i][1];
        float *K = falloc((size_t)n * d), *V = falloc((size_t)n * d);
        gen_kv(K, V, n, d);
        roundtrip((int)(i % 5), K, V, n, d);
        roundtrip(MSADB_DTYPE_INT8, K, V, n, d);
        free(K);
        free(V);
    }
}

/* Re-encoding decoded data gives back the same values (a dump of a store
 * loaded into another store of the same dtype stores the same keys and
 * values): encode(decode(b)) decodes to decode(b), bit for bit. */
static void test_idempotent(void)
{
    const uint32_t shapes[][2] = {{64, 128}, {16, 64}, {37, 33}, {5, 7}, {1, 9}, {64, 1}};
    size_t reblocks = 0, same_bytes = 0;
    for (int style = 0; style < 7; style++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (int rep = 0; rep < 8; rep++) {
                uint32_t n = shapes[si][0], d = shapes[si][1];
                size_t nd = (size_t)n * d;
                float *K = falloc(nd), *V = falloc(nd), *K1 = falloc(nd), *V1 = falloc(nd);
                float *K2 = falloc(nd), *V2 = falloc(nd);
                gen_kv(K, V, n, d);
                for (size_t i = 0; i < nd; i++) {
                    switch (style) {
                    case 1: /* outliers beyond f16: f32 parameters */
                        if (i % 97 == 5)
                            K[i] = 1e6f, V[i] = -3e5f;
                        break;
                    case 2: /* tiny values */
                        K[i] *= 1e-6f, V[i] *= 1e-9f;
                        break;
                    case 3: /* narrow ranges far from zero */
                        K[i] = 1000.0f + K[i] * 0.01f, V[i] = -77.0f + V[i] * 0.001f;
                        break;
                    case 4: /* constants among normal groups */
                        if (i % d < d / 3)
                            K[i] = 0.3f;
                        if (i / d < n / 3)
                            V[i] = -1.7f;
                        break;
                    case 5: /* wide dynamic range */
                        K[i] = ldexpf(K[i], (int)(i % 40) - 20), V[i] = ldexpf(V[i], (int)(i % 31) - 15);
                        break;
                    case 6: /* near the f32 limits */
                        K[i] *= 1e37f, V[i] *= 5e37f;
                        break;
                    default:
                        break;
                    }
                }
                for (int dt = 0; dt <= MSADB_DTYPE_Q4; dt++) {
                    size_t l1, l2;
                    uint8_t *b1 = encode_new(dt, K, V, n, d, &l1, K1, V1);
                    uint8_t *b2 = encode_new(dt, K1, V1, n, d, &l2, K2, V2);
                    if (memcmp(K1, K2, nd * 4) || memcmp(V1, V2, nd * 4)) {
                        size_t bad = 0;
                        for (size_t i = 0; i < nd; i++)
                            bad += !same_bits(K1[i], K2[i]) || !same_bits(V1[i], V2[i]);
                        fprintf(stderr, "not idempotent: dtype %d style %d shape %ux%u: %zu elements, "
                                "flags %x/%x\n", dt, style, n, d, bad, b1[6], b2[6]);
                        CHECK(0);
                    }
                    reblocks++;
                    same_bytes += l1 == l2 && !memcmp(b1, b2, l1);
                    free(b1);
                    free(b2);
                }
                free(K);
                free(V);
                free(K1);
                free(V1);
                free(K2);
                free(V2);
            }
    printf("idempotent: %zu re-encoded blocks, %zu byte-identical\n", reblocks, same_bytes);
}

/* Size targets at d = 128, B = 64 on Gaussian data with outlier key
 * channels, header included, averaged over 16 blocks.
 *
 * The targets (int8 <= 0.53 and q4 <= 0.28 of f16) are those of 8- and
 * 4-bit codes plus f16 parameters against 16-bit elements:
 * (8192*2*1 + 768 + 24) / (8192*2*2 + 24) = 0.524 and 0.274.  Checked
 * against the f16 block before zstd (header + raw_len).  zstd also shrinks
 * the f16 block itself (to ~0.92: its shuffled sign/exponent bytes are
 * redundant) but cannot shrink near-uniform 8-bit codes much, so against
 * the compressed f16 block int8 lands near 0.55; that is checked with a
 * looser bound, as a guard against regressions. */
static void test_sizes(void)
{
    const uint32_t n = 64, d = 128, blocks = 16;
    float *K = falloc(n * d), *V = falloc(n * d);
    double bytes[5] = {0}, f16_raw = 0;
    for (uint32_t i = 0; i < blocks; i++) {
        gen_kv(K, V, n, d);
        for (int dt = 0; dt <= MSADB_DTYPE_Q4; dt++) {
            size_t len;
            uint8_t *b = encode_new(dt, K, V, n, d, &len, NULL, NULL);
            bytes[dt] += (double)len;
            if (dt >= MSADB_DTYPE_INT8)
                CHECK(!(b[6] & (F_KPAR32 | F_VPAR32))); /* f16 parameters */
            if (dt == MSADB_DTYPE_F16) {
                msadb_block_header h;
                CHECK_OK(msadb_block_peek(b, len, &h));
                f16_raw += 24.0 + h.raw_len;
            }
            free(b);
        }
    }
    double i8 = bytes[MSADB_DTYPE_INT8], q4 = bytes[MSADB_DTYPE_Q4], f16 = bytes[MSADB_DTYPE_F16];
    printf("sizes per token: f32 %.1f f16 %.1f (raw %.1f) bf16 %.1f int8 %.1f q4 %.1f\n",
           bytes[0] / (blocks * n), f16 / (blocks * n), f16_raw / (blocks * n), bytes[2] / (blocks * n),
           i8 / (blocks * n), q4 / (blocks * n));
    printf("ratios: vs f16 before zstd int8 %.4f q4 %.4f; vs f16 encoded int8 %.4f q4 %.4f\n", i8 / f16_raw,
           q4 / f16_raw, i8 / f16, q4 / f16);
    CHECK(i8 / f16_raw <= 0.53);
    CHECK(q4 / f16_raw <= 0.28);
    CHECK(i8 / f16 <= 0.56);
    CHECK(q4 / f16 <= 0.285);
    free(K);
    free(V);
}

int main(void)
{
    C = msadb_codec_new(1);
    CHECK(C);
    test_shapes();
    test_constants();
    test_extremes();
    test_f16_conversion();
    test_flips();
    test_hostile_int8_wellformed();
    test_hostile_int8_broken();
    test_hostile_header_fields();
    test_hostile_zstd_frames();
    test_hostile_tiny_sealed();
    test_hostile_raw_elements();
    test_seal();
    test_version_and_limits();
    test_reuse();
    test_idempotent();
    test_sizes();
    msadb_codec_free(C);
    /* other levels produce blocks the default codec reads */
    msadb_codec *c19 = msadb_codec_new(19), *c0 = msadb_codec_new(0);
    CHECK(c19 && c0);
    float K[256], V[256], Ko[256];
    gen_kv(K, V, 16, 16);
    uint8_t b[4096];
    size_t len;
    CHECK_OK(msadb_block_encode(c19, MSADB_DTYPE_BF16, K, V, 16, 16, b, sizeof b, &len, NULL, NULL));
    CHECK_OK(msadb_block_decode(c0, b, len, 16, 16, NULL, NULL, 0, Ko, NULL, NULL));
    msadb_codec_free(c19);
    msadb_codec_free(c0);
    msadb_codec_free(NULL);
    printf("test_codec: ok\n");
    return 0;
}
