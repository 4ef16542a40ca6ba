/* util.c -- half-precision conversions, CRC-32C, aligned allocation. */
#include "core/util.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "msadb.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

float msadb_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalize */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t msadb_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) { /* result subnormal or zero */
        if (absx < 0x33000000u)
            return (uint16_t)sign;
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((absx >> 13) - (112u << 10));
    uint32_t rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1)))
        r++;
    return (uint16_t)(sign | r);
}

/* Next half value toward +inf / -inf from h (finite h). */
static uint16_t f16_step(uint16_t h, int up)
{
    if ((h & 0x7fffu) == 0) /* +-0 */
        return up ? 0x0001u : 0x8001u;
    int neg = (h & 0x8000u) != 0;
    if (neg == !up)
        return (uint16_t)(h + 1); /* away from zero */
    return (uint16_t)(h - 1);
}

uint16_t msadb_f32_to_f16_down(float f)
{
    uint16_t h = msadb_f32_to_f16(f);
    if (!isfinite(f))
        return h;
    if (h == 0x7c00u) /* finite value rounded up to +inf */
        return 0x7bffu;
    if ((h & 0x7c00u) != 0x7c00u && msadb_f16_to_f32(h) > f)
        h = f16_step(h, 0);
    return h;
}

uint16_t msadb_f32_to_f16_up(float f)
{
    uint16_t h = msadb_f32_to_f16(f);
    if (!isfinite(f))
        return h;
    if (h == 0xfc00u) /* finite value rounded down to -inf */
        return 0xfbffu;
    if ((h & 0x7c00u) != 0x7c00u && msadb_f16_to_f32(h) < f)
        h = f16_step(h, 1);
    return h;
}

float msadb_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t msadb_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u); /* quiet nan */
    uint32_t lsb = (x >> 16) & 1u;
    x += 0x7fffu + lsb;
    return (uint16_t)(x >> 16);
}

size_t msadb_to_f32(int dtype, const void *src, float *dst, size_t n)
{
    size_t bad = 0;
    if (dtype == MSADB_DTYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
    } else if (dtype == MSADB_DTYPE_F16) {
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = msadb_f16_to_f32(msadb_get_le16(s + 2 * i));
    } else {
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = msadb_bf16_to_f32(msadb_get_le16(s + 2 * i));
    }
    for (size_t i = 0; i < n; i++)
        bad += !isfinite(dst[i]);
    return bad;
}

/* CRC-32C, reflected polynomial 0x82F63B78. */
static uint32_t crc_table[8][256];
static pthread_once_t crc_table_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
        crc_table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (uint32_t i = 0; i < 256; i++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t len)
{
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = _mm_crc32_u8(c32, *p++);
    return c32;
}
#endif

/* The portable (table) path on its own, so that tests can check it against
 * the hardware path on machines that never take it.  Declared here rather
 * than in util.h: only tests/test_util.c calls it. */
MSADB_HIDDEN uint32_t msadb_crc32c_sw(uint32_t crc, const void *buf, size_t len);

uint32_t msadb_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    /* pthread_once: two threads filling the table at once would be a data
     * race even though they write the same values */
    pthread_once(&crc_table_once, crc_init);
    crc = ~crc;
    while (len >= 8) {
        uint32_t lo = msadb_get_le32(p) ^ crc, hi = msadb_get_le32(p + 4);
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^ crc_table[5][(lo >> 16) & 0xff] ^
              crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
              crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

uint32_t msadb_crc32c(uint32_t crc, const void *buf, size_t len)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("sse4.2"))
        return ~crc_hw(~crc, buf, len);
#endif
    return msadb_crc32c_sw(crc, buf, len);
}

void *msadb_aalloc(size_t bytes)
{
    void *p = NULL;
    if (bytes == 0)
        bytes = 64;
    if (bytes > SIZE_MAX - 63) /* rounding up below would wrap to a tiny size */
        return NULL;
    bytes = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, bytes) != 0)
        return NULL;
    return p;
}

void msadb_afree(void *p) { free(p); }

/* The capacity for n elements: first, doubled until it holds n; 0 on
 * overflow of n * size. */
static size_t grown_cap(size_t cap, size_t n, size_t size, size_t first)
{
    size_t nc = cap ? cap : (first ? first : 1);
    while (nc < n)
        nc = nc > SIZE_MAX / 2 ? n : nc * 2;
    return size && nc > SIZE_MAX / size ? 0 : nc;
}

int msadb_grow(void *pp, size_t *cap, size_t n, size_t size, size_t first)
{
    if (n <= *cap)
        return 0;
    size_t nc = grown_cap(*cap, n, size, first);
    void *np = nc ? realloc(*(void **)pp, nc * size) : NULL;
    if (!np)
        return MSADB_ENOMEM;
    *(void **)pp = np;
    *cap = nc;
    return 0;
}

int msadb_grow_scratch(void *pp, size_t *cap, size_t n, size_t size, size_t first)
{
    if (n <= *cap)
        return 0;
    size_t nc = grown_cap(*cap, n, size, first);
    void *np = nc ? msadb_aalloc(nc * size) : NULL;
    if (!np)
        return MSADB_ENOMEM;
    msadb_afree(*(void **)pp);
    *(void **)pp = np;
    *cap = nc;
    return 0;
}

int msadb_grow_arrays(const msadb_array *a, size_t k, size_t *cap, size_t n, size_t first, int scratch)
{
    size_t c = *cap;
    for (size_t i = 0; i < k; i++) {
        c = *cap;
        int rc = scratch ? msadb_grow_scratch(a[i].pp, &c, n, a[i].size, first)
                         : msadb_grow(a[i].pp, &c, n, a[i].size, first);
        if (rc)
            return rc;
    }
    *cap = c;
    return 0;
}

int msadb_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (len == 0 || len > n - i)
            return 0;
        uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        i += len;
    }
    return 1;
}

int msadb_env_threads(const char *var, int max)
{
    const char *e = getenv(var);
    long n = e && *e ? strtol(e, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    if (n > max)
        n = max;
    return (int)n;
}

float msadb_max_abs(const float *x, size_t n)
{
    /* On the bits: without the sign, finite floats order as unsigned
     * integers, and an integer max vectorizes where a float one may not
     * (NaN rules). */
    uint32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        u &= 0x7fffffffu;
        m = u > m ? u : m;
    }
    float f;
    memcpy(&f, &m, 4);
    return f;
}
