/* kvsource.c -- K/V input files (safetensors, or .npy pairs) checked
 * against a store signature and cut into documents: the reader shared by
 * ingest and load.  Uses only the public API (msadb.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ------------------------------------------------------------------------ */
/* input files                                                              */
/* ------------------------------------------------------------------------ */

static const char *const known_tensors[] = {
    "keys", "values", "doc_lengths", "tokens", "text", "token_spans",
    "text_lengths", "meta", "meta_lengths", "manifest", NULL,
};

/* "FILE: tensor" for safetensors inputs, the .npy file's name otherwise. */
typedef struct where_buf {
    char s[1200];
} where_buf;

static const char *where(const kv_source *s, const char *tensor, where_buf *b)
{
    if (s->npy_values.n && strcmp(tensor, "values") == 0)
        snprintf(b->s, sizeof b->s, "%s", s->values_label);
    else if (s->npy_values.n && strcmp(tensor, "tokens") == 0)
        snprintf(b->s, sizeof b->s, "%s", s->tokens_label);
    else if (s->npy_values.n)
        snprintf(b->s, sizeof b->s, "%s", s->label);
    else
        snprintf(b->s, sizeof b->s, "%s: %s", s->label, tensor);
    return b->s;
}

/* The file a tensor of the source lives in. */
static const tf_file *file_of(const kv_source *s, const tf_tensor *t)
{
    return s->npy_values.n && t == s->values ? &s->npy_values : &s->st;
}

/* Index of the first NaN or Inf of a float tensor, or -1; read in windows
 * whose pages are released after use, so a file larger than memory is
 * scanned in bounded memory. */
static int64_t first_nonfinite(const kv_source *s, const tf_tensor *t)
{
    const uint64_t es = tf_dtype_size(t->dtype), win = (64u << 20) / es;
    for (uint64_t i = 0; i < t->nelem; i += win) {
        uint64_t n = t->nelem - i < win ? t->nelem - i : win;
        int64_t bad = tf_first_nonfinite(t->dtype, t->data + i * es, n);
        tf_release(file_of(s, t), t->data + i * es, (size_t)(n * es));
        if (bad >= 0)
            return (int64_t)i + bad;
    }
    return -1;
}

static int msadb_kv_dtype(tf_dtype dt)
{
    return dt == TF_F32 ? MSADB_DTYPE_F32 : dt == TF_F16 ? MSADB_DTYPE_F16 : MSADB_DTYPE_BF16;
}

static int check_kv(const kv_source *s, const char *name, const tf_tensor *t,
                    const msadb_signature *sig, int scan)
{
    where_buf w;
    char sb[200];
    if (!t)
        return cli_error("%s: no tensor '%s' (expected keys and values of shape "
                         "[L_mem,H,T,D] = [%u,%u,T,%u])",
                         s->label, name, sig->n_memory_layers, sig->n_kv_heads, sig->head_dim);
    if (!tf_is_float(t->dtype))
        return cli_error("%s: dtype %s, expected F32, F16 or BF16", where(s, name, &w),
                         tf_dtype_name(t->dtype));
    tf_shape_str(t->shape, t->ndim, sb, sizeof sb);
    if (t->ndim != 4)
        return cli_error("%s: shape %s has %d dimensions, expected [L_mem,H,T,D] = [%u,%u,T,%u]",
                         where(s, name, &w), sb, t->ndim, sig->n_memory_layers, sig->n_kv_heads,
                         sig->head_dim);
    if (t->shape[0] != sig->n_memory_layers)
        return cli_error("%s: shape %s but the store has %u memory layers", where(s, name, &w), sb,
                         sig->n_memory_layers);
    if (t->shape[1] != sig->n_kv_heads)
        return cli_error("%s: shape %s but the store has %u kv heads", where(s, name, &w), sb,
                         sig->n_kv_heads);
    if (t->shape[3] != sig->head_dim)
        return cli_error("%s: shape %s but the store has head dim %u", where(s, name, &w), sb,
                         sig->head_dim);
    if (t->shape[2] == 0)
        return cli_error("%s: shape %s holds no tokens (empty document)", where(s, name, &w), sb);
    int64_t bad = scan ? first_nonfinite(s, t) : -1;
    if (bad >= 0) {
        uint64_t i = (uint64_t)bad, D = t->shape[3], T = t->shape[2], H = t->shape[1];
        return cli_error("%s: NaN or Inf at [%llu,%llu,%llu,%llu]", where(s, name, &w),
                         (unsigned long long)(i / (D * T * H)), (unsigned long long)(i / (D * T) % H),
                         (unsigned long long)(i / D % T), (unsigned long long)(i % D));
    }
    return CLI_OK;
}

/* A 1-D I64 tensor of n entries, or [n,2] when pairs. */
static int check_shape(const kv_source *s, const char *name, const tf_tensor *t, tf_dtype dt,
                       uint64_t n0, int pairs, const char *expect)
{
    where_buf w;
    char sb[200];
    int ok = t->dtype == dt && t->ndim == (pairs ? 2 : 1) && t->shape[0] == n0 &&
             (!pairs || t->shape[1] == 2);
    if (ok)
        return CLI_OK;
    return cli_error("%s: %s %s, expected %s %s", where(s, name, &w), tf_dtype_name(t->dtype),
                     tf_shape_str(t->shape, t->ndim, sb, sizeof sb), tf_dtype_name(dt), expect);
}

static int split_docs(kv_source *s, const tf_tensor *dl)
{
    where_buf w;
    char sb[200];
    if (!dl) {
        s->n_docs = 1;
    } else {
        if (dl->dtype != TF_I64 || dl->ndim != 1 || dl->shape[0] == 0)
            return cli_error("%s: %s %s, expected I64 [n_docs] with n_docs >= 1",
                             where(s, "doc_lengths", &w), tf_dtype_name(dl->dtype),
                             tf_shape_str(dl->shape, dl->ndim, sb, sizeof sb));
        s->n_docs = dl->shape[0];
    }
    s->doc_start = calloc(s->n_docs + 1, sizeof(uint64_t));
    if (!s->doc_start)
        return cli_error("out of memory");
    if (!dl) {
        s->doc_start[1] = s->T;
        return CLI_OK;
    }
    for (size_t i = 0; i < s->n_docs; i++) {
        int64_t n = tf_get_int(dl, i);
        if (n < 1)
            return cli_error("%s: entry %zu is %lld; every document needs at least 1 token",
                             where(s, "doc_lengths", &w), i, (long long)n);
        if ((uint64_t)n > s->T - s->doc_start[i])
            return cli_error("%s: the lengths sum past T = %llu tokens of keys",
                             where(s, "doc_lengths", &w), (unsigned long long)s->T);
        s->doc_start[i + 1] = s->doc_start[i] + (uint64_t)n;
    }
    if (s->doc_start[s->n_docs] != s->T)
        return cli_error("%s: the lengths sum to %llu but keys have T = %llu tokens",
                         where(s, "doc_lengths", &w), (unsigned long long)s->doc_start[s->n_docs],
                         (unsigned long long)s->T);
    return CLI_OK;
}

/* Per-document [start,end) ranges of a byte tensor, from an I64 lengths
 * tensor, or the whole tensor for a single document. */
static int byte_ranges(kv_source *s, const char *name, const tf_tensor *bytes,
                       const tf_tensor *lengths, const char *len_name, uint64_t **out)
{
    where_buf w;
    *out = calloc(s->n_docs * 2, sizeof(uint64_t));
    if (!*out)
        return cli_error("out of memory");
    if (!lengths) {
        (*out)[1] = bytes->nelem;
        return CLI_OK; /* single document (checked by the caller) */
    }
    if (check_shape(s, len_name, lengths, TF_I64, s->n_docs, 0, "[n_docs]") != CLI_OK)
        return CLI_ERROR;
    uint64_t off = 0;
    for (size_t i = 0; i < s->n_docs; i++) {
        int64_t n = tf_get_int(lengths, i);
        if (n < 0 || (uint64_t)n > bytes->nelem - off)
            return cli_error("%s: entry %zu is %lld; the lengths must be >= 0 and sum to the %llu "
                             "bytes of '%s'",
                             where(s, len_name, &w), i, (long long)n,
                             (unsigned long long)bytes->nelem, name);
        (*out)[2 * i] = off;
        (*out)[2 * i + 1] = off += (uint64_t)n;
    }
    if (off != bytes->nelem)
        return cli_error("%s: the lengths sum to %llu but '%s' has %llu bytes",
                         where(s, len_name, &w), (unsigned long long)off, name,
                         (unsigned long long)bytes->nelem);
    return CLI_OK;
}

static int check_spans(kv_source *s, const tf_tensor *text_lengths)
{
    where_buf w;
    uint64_t len = s->text->nelem;
    for (size_t i = 0; i < s->n_docs; i++) {
        uint64_t lo = UINT64_MAX, hi = 0;
        for (uint64_t t = s->doc_start[i]; t < s->doc_start[i + 1]; t++) {
            int64_t a = tf_get_int(s->spans, 2 * t), b = tf_get_int(s->spans, 2 * t + 1);
            if (a < 0 || a > b || (uint64_t)b > len)
                return cli_error("%s: token %llu has span [%lld,%lld], expected 0 <= start <= end "
                                 "<= %llu (bytes of text)",
                                 where(s, "token_spans", &w), (unsigned long long)t, (long long)a,
                                 (long long)b, (unsigned long long)len);
            if (text_lengths && ((uint64_t)a < s->text_range[2 * i] ||
                                 (uint64_t)b > s->text_range[2 * i + 1]))
                return cli_error("%s: token %llu has span [%lld,%lld] outside the text of its "
                                 "document %zu, bytes [%llu,%llu) by text_lengths",
                                 where(s, "token_spans", &w), (unsigned long long)t, (long long)a,
                                 (long long)b, i, (unsigned long long)s->text_range[2 * i],
                                 (unsigned long long)s->text_range[2 * i + 1]);
            lo = (uint64_t)a < lo ? (uint64_t)a : lo;
            hi = (uint64_t)b > hi ? (uint64_t)b : hi;
        }
        if (!text_lengths && s->n_docs > 1) {
            s->text_range[2 * i] = lo;
            s->text_range[2 * i + 1] = hi;
        }
    }
    return CLI_OK;
}

static int check_text(kv_source *s, const tf_tensor *text_lengths)
{
    where_buf w;
    if (!s->text) {
        if (s->spans)
            return cli_error("%s: token_spans given without a 'text' tensor", s->label);
        if (text_lengths)
            return cli_error("%s: text_lengths given without a 'text' tensor", s->label);
        return CLI_OK;
    }
    if (check_shape(s, "text", s->text, TF_U8, s->text->nelem, 0, "[n_bytes]") != CLI_OK)
        return CLI_ERROR;
    if (s->spans && check_shape(s, "token_spans", s->spans, TF_I64, s->T, 1, "[T,2]") != CLI_OK)
        return CLI_ERROR;
    if (s->n_docs > 1 && !text_lengths && !s->spans)
        return cli_error("%s: cannot split the text into %zu documents: give token_spans or "
                         "text_lengths",
                         where(s, "text", &w), s->n_docs);
    if (byte_ranges(s, "text", s->text, text_lengths, "text_lengths", &s->text_range) != CLI_OK)
        return CLI_ERROR;
    return s->spans ? check_spans(s, text_lengths) : CLI_OK;
}

static int check_meta(kv_source *s, const tf_tensor *meta_lengths)
{
    if (!s->meta)
        return meta_lengths ? cli_error("%s: meta_lengths given without a 'meta' tensor", s->label)
                            : CLI_OK;
    if (check_shape(s, "meta", s->meta, TF_U8, s->meta->nelem, 0, "[n_bytes]") != CLI_OK)
        return CLI_ERROR;
    if (s->n_docs > 1 && !meta_lengths)
        return cli_error("%s: meta: cannot split into %zu documents without meta_lengths",
                         s->label, s->n_docs);
    return byte_ranges(s, "meta", s->meta, meta_lengths, "meta_lengths", &s->meta_range);
}

/* Checks the tensors found in s against sig and cuts documents. */
static int kv_source_check(kv_source *s, const msadb_signature *sig, const tf_tensor *doc_lengths,
                           const tf_tensor *text_lengths, const tf_tensor *meta_lengths, int scan)
{
    where_buf w;
    char sa[200], sb[200];
    if (check_kv(s, "keys", s->keys, sig, scan) != CLI_OK || check_kv(s, "values", s->values, sig, scan) != CLI_OK)
        return CLI_ERROR;
    if (memcmp(s->keys->shape, s->values->shape, sizeof s->keys->shape) != 0)
        return cli_error("%s: shape %s differs from keys shape %s", where(s, "values", &w),
                         tf_shape_str(s->values->shape, 4, sa, sizeof sa),
                         tf_shape_str(s->keys->shape, 4, sb, sizeof sb));
    s->L = s->keys->shape[0];
    s->H = s->keys->shape[1];
    s->T = s->keys->shape[2];
    s->D = s->keys->shape[3];
    if (split_docs(s, doc_lengths) != CLI_OK)
        return CLI_ERROR;
    if (s->tokens && check_shape(s, "tokens", s->tokens, TF_I32, s->T, 0, "[T]") != CLI_OK)
        return CLI_ERROR;
    if (check_text(s, text_lengths) != CLI_OK)
        return CLI_ERROR;
    return check_meta(s, meta_lengths);
}

/* Finds the known tensors of a parsed safetensors file and checks them. */
static int kv_source_tensors(kv_source *s, const msadb_signature *sig, int scan)
{
    for (size_t i = 0; i < s->st.n; i++) {
        size_t k = 0;
        while (known_tensors[k] && strcmp(known_tensors[k], s->st.tensors[i].name) != 0)
            k++;
        if (!known_tensors[k])
            return cli_error("%s: unknown tensor '%.80s' (expected keys, values, doc_lengths, "
                             "tokens, text, token_spans, text_lengths, meta, meta_lengths)",
                             s->label, s->st.tensors[i].name);
    }
    s->keys = tf_find(&s->st, "keys");
    s->values = tf_find(&s->st, "values");
    s->tokens = tf_find(&s->st, "tokens");
    s->text = tf_find(&s->st, "text");
    s->spans = tf_find(&s->st, "token_spans");
    s->meta = tf_find(&s->st, "meta");
    return kv_source_check(s, sig, tf_find(&s->st, "doc_lengths"), tf_find(&s->st, "text_lengths"),
                           tf_find(&s->st, "meta_lengths"), scan);
}

int kv_source_open(kv_source *s, const char *path, const msadb_signature *sig, int scan)
{
    char err[512];
    memset(s, 0, sizeof *s);
    s->label = strdup(path);
    if (!s->label)
        return cli_error("out of memory");
    if (tf_safetensors_open(path, &s->st, err, sizeof err) != 0)
        return cli_error("%s: %s", path, err);
    return kv_source_tensors(s, sig, scan);
}

int kv_source_parse(kv_source *s, const char *label, const uint8_t *buf, size_t len,
                    const msadb_signature *sig, int scan)
{
    char err[512];
    memset(s, 0, sizeof *s);
    s->label = strdup(label);
    if (!s->label)
        return cli_error("out of memory");
    if (tf_safetensors_parse(buf, len, &s->st, err, sizeof err) != 0)
        return cli_error("%s: %s", label, err);
    return kv_source_tensors(s, sig, scan);
}

int kv_source_open_npy(kv_source *s, const char *keys_path, const char *values_path,
                       const char *tokens_path, const msadb_signature *sig, int scan)
{
    char err[512];
    memset(s, 0, sizeof *s);
    s->label = strdup(keys_path);
    s->values_label = strdup(values_path);
    s->tokens_label = strdup(tokens_path ? tokens_path : "");
    if (!s->label || !s->values_label || !s->tokens_label)
        return cli_error("out of memory");
    if (tf_npy_open(keys_path, &s->st, err, sizeof err) != 0)
        return cli_error("%s: %s", keys_path, err);
    if (tf_npy_open(values_path, &s->npy_values, err, sizeof err) != 0)
        return cli_error("%s: %s", values_path, err);
    if (tokens_path && tf_npy_open(tokens_path, &s->npy_tokens, err, sizeof err) != 0)
        return cli_error("%s: %s", tokens_path, err);
    s->keys = &s->st.tensors[0];
    s->values = &s->npy_values.tensors[0];
    s->tokens = tokens_path ? &s->npy_tokens.tensors[0] : NULL;
    return kv_source_check(s, sig, NULL, NULL, NULL, scan);
}

void kv_source_close(kv_source *s)
{
    if (!s)
        return;
    tf_file_close(&s->st);
    tf_file_close(&s->npy_values);
    tf_file_close(&s->npy_tokens);
    free(s->label);
    free(s->values_label);
    free(s->tokens_label);
    free(s->doc_start);
    free(s->text_range);
    free(s->meta_range);
    memset(s, 0, sizeof *s);
}

/* Copies tokens [t0, t0+n) of every plane of t into one contiguous
 * [P][n][D] buffer, converting to f32 when to_f32; the pages read are
 * released (documents are read once, in order). */
static void *gather(const tf_file *f, const tf_tensor *t, int to_f32, uint64_t P, uint64_t T, uint64_t D,
                    uint64_t t0, uint64_t n)
{
    size_t es = to_f32 ? 4 : tf_dtype_size(t->dtype);
    uint8_t *out = malloc((size_t)(P * n * D * es) + 1);
    if (!out)
        return NULL;
    for (uint64_t p = 0; p < P; p++) {
        uint64_t first = (p * T + t0) * D;
        uint8_t *dst = out + p * n * D * es;
        if (to_f32 && t->dtype != TF_F32)
            tf_to_f32(t->dtype, t->data, first, n * D, (float *)dst);
        else
            memcpy(dst, t->data + first * es, (size_t)(n * D * es));
        size_t ses = tf_dtype_size(t->dtype);
        tf_release(f, t->data + first * ses, (size_t)(n * D * ses));
    }
    return out;
}

int kv_source_doc(const kv_source *s, size_t i, kv_doc *d)
{
    memset(d, 0, sizeof *d);
    uint64_t t0 = s->doc_start[i], n = s->doc_start[i + 1] - t0;
    int to_f32 = s->keys->dtype != s->values->dtype;
    d->keys = gather(file_of(s, s->keys), s->keys, to_f32, s->L * s->H, s->T, s->D, t0, n);
    d->values = gather(file_of(s, s->values), s->values, to_f32, s->L * s->H, s->T, s->D, t0, n);
    if (!d->keys || !d->values)
        goto oom;
    d->doc.kv_dtype = to_f32 ? MSADB_DTYPE_F32 : msadb_kv_dtype(s->keys->dtype);
    d->doc.keys = d->keys;
    d->doc.values = d->values;
    d->doc.n_tokens = (size_t)n;
    if (s->tokens) {
        if (!(d->token_ids = malloc(n * sizeof(int32_t))))
            goto oom;
        memcpy(d->token_ids, s->tokens->data + t0 * 4, n * 4);
        d->doc.token_ids = d->token_ids;
    }
    if (s->text_range && s->text_range[2 * i + 1] > s->text_range[2 * i]) {
        uint64_t a = s->text_range[2 * i], b = s->text_range[2 * i + 1];
        d->doc.text = (const char *)s->text->data + a;
        d->doc.text_len = (size_t)(b - a);
        if (s->spans) {
            if (!(d->token_spans = malloc(n * 2 * sizeof(int64_t))))
                goto oom;
            for (uint64_t k = 0; k < 2 * n; k++)
                d->token_spans[k] = tf_get_int(s->spans, 2 * t0 + k) - (int64_t)a;
            d->doc.token_spans = d->token_spans;
        }
    }
    if (s->meta_range && s->meta_range[2 * i + 1] > s->meta_range[2 * i]) {
        d->doc.meta = s->meta->data + s->meta_range[2 * i];
        d->doc.meta_len = (size_t)(s->meta_range[2 * i + 1] - s->meta_range[2 * i]);
    }
    return CLI_OK;
oom:
    kv_doc_free(d);
    return cli_error("%s: document %zu: out of memory", s->label, i);
}

void kv_doc_free(kv_doc *d)
{
    free(d->keys);
    free(d->values);
    free(d->token_ids);
    free(d->token_spans);
    memset(d, 0, sizeof *d);
}

