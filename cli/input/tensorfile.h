/* tensorfile.h -- strict readers for safetensors and .npy files and a
 * safetensors writer, used by the msadb command line (ingest, query, dump,
 * load) and by the fuzz targets.  No dependency on the library: only libc
 * and jansson.
 *
 * Every function that can fail returns 0 or -1 and, on -1, writes a one-line
 * message into the caller's err buffer naming what is wrong and what was
 * expected (without the file name: the caller prefixes it).
 */
#ifndef MSADB_CLI_TENSORFILE_H
#define MSADB_CLI_TENSORFILE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define TF_MAX_DIMS 8
/* Largest safetensors JSON header accepted (bytes). */
#define TF_MAX_HEADER (100u * 1024u * 1024u)
/* Largest .npy header accepted (bytes). */
#define TF_MAX_NPY_HEADER (1u * 1024u * 1024u)
/* Most bytes read from an input held in memory whole: any input that is
 * not a regular file (pipes, FIFOs, stdin, devices such as /dev/zero) and
 * text files; the environment variable MSADB_INPUT_MAX (bytes) overrides
 * it.  Regular tensor files are mapped, not read, and have no such limit. */
#define TF_INPUT_MAX ((size_t)1 << 30)

typedef enum tf_dtype {
    TF_BOOL, TF_U8, TF_I8, TF_U16, TF_I16, TF_U32, TF_I32, TF_U64, TF_I64,
    TF_F16, TF_BF16, TF_F32, TF_F64, TF_F8_E4M3, TF_F8_E5M2,
    TF_DTYPE_COUNT
} tf_dtype;

/* Name as spelled in safetensors headers ("F32", "BF16", ...). */
const char *tf_dtype_name(tf_dtype dt);
/* Bytes per element. */
size_t tf_dtype_size(tf_dtype dt);
/* Parses a safetensors dtype name; -1 if unknown. */
int tf_dtype_parse(const char *name);

/* One tensor.  `data` points into the file's bytes and may be unaligned:
 * read it with memcpy or the tf_* converters below. */
typedef struct tf_tensor {
    char *name;
    tf_dtype dtype;
    int ndim;
    uint64_t shape[TF_MAX_DIMS];
    uint64_t nelem;
    uint64_t nbytes;
    const uint8_t *data;
} tf_tensor;

/* A parsed file: its tensors in header order, the safetensors
 * `__metadata__` entries (NULL-terminated key/value arrays, n_meta pairs),
 * and the bytes it points into. */
typedef struct tf_file {
    tf_tensor *tensors;
    size_t n;
    char **meta_keys;
    char **meta_values;
    size_t n_meta;
    /* private */
    void *map_;
    size_t map_len_;
    int mapped_;
} tf_file;

struct stat;
/* The input limit in force (TF_INPUT_MAX or $MSADB_INPUT_MAX). */
size_t tf_input_max(void);
/* Opens an input ("-": a duplicate of stdin) without blocking on a FIFO
 * that has no writer, and stats it; refuses directories.  0, or -1. */
int tf_input_open(const char *path, int *fd, struct stat *st, char *err, size_t errlen);
/* Reads fd to its end into a malloc'ed, NUL-terminated buffer; refuses more
 * than max bytes without reading further.  0, or -1. */
int tf_read_fd(int fd, size_t max, uint8_t **buf, size_t *len, char *err, size_t errlen);

/* Parses safetensors bytes.  `buf` must outlive the result (tensors point
 * into it).  Checks: 8-byte little-endian header length <= TF_MAX_HEADER and
 * <= the bytes that follow; the header is one JSON object without duplicate
 * keys; every entry but "__metadata__" (a string-to-string map) has exactly
 * "dtype" (known), "shape" (<= TF_MAX_DIMS non-negative integers) and
 * "data_offsets" [begin, end] with end - begin == product(shape) * element
 * size; the ranges tile the data area exactly (no overlap, no gap, nothing
 * past the end, no trailing bytes); names are non-empty and unique. */
int tf_safetensors_parse(const uint8_t *buf, size_t len, tf_file *out, char *err, size_t errlen);

/* Maps (or reads) `path` and parses it as safetensors. */
int tf_safetensors_open(const char *path, tf_file *out, char *err, size_t errlen);

/* Parses .npy bytes into out->tensors[0] (named "array"; n == 1).  Accepts
 * format versions 1.0, 2.0 and 3.0, a header dict with exactly 'descr' (one
 * of '<f4', '<f2', '<i4', '<i8', '|u1'), 'fortran_order': False and 'shape'
 * (a tuple of <= TF_MAX_DIMS non-negative integers), and a data size equal
 * to product(shape) * element size. */
int tf_npy_parse(const uint8_t *buf, size_t len, tf_file *out, char *err, size_t errlen);

/* Maps (or reads) `path` and parses it as .npy. */
int tf_npy_open(const char *path, tf_file *out, char *err, size_t errlen);

/* Drops the memory pages overlapping [p, p + len) of a mapped file from
 * the process's resident memory (they are read back from the file when
 * touched again: the mapping is private and read-only), so a pass over a
 * file larger than memory stays bounded.  Does nothing for a file read
 * into memory (stdin, pipes). */
void tf_release(const tf_file *f, const void *p, size_t len);

/* Releases everything a parse or open produced; a zeroed tf_file is fine. */
void tf_file_close(tf_file *f);

/* The tensor named `name`, or NULL. */
const tf_tensor *tf_find(const tf_file *f, const char *name);
/* The value of metadata entry `key`, or NULL. */
const char *tf_meta(const tf_file *f, const char *key);

/* Formats a shape as "[2,8,100,64]" into buf. */
const char *tf_shape_str(const uint64_t *shape, int ndim, char *buf, size_t cap);

/* --- element access ---------------------------------------------------- */

float tf_f16_to_f32(uint16_t h);
float tf_bf16_to_f32(uint16_t h);

/* Whether dt is F32, F16 or BF16. */
int tf_is_float(tf_dtype dt);

/* Converts n elements (F32, F16 or BF16) starting at element `first` of src
 * to f32.  Returns 0, or -1 for another dtype. */
int tf_to_f32(tf_dtype dt, const uint8_t *src, uint64_t first, uint64_t n, float *dst);

/* Index of the first NaN or Inf among n float elements (F32, F16, BF16),
 * or -1 if all are finite (or the dtype is not a float). */
int64_t tf_first_nonfinite(tf_dtype dt, const uint8_t *src, uint64_t n);

/* Reads element i of an integer tensor (I32, I64, U8) as int64. */
int64_t tf_get_int(const tf_tensor *t, uint64_t i);

/* --- writing ------------------------------------------------------------ */

typedef struct tf_spec {
    const char *name;
    tf_dtype dtype;
    int ndim;
    uint64_t shape[TF_MAX_DIMS];
} tf_spec;

/* Writes a safetensors header for tensors laid out in `specs` order, padded
 * with spaces to a multiple of 8 bytes; metadata pairs (may be 0) go in
 * "__metadata__".  The caller then writes each tensor's bytes in order.
 * *data_bytes (if not NULL) receives the size of the data area. */
int tf_write_header(FILE *fp, const tf_spec *specs, size_t n, const char *const *meta_keys,
                    const char *const *meta_values, size_t n_meta, uint64_t *data_bytes,
                    char *err, size_t errlen);

/* Output file written atomically: data goes to a temporary file next to
 * `path`, renamed over it by tf_out_commit(). */
typedef struct tf_out {
    FILE *fp;
    char *path;
    char *tmp;
} tf_out;

int tf_out_open(tf_out *o, const char *path, char *err, size_t errlen);
/* fwrite that remembers failure; returns 0 or -1. */
int tf_out_write(tf_out *o, const void *data, size_t bytes, char *err, size_t errlen);
/* Flushes, syncs and renames into place; the tf_out is released either way. */
int tf_out_commit(tf_out *o, char *err, size_t errlen);
/* Removes the temporary file; NULL-safe, idempotent. */
void tf_out_abort(tf_out *o);

/* Writes a small safetensors file in one call: tensor i's bytes are data[i]. */
int tf_save(const char *path, const tf_spec *specs, const void *const *data, size_t n,
            const char *const *meta_keys, const char *const *meta_values, size_t n_meta,
            char *err, size_t errlen);

#endif
