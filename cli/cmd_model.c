/* cmd_model.c -- the --model forms of init, ingest and query: the built-in
 * runtime (llama GGUF models) gives the store's signature, turns text files
 * into documents (msadb_llm_ingest_batch, streamed in bounded commits by
 * stream.c; text already in memory is skipped) and answers questions with memory attention (msadb_llm_ask),
 * streaming the answer and citing the memory spans it drew on.  Uses only
 * the public API (msadb.h).  See docs/cli.md. */
#include <errno.h>
#include <fcntl.h>
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
    switch (rc) {
    case ENOENT: return cli_error("--model %s: no such file", path);
    case MSADB_EINVAL:
        return cli_error("--model %s: not a model the built-in runtime supports (llama "
                         "architecture GGUF)",
                         path);
    case MSADB_ECORRUPT:
    case MSADB_EVERSION:
        return cli_error_rc(rc, "--model %s: not a GGUF v3 model file the runtime can read", path);
    case MSADB_ENOTFOUND:
        return cli_error("--model %s: a tensor or metadata key the llama runtime needs is missing",
                         path);
    case MSADB_EDTYPE:
        return cli_error("--model %s: a weight type the runtime cannot read (F32, F16, BF16 "
                         "and Q8_0 only)",
                         path);
    default: return cli_error_rc(rc, "--model %s: cannot load the model", path);
    }
}

static void sig_dims(const msadb_signature *s, char *buf, size_t cap)
{
    snprintf(buf, cap, "%u layers, %u kv heads, %u q heads, head dim %u", s->n_layers,
             s->n_kv_heads, s->n_q_heads, s->head_dim);
}

/* The store must hold K/V of this model's shape. */
static int check_model_store(const cli_args *a, msadb_llm *llm, msadb_store *st)
{
    msadb_signature want;
    int rc = msadb_llm_signature(llm, &want);
    if (rc != 0)
        return cli_error_rc(rc, "--model %s", a->model);
    const msadb_signature *have = msadb_store_signature(st);
    if (have->n_layers == want.n_layers && have->n_kv_heads == want.n_kv_heads &&
        have->n_q_heads == want.n_q_heads && have->head_dim == want.head_dim)
        return CLI_OK;
    char hs[128], ws[128];
    sig_dims(have, hs, sizeof hs);
    sig_dims(&want, ws, sizeof ws);
    return cli_error("%s: the store was made for another model: its signature is %s, model %s "
                     "has %s",
                     a->db, hs, a->model, ws);
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
    return cli_init_store(a, &sig, a->model);
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
    msadb_store *st;
    msadb_batch *batch;
    mdoc *docs;
    size_t n_docs, cap;
    uint64_t *ids;       /* committed ids in add order (on_commit) */
    size_t n_ids, cap_ids;
    int oom;
    uint64_t already, bytes_done;
    char *stdin_text;    /* "-" is read once, in the plan */
    size_t stdin_len;
    cli_progress_state prog;
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
    int rc = msadb_llm_ingest_batch(c->llm, c->st, c->batch, a->space, title, text, len, &parts);
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
    model_ingest c = {.a = a};
    c.prog.t0 = cli_now_ms();
    c.prog.unit = "bytes";
    if (open_model(a->model, &c.llm, NULL) != CLI_OK)
        return CLI_ERROR;
    if (cli_open(a, 0, &c.st) != CLI_OK) {
        msadb_llm_close(c.llm);
        return CLI_ERROR;
    }
    int rc = check_model_store(a, c.llm, c.st);
    if (rc == CLI_OK && a->space)
        rc = cli_require_space(c.st, a->db, a->space);
    if (rc == CLI_OK)
        rc = cli_stream_begin(a, c.st, model_on_commit, &c, &c.batch);
    if (rc == CLI_OK)
        rc = plan_files(&c);
    for (size_t f = 0; rc == CLI_OK && f < a->n_files && !cli_stream_stop_signal(); f++)
        rc = ingest_file(&c, a->files[f]);
    int sig;
    rc = cli_stream_finish(a, &c.batch, rc, &sig);
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
    msadb_close(c.st);
    msadb_llm_close(c.llm);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* query                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct answer_buf {
    char *s;
    size_t n, cap;
    int stream;        /* write pieces to stdout as they come */
    int oom;
    double t0, first;  /* ask start; first piece (ms after t0, -1: none) */
} answer_buf;

static int on_text(const char *text, size_t len, void *user)
{
    answer_buf *b = user;
    if (b->first < 0)
        b->first = cli_now_ms() - b->t0;
    if (b->n + len + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + len + 1)
            nc *= 2;
        char *p = realloc(b->s, nc);
        if (!p) {
            b->oom = 1;
            return 1;
        }
        b->s = p;
        b->cap = nc;
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

/* A memory span: blocks of one document merged when adjacent. */
typedef struct span {
    uint64_t doc;
    uint32_t start, end;
    float score;
} span;

static int span_by_doc(const void *x, const void *y)
{
    const span *a = x, *b = y;
    if (a->doc != b->doc)
        return a->doc < b->doc ? -1 : 1;
    return a->start < b->start ? -1 : a->start > b->start;
}

static int span_by_score(const void *x, const void *y)
{
    const span *a = x, *b = y;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return span_by_doc(x, y);
}

/* Distinct blocks of the hits (every kv head), adjacent ones of a document
 * merged into one span with the best score, best first. */
static size_t merge_spans(const msadb_hit *h, size_t n, span *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (span){h[i].doc_id, h[i].token_start, h[i].token_end, h[i].score};
    qsort(out, n, sizeof *out, span_by_doc);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && out[m - 1].doc == out[i].doc && out[i].start <= out[m - 1].end) {
            if (out[i].end > out[m - 1].end)
                out[m - 1].end = out[i].end;
            if (out[i].score > out[m - 1].score)
                out[m - 1].score = out[i].score;
        } else {
            out[m++] = out[i];
        }
    }
    qsort(out, m, sizeof *out, span_by_score);
    return m;
}

/* The text a span of tokens covers: title and the bytes from the stored
 * text and token spans (empty when the document has none). */
typedef struct cited {
    char title[MSADB_TITLE_MAX + 1];
    char *text;
    size_t len;
} cited;

static void cite(msadb_snapshot *snap, const span *s, cited *c)
{
    memset(c, 0, sizeof *c);
    msadb_doc_info info;
    if (msadb_doc_get(snap, s->doc, &info) != 0)
        return;
    memcpy(c->title, info.title, sizeof c->title);
    if (!info.text_len || !info.has_spans || s->end > info.n_tokens || s->start >= s->end)
        return;
    int64_t *sp = malloc((size_t)info.n_tokens * 2 * sizeof *sp);
    char *text = malloc(info.text_len + 1);
    size_t tl = 0;
    if (sp && text && msadb_doc_tokens(snap, s->doc, NULL, sp, (size_t)info.n_tokens) == 0 &&
        msadb_doc_text(snap, s->doc, text, info.text_len + 1, &tl) == 0) {
        int64_t a = sp[2 * s->start], b = sp[2 * (s->end - 1) + 1];
        if (a >= 0 && a <= b && (uint64_t)b <= tl) {
            c->len = (size_t)(b - a);
            c->text = malloc(c->len + 1);
            if (c->text) {
                memcpy(c->text, text + a, c->len);
                c->text[c->len] = 0;
            } else {
                c->len = 0;
            }
        }
    }
    free(sp);
    free(text);
}

/* One line of at most 60 characters for a table cell. */
static void excerpt(const cited *c, char *buf, size_t cap)
{
    size_t o = 0, i = 0, chars = 0;
    for (; c->text && i < c->len && o + 8 < cap && chars < 60; i++) {
        unsigned char ch = (unsigned char)c->text[i];
        if ((ch & 0xc0) != 0x80)
            chars++;
        buf[o++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
    }
    while (o > 0 && i < c->len && ((unsigned char)c->text[i] & 0xc0) == 0x80) { /* cut char */
        o--;
        i--;
    }
    buf[o] = 0;
    if (c->text && i < c->len)
        strcat(buf, "...");
}

#define SPANS_LISTED 64

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

typedef struct ask_result {
    answer_buf ans;
    msadb_hit *hits;
    size_t n_hits;
    span *spans;
    size_t n_spans;
    double load_ms, ask_ms;
    int memory;
} ask_result;

static int print_answer(const cli_args *a, msadb_store *st, const char *question, ask_result *r)
{
    msadb_snapshot *snap = NULL;
    int mrc = r->n_spans ? msadb_snapshot_begin(st, &snap) : 0;
    if (mrc != 0)
        return cli_error_rc(mrc, "%s", a->db);
    size_t listed = r->n_spans < SPANS_LISTED ? r->n_spans : SPANS_LISTED;
    int rc = CLI_OK;
    if (a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < listed; i++) {
            cited c;
            cite(snap, &r->spans[i], &c);
            json_t *o = json_pack("{s:I, s:o, s:I, s:I, s:f}", "doc", (json_int_t)r->spans[i].doc,
                                  "title", cli_json_bytes(c.title, strlen(c.title)), "token_start",
                                  (json_int_t)r->spans[i].start, "token_end",
                                  (json_int_t)r->spans[i].end, "score", (double)r->spans[i].score);
            if (o && c.text)
                json_object_set_new(o, "text", cli_json_bytes(c.text, c.len));
            json_array_append_new(arr, o);
            free(c.text);
        }
        json_t *timing = json_pack("{s:f, s:f, s:f}", "load", r->load_ms, "first_text",
                                   r->ans.first >= 0 ? r->ans.first : r->ask_ms, "ask", r->ask_ms);
        json_t *root = json_pack(
            "{s:o, s:o, s:b, s:s, s:I, s:b, s:I, s:o, s:I, s:o}", "question",
            cli_json_bytes(question, strlen(question)), "answer",
            cli_json_bytes(r->ans.s ? r->ans.s : "", r->ans.n), "memory", r->memory, "select",
            a->select == MSADB_SELECT_DOCUMENTS ? "documents" : "blocks", "top_k",
            (json_int_t)a->top_k, "exact", a->exact, "interleave", (json_int_t)a->interleave,
            "spans", arr, "spans_total", (json_int_t)r->n_spans, "timing_ms", timing);
        rc = cli_json_print(root);
    } else {
        if (r->ans.n == 0 || r->ans.s[r->ans.n - 1] != '\n')
            fputc('\n', stdout);
        if (!a->quiet && listed) {
            static const char *const hdr[] = {"doc", "tokens", "score", "title", "text"};
            cli_table *t = cli_table_new(5, hdr);
            for (size_t i = 0; i < listed; i++) {
                cited c;
                cite(snap, &r->spans[i], &c);
                char ex[512];
                excerpt(&c, ex, sizeof ex);
                cli_table_addf(t, "%llu\t%u-%u\t%.4f\t%s\t%s", (unsigned long long)r->spans[i].doc,
                               r->spans[i].start, r->spans[i].end, (double)r->spans[i].score,
                               c.title, ex);
                free(c.text);
            }
            fputc('\n', stdout);
            cli_table_print(t, stdout);
            cli_table_free(t);
        }
        if (!a->quiet && cli_stdout_tty())
            printf("%s%zu memory span%s (%zu listed); first text after %.0f ms, answer in %.0f ms "
                   "(model load %.0f ms)\n",
                   r->memory ? "" : "no memory; ", r->n_spans, r->n_spans == 1 ? "" : "s", listed,
                   r->ans.first >= 0 ? r->ans.first : r->ask_ms, r->ask_ms, r->load_ms);
        if (fflush(stdout) != 0)
            rc = cli_error("cannot write to stdout");
    }
    msadb_snapshot_end(snap);
    return rc;
}

int cmd_model_query(const cli_args *a)
{
    ask_result r = {0};
    r.ans.first = -1;
    r.memory = !a->no_memory;
    msadb_llm *llm = NULL;
    msadb_store *st = NULL;
    char *question = NULL;
    size_t qlen = 0;
    if (cli_open(a, 1, &st) != CLI_OK)
        return CLI_ERROR;
    int rc = open_model(a->model, &llm, &r.load_ms);
    if (rc == CLI_OK)
        rc = check_model_store(a, llm, st);
    if (rc == CLI_OK)
        rc = cli_check_memory_args(a, st);
    if (rc == CLI_OK)
        rc = read_question(a, &question, &qlen);
    /* room for every block the question can draw on: top-k per kv head, or
     * every block with --exact and --select documents */
    const msadb_signature *sig = msadb_store_signature(st);
    msadb_stat_info si;
    size_t cap = 0;
    if (rc == CLI_OK && r.memory) {
        int mrc = msadb_stat(st, &si);
        if (mrc != 0)
            rc = cli_error_rc(mrc, "%s: stat", a->db);
        uint64_t per = a->exact || a->select == MSADB_SELECT_DOCUMENTS ? si.n_blocks : a->top_k;
        if (per > si.n_blocks)
            per = si.n_blocks;
        cap = (size_t)(per * sig->n_kv_heads);
        r.hits = malloc((cap + 1) * sizeof *r.hits);
        if (rc == CLI_OK && !r.hits)
            rc = cli_error("out of memory");
    }
    if (rc == CLI_OK) {
        msadb_ask_params p;
        msadb_ask_params_init(&p);
        p.spaces = a->spaces;
        p.n_spaces = a->n_spaces;
        p.top_k = a->top_k;
        p.select = a->select;
        p.exact = a->exact;
        p.summary = a->summary;
        p.no_memory = a->no_memory;
        p.max_tokens = a->max_tokens;
        p.temperature = a->temperature;
        p.top_p = a->top_p;
        p.seed = a->seed;
        p.query_pos = (int32_t)a->query_pos;
        p.interleave = a->interleave;
        p.on_text = on_text;
        p.user = &r.ans;
        r.ans.stream = !a->json;
        r.ans.t0 = cli_now_ms();
        size_t len = 0;
        int mrc = msadb_llm_ask(llm, st, question, qlen, &p, NULL, 0, &len,
                                r.memory ? r.hits : NULL, r.memory ? cap : 0, &r.n_hits);
        r.ask_ms = cli_now_ms() - r.ans.t0;
        if (mrc != 0) {
            if (r.ans.stream && r.ans.n)
                fputc('\n', stdout);
            fflush(stdout);
            rc = mrc == MSADB_ENOTFOUND ? cli_error_rc(mrc, "%s: a --space", a->db)
                                        : cli_error_rc(mrc, "query %s with %s", a->db, a->model);
        } else if (r.ans.oom) {
            rc = cli_error("out of memory");
        }
    }
    if (rc == CLI_OK && r.n_hits) {
        size_t n = r.n_hits < cap ? r.n_hits : cap;
        r.spans = malloc(n * sizeof *r.spans);
        if (!r.spans)
            rc = cli_error("out of memory");
        else
            r.n_spans = merge_spans(r.hits, n, r.spans);
    }
    if (rc == CLI_OK)
        rc = print_answer(a, st, question, &r);
    free(r.ans.s);
    free(r.hits);
    free(r.spans);
    free(question);
    msadb_llm_close(llm);
    msadb_close(st);
    return rc;
}
