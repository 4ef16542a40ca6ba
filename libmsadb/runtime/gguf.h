/* gguf.h -- a strict reader of GGUF version 3 files (the model format of
 * llama.cpp), used by the built-in model runtime.
 *
 * The reader trusts nothing in the file: every count, length, dimension,
 * type, offset and the alignment are checked against the file size with
 * overflow-safe arithmetic before anything is read, so a hostile or
 * truncated file is refused with an error code and never read out of
 * bounds.  What it accepts:
 *
 *   header    "GGUF", version 3, tensor count, metadata count (u64 each)
 *   metadata  key (string) + value type (u32) + value; all 13 GGUF value
 *             types; arrays of any non-array type (nested arrays are refused)
 *   tensors   name, 1..4 dims (ne[0] is the innermost, contiguous dimension),
 *             ggml type, offset relative to the data section
 *   data      starts at the end of the tensor table rounded up to the
 *             alignment (general.alignment, a u32 power of two, default 32)
 *
 * Extra rules (llama.cpp has the same or looser ones): keys and tensor names
 * are unique, non-empty and contain no NUL byte; every tensor offset is a
 * multiple of the alignment; tensors lie inside the data section and do not
 * overlap; for block-quantized types ne[0] is a multiple of the block size.
 * Tensor types that the runtime cannot convert (anything but F32, F16, BF16
 * and Q8_0) are still described (type, dims) but their byte size is only
 * known for the types listed in msadb_ggml_type_size(); a file holding a
 * tensor of an unknown type is refused with MSADB_EDTYPE because its extent,
 * and therefore the overlap check, cannot be computed.
 *
 * Errors: MSADB_ECORRUPT (malformed file), MSADB_EVERSION (not version 3),
 * MSADB_EDTYPE (unknown tensor type, or a getter asked for a type the value
 * does not have), MSADB_ENOTFOUND (missing key or tensor), MSADB_ENOMEM,
 * MSADB_EINVAL, errno values from open/mmap.
 *
 * Lifetimes: every pointer returned by a getter (keys, names, string bytes,
 * array and tensor data) points into the file's memory map (or the caller's
 * buffer for msadb_gguf_open_memory) and stays valid until msadb_gguf_close().
 * Data pointers have no alignment guarantee beyond what the file offsets and
 * the buffer give; read multi-byte values with memcpy.
 */
#ifndef MSADB_GGUF_H
#define MSADB_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "core/util.h"

#define MSADB_GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
#define MSADB_GGUF_VERSION 3u
#define MSADB_GGUF_DEFAULT_ALIGNMENT 32u
#define MSADB_GGUF_MAX_DIMS 4

/* Metadata value types (GGUF spec numbering). */
enum {
    MSADB_GGUF_UINT8 = 0,
    MSADB_GGUF_INT8 = 1,
    MSADB_GGUF_UINT16 = 2,
    MSADB_GGUF_INT16 = 3,
    MSADB_GGUF_UINT32 = 4,
    MSADB_GGUF_INT32 = 5,
    MSADB_GGUF_FLOAT32 = 6,
    MSADB_GGUF_BOOL = 7,
    MSADB_GGUF_STRING = 8,
    MSADB_GGUF_ARRAY = 9,
    MSADB_GGUF_UINT64 = 10,
    MSADB_GGUF_INT64 = 11,
    MSADB_GGUF_FLOAT64 = 12,
    MSADB_GGUF_NTYPES = 13
};

/* ggml tensor types (ggml numbering).  The runtime converts F32, F16, BF16
 * and Q8_0; the others are known by size only. */
enum {
    MSADB_GGML_F32 = 0,
    MSADB_GGML_F16 = 1,
    MSADB_GGML_Q4_0 = 2,
    MSADB_GGML_Q4_1 = 3,
    MSADB_GGML_Q5_0 = 6,
    MSADB_GGML_Q5_1 = 7,
    MSADB_GGML_Q8_0 = 8,
    MSADB_GGML_Q8_1 = 9,
    MSADB_GGML_I8 = 24,
    MSADB_GGML_I16 = 25,
    MSADB_GGML_I32 = 26,
    MSADB_GGML_I64 = 27,
    MSADB_GGML_F64 = 28,
    MSADB_GGML_BF16 = 30
};

/* Q8_0: blocks of 32 values, an f16 scale followed by 32 int8 (34 bytes);
 * value = scale * q. */
#define MSADB_Q8_0_BLOCK 32
#define MSADB_Q8_0_BYTES 34

typedef struct msadb_gguf msadb_gguf;

/* One metadata entry, as parsed.  For arrays, `type` is MSADB_GGUF_ARRAY,
 * `elem_type` the element type and `n` the element count; for scalars
 * elem_type == type and n == 1.  `data` points at the value's bytes: for a
 * string scalar at its characters (str_len of them), for an array at its
 * first element. */
typedef struct msadb_gguf_kv {
    const char *key;      /* NUL-terminated copy owned by the handle */
    uint32_t type;
    uint32_t elem_type;
    uint64_t n;
    const uint8_t *data;  /* first value byte (after the string length for strings) */
    uint64_t str_len;     /* string scalars: byte length */
    const uint64_t *str_off; /* string arrays: offset of element i's u64 length
                                from `data`; owned by the handle */
} msadb_gguf_kv;

typedef struct msadb_gguf_tensor {
    const char *name;     /* NUL-terminated copy owned by the handle */
    uint32_t type;        /* MSADB_GGML_* */
    uint32_t n_dims;      /* 1..4 */
    uint64_t ne[MSADB_GGUF_MAX_DIMS]; /* ne[0] innermost; unused dims are 1 */
    uint64_t n_elements;
    uint64_t offset;      /* from the start of the data section */
    uint64_t n_bytes;
    const uint8_t *data;
} msadb_gguf_tensor;

/* Opens a file read-only with mmap.  On success *out is a handle to close
 * with msadb_gguf_close(). */
MSADB_HIDDEN int msadb_gguf_open(const char *path, msadb_gguf **out);
/* Parses a file image in memory.  The buffer is not copied and must stay
 * unchanged until the handle is closed. */
MSADB_HIDDEN int msadb_gguf_open_memory(const void *buf, size_t len, msadb_gguf **out);
/* Closes a handle; NULL allowed. */
MSADB_HIDDEN void msadb_gguf_close(msadb_gguf *g);

MSADB_HIDDEN uint32_t msadb_gguf_alignment(const msadb_gguf *g);
MSADB_HIDDEN uint64_t msadb_gguf_data_offset(const msadb_gguf *g);
MSADB_HIDDEN size_t msadb_gguf_n_kv(const msadb_gguf *g);
MSADB_HIDDEN size_t msadb_gguf_n_tensors(const msadb_gguf *g);

/* Entries in file order; NULL when i is out of range. */
MSADB_HIDDEN const msadb_gguf_kv *msadb_gguf_kv_at(const msadb_gguf *g, size_t i);
MSADB_HIDDEN const msadb_gguf_tensor *msadb_gguf_tensor_at(const msadb_gguf *g, size_t i);

/* Lookup by exact key / name (binary search); NULL when absent. */
MSADB_HIDDEN const msadb_gguf_kv *msadb_gguf_find(const msadb_gguf *g, const char *key);
MSADB_HIDDEN const msadb_gguf_tensor *msadb_gguf_find_tensor(const msadb_gguf *g,
                                                             const char *name);
/* Same as msadb_gguf_find_tensor with an error code: MSADB_ENOTFOUND. */
MSADB_HIDDEN int msadb_gguf_get_tensor(const msadb_gguf *g, const char *name,
                                       const msadb_gguf_tensor **out);

/* Typed getters.  Each returns MSADB_ENOTFOUND if the key is absent,
 * MSADB_EDTYPE if the value has another type, MSADB_ECORRUPT if a number
 * is outside [min, max].
 * - get_int accepts every integer type (not bool) and checks min <= v <= max;
 *   a UINT64 above INT64_MAX is out of range.
 * - get_f32 accepts FLOAT32 and FLOAT64 (converted; must be finite).
 * - get_bool accepts BOOL (any non-zero byte is true).
 * - get_str gives the bytes and length (not NUL-terminated). */
MSADB_HIDDEN int msadb_gguf_get_int(const msadb_gguf *g, const char *key, int64_t min,
                                    int64_t max, int64_t *out);
MSADB_HIDDEN int msadb_gguf_get_f32(const msadb_gguf *g, const char *key, float *out);
MSADB_HIDDEN int msadb_gguf_get_bool(const msadb_gguf *g, const char *key, int *out);
MSADB_HIDDEN int msadb_gguf_get_str(const msadb_gguf *g, const char *key, const char **s,
                                    size_t *len);
/* Copies a string value into buf (capacity cap, NUL-terminated); MSADB_ELIMIT
 * if it does not fit or holds a NUL byte. */
MSADB_HIDDEN int msadb_gguf_get_cstr(const msadb_gguf *g, const char *key, char *buf,
                                     size_t cap);

/* Arrays: msadb_gguf_get_arr finds an array and gives its element type and
 * count (MSADB_EDTYPE if the value is not an array).  The element getters
 * take the entry and an index (MSADB_EINVAL when out of range):
 * - arr_int: integer element types (and bool), as int64 (a UINT64 above
 *   INT64_MAX gives MSADB_ECORRUPT);
 * - arr_f64: any numeric element type (integers converted);
 * - arr_str: string element i, bytes and length. */
MSADB_HIDDEN int msadb_gguf_get_arr(const msadb_gguf *g, const char *key,
                                    const msadb_gguf_kv **kv, uint32_t *elem_type,
                                    uint64_t *n);
MSADB_HIDDEN int msadb_gguf_arr_int(const msadb_gguf_kv *kv, uint64_t i, int64_t *out);
MSADB_HIDDEN int msadb_gguf_arr_f64(const msadb_gguf_kv *kv, uint64_t i, double *out);
MSADB_HIDDEN int msadb_gguf_arr_str(const msadb_gguf_kv *kv, uint64_t i, const char **s,
                                    size_t *len);

/* Bytes of one value of a metadata type (0 for STRING/ARRAY/unknown). */
MSADB_HIDDEN size_t msadb_gguf_type_size(uint32_t type);
/* Name of a metadata type ("uint8", ..., "float64"), or NULL. */
MSADB_HIDDEN const char *msadb_gguf_type_name(uint32_t type);

/* ggml type facts: values per block and bytes per block (0 if unknown),
 * name ("f32", "q8_0", ...; NULL if unknown). */
MSADB_HIDDEN uint32_t msadb_ggml_block_size(uint32_t type);
MSADB_HIDDEN uint32_t msadb_ggml_type_size(uint32_t type);
MSADB_HIDDEN const char *msadb_ggml_type_name(uint32_t type);
/* Whether msadb_gguf_to_f32 converts this type (F32, F16, BF16, Q8_0). */
MSADB_HIDDEN int msadb_ggml_convertible(uint32_t type);

/* Converts elements [first, first + n) of a tensor to f32.  For block types
 * first and n must be multiples of the block size (MSADB_EINVAL otherwise).
 * MSADB_EDTYPE if the type is not convertible. */
MSADB_HIDDEN int msadb_gguf_to_f32(const msadb_gguf_tensor *t, uint64_t first, uint64_t n,
                                   float *dst);

#endif
