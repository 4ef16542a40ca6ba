/* commands.c -- the msadb commands that manage a store: init, ingest,
 * stat, ls, rm, space, verify, compact, and the input-file reader shared
 * by ingest and load (kv_source).  Uses only the public API (msadb.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ------------------------------------------------------------------------ */
/* opening stores                                                           */
/* ------------------------------------------------------------------------ */

int cli_key_options(const cli_args *a, msadb_options *opt, unsigned char key[MSADB_KEY_BYTES])
{
    msadb_options_init(opt);
    if (a->key_file) {
        int rc = msadb_key_file_read(a->key_file, key);
        if (rc == MSADB_EINVAL)
            return cli_error("--key-file %s: expected exactly 32 raw bytes or 64 hexadecimal "
                             "digits",
                             a->key_file);
        if (rc != 0)
            return cli_error_rc(rc, "--key-file %s", a->key_file);
        opt->key = key;
    } else if (a->passphrase_env) {
        const char *p = getenv(a->passphrase_env);
        if (!p)
            return cli_error("--passphrase-env %s: the environment variable is not set",
                             a->passphrase_env);
        if (!*p)
            return cli_error("--passphrase-env %s: the environment variable is empty",
                             a->passphrase_env);
        opt->passphrase = p;
    }
    return CLI_OK;
}

int cli_open_error(const char *path, int rc, int creating)
{
    if (creating && rc != MSADB_EEXIST)
        return cli_error_rc(rc, "%s: cannot create the store", path);
    switch (rc) {
    case MSADB_EKEY:
        return cli_error("%s: the store is encrypted and the key or passphrase is missing or "
                         "wrong (give --key-file F or --passphrase-env VAR)",
                         path);
    case MSADB_ENOTSTORE:
        return cli_error("%s: not an msadb store", path);
    case ENOENT:
        return cli_error("%s: no such store (create one with 'msadb init')", path);
    case MSADB_EVERSION:
        return cli_error("%s: the store's format is newer than this msadb (%s) supports", path,
                         msadb_version());
    case MSADB_EEXIST:
        return cli_error("%s: a store already exists there", path);
    default:
        return cli_error_rc(rc, "%s", path);
    }
}

int cli_open(const cli_args *a, int read_only, msadb_store **out)
{
    msadb_options opt;
    unsigned char key[MSADB_KEY_BYTES];
    *out = NULL;
    if (cli_key_options(a, &opt, key) != CLI_OK)
        return CLI_ERROR;
    opt.read_only = read_only;
    int rc = msadb_open(a->db, NULL, &opt, out);
    explicit_bzero(key, sizeof key);
    if (rc != 0) {
        *out = NULL;
        return cli_open_error(a->db, rc, 0);
    }
    return CLI_OK;
}

/* Checks that a space exists; names the command's store in the message. */
static int require_space(msadb_store *st, const char *db, const char *space);

int cli_commit_batch(const cli_args *a, msadb_batch **batch, size_t n, uint64_t **ids)
{
    *ids = calloc(n + 1, sizeof **ids);
    if (!*ids)
        return cli_error("out of memory");
    int mrc = msadb_batch_commit(*batch, *ids);
    *batch = NULL;
    return mrc ? cli_error_rc(mrc, "%s: commit failed", a->db) : CLI_OK;
}

int cli_check_memory_args(const cli_args *a, msadb_store *st)
{
    const msadb_signature *sig = msadb_store_signature(st);
    if (a->summary && !(sig->summary_kinds & a->summary))
        return cli_error("--summary: %s does not store %s summaries", a->db,
                         cli_summary_name(a->summary));
    for (size_t i = 0; i < a->n_spaces; i++) {
        msadb_space_info info;
        int rc = msadb_space_get(st, a->spaces[i], &info);
        if (rc == MSADB_ENOTFOUND)
            return cli_error("--space %s: no such space in %s", a->spaces[i], a->db);
        if (rc != 0)
            return cli_error_rc(rc, "--space %s", a->spaces[i]);
    }
    return CLI_OK;
}

int cli_require_space(msadb_store *st, const char *db, const char *space)
{
    return require_space(st, db, space);
}

static int require_space(msadb_store *st, const char *db, const char *space)
{
    msadb_space_info info;
    int rc = msadb_space_get(st, space, &info);
    if (rc == MSADB_ENOTFOUND)
        return cli_error("%s: no space '%s' (create it with: msadb space %s create %s)", db, space,
                         db, space);
    if (rc != 0)
        return cli_error_rc(rc, "%s: space '%s'", db, space);
    return CLI_OK;
}

/* ------------------------------------------------------------------------ */
/* init                                                                     */
/* ------------------------------------------------------------------------ */

int cmd_init(const cli_args *a)
{
    msadb_signature sig;
    int rc = msadb_signature_init(&sig, a->layers, a->kv_heads, a->q_heads, a->head_dim);
    if (rc != 0)
        return cli_error_rc(rc, "init: signature %u layers, %u kv heads, %u q heads, head dim %u",
                            a->layers, a->kv_heads, a->q_heads, a->head_dim);
    return cli_init_store(a, &sig, NULL);
}

int cli_init_store(const cli_args *a, msadb_signature *base, const char *model)
{
    msadb_signature sig = *base;
    int rc;
    if (a->has_memory_layers) {
        sig.n_memory_layers = a->n_memory_layers;
        memcpy(sig.memory_layers, a->memory_layers, a->n_memory_layers * sizeof(uint16_t));
    }
    if (a->block)
        sig.block_size = a->block;
    if (a->dtype >= 0)
        sig.dtype = (uint32_t)a->dtype;
    if (a->summary)
        sig.summary_kinds = a->summary;
    if ((rc = msadb_signature_validate(&sig)) != 0)
        return cli_error_rc(rc, "init: the signature is not valid");
    msadb_options opt;
    unsigned char key[MSADB_KEY_BYTES];
    if (cli_key_options(a, &opt, key) != CLI_OK)
        return CLI_ERROR;
    msadb_store *st = NULL;
    rc = msadb_create(a->db, &sig, &opt, &st);
    explicit_bzero(key, sizeof key);
    if (rc != 0)
        return cli_open_error(a->db, rc, 1);
    int enc = msadb_store_encrypted(st) == 1;
    msadb_close(st);
    if (a->json) {
        json_t *j = json_pack("{s:s, s:o, s:b}", "path", a->db, "signature",
                              cli_signature_json(&sig), "encrypted", enc);
        if (j && model)
            json_object_set_new(j, "model", cli_json_bytes(model, strlen(model)));
        return cli_json_print(j);
    }
    if (!a->quiet && cli_stdout_tty()) {
        char layers[1024], kinds[32];
        cli_layers_str(&sig, layers, sizeof layers);
        cli_summary_str(sig.summary_kinds, kinds, sizeof kinds);
        printf("created %s: %u layers (memory layers %s), %u kv heads, %u q heads, head dim %u, "
               "block %u, %s, summaries %s%s\n",
               a->db, sig.n_layers, layers, sig.n_kv_heads, sig.n_q_heads, sig.head_dim,
               sig.block_size, msadb_dtype_name((int)sig.dtype), kinds, enc ? ", encrypted" : "");
    }
    return CLI_OK;
}

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

static int msadb_kv_dtype(tf_dtype dt)
{
    return dt == TF_F32 ? MSADB_DTYPE_F32 : dt == TF_F16 ? MSADB_DTYPE_F16 : MSADB_DTYPE_BF16;
}

static int check_kv(const kv_source *s, const char *name, const tf_tensor *t,
                    const msadb_signature *sig)
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
    int64_t bad = tf_first_nonfinite(t->dtype, t->data, t->nelem);
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
                           const tf_tensor *text_lengths, const tf_tensor *meta_lengths)
{
    where_buf w;
    char sa[200], sb[200];
    if (check_kv(s, "keys", s->keys, sig) != CLI_OK || check_kv(s, "values", s->values, sig) != CLI_OK)
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

int kv_source_open(kv_source *s, const char *path, const msadb_signature *sig)
{
    char err[512];
    memset(s, 0, sizeof *s);
    s->label = strdup(path);
    if (!s->label)
        return cli_error("out of memory");
    if (tf_safetensors_open(path, &s->st, err, sizeof err) != 0)
        return cli_error("%s: %s", path, err);
    for (size_t i = 0; i < s->st.n; i++) {
        size_t k = 0;
        while (known_tensors[k] && strcmp(known_tensors[k], s->st.tensors[i].name) != 0)
            k++;
        if (!known_tensors[k])
            return cli_error("%s: unknown tensor '%.80s' (expected keys, values, doc_lengths, "
                             "tokens, text, token_spans, text_lengths, meta, meta_lengths)",
                             path, s->st.tensors[i].name);
    }
    s->keys = tf_find(&s->st, "keys");
    s->values = tf_find(&s->st, "values");
    s->tokens = tf_find(&s->st, "tokens");
    s->text = tf_find(&s->st, "text");
    s->spans = tf_find(&s->st, "token_spans");
    s->meta = tf_find(&s->st, "meta");
    return kv_source_check(s, sig, tf_find(&s->st, "doc_lengths"), tf_find(&s->st, "text_lengths"),
                           tf_find(&s->st, "meta_lengths"));
}

int kv_source_open_npy(kv_source *s, const char *keys_path, const char *values_path,
                       const char *tokens_path, const msadb_signature *sig)
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
    return kv_source_check(s, sig, NULL, NULL, NULL);
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
 * [P][n][D] buffer, converting to f32 when to_f32. */
static void *gather(const tf_tensor *t, int to_f32, uint64_t P, uint64_t T, uint64_t D,
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
    }
    return out;
}

int kv_source_doc(const kv_source *s, size_t i, kv_doc *d)
{
    memset(d, 0, sizeof *d);
    uint64_t t0 = s->doc_start[i], n = s->doc_start[i + 1] - t0;
    int to_f32 = s->keys->dtype != s->values->dtype;
    d->keys = gather(s->keys, to_f32, s->L * s->H, s->T, s->D, t0, n);
    d->values = gather(s->values, to_f32, s->L * s->H, s->T, s->D, t0, n);
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

/* ------------------------------------------------------------------------ */
/* ingest                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct ingested {
    uint64_t id;
    uint64_t tokens;
    char title[MSADB_TITLE_MAX + 1];
    const char *file;
} ingested;

typedef struct ingest_ctx {
    const cli_args *a;
    msadb_batch *batch;
    ingested *docs;
    size_t n_docs, cap;
    uint64_t n_tokens;
} ingest_ctx;

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Title of document i of n from a file: --title, or the file's base name
 * without extension; " #k" (1-based) is appended when a file holds several
 * documents. */
static void make_title(const cli_args *a, const char *file, size_t i, size_t n, char *out)
{
    char base[MSADB_TITLE_MAX + 1];
    if (a->title) {
        snprintf(base, sizeof base, "%s", a->title);
    } else {
        const char *slash = strrchr(file, '/');
        const char *b = slash ? slash + 1 : file;
        size_t len = strlen(b);
        if (ends_with(b, ".keys.npy"))
            len -= 9;
        else if (ends_with(b, ".values.npy"))
            len -= 11;
        else if (ends_with(b, ".safetensors"))
            len -= 12;
        else if (ends_with(b, ".st"))
            len -= 3;
        if (len > 200)
            len = 200;
        while (len > 0 && ((unsigned char)b[len] & 0xc0) == 0x80) /* keep UTF-8 whole */
            len--;
        memcpy(base, b, len);
        base[len] = 0;
    }
    if (n <= 1) {
        snprintf(out, MSADB_TITLE_MAX + 1, "%s", base);
        return;
    }
    char suffix[32];
    int sl = snprintf(suffix, sizeof suffix, " #%zu", i + 1);
    size_t keep = strlen(base);
    if (keep + (size_t)sl > MSADB_TITLE_MAX) {
        keep = MSADB_TITLE_MAX - (size_t)sl;
        while (keep > 0 && ((unsigned char)base[keep] & 0xc0) == 0x80)
            keep--;
    }
    snprintf(out, MSADB_TITLE_MAX + 1, "%.*s%s", (int)keep, base, suffix);
}

static int ingest_source(ingest_ctx *c, const kv_source *s, const char *file)
{
    for (size_t i = 0; i < s->n_docs; i++) {
        if (c->n_docs == c->cap) {
            size_t nc = c->cap ? c->cap * 2 : 16;
            ingested *nd = realloc(c->docs, nc * sizeof *nd);
            if (!nd)
                return cli_error("out of memory");
            c->docs = nd;
            c->cap = nc;
        }
        ingested *g = &c->docs[c->n_docs];
        make_title(c->a, file, i, s->n_docs, g->title);
        g->file = file;
        kv_doc d;
        if (kv_source_doc(s, i, &d) != CLI_OK)
            return CLI_ERROR;
        d.doc.space = c->a->space;
        d.doc.title = g->title;
        int rc = msadb_batch_add(c->batch, &d.doc);
        g->tokens = d.doc.n_tokens;
        kv_doc_free(&d);
        if (rc != 0)
            return s->n_docs > 1 ? cli_error_rc(rc, "%s: document %zu", file, i)
                                 : cli_error_rc(rc, "%s", file);
        c->n_docs++;
        c->n_tokens += g->tokens;
    }
    return CLI_OK;
}

/* X.keys.npy -> X (allocated), or NULL if the name is not a keys file. */
static char *npy_base(const char *file)
{
    const char *suf = ends_with(file, ".keys.npy") ? ".keys.npy" : ends_with(file, ".values.npy") ? ".values.npy" : NULL;
    if (!suf)
        return NULL;
    return strndup(file, strlen(file) - strlen(suf));
}

static int ingest_npy(ingest_ctx *c, const msadb_signature *sig, const char *file, char **done,
                      size_t *n_done)
{
    char *base = npy_base(file);
    if (!base)
        return cli_error("%s: a .npy input must be a pair named X.keys.npy and X.values.npy",
                         file);
    for (size_t i = 0; i < *n_done; i++)
        if (strcmp(done[i], base) == 0) {
            free(base);
            return CLI_OK; /* both halves of the pair were named */
        }
    size_t n = strlen(base) + 16;
    char *k = malloc(n), *v = malloc(n), *t = malloc(n);
    int rc = CLI_ERROR;
    if (k && v && t) {
        snprintf(k, n, "%s.keys.npy", base);
        snprintf(v, n, "%s.values.npy", base);
        snprintf(t, n, "%s.tokens.npy", base);
        kv_source s;
        rc = kv_source_open_npy(&s, k, v, access(t, F_OK) == 0 ? t : NULL, sig);
        if (rc == CLI_OK)
            rc = ingest_source(c, &s, file);
        kv_source_close(&s);
    } else {
        cli_error("out of memory");
    }
    free(k);
    free(v);
    free(t);
    done[(*n_done)++] = base;
    return rc;
}

static int ingest_files(ingest_ctx *c, const msadb_signature *sig)
{
    const cli_args *a = c->a;
    char **done = calloc(a->n_files, sizeof(char *));
    size_t n_done = 0;
    int rc = done ? CLI_OK : cli_error("out of memory");
    for (size_t f = 0; rc == CLI_OK && f < a->n_files; f++) {
        const char *file = a->files[f];
        cli_progress(a, "ingest: %s (file %zu of %zu, %zu documents, %llu tokens so far)", file,
                     f + 1, a->n_files, c->n_docs, (unsigned long long)c->n_tokens);
        if (ends_with(file, ".npy")) {
            rc = ingest_npy(c, sig, file, done, &n_done);
        } else {
            kv_source s;
            rc = kv_source_open(&s, file, sig);
            if (rc == CLI_OK)
                rc = ingest_source(c, &s, file);
            kv_source_close(&s);
        }
    }
    for (size_t i = 0; i < n_done; i++)
        free(done[i]);
    free(done);
    return rc;
}

static int print_ingested(const cli_args *a, const ingest_ctx *c, const uint64_t *ids)
{
    const char *space = a->space ? a->space : "default";
    if (a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < c->n_docs; i++)
            json_array_append_new(
                arr, json_pack("{s:I, s:s, s:I, s:o, s:o}", "id", (json_int_t)ids[i], "space",
                               space, "tokens", (json_int_t)c->docs[i].tokens, "title",
                               cli_json_bytes(c->docs[i].title, strlen(c->docs[i].title)),
                               "file", cli_json_bytes(c->docs[i].file, strlen(c->docs[i].file))));
        return cli_json_print(json_pack("{s:o}", "documents", arr));
    }
    if (a->quiet)
        return CLI_OK;
    static const char *const hdr[] = {"id", "space", "tokens", "title"};
    cli_table *t = cli_table_new(4, hdr);
    for (size_t i = 0; i < c->n_docs; i++)
        cli_table_addf(t, "%llu\t%s\t%llu\t%s", (unsigned long long)ids[i], space,
                       (unsigned long long)c->docs[i].tokens, c->docs[i].title);
    cli_table_print(t, stdout);
    cli_table_free(t);
    return CLI_OK;
}

int cmd_ingest(const cli_args *a)
{
    msadb_store *st;
    if (cli_open(a, 0, &st) != CLI_OK)
        return CLI_ERROR;
    ingest_ctx c = {.a = a};
    uint64_t *ids = NULL;
    int rc = a->space ? require_space(st, a->db, a->space) : CLI_OK;
    int mrc = rc == CLI_OK ? msadb_batch_begin(st, &c.batch) : 0;
    if (mrc != 0)
        rc = cli_error_rc(mrc, "%s: cannot begin a batch", a->db);
    if (rc == CLI_OK)
        rc = ingest_files(&c, msadb_store_signature(st));
    if (rc == CLI_OK) {
        cli_progress(a, "ingest: committing %zu documents, %llu tokens", c.n_docs,
                     (unsigned long long)c.n_tokens);
        rc = cli_commit_batch(a, &c.batch, c.n_docs, &ids);
    }
    msadb_batch_abort(c.batch);
    cli_progress_end(a);
    if (rc == CLI_OK)
        rc = print_ingested(a, &c, ids);
    else
        fprintf(stderr, "msadb: ingest: nothing was written to %s\n", a->db);
    free(ids);
    free(c.docs);
    msadb_close(st);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* stat                                                                     */
/* ------------------------------------------------------------------------ */

static json_t *stat_json(const cli_args *a, const msadb_signature *sig, const msadb_stat_info *s)
{
    return json_pack("{s:s, s:s, s:I, s:b, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "path",
                     a->db, "version", msadb_version(), "format_version",
                     (json_int_t)s->format_version, "encrypted", s->encrypted, "signature",
                     cli_signature_json(sig), "spaces", (json_int_t)s->n_spaces, "documents",
                     (json_int_t)s->n_documents, "tokens", (json_int_t)s->n_tokens, "blocks",
                     (json_int_t)s->n_blocks, "block_bytes", (json_int_t)s->block_bytes,
                     "summary_bytes", (json_int_t)s->summary_bytes, "map_size",
                     (json_int_t)s->map_size, "map_used", (json_int_t)s->map_used);
}

static void stat_table(const cli_args *a, const msadb_signature *sig, const msadb_stat_info *s)
{
    static const char *const hdr[] = {"field", "value"};
    char layers[1024], kinds[32];
    cli_layers_str(sig, layers, sizeof layers);
    cli_summary_str(sig->summary_kinds, kinds, sizeof kinds);
    cli_table *t = cli_table_new(2, hdr);
    cli_table_addf(t, "path\t%s", a->db);
    cli_table_addf(t, "format_version\t%u", s->format_version);
    cli_table_addf(t, "encrypted\t%s", s->encrypted ? "yes" : "no");
    cli_table_addf(t, "layers\t%u", sig->n_layers);
    cli_table_addf(t, "memory_layers\t%s", layers);
    cli_table_addf(t, "kv_heads\t%u", sig->n_kv_heads);
    cli_table_addf(t, "q_heads\t%u", sig->n_q_heads);
    cli_table_addf(t, "head_dim\t%u", sig->head_dim);
    cli_table_addf(t, "block\t%u", sig->block_size);
    cli_table_addf(t, "dtype\t%s", msadb_dtype_name((int)sig->dtype));
    cli_table_addf(t, "summary\t%s", kinds);
    cli_table_addf(t, "spaces\t%llu", (unsigned long long)s->n_spaces);
    cli_table_addf(t, "documents\t%llu", (unsigned long long)s->n_documents);
    cli_table_addf(t, "tokens\t%llu", (unsigned long long)s->n_tokens);
    cli_table_addf(t, "blocks\t%llu", (unsigned long long)s->n_blocks);
    cli_table_addf(t, "block_bytes\t%llu", (unsigned long long)s->block_bytes);
    cli_table_addf(t, "summary_bytes\t%llu", (unsigned long long)s->summary_bytes);
    if (s->n_tokens)
        cli_table_addf(t, "bytes_per_token\t%.1f",
                       (double)(s->block_bytes + s->summary_bytes) / (double)s->n_tokens);
    cli_table_addf(t, "map_size\t%llu", (unsigned long long)s->map_size);
    cli_table_addf(t, "map_used\t%llu", (unsigned long long)s->map_used);
    cli_table_print(t, stdout);
    cli_table_free(t);
}

int cmd_stat(const cli_args *a)
{
    msadb_store *st;
    if (cli_open(a, 1, &st) != CLI_OK)
        return CLI_ERROR;
    msadb_stat_info s;
    int rc = msadb_stat(st, &s);
    if (rc != 0) {
        msadb_close(st);
        return cli_error_rc(rc, "%s: stat", a->db);
    }
    const msadb_signature *sig = msadb_store_signature(st);
    int out = CLI_OK;
    if (a->json)
        out = cli_json_print(stat_json(a, sig, &s));
    else if (!a->quiet)
        stat_table(a, sig, &s);
    msadb_close(st);
    return out;
}

/* ------------------------------------------------------------------------ */
/* ls                                                                       */
/* ------------------------------------------------------------------------ */

typedef struct ls_ctx {
    json_t *arr;
    cli_table *t;
} ls_ctx;

static int ls_cb(const msadb_doc_info *d, void *ud)
{
    ls_ctx *c = ud;
    if (c->arr) {
        json_array_append_new(c->arr,
                              json_pack("{s:I, s:s, s:I, s:o, s:I, s:I, s:I, s:b, s:b}", "id",
                                        (json_int_t)d->id, "space", d->space, "tokens",
                                        (json_int_t)d->n_tokens, "title",
                                        cli_json_bytes(d->title, strlen(d->title)), "blocks",
                                        (json_int_t)d->n_blocks, "created", (json_int_t)d->created,
                                        "text_bytes", (json_int_t)d->text_len, "has_tokens",
                                        d->has_tokens, "has_spans", d->has_spans));
    } else {
        char when[32] = "";
        time_t tt = (time_t)d->created;
        struct tm tm;
        if (gmtime_r(&tt, &tm))
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
        cli_table_addf(c->t, "%llu\t%s\t%llu\t%llu\t%s\t%s", (unsigned long long)d->id, d->space,
                       (unsigned long long)d->n_tokens, (unsigned long long)d->n_blocks, when,
                       d->title);
    }
    return 0;
}

int cmd_ls(const cli_args *a)
{
    msadb_store *st;
    if (cli_open(a, 1, &st) != CLI_OK)
        return CLI_ERROR;
    msadb_snapshot *snap = NULL;
    int rc = a->space ? require_space(st, a->db, a->space) : CLI_OK;
    if (rc != CLI_OK) {
        msadb_close(st);
        return rc;
    }
    static const char *const hdr[] = {"id", "space", "tokens", "blocks", "created", "title"};
    ls_ctx c = {a->json ? json_array() : NULL, a->json ? NULL : cli_table_new(6, hdr)};
    int mrc = msadb_snapshot_begin(st, &snap);
    if (mrc == 0)
        mrc = msadb_doc_list(snap, a->space, ls_cb, &c);
    msadb_snapshot_end(snap);
    msadb_close(st);
    if (mrc != 0) {
        json_decref(c.arr);
        cli_table_free(c.t);
        return cli_error_rc(mrc, "%s: listing documents", a->db);
    }
    if (c.arr)
        return cli_json_print(json_pack("{s:o}", "documents", c.arr));
    if (!a->quiet)
        cli_table_print(c.t, stdout);
    cli_table_free(c.t);
    return CLI_OK;
}

/* ------------------------------------------------------------------------ */
/* rm                                                                       */
/* ------------------------------------------------------------------------ */

static int u64_cmp(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* Every id must exist, or nothing is deleted. */
static int rm_check(const cli_args *a, msadb_store *st, const uint64_t *ids, size_t n)
{
    msadb_snapshot *snap;
    int mrc = msadb_snapshot_begin(st, &snap);
    if (mrc != 0)
        return cli_error_rc(mrc, "%s", a->db);
    int rc = CLI_OK;
    for (size_t i = 0; i < n && rc == CLI_OK; i++) {
        msadb_doc_info info;
        mrc = msadb_doc_get(snap, ids[i], &info);
        if (mrc == MSADB_ENOTFOUND)
            rc = cli_error("%s: no document %llu; nothing was deleted", a->db,
                           (unsigned long long)ids[i]);
        else if (mrc != 0)
            rc = cli_error_rc(mrc, "%s: document %llu", a->db, (unsigned long long)ids[i]);
    }
    msadb_snapshot_end(snap);
    return rc;
}

int cmd_rm(const cli_args *a)
{
    uint64_t *ids = malloc(a->n_doc_ids * sizeof *ids);
    if (!ids)
        return cli_error("out of memory");
    memcpy(ids, a->doc_ids, a->n_doc_ids * sizeof *ids);
    qsort(ids, a->n_doc_ids, sizeof *ids, u64_cmp);
    size_t n = 0;
    for (size_t i = 0; i < a->n_doc_ids; i++)
        if (n == 0 || ids[n - 1] != ids[i])
            ids[n++] = ids[i];
    msadb_store *st;
    int rc = cli_open(a, 0, &st);
    if (rc == CLI_OK) {
        rc = rm_check(a, st, ids, n);
        int mrc = rc == CLI_OK ? msadb_doc_delete(st, ids, n) : 0;
        if (mrc != 0)
            rc = cli_error_rc(mrc, "%s: delete", a->db);
        msadb_close(st);
    }
    if (rc == CLI_OK && a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, json_integer((json_int_t)ids[i]));
        rc = cli_json_print(json_pack("{s:o}", "deleted", arr));
    } else if (rc == CLI_OK && !a->quiet && cli_stdout_tty()) {
        printf("deleted %zu document%s\n", n, n == 1 ? "" : "s");
    }
    free(ids);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* space                                                                    */
/* ------------------------------------------------------------------------ */

static int space_ls_cb(const msadb_space_info *s, void *ud)
{
    ls_ctx *c = ud;
    if (c->arr)
        json_array_append_new(c->arr, json_pack("{s:I, s:s, s:I, s:I}", "id", (json_int_t)s->id,
                                                "name", s->name, "documents",
                                                (json_int_t)s->n_documents, "tokens",
                                                (json_int_t)s->n_tokens));
    else
        cli_table_addf(c->t, "%u\t%s\t%llu\t%llu", s->id, s->name,
                       (unsigned long long)s->n_documents, (unsigned long long)s->n_tokens);
    return 0;
}

static int space_ls(const cli_args *a, msadb_store *st)
{
    static const char *const hdr[] = {"id", "name", "documents", "tokens"};
    ls_ctx c = {a->json ? json_array() : NULL, a->json ? NULL : cli_table_new(4, hdr)};
    int mrc = msadb_space_list(st, space_ls_cb, &c);
    if (mrc != 0) {
        json_decref(c.arr);
        cli_table_free(c.t);
        return cli_error_rc(mrc, "%s: listing spaces", a->db);
    }
    if (c.arr)
        return cli_json_print(json_pack("{s:o}", "spaces", c.arr));
    if (!a->quiet)
        cli_table_print(c.t, stdout);
    cli_table_free(c.t);
    return CLI_OK;
}

static int space_change(const cli_args *a, msadb_store *st)
{
    const char *name = a->space_name;
    uint32_t id = 0;
    int mrc = a->space_action == SPACE_CREATE ? msadb_space_create(st, name, &id)
                                              : msadb_space_drop(st, name);
    if (mrc == MSADB_EEXIST)
        return cli_error("%s: space '%s' already exists", a->db, name);
    if (mrc == MSADB_ENOTFOUND)
        return cli_error("%s: no space '%s'", a->db, name);
    if (mrc != 0)
        return cli_error_rc(mrc, "%s: space %s '%s'", a->db,
                            a->space_action == SPACE_CREATE ? "create" : "drop", name);
    if (a->json && a->space_action == SPACE_CREATE)
        return cli_json_print(json_pack("{s:I, s:s}", "id", (json_int_t)id, "name", name));
    if (a->json)
        return cli_json_print(json_pack("{s:s}", "dropped", name));
    if (!a->quiet && cli_stdout_tty())
        printf("%s space '%s'\n", a->space_action == SPACE_CREATE ? "created" : "dropped", name);
    return CLI_OK;
}

int cmd_space(const cli_args *a)
{
    msadb_store *st;
    if (cli_open(a, a->space_action == SPACE_LS, &st) != CLI_OK)
        return CLI_ERROR;
    int rc = a->space_action == SPACE_LS ? space_ls(a, st) : space_change(a, st);
    msadb_close(st);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* verify, compact                                                          */
/* ------------------------------------------------------------------------ */

typedef struct verify_ctx {
    const cli_args *a;
    json_t *arr;
    size_t n;
} verify_ctx;

static void verify_cb(const char *problem, void *ud)
{
    verify_ctx *c = ud;
    c->n++;
    if (c->arr) {
        json_array_append_new(c->arr, cli_json_bytes(problem, strlen(problem)));
    } else {
        cli_progress_end(c->a);
        printf("%s\n", problem);
    }
}

int cmd_verify(const cli_args *a)
{
    msadb_store *st;
    if (cli_open(a, 1, &st) != CLI_OK)
        return CLI_ERROR;
    verify_ctx c = {a, a->json ? json_array() : NULL, 0};
    cli_progress(a, "verify: checking %s", a->db);
    int mrc = msadb_verify(st, verify_cb, &c);
    cli_progress_end(a);
    msadb_stat_info s;
    int have_stat = msadb_stat(st, &s) == 0;
    msadb_close(st);
    if (mrc != 0 && mrc != MSADB_ECORRUPT) {
        json_decref(c.arr);
        return cli_error_rc(mrc, "%s: verify could not complete", a->db);
    }
    if (c.arr) {
        int rc = cli_json_print(json_pack("{s:b, s:o}", "sound", mrc == 0, "problems", c.arr));
        if (mrc != 0)
            cli_error("%s: %zu problem%s found", a->db, c.n, c.n == 1 ? "" : "s");
        return mrc != 0 ? CLI_ERROR : rc;
    }
    if (mrc != 0)
        return cli_error("%s: the store is not sound: %zu problem%s found (listed above)", a->db,
                         c.n, c.n == 1 ? "" : "s");
    if (!a->quiet) {
        if (have_stat)
            printf("ok: %llu documents, %llu tokens, %llu blocks per plane\n",
                   (unsigned long long)s.n_documents, (unsigned long long)s.n_tokens,
                   (unsigned long long)s.n_blocks);
        else
            printf("ok\n");
    }
    return CLI_OK;
}

int cmd_compact(const cli_args *a)
{
    msadb_store *st;
    if (cli_open(a, 0, &st) != CLI_OK)
        return CLI_ERROR;
    msadb_stat_info before, after;
    int mrc = msadb_stat(st, &before);
    if (mrc == 0)
        mrc = msadb_compact(st);
    if (mrc == 0)
        mrc = msadb_stat(st, &after);
    msadb_close(st);
    if (mrc != 0)
        return cli_error_rc(mrc, "%s: compact", a->db);
    if (a->json)
        return cli_json_print(json_pack("{s:I, s:I}", "summary_bytes_before",
                                        (json_int_t)before.summary_bytes, "summary_bytes_after",
                                        (json_int_t)after.summary_bytes));
    if (!a->quiet && cli_stdout_tty())
        printf("compacted %s: summary bytes %llu -> %llu\n", a->db,
               (unsigned long long)before.summary_bytes, (unsigned long long)after.summary_bytes);
    return CLI_OK;
}
