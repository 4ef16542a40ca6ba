/* util.h -- small internal helpers shared by the library's modules:
 * big-endian keys, half-precision conversions, CRC-32C, aligned memory. */
#ifndef MSADB_UTIL_H
#define MSADB_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MSADB_HIDDEN __attribute__((visibility("hidden")))

static inline void msadb_put_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void msadb_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void msadb_put_be64(uint8_t *p, uint64_t v)
{
    msadb_put_be32(p, (uint32_t)(v >> 32));
    msadb_put_be32(p + 4, (uint32_t)v);
}
static inline uint16_t msadb_get_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t msadb_get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t msadb_get_be64(const uint8_t *p)
{
    return ((uint64_t)msadb_get_be32(p) << 32) | msadb_get_be32(p + 4);
}
/* Little-endian fixed-width fields inside values (host is little-endian;
 * memcpy keeps unaligned access defined). */
static inline void msadb_put_le16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void msadb_put_le32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void msadb_put_le64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint16_t msadb_get_le16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t msadb_get_le32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t msadb_get_le64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* IEEE half <-> float.  f32_to_f16 rounds to nearest even; the _down/_up
 * variants round toward -inf / +inf (used so stored min/max bounds still
 * bound the keys). */
MSADB_HIDDEN float msadb_f16_to_f32(uint16_t h);
MSADB_HIDDEN uint16_t msadb_f32_to_f16(float f);
MSADB_HIDDEN uint16_t msadb_f32_to_f16_down(float f);
MSADB_HIDDEN uint16_t msadb_f32_to_f16_up(float f);
MSADB_HIDDEN float msadb_bf16_to_f32(uint16_t h);
MSADB_HIDDEN uint16_t msadb_f32_to_bf16(float f);

/* Converts n elements of an input tensor (f32, f16 or bf16) to f32.
 * Returns the number of non-finite values seen. */
MSADB_HIDDEN size_t msadb_to_f32(int dtype, const void *src, float *dst, size_t n);

/* CRC-32C (Castagnoli), hardware-accelerated when SSE4.2 is available. */
MSADB_HIDDEN uint32_t msadb_crc32c(uint32_t crc, const void *buf, size_t len);

/* Grows the array *pp (elements of `size` bytes, room for *cap of them) to
 * room for at least n, doubling from `first`; contents are kept and the
 * array never shrinks.  0, or MSADB_ENOMEM (size overflow or no memory:
 * *pp and *cap unchanged).  The one growth rule of the library: every
 * buffer that grows with its input uses it. */
MSADB_HIDDEN int msadb_grow(void *pp, size_t *cap, size_t n, size_t size, size_t first);
/* The same for 64-byte aligned scratch whose content need not be kept
 * (freed with msadb_afree). */
MSADB_HIDDEN int msadb_grow_scratch(void *pp, size_t *cap, size_t n, size_t size, size_t first);

/* Arrays that share one capacity *cap, grown together to room for n
 * (msadb_grow's rule; scratch: msadb_grow_scratch's).  On MSADB_ENOMEM
 * *cap is unchanged and every array still holds at least *cap. */
typedef struct msadb_array {
    void *pp;    /* address of the array pointer */
    size_t size; /* bytes per element */
} msadb_array;
MSADB_HIDDEN int msadb_grow_arrays(const msadb_array *a, size_t k, size_t *cap, size_t n, size_t first,
                                   int scratch);

/* 64-byte aligned allocation; free with msadb_afree(). */
MSADB_HIDDEN void *msadb_aalloc(size_t bytes);
MSADB_HIDDEN void msadb_afree(void *p);

/* Whether n bytes are valid UTF-8 (shortest forms, no surrogates, at most
 * U+10FFFF). */
MSADB_HIDDEN int msadb_utf8_valid(const char *s, size_t n);

/* A thread count: the environment variable `var` (a decimal number), else
 * the online CPUs; at least 1, at most max. */
MSADB_HIDDEN int msadb_env_threads(const char *var, int max);

/* The largest |x| of n finite floats (check finiteness first: a NaN would
 * count as larger than any number). */
MSADB_HIDDEN float msadb_max_abs(const float *x, size_t n);

#endif
