/* cmd_model.c -- the --model forms of init, ingest and query: the built-in
 * runtime (llama GGUF models) gives the store's signature, turns text files
 * into documents (msadb_llm_ingest_batch, streamed in bounded commits by
 * stream.c; text already in memory is skipped) and answers questions with memory attention (msadb_llm_ask),
 * streaming the answer and citing the memory spans it drew on.  Uses only
 * the public API (msadb.h).  See docs/cli.md. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

/* ------------------------------------------------------------------------ */
/* model and store                                                          */
/* ------------------------------------------------------------------------ */

static int open_model(const char *path, msadb_llm **out, double *load_ms)
{
    double t0 = cli_now_ms();
    int rc = msadb_llm_open(path, out);
    if (load_ms)
        *load_ms = cli_now_ms() - t0;
    if (rc == 0)
        return CLI_OK;
    *out = NULL;
    if (rc == ENOENT)
        return cli_error("--model %s: no such file or directory", path);
    char why[512];
    msadb_llm_explain(path, rc, why, sizeof why);
    return cli_error("--model %s: %s", path, why);
}

static void sig_dims(const msadb_signature *s, char *buf, size_t cap)
{
    snprintf(buf, cap, "%u layers, %u kv heads, %u q heads, head dim %u", s->n_layers,
             s->n_kv_heads, s->n_q_heads, s->head_dim);
}

/* The model a command uses: -m, else the one the store records, else
 * $MSADB_MODEL.  *path points into a, the record or the environment; NULL
 * with a message when there is none.  rec gets the store's record. */
static int pick_model(const cli_args *a, msadb_store *st, msadb_model_id *rec, const char **path)
{
    int mrc = st ? msadb_store_get_model(st, rec) : MSADB_ENOTFOUND;
    if (mrc != 0 && mrc != MSADB_ENOTFOUND)
        return cli_error_rc(mrc, "%s: the store's model record", a->db);
    const char *env = getenv("MSADB_MODEL");
    *path = a->model ? a->model : mrc == 0 ? rec->path : env && *env ? env : NULL;
    if (*path)
        return CLI_OK;
    return cli_error("%s: no model: the store records none (it was made with --layers ... or by "
                     "an older msadb); give -m M.gguf or set MSADB_MODEL",
                     a->db);
}

static void hash_hex(const uint8_t *h, char out[17])
{
    for (int i = 0; i < 8; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
}

/* The store must hold K/V of this model: its shape, and its weights when
 * the store records them (unless --force-model). */
static int check_model_store(const cli_args *a, const char *model, msadb_llm *llm, msadb_store *st)
{
    msadb_model_id rec;
    int rc = msadb_llm_check_store(llm, st, &rec);
    if (rc == 0 || (rc == MSADB_EMODEL && a->force_model))
        return CLI_OK;
    if (rc == MSADB_EMODEL) {
        char want[17], have[17];
        msadb_model_id mine;
        msadb_llm_identity(llm, &mine);
        hash_hex(rec.hash, want);
        hash_hex(mine.hash, have);
        return cli_error("%s: the store was made with model %s (blake2b %s...), not %s (blake2b "
                         "%s...): same shape, other weights, so its memory would not match; use "
                         "that model, or --force-model",
                         a->db, rec.path, want, model, have);
    }
    if (rc != MSADB_ESIGNATURE)
        return cli_error_rc(rc, "--model %s", model);
    msadb_signature want;
    msadb_llm_signature(llm, &want);
    char hs[128], ws[128];
    sig_dims(msadb_store_signature(st), hs, sizeof hs);
    sig_dims(&want, ws, sizeof ws);
    return cli_error("%s: the store was made for another model: its signature is %s, model %s "
                     "has %s",
                     a->db, hs, model, ws);
}

/* Opens the store (read_only or not) and its model, checked against it. */
static int open_store_model(const cli_args *a, int read_only, cli_db **db, msadb_store **st,
                            msadb_llm **llm, double *load_ms, const char **model)
{
    msadb_model_id rec;
    *llm = NULL;
    if (cli_open_one(a, read_only, db) != CLI_OK)
        return CLI_ERROR;
    *st = cli_db_store(*db);
    int rc;
    if (pick_model(a, *st, &rec, model) == CLI_OK && open_model(*model, llm, load_ms) == CLI_OK &&
        check_model_store(a, *model, *llm, *st) == CLI_OK) {
        if (!a->segment || (rc = msadb_llm_set_segment(*llm, a->segment)) == 0)
            return CLI_OK;
        cli_error_rc(rc, "--segment");
    }
    msadb_llm_close(*llm);
    cli_db_close(*db);
    *llm = NULL;
    *db = NULL;
    *st = NULL;
    return CLI_ERROR;
}

/* ------------------------------------------------------------------------ */
/* init                                                                     */
/* ------------------------------------------------------------------------ */

int cmd_model_init(const cli_args *a)
{
    msadb_llm *llm;
    if (open_model(a->model, &llm, NULL) != CLI_OK)
        return CLI_ERROR;
    msadb_signature sig;
    int rc = msadb_llm_signature(llm, &sig);
    msadb_llm_close(llm);
    if (rc != 0)
        return cli_error_rc(rc, "--model %s: no valid store signature for this model", a->model);
    if (a->has_memory_layers && a->memory_layers[a->n_memory_layers - 1] >= sig.n_layers) {
        /* the same usage error as without --model, known only now */
        fprintf(stderr,
                "msadb: init: --memory-layers: layer %u is out of range (model %s has %u layers: "
                "0..%u)\n",
                a->memory_layers[a->n_memory_layers - 1], a->model, sig.n_layers, sig.n_layers - 1);
        return CLI_USAGE;
    }
    msadb_model_id id;
    llm = NULL;
    if (open_model(a->model, &llm, NULL) != CLI_OK)
        return CLI_ERROR;
    rc = msadb_llm_identity(llm, &id);
    msadb_llm_close(llm);
    if (rc != 0)
        return cli_error_rc(rc, "--model %s: cannot read it to record its identity", a->model);
    return cli_init_store(a, &sig, &id);
}

/* ------------------------------------------------------------------------ */
/* ingest                                                                   */
/* ------------------------------------------------------------------------ */

/* Cuts a title to MSADB_TITLE_MAX bytes on a UTF-8 character boundary,
 * appending suffix (may be ""). */
static void fit_title(const char *base, const char *suffix, char out[MSADB_TITLE_MAX + 1])
{
    size_t sl = strlen(suffix), keep = strlen(base);
    if (keep + sl > MSADB_TITLE_MAX) {
        keep = MSADB_TITLE_MAX - sl;
        while (keep > 0 && ((unsigned char)base[keep] & 0xc0) == 0x80)
            keep--;
    }
    snprintf(out, MSADB_TITLE_MAX + 1, "%.*s%s", (int)keep, base, suffix);
    cli_utf8_fix(out);
}

/* One row of the summary: a document added (the k-th added gets the k-th
 * committed id) or a text already in memory (its stored document). */
typedef struct mdoc {
    const char *file;
    uint64_t id; /* already: the stored document (0: repeated within this command) */
    int already;
} mdoc;

typedef struct model_ingest {
    const cli_args *a;
    msadb_llm *llm;
    cli_db *db;
    msadb_store *st;
    msadb_batch *batch; /* db's */
    mdoc *docs;
    size_t n_docs, cap;
    uint64_t *ids;       /* committed ids in add order (on_commit) */
    size_t n_ids, cap_ids;
    int oom;
    uint64_t already, bytes_done;
    char *stdin_text;    /* "-" is read once, in the plan */
    size_t stdin_len;
    cli_progress_state prog;
    char *meta;          /* --meta as metadata text, and --ttl: of every document */
    size_t meta_len;
    int64_t expires;
} model_ingest;

static void model_on_commit(const uint64_t *ids, size_t n, void *user)
{
    model_ingest *c = user;
    if (cli_grow(&c->ids, &c->cap_ids, c->n_ids + n, sizeof *c->ids, 64)) {
        c->oom = 1;
        return;
    }
    memcpy(c->ids + c->n_ids, ids, n * sizeof *ids);
    c->n_ids += n;
}

static int push_row(model_ingest *c, const char *file, uint64_t id, int already)
{
    if (cli_grow(&c->docs, &c->cap, c->n_docs + 1, sizeof *c->docs, 16))
        return cli_error("out of memory");
    c->docs[c->n_docs++] = (mdoc){file, id, already};
    return CLI_OK;
}

static int ingest_text(model_ingest *c, const char *file, const char *what, const char *title,
                       const char *text, size_t len)
{
    const cli_args *a = c->a;
    size_t parts = 0;
    msadb_batch_status before, after;
    msadb_batch_status_get(c->batch, &before);
    msadb_doc doc = {0};
    doc.space = a->space;
    doc.title = title;
    doc.text = text;
    doc.text_len = len;
    doc.meta = c->meta;
    doc.meta_len = c->meta_len;
    doc.expires = c->expires;
    int rc = msadb_llm_ingest_doc(c->llm, c->st, c->batch, &doc, &parts);
    if (rc != 0)
        return cli_error_rc(rc, "%s%s", file, what);
    msadb_batch_status_get(c->batch, &after);
    for (size_t p = 0; p < parts; p++)
        if (push_row(c, file, 0, 0) != CLI_OK)
            return CLI_ERROR;
    if (after.duplicates > before.duplicates) {
        c->already++;
        if (push_row(c, file, after.last_duplicate, 1) != CLI_OK)
            return CLI_ERROR;
    }
    c->bytes_done += len;
    cli_stream_progress(a, &c->prog, c->bytes_done, c->n_ids);
    return CLI_OK;
}

static void file_title(const cli_args *a, const char *file, char out[MSADB_TITLE_MAX + 1])
{
    const char *slash = strrchr(file, '/');
    fit_title(a->title ? a->title : strcmp(file, "-") == 0 ? "stdin" : slash ? slash + 1 : file,
              "", out);
}

/* Reads a file ("-": stdin, read once and kept) and checks that there is
 * text to ingest: not empty, text unless --binary-ok, paragraphs with
 * --split. */
static int read_text(model_ingest *c, const char *file, char **text, size_t *len, split_text *s)
{
    const cli_args *a = c->a;
    if (strcmp(file, "-") == 0 && c->stdin_text) {
        *text = c->stdin_text;
        *len = c->stdin_len;
    } else if (cli_read_file(file, text, len) != CLI_OK) {
        return CLI_ERROR;
    } else if (strcmp(file, "-") == 0) {
        c->stdin_text = *text;
        c->stdin_len = *len;
    }
    int rc = CLI_OK;
    memset(s, 0, sizeof *s);
    if (*len == 0)
        rc = cli_error("%s: empty file (nothing to ingest)", file);
    else if (!a->binary_ok && cli_text_check(file, *text, *len) != CLI_OK)
        rc = CLI_ERROR;
    else if (a->split && cli_split_paragraphs(*text, *len, s) != 0)
        rc = cli_error("out of memory");
    else if (a->split && s->n == 0)
        rc = cli_error("%s: no text to ingest (only blank lines and headings)", file);
    if (rc != CLI_OK) {
        cli_split_free(s);
        if (*text != c->stdin_text)
            free(*text);
        *text = NULL;
    }
    return rc;
}

static int ingest_file(model_ingest *c, const char *file)
{
    const cli_args *a = c->a;
    char *text;
    size_t len;
    split_text s;
    if (read_text(c, file, &text, &len, &s) != CLI_OK)
        return CLI_ERROR;
    char base[MSADB_TITLE_MAX + 1], title[MSADB_TITLE_MAX + 1];
    file_title(a, file, base);
    int rc = CLI_OK;
    if (!a->split) {
        rc = ingest_text(c, file, "", base, text, len);
    } else {
        for (size_t i = 0; rc == CLI_OK && i < s.n && !cli_stream_stop_signal(); i++) {
            /* the paragraph's place in its section, for " #k" */
            size_t k = 0, count = 0;
            for (size_t j = 0; j < s.n; j++)
                if (s.p[j].section == s.p[i].section) {
                    count++;
                    if (j < i)
                        k++;
                }
            const char *sec = s.p[i].section >= 0 ? s.headings[s.p[i].section] : "";
            char suffix[32] = "";
            if (count > 1)
                snprintf(suffix, sizeof suffix, " #%zu", k + 1);
            fit_title(*sec ? sec : base, suffix, title);
            size_t line = 1;
            for (size_t b = 0; b < s.p[i].start; b++)
                line += text[b] == '\n';
            char what[64];
            snprintf(what, sizeof what, ": paragraph %zu (line %zu)", i + 1, line);
            rc = ingest_text(c, file, what, title, text + s.p[i].start, s.p[i].end - s.p[i].start);
        }
    }
    cli_split_free(&s);
    if (text != c->stdin_text)
        free(text);
    return rc;
}

/* Every file is read and checked before anything is written (bad input
 * leaves the store unchanged); their sizes are the progress total. */
static int plan_files(model_ingest *c)
{
    for (size_t f = 0; f < c->a->n_files && !cli_stream_stop_signal(); f++) {
        char *text;
        size_t len;
        split_text s;
        if (read_text(c, c->a->files[f], &text, &len, &s) != CLI_OK)
            return CLI_ERROR;
        cli_split_free(&s);
        if (text != c->stdin_text)
            free(text);
        c->prog.total += len;
    }
    return CLI_OK;
}

static int print_model_ingested(const model_ingest *c, int interrupted)
{
    const cli_args *a = c->a;
    msadb_snapshot *snap;
    int mrc = msadb_snapshot_begin(c->st, &snap);
    if (mrc != 0)
        return cli_error_rc(mrc, "%s: the documents were written but cannot be listed", a->db);
    json_t *arr = a->json ? json_array() : NULL;
    static const char *const hdr[] = {"id", "space", "tokens", "title", "status"};
    cli_table *t = !a->json && !a->quiet ? cli_table_new(5, hdr) : NULL;
    size_t k = 0;
    for (size_t i = 0; i < c->n_docs && mrc == 0; i++) {
        const mdoc *m = &c->docs[i];
        uint64_t id = m->already ? m->id : k < c->n_ids ? c->ids[k] : 0;
        k += !m->already;
        msadb_doc_info d;
        memset(&d, 0, sizeof d);
        if (id == 0) { /* repeated within this command, or not committed */
            snprintf(d.space, sizeof d.space, "%s", a->space ? a->space : "default");
            file_title(a, m->file, d.title);
        } else if ((mrc = msadb_doc_get(snap, id, &d)) != 0) {
            break;
        }
        const char *status = m->already ? "already in memory" : "added";
        if (arr)
            json_array_append_new(
                arr, json_pack("{s:I, s:s, s:I, s:o, s:o, s:s}", "id", (json_int_t)d.id, "space", d.space,
                               "tokens", (json_int_t)d.n_tokens, "title", cli_json_bytes(d.title, strlen(d.title)),
                               "file", cli_json_bytes(m->file, strlen(m->file)), "status", status));
        else if (t)
            cli_table_addf(t, "%llu\t%s\t%llu\t%s\t%s", (unsigned long long)d.id, d.space,
                           (unsigned long long)d.n_tokens, d.title, status);
    }
    msadb_snapshot_end(snap);
    if (mrc != 0) {
        json_decref(arr);
        cli_table_free(t);
        return cli_error_rc(mrc, "%s: the documents were written but cannot be listed", a->db);
    }
    if (arr)
        return cli_json_print(json_pack("{s:o, s:I, s:I, s:b}", "documents", arr, "added", (json_int_t)c->n_ids,
                                        "already_in_memory", (json_int_t)c->already, "interrupted", interrupted));
    if (t)
        cli_table_print(t, stdout);
    cli_table_free(t);
    return CLI_OK;
}

int cmd_model_ingest(const cli_args *a)
{
    model_ingest c = {.a = a, .expires = cli_expires(a)};
    c.prog.t0 = cli_now_ms();
    c.prog.unit = "bytes";
    const char *model;
    if (open_store_model(a, 0, &c.db, &c.st, &c.llm, NULL, &model) != CLI_OK)
        return CLI_ERROR;
    int rc = cli_meta_text(a, &c.meta, &c.meta_len);
    if (rc == CLI_OK && a->space)
        rc = cli_require_space(c.db, a->db, a->space);
    if (rc == CLI_OK)
        rc = cli_stream_begin(a, c.db, model_on_commit, &c);
    c.batch = c.db->batch;
    if (rc == CLI_OK)
        rc = plan_files(&c);
    for (size_t f = 0; rc == CLI_OK && f < a->n_files && !cli_stream_stop_signal(); f++)
        rc = ingest_file(&c, a->files[f]);
    int sig;
    rc = cli_stream_finish(a, c.db, 0, rc, &sig);
    if (rc == CLI_OK && c.oom)
        rc = cli_error("out of memory");
    if (sig && c.n_docs)
        print_model_ingested(&c, 1);
    if (sig)
        rc = cli_stream_interrupted(a, sig, c.n_ids, c.already);
    else if (rc == CLI_OK)
        rc = print_model_ingested(&c, 0);
    else
        cli_stream_failed(a, c.n_ids);
    free(c.ids);
    free(c.docs);
    free(c.stdin_text);
    free(c.meta);
    cli_db_close(c.db);
    msadb_llm_close(c.llm);
    return rc;
}

/* update with text (FILE or --text) through the model: the text's
 * document(s) replace the old one. */
int cmd_model_update(const cli_args *a)
{
    cli_db *db;
    msadb_store *st;
    msadb_llm *llm;
    const char *model;
    if (open_store_model(a, 0, &db, &st, &llm, NULL, &model) != CLI_OK)
        return CLI_ERROR;
    cli_update u;
    char *file_text = NULL;
    const char *text = a->text;
    size_t len = text ? strlen(text) : 0;
    int rc = cli_update_begin(a, st, &u);
    if (rc == CLI_OK && !text) {
        rc = cli_read_file(a->files[0], &file_text, &len);
        text = file_text;
        if (rc == CLI_OK && len == 0)
            rc = cli_error("%s: empty file (nothing to update with)", a->files[0]);
    }
    msadb_batch *b = NULL;
    if (rc == CLI_OK) {
        msadb_doc doc = {0};
        cli_update_fill(a, &u, &doc);
        doc.text = text;
        doc.text_len = len;
        int mrc = cli_update_batch(st, &u, &b);
        if (mrc == 0)
            mrc = msadb_llm_ingest_doc(llm, st, b, &doc, NULL);
        if (mrc != 0) {
            msadb_batch_abort(b);
            rc = cli_error_rc(mrc, "%s", a->text ? "--text" : a->files[0]);
        } else {
            rc = cli_update_commit(a, b, &u);
        }
    }
    cli_update_free(&u);
    free(file_text);
    cli_db_close(db);
    msadb_llm_close(llm);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* query                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct answer_buf {
    char *s;
    size_t n, cap;
    int stream;        /* write pieces to stdout as they come */
    int say_followups; /* name each follow-up question on stderr (a terminal) */
    int oom;
    double t0, first;  /* ask start; first piece (ms after t0, -1: none) */
    json_t *followups; /* the follow-up questions asked, in order (array) */
} answer_buf;

static int on_text(const char *text, size_t len, void *user)
{
    answer_buf *b = user;
    if (b->first < 0)
        b->first = cli_now_ms() - b->t0;
    if (cli_grow(&b->s, &b->cap, b->n + len + 1, 1, 256) != 0) {
        b->oom = 1;
        return 1;
    }
    memcpy(b->s + b->n, text, len);
    b->n += len;
    b->s[b->n] = 0;
    if (b->stream) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    return 0;
}

/* A follow-up question the model asks memory (msadb_ask_params.on_followup):
 * kept for the JSON, named on stderr. */
static int on_followup(const char *text, size_t len, void *user)
{
    answer_buf *b = user;
    json_t *s = cli_json_bytes(text, len);
    if (!s || !b->followups || json_array_append_new(b->followups, s) != 0) {
        b->oom = 1;
        return 1;
    }
    if (b->say_followups)
        fprintf(stderr, "msadb: the model asks memory: %.*s\n", (int)len, text);
    return 0;
}

/* The text a span covers (NULL with *len 0 when the document has none). */
static char *span_text(msadb_snapshot *snap, const msadb_span *s, size_t *len)
{
    size_t tl = 0, n = (size_t)(s->text_end - s->text_start);
    *len = 0;
    if (!n || msadb_doc_text(snap, s->doc_id, NULL, 0, &tl) != 0 || s->text_end > tl)
        return NULL;
    char *all = malloc(tl + 1), *out = malloc(n + 1);
    if (all && out && msadb_doc_text(snap, s->doc_id, all, tl + 1, &tl) == 0) {
        memcpy(out, all + s->text_start, n);
        out[n] = 0;
        *len = n;
    } else {
        free(out);
        out = NULL;
    }
    free(all);
    return out;
}

/* One line of at most 60 characters for a table cell. */
static void excerpt(const char *text, size_t len, char *buf, size_t cap)
{
    size_t o = 0, i = 0, chars = 0;
    for (; text && i < len && o + 8 < cap && chars < 60; i++) {
        unsigned char ch = (unsigned char)text[i];
        if ((ch & 0xc0) != 0x80)
            chars++;
        buf[o++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
    }
    while (o > 0 && i < len && ((unsigned char)text[i] & 0xc0) == 0x80) { /* cut char */
        o--;
        i--;
    }
    buf[o] = 0;
    if (text && i < len)
        strcat(buf, "...");
}

#define SPANS_LISTED 64

/* The spans as a JSON array: doc, title, tokens, score, text. */
static json_t *spans_json(msadb_snapshot *snap, const msadb_span *sp, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        msadb_doc_info info;
        if (msadb_doc_get(snap, sp[i].doc_id, &info) != 0)
            info.title[0] = 0;
        size_t len;
        char *text = span_text(snap, &sp[i], &len);
        json_t *o = json_pack("{s:I, s:o, s:I, s:I, s:f}", "doc", (json_int_t)sp[i].doc_id,
                              "title", cli_json_bytes(info.title, strlen(info.title)),
                              "token_start", (json_int_t)sp[i].token_start, "token_end",
                              (json_int_t)sp[i].token_end, "score", (double)sp[i].score);
        if (o && text)
            json_object_set_new(o, "text", cli_json_bytes(text, len));
        json_array_append_new(arr, o);
        free(text);
    }
    return arr;
}

/* The spans as a table: doc, tokens, score, title, text excerpt. */
static void spans_table(msadb_snapshot *snap, const msadb_span *sp, size_t n)
{
    static const char *const hdr[] = {"doc", "tokens", "score", "title", "text"};
    cli_table *t = cli_table_new(5, hdr);
    for (size_t i = 0; i < n; i++) {
        msadb_doc_info info;
        if (msadb_doc_get(snap, sp[i].doc_id, &info) != 0)
            info.title[0] = 0;
        size_t len;
        char *text = span_text(snap, &sp[i], &len), ex[512];
        excerpt(text, len, ex, sizeof ex);
        cli_table_addf(t, "%llu\t%u-%u\t%.4f\t%s\t%s", (unsigned long long)sp[i].doc_id,
                       sp[i].token_start, sp[i].token_end, (double)sp[i].score, info.title, ex);
        free(text);
    }
    cli_table_print(t, stdout);
    cli_table_free(t);
}

static int read_question(const cli_args *a, char **q, size_t *len)
{
    if (strcmp(a->question, "-") != 0) {
        *q = strdup(a->question);
        *len = strlen(a->question);
        return *q ? CLI_OK : cli_error("out of memory");
    }
    if (cli_read_file("-", q, len) != CLI_OK)
        return CLI_ERROR;
    while (*len && ((*q)[*len - 1] == '\n' || (*q)[*len - 1] == '\r'))
        (*q)[--*len] = 0;
    if (*len == 0) {
        free(*q);
        *q = NULL;
        return cli_error("stdin: the question is empty");
    }
    return CLI_OK;
}

/* The routing and sampling parameters from the command line. */
static void ask_params(const cli_args *a, msadb_ask_params *p)
{
    msadb_ask_params_init(p);
    p->spaces = a->spaces;
    p->n_spaces = a->n_spaces;
    p->top_k = a->top_k;
    p->select = a->select;
    p->exact = a->exact;
    p->summary = a->summary;
    p->no_memory = a->no_memory;
    p->max_tokens = a->max_tokens;
    p->temperature = a->temperature;
    p->top_p = a->top_p;
    p->seed = a->seed;
    p->query_pos = (int32_t)a->query_pos;
    p->interleave = a->interleave;
    p->followups = a->followups;
    p->where = a->where;
    p->n_where = a->n_where;
}

/* What query and search share: the store, its model, the question. */
typedef struct asked {
    cli_db *db;
    msadb_store *st; /* the ordinary store behind db */
    msadb_llm *llm;
    const char *model;
    char *question;
    size_t qlen;
    double load_ms;
    msadb_span *spans; /* search's result, best first */
    size_t n_spans;    /* all of them, even those past SPANS_LISTED */
} asked;

static int asked_open(const cli_args *a, asked *q)
{
    memset(q, 0, sizeof *q);
    if (open_store_model(a, 1, &q->db, &q->st, &q->llm, &q->load_ms, &q->model) != CLI_OK)
        return CLI_ERROR;
    int rc = cli_check_memory_args(a, q->db);
    return rc == CLI_OK ? read_question(a, &q->question, &q->qlen) : rc;
}

static void asked_close(asked *q)
{
    free(q->spans);
    free(q->question);
    msadb_llm_close(q->llm);
    cli_db_close(q->db);
}

static int query_error(const cli_args *a, const asked *q, int mrc)
{
    return mrc == MSADB_ENOTFOUND ? cli_error_rc(mrc, "%s: a --space", a->db)
                                  : cli_error_rc(mrc, "query %s with %s", a->db, q->model);
}

/* The routing step alone: every span the question selects (the CLI
 * filters by --min-score itself, to report the best score either way). */
static int run_search(const cli_args *a, asked *q)
{
    msadb_ask_params p;
    ask_params(a, &p);
    size_t cap = SPANS_LISTED;
    q->spans = malloc(cap * sizeof *q->spans);
    if (!q->spans)
        return cli_error("out of memory");
    int mrc = msadb_llm_search(q->llm, q->st, q->question, q->qlen, &p, -INFINITY, q->spans, cap,
                               &q->n_spans);
    return mrc ? query_error(a, q, mrc) : CLI_OK;
}

/* Spans scoring at least --min-score (they come best first). */
static size_t above_min(const cli_args *a, const asked *q)
{
    size_t n = q->n_spans < SPANS_LISTED ? q->n_spans : SPANS_LISTED, k = 0;
    while (k < n && (!a->has_min_score || q->spans[k].score >= a->min_score))
        k++;
    return k;
}

/* "not in memory": nothing scored --min-score.  Exit status 3. */
static int print_abstain(const cli_args *a, const asked *q)
{
    double best = q->n_spans ? (double)q->spans[0].score : -INFINITY;
    if (a->json) {
        json_t *j = json_pack("{s:o, s:n, s:b, s:f, s:f}", "question",
                              cli_json_bytes(q->question, q->qlen), "answer", "abstained", 1,
                              "min_score", (double)a->min_score, "best_score",
                              q->n_spans ? best : -1e30);
        if (cli_json_print(j) != CLI_OK)
            return CLI_ERROR;
    } else {
        printf("not in memory\n");
        if (!a->quiet)
            fprintf(stderr,
                    "msadb: nothing in %s scores --min-score %.4g for this question (best "
                    "%.4g): no answer\n",
                    a->db, (double)a->min_score, best);
    }
    return CLI_ABSTAIN;
}

int cmd_search(const cli_args *a)
{
    asked q;
    int rc = asked_open(a, &q);
    if (rc == CLI_OK)
        rc = run_search(a, &q);
    size_t n = rc == CLI_OK ? above_min(a, &q) : 0;
    msadb_snapshot *snap = NULL;
    int mrc = rc == CLI_OK ? msadb_snapshot_begin(q.st, &snap) : 0;
    if (mrc != 0)
        rc = cli_error_rc(mrc, "%s", a->db);
    if (rc == CLI_OK && a->json) {
        rc = cli_json_print(json_pack("{s:o, s:o, s:I}", "question",
                                      cli_json_bytes(q.question, q.qlen), "spans",
                                      spans_json(snap, q.spans, n), "spans_total",
                                      (json_int_t)q.n_spans));
    } else if (rc == CLI_OK && n && !a->quiet) {
        spans_table(snap, q.spans, n);
    }
    if (rc == CLI_OK && n == 0) {
        if (!a->json && !a->quiet)
            fprintf(stderr, "msadb: nothing in %s%s for this question\n", a->db,
                    a->has_min_score ? " scores --min-score" : "");
        rc = CLI_ABSTAIN;
    }
    msadb_snapshot_end(snap);
    asked_close(&q);
    return rc;
}

typedef struct ask_result {
    answer_buf ans;
    msadb_hit *hits;
    size_t n_hits, hits_cap;
    msadb_span *spans;
    size_t n_spans;
    double ask_ms;
    int memory;
} ask_result;

/* Room for every block the question can draw on: top-k per kv head, or
 * every block with --exact and --select documents. */
static int alloc_hits(const cli_args *a, msadb_store *st, ask_result *r)
{
    msadb_stat_info si;
    int mrc = msadb_stat(st, &si);
    if (mrc != 0)
        return cli_error_rc(mrc, "%s: stat", a->db);
    uint64_t per = a->exact || a->select == MSADB_SELECT_DOCUMENTS ? si.n_blocks : a->top_k;
    if (per > si.n_blocks)
        per = si.n_blocks;
    r->hits_cap = (size_t)(per * msadb_store_signature(st)->n_kv_heads);
    r->hits = malloc((r->hits_cap + 1) * sizeof *r->hits);
    return r->hits ? CLI_OK : cli_error("out of memory");
}

/* Generates the answer (streamed unless --json) and merges its hits into
 * spans. */
static int run_ask(const cli_args *a, asked *q, ask_result *r)
{
    msadb_ask_params p;
    ask_params(a, &p);
    p.on_text = on_text;
    p.on_followup = on_followup;
    p.user = &r->ans;
    r->ans.stream = !a->json;
    r->ans.say_followups = !a->json && !a->quiet && isatty(STDERR_FILENO);
    if (!(r->ans.followups = json_array()))
        return cli_error("out of memory");
    r->ans.t0 = cli_now_ms();
    size_t len = 0;
    int mrc = msadb_llm_ask(q->llm, q->st, q->question, q->qlen, &p, NULL, 0, &len,
                            r->memory ? r->hits : NULL, r->memory ? r->hits_cap : 0, &r->n_hits);
    r->ask_ms = cli_now_ms() - r->ans.t0;
    if (mrc != 0) {
        if (r->ans.stream && r->ans.n)
            fputc('\n', stdout);
        fflush(stdout);
        return query_error(a, q, mrc);
    }
    if (r->ans.oom)
        return cli_error("out of memory");
    if (!r->n_hits)
        return CLI_OK;
    size_t n = r->n_hits < r->hits_cap ? r->n_hits : r->hits_cap;
    msadb_snapshot *snap;
    if ((mrc = msadb_snapshot_begin(q->st, &snap)) != 0)
        return cli_error_rc(mrc, "%s", a->db);
    r->spans = malloc(SPANS_LISTED * sizeof *r->spans);
    mrc = r->spans ? msadb_hits_to_spans(snap, r->hits, n, r->spans, SPANS_LISTED, &r->n_spans)
                   : MSADB_ENOMEM;
    msadb_snapshot_end(snap);
    return mrc ? cli_error_rc(mrc, "%s: the memory spans", a->db) : CLI_OK;
}

/* abstained: the answer is the model's declared abstain answer
 * (msadb_llm_is_abstain); said in the JSON, and on stderr unless --quiet. */
static int print_answer(const cli_args *a, const asked *q, ask_result *r, int abstained)
{
    msadb_snapshot *snap = NULL;
    int mrc = r->n_spans ? msadb_snapshot_begin(q->st, &snap) : 0;
    if (mrc != 0)
        return cli_error_rc(mrc, "%s", a->db);
    size_t listed = r->n_spans < SPANS_LISTED ? r->n_spans : SPANS_LISTED;
    int rc = CLI_OK;
    if (a->json) {
        json_t *timing = json_pack("{s:f, s:f, s:f}", "load", q->load_ms, "first_text",
                                   r->ans.first >= 0 ? r->ans.first : r->ask_ms, "ask", r->ask_ms);
        json_t *root = json_pack(
            "{s:o, s:o, s:b, s:b, s:s, s:I, s:b, s:I, s:O, s:o, s:I, s:o}", "question",
            cli_json_bytes(q->question, q->qlen), "answer",
            cli_json_bytes(r->ans.s ? r->ans.s : "", r->ans.n), "abstained", abstained,
            "memory", r->memory, "select",
            a->select == MSADB_SELECT_DOCUMENTS ? "documents" : "blocks", "top_k",
            (json_int_t)a->top_k, "exact", a->exact, "interleave", (json_int_t)a->interleave,
            "followups", r->ans.followups, "spans", spans_json(snap, r->spans, listed),
            "spans_total", (json_int_t)r->n_spans, "timing_ms", timing);
        rc = cli_json_print(root);
    } else {
        if (r->ans.n == 0 || r->ans.s[r->ans.n - 1] != '\n')
            fputc('\n', stdout);
        if (!a->quiet && listed) {
            fputc('\n', stdout);
            spans_table(snap, r->spans, listed);
        }
        if (!a->quiet && cli_stdout_tty())
            printf("%s%zu memory span%s (%zu listed); first text after %.0f ms, answer in %.0f ms "
                   "(model load %.0f ms)\n",
                   r->memory ? "" : "no memory; ", r->n_spans, r->n_spans == 1 ? "" : "s", listed,
                   r->ans.first >= 0 ? r->ans.first : r->ask_ms, r->ask_ms, q->load_ms);
        if (fflush(stdout) != 0)
            rc = cli_error("cannot write to stdout");
        if (rc == CLI_OK && abstained && !a->quiet)
            fprintf(stderr, "msadb: the model's answer is its declared abstain answer: %s\n",
                    r->memory ? "the memory it drew on does not hold this" : "no memory was asked");
    }
    msadb_snapshot_end(snap);
    return rc;
}

int cmd_model_query(const cli_args *a)
{
    ask_result r = {0};
    r.ans.first = -1;
    r.memory = !a->no_memory;
    asked q;
    int rc = asked_open(a, &q);
    /* --min-score: route first; nothing above it is "not in memory" */
    int abstain = 0;
    if (rc == CLI_OK && r.memory && a->has_min_score) {
        rc = run_search(a, &q);
        abstain = rc == CLI_OK && above_min(a, &q) == 0;
    }
    if (rc == CLI_OK && abstain)
        rc = print_abstain(a, &q);
    else {
        if (rc == CLI_OK && r.memory)
            rc = alloc_hits(a, q.st, &r);
        if (rc == CLI_OK)
            rc = run_ask(a, &q, &r);
        int abstained = rc == CLI_OK && msadb_llm_is_abstain(q.llm, r.ans.s, r.ans.n) == 1;
        if (rc == CLI_OK)
            rc = print_answer(a, &q, &r, abstained);
        if (rc == CLI_OK && abstained)
            rc = CLI_ABSTAIN;
    }
    free(r.ans.s);
    json_decref(r.ans.followups);
    free(r.hits);
    free(r.spans);
    asked_close(&q);
    return rc;
}
