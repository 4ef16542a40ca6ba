/* cmd_ingest.c -- `msadb ingest` of K/V tensor files (safetensors, .npy):
 * every input checked first, then its documents streamed into the store in
 * bounded commits (stream.c), each keyed by its file's identity and its
 * place in it so that running the command again resumes.  Uses only the
 * public API (msadb.h). */
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

/* One document of the command, in input order: added (id known once
 * committed) or already in the store. */
typedef struct ingested {
    uint64_t id;              /* 0 until committed (or, for a repeat within the command, never) */
    uint64_t tokens;
    uint32_t input, index, n_in_input; /* its input, its place there (for the title) */
    int already;              /* the key was already in the store or the command */
} ingested;

/* One input: a safetensors file or an .npy pair, checked up front. */
typedef struct input {
    const char *label;        /* the FILE argument */
    char *keys, *values, *tokens; /* .npy pair (keys NULL: safetensors) */
    uint64_t n_docs, n_tokens;
    uint8_t identity[48];     /* device, inode, size, mtime of its file(s) */
} input;

typedef struct ingest_ctx {
    const cli_args *a;
    cli_db *db;
    msadb_store *st;          /* db's, or NULL when it is sharded (no keys there) */
    input *inputs;
    size_t n_inputs;
    ingested *docs;
    size_t n_docs, cap, next_id; /* next_id: first added document without an id */
    uint64_t n_tokens, committed, already;
    cli_progress_state prog;
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

/* Ids of a commit, in add order, go to the added documents in order. */
static void on_commit(const uint64_t *ids, size_t n, void *user)
{
    ingest_ctx *c = user;
    for (size_t k = 0; k < n; k++) {
        while (c->next_id < c->n_docs && c->docs[c->next_id].already)
            c->next_id++;
        if (c->next_id < c->n_docs)
            c->docs[c->next_id++].id = ids[k];
    }
    c->committed += n;
}

/* The key of document i of an input: its file identity and place, so that
 * the same command run again skips what is already in (docs/cli.md). */
static int doc_key(ingest_ctx *c, const input *in, uint64_t i, unsigned char key[MSADB_DOCKEY_HASH])
{
    static const char tag[] = "msadb kv file v1";
    uint8_t ib[8];
    for (int b = 0; b < 8; b++)
        ib[b] = (uint8_t)(i >> (8 * b));
    const char *space = c->a->space ? c->a->space : "default";
    const void *parts[] = {tag, space, in->identity, ib};
    const size_t lens[] = {sizeof tag - 1, strlen(space), sizeof in->identity, sizeof ib};
    return msadb_doc_key_hash(c->st, parts, lens, 4, key);
}

static int open_input(const input *in, const msadb_signature *sig, int scan, kv_source *s)
{
    if (!in->keys)
        return kv_source_open(s, in->label, sig, scan);
    return kv_source_open_npy(s, in->keys, in->values, in->tokens, sig, scan);
}

static int ingest_input(ingest_ctx *c, size_t k)
{
    const input *in = &c->inputs[k];
    kv_source s;
    int rc = open_input(in, c->db->sig, 0, &s);
    for (size_t i = 0; rc == CLI_OK && i < s.n_docs; i++) {
        if (cli_stream_stop_signal())
            break;
        if (cli_grow(&c->docs, &c->cap, c->n_docs + 1, sizeof *c->docs, 64))
            rc = cli_error("out of memory");
        kv_doc d;
        if (rc != CLI_OK || kv_source_doc(&s, i, &d) != CLI_OK) {
            rc = CLI_ERROR;
            break;
        }
        char title[MSADB_TITLE_MAX + 1];
        unsigned char key[MSADB_DOCKEY_HASH];
        make_title(c->a, in->label, i, s.n_docs, title);
        d.doc.space = c->a->space;
        d.doc.title = title;
        d.doc.expires = c->expires;
        if (add_meta(c, &d.doc) != CLI_OK) {
            kv_doc_free(&d);
            rc = CLI_ERROR;
            break;
        }
        int mrc = 0;
        msadb_batch_status before = {0}, after = {0};
        if (c->st) { /* an ordinary store: the document is keyed, a repeat is skipped */
            mrc = doc_key(c, in, i, key);
            d.doc.key = key;
            d.doc.key_len = sizeof key;
            msadb_batch_status_get(c->db->batch, &before);
        }
        ingested *g = &c->docs[c->n_docs];
        memset(g, 0, sizeof *g);
        g->tokens = d.doc.n_tokens;
        g->input = (uint32_t)k;
        g->index = (uint32_t)i;
        g->n_in_input = (uint32_t)s.n_docs;
        c->n_docs++; /* before the add: a flush inside it gives this one no id */
        if (mrc == 0)
            mrc = c->db->ops->batch_add(c->db, &d.doc);
        kv_doc_free(&d);
        if (mrc != 0) {
            c->n_docs--;
            rc = s.n_docs > 1 ? cli_error_rc(mrc, "%s: document %zu", in->label, i)
                              : cli_error_rc(mrc, "%s", in->label);
            break;
        }
        if (c->st)
            msadb_batch_status_get(c->db->batch, &after);
        if (after.duplicates > before.duplicates) {
            g->already = 1;
            g->id = after.last_duplicate;
            c->already++;
        }
        c->n_tokens += g->tokens;
        cli_stream_progress(c->a, &c->prog, c->n_tokens, c->committed);
    }
    kv_source_close(&s);
    return rc;
}

/* X.keys.npy -> X (allocated), or NULL if the name is not a keys file. */
static char *npy_base(const char *file)
{
    const char *suf = ends_with(file, ".keys.npy") ? ".keys.npy" : ends_with(file, ".values.npy") ? ".values.npy" : NULL;
    if (!suf)
        return NULL;
    return strndup(file, strlen(file) - strlen(suf));
}

/* dev, inode, size and mtime of a file into 24 bytes. */
static void file_identity(const char *path, uint8_t *out)
{
    struct stat sb;
    memset(out, 0, 24);
    if (stat(path, &sb) != 0)
        return;
    uint64_t v[3] = {(uint64_t)sb.st_dev ^ ((uint64_t)sb.st_ino << 20), (uint64_t)sb.st_size,
                     (uint64_t)sb.st_mtim.tv_sec * 1000000000ull + (uint64_t)sb.st_mtim.tv_nsec};
    for (int i = 0; i < 3; i++)
        for (int b = 0; b < 8; b++)
            out[8 * i + b] = (uint8_t)(v[i] >> (8 * b));
}

/* Every input named, checked in full (shapes, NaN and Inf) before anything
 * is written, so bad input leaves the store unchanged; the token total
 * drives the progress line. */
static int plan_inputs(ingest_ctx *c)
{
    const cli_args *a = c->a;
    const msadb_signature *sig = c->db->sig;
    c->inputs = calloc(a->n_files, sizeof *c->inputs);
    if (!c->inputs)
        return cli_error("out of memory");
    for (size_t f = 0; f < a->n_files; f++) {
        const char *file = a->files[f];
        input *in = &c->inputs[c->n_inputs];
        in->label = file;
        if (ends_with(file, ".npy")) {
            char *base = npy_base(file);
            if (!base)
                return cli_error("%s: a .npy input must be a pair named X.keys.npy and X.values.npy",
                                 file);
            int seen = 0;
            for (size_t j = 0; j < c->n_inputs && !seen; j++)
                seen = c->inputs[j].keys && strlen(c->inputs[j].keys) == strlen(base) + 9 &&
                       strncmp(c->inputs[j].keys, base, strlen(base)) == 0;
            size_t n = strlen(base) + 16;
            in->keys = malloc(n);
            in->values = malloc(n);
            in->tokens = malloc(n);
            if (!in->keys || !in->values || !in->tokens) {
                free(base);
                return cli_error("out of memory");
            }
            snprintf(in->keys, n, "%s.keys.npy", base);
            snprintf(in->values, n, "%s.values.npy", base);
            snprintf(in->tokens, n, "%s.tokens.npy", base);
            free(base);
            if (access(in->tokens, F_OK) != 0) {
                free(in->tokens);
                in->tokens = NULL;
            }
            if (seen) { /* both halves of the pair were named */
                free(in->keys);
                free(in->values);
                free(in->tokens);
                memset(in, 0, sizeof *in);
                continue;
            }
            file_identity(in->keys, in->identity);
            file_identity(in->values, in->identity + 24);
        } else {
            file_identity(file, in->identity);
        }
        c->n_inputs++;
        if (cli_stream_stop_signal())
            return CLI_ERROR;
        kv_source s;
        int rc = open_input(in, sig, 1, &s);
        in->n_docs = s.n_docs;
        in->n_tokens = s.T;
        kv_source_close(&s);
        if (rc != CLI_OK)
            return rc;
        c->prog.total += in->n_tokens;
    }
    return CLI_OK;
}

static void free_inputs(ingest_ctx *c)
{
    for (size_t i = 0; i < c->n_inputs; i++) {
        free(c->inputs[i].keys);
        free(c->inputs[i].values);
        free(c->inputs[i].tokens);
    }
    free(c->inputs);
}

static int print_ingested(const cli_args *a, const ingest_ctx *c, int interrupted)
{
    const char *space = a->space ? a->space : "default";
    if (a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < c->n_docs; i++) {
            const ingested *g = &c->docs[i];
            char title[MSADB_TITLE_MAX + 1];
            const char *file = c->inputs[g->input].label;
            make_title(a, file, g->index, g->n_in_input, title);
            json_array_append_new(
                arr, json_pack("{s:I, s:s, s:I, s:o, s:o, s:s}", "id", (json_int_t)g->id, "space", space,
                               "tokens", (json_int_t)g->tokens, "title", cli_json_bytes(title, strlen(title)),
                               "file", cli_json_bytes(file, strlen(file)), "status",
                               g->already ? "already in memory" : "added"));
        }
        return cli_json_print(json_pack("{s:o, s:I, s:I, s:b}", "documents", arr, "added",
                                        (json_int_t)(c->n_docs - c->already), "already_in_memory",
                                        (json_int_t)c->already, "interrupted", interrupted));
    }
    if (a->quiet)
        return CLI_OK;
    static const char *const hdr[] = {"id", "space", "tokens", "title", "status"};
    cli_table *t = cli_table_new(5, hdr);
    for (size_t i = 0; i < c->n_docs; i++) {
        const ingested *g = &c->docs[i];
        char title[MSADB_TITLE_MAX + 1];
        make_title(a, c->inputs[g->input].label, g->index, g->n_in_input, title);
        cli_table_addf(t, "%llu\t%s\t%llu\t%s\t%s", (unsigned long long)g->id, space,
                       (unsigned long long)g->tokens, title, g->already ? "already in memory" : "added");
    }
    cli_table_print(t, stdout);
    cli_table_free(t);
    return CLI_OK;
}

int cmd_ingest(const cli_args *a)
{
    if (a->binary_ok) {
        fprintf(stderr, "msadb: ingest: --binary-ok applies to text files; %s is a tensor file\n", a->files[0]);
        return CLI_USAGE;
    }
    if (a->segment) {
        fprintf(stderr, "msadb: ingest: --segment applies to text files read by a model; %s is a tensor file\n",
                a->files[0]);
        return CLI_USAGE;
    }
    cli_db *db;
    if (cli_db_open(a, 0, &db) != CLI_OK)
        return CLI_ERROR;
    ingest_ctx c = {.a = a, .db = db, .st = cli_db_store(db), .expires = cli_expires(a)};
    c.prog.t0 = cli_now_ms();
    c.prog.unit = "tokens";
    int rc = cli_meta_text(a, &c.meta, &c.meta_len);
    if (rc == CLI_OK && a->space)
        rc = cli_require_space(db, a->db, a->space);
    if (rc == CLI_OK)
        rc = cli_stream_begin(a, db, on_commit, &c);
    if (rc == CLI_OK)
        rc = plan_inputs(&c);
    for (size_t k = 0; rc == CLI_OK && k < c.n_inputs && !cli_stream_stop_signal(); k++)
        rc = ingest_input(&c, k);
    int sig;
    rc = cli_stream_finish(a, db, c.n_docs - c.next_id, rc, &sig);
    if (sig && c.n_docs) /* the summary says what is in */
        print_ingested(a, &c, 1);
    if (sig)
        rc = cli_stream_interrupted(a, sig, c.committed, c.already);
    else if (rc == CLI_OK)
        rc = print_ingested(a, &c, 0);
    else if (rc != CLI_USAGE)
        cli_stream_failed(a, c.committed);
    free(c.docs);
    free(c.meta);
    free(c.mbuf);
    free_inputs(&c);
    cli_db_close(db);
    return rc;
}
