/* fuzz_block.c -- fuzz target for the block codec (libmsadb/codec/codec.c).
 *
 * Byte 0 picks the mode:
 *   even: the rest is a stored block, decoded as is (bit 1 of byte 0 set:
 *         with its CRC recomputed first, so that mutations reach the checks
 *         behind it), without a key and with the fuzz key;
 *   odd:  bytes 1..12 shape a valid block (dtype, tokens, head_dim, sealed,
 *         value style, seed), the block is encoded and checked, then the
 *         rest of the input is a list of corruptions applied to a copy,
 *         which is decoded.
 * Invariants (abort() on violation):
 *   - a failed decode leaves the outputs and *n_tok untouched;
 *   - a successful decode gives finite values and agrees with peek;
 *   - a valid block decodes to exactly the encoder's K_deq / V_deq, within
 *     the quantization error bound of the input;
 *   - a corrupted block fails, unless its bytes are unchanged (then it
 *     decodes to the original), or, for a plain block, its CRC matches
 *     (recomputed on purpose, or forged by the fuzzer): nothing
 *     authenticates a plain block beyond its CRC;
 *   - a corrupted sealed block always fails, whatever its CRC. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "core/crypto.h"
#include "msadb.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ELEMS (1u << 16) /* output floats per plane in mode A */
#define B_MAX_TOK 64u
#define B_MAX_D 96u

static const uint8_t FUZZ_KEY[32] = "msadb fuzz key, 32 bytes long!!";
static const uint8_t FUZZ_AD[32] = "fuzz binding: store/space/plane";

static msadb_codec *codec;
static float *out_k, *out_v;

#define REQUIRE(cond)                                                                 \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "fuzz_block: %s:%d: %s\n", __FILE__, __LINE__, #cond);    \
            abort();                                                                  \
        }                                                                             \
    } while (0)

static void setup(void)
{
    if (codec)
        return;
    codec = msadb_codec_new(1);
    out_k = malloc(MAX_ELEMS * sizeof(float));
    out_v = malloc(MAX_ELEMS * sizeof(float));
    REQUIRE(codec && out_k && out_v);
}

static uint32_t block_crc(const uint8_t *b, size_t len)
{
    return msadb_crc32c(msadb_crc32c(0, b, 20), b + MSADB_BLOCK_HEADER, len - MSADB_BLOCK_HEADER);
}

static int crc_matches(const uint8_t *b, size_t len)
{
    return len >= MSADB_BLOCK_HEADER && msadb_get_le32(b + 20) == block_crc(b, len);
}

static const uint32_t SENTINEL = 0x7fa5a5a5u; /* a NaN no decoder writes */

/* Decodes with outputs prefilled with a sentinel; checks the invariants
 * that hold for any input; returns the decode result. */
static int decode_checked(const uint8_t *b, size_t len, uint32_t d, uint32_t max_tok, const uint8_t *key,
                          const uint8_t *ad, size_t ad_len, int want_k, int want_v)
{
    size_t nd = (size_t)max_tok * d;
    REQUIRE(nd <= MAX_ELEMS);
    for (size_t i = 0; i < nd; i++) {
        memcpy(&out_k[i], &SENTINEL, 4);
        memcpy(&out_v[i], &SENTINEL, 4);
    }
    uint32_t n = 0xdeadbeefu;
    int rc = msadb_block_decode(codec, b, len, d, max_tok, key, ad, ad_len, want_k ? out_k : NULL,
                                want_v ? out_v : NULL, &n);
    msadb_block_header h;
    int prc = msadb_block_peek(b, len, &h);
    if (rc) {
        REQUIRE(rc < 0 && n == 0xdeadbeefu);
        for (size_t i = 0; i < nd; i++)
            REQUIRE(!memcmp(&out_k[i], &SENTINEL, 4) && !memcmp(&out_v[i], &SENTINEL, 4));
        return rc;
    }
    REQUIRE(prc == 0 && h.n_tok == n && h.head_dim == d && n >= 1 && n <= max_tok);
    REQUIRE(!(h.flags & MSADB_BLOCK_F_ENCRYPTED) || key);
    REQUIRE((h.flags & MSADB_BLOCK_F_ENCRYPTED) || !key);
    for (size_t i = 0; i < (size_t)n * d; i++) {
        REQUIRE(!want_k || isfinite(out_k[i]));
        REQUIRE(!want_v || isfinite(out_v[i]));
    }
    /* nothing written past the block */
    for (size_t i = (size_t)n * d; i < nd; i++)
        REQUIRE(!memcmp(&out_k[i], &SENTINEL, 4) && !memcmp(&out_v[i], &SENTINEL, 4));
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Mode A: arbitrary bytes                                                  */
/* ------------------------------------------------------------------------ */

static void fuzz_decode(uint8_t mode, const uint8_t *data, size_t size)
{
    uint8_t *b = malloc(size ? size : 1);
    REQUIRE(b);
    if (size)
        memcpy(b, data, size);
    if ((mode & 2) && size >= MSADB_BLOCK_HEADER)
        msadb_put_le32(b + 20, block_crc(b, size));
    /* let the shape checks pass when the header is plausible */
    uint32_t d = size >= 12 ? msadb_get_le16(b + 10) : 1;
    uint32_t n = size >= 10 ? msadb_get_le16(b + 8) : 1;
    if (d < 1 || d > MSADB_MAX_HEAD_DIM)
        d = 1 + (d % MSADB_MAX_HEAD_DIM);
    if (n < 1)
        n = 1;
    if ((size_t)n * d > MAX_ELEMS)
        n = MAX_ELEMS / d;
    int want_k = !(mode & 4), want_v = !(mode & 8);
    decode_checked(b, size, d, n, NULL, NULL, 0, want_k, want_v);
    decode_checked(b, size, d, n, FUZZ_KEY, FUZZ_AD, sizeof FUZZ_AD, want_k, want_v);
    free(b);
}

/* ------------------------------------------------------------------------ */
/* Mode B: valid block, then corruptions                                    */
/* ------------------------------------------------------------------------ */

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Values in one of several styles: gaussian, wild magnitudes (subnormal to
 * near FLT_MAX), constant channels and tokens, or the input bytes read as
 * floats. */
static void make_values(float *x, size_t nd, uint32_t d, int style, uint64_t *s, const uint8_t *raw,
                        size_t raw_len)
{
    for (size_t i = 0; i < nd; i++) {
        uint64_t r = mix(s);
        float v;
        switch (style) {
        case 0: /* roughly gaussian: sum of uniforms */
            v = ((float)(r & 0xffff) + (float)((r >> 16) & 0xffff) + (float)((r >> 32) & 0xffff) -
                 98302.5f) / 18918.0f;
            break;
        case 1: { /* any finite magnitude */
            uint32_t u = (uint32_t)(r >> 32);
            u = (u & 0x807fffffu) | ((uint32_t)((r >> 8) % 255) << 23);
            memcpy(&v, &u, 4);
            break;
        }
        case 2: /* few distinct values: constant channels / tokens appear */
            v = (float)((i % d) % 3) - (float)((i / d) % 2) * 0.3f;
            break;
        default: {
            uint32_t u = 0;
            if (raw_len)
                for (int k = 0; k < 4; k++)
                    u |= (uint32_t)raw[(4 * i + k) % raw_len] << (8 * k);
            memcpy(&v, &u, 4);
            if (!isfinite(v))
                v = 0.0f;
            break;
        }
        }
        x[i] = v;
    }
}

/* Loose quantization bound from the block's true ranges: the stored scale
 * is at most the ideal (max - min) / levels inflated by 1/64 (f16
 * parameters) or a few ulps (f32). */
static void check_error(int dtype, const float *x, const float *y, uint32_t n, uint32_t d, int per_channel)
{
    if (dtype == MSADB_DTYPE_F32) {
        REQUIRE(!memcmp(x, y, (size_t)n * d * 4));
        return;
    }
    if (dtype != MSADB_DTYPE_INT8 && dtype != MSADB_DTYPE_Q4) {
        float rel = dtype == MSADB_DTYPE_F16 ? 0x1p-11f : 0x1p-8f;
        for (size_t i = 0; i < (size_t)n * d; i++) {
            float a = fabsf(x[i]);
            if (dtype == MSADB_DTYPE_F16 && a > 65504.0f)
                REQUIRE(fabsf(y[i]) == 65504.0f);
            else if (dtype == MSADB_DTYPE_BF16 && a > 3.3895314e38f)
                REQUIRE(fabsf(y[i]) == 3.3895314e38f);
            else
                REQUIRE(fabsf(y[i] - x[i]) <= a * rel + 0x1p-24f);
        }
        return;
    }
    double levels = dtype == MSADB_DTYPE_Q4 ? 15.0 : 255.0;
    uint32_t groups = per_channel ? d : n, len = per_channel ? n : d;
    for (uint32_t g = 0; g < groups; g++) {
        double lo = INFINITY, hi = -INFINITY;
        for (uint32_t j = 0; j < len; j++) {
            size_t i = per_channel ? (size_t)j * d + g : (size_t)g * d + j;
            lo = x[i] < lo ? x[i] : lo;
            hi = x[i] > hi ? x[i] : hi;
        }
        double step = (hi - lo) / levels * (1.0 + 1.0 / 64) + 1e-6 * (hi - lo);
        for (uint32_t j = 0; j < len; j++) {
            size_t i = per_channel ? (size_t)j * d + g : (size_t)g * d + j;
            double err = fabs((double)y[i] - x[i]);
            double eps = 0x1p-20 * (fabs(lo) + fabs(hi)) + levels * 1.2e-38;
            if (!(err <= step / 2 + eps)) {
                fprintf(stderr, "dtype %d x %.9g y %.9g lo %.9g hi %.9g err %.3g\n", dtype, x[i], y[i],
                        lo, hi, err);
                REQUIRE(0);
            }
        }
    }
}

static void fuzz_corrupt(const uint8_t *data, size_t size)
{
    uint8_t p[12] = {0};
    memcpy(p, data, size < 12 ? size : 12);
    const uint8_t *ops = size > 12 ? data + 12 : NULL;
    size_t n_ops = size > 12 ? (size - 12) / 4 : 0;

    int dtype = p[0] % 5, sealed = (p[0] >> 3) & 1, fix = (p[0] >> 4) & 1;
    uint32_t n = 1 + p[1] % B_MAX_TOK, d = 1 + p[2] % B_MAX_D;
    int style = p[3] % 4;
    uint64_t seed = 0;
    memcpy(&seed, p + 4, 8);
    size_t nd = (size_t)n * d;

    float *K = malloc(nd * 4), *V = malloc(nd * 4), *Kd = malloc(nd * 4), *Vd = malloc(nd * 4);
    size_t cap = msadb_block_bound(dtype, n, d) + 64;
    uint8_t *blk = malloc(cap), *sb = malloc(cap), *m = malloc(cap + n_ops + 1);
    REQUIRE(K && V && Kd && Vd && blk && sb && m);
    make_values(K, nd, d, style, &seed, ops, n_ops * 4);
    make_values(V, nd, d, (style + (p[3] >> 2)) % 4, &seed, ops, n_ops * 4);

    size_t len = 0;
    REQUIRE(msadb_block_encode(codec, dtype, K, V, n, d, blk, cap, &len, Kd, Vd) == 0);
    check_error(dtype, K, Kd, n, d, 1);
    check_error(dtype, V, Vd, n, d, 0);
    const uint8_t *key = NULL;
    if (sealed) {
        size_t slen = 0;
        REQUIRE(msadb_block_seal(blk, len, FUZZ_KEY, FUZZ_AD, sizeof FUZZ_AD, sb, cap, &slen) == 0);
        memcpy(blk, sb, slen);
        len = slen;
        key = FUZZ_KEY;
    }
    /* the pristine block decodes to exactly K_deq / V_deq */
    REQUIRE(decode_checked(blk, len, d, n, key, FUZZ_AD, sizeof FUZZ_AD, 1, 1) == 0);
    REQUIRE(!memcmp(out_k, Kd, nd * 4) && !memcmp(out_v, Vd, nd * 4));

    /* corruptions: 4 bytes each, kind / position (2 bytes) / value */
    size_t mlen = len;
    memcpy(m, blk, len);
    for (size_t i = 0; i < n_ops; i++) {
        const uint8_t *o = ops + 4 * i;
        size_t pos = mlen ? (size_t)(o[1] | (o[2] << 8)) % mlen : 0;
        switch (o[0] % 4) {
        case 0:
            if (mlen)
                m[pos] ^= o[3];
            break;
        case 1:
            if (mlen)
                m[pos] = o[3];
            break;
        case 2:
            mlen = (size_t)(o[1] | (o[2] << 8)) % (mlen + 1);
            break;
        default:
            if (mlen < cap + n_ops)
                m[mlen++] = o[3];
            break;
        }
    }
    if (fix && mlen >= MSADB_BLOCK_HEADER)
        msadb_put_le32(m + 20, block_crc(m, mlen));
    int same = mlen == len && !memcmp(m, blk, len);
    int rc = decode_checked(m, mlen, d, n, key, FUZZ_AD, sizeof FUZZ_AD, 1, 1);
    if (same) {
        REQUIRE(rc == 0 && !memcmp(out_k, Kd, nd * 4) && !memcmp(out_v, Vd, nd * 4));
    } else if (rc == 0) {
        /* changed bytes were accepted: only a plain block whose CRC matches
         * may be; a sealed one never */
        REQUIRE(!sealed && crc_matches(m, mlen));
    }
    free(K);
    free(V);
    free(Kd);
    free(Vd);
    free(blk);
    free(sb);
    free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    if (size == 0)
        return 0;
    if (data[0] & 1)
        fuzz_corrupt(data + 1, size - 1);
    else
        fuzz_decode(data[0], data + 1, size - 1);
    return 0;
}
