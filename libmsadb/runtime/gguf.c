/* gguf.c -- see gguf.h.
 *
 * Parsing is one forward pass with a bounds-checked cursor.  Every read
 * first checks that the bytes are there (remaining = len - pos, never
 * pos + n, which could wrap), and every count is compared with what the
 * remaining bytes could possibly hold before anything is allocated for it,
 * so a forged count cannot make us allocate more than a small multiple of
 * the file size.  Structural checks that need the whole table (unique
 * names, non-overlapping tensors) run afterwards on sorted indexes. */
#include "runtime/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "msadb.h"

/* The GGUF spec limits keys to 65535 bytes; ggml limits tensor names to
 * GGML_MAX_NAME - 1 = 63 bytes, so no file llama.cpp accepts is refused. */
#define KEY_MAX 65535u
#define NAME_MAX_BYTES 63u

struct msadb_gguf {
    const uint8_t *base;
    size_t len;
    void *map;          /* mmap'ed region (len bytes) or NULL */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_off;  /* start of the data section (may equal len) */
    size_t n_kv, n_tensors;
    msadb_gguf_kv *kv;
    msadb_gguf_tensor *tensors;
    const msadb_gguf_kv **kv_sorted;          /* by key */
    const msadb_gguf_tensor **tensor_sorted;  /* by name */
    char *names;        /* arena of NUL-terminated keys and tensor names */
    size_t names_len, names_cap;
};

/* ------------------------------------------------------------------------ */
/* Type tables                                                              */
/* ------------------------------------------------------------------------ */

size_t msadb_gguf_type_size(uint32_t type)
{
    switch (type) {
    case MSADB_GGUF_UINT8: case MSADB_GGUF_INT8: case MSADB_GGUF_BOOL: return 1;
    case MSADB_GGUF_UINT16: case MSADB_GGUF_INT16: return 2;
    case MSADB_GGUF_UINT32: case MSADB_GGUF_INT32: case MSADB_GGUF_FLOAT32: return 4;
    case MSADB_GGUF_UINT64: case MSADB_GGUF_INT64: case MSADB_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

const char *msadb_gguf_type_name(uint32_t type)
{
    static const char *const names[MSADB_GGUF_NTYPES] = {
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
        "bool", "string", "array", "uint64", "int64", "float64"};
    return type < MSADB_GGUF_NTYPES ? names[type] : NULL;
}

/* ggml's type traits for the types whose layout we know.  K-quants are
 * listed by size only so that real llama.cpp files still parse (their
 * tensors are then refused at conversion, not at open). */
static const struct {
    uint32_t type, block, bytes;
    const char *name;
} ggml_types[] = {
    {MSADB_GGML_F32, 1, 4, "f32"},       {MSADB_GGML_F16, 1, 2, "f16"},
    {MSADB_GGML_Q4_0, 32, 18, "q4_0"},   {MSADB_GGML_Q4_1, 32, 20, "q4_1"},
    {MSADB_GGML_Q5_0, 32, 22, "q5_0"},   {MSADB_GGML_Q5_1, 32, 24, "q5_1"},
    {MSADB_GGML_Q8_0, 32, 34, "q8_0"},   {MSADB_GGML_Q8_1, 32, 36, "q8_1"},
    {10, 256, 84, "q2_k"},               {11, 256, 110, "q3_k"},
    {12, 256, 144, "q4_k"},              {13, 256, 176, "q5_k"},
    {14, 256, 210, "q6_k"},              {15, 256, 292, "q8_k"},
    {MSADB_GGML_I8, 1, 1, "i8"},         {MSADB_GGML_I16, 1, 2, "i16"},
    {MSADB_GGML_I32, 1, 4, "i32"},       {MSADB_GGML_I64, 1, 8, "i64"},
    {MSADB_GGML_F64, 1, 8, "f64"},       {MSADB_GGML_BF16, 1, 2, "bf16"},
};

static int ggml_find(uint32_t type)
{
    for (size_t i = 0; i < sizeof ggml_types / sizeof ggml_types[0]; i++)
        if (ggml_types[i].type == type)
            return (int)i;
    return -1;
}

uint32_t msadb_ggml_block_size(uint32_t type)
{
    int i = ggml_find(type);
    return i < 0 ? 0 : ggml_types[i].block;
}

uint32_t msadb_ggml_type_size(uint32_t type)
{
    int i = ggml_find(type);
    return i < 0 ? 0 : ggml_types[i].bytes;
}

const char *msadb_ggml_type_name(uint32_t type)
{
    int i = ggml_find(type);
    return i < 0 ? NULL : ggml_types[i].name;
}

int msadb_ggml_convertible(uint32_t type)
{
    return type == MSADB_GGML_F32 || type == MSADB_GGML_F16 || type == MSADB_GGML_BF16 ||
           type == MSADB_GGML_Q8_0;
}

/* ------------------------------------------------------------------------ */
/* Cursor                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct cursor {
    const uint8_t *p;
    uint64_t len, pos;
} cursor;

static uint64_t cur_left(const cursor *c) { return c->len - c->pos; }

static int cur_skip(cursor *c, uint64_t n)
{
    if (n > cur_left(c))
        return MSADB_ECORRUPT;
    c->pos += n;
    return 0;
}

static int cur_u32(cursor *c, uint32_t *v)
{
    if (cur_left(c) < 4)
        return MSADB_ECORRUPT;
    *v = msadb_get_le32(c->p + c->pos);
    c->pos += 4;
    return 0;
}

static int cur_u64(cursor *c, uint64_t *v)
{
    if (cur_left(c) < 8)
        return MSADB_ECORRUPT;
    *v = msadb_get_le64(c->p + c->pos);
    c->pos += 8;
    return 0;
}

/* A GGUF string: u64 length, then the bytes.  *at gets the offset of the
 * bytes. */
static int cur_str(cursor *c, uint64_t *at, uint64_t *n)
{
    int rc = cur_u64(c, n);
    if (rc)
        return rc;
    *at = c->pos;
    return cur_skip(c, *n);
}

/* ------------------------------------------------------------------------ */
/* Parsing                                                                  */
/* ------------------------------------------------------------------------ */

/* Copies a key or tensor name into the arena and returns its offset there
 * (pointers are fixed up once the arena stops growing).  Empty names and
 * names with a NUL byte are refused: the first cannot be looked up, the
 * second would alias a shorter name. */
static int intern(msadb_gguf *g, const uint8_t *s, uint64_t n, uint64_t max, size_t *off)
{
    if (n == 0 || n > max || memchr(s, 0, (size_t)n))
        return MSADB_ECORRUPT;
    if (g->names_cap - g->names_len < n + 1) {
        size_t cap = g->names_cap ? g->names_cap : 256;
        while (cap - g->names_len < n + 1)
            cap *= 2;
        char *p = realloc(g->names, cap);
        if (!p)
            return MSADB_ENOMEM;
        g->names = p;
        g->names_cap = cap;
    }
    memcpy(g->names + g->names_len, s, (size_t)n);
    g->names[g->names_len + n] = 0;
    *off = g->names_len;
    g->names_len += (size_t)n + 1;
    return 0;
}

/* Reads the value of one metadata entry (after its type). */
static int parse_value(msadb_gguf *g, cursor *c, msadb_gguf_kv *kv)
{
    int rc;
    if (kv->type >= MSADB_GGUF_NTYPES)
        return MSADB_ECORRUPT;
    kv->elem_type = kv->type;
    kv->n = 1;
    if (kv->type == MSADB_GGUF_STRING) {
        uint64_t at;
        if ((rc = cur_str(c, &at, &kv->str_len)))
            return rc;
        kv->data = c->p + at;
        return 0;
    }
    if (kv->type != MSADB_GGUF_ARRAY) {
        kv->data = c->p + c->pos;
        if ((rc = cur_skip(c, msadb_gguf_type_size(kv->type))))
            return rc;
        if (kv->type == MSADB_GGUF_BOOL && kv->data[0] > 1)
            return MSADB_ECORRUPT;
        return 0;
    }
    /* array: element type, count, elements.  Nested arrays are refused (no
     * writer we know produces them and llama.cpp does not read them). */
    if ((rc = cur_u32(c, &kv->elem_type)) || (rc = cur_u64(c, &kv->n)))
        return rc;
    if (kv->elem_type >= MSADB_GGUF_NTYPES || kv->elem_type == MSADB_GGUF_ARRAY)
        return MSADB_ECORRUPT;
    kv->data = c->p + c->pos;
    if (kv->elem_type == MSADB_GGUF_STRING) {
        /* every element needs at least its 8-byte length: bound the count
         * before allocating the offset table */
        if (kv->n > cur_left(c) / 8)
            return MSADB_ECORRUPT;
        uint64_t *off = malloc((size_t)(kv->n ? kv->n : 1) * sizeof *off);
        if (!off)
            return MSADB_ENOMEM;
        kv->str_off = off;
        uint64_t start = c->pos;
        for (uint64_t i = 0; i < kv->n; i++) {
            uint64_t at, n;
            off[i] = c->pos - start;
            if ((rc = cur_str(c, &at, &n)))
                return rc;
        }
        return 0;
    }
    uint64_t es = msadb_gguf_type_size(kv->elem_type);
    if (kv->n > cur_left(c) / es)
        return MSADB_ECORRUPT;
    if ((rc = cur_skip(c, kv->n * es)))
        return rc;
    if (kv->elem_type == MSADB_GGUF_BOOL)
        for (uint64_t i = 0; i < kv->n; i++)
            if (kv->data[i] > 1)
                return MSADB_ECORRUPT;
    return 0;
}

static int parse_kvs(msadb_gguf *g, cursor *c, uint64_t n)
{
    /* smallest entry: key length (8) + 1-byte key + type (4) + 1-byte value */
    if (n > cur_left(c) / 14)
        return MSADB_ECORRUPT;
    g->kv = calloc((size_t)(n ? n : 1), sizeof *g->kv);
    if (!g->kv)
        return MSADB_ENOMEM;
    /* key pointers are arena offsets until the arena stops growing */
    for (uint64_t i = 0; i < n; i++) {
        msadb_gguf_kv *kv = &g->kv[i];
        uint64_t at, klen;
        size_t off;
        int rc;
        if ((rc = cur_str(c, &at, &klen)) || (rc = intern(g, c->p + at, klen, KEY_MAX, &off)))
            return rc;
        kv->key = (const char *)(uintptr_t)off;
        g->n_kv = (size_t)i + 1;
        if ((rc = cur_u32(c, &kv->type)) || (rc = parse_value(g, c, kv)))
            return rc;
    }
    return 0;
}

static int parse_tensor_infos(msadb_gguf *g, cursor *c, uint64_t n)
{
    /* smallest entry: name (8 + 1) + n_dims (4) + one dim (8) + type (4) +
     * offset (8) */
    if (n > cur_left(c) / 33)
        return MSADB_ECORRUPT;
    g->tensors = calloc((size_t)(n ? n : 1), sizeof *g->tensors);
    if (!g->tensors)
        return MSADB_ENOMEM;
    for (uint64_t i = 0; i < n; i++) {
        msadb_gguf_tensor *t = &g->tensors[i];
        uint64_t at, nlen;
        size_t off;
        int rc;
        if ((rc = cur_str(c, &at, &nlen)) ||
            (rc = intern(g, c->p + at, nlen, NAME_MAX_BYTES, &off)))
            return rc;
        t->name = (const char *)(uintptr_t)off;
        g->n_tensors = (size_t)i + 1;
        if ((rc = cur_u32(c, &t->n_dims)))
            return rc;
        if (t->n_dims < 1 || t->n_dims > MSADB_GGUF_MAX_DIMS)
            return MSADB_ECORRUPT;
        uint64_t count = 1;
        for (uint32_t d = 0; d < MSADB_GGUF_MAX_DIMS; d++) {
            t->ne[d] = 1;
            if (d < t->n_dims && (rc = cur_u64(c, &t->ne[d])))
                return rc;
            /* ggml keeps dims as int64 and their product must fit too */
            if (t->ne[d] > (uint64_t)INT64_MAX)
                return MSADB_ECORRUPT;
            if (t->ne[d] && count > (uint64_t)INT64_MAX / t->ne[d])
                return MSADB_ECORRUPT;
            count *= t->ne[d];
        }
        t->n_elements = count;
        if ((rc = cur_u32(c, &t->type)) || (rc = cur_u64(c, &t->offset)))
            return rc;
        uint32_t block = msadb_ggml_block_size(t->type), bytes = msadb_ggml_type_size(t->type);
        if (!block)
            return MSADB_EDTYPE;
        if (t->ne[0] % block)
            return MSADB_ECORRUPT;
        uint64_t blocks = count / block;
        if (blocks > UINT64_MAX / bytes)
            return MSADB_ECORRUPT;
        t->n_bytes = blocks * bytes;
    }
    return 0;
}

static int cmp_kv(const void *a, const void *b)
{
    return strcmp((*(const msadb_gguf_kv *const *)a)->key, (*(const msadb_gguf_kv *const *)b)->key);
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp((*(const msadb_gguf_tensor *const *)a)->name,
                  (*(const msadb_gguf_tensor *const *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const msadb_gguf_tensor *x = *(const msadb_gguf_tensor *const *)a;
    const msadb_gguf_tensor *y = *(const msadb_gguf_tensor *const *)b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    return x->n_bytes < y->n_bytes ? -1 : x->n_bytes > y->n_bytes;
}

/* Unique keys and names, sorted indexes for lookup. */
static int build_indexes(msadb_gguf *g)
{
    for (size_t i = 0; i < g->n_kv; i++)
        g->kv[i].key = g->names + (uintptr_t)g->kv[i].key;
    for (size_t i = 0; i < g->n_tensors; i++)
        g->tensors[i].name = g->names + (uintptr_t)g->tensors[i].name;
    g->kv_sorted = malloc((g->n_kv ? g->n_kv : 1) * sizeof *g->kv_sorted);
    g->tensor_sorted = malloc((g->n_tensors ? g->n_tensors : 1) * sizeof *g->tensor_sorted);
    if (!g->kv_sorted || !g->tensor_sorted)
        return MSADB_ENOMEM;
    for (size_t i = 0; i < g->n_kv; i++)
        g->kv_sorted[i] = &g->kv[i];
    for (size_t i = 0; i < g->n_tensors; i++)
        g->tensor_sorted[i] = &g->tensors[i];
    qsort(g->kv_sorted, g->n_kv, sizeof *g->kv_sorted, cmp_kv);
    qsort(g->tensor_sorted, g->n_tensors, sizeof *g->tensor_sorted, cmp_tensor_name);
    for (size_t i = 1; i < g->n_kv; i++)
        if (!strcmp(g->kv_sorted[i - 1]->key, g->kv_sorted[i]->key))
            return MSADB_ECORRUPT;
    for (size_t i = 1; i < g->n_tensors; i++)
        if (!strcmp(g->tensor_sorted[i - 1]->name, g->tensor_sorted[i]->name))
            return MSADB_ECORRUPT;
    return 0;
}

/* general.alignment, if present, must be a u32 power of two. */
static int read_alignment(msadb_gguf *g)
{
    g->alignment = MSADB_GGUF_DEFAULT_ALIGNMENT;
    const msadb_gguf_kv *kv = msadb_gguf_find(g, "general.alignment");
    if (!kv)
        return 0;
    if (kv->type != MSADB_GGUF_UINT32)
        return MSADB_ECORRUPT;
    uint32_t a = msadb_get_le32(kv->data);
    if (a == 0 || (a & (a - 1)))
        return MSADB_ECORRUPT;
    g->alignment = a;
    return 0;
}

/* Places the data section and checks every tensor against it: aligned
 * offsets, inside the file, no two tensors sharing a byte. */
static int place_tensors(msadb_gguf *g, uint64_t table_end)
{
    uint64_t a = g->alignment;
    uint64_t pad = (a - table_end % a) % a;
    if (g->n_tensors == 0) {
        /* a file without tensors may end right after its metadata */
        g->data_off = pad <= g->len - table_end ? table_end + pad : g->len;
        return 0;
    }
    if (pad > g->len - table_end)
        return MSADB_ECORRUPT;
    g->data_off = table_end + pad;
    uint64_t size = g->len - g->data_off;
    for (size_t i = 0; i < g->n_tensors; i++) {
        msadb_gguf_tensor *t = &g->tensors[i];
        if (t->offset % a || t->offset > size || t->n_bytes > size - t->offset)
            return MSADB_ECORRUPT;
        t->data = g->base + g->data_off + t->offset;
    }
    /* reuse the name index's memory would reorder it; sort a copy */
    const msadb_gguf_tensor **by_off = malloc(g->n_tensors * sizeof *by_off);
    if (!by_off)
        return MSADB_ENOMEM;
    for (size_t i = 0; i < g->n_tensors; i++)
        by_off[i] = &g->tensors[i];
    qsort(by_off, g->n_tensors, sizeof *by_off, cmp_tensor_offset);
    int rc = 0;
    for (size_t i = 1; i < g->n_tensors && !rc; i++)
        if (by_off[i - 1]->offset + by_off[i - 1]->n_bytes > by_off[i]->offset)
            rc = MSADB_ECORRUPT;
    free(by_off);
    return rc;
}

static int parse(msadb_gguf *g)
{
    cursor c = {g->base, g->len, 0};
    uint32_t magic;
    uint64_t n_tensors, n_kv;
    int rc;
    if ((rc = cur_u32(&c, &magic)))
        return rc;
    if (magic != MSADB_GGUF_MAGIC)
        return MSADB_ECORRUPT;
    if ((rc = cur_u32(&c, &g->version)))
        return rc;
    if (g->version != MSADB_GGUF_VERSION)
        return MSADB_EVERSION;
    if ((rc = cur_u64(&c, &n_tensors)) || (rc = cur_u64(&c, &n_kv)))
        return rc;
    if ((rc = parse_kvs(g, &c, n_kv)) || (rc = parse_tensor_infos(g, &c, n_tensors)) ||
        (rc = build_indexes(g)) || (rc = read_alignment(g)))
        return rc;
    return place_tensors(g, c.pos);
}

static void free_handle(msadb_gguf *g)
{
    if (g->kv)
        for (size_t i = 0; i < g->n_kv; i++)
            free((void *)g->kv[i].str_off);
    free(g->kv);
    free(g->tensors);
    free(g->kv_sorted);
    free(g->tensor_sorted);
    free(g->names);
    if (g->map)
        munmap(g->map, g->len);
    free(g);
}

static int open_common(msadb_gguf *g, msadb_gguf **out)
{
    int rc = parse(g);
    if (rc) {
        /* g->n_kv counts only entries whose str_off may be set; entries
         * after it were never touched (calloc'ed) */
        free_handle(g);
        return rc;
    }
    *out = g;
    return 0;
}

int msadb_gguf_open_memory(const void *buf, size_t len, msadb_gguf **out)
{
    if (!out || (!buf && len))
        return MSADB_EINVAL;
    *out = NULL;
    msadb_gguf *g = calloc(1, sizeof *g);
    if (!g)
        return MSADB_ENOMEM;
    g->base = buf ? buf : (const uint8_t *)"";
    g->len = len;
    return open_common(g, out);
}

int msadb_gguf_open(const char *path, msadb_gguf **out)
{
    if (!path || !out)
        return MSADB_EINVAL;
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return e;
    }
    if (!S_ISREG(st.st_mode) || st.st_size < 24) {
        close(fd);
        return S_ISREG(st.st_mode) ? MSADB_ECORRUPT : MSADB_EINVAL;
    }
    /* MAP_PRIVATE + PROT_READ: the runtime never writes to the weights, and
     * a file truncated by someone else while mapped would fault, which is
     * the usual contract of mmap-based readers (LMDB has the same). */
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return e;
    msadb_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        munmap(map, (size_t)st.st_size);
        return MSADB_ENOMEM;
    }
    g->map = map;
    g->base = map;
    g->len = (size_t)st.st_size;
    return open_common(g, out);
}

void msadb_gguf_close(msadb_gguf *g)
{
    if (g)
        free_handle(g);
}

/* ------------------------------------------------------------------------ */
/* Accessors                                                                */
/* ------------------------------------------------------------------------ */

uint32_t msadb_gguf_alignment(const msadb_gguf *g) { return g->alignment; }
uint64_t msadb_gguf_data_offset(const msadb_gguf *g) { return g->data_off; }
size_t msadb_gguf_n_kv(const msadb_gguf *g) { return g->n_kv; }
size_t msadb_gguf_n_tensors(const msadb_gguf *g) { return g->n_tensors; }

const msadb_gguf_kv *msadb_gguf_kv_at(const msadb_gguf *g, size_t i)
{
    return g && i < g->n_kv ? &g->kv[i] : NULL;
}

const msadb_gguf_tensor *msadb_gguf_tensor_at(const msadb_gguf *g, size_t i)
{
    return g && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const msadb_gguf_kv *msadb_gguf_find(const msadb_gguf *g, const char *key)
{
    if (!g || !key)
        return NULL;
    size_t lo = 0, hi = g->n_kv;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->kv_sorted[mid]->key, key);
        if (c == 0)
            return g->kv_sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const msadb_gguf_tensor *msadb_gguf_find_tensor(const msadb_gguf *g, const char *name)
{
    if (!g || !name)
        return NULL;
    size_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->tensor_sorted[mid]->name, name);
        if (c == 0)
            return g->tensor_sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int msadb_gguf_get_tensor(const msadb_gguf *g, const char *name, const msadb_gguf_tensor **out)
{
    if (!g || !name || !out)
        return MSADB_EINVAL;
    *out = msadb_gguf_find_tensor(g, name);
    return *out ? 0 : MSADB_ENOTFOUND;
}

/* One integer of type `type` at p, as int64; MSADB_ECORRUPT for a u64 that
 * does not fit, MSADB_EDTYPE for a non-integer type. */
static int read_int(uint32_t type, const uint8_t *p, int64_t *out)
{
    switch (type) {
    case MSADB_GGUF_UINT8: case MSADB_GGUF_BOOL: *out = p[0]; return 0;
    case MSADB_GGUF_INT8: *out = (int8_t)p[0]; return 0;
    case MSADB_GGUF_UINT16: *out = msadb_get_le16(p); return 0;
    case MSADB_GGUF_INT16: *out = (int16_t)msadb_get_le16(p); return 0;
    case MSADB_GGUF_UINT32: *out = msadb_get_le32(p); return 0;
    case MSADB_GGUF_INT32: *out = (int32_t)msadb_get_le32(p); return 0;
    case MSADB_GGUF_INT64: *out = (int64_t)msadb_get_le64(p); return 0;
    case MSADB_GGUF_UINT64: {
        uint64_t v = msadb_get_le64(p);
        if (v > (uint64_t)INT64_MAX)
            return MSADB_ECORRUPT;
        *out = (int64_t)v;
        return 0;
    }
    default:
        return MSADB_EDTYPE;
    }
}

static int read_f64(uint32_t type, const uint8_t *p, double *out)
{
    if (type == MSADB_GGUF_FLOAT32) {
        float f;
        memcpy(&f, p, 4);
        *out = f;
        return 0;
    }
    if (type == MSADB_GGUF_FLOAT64) {
        memcpy(out, p, 8);
        return 0;
    }
    int64_t v;
    int rc = read_int(type, p, &v);
    if (!rc)
        *out = (double)v;
    return rc;
}

static int find_scalar(const msadb_gguf *g, const char *key, const msadb_gguf_kv **kv)
{
    if (!g || !key)
        return MSADB_EINVAL;
    *kv = msadb_gguf_find(g, key);
    if (!*kv)
        return MSADB_ENOTFOUND;
    return (*kv)->type == MSADB_GGUF_ARRAY ? MSADB_EDTYPE : 0;
}

int msadb_gguf_get_int(const msadb_gguf *g, const char *key, int64_t min, int64_t max,
                       int64_t *out)
{
    const msadb_gguf_kv *kv;
    int64_t v;
    int rc = find_scalar(g, key, &kv);
    if (rc)
        return rc;
    if (kv->type == MSADB_GGUF_BOOL)
        return MSADB_EDTYPE;
    if ((rc = read_int(kv->type, kv->data, &v)))
        return rc;
    if (v < min || v > max)
        return MSADB_ECORRUPT;
    if (out)
        *out = v;
    return 0;
}

int msadb_gguf_get_f32(const msadb_gguf *g, const char *key, float *out)
{
    const msadb_gguf_kv *kv;
    double v;
    int rc = find_scalar(g, key, &kv);
    if (rc)
        return rc;
    if (kv->type != MSADB_GGUF_FLOAT32 && kv->type != MSADB_GGUF_FLOAT64)
        return MSADB_EDTYPE;
    read_f64(kv->type, kv->data, &v);
    if (!isfinite(v) || fabs(v) > 3.4028234663852886e38)
        return MSADB_ECORRUPT;
    if (out)
        *out = (float)v;
    return 0;
}

int msadb_gguf_get_bool(const msadb_gguf *g, const char *key, int *out)
{
    const msadb_gguf_kv *kv;
    int rc = find_scalar(g, key, &kv);
    if (rc)
        return rc;
    if (kv->type != MSADB_GGUF_BOOL)
        return MSADB_EDTYPE;
    if (out)
        *out = kv->data[0] != 0;
    return 0;
}

int msadb_gguf_get_str(const msadb_gguf *g, const char *key, const char **s, size_t *len)
{
    const msadb_gguf_kv *kv;
    int rc = find_scalar(g, key, &kv);
    if (rc)
        return rc;
    if (kv->type != MSADB_GGUF_STRING)
        return MSADB_EDTYPE;
    if (s)
        *s = (const char *)kv->data;
    if (len)
        *len = (size_t)kv->str_len;
    return 0;
}

int msadb_gguf_get_cstr(const msadb_gguf *g, const char *key, char *buf, size_t cap)
{
    const char *s;
    size_t n;
    if (!buf || cap == 0)
        return MSADB_EINVAL;
    int rc = msadb_gguf_get_str(g, key, &s, &n);
    if (rc)
        return rc;
    if (n >= cap || memchr(s, 0, n))
        return MSADB_ELIMIT;
    memcpy(buf, s, n);
    buf[n] = 0;
    return 0;
}

int msadb_gguf_get_arr(const msadb_gguf *g, const char *key, const msadb_gguf_kv **kv,
                       uint32_t *elem_type, uint64_t *n)
{
    if (!g || !key)
        return MSADB_EINVAL;
    const msadb_gguf_kv *e = msadb_gguf_find(g, key);
    if (!e)
        return MSADB_ENOTFOUND;
    if (e->type != MSADB_GGUF_ARRAY)
        return MSADB_EDTYPE;
    if (kv)
        *kv = e;
    if (elem_type)
        *elem_type = e->elem_type;
    if (n)
        *n = e->n;
    return 0;
}

int msadb_gguf_arr_int(const msadb_gguf_kv *kv, uint64_t i, int64_t *out)
{
    if (!kv || !out || kv->type != MSADB_GGUF_ARRAY || i >= kv->n)
        return MSADB_EINVAL;
    size_t es = msadb_gguf_type_size(kv->elem_type);
    if (!es)
        return MSADB_EDTYPE;
    return read_int(kv->elem_type, kv->data + i * es, out);
}

int msadb_gguf_arr_f64(const msadb_gguf_kv *kv, uint64_t i, double *out)
{
    if (!kv || !out || kv->type != MSADB_GGUF_ARRAY || i >= kv->n)
        return MSADB_EINVAL;
    size_t es = msadb_gguf_type_size(kv->elem_type);
    if (!es)
        return MSADB_EDTYPE;
    return read_f64(kv->elem_type, kv->data + i * es, out);
}

int msadb_gguf_arr_str(const msadb_gguf_kv *kv, uint64_t i, const char **s, size_t *len)
{
    if (!kv || kv->type != MSADB_GGUF_ARRAY || i >= kv->n)
        return MSADB_EINVAL;
    if (kv->elem_type != MSADB_GGUF_STRING)
        return MSADB_EDTYPE;
    const uint8_t *p = kv->data + kv->str_off[i];
    if (s)
        *s = (const char *)(p + 8);
    if (len)
        *len = (size_t)msadb_get_le64(p);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Conversion                                                               */
/* ------------------------------------------------------------------------ */

int msadb_gguf_to_f32(const msadb_gguf_tensor *t, uint64_t first, uint64_t n, float *dst)
{
    if (!t || (!dst && n))
        return MSADB_EINVAL;
    if (!msadb_ggml_convertible(t->type))
        return MSADB_EDTYPE;
    if (first > t->n_elements || n > t->n_elements - first)
        return MSADB_EINVAL;
    const uint8_t *p = t->data;
    switch (t->type) {
    case MSADB_GGML_F32:
        memcpy(dst, p + first * 4, (size_t)n * 4);
        return 0;
    case MSADB_GGML_F16:
        p += first * 2;
        for (uint64_t i = 0; i < n; i++)
            dst[i] = msadb_f16_to_f32(msadb_get_le16(p + 2 * i));
        return 0;
    case MSADB_GGML_BF16:
        p += first * 2;
        for (uint64_t i = 0; i < n; i++)
            dst[i] = msadb_bf16_to_f32(msadb_get_le16(p + 2 * i));
        return 0;
    case MSADB_GGML_Q8_0:
        if (first % MSADB_Q8_0_BLOCK || n % MSADB_Q8_0_BLOCK)
            return MSADB_EINVAL;
        p += first / MSADB_Q8_0_BLOCK * MSADB_Q8_0_BYTES;
        for (uint64_t b = 0; b < n / MSADB_Q8_0_BLOCK; b++, p += MSADB_Q8_0_BYTES) {
            float d = msadb_f16_to_f32(msadb_get_le16(p));
            const int8_t *q = (const int8_t *)(p + 2);
            for (int j = 0; j < MSADB_Q8_0_BLOCK; j++)
                dst[b * MSADB_Q8_0_BLOCK + (uint64_t)j] = d * (float)q[j];
        }
        return 0;
    default:
        return MSADB_EDTYPE;
    }
}
