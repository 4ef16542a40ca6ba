/* cmd_doctor.c -- doctor (what is installed and whether the default model
 * loads), show (one document) and vacuum (give free space back).  Uses only
 * the public API (msadb.h). */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

#ifndef MSADB_DEFAULT_MODEL
#define MSADB_DEFAULT_MODEL ""
#endif

/* ------------------------------------------------------------------------ */
/* doctor                                                                   */
/* ------------------------------------------------------------------------ */

/* The model doctor tries: -m, $MSADB_MODEL, the installed bundled model. */
static const char *doctor_model(const cli_args *a, const char **from)
{
    const char *env = getenv("MSADB_MODEL");
    if (a->model) {
        *from = "-m";
        return a->model;
    }
    if (env && *env) {
        *from = "MSADB_MODEL";
        return env;
    }
    *from = "installed";
    return MSADB_DEFAULT_MODEL;
}

int cmd_doctor(const cli_args *a)
{
    Dl_info dl;
    const char *lib = dladdr((void *)msadb_version, &dl) && dl.dli_fname ? dl.dli_fname : "?";
    const char *from, *model = doctor_model(a, &from);
    char why[512] = "";
    msadb_llm_info info = {0};
    const char *products = "";
    double ms = 0;
    int loads = 0;
    if (msadb_llm_available() && *model) {
        msadb_llm *llm;
        double t0 = cli_now_ms();
        int rc = msadb_llm_open(model, &llm);
        ms = cli_now_ms() - t0;
        if (rc == 0) {
            loads = msadb_llm_get_info(llm, &info) == 0;
            products = msadb_llm_products(llm); /* static storage */
            msadb_llm_close(llm);
        } else {
            msadb_llm_explain(model, rc, why, sizeof why);
        }
    } else if (!*model) {
        snprintf(why, sizeof why, "none installed; give -m M.gguf or set MSADB_MODEL");
    } else {
        msadb_llm_explain(model, MSADB_ENOTSUP, why, sizeof why);
    }
    if (a->json) {
        json_t *j = json_pack("{s:s, s:s, s:s, s:i, s:b, s:i, s:{s:s, s:s, s:b}}", "version",
                              msadb_version(), "cli_version", MSADB_VERSION_STRING, "library", lib,
                              "format_version", msadb_format_version(), "runtime",
                              msadb_llm_available(), "blas_threads", msadb_blas_threads(), "model",
                              "path", model, "from", from, "loads", loads);
        json_t *m = json_object_get(j, "model");
        if (loads) {
            json_object_set_new(m, "shape",
                                json_pack("{s:i, s:i, s:i, s:i}", "layers", info.n_layers,
                                          "kv_heads", info.n_kv_heads, "q_heads", info.n_q_heads,
                                          "head_dim", info.head_dim));
            json_object_set_new(m, "products", json_string(products));
        } else
            json_object_set_new(m, "error", json_string(why));
        return cli_json_print(j) == CLI_OK && loads ? CLI_OK : CLI_ERROR;
    }
    static const char *const hdr[] = {"what", "value"};
    cli_table *t = cli_table_new(2, hdr);
    cli_table_addf(t, "msadb\t%s (this program built against %s)", msadb_version(),
                   MSADB_VERSION_STRING);
    cli_table_addf(t, "library\t%s", lib);
    cli_table_addf(t, "format\t%d", msadb_format_version());
    cli_table_addf(t, "runtime\t%s", msadb_llm_available() ? "built in" : "not built (-Druntime=disabled)");
    cli_table_addf(t, "blas threads\t%d", msadb_blas_threads());
    cli_table_addf(t, "model\t%s (%s)", *model ? model : "none", from);
    if (loads) {
        cli_table_addf(t, "model loads\tyes, in %.0f ms: %u layers, %u kv heads, %u q heads, head dim %u",
                       ms, info.n_layers, info.n_kv_heads, info.n_q_heads, info.head_dim);
        cli_table_addf(t, "model products\t%s", products);
    } else
        cli_table_addf(t, "model loads\tno: %s", why);
    if (!a->quiet)
        cli_table_print(t, stdout);
    cli_table_free(t);
    return loads && strcmp(msadb_version(), MSADB_VERSION_STRING) == 0 ? CLI_OK : CLI_ERROR;
}

/* ------------------------------------------------------------------------ */
/* show                                                                     */
/* ------------------------------------------------------------------------ */

/* Reads a document's text or metadata (which = 't' or 'm') into a fresh
 * buffer; NULL with *len 0 when it has none. */
static char *doc_bytes(msadb_snapshot *snap, uint64_t id, int which, size_t *len, int *mrc)
{
    size_t n = 0;
    *len = 0;
    *mrc = which == 't' ? msadb_doc_text(snap, id, NULL, 0, &n) : msadb_doc_meta(snap, id, NULL, 0, &n);
    if (*mrc || !n)
        return NULL;
    char *buf = malloc(n + 1);
    if (!buf) {
        *mrc = MSADB_ENOMEM;
        return NULL;
    }
    *mrc = which == 't' ? msadb_doc_text(snap, id, buf, n + 1, &n) : msadb_doc_meta(snap, id, buf, n + 1, &n);
    buf[n] = 0;
    *len = n;
    return buf;
}

int cmd_show(const cli_args *a)
{
    msadb_store *st;
    if (cli_open(a, 1, &st) != CLI_OK)
        return CLI_ERROR;
    uint64_t id = a->doc_ids[0];
    msadb_snapshot *snap = NULL;
    msadb_doc_info d;
    int mrc = msadb_snapshot_begin(st, &snap);
    if (mrc == 0)
        mrc = msadb_doc_get(snap, id, &d);
    size_t tl = 0, ml = 0;
    char *text = NULL, *meta = NULL;
    if (mrc == 0)
        text = doc_bytes(snap, id, 't', &tl, &mrc);
    if (mrc == 0)
        meta = doc_bytes(snap, id, 'm', &ml, &mrc);
    uint32_t block = msadb_store_signature(st)->block_size;
    msadb_snapshot_end(snap);
    msadb_close(st);
    int rc = CLI_OK;
    if (mrc != 0)
        rc = cli_doc_error(a, id, mrc, "");
    if (rc == CLI_OK && a->json) {
        json_t *blocks = json_array();
        for (uint64_t b = 0; b < d.n_blocks; b++) {
            uint64_t end = (b + 1) * block < d.n_tokens ? (b + 1) * block : d.n_tokens;
            json_array_append_new(blocks, json_pack("{s:I, s:I, s:I}", "block",
                                                    (json_int_t)(d.first_block + b), "token_start",
                                                    (json_int_t)(b * block), "token_end",
                                                    (json_int_t)end));
        }
        json_t *kv = cli_meta_json(meta ? meta : "", ml);
        rc = cli_json_print(json_pack(
            "{s:I, s:s, s:o, s:I, s:I, s:I, s:o, s:o, s:o, s:o, s:b, s:b, s:o}", "id", (json_int_t)d.id,
            "space", d.space, "title", cli_json_bytes(d.title, strlen(d.title)), "tokens",
            (json_int_t)d.n_tokens, "block_count", (json_int_t)d.n_blocks, "created",
            (json_int_t)d.created, "expires", d.expires ? json_integer((json_int_t)d.expires) : json_null(),
            "meta", cli_json_bytes(meta ? meta : "", ml), "metadata", kv ? kv : json_object(), "text",
            cli_json_bytes(text ? text : "", tl), "has_tokens", d.has_tokens, "has_spans",
            d.has_spans, "blocks", blocks));
    } else if (rc == CLI_OK && !a->quiet) {
        char when[32], until[32] = "never";
        cli_time_str(d.created, when, sizeof when);
        if (d.expires)
            cli_time_str(d.expires, until, sizeof until);
        printf("id       %llu\nspace    %s\ntitle    %s\ncreated  %s\nexpires  %s\ntokens   %llu%s%s\n",
               (unsigned long long)d.id, d.space, d.title, when, until, (unsigned long long)d.n_tokens,
               d.has_tokens ? " (ids stored)" : "", d.has_spans ? " (spans stored)" : "");
        printf("blocks   %llu of %u tokens: ids %llu..%llu\n", (unsigned long long)d.n_blocks,
               block, (unsigned long long)d.first_block,
               (unsigned long long)(d.first_block + d.n_blocks - 1));
        for (size_t i = 0; i < ml;) { /* one line of metadata text per line */
            const char *nl = memchr(meta + i, '\n', ml - i);
            size_t end = nl ? (size_t)(nl - meta) : ml;
            printf("meta     %.*s\n", (int)(end - i), meta + i);
            i = end + 1;
        }
        printf("text     %zu bytes\n", tl);
        if (tl) {
            fwrite(text, 1, tl, stdout);
            if (text[tl - 1] != '\n')
                fputc('\n', stdout);
        }
    }
    free(text);
    free(meta);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* vacuum                                                                   */
/* ------------------------------------------------------------------------ */

int cmd_vacuum(const cli_args *a)
{
    msadb_options opt;
    unsigned char key[MSADB_KEY_BYTES];
    if (cli_key_options(a, &opt, key) != CLI_OK)
        return CLI_ERROR;
    uint64_t before = 0, after = 0;
    int mrc = msadb_vacuum(a->db, &opt, &before, &after);
    explicit_bzero(key, sizeof key);
    if (mrc == MSADB_EBUSY)
        return cli_error("%s: another process has the store open; vacuum needs it alone (stop "
                         "the other msadb commands or programs using it, then run vacuum again); "
                         "nothing was changed",
                         a->db);
    if (mrc != 0)
        return cli_open_error(a->db, mrc, 0);
    if (a->json)
        return cli_json_print(json_pack("{s:I, s:I}", "bytes_before", (json_int_t)before,
                                        "bytes_after", (json_int_t)after));
    if (!a->quiet && cli_stdout_tty())
        printf("vacuumed %s: data file %llu -> %llu bytes\n", a->db, (unsigned long long)before,
               (unsigned long long)after);
    return CLI_OK;
}
