/* test_util.c -- libmsadb/core/util.c: half-precision conversions (known values,
 * exhaustive round trips, exhaustive rounding at every midpoint, directed
 * rounding), CRC-32C (check value, hardware path against the table path and
 * a bitwise reference), byte-order helpers, aligned allocation. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msadb.h"
#include "testutil.h"
#include "core/util.h"

/* The table path of msadb_crc32c, exported by util.c for this test only. */
uint32_t msadb_crc32c_sw(uint32_t crc, const void *buf, size_t len);

static uint64_t rng = 0xc0ffee;

static float bits_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static int h_isnan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu); }

/* ------------------------------------------------------------------------ */
/* f16                                                                      */
/* ------------------------------------------------------------------------ */

static void test_f16_known(void)
{
    static const struct {
        uint16_t h;
        float f;
    } known[] = {
        {0x0000, 0.0f},           {0x8000, -0.0f},          {0x3c00, 1.0f},
        {0xc000, -2.0f},          {0x3555, 0.333251953125f}, {0x7bff, 65504.0f},
        {0xfbff, -65504.0f},      {0x0400, 0x1p-14f},       {0x03ff, 0x1.ff8p-15f},
        {0x0001, 0x1p-24f},       {0x8001, -0x1p-24f},      {0x3bff, 0.99951171875f},
        {0x3c01, 1.0009765625f},  {0x7c00, INFINITY},       {0xfc00, -INFINITY},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        CHECK(f_bits(msadb_f16_to_f32(known[i].h)) == f_bits(known[i].f));
        CHECK(msadb_f32_to_f16(known[i].f) == known[i].h);
    }
    CHECK(isnan(msadb_f16_to_f32(0x7e00)) && isnan(msadb_f16_to_f32(0xfc01)));
    CHECK(h_isnan(msadb_f32_to_f16(NAN)));
    /* rounding corners */
    CHECK(msadb_f32_to_f16(65519.0f) == 0x7bff);   /* below the overflow midpoint */
    CHECK(msadb_f32_to_f16(65520.0f) == 0x7c00);   /* the midpoint rounds to even: inf */
    CHECK(msadb_f32_to_f16(1e6f) == 0x7c00 && msadb_f32_to_f16(-1e6f) == 0xfc00);
    CHECK(msadb_f32_to_f16(0x1p-25f) == 0x0000);   /* half the least subnormal: to even */
    CHECK(msadb_f32_to_f16(0x1.000002p-25f) == 0x0001);
    CHECK(msadb_f32_to_f16(0x1.8p-24f) == 0x0002); /* 1.5 ulp: tie to even */
    CHECK(msadb_f32_to_f16(0x1p-30f) == 0x0000 && msadb_f32_to_f16(-0x1p-30f) == 0x8000);
    CHECK(msadb_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);       /* tie, even below */
    CHECK(msadb_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);   /* tie, even above */
    CHECK(msadb_f32_to_f16(0x1.ffcp-15f) == 0x0400);          /* subnormal rounds up to normal */
    CHECK(msadb_f32_to_f16(bits_f(1)) == 0x0000);             /* f32 subnormal */
    /* directed */
    CHECK(msadb_f32_to_f16_down(1e6f) == 0x7bff && msadb_f32_to_f16_up(1e6f) == 0x7c00);
    CHECK(msadb_f32_to_f16_down(-1e6f) == 0xfc00 && msadb_f32_to_f16_up(-1e6f) == 0xfbff);
    CHECK(msadb_f32_to_f16_down(0x1p-30f) == 0x0000 && msadb_f32_to_f16_up(0x1p-30f) == 0x0001);
    CHECK(msadb_f32_to_f16_down(-0x1p-30f) == 0x8001 && msadb_f32_to_f16_up(-0x1p-30f) == 0x8000);
    CHECK(msadb_f32_to_f16_down(1.0f) == 0x3c00 && msadb_f32_to_f16_up(1.0f) == 0x3c00);
    CHECK(msadb_f32_to_f16_down(INFINITY) == 0x7c00 && msadb_f32_to_f16_up(-INFINITY) == 0xfc00);
}

/* Every half survives half -> float -> half; NaNs stay NaNs. */
static void test_f16_exhaustive(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = msadb_f16_to_f32((uint16_t)h);
        if (h_isnan((uint16_t)h)) {
            CHECK(isnan(f) && h_isnan(msadb_f32_to_f16(f)));
            continue;
        }
        CHECK(msadb_f32_to_f16(f) == h);
        CHECK(msadb_f32_to_f16_down(f) == h && msadb_f32_to_f16_up(f) == h);
        /* the float is exactly the half's value */
        if ((h & 0x7c00u) != 0x7c00u) {
            uint32_t e = (h >> 10) & 31u, m = h & 0x3ffu;
            double v = e ? ldexp(1024 + m, (int)e - 25) : ldexp(m, -24);
            CHECK((double)fabsf(f) == v && !!signbit(f) == !!(h & 0x8000u));
        }
    }
}

/* Rounding at every midpoint between adjacent finite halves: the midpoint
 * goes to the even one, the floats just beside it to their side. */
static void test_f16_midpoints(void)
{
    for (uint32_t h = 0; h < 0x7bff; h++) {
        for (int neg = 0; neg < 2; neg++) {
            uint16_t a = (uint16_t)(h | (neg ? 0x8000u : 0)), b = (uint16_t)(a + 1);
            float fa = msadb_f16_to_f32(a), fb = msadb_f16_to_f32(b);
            float mid = (fa + fb) / 2; /* exact: halves have 11-bit significands */
            CHECK((double)mid == ((double)fa + fb) / 2);
            uint16_t even = (a & 1) ? b : a;
            CHECK(msadb_f32_to_f16(mid) == even);
            float lo = nextafterf(mid, fa), hi = nextafterf(mid, fb);
            CHECK(msadb_f32_to_f16(lo) == a && msadb_f32_to_f16(hi) == b);
            /* directed rounding brackets every value strictly inside */
            uint16_t dn = neg ? b : a, up = neg ? a : b; /* toward -inf / +inf */
            CHECK(msadb_f32_to_f16_down(mid) == dn && msadb_f32_to_f16_up(mid) == up);
            CHECK(msadb_f32_to_f16_down(lo) == dn && msadb_f32_to_f16_up(hi) == up);
        }
    }
}

/* down(x) <= x <= up(x), and they are the nearest halves on each side, for
 * random floats over the whole f32 range (subnormals and overflow range
 * included). */
static void test_f16_directed_random(void)
{
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)tu_rand(&rng);
        if (i % 3 == 0) /* concentrate on the f16 range and just around it */
            u = (u & 0x807fffffu) | ((uint32_t)(96 + (u >> 23) % 60) << 23);
        float x = bits_f(u);
        if (!isfinite(x))
            continue;
        uint16_t dn = msadb_f32_to_f16_down(x), up = msadb_f32_to_f16_up(x);
        float fd = msadb_f16_to_f32(dn), fu = msadb_f16_to_f32(up);
        CHECK(fd <= x && x <= fu);
        if (fd == x) {
            CHECK(fu == x);
        } else {
            /* adjacent: nothing representable strictly between */
            CHECK(fu > fd);
            uint16_t n = msadb_f32_to_f16(x);
            CHECK(n == dn || n == up || (fd == -INFINITY && n == 0xfc00) || (fu == INFINITY && n == 0x7c00));
            if (isfinite(fd) && isfinite(fu)) {
                float mid = (fd + fu) / 2;
                CHECK(msadb_f32_to_f16_down(mid) == dn || mid == fd);
            }
        }
        /* round to nearest picks the closer of the two */
        uint16_t n = msadb_f32_to_f16(x);
        if (isfinite(fd) && isfinite(fu) && fd != fu && (n & 0x7c00u) != 0x7c00u) {
            double dd = (double)x - fd, du = (double)fu - x;
            CHECK(n == (dd < du ? dn : du < dd ? up : ((dn & 1) ? up : dn)));
        }
    }
}

/* ------------------------------------------------------------------------ */
/* bf16                                                                     */
/* ------------------------------------------------------------------------ */

static void test_bf16(void)
{
    CHECK(msadb_f32_to_bf16(1.0f) == 0x3f80 && msadb_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(msadb_f32_to_bf16(-2.0f) == 0xc000);
    CHECK(msadb_f32_to_bf16(bits_f(0x3f808000u)) == 0x3f80); /* tie, even below */
    CHECK(msadb_f32_to_bf16(bits_f(0x3f818000u)) == 0x3f82); /* tie, even above */
    CHECK(msadb_f32_to_bf16(bits_f(0x3f808001u)) == 0x3f81);
    CHECK(msadb_f32_to_bf16(3.4028235e38f) == 0x7f80);      /* rounds to inf */
    CHECK(msadb_f32_to_bf16(INFINITY) == 0x7f80 && msadb_f32_to_bf16(-INFINITY) == 0xff80);
    CHECK((msadb_f32_to_bf16(NAN) & 0x7f80u) == 0x7f80u && (msadb_f32_to_bf16(NAN) & 0x7fu));
    /* a signalling NaN whose payload lies only in the dropped bits stays NaN */
    CHECK((msadb_f32_to_bf16(bits_f(0x7f800001u)) & 0x7fu) != 0);
    for (uint32_t h = 0; h < 65536; h++) {
        float f = msadb_bf16_to_f32((uint16_t)h);
        CHECK(f_bits(f) == h << 16);
        if (isnan(f))
            CHECK(isnan(msadb_bf16_to_f32(msadb_f32_to_bf16(f))));
        else
            CHECK(msadb_f32_to_bf16(f) == h);
        /* midpoint to the next one, for finite non-max values */
        if (!isnan(f) && (h & 0x7fffu) < 0x7f7fu) {
            uint32_t mid = (h << 16) | 0x8000u;
            CHECK(msadb_f32_to_bf16(bits_f(mid)) == ((h & 1) ? h + 1 : h));
            CHECK(msadb_f32_to_bf16(bits_f(mid - 1)) == h && msadb_f32_to_bf16(bits_f(mid + 1)) == h + 1);
        }
    }
}

static void test_to_f32(void)
{
    uint8_t h[8], b[8];
    msadb_put_le16(h, 0x3c00);
    msadb_put_le16(h + 2, 0xc000);
    msadb_put_le16(h + 4, 0x7c00);
    msadb_put_le16(h + 6, 0x7e00);
    msadb_put_le16(b, 0x3f80);
    msadb_put_le16(b + 2, 0xc000);
    msadb_put_le16(b + 4, 0x7f80);
    msadb_put_le16(b + 6, 0x4049);
    float out[4], in[4] = {1.0f, NAN, -INFINITY, 2.0f};
    CHECK(msadb_to_f32(MSADB_DTYPE_F16, h, out, 4) == 2);
    CHECK(out[0] == 1.0f && out[1] == -2.0f && isinf(out[2]) && isnan(out[3]));
    CHECK(msadb_to_f32(MSADB_DTYPE_BF16, b, out, 4) == 1);
    CHECK(out[0] == 1.0f && out[1] == -2.0f && isinf(out[2]) && out[3] == 3.140625f);
    CHECK(msadb_to_f32(MSADB_DTYPE_F32, in, out, 4) == 2);
    CHECK(out[0] == 1.0f && out[3] == 2.0f);
    CHECK(msadb_to_f32(MSADB_DTYPE_F32, in, out, 0) == 0);
}

/* ------------------------------------------------------------------------ */
/* CRC-32C                                                                  */
/* ------------------------------------------------------------------------ */

/* Bit at a time, from the definition (reflected 0x1EDC6F41). */
static uint32_t crc_ref(uint32_t crc, const uint8_t *p, size_t len)
{
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void test_crc(void)
{
    const char *check = "123456789";
    CHECK(msadb_crc32c(0, check, 9) == 0xE3069283u);
    CHECK(msadb_crc32c_sw(0, check, 9) == 0xE3069283u);
    CHECK(crc_ref(0, (const uint8_t *)check, 9) == 0xE3069283u);
    CHECK(msadb_crc32c(0, NULL, 0) == 0 && msadb_crc32c_sw(0, NULL, 0) == 0);
    /* 32 bytes of zeros and of 0xff (RFC 3720, B.4) */
    uint8_t v[32];
    memset(v, 0, sizeof v);
    CHECK(msadb_crc32c(0, v, 32) == 0x8A9136AAu && msadb_crc32c_sw(0, v, 32) == 0x8A9136AAu);
    memset(v, 0xff, sizeof v);
    CHECK(msadb_crc32c(0, v, 32) == 0x62A8AB43u && msadb_crc32c_sw(0, v, 32) == 0x62A8AB43u);

    /* hardware (when present) and table paths agree with the definition for
     * every length up to 300, at every alignment, and chain correctly */
    enum { N = 4096 };
    uint8_t *buf = malloc(N + 16);
    CHECK(buf);
    for (size_t i = 0; i < N + 16; i++)
        buf[i] = (uint8_t)tu_rand(&rng);
    for (size_t off = 0; off < 8; off++)
        for (size_t len = 0; len <= 300; len++) {
            uint32_t r = crc_ref(0, buf + off, len);
            CHECK(msadb_crc32c(0, buf + off, len) == r);
            CHECK(msadb_crc32c_sw(0, buf + off, len) == r);
        }
    for (int i = 0; i < 2000; i++) {
        size_t off = tu_rand(&rng) % 16, len = tu_rand(&rng) % N, cut = len ? tu_rand(&rng) % len : 0;
        uint32_t seed = (uint32_t)tu_rand(&rng);
        uint32_t whole = msadb_crc32c(seed, buf + off, len);
        CHECK(whole == msadb_crc32c_sw(seed, buf + off, len));
        CHECK(whole == crc_ref(seed, buf + off, len));
        CHECK(whole == msadb_crc32c(msadb_crc32c(seed, buf + off, cut), buf + off + cut, len - cut));
        CHECK(whole == msadb_crc32c_sw(msadb_crc32c(seed, buf + off, cut), buf + off + cut, len - cut));
    }
    free(buf);
}

/* ------------------------------------------------------------------------ */
/* Byte order, allocation                                                   */
/* ------------------------------------------------------------------------ */

static void test_bytes_and_alloc(void)
{
    uint8_t b[8];
    msadb_put_be16(b, 0x1234);
    CHECK(b[0] == 0x12 && b[1] == 0x34 && msadb_get_be16(b) == 0x1234);
    msadb_put_be32(b, 0x89abcdefu);
    CHECK(b[0] == 0x89 && b[3] == 0xef && msadb_get_be32(b) == 0x89abcdefu);
    msadb_put_be64(b, 0x0102030405060708ull);
    CHECK(b[0] == 1 && b[7] == 8 && msadb_get_be64(b) == 0x0102030405060708ull);
    msadb_put_le16(b, 0x1234);
    CHECK(b[0] == 0x34 && msadb_get_le16(b) == 0x1234);
    msadb_put_le32(b, 0x89abcdefu);
    CHECK(b[0] == 0xef && msadb_get_le32(b) == 0x89abcdefu);
    msadb_put_le64(b, 0x0102030405060708ull);
    CHECK(b[0] == 8 && msadb_get_le64(b) == 0x0102030405060708ull);
    /* big-endian keys sort like the numbers */
    uint8_t k1[8], k2[8];
    msadb_put_be64(k1, 255);
    msadb_put_be64(k2, 256);
    CHECK(memcmp(k1, k2, 8) < 0);

    for (size_t n = 0; n < 300; n += 37) {
        uint8_t *p = msadb_aalloc(n);
        CHECK(p && ((uintptr_t)p & 63) == 0);
        memset(p, 1, n);
        msadb_afree(p);
    }
    CHECK(msadb_aalloc(SIZE_MAX) == NULL);
    CHECK(msadb_aalloc(SIZE_MAX - 10) == NULL);
    msadb_afree(NULL);
}

/* msadb_max_abs against a plain loop: signs, zeros, tiny and huge values,
 * the largest anywhere in the array (vector body and tail). */
static void test_max_abs(void)
{
    uint64_t seed = 5;
    float x[203] = {0};
    CHECK(msadb_max_abs(x, 0) == 0.0f);
    for (int trial = 0; trial < 200; trial++) {
        size_t n = 1 + (size_t)(tu_rand(&seed) % 203);
        for (size_t i = 0; i < n; i++)
            x[i] = tu_randn(&seed) * (trial % 3 == 0 ? 1e-30f : trial % 3 == 1 ? 1.0f : 3e30f);
        if (trial % 5 == 0)
            x[tu_rand(&seed) % n] = -65504.5f * (trial % 3 == 0 ? 1e-20f : 1.0f);
        if (trial % 7 == 0)
            for (size_t i = 0; i < n; i++)
                x[i] = i % 2 ? -0.0f : 0.0f;
        float want = 0.0f;
        for (size_t i = 0; i < n; i++)
            want = fabsf(x[i]) > want ? fabsf(x[i]) : want;
        float got = msadb_max_abs(x, n);
        CHECK(memcmp(&got, &want, 4) == 0);
    }
}

int main(void)
{
    test_max_abs();
    test_f16_known();
    test_f16_exhaustive();
    test_f16_midpoints();
    test_f16_directed_random();
    test_bf16();
    test_to_f32();
    test_crc();
    test_bytes_and_alloc();
    printf("test_util: ok\n");
    return 0;
}
