/* cmd_ingest.c -- `msadb ingest` of K/V tensor files (safetensors, .npy)
 * in one batch.  Uses only the public API (msadb.h). */
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

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
    cli_db *db;
    ingested *docs;
    size_t n_docs, cap;
    uint64_t n_tokens;
    char *meta;      /* --meta as metadata text (NULL: none) */
    size_t meta_len;
    char *mbuf;      /* a file's own metadata followed by --meta's */
    size_t mbuf_cap;
    int64_t expires; /* --ttl */
} ingest_ctx;

/* The document's metadata: the file's own, then the --meta lines. */
static int add_meta(ingest_ctx *c, msadb_doc *doc)
{
    if (!c->meta_len)
        return CLI_OK;
    if (!doc->meta_len) {
        doc->meta = c->meta;
        doc->meta_len = c->meta_len;
        return CLI_OK;
    }
    const char *own = doc->meta;
    size_t n = doc->meta_len, sep = own[n - 1] != '\n';
    if (cli_grow(&c->mbuf, &c->mbuf_cap, n + sep + c->meta_len, 1, 256) != 0)
        return cli_error("out of memory");
    memcpy(c->mbuf, own, n);
    if (sep)
        c->mbuf[n] = '\n';
    memcpy(c->mbuf + n + sep, c->meta, c->meta_len);
    doc->meta = c->mbuf;
    doc->meta_len = n + sep + c->meta_len;
    return CLI_OK;
}

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
        cli_utf8_fix(base);
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

int cli_is_tensor_file(const char *path)
{
    if (ends_with(path, ".npy") || ends_with(path, ".safetensors") || ends_with(path, ".st"))
        return 1;
    /* Stdin, pipes, FIFOs and devices cannot be peeked at without taking
     * what they hold (or blocking): they are tensor input unless -m names a
     * model.  A missing file goes the tensor way too, whose message names it. */
    struct stat sb;
    if (strcmp(path, "-") == 0 || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return 1;
    /* safetensors: a little-endian u64 header length, then '{' */
    unsigned char head[9];
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(head, 1, sizeof head, f) : 0;
    if (f)
        fclose(f);
    return got == sizeof head && head[8] == '{' && head[6] == 0 && head[7] == 0;
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
        d.doc.expires = c->expires;
        if (add_meta(c, &d.doc) != CLI_OK) {
            kv_doc_free(&d);
            return CLI_ERROR;
        }
        int rc = c->db->ops->batch_add(c->db, &d.doc);
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
    cli_db *db;
    if (cli_db_open(a, 0, &db) != CLI_OK)
        return CLI_ERROR;
    ingest_ctx c = {.a = a, .db = db, .expires = cli_expires(a)};
    uint64_t *ids = NULL;
    int rc = cli_meta_text(a, &c.meta, &c.meta_len);
    if (rc == CLI_OK && a->space)
        rc = cli_require_space(db, a->db, a->space);
    int mrc = rc == CLI_OK ? db->ops->batch_begin(db) : 0;
    if (mrc != 0)
        rc = cli_error_rc(mrc, "%s: cannot begin a batch", a->db);
    if (rc == CLI_OK)
        rc = ingest_files(&c, db->sig);
    if (rc == CLI_OK) {
        cli_progress(a, "ingest: committing %zu documents, %llu tokens", c.n_docs,
                     (unsigned long long)c.n_tokens);
        rc = cli_commit_db(a, db, c.n_docs, &ids);
    }
    db->ops->batch_abort(db);
    cli_progress_end(a);
    if (rc == CLI_OK)
        rc = print_ingested(a, &c, ids);
    else
        fprintf(stderr, "msadb: ingest: nothing was written to %s\n", a->db);
    free(ids);
    free(c.docs);
    free(c.meta);
    free(c.mbuf);
    cli_db_close(db);
    return rc;
}

