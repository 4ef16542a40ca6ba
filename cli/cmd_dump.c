/* cmd_dump.c -- `msadb dump` and `msadb load`: a portable dump of a whole
 * store as one safetensors file, and its restore.
 *
 * The dump is itself a valid `msadb ingest` input: keys/values
 * [L_mem,H,T,D] F32 (every document's stored, dequantized K/V, documents
 * concatenated along T in id order), doc_lengths, tokens, token_spans (byte
 * offsets into the concatenated text), text + text_lengths, meta +
 * meta_lengths, plus a `manifest` U8 tensor holding JSON: the signature,
 * the spaces and each document's id, space, title and flags.  The layout is
 * documented in docs/cli.md.  Uses only the public API (msadb.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#include "input/manifest.h"

/* ------------------------------------------------------------------------ */
/* dump                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct dump_ctx {
    const cli_args *a;
    msadb_snapshot *snap;
    const msadb_signature *sig;
    msadb_doc_info *docs;
    size_t n_docs, cap;
    json_t *spaces;
    uint64_t T, text_bytes, meta_bytes, max_tokens;
    int any_tokens, any_spans;
    tf_out out;
    char err[512];
} dump_ctx;

static int collect_doc(const msadb_doc_info *d, void *ud)
{
    dump_ctx *c = ud;
    if (cli_grow(&c->docs, &c->cap, c->n_docs + 1, sizeof *c->docs, 64))
        return MSADB_ENOMEM;
    c->docs[c->n_docs++] = *d;
    c->T += d->n_tokens;
    c->text_bytes += d->text_len;
    c->meta_bytes += d->meta_len;
    c->any_tokens |= d->has_tokens;
    c->any_spans |= d->has_spans;
    if (d->n_tokens > c->max_tokens)
        c->max_tokens = d->n_tokens;
    return 0;
}

static int has_space(json_t *arr, const char *name)
{
    for (size_t i = 0; i < json_array_size(arr); i++)
        if (strcmp(json_string_value(json_array_get(arr, i)), name) == 0)
            return 1;
    return 0;
}

static int collect_space(const msadb_space_info *s, void *ud)
{
    json_t *arr = ud;
    if (s->keyed) /* a dump is plaintext and load makes plain spaces */
        return MSADB_ENOTSUP;
    return json_array_append_new(arr, json_string(s->name)) == 0 ? 0 : MSADB_ENOMEM;
}

static json_t *manifest_json(dump_ctx *c, msadb_store *st)
{
    json_t *docs = json_array();
    for (size_t i = 0; docs && i < c->n_docs; i++) {
        const msadb_doc_info *d = &c->docs[i];
        if (!has_space(c->spaces, d->space)) /* dropped after our listing began */
            json_array_append_new(c->spaces, json_string(d->space));
        json_array_append_new(
            docs, json_pack("{s:I, s:s, s:o, s:I, s:I, s:b, s:b, s:I, s:I}", "id",
                            (json_int_t)d->id, "space", d->space, "title",
                            cli_json_bytes(d->title, strlen(d->title)), "created",
                            (json_int_t)d->created, "tokens", (json_int_t)d->n_tokens,
                            "has_tokens", d->has_tokens, "has_spans", d->has_spans, "text_bytes",
                            (json_int_t)d->text_len, "meta_bytes", (json_int_t)d->meta_len));
    }
    return json_pack("{s:s, s:i, s:s, s:b, s:o, s:O, s:o}", "format", DUMP_FORMAT,
                     "format_version", DUMP_VERSION, "msadb_version", msadb_version(),
                     "encrypted_source", msadb_store_encrypted(st) == 1, "signature",
                     cli_signature_json(c->sig), "spaces", c->spaces, "documents", docs);
}

static int put(dump_ctx *c, const void *p, size_t n)
{
    if (tf_out_write(&c->out, p, n, c->err, sizeof c->err) != 0)
        return cli_error("%s: %s", c->a->files[0], c->err);
    return CLI_OK;
}

static int put_lengths(dump_ctx *c, int which)
{
    for (size_t i = 0; i < c->n_docs; i++) {
        const msadb_doc_info *d = &c->docs[i];
        int64_t v = (int64_t)(which == 0 ? d->n_tokens : which == 1 ? d->text_len : d->meta_len);
        if (put(c, &v, sizeof v) != CLI_OK)
            return CLI_ERROR;
    }
    return CLI_OK;
}

/* Token ids (spans = 0) or spans made absolute in the concatenated text. */
static int put_tokens(dump_ctx *c, int spans)
{
    uint64_t text_off = 0;
    int rc = CLI_OK;
    int64_t *sp = malloc((size_t)c->max_tokens * 2 * sizeof(int64_t) + 16);
    int32_t *ids = malloc((size_t)c->max_tokens * sizeof(int32_t) + 16);
    if (!sp || !ids)
        rc = cli_error("out of memory");
    for (size_t i = 0; rc == CLI_OK && i < c->n_docs; i++) {
        const msadb_doc_info *d = &c->docs[i];
        size_t n = (size_t)d->n_tokens;
        int have = spans ? d->has_spans : d->has_tokens;
        int mrc = 0;
        if (have)
            mrc = spans ? msadb_doc_tokens(c->snap, d->id, NULL, sp, n)
                        : msadb_doc_tokens(c->snap, d->id, ids, NULL, n);
        if (mrc != 0) {
            rc = cli_error_rc(mrc, "%s: document %llu: tokens", c->a->db, (unsigned long long)d->id);
            break;
        }
        if (spans) {
            for (size_t k = 0; k < 2 * n; k++)
                sp[k] = have ? sp[k] + (int64_t)text_off : (int64_t)text_off;
            rc = put(c, sp, n * 2 * sizeof(int64_t));
        } else {
            if (!have)
                memset(ids, 0, n * sizeof(int32_t));
            rc = put(c, ids, n * sizeof(int32_t));
        }
        text_off += d->text_len;
    }
    free(sp);
    free(ids);
    return rc;
}

static int put_bytes(dump_ctx *c, int meta)
{
    int rc = CLI_OK;
    for (size_t i = 0; rc == CLI_OK && i < c->n_docs; i++) {
        const msadb_doc_info *d = &c->docs[i];
        size_t n = meta ? d->meta_len : d->text_len, got = 0;
        if (n == 0)
            continue;
        char *buf = malloc(n + 1);
        if (!buf)
            return cli_error("out of memory");
        int mrc = meta ? msadb_doc_meta(c->snap, d->id, buf, n + 1, &got)
                       : msadb_doc_text(c->snap, d->id, buf, n + 1, &got);
        if (mrc != 0 || got != n)
            rc = cli_error_rc(mrc ? mrc : MSADB_ECORRUPT, "%s: document %llu: %s", c->a->db,
                              (unsigned long long)d->id, meta ? "meta" : "text");
        else
            rc = put(c, buf, n);
        free(buf);
    }
    return rc;
}

/* keys (values = 0) or values of every plane, documents concatenated. */
static int put_kv(dump_ctx *c, int values)
{
    uint32_t P = msadb_signature_planes(c->sig), D = c->sig->head_dim;
    float *buf = malloc((size_t)c->max_tokens * D * sizeof(float) + 16);
    if (!buf)
        return cli_error("out of memory");
    int rc = CLI_OK;
    for (uint32_t p = 0; rc == CLI_OK && p < P; p++) {
        cli_progress(c->a, "dump: %s of plane %u of %u", values ? "values" : "keys", p + 1, P);
        for (size_t i = 0; rc == CLI_OK && i < c->n_docs; i++) {
            const msadb_doc_info *d = &c->docs[i];
            int mrc = msadb_doc_kv(c->snap, d->id, p, values ? NULL : buf, values ? buf : NULL);
            if (mrc != 0)
                rc = cli_error_rc(mrc, "%s: document %llu, plane %u", c->a->db,
                                  (unsigned long long)d->id, p);
            else
                rc = put(c, buf, (size_t)d->n_tokens * D * sizeof(float));
        }
    }
    free(buf);
    return rc;
}

/* Tensor specs in file order; returns the count. */
static size_t dump_specs(const dump_ctx *c, size_t manifest_len, tf_spec *s)
{
    const msadb_signature *g = c->sig;
    size_t n = 0, nd = c->n_docs;
    s[n++] = (tf_spec){"manifest", TF_U8, 1, {manifest_len}};
    s[n++] = (tf_spec){"doc_lengths", TF_I64, 1, {nd}};
    if (c->text_bytes || c->any_spans) {
        s[n++] = (tf_spec){"text_lengths", TF_I64, 1, {nd}};
        s[n++] = (tf_spec){"text", TF_U8, 1, {c->text_bytes}};
    }
    if (c->meta_bytes) {
        s[n++] = (tf_spec){"meta_lengths", TF_I64, 1, {nd}};
        s[n++] = (tf_spec){"meta", TF_U8, 1, {c->meta_bytes}};
    }
    if (c->any_tokens)
        s[n++] = (tf_spec){"tokens", TF_I32, 1, {c->T}};
    if (c->any_spans)
        s[n++] = (tf_spec){"token_spans", TF_I64, 2, {c->T, 2}};
    s[n++] = (tf_spec){"keys", TF_F32, 4, {g->n_memory_layers, g->n_kv_heads, c->T, g->head_dim}};
    s[n++] = (tf_spec){"values", TF_F32, 4, {g->n_memory_layers, g->n_kv_heads, c->T, g->head_dim}};
    return n;
}

static int put_tensor(dump_ctx *c, const char *name, const char *manifest, size_t mlen)
{
    if (strcmp(name, "manifest") == 0)
        return put(c, manifest, mlen);
    if (strcmp(name, "doc_lengths") == 0)
        return put_lengths(c, 0);
    if (strcmp(name, "text_lengths") == 0)
        return put_lengths(c, 1);
    if (strcmp(name, "meta_lengths") == 0)
        return put_lengths(c, 2);
    if (strcmp(name, "text") == 0)
        return put_bytes(c, 0);
    if (strcmp(name, "meta") == 0)
        return put_bytes(c, 1);
    if (strcmp(name, "tokens") == 0)
        return put_tokens(c, 0);
    if (strcmp(name, "token_spans") == 0)
        return put_tokens(c, 1);
    return put_kv(c, strcmp(name, "values") == 0);
}

static int write_dump(dump_ctx *c, msadb_store *st)
{
    const char *path = c->a->files[0];
    json_t *m = manifest_json(c, st);
    char *manifest = m ? json_dumps(m, JSON_COMPACT) : NULL;
    json_decref(m);
    if (!manifest)
        return cli_error("out of memory");
    size_t mlen = strlen(manifest);
    tf_spec specs[12];
    size_t n = dump_specs(c, mlen, specs);
    const char *mk[] = {"format", "format_version"};
    const char *mv[] = {DUMP_FORMAT, "1"};
    int rc = CLI_OK;
    if (tf_out_open(&c->out, path, c->err, sizeof c->err) != 0) {
        free(manifest);
        return cli_error("%s: %s", path, c->err);
    }
    if (tf_write_header(c->out.fp, specs, n, mk, mv, 2, NULL, c->err, sizeof c->err) != 0)
        rc = cli_error("%s: %s", path, c->err);
    for (size_t i = 0; rc == CLI_OK && i < n; i++)
        rc = put_tensor(c, specs[i].name, manifest, mlen);
    free(manifest);
    cli_progress_end(c->a);
    if (rc != CLI_OK) {
        tf_out_abort(&c->out);
        return rc;
    }
    if (tf_out_commit(&c->out, c->err, sizeof c->err) != 0)
        return cli_error("%s: %s", path, c->err);
    return CLI_OK;
}

int cmd_dump(const cli_args *a)
{
    msadb_store *st;
    if (cli_open(a, 1, &st) != CLI_OK)
        return CLI_ERROR;
    dump_ctx c = {.a = a, .sig = msadb_store_signature(st), .spaces = json_array()};
    int rc = CLI_OK;
    int mrc = c.spaces ? msadb_snapshot_begin(st, &c.snap) : MSADB_ENOMEM;
    if (mrc == 0)
        mrc = msadb_space_list(st, collect_space, c.spaces);
    if (mrc == 0)
        mrc = msadb_doc_list(c.snap, NULL, collect_doc, &c);
    if (mrc == MSADB_ENOTSUP)
        rc = cli_error("%s: dump: the store has spaces with their own key; a dump is plaintext and load "
                       "would make them plain spaces, so dump refuses it (nothing was written)",
                       a->db);
    else if (mrc != 0)
        rc = cli_error_rc(mrc, "%s: dump", a->db);
    if (rc == CLI_OK)
        rc = write_dump(&c, st);
    if (rc == CLI_OK && a->json)
        rc = cli_json_print(json_pack("{s:s, s:I, s:I}", "file", a->files[0], "documents",
                                      (json_int_t)c.n_docs, "tokens", (json_int_t)c.T));
    else if (rc == CLI_OK && !a->quiet && cli_stdout_tty())
        printf("dumped %zu documents (%llu tokens) to %s\n", c.n_docs, (unsigned long long)c.T,
               a->files[0]);
    json_decref(c.spaces);
    free(c.docs);
    msadb_snapshot_end(c.snap);
    msadb_close(st);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* load                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct load_ctx {
    const cli_args *a;
    const char *path;
    dump_manifest m;
} load_ctx;

static int parse_manifest(load_ctx *c, const tf_file *f)
{
    const char *fmt = tf_meta(f, "format");
    const tf_tensor *m = tf_find(f, "manifest");
    if (!fmt || strcmp(fmt, DUMP_FORMAT) != 0 || !m || m->dtype != TF_U8)
        return cli_error("%s: not an msadb dump (no __metadata__ format '%s' and 'manifest' "
                         "tensor); to add tensor files use 'msadb ingest'",
                         c->path, DUMP_FORMAT);
    return dump_manifest_parse(c->path, m->data, (size_t)m->nbytes, &c->m);
}

/* Checks the manifest against the tensors (already checked by kv_source). */
static int check_against(const load_ctx *c, const kv_source *s)
{
    if (s->n_docs != c->m.n_docs)
        return cli_error("%s: manifest lists %zu documents but doc_lengths has %zu", c->path,
                         c->m.n_docs, s->n_docs);
    for (size_t i = 0; i < c->m.n_docs; i++) {
        const load_doc *d = &c->m.docs[i];
        if (d->tokens != s->doc_start[i + 1] - s->doc_start[i])
            return cli_error("%s: manifest: document %zu has %llu tokens but doc_lengths says %llu",
                             c->path, i, (unsigned long long)d->tokens,
                             (unsigned long long)(s->doc_start[i + 1] - s->doc_start[i]));
        if ((d->has_tokens && !s->tokens) || (d->has_spans && !s->spans))
            return cli_error("%s: manifest: document %zu has tokens or spans the file lacks",
                             c->path, i);
        uint64_t tb = s->text_range ? s->text_range[2 * i + 1] - s->text_range[2 * i] : 0,
                 mb = s->meta_range ? s->meta_range[2 * i + 1] - s->meta_range[2 * i] : 0;
        if (d->text_bytes != tb || d->meta_bytes != mb)
            return cli_error("%s: manifest: document %zu has text_bytes %llu and meta_bytes %llu "
                             "but the file holds %llu and %llu bytes for it",
                             c->path, i, (unsigned long long)d->text_bytes,
                             (unsigned long long)d->meta_bytes, (unsigned long long)tb,
                             (unsigned long long)mb);
    }
    return CLI_OK;
}

/* Opens the store at a->db with the dump's signature, creating it if there
 * is none. */
static int open_or_create(const load_ctx *c, msadb_store **st, int *created)
{
    msadb_options opt;
    unsigned char key[MSADB_KEY_BYTES];
    if (cli_key_options(c->a, &opt, key) != CLI_OK)
        return CLI_ERROR;
    *created = 0;
    int rc = msadb_open(c->a->db, &c->m.sig, &opt, st), creating = 0;
    if (rc == MSADB_ENOTSTORE || rc == ENOENT) {
        creating = 1;
        rc = msadb_create(c->a->db, &c->m.sig, &opt, st);
        *created = rc == 0;
    }
    explicit_bzero(key, sizeof key);
    if (rc == MSADB_ESIGNATURE)
        return cli_error("%s: the store's signature differs from the dump's (see 'msadb stat')",
                         c->a->db);
    if (rc != 0) {
        *st = NULL;
        return cli_open_error(c->a->db, rc, creating);
    }
    return CLI_OK;
}

static int add_docs(const load_ctx *c, const kv_source *s, msadb_batch *b)
{
    for (size_t i = 0; i < c->m.n_docs; i++) {
        const load_doc *d = &c->m.docs[i];
        kv_doc k;
        cli_progress(c->a, "load: document %zu of %zu", i + 1, c->m.n_docs);
        if (kv_source_doc(s, i, &k) != CLI_OK)
            return CLI_ERROR;
        k.doc.space = d->space;
        k.doc.title = d->title;
        if (!d->has_tokens)
            k.doc.token_ids = NULL;
        if (!d->has_spans)
            k.doc.token_spans = NULL;
        int mrc = msadb_batch_add(b, &k.doc);
        kv_doc_free(&k);
        if (mrc != 0)
            return cli_error_rc(mrc, "%s: document %zu (id %llu)", c->path, i,
                                (unsigned long long)d->old_id);
    }
    return CLI_OK;
}

static int print_loaded(const load_ctx *c, const uint64_t *ids)
{
    if (c->a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < c->m.n_docs; i++)
            json_array_append_new(arr, json_pack("{s:I, s:I, s:s, s:I, s:o}", "id",
                                                 (json_int_t)ids[i], "old_id",
                                                 (json_int_t)c->m.docs[i].old_id, "space",
                                                 c->m.docs[i].space, "tokens",
                                                 (json_int_t)c->m.docs[i].tokens, "title",
                                                 cli_json_bytes(c->m.docs[i].title,
                                                                strlen(c->m.docs[i].title))));
        return cli_json_print(json_pack("{s:o}", "documents", arr));
    }
    if (c->a->quiet)
        return CLI_OK;
    static const char *const hdr[] = {"id", "old_id", "space", "tokens", "title"};
    cli_table *t = cli_table_new(5, hdr);
    for (size_t i = 0; i < c->m.n_docs; i++)
        cli_table_addf(t, "%llu\t%llu\t%s\t%llu\t%s", (unsigned long long)ids[i],
                       (unsigned long long)c->m.docs[i].old_id, c->m.docs[i].space,
                       (unsigned long long)c->m.docs[i].tokens, c->m.docs[i].title);
    cli_table_print(t, stdout);
    cli_table_free(t);
    return CLI_OK;
}

/* Creates the dump's spaces the store lacks; records them in made[]. */
static int make_spaces(const load_ctx *c, msadb_store *st, const char **made, size_t *n_made)
{
    *n_made = 0;
    for (size_t i = 0; i < c->m.n_spaces; i++) {
        msadb_space_info info;
        int mrc = msadb_space_get(st, c->m.spaces[i], &info);
        if (mrc == MSADB_ENOTFOUND) {
            uint32_t id;
            mrc = msadb_space_create(st, c->m.spaces[i], &id);
            if (mrc == 0)
                made[(*n_made)++] = c->m.spaces[i];
        }
        if (mrc != 0)
            return cli_error_rc(mrc, "%s: space '%s'", c->a->db, c->m.spaces[i]);
    }
    return CLI_OK;
}

static int restore(load_ctx *c, const kv_source *s)
{
    msadb_store *st;
    int created;
    if (open_or_create(c, &st, &created) != CLI_OK)
        return CLI_ERROR;
    const char **made = calloc(c->m.n_spaces + 1, sizeof(char *));
    uint64_t *ids = calloc(c->m.n_docs + 1, sizeof(uint64_t));
    size_t n_made = 0;
    msadb_batch *b = NULL;
    int rc = made && ids ? make_spaces(c, st, made, &n_made) : cli_error("out of memory");
    int mrc = rc == CLI_OK && c->m.n_docs ? msadb_batch_begin(st, &b) : 0;
    if (mrc != 0)
        rc = cli_error_rc(mrc, "%s: cannot begin a batch", c->a->db);
    if (rc == CLI_OK && c->m.n_docs)
        rc = add_docs(c, s, b);
    if (rc == CLI_OK && c->m.n_docs) {
        mrc = msadb_batch_commit(b, ids);
        b = NULL;
        if (mrc != 0)
            rc = cli_error_rc(mrc, "%s: commit failed", c->a->db);
    }
    msadb_batch_abort(b);
    cli_progress_end(c->a);
    if (rc != CLI_OK) {
        for (size_t i = 0; i < n_made; i++)
            msadb_space_drop(st, made[i]);
        fprintf(stderr, "msadb: load: no document was written to %s%s\n", c->a->db,
                created ? " (the store was created and is empty)" : "");
    } else {
        rc = print_loaded(c, ids);
    }
    free(made);
    free(ids);
    msadb_close(st);
    return rc;
}

int cmd_load(const cli_args *a)
{
    load_ctx c = {.a = a, .path = a->files[0]};
    tf_file f;
    kv_source s;
    char err[512];
    memset(&s, 0, sizeof s);
    if (tf_safetensors_open(c.path, &f, err, sizeof err) != 0)
        return cli_error("%s: %s", c.path, err);
    int rc = parse_manifest(&c, &f);
    tf_file_close(&f);
    if (rc == CLI_OK && c.m.n_docs > 0) {
        rc = kv_source_open(&s, c.path, &c.m.sig, 1);
        if (rc == CLI_OK)
            rc = check_against(&c, &s);
    }
    if (rc == CLI_OK)
        rc = restore(&c, &s);
    kv_source_close(&s);
    dump_manifest_free(&c.m);
    return rc;
}
