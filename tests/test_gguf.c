/* test_gguf.c -- the strict GGUF reader (libmsadb/runtime/gguf.c).
 *
 * 1. A sample written by tools/memmodel/gguf.py (every metadata type, tensors in F32,
 *    F16, BF16 and Q8_0 next to F32 twins holding the values the reader must
 *    produce, alignment 64) reads back exactly, by path and from memory.
 *    Needs MSADB_SOURCE_ROOT and python3 with numpy; skipped otherwise.
 * 2. Hostile files built here byte by byte: truncated at every length, huge
 *    counts and lengths, bad types, nested arrays, bad dims, overflowing
 *    sizes, misaligned / out-of-file / overlapping tensors, duplicate or
 *    malformed names, bad alignment values, other versions -- each refused
 *    with the expected code.
 * 3. Random mutations of valid files: whatever opens is walked completely
 *    (run under sanitizers, this catches any out-of-bounds read). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/gguf.h"
#include "msadb.h"
#include "testutil.h"

/* ------------------------------------------------------------------------ */
/* a byte builder                                                           */
/* ------------------------------------------------------------------------ */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *x, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        CHECK(b->p);
    }
    if (n)
        memcpy(b->p + b->n, x, n);
    b->n += n;
}
static void put_u8(buf *b, uint8_t v) { put(b, &v, 1); }
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_strn(buf *b, const char *s, size_t n)
{
    put_u64(b, n);
    put(b, s, n);
}
static void put_str(buf *b, const char *s) { put_strn(b, s, strlen(s)); }
static void pad_to(buf *b, size_t a)
{
    while (b->n % a)
        put_u8(b, 0);
}
static void patch_u32(buf *b, size_t at, uint32_t v) { memcpy(b->p + at, &v, 4); }
static void patch_u64(buf *b, size_t at, uint64_t v) { memcpy(b->p + at, &v, 8); }

static void header(buf *b, uint32_t version, uint64_t nt, uint64_t nkv)
{
    put(b, "GGUF", 4);
    put_u32(b, version);
    put_u64(b, nt);
    put_u64(b, nkv);
}

static void tensor_info(buf *b, const char *name, uint32_t nd, const uint64_t *ne, uint32_t type,
                        uint64_t off)
{
    put_str(b, name);
    put_u32(b, nd);
    for (uint32_t i = 0; i < nd; i++)
        put_u64(b, ne[i]);
    put_u32(b, type);
    put_u64(b, off);
}

/* The base file and where its fields are, for patching. */
typedef struct base {
    buf b;
    size_t kv0_keylen, kv1_type, arr_type, arr_count, strarr_elem0_len;
    size_t t0_ndims, t0_ne0, t0_ne1, t0_type, t0_off, t1_off;
} base;

/* 3 metadata entries, an F32 [4 x 2] tensor at 0 and a Q8_0 [32] tensor at
 * 32, data ending exactly at the end of the file (so every truncation is an
 * error). */
static void make_base(base *B)
{
    memset(B, 0, sizeof *B);
    buf *b = &B->b;
    header(b, 3, 2, 3);
    B->kv0_keylen = b->n;
    put_str(b, "general.name");
    put_u32(b, MSADB_GGUF_STRING);
    put_str(b, "tiny");
    put_str(b, "a.u32");
    B->kv1_type = b->n;
    put_u32(b, MSADB_GGUF_UINT32);
    put_u32(b, 7);
    put_str(b, "a.arr");
    put_u32(b, MSADB_GGUF_ARRAY);
    B->arr_type = b->n;
    put_u32(b, MSADB_GGUF_STRING);
    B->arr_count = b->n;
    put_u64(b, 2);
    B->strarr_elem0_len = b->n;
    put_str(b, "x");
    put_str(b, "yz");
    put_str(b, "t0");
    B->t0_ndims = b->n;
    put_u32(b, 2);
    B->t0_ne0 = b->n;
    put_u64(b, 4);
    B->t0_ne1 = b->n;
    put_u64(b, 2);
    B->t0_type = b->n;
    put_u32(b, MSADB_GGML_F32);
    B->t0_off = b->n;
    put_u64(b, 0);
    const uint64_t ne1[1] = {32};
    size_t before = b->n;
    tensor_info(b, "t1", 1, ne1, MSADB_GGML_Q8_0, 32);
    B->t1_off = b->n - 8;
    (void)before;
    pad_to(b, 32);
    for (int i = 0; i < 8; i++) {
        float f = (float)i - 3.5f;
        put(b, &f, 4);
    }
    put_u8(b, 0x00); /* f16 scale 0.5 = 0x3800 */
    put_u8(b, 0x38);
    for (int i = 0; i < 32; i++)
        put_u8(b, (uint8_t)(int8_t)(i - 16));
}

static int open_buf(const buf *b, msadb_gguf **g) { return msadb_gguf_open_memory(b->p, b->n, g); }

/* Walks everything a parsed file describes, touching every byte the
 * accessors hand out. */
static unsigned walk(const msadb_gguf *g)
{
    unsigned h = 0;
    for (size_t i = 0; i < msadb_gguf_n_kv(g); i++) {
        const msadb_gguf_kv *kv = msadb_gguf_kv_at(g, i);
        CHECK(kv && msadb_gguf_find(g, kv->key) == kv);
        if (kv->type == MSADB_GGUF_STRING) {
            const char *s;
            size_t n;
            CHECK_OK(msadb_gguf_get_str(g, kv->key, &s, &n));
            for (size_t j = 0; j < n; j++)
                h += (unsigned char)s[j];
        } else if (kv->type == MSADB_GGUF_ARRAY) {
            for (uint64_t j = 0; j < kv->n; j++) {
                if (kv->elem_type == MSADB_GGUF_STRING) {
                    const char *s;
                    size_t n;
                    CHECK_OK(msadb_gguf_arr_str(kv, j, &s, &n));
                    if (n)
                        h += (unsigned char)s[0] + (unsigned char)s[n - 1];
                } else {
                    double d;
                    int64_t v;
                    CHECK_OK(msadb_gguf_arr_f64(kv, j, &d));
                    int rc = msadb_gguf_arr_int(kv, j, &v);
                    CHECK(rc == 0 || rc == MSADB_EDTYPE || rc == MSADB_ECORRUPT);
                    h += (unsigned)(d == d);
                }
            }
        } else {
            int64_t v;
            float f;
            int b;
            (void)msadb_gguf_get_int(g, kv->key, INT64_MIN, INT64_MAX, &v);
            (void)msadb_gguf_get_f32(g, kv->key, &f);
            (void)msadb_gguf_get_bool(g, kv->key, &b);
        }
    }
    for (size_t i = 0; i < msadb_gguf_n_tensors(g); i++) {
        const msadb_gguf_tensor *t = msadb_gguf_tensor_at(g, i);
        CHECK(t && msadb_gguf_find_tensor(g, t->name) == t);
        for (uint64_t j = 0; j < t->n_bytes; j++)
            h += t->data[j];
        if (msadb_ggml_convertible(t->type) && t->n_elements) {
            uint32_t blk = msadb_ggml_block_size(t->type);
            float tmp[64];
            uint64_t n = t->n_elements < 32 ? t->n_elements : 32;
            n -= n % blk;
            if (n) {
                CHECK_OK(msadb_gguf_to_f32(t, 0, n, tmp));
                CHECK_OK(msadb_gguf_to_f32(t, t->n_elements - n, n, tmp));
            }
        }
    }
    return h;
}

static void expect_rc(const buf *b, int want, const char *what)
{
    msadb_gguf *g = (msadb_gguf *)1;
    int rc = open_buf(b, &g);
    if (rc != want) {
        fprintf(stderr, "%s: got %d (%s), want %d (%s)\n", what, rc, msadb_strerror(rc), want,
                msadb_strerror(want));
        exit(1);
    }
    if (rc == 0) {
        walk(g);
        msadb_gguf_close(g);
    } else {
        CHECK(g == NULL);
    }
}

/* Copy of the base with one u32/u64 field replaced. */
static void variant_u32(const base *B, size_t at, uint32_t v, int want, const char *what)
{
    buf c = {0};
    put(&c, B->b.p, B->b.n);
    patch_u32(&c, at, v);
    expect_rc(&c, want, what);
    free(c.p);
}

static void variant_u64(const base *B, size_t at, uint64_t v, int want, const char *what)
{
    buf c = {0};
    put(&c, B->b.p, B->b.n);
    patch_u64(&c, at, v);
    expect_rc(&c, want, what);
    free(c.p);
}

/* ------------------------------------------------------------------------ */
/* tests                                                                    */
/* ------------------------------------------------------------------------ */

/* The fixture of the cases below is make_base's file (B). */

/* Metadata, arrays and tensors of the well-formed file read back; wrong
 * types, ranges and buffer sizes are refused. */
static void test_base_read(base *B)
{
    msadb_gguf *g;
    CHECK_OK(open_buf(&B->b, &g));
    CHECK(msadb_gguf_n_kv(g) == 3 && msadb_gguf_n_tensors(g) == 2);
    CHECK(msadb_gguf_alignment(g) == 32);
    int64_t v;
    CHECK_OK(msadb_gguf_get_int(g, "a.u32", 0, 100, &v));
    CHECK(v == 7);
    CHECK_RC(msadb_gguf_get_int(g, "a.u32", 0, 6, &v), MSADB_ECORRUPT);
    CHECK_RC(msadb_gguf_get_int(g, "a.u32", 8, 100, &v), MSADB_ECORRUPT);
    CHECK_RC(msadb_gguf_get_int(g, "general.name", 0, 6, &v), MSADB_EDTYPE);
    CHECK_RC(msadb_gguf_get_int(g, "a.arr", 0, 6, &v), MSADB_EDTYPE);
    CHECK_RC(msadb_gguf_get_int(g, "nope", 0, 6, &v), MSADB_ENOTFOUND);
    char s[8];
    CHECK_OK(msadb_gguf_get_cstr(g, "general.name", s, sizeof s));
    CHECK(!strcmp(s, "tiny"));
    CHECK_RC(msadb_gguf_get_cstr(g, "general.name", s, 4), MSADB_ELIMIT);
    const msadb_gguf_kv *kv;
    uint32_t et;
    uint64_t n;
    CHECK_OK(msadb_gguf_get_arr(g, "a.arr", &kv, &et, &n));
    CHECK(et == MSADB_GGUF_STRING && n == 2);
    const char *p;
    size_t len;
    CHECK_OK(msadb_gguf_arr_str(kv, 1, &p, &len));
    CHECK(len == 2 && !memcmp(p, "yz", 2));
    CHECK_RC(msadb_gguf_arr_str(kv, 2, &p, &len), MSADB_EINVAL);
    CHECK_RC(msadb_gguf_arr_int(kv, 0, &v), MSADB_EDTYPE);
    CHECK_RC(msadb_gguf_get_arr(g, "a.u32", &kv, &et, &n), MSADB_EDTYPE);
    const msadb_gguf_tensor *t;
    CHECK_OK(msadb_gguf_get_tensor(g, "t1", &t));
    CHECK(t->type == MSADB_GGML_Q8_0 && t->n_dims == 1 && t->ne[0] == 32 && t->n_bytes == 34);
    float f[32];
    CHECK_OK(msadb_gguf_to_f32(t, 0, 32, f));
    for (int i = 0; i < 32; i++)
        CHECK(f[i] == 0.5f * (float)(i - 16));
    CHECK_RC(msadb_gguf_to_f32(t, 1, 31, f), MSADB_EINVAL);
    CHECK_RC(msadb_gguf_to_f32(t, 0, 64, f), MSADB_EINVAL);
    CHECK_OK(msadb_gguf_get_tensor(g, "t0", &t));
    CHECK(t->ne[0] == 4 && t->ne[1] == 2 && t->ne[2] == 1 && t->n_elements == 8);
    CHECK_OK(msadb_gguf_to_f32(t, 2, 6, f));
    CHECK(f[0] == -1.5f && f[5] == 3.5f);
    CHECK_RC(msadb_gguf_get_tensor(g, "t2", &t), MSADB_ENOTFOUND);
    CHECK(msadb_gguf_data_offset(g) == B->b.n - 32 - 34);
    msadb_gguf_close(g);
}

/* Every truncation is refused. */
static void test_base_truncations(base *B)
{
    msadb_gguf *g;
    for (size_t cut = 0; cut < B->b.n; cut++) {
        CHECK_RC(msadb_gguf_open_memory(B->b.p, cut, &g), MSADB_ECORRUPT);
        CHECK(g == NULL);
    }
    CHECK_RC(msadb_gguf_open_memory(NULL, 0, &g), MSADB_ECORRUPT);
    CHECK_RC(msadb_gguf_open_memory(NULL, 5, &g), MSADB_EINVAL);
}

/* The header's fields changed. */
static void test_base_header(base *B)
{
    variant_u32(B, 0, 0x46554746u, MSADB_ECORRUPT, "bad magic");
    variant_u32(B, 4, 2, MSADB_EVERSION, "version 2");
    variant_u32(B, 4, 4, MSADB_EVERSION, "version 4");
    variant_u32(B, 4, 0x03000000u, MSADB_EVERSION, "big-endian version");
    variant_u64(B, 8, 3, MSADB_ECORRUPT, "one tensor too many");
    variant_u64(B, 8, UINT64_MAX, MSADB_ECORRUPT, "huge tensor count");
    variant_u64(B, 8, (uint64_t)1 << 62, MSADB_ECORRUPT, "huge tensor count 2");
    variant_u64(B, 16, 4, MSADB_ECORRUPT, "one kv too many");
    variant_u64(B, 16, UINT64_MAX, MSADB_ECORRUPT, "huge kv count");
    variant_u64(B, 16, (uint64_t)1 << 61, MSADB_ECORRUPT, "huge kv count 2");
    /* one tensor too few: the second's entry is read as padding, and t0
     * alone is a valid file */
    variant_u64(B, 8, 1, 0, "one tensor too few");
}

/* The metadata's lengths, types and counts changed. */
static void test_base_metadata(base *B)
{
    variant_u64(B, B->kv0_keylen, UINT64_MAX, MSADB_ECORRUPT, "huge key length");
    variant_u64(B, B->kv0_keylen, (uint64_t)1 << 63, MSADB_ECORRUPT, "huge key length 2");
    variant_u64(B, B->kv0_keylen, 0, MSADB_ECORRUPT, "empty key");
    variant_u32(B, B->kv1_type, 13, MSADB_ECORRUPT, "unknown value type");
    variant_u32(B, B->kv1_type, UINT32_MAX, MSADB_ECORRUPT, "unknown value type 2");
    variant_u32(B, B->kv1_type, MSADB_GGUF_UINT64, MSADB_ECORRUPT, "value type wider than value");
    variant_u32(B, B->arr_type, MSADB_GGUF_ARRAY, MSADB_ECORRUPT, "nested array");
    variant_u32(B, B->arr_type, 77, MSADB_ECORRUPT, "unknown element type");
    variant_u32(B, B->arr_type, MSADB_GGUF_UINT64, MSADB_ECORRUPT, "array elements too wide");
    variant_u64(B, B->arr_count, UINT64_MAX, MSADB_ECORRUPT, "huge array count");
    variant_u64(B, B->arr_count, (uint64_t)1 << 61, MSADB_ECORRUPT, "huge array count 2");
    variant_u64(B, B->strarr_elem0_len, UINT64_MAX - 3, MSADB_ECORRUPT, "huge string in array");
    variant_u64(B, B->strarr_elem0_len, 1000, MSADB_ECORRUPT, "long string in array");
}

/* The tensor table's dimensions, types and offsets changed. */
static void test_base_tensor_table(base *B)
{
    variant_u32(B, B->t0_ndims, 0, MSADB_ECORRUPT, "0 dims");
    variant_u32(B, B->t0_ndims, 5, MSADB_ECORRUPT, "5 dims");
    variant_u32(B, B->t0_ndims, UINT32_MAX, MSADB_ECORRUPT, "huge dims");
    variant_u64(B, B->t0_ne0, (uint64_t)1 << 32, MSADB_ECORRUPT, "tensor past the end");
    variant_u64(B, B->t0_ne0, (uint64_t)INT64_MAX + 1, MSADB_ECORRUPT, "dim above int64");
    variant_u64(B, B->t0_ne0, (uint64_t)1 << 62, MSADB_ECORRUPT, "product overflow");
    variant_u64(B, B->t0_ne0, 0, 0, "empty tensor is fine");
    variant_u32(B, B->t0_type, 99, MSADB_EDTYPE, "unknown tensor type");
    variant_u32(B, B->t0_type, UINT32_MAX, MSADB_EDTYPE, "unknown tensor type 2");
    variant_u32(B, B->t0_type, MSADB_GGML_Q8_0, MSADB_ECORRUPT, "q8_0 with ne0 = 4");
    variant_u32(B, B->t0_type, MSADB_GGML_F16, 0, "f16 of the same shape fits");
    variant_u32(B, B->t0_type, MSADB_GGML_F64, MSADB_ECORRUPT, "f64 overlaps t1");
    variant_u64(B, B->t1_off, 0, MSADB_ECORRUPT, "overlapping tensors");
    variant_u64(B, B->t1_off, 33, MSADB_ECORRUPT, "misaligned offset");
    variant_u64(B, B->t1_off, 64, MSADB_ECORRUPT, "offset past the end");
    variant_u64(B, B->t1_off, UINT64_MAX - 31, MSADB_ECORRUPT, "offset overflow");
    variant_u64(B, B->t0_off, 32, MSADB_ECORRUPT, "same offset as t1");
}

static void test_base(void)
{
    base B;
    make_base(&B);
    test_base_read(&B);
    test_base_truncations(&B);
    test_base_header(&B);
    test_base_metadata(&B);
    test_base_tensor_table(&B);
    free(B.b.p);
}

/* Small files built from scratch.  Fixture: each case writes its file
 * into an empty buffer (b->n == 0) and leaves it as it pleases. */
static const uint64_t ne4[1] = {4};
static const float four[4] = {1, 2, 3, 4};

/* Minimal valid file: no metadata, no tensors. */
static void test_struct_empty_file(buf *b)
{
    header(b, 3, 0, 0);
    expect_rc(b, 0, "empty file");
}

/* Duplicate keys. */
static void test_struct_duplicate_keys(buf *b)
{
    header(b, 3, 0, 2);
    put_str(b, "k");
    put_u32(b, MSADB_GGUF_UINT8);
    put_u8(b, 1);
    put_str(b, "k");
    put_u32(b, MSADB_GGUF_UINT8);
    put_u8(b, 2);
    expect_rc(b, MSADB_ECORRUPT, "duplicate key");
}

/* Key with a NUL byte. */
static void test_struct_key_with_nul(buf *b)
{
    header(b, 3, 0, 1);
    put_strn(b, "a\0b", 3);
    put_u32(b, MSADB_GGUF_UINT8);
    put_u8(b, 1);
    expect_rc(b, MSADB_ECORRUPT, "NUL in key");
}

/* Bool that is not 0/1, scalar and in an array. */
static void test_struct_bool_values(buf *b)
{
    header(b, 3, 0, 1);
    put_str(b, "k");
    put_u32(b, MSADB_GGUF_BOOL);
    put_u8(b, 2);
    expect_rc(b, MSADB_ECORRUPT, "bool 2");
    b->n = 0;
    header(b, 3, 0, 1);
    put_str(b, "k");
    put_u32(b, MSADB_GGUF_ARRAY);
    put_u32(b, MSADB_GGUF_BOOL);
    put_u64(b, 3);
    put_u8(b, 1);
    put_u8(b, 0);
    put_u8(b, 255);
    expect_rc(b, MSADB_ECORRUPT, "bool 255 in array");
}

/* A UINT64 above INT64_MAX is out of range for get_int. */
static void test_struct_uint64_range(buf *b)
{
    header(b, 3, 0, 2);
    put_str(b, "u");
    put_u32(b, MSADB_GGUF_UINT64);
    put_u64(b, UINT64_MAX);
    put_str(b, "f");
    put_u32(b, MSADB_GGUF_FLOAT32);
    float inf = INFINITY;
    put(b, &inf, 4);
    msadb_gguf *g;
    int64_t v;
    float f;
    CHECK_OK(open_buf(b, &g));
    CHECK_RC(msadb_gguf_get_int(g, "u", INT64_MIN, INT64_MAX, &v), MSADB_ECORRUPT);
    CHECK_RC(msadb_gguf_get_f32(g, "f", &f), MSADB_ECORRUPT);
    CHECK_RC(msadb_gguf_get_f32(g, "u", &f), MSADB_EDTYPE);
    msadb_gguf_close(g);
}

/* Duplicate tensor names. */
static void test_struct_duplicate_tensors(buf *b)
{
    header(b, 3, 2, 0);
    tensor_info(b, "w", 1, ne4, MSADB_GGML_F32, 0);
    tensor_info(b, "w", 1, ne4, MSADB_GGML_F32, 32);
    pad_to(b, 32);
    put(b, four, 16);
    pad_to(b, 32);
    put(b, four, 16);
    expect_rc(b, MSADB_ECORRUPT, "duplicate tensor");
}

/* Tensor name of 64 bytes (ggml allows 63). */
static void test_struct_tensor_name_length(buf *b)
{
    char longname[65];
    memset(longname, 'n', 64);
    longname[64] = 0;
    header(b, 3, 1, 0);
    tensor_info(b, longname, 1, ne4, MSADB_GGML_F32, 0);
    pad_to(b, 32);
    put(b, four, 16);
    expect_rc(b, MSADB_ECORRUPT, "64-byte tensor name");
    b->n = 0;
    longname[63] = 0;
    header(b, 3, 1, 0);
    tensor_info(b, longname, 1, ne4, MSADB_GGML_F32, 0);
    pad_to(b, 32);
    put(b, four, 16);
    expect_rc(b, 0, "63-byte tensor name");
}

/* Alignment: must be a u32 power of two; data placed by it. */
static void test_struct_alignment(buf *b)
{
    const struct {
        uint32_t type;
        uint64_t value;
        int want;
    } al[] = {
        {MSADB_GGUF_UINT32, 0, MSADB_ECORRUPT},  {MSADB_GGUF_UINT32, 3, MSADB_ECORRUPT},
        {MSADB_GGUF_UINT32, 48, MSADB_ECORRUPT}, {MSADB_GGUF_UINT64, 64, MSADB_ECORRUPT},
        {MSADB_GGUF_UINT32, 64, 0},              {MSADB_GGUF_UINT32, 1, 0},
        {MSADB_GGUF_UINT32, 1u << 31, 0},
    };
    for (size_t i = 0; i < sizeof al / sizeof al[0]; i++) {
        header(b, 3, 1, 1);
        put_str(b, "general.alignment");
        put_u32(b, al[i].type);
        if (al[i].type == MSADB_GGUF_UINT32)
            put_u32(b, (uint32_t)al[i].value);
        else
            put_u64(b, al[i].value);
        tensor_info(b, "w", 1, ne4, MSADB_GGML_F32, 0);
        size_t a = al[i].value && al[i].value <= 4096 && !(al[i].value & (al[i].value - 1))
                       ? (size_t)al[i].value
                       : 32;
        if (al[i].value == 1u << 31) {
            /* the data would start 2 GiB in: refused as truncated */
            expect_rc(b, MSADB_ECORRUPT, "alignment 2^31, no data");
            b->n = 0;
            continue;
        }
        pad_to(b, a);
        size_t data_at = b->n;
        put(b, four, 16);
        char what[64];
        snprintf(what, sizeof what, "alignment %llu type %u", (unsigned long long)al[i].value,
                 al[i].type);
        expect_rc(b, al[i].want, what);
        if (al[i].want == 0) {
            msadb_gguf *g;
            CHECK_OK(open_buf(b, &g));
            CHECK(msadb_gguf_data_offset(g) == data_at);
            CHECK(msadb_gguf_alignment(g) == al[i].value);
            msadb_gguf_close(g);
        }
        b->n = 0;
    }
}

/* Offset that is a multiple of 32 but not of 64 under alignment 64. */
static void test_struct_offset_under_alignment_64(buf *b)
{
    header(b, 3, 1, 1);
    put_str(b, "general.alignment");
    put_u32(b, MSADB_GGUF_UINT32);
    put_u32(b, 64);
    tensor_info(b, "w", 1, ne4, MSADB_GGML_F32, 32);
    pad_to(b, 64);
    for (int i = 0; i < 48; i++)
        put_u8(b, 0);
    expect_rc(b, MSADB_ECORRUPT, "offset aligned to 32 not 64");
}

/* Tensors in any order, with unused gaps, are fine. */
static void test_struct_tensor_order(buf *b)
{
    header(b, 3, 2, 0);
    tensor_info(b, "b", 1, ne4, MSADB_GGML_F32, 64);
    tensor_info(b, "a", 1, ne4, MSADB_GGML_F32, 0);
    pad_to(b, 32);
    put(b, four, 16);
    pad_to(b, 32);
    for (int i = 0; i < 8; i++)
        put_u8(b, 0xEE);
    pad_to(b, 32);
    put(b, four, 16);
    expect_rc(b, 0, "reordered tensors with a gap");
}

static void test_structures(void)
{
    void (*const cases[])(buf *) = {
        test_struct_empty_file,
        test_struct_duplicate_keys,
        test_struct_key_with_nul,
        test_struct_bool_values,
        test_struct_uint64_range,
        test_struct_duplicate_tensors,
        test_struct_tensor_name_length,
        test_struct_alignment,
        test_struct_offset_under_alignment_64,
        test_struct_tensor_order,
    };
    buf b = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        b.n = 0;
        cases[i](&b);
    }
    free(b.p);
}

static void test_files(void)
{
    msadb_gguf *g = NULL;
    const char *dir = tu_tmpdir("gguf");
    char path[1024];
    CHECK_RC(msadb_gguf_open("/nonexistent/x.gguf", &g), ENOENT);
    CHECK_RC(msadb_gguf_open(dir, &g), MSADB_EINVAL);
    snprintf(path, sizeof path, "%s/empty.gguf", dir);
    FILE *f = fopen(path, "wb");
    CHECK(f);
    fclose(f);
    CHECK_RC(msadb_gguf_open(path, &g), MSADB_ECORRUPT);
    base B;
    make_base(&B);
    snprintf(path, sizeof path, "%s/base.gguf", dir);
    f = fopen(path, "wb");
    CHECK(f && fwrite(B.b.p, 1, B.b.n, f) == B.b.n);
    fclose(f);
    CHECK_OK(msadb_gguf_open(path, &g));
    CHECK(msadb_gguf_n_tensors(g) == 2);
    walk(g);
    msadb_gguf_close(g);
    free(B.b.p);
}

/* The sample written by tools/memmodel/gguf.py. */
static void check_sample(msadb_gguf *g)
{
    int64_t v;
    const struct {
        const char *k;
        int64_t want;
    } ints[] = {{"t.u8", 200},           {"t.i8", -100},
                {"t.u16", 60000},        {"t.i16", -30000},
                {"t.u32", 4000000000LL}, {"t.i32", -2000000000LL},
                {"t.i64", -9000000000000000000LL}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        CHECK_OK(msadb_gguf_get_int(g, ints[i].k, INT64_MIN, INT64_MAX, &v));
        CHECK(v == ints[i].want);
        CHECK(msadb_gguf_find(g, ints[i].k)->type == (uint32_t)i ||
              !strcmp(ints[i].k, "t.i64"));
    }
    CHECK(msadb_gguf_find(g, "t.i64")->type == MSADB_GGUF_INT64);
    CHECK_RC(msadb_gguf_get_int(g, "t.u64", INT64_MIN, INT64_MAX, &v), MSADB_ECORRUPT);
    CHECK(msadb_get_le64(msadb_gguf_find(g, "t.u64")->data) == 18000000000000000000ULL);
    float f;
    int b;
    CHECK_OK(msadb_gguf_get_f32(g, "t.f32", &f));
    CHECK(f == 1.5f);
    CHECK_OK(msadb_gguf_get_f32(g, "t.f64", &f));
    CHECK(f == -2.25f);
    CHECK_RC(msadb_gguf_get_f32(g, "t.u8", &f), MSADB_EDTYPE);
    CHECK_OK(msadb_gguf_get_bool(g, "t.bool", &b));
    CHECK(b == 1);
    CHECK_RC(msadb_gguf_get_int(g, "t.bool", 0, 1, &v), MSADB_EDTYPE);
    const char *s;
    size_t n;
    CHECK_OK(msadb_gguf_get_str(g, "t.str", &s, &n));
    CHECK(n == 6 && !memcmp(s, "h\xc3\xa9llo", 6));
    CHECK_OK(msadb_gguf_get_str(g, "t.empty", &s, &n));
    CHECK(n == 0);
    const msadb_gguf_kv *kv;
    uint32_t et;
    uint64_t cnt;
    CHECK_OK(msadb_gguf_get_arr(g, "t.arr_i32", &kv, &et, &cnt));
    CHECK(et == MSADB_GGUF_INT32 && cnt == 3);
    CHECK_OK(msadb_gguf_arr_int(kv, 1, &v));
    CHECK(v == -2);
    double d;
    CHECK_OK(msadb_gguf_get_arr(g, "t.arr_f32", &kv, &et, &cnt));
    CHECK(et == MSADB_GGUF_FLOAT32 && cnt == 2);
    CHECK_OK(msadb_gguf_arr_f64(kv, 0, &d));
    CHECK(d == 0.5);
    CHECK_RC(msadb_gguf_arr_int(kv, 0, &v), MSADB_EDTYPE);
    CHECK_OK(msadb_gguf_get_arr(g, "t.arr_str", &kv, &et, &cnt));
    CHECK(et == MSADB_GGUF_STRING && cnt == 4);
    const char *want[4] = {"a", "", "<0x0A>", "\xe2\x96\x81the"};
    for (uint64_t i = 0; i < 4; i++) {
        CHECK_OK(msadb_gguf_arr_str(kv, i, &s, &n));
        CHECK(n == strlen(want[i]) && !memcmp(s, want[i], n));
    }
    CHECK_OK(msadb_gguf_get_arr(g, "t.arr_bool", &kv, &et, &cnt));
    CHECK(et == MSADB_GGUF_BOOL && cnt == 2);
    CHECK_OK(msadb_gguf_arr_int(kv, 0, &v));
    CHECK(v == 1);
    CHECK_OK(msadb_gguf_get_arr(g, "t.arr_empty", &kv, &et, &cnt));
    CHECK(cnt == 0);
    CHECK(msadb_gguf_alignment(g) == 64);
    CHECK(msadb_gguf_data_offset(g) % 64 == 0);

    const char *types[4] = {"f32", "f16", "bf16", "q8_0"};
    const uint32_t gt[4] = {MSADB_GGML_F32, MSADB_GGML_F16, MSADB_GGML_BF16, MSADB_GGML_Q8_0};
    float got[192], exp_[192];
    for (int i = 0; i < 4; i++) {
        char name[64];
        const msadb_gguf_tensor *t, *e;
        snprintf(name, sizeof name, "w.%s", types[i]);
        CHECK_OK(msadb_gguf_get_tensor(g, name, &t));
        snprintf(name, sizeof name, "w.%s.expect", types[i]);
        CHECK_OK(msadb_gguf_get_tensor(g, name, &e));
        CHECK(t->type == gt[i] && t->n_dims == 2 && t->ne[0] == 64 && t->ne[1] == 3);
        CHECK(t->offset % 64 == 0);
        CHECK_OK(msadb_gguf_to_f32(t, 0, 192, got));
        CHECK_OK(msadb_gguf_to_f32(e, 0, 192, exp_));
        CHECK(!memcmp(got, exp_, sizeof got));
        /* partial conversions agree with the whole */
        CHECK_OK(msadb_gguf_to_f32(t, 64, 96, got));
        CHECK(!memcmp(got, exp_ + 64, 96 * sizeof(float)));
    }
    const msadb_gguf_tensor *t3;
    CHECK_OK(msadb_gguf_get_tensor(g, "w.3d", &t3));
    CHECK(t3->n_dims == 3 && t3->ne[0] == 4 && t3->ne[1] == 3 && t3->ne[2] == 2);
    CHECK_OK(msadb_gguf_to_f32(t3, 0, 24, got));
    for (int i = 0; i < 24; i++)
        CHECK(got[i] == (float)i);
}

static void *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    CHECK(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc((size_t)n);
    CHECK(p && fread(p, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* Random mutations: flips and interesting values at random places. */
static void mutate_many(const uint8_t *src, size_t len, int rounds, uint64_t seed)
{
    static const uint64_t vals[] = {0, 1, 2, 31, 32, 33, 0xFF, 0xFFFF, 0xFFFFFFFFu,
                                    (uint64_t)INT64_MAX, UINT64_MAX, 1ull << 32, 1ull << 40};
    uint8_t *m = malloc(len);
    CHECK(m);
    uint64_t st = seed;
    int opened = 0;
    for (int r = 0; r < rounds; r++) {
        memcpy(m, src, len);
        int k = 1 + (int)(tu_rand(&st) % 4);
        for (int j = 0; j < k; j++) {
            size_t at = (size_t)(tu_rand(&st) % len);
            if (tu_rand(&st) % 2 || at + 8 > len) {
                m[at] ^= (uint8_t)(1u << (tu_rand(&st) % 8));
            } else {
                uint64_t v = vals[tu_rand(&st) % (sizeof vals / sizeof vals[0])];
                memcpy(m + at, &v, tu_rand(&st) % 2 ? 8 : 4);
            }
        }
        size_t n = tu_rand(&st) % 8 == 0 ? (size_t)(tu_rand(&st) % len) : len;
        msadb_gguf *g;
        /* copy to an exact-size heap block so that ASan sees any overread */
        uint8_t *exact = malloc(n ? n : 1);
        CHECK(exact);
        memcpy(exact, m, n);
        if (msadb_gguf_open_memory(exact, n, &g) == 0) {
            walk(g);
            msadb_gguf_close(g);
            opened++;
        }
        free(exact);
    }
    fprintf(stderr, "mutations: %d of %d opened\n", opened, rounds);
    free(m);
}

int main(void)
{
    test_base();
    test_structures();
    test_files();
    base B;
    make_base(&B);
    mutate_many(B.b.p, B.b.n, 20000, 1);
    free(B.b.p);

    const char *root = getenv("MSADB_SOURCE_ROOT");
    const char *py = getenv("MSADB_PYTHON");
    char python[512] = "/usr/bin/python3", cmd[4096], path[1024];
    if (py && *py)
        snprintf(python, sizeof python, "%s", py);
    snprintf(cmd, sizeof cmd, "%s -c 'import numpy' 2>/dev/null", python);
    if (!root || system(cmd) != 0) {
        fprintf(stderr, "python sample skipped: need MSADB_SOURCE_ROOT and python3 with numpy\n");
        return 0;
    }
    snprintf(path, sizeof path, "%s/sample.gguf", tu_tmpdir("gguf-sample"));
    snprintf(cmd, sizeof cmd, "PYTHONPATH=%s/tools %s -m memmodel.gguf sample %s", root, python,
             path);
    CHECK(system(cmd) == 0);
    msadb_gguf *g;
    CHECK_OK(msadb_gguf_open(path, &g));
    check_sample(g);
    msadb_gguf_close(g);
    size_t len;
    void *mem = read_all(path, &len);
    CHECK_OK(msadb_gguf_open_memory(mem, len, &g));
    check_sample(g);
    msadb_gguf_close(g);
    mutate_many(mem, len, 20000, 2);
    free(mem);
    fprintf(stderr, "ok\n");
    return 0;
}
