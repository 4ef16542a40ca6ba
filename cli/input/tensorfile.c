/* tensorfile.c -- strict safetensors and .npy readers, safetensors writer.
 *
 * The safetensors header is parsed with jansson (a well-kept JSON parser,
 * with JSON_REJECT_DUPLICATES) and then checked field by field; every size
 * is checked against the bytes actually present before anything points into
 * them.  See tensorfile.h for the rules.
 */
#include "tensorfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

/* ------------------------------------------------------------------------ */
/* dtypes                                                                   */
/* ------------------------------------------------------------------------ */

static const struct {
    const char *name;
    size_t size;
} dtype_table[TF_DTYPE_COUNT] = {
    [TF_BOOL] = {"BOOL", 1},      [TF_U8] = {"U8", 1},     [TF_I8] = {"I8", 1},
    [TF_U16] = {"U16", 2},        [TF_I16] = {"I16", 2},   [TF_U32] = {"U32", 4},
    [TF_I32] = {"I32", 4},        [TF_U64] = {"U64", 8},   [TF_I64] = {"I64", 8},
    [TF_F16] = {"F16", 2},        [TF_BF16] = {"BF16", 2}, [TF_F32] = {"F32", 4},
    [TF_F64] = {"F64", 8},        [TF_F8_E4M3] = {"F8_E4M3", 1},
    [TF_F8_E5M2] = {"F8_E5M2", 1},
};

const char *tf_dtype_name(tf_dtype dt)
{
    return (unsigned)dt < TF_DTYPE_COUNT ? dtype_table[dt].name : "?";
}

size_t tf_dtype_size(tf_dtype dt)
{
    return (unsigned)dt < TF_DTYPE_COUNT ? dtype_table[dt].size : 0;
}

int tf_dtype_parse(const char *name)
{
    for (int i = 0; i < TF_DTYPE_COUNT; i++)
        if (strcmp(name, dtype_table[i].name) == 0)
            return i;
    return -1;
}

int tf_is_float(tf_dtype dt)
{
    return dt == TF_F32 || dt == TF_F16 || dt == TF_BF16;
}

/* ------------------------------------------------------------------------ */
/* helpers                                                                  */
/* ------------------------------------------------------------------------ */

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A tensor name made safe to print: control bytes become '?', long names
 * are cut. */
static const char *shown(const char *name, char buf[80])
{
    size_t i = 0;
    for (; name[i] && i < 64; i++) {
        unsigned char c = (unsigned char)name[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (name[i])
        memcpy(buf + i, "...", 4);
    else
        buf[i] = 0;
    return buf;
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

const char *tf_shape_str(const uint64_t *shape, int ndim, char *buf, size_t cap)
{
    size_t o = 0;
    if (cap == 0)
        return buf;
    buf[0] = 0;
    o += (size_t)snprintf(buf + o, cap - o, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%llu", i ? "," : "",
                              (unsigned long long)shape[i]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
    return buf;
}

/* product of dims * elem size, with overflow detection. */
static int shape_bytes(const uint64_t *shape, int ndim, size_t esize, uint64_t *nelem,
                       uint64_t *nbytes)
{
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(n, shape[i], &n))
            return -1;
    uint64_t b;
    if (__builtin_mul_overflow(n, (uint64_t)esize, &b))
        return -1;
    *nelem = n;
    *nbytes = b;
    return 0;
}

void tf_file_close(tf_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    if (f->map_) {
        if (f->mapped_)
            munmap(f->map_, f->map_len_);
        else
            free(f->map_);
    }
    memset(f, 0, sizeof *f);
}

const tf_tensor *tf_find(const tf_file *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

const char *tf_meta(const tf_file *f, const char *key)
{
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_values[i];
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* safetensors                                                              */
/* ------------------------------------------------------------------------ */

static int parse_metadata(json_t *obj, tf_file *out, char *err, size_t errlen)
{
    if (!json_is_object(obj))
        return fail(err, errlen, "__metadata__ is not a JSON object of strings");
    size_t n = json_object_size(obj);
    out->meta_keys = calloc(n ? n : 1, sizeof(char *));
    out->meta_values = calloc(n ? n : 1, sizeof(char *));
    if (!out->meta_keys || !out->meta_values)
        return fail(err, errlen, "out of memory");
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        char nb[80];
        if (!json_is_string(v))
            return fail(err, errlen, "__metadata__ entry '%s' is not a string", shown(key, nb));
        out->meta_keys[out->n_meta] = strdup(key);
        out->meta_values[out->n_meta] = strdup(json_string_value(v));
        out->n_meta++;
        if (!out->meta_keys[out->n_meta - 1] || !out->meta_values[out->n_meta - 1])
            return fail(err, errlen, "out of memory");
    }
    return 0;
}

static int get_uint(json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* Parses one tensor entry; offsets are relative to the data area, whose
 * size is dlen. */
static int parse_entry(const char *name, json_t *obj, uint64_t dlen, tf_tensor *t,
                       uint64_t offs[2], char *err, size_t errlen)
{
    char nb[80];
    shown(name, nb);
    if (name[0] == 0)
        return fail(err, errlen, "a tensor has an empty name");
    if (!json_is_object(obj))
        return fail(err, errlen, "tensor '%s': entry is not a JSON object", nb);
    json_t *jd = json_object_get(obj, "dtype");
    json_t *js = json_object_get(obj, "shape");
    json_t *jo = json_object_get(obj, "data_offsets");
    if (!jd || !js || !jo || json_object_size(obj) != 3)
        return fail(err, errlen,
                    "tensor '%s': expected exactly the fields dtype, shape and data_offsets", nb);
    if (!json_is_string(jd))
        return fail(err, errlen, "tensor '%s': dtype is not a string", nb);
    int dt = tf_dtype_parse(json_string_value(jd));
    if (dt < 0) {
        char db[80];
        return fail(err, errlen, "tensor '%s': unknown dtype '%s'", nb,
                    shown(json_string_value(jd), db));
    }
    t->dtype = (tf_dtype)dt;
    if (!json_is_array(js))
        return fail(err, errlen, "tensor '%s': shape is not an array", nb);
    if (json_array_size(js) > TF_MAX_DIMS)
        return fail(err, errlen, "tensor '%s': %zu dimensions, at most %d supported", nb,
                    json_array_size(js), TF_MAX_DIMS);
    t->ndim = (int)json_array_size(js);
    for (int i = 0; i < t->ndim; i++)
        if (get_uint(json_array_get(js, (size_t)i), &t->shape[i]) != 0)
            return fail(err, errlen, "tensor '%s': shape entry %d is not a non-negative integer",
                        nb, i);
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        get_uint(json_array_get(jo, 0), &offs[0]) != 0 ||
        get_uint(json_array_get(jo, 1), &offs[1]) != 0)
        return fail(err, errlen,
                    "tensor '%s': data_offsets is not [begin, end] of non-negative integers", nb);
    if (offs[0] > offs[1])
        return fail(err, errlen, "tensor '%s': data_offsets [%llu,%llu] end before begin", nb,
                    (unsigned long long)offs[0], (unsigned long long)offs[1]);
    if (offs[1] > dlen)
        return fail(err, errlen,
                    "tensor '%s': data_offsets [%llu,%llu] past the end of the data (%llu bytes)",
                    nb, (unsigned long long)offs[0], (unsigned long long)offs[1],
                    (unsigned long long)dlen);
    char sb[160];
    if (shape_bytes(t->shape, t->ndim, tf_dtype_size(t->dtype), &t->nelem, &t->nbytes) != 0)
        return fail(err, errlen, "tensor '%s': shape %s is too large", nb,
                    tf_shape_str(t->shape, t->ndim, sb, sizeof sb));
    if (t->nbytes != offs[1] - offs[0])
        return fail(err, errlen,
                    "tensor '%s': shape %s of %s needs %llu bytes but data_offsets [%llu,%llu] "
                    "hold %llu",
                    nb, tf_shape_str(t->shape, t->ndim, sb, sizeof sb), tf_dtype_name(t->dtype),
                    (unsigned long long)t->nbytes, (unsigned long long)offs[0],
                    (unsigned long long)offs[1], (unsigned long long)(offs[1] - offs[0]));
    t->name = strdup(name);
    if (!t->name)
        return fail(err, errlen, "out of memory");
    return 0;
}

typedef struct range_ref {
    uint64_t begin, end;
    size_t idx;
} range_ref;

static int range_cmp(const void *a, const void *b)
{
    const range_ref *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

/* The tensors' byte ranges must tile [0, dlen) exactly. */
static int check_tiling(const tf_file *f, range_ref *r, uint64_t dlen, char *err, size_t errlen)
{
    qsort(r, f->n, sizeof *r, range_cmp);
    uint64_t expect = 0;
    for (size_t i = 0; i < f->n; i++) {
        char a[80], b[80];
        if (r[i].begin < expect)
            return fail(err, errlen, "tensors '%s' and '%s' overlap in the data area",
                        shown(f->tensors[r[i - 1].idx].name, a),
                        shown(f->tensors[r[i].idx].name, b));
        if (r[i].begin > expect)
            return fail(err, errlen, "gap of %llu bytes in the data area before tensor '%s'",
                        (unsigned long long)(r[i].begin - expect),
                        shown(f->tensors[r[i].idx].name, a));
        expect = r[i].end;
    }
    if (expect != dlen)
        return fail(err, errlen, "%llu trailing bytes after the last tensor",
                    (unsigned long long)(dlen - expect));
    return 0;
}

static int parse_header_json(json_t *root, const uint8_t *data, uint64_t dlen, tf_file *out,
                             char *err, size_t errlen)
{
    size_t n = json_object_size(root);
    out->tensors = calloc(n ? n : 1, sizeof(tf_tensor));
    range_ref *r = calloc(n ? n : 1, sizeof(range_ref));
    if (!out->tensors || !r) {
        free(r);
        return fail(err, errlen, "out of memory");
    }
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            rc = parse_metadata(v, out, err, errlen);
        } else {
            tf_tensor *t = &out->tensors[out->n];
            uint64_t offs[2] = {0, 0};
            rc = parse_entry(key, v, dlen, t, offs, err, errlen);
            if (rc == 0) {
                t->data = data + offs[0];
                r[out->n] = (range_ref){offs[0], offs[1], out->n};
                out->n++;
            }
        }
        if (rc != 0)
            break;
    }
    if (rc == 0)
        rc = check_tiling(out, r, dlen, err, errlen);
    free(r);
    return rc;
}

int tf_safetensors_parse(const uint8_t *buf, size_t len, tf_file *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (len < 8)
        return fail(err, errlen, "file is %zu bytes, too short for a safetensors header", len);
    uint64_t hlen = get_le64(buf);
    if (hlen > TF_MAX_HEADER)
        return fail(err, errlen, "header length %llu exceeds the limit of %u bytes",
                    (unsigned long long)hlen, TF_MAX_HEADER);
    if (hlen > len - 8)
        return fail(err, errlen, "header length %llu exceeds the %zu bytes that follow it",
                    (unsigned long long)hlen, len - 8);
    if (hlen < 2 || buf[8] != '{')
        return fail(err, errlen, "header does not start with a JSON object");
    json_error_t je;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return fail(err, errlen, "header JSON, at byte %d: %s", je.position, je.text);
    int rc;
    if (!json_is_object(root))
        rc = fail(err, errlen, "header is not a JSON object");
    else
        rc = parse_header_json(root, buf + 8 + hlen, len - 8 - hlen, out, err, errlen);
    json_decref(root);
    if (rc != 0)
        tf_file_close(out);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* files                                                                    */
/* ------------------------------------------------------------------------ */

size_t tf_input_max(void)
{
    const char *e = getenv("MSADB_INPUT_MAX");
    if (e && *e) {
        char *end;
        unsigned long long v = strtoull(e, &end, 10);
        if (*end == 0 && v > 0 && v <= SIZE_MAX)
            return (size_t)v;
    }
    return TF_INPUT_MAX;
}

int tf_input_open(const char *path, int *fd, struct stat *st, char *err, size_t errlen)
{
    /* Non-blocking, so that a FIFO without a writer does not hang here;
     * reads then block as usual (and a FIFO without a writer reads as
     * empty). */
    *fd = strcmp(path, "-") == 0 ? dup(0) : open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (*fd < 0)
        return fail(err, errlen, "cannot open: %s", strerror(errno));
    int fl = fcntl(*fd, F_GETFL);
    if (fstat(*fd, st) != 0 || fl < 0 || fcntl(*fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(*fd);
        return fail(err, errlen, "cannot stat: %s", strerror(e));
    }
    if (S_ISDIR(st->st_mode)) {
        close(*fd);
        return fail(err, errlen, "is a directory, expected a file");
    }
    return 0;
}

int tf_read_fd(int fd, size_t max, uint8_t **buf, size_t *len, char *err, size_t errlen)
{
    size_t cap = 1 << 16, n = 0;
    uint8_t *b = malloc(cap);
    *buf = NULL;
    *len = 0;
    if (!b)
        return fail(err, errlen, "out of memory");
    for (;;) {
        if (n + 1 >= cap) {
            uint8_t *nb = cap > SIZE_MAX / 2 ? NULL : realloc(b, cap * 2);
            if (!nb) {
                free(b);
                return fail(err, errlen, "out of memory");
            }
            b = nb;
            cap *= 2;
        }
        size_t want = cap - 1 - n;
        if (want > max + 1 - n)
            want = max + 1 - n; /* one byte past the limit shows it was passed */
        ssize_t r = read(fd, b + n, want);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(b);
            return fail(err, errlen, "read failed: %s", strerror(e));
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max) {
            free(b);
            return fail(err, errlen, "input larger than %zu bytes, the limit for input that is "
                        "not a regular file (set MSADB_INPUT_MAX to change it)", max);
        }
    }
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

static int load_file(const char *path, uint8_t **buf, size_t *len, int *mapped, char *err,
                     size_t errlen)
{
    int fd;
    struct stat st;
    if (tf_input_open(path, &fd, &st, err, errlen) != 0)
        return -1;
    int rc = 0;
    *buf = NULL;
    *len = 0;
    *mapped = 0;
    if (S_ISREG(st.st_mode)) {
        if (st.st_size == 0) {
            rc = fail(err, errlen, "file is empty");
        } else if ((uint64_t)st.st_size > SIZE_MAX) {
            rc = fail(err, errlen, "file is too large");
        } else {
            void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED) {
                rc = fail(err, errlen, "cannot map: %s", strerror(errno));
            } else {
                *buf = m;
                *len = (size_t)st.st_size;
                *mapped = 1;
            }
        }
    } else if ((rc = tf_read_fd(fd, tf_input_max(), buf, len, err, errlen)) == 0 && *len == 0) {
        free(*buf);
        *buf = NULL;
        rc = fail(err, errlen, "no data (a pipe or FIFO that nothing was written to?)");
    }
    close(fd);
    return rc;
}

void tf_release(const tf_file *f, const void *p, size_t len)
{
    if (!f->mapped_ || !len)
        return;
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)p / pg * pg,
              b = ((uintptr_t)p + len + pg - 1) / pg * pg;
    uintptr_t lo = (uintptr_t)f->map_, hi = ((uintptr_t)f->map_ + f->map_len_ + pg - 1) / pg * pg;
    if ((uintptr_t)p < lo || (uintptr_t)p + len > lo + f->map_len_ || a >= b)
        return;
    if (b > hi)
        b = hi;
    madvise((void *)a, b - a, MADV_DONTNEED); /* a private read-only mapping: refaults from the file */
}

static void unload(uint8_t *buf, size_t len, int mapped)
{
    if (!buf)
        return;
    if (mapped)
        munmap(buf, len);
    else
        free(buf);
}

typedef int (*parse_fn)(const uint8_t *, size_t, tf_file *, char *, size_t);

static int open_with(const char *path, parse_fn parse, tf_file *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    uint8_t *buf = NULL;
    size_t len = 0;
    int mapped = 0;
    if (load_file(path, &buf, &len, &mapped, err, errlen) != 0)
        return -1;
    if (parse(buf, len, out, err, errlen) != 0) {
        unload(buf, len, mapped);
        return -1;
    }
    out->map_ = buf;
    out->map_len_ = len;
    out->mapped_ = mapped;
    return 0;
}

int tf_safetensors_open(const char *path, tf_file *out, char *err, size_t errlen)
{
    return open_with(path, tf_safetensors_parse, out, err, errlen);
}

int tf_npy_open(const char *path, tf_file *out, char *err, size_t errlen)
{
    return open_with(path, tf_npy_parse, out, err, errlen);
}

/* ------------------------------------------------------------------------ */
/* .npy                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct npy_cur {
    const char *p, *end;
} npy_cur;

static void npy_ws(npy_cur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
        c->p++;
}

static int npy_eat(npy_cur *c, char ch)
{
    npy_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A quoted string without escapes into out (cap bytes). */
static int npy_string(npy_cur *c, char *out, size_t cap)
{
    npy_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
        return -1;
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        if (*c->p == '\\' || (unsigned char)*c->p < 0x20 || n + 1 >= cap)
            return -1;
        out[n++] = *c->p++;
    }
    if (c->p >= c->end)
        return -1;
    c->p++;
    out[n] = 0;
    return 0;
}

static int npy_word(npy_cur *c, const char *w)
{
    npy_ws(c);
    size_t n = strlen(w);
    if ((size_t)(c->end - c->p) >= n && memcmp(c->p, w, n) == 0) {
        c->p += n;
        return 1;
    }
    return 0;
}

static int npy_uint(npy_cur *c, uint64_t *v)
{
    npy_ws(c);
    if (c->p >= c->end || *c->p < '0' || *c->p > '9')
        return -1;
    uint64_t x = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (__builtin_mul_overflow(x, 10, &x) || __builtin_add_overflow(x, (uint64_t)(*c->p - '0'), &x))
            return -1;
        c->p++;
    }
    if (c->p < c->end && *c->p == 'L') /* written by Python 2 */
        c->p++;
    *v = x;
    return 0;
}

static int npy_shape(npy_cur *c, tf_tensor *t, char *err, size_t errlen)
{
    if (!npy_eat(c, '('))
        return fail(err, errlen, "'shape' is not a tuple");
    t->ndim = 0;
    if (npy_eat(c, ')'))
        return 0;
    for (;;) {
        if (t->ndim == TF_MAX_DIMS)
            return fail(err, errlen, "'shape' has more than %d dimensions", TF_MAX_DIMS);
        if (npy_uint(c, &t->shape[t->ndim]) != 0)
            return fail(err, errlen, "'shape' holds something other than non-negative integers");
        t->ndim++;
        if (npy_eat(c, ')'))
            return t->ndim == 1 ? fail(err, errlen, "'shape' (n) is not a tuple, expected (n,)") : 0;
        if (!npy_eat(c, ','))
            return fail(err, errlen, "'shape' is not a tuple of integers");
        if (npy_eat(c, ')'))
            return 0;
    }
}

static int npy_descr(const char *d, tf_tensor *t, char *err, size_t errlen)
{
    static const struct {
        const char *descr;
        tf_dtype dt;
    } map[] = {{"<f4", TF_F32}, {"<f2", TF_F16}, {"<i4", TF_I32}, {"<i8", TF_I64}, {"|u1", TF_U8}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(d, map[i].descr) == 0) {
            t->dtype = map[i].dt;
            return 0;
        }
    char nb[80];
    return fail(err, errlen,
                "'descr' is '%s'; expected one of '<f4', '<f2', '<i4', '<i8', '|u1' "
                "(little-endian)",
                shown(d, nb));
}

static int npy_dict(npy_cur *c, tf_tensor *t, char *err, size_t errlen)
{
    int seen_descr = 0, seen_fortran = 0, seen_shape = 0;
    if (!npy_eat(c, '{'))
        return fail(err, errlen, "header is not a Python dict literal");
    while (!npy_eat(c, '}')) {
        char key[32], val[32];
        if (npy_string(c, key, sizeof key) != 0 || !npy_eat(c, ':'))
            return fail(err, errlen, "header dict is malformed");
        if (strcmp(key, "descr") == 0 && !seen_descr++) {
            if (npy_string(c, val, sizeof val) != 0)
                return fail(err, errlen, "'descr' is not a simple dtype string");
            if (npy_descr(val, t, err, errlen) != 0)
                return -1;
        } else if (strcmp(key, "fortran_order") == 0 && !seen_fortran++) {
            if (npy_word(c, "True"))
                return fail(err, errlen, "'fortran_order' is True; only C order is supported");
            if (!npy_word(c, "False"))
                return fail(err, errlen, "'fortran_order' is not False");
        } else if (strcmp(key, "shape") == 0 && !seen_shape++) {
            if (npy_shape(c, t, err, errlen) != 0)
                return -1;
        } else {
            char nb[80];
            return fail(err, errlen, "header dict has an unexpected or repeated key '%s'",
                        shown(key, nb));
        }
        if (npy_eat(c, '}'))
            break;
        if (!npy_eat(c, ','))
            return fail(err, errlen, "header dict is malformed");
    }
    if (!seen_descr || !seen_fortran || !seen_shape)
        return fail(err, errlen, "header dict lacks %s",
                    !seen_descr ? "'descr'" : !seen_fortran ? "'fortran_order'" : "'shape'");
    npy_ws(c);
    if (c->p != c->end)
        return fail(err, errlen, "unexpected bytes after the header dict");
    return 0;
}

int tf_npy_parse(const uint8_t *buf, size_t len, tf_file *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0)
        return fail(err, errlen, "not a .npy file (magic \\x93NUMPY missing)");
    int major = buf[6], minor = buf[7];
    if (major < 1 || major > 3 || minor != 0)
        return fail(err, errlen, "unsupported .npy version %d.%d (expected 1.0, 2.0 or 3.0)",
                    major, minor);
    size_t start = major == 1 ? 10 : 12;
    if (len < start)
        return fail(err, errlen, "file is %zu bytes, too short for a .npy header", len);
    uint64_t hlen = major == 1 ? (uint64_t)(buf[8] | (buf[9] << 8)) : get_le32(buf + 8);
    if (hlen > TF_MAX_NPY_HEADER)
        return fail(err, errlen, "header length %llu exceeds the limit of %u bytes",
                    (unsigned long long)hlen, TF_MAX_NPY_HEADER);
    if (hlen > len - start)
        return fail(err, errlen, "header length %llu exceeds the %zu bytes that follow it",
                    (unsigned long long)hlen, len - start);
    const char *h = (const char *)buf + start;
    if (hlen == 0 || h[hlen - 1] != '\n')
        return fail(err, errlen, "header does not end with a newline");
    if (memchr(h, 0, hlen))
        return fail(err, errlen, "header holds a NUL byte");
    tf_tensor t;
    memset(&t, 0, sizeof t);
    npy_cur c = {h, h + hlen - 1};
    if (npy_dict(&c, &t, err, errlen) != 0)
        return -1;
    char sb[160];
    uint64_t dlen = len - start - hlen;
    if (shape_bytes(t.shape, t.ndim, tf_dtype_size(t.dtype), &t.nelem, &t.nbytes) != 0)
        return fail(err, errlen, "shape %s is too large",
                    tf_shape_str(t.shape, t.ndim, sb, sizeof sb));
    if (t.nbytes != dlen)
        return fail(err, errlen, "shape %s of %s needs %llu bytes of data but the file holds %llu",
                    tf_shape_str(t.shape, t.ndim, sb, sizeof sb), tf_dtype_name(t.dtype),
                    (unsigned long long)t.nbytes, (unsigned long long)dlen);
    t.data = buf + start + hlen;
    t.name = strdup("array");
    out->tensors = malloc(sizeof t);
    if (!t.name || !out->tensors) {
        free(t.name);
        free(out->tensors);
        out->tensors = NULL;
        return fail(err, errlen, "out of memory");
    }
    out->tensors[0] = t;
    out->n = 1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* elements                                                                 */
/* ------------------------------------------------------------------------ */

float tf_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    if (exp == 0) {
        float f = (float)mant * 0x1p-24f; /* zero or subnormal */
        return sign ? -f : f;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (mant << 13);
    else
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float tf_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int tf_to_f32(tf_dtype dt, const uint8_t *src, uint64_t first, uint64_t n, float *dst)
{
    if (dt == TF_F32) {
        memcpy(dst, src + first * 4, n * 4);
        return 0;
    }
    if (dt != TF_F16 && dt != TF_BF16)
        return -1;
    const uint8_t *p = src + first * 2;
    for (uint64_t i = 0; i < n; i++) {
        uint16_t h = (uint16_t)(p[2 * i] | (p[2 * i + 1] << 8));
        dst[i] = dt == TF_F16 ? tf_f16_to_f32(h) : tf_bf16_to_f32(h);
    }
    return 0;
}

int64_t tf_first_nonfinite(tf_dtype dt, const uint8_t *src, uint64_t n)
{
    if (dt == TF_F32) {
        for (uint64_t i = 0; i < n; i++) {
            uint32_t b = get_le32(src + 4 * i);
            if ((b & 0x7f800000u) == 0x7f800000u)
                return (int64_t)i;
        }
    } else if (dt == TF_F16 || dt == TF_BF16) {
        uint16_t mask = dt == TF_F16 ? 0x7c00u : 0x7f80u;
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8));
            if ((h & mask) == mask)
                return (int64_t)i;
        }
    }
    return -1;
}

int64_t tf_get_int(const tf_tensor *t, uint64_t i)
{
    const uint8_t *p = t->data + i * tf_dtype_size(t->dtype);
    switch (t->dtype) {
    case TF_I64: return (int64_t)get_le64(p);
    case TF_I32: return (int32_t)get_le32(p);
    case TF_U8: return p[0];
    default: return 0;
    }
}

/* ------------------------------------------------------------------------ */
/* writing                                                                  */
/* ------------------------------------------------------------------------ */

static json_t *spec_json(const tf_spec *s, uint64_t begin, uint64_t end)
{
    json_t *shape = json_array();
    for (int d = 0; shape && d < s->ndim; d++)
        json_array_append_new(shape, json_integer((json_int_t)s->shape[d]));
    json_t *offs = json_array();
    if (offs) {
        json_array_append_new(offs, json_integer((json_int_t)begin));
        json_array_append_new(offs, json_integer((json_int_t)end));
    }
    return json_pack("{s:s, s:o, s:o}", "dtype", tf_dtype_name(s->dtype), "shape", shape,
                     "data_offsets", offs);
}

static json_t *header_json(const tf_spec *specs, size_t n, const char *const *mk,
                           const char *const *mv, size_t n_meta, uint64_t *total, char *err,
                           size_t errlen)
{
    json_t *root = json_object();
    if (!root)
        return NULL;
    if (n_meta) {
        json_t *m = json_object();
        for (size_t i = 0; m && i < n_meta; i++)
            json_object_set_new(m, mk[i], json_string(mv[i]));
        json_object_set_new(root, "__metadata__", m);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const tf_spec *s = &specs[i];
        uint64_t nelem, nbytes;
        if ((unsigned)s->dtype >= TF_DTYPE_COUNT || s->ndim < 0 || s->ndim > TF_MAX_DIMS ||
            shape_bytes(s->shape, s->ndim, tf_dtype_size(s->dtype), &nelem, &nbytes) != 0 ||
            !s->name[0] || strcmp(s->name, "__metadata__") == 0 || json_object_get(root, s->name)) {
            fail(err, errlen, "tensor '%s': invalid or repeated tensor description", s->name);
            json_decref(root);
            return NULL;
        }
        json_object_set_new(root, s->name, spec_json(s, off, off + nbytes));
        off += nbytes;
    }
    *total = off;
    return root;
}

int tf_write_header(FILE *fp, const tf_spec *specs, size_t n, const char *const *meta_keys,
                    const char *const *meta_values, size_t n_meta, uint64_t *data_bytes,
                    char *err, size_t errlen)
{
    uint64_t total = 0;
    err[0] = 0;
    json_t *root = header_json(specs, n, meta_keys, meta_values, n_meta, &total, err, errlen);
    if (!root)
        return err[0] ? -1 : fail(err, errlen, "out of memory");
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text)
        return fail(err, errlen, "out of memory");
    size_t hlen = strlen(text);
    size_t pad = (8 - (hlen % 8)) % 8;
    uint8_t lenbuf[8];
    uint64_t v = hlen + pad;
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (uint8_t)(v >> (8 * i));
    int ok = fwrite(lenbuf, 1, 8, fp) == 8 && fwrite(text, 1, hlen, fp) == hlen &&
             fwrite("        ", 1, pad, fp) == pad;
    free(text);
    if (!ok)
        return fail(err, errlen, "write failed: %s", strerror(errno));
    if (data_bytes)
        *data_bytes = total;
    return 0;
}

int tf_out_open(tf_out *o, const char *path, char *err, size_t errlen)
{
    memset(o, 0, sizeof *o);
    size_t n = strlen(path);
    o->path = strdup(path);
    o->tmp = malloc(n + 16);
    if (!o->path || !o->tmp) {
        tf_out_abort(o);
        return fail(err, errlen, "out of memory");
    }
    snprintf(o->tmp, n + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(o->tmp);
    if (fd < 0) {
        int e = errno;
        free(o->tmp);
        o->tmp = NULL;
        tf_out_abort(o);
        return fail(err, errlen, "cannot create: %s", strerror(e));
    }
    /* mkstemp makes it 0600: a dump holds an encrypted store's plaintext */
    o->fp = fdopen(fd, "wb");
    if (!o->fp) {
        int e = errno;
        close(fd);
        tf_out_abort(o);
        return fail(err, errlen, "cannot open: %s", strerror(e));
    }
    return 0;
}

int tf_out_write(tf_out *o, const void *data, size_t bytes, char *err, size_t errlen)
{
    if (bytes && fwrite(data, 1, bytes, o->fp) != bytes)
        return fail(err, errlen, "write failed: %s", strerror(errno));
    return 0;
}

int tf_out_commit(tf_out *o, char *err, size_t errlen)
{
    int rc = 0;
    if (fflush(o->fp) != 0 || fsync(fileno(o->fp)) != 0)
        rc = fail(err, errlen, "write failed: %s", strerror(errno));
    if (fclose(o->fp) != 0 && rc == 0)
        rc = fail(err, errlen, "write failed: %s", strerror(errno));
    o->fp = NULL;
    if (rc == 0 && rename(o->tmp, o->path) != 0)
        rc = fail(err, errlen, "cannot rename into place: %s", strerror(errno));
    if (rc == 0) {
        free(o->tmp);
        o->tmp = NULL;
    }
    tf_out_abort(o);
    return rc;
}

void tf_out_abort(tf_out *o)
{
    if (!o)
        return;
    if (o->fp)
        fclose(o->fp);
    if (o->tmp)
        unlink(o->tmp);
    free(o->tmp);
    free(o->path);
    memset(o, 0, sizeof *o);
}

int tf_save(const char *path, const tf_spec *specs, const void *const *data, size_t n,
            const char *const *meta_keys, const char *const *meta_values, size_t n_meta,
            char *err, size_t errlen)
{
    tf_out o;
    if (tf_out_open(&o, path, err, errlen) != 0)
        return -1;
    if (tf_write_header(o.fp, specs, n, meta_keys, meta_values, n_meta, NULL, err, errlen) != 0) {
        tf_out_abort(&o);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t nelem = 0, nbytes = 0;
        shape_bytes(specs[i].shape, specs[i].ndim, tf_dtype_size(specs[i].dtype), &nelem, &nbytes);
        if (tf_out_write(&o, data[i], (size_t)nbytes, err, errlen) != 0) {
            tf_out_abort(&o);
            return -1;
        }
    }
    return tf_out_commit(&o, err, errlen);
}
