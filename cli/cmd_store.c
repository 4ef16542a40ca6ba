/* cmd_store.c -- the commands that manage a store: init, stat, ls, rm,
 * space, verify, compact.  Uses only the public API (msadb.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

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

int cli_init_store(const cli_args *a, msadb_signature *base, const msadb_model_id *model)
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
    int enc = 0;
    if (a->shards) {
        if (model) {
            explicit_bzero(key, sizeof key);
            return cli_error("%s: a sharded store cannot record its model yet; init without "
                             "--shards, or pass -m to each command", a->db);
        }
        rc = cli_db_create_sharded(a, &sig, &opt, &enc);
        explicit_bzero(key, sizeof key);
        if (rc != CLI_OK)
            return rc;
    } else {
        msadb_store *st = NULL;
        rc = msadb_create(a->db, &sig, &opt, &st);
        explicit_bzero(key, sizeof key);
        if (rc != 0)
            return cli_open_error(a->db, rc, 1);
        enc = msadb_store_encrypted(st) == 1;
        rc = model ? msadb_store_set_model(st, model) : 0;
        msadb_close(st);
        if (rc != 0)
            return cli_error_rc(rc, "%s: created, but the model could not be recorded", a->db);
    }
    if (a->json) {
        json_t *j = json_pack("{s:s, s:o, s:b}", "path", a->db, "signature",
                              cli_signature_json(&sig), "encrypted", enc);
        if (j && a->shards)
            json_object_set_new(j, "shards", json_integer(a->shards));
        if (j && model)
            json_object_set_new(j, "model", cli_model_json(model));
        return cli_json_print(j);
    }
    if (!a->quiet && cli_stdout_tty()) {
        char layers[1024], kinds[32];
        cli_layers_str(&sig, layers, sizeof layers);
        cli_summary_str(sig.summary_kinds, kinds, sizeof kinds);
        printf("created %s: %u layers (memory layers %s), %u kv heads, %u q heads, head dim %u, "
               "block %u, %s, summaries %s%s",
               a->db, sig.n_layers, layers, sig.n_kv_heads, sig.n_q_heads, sig.head_dim,
               sig.block_size, msadb_dtype_name((int)sig.dtype), kinds, enc ? ", encrypted" : "");
        if (a->shards)
            printf(", %u shards", a->shards);
        printf("\n");
    }
    return CLI_OK;
}

/* ------------------------------------------------------------------------ */
/* stat                                                                     */
/* ------------------------------------------------------------------------ */

/* Commits behind the newest state past which stat warns about a reader. */
#define STAT_LAG_WARN 100

static json_t *stat_json(const cli_args *a, const msadb_signature *sig, const msadb_stat_info *s)
{
    return json_pack("{s:s, s:s, s:I, s:b, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
                     "s:I}",
                     "path",
                     a->db, "version", msadb_version(), "format_version",
                     (json_int_t)s->format_version, "encrypted", s->encrypted, "signature",
                     cli_signature_json(sig), "spaces", (json_int_t)s->n_spaces, "documents",
                     (json_int_t)s->n_documents, "tokens", (json_int_t)s->n_tokens, "blocks",
                     (json_int_t)s->n_blocks, "block_bytes", (json_int_t)s->block_bytes,
                     "summary_bytes", (json_int_t)s->summary_bytes, "map_size",
                     (json_int_t)s->map_size, "map_used", (json_int_t)s->map_used, "live_bytes",
                     (json_int_t)s->live_bytes, "readers", (json_int_t)s->readers,
                     "oldest_reader_lag", (json_int_t)s->oldest_reader_lag);
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
    cli_table_addf(t, "live_bytes\t%llu", (unsigned long long)s->live_bytes);
    cli_table_addf(t, "readers\t%u", s->readers);
    cli_table_addf(t, "oldest_reader_lag\t%llu", (unsigned long long)s->oldest_reader_lag);
    cli_table_print(t, stdout);
    cli_table_free(t);
}

int cmd_stat(const cli_args *a)
{
    cli_db *db;
    if (cli_db_open(a, 1, &db) != CLI_OK)
        return CLI_ERROR;
    msadb_stat_info s;
    int rc = db->ops->stat(db, &s);
    if (rc != 0) {
        cli_db_close(db);
        return cli_error_rc(rc, "%s: stat", a->db);
    }
    const msadb_signature *sig = db->sig;
    int out = CLI_OK;
    /* a snapshot left open by a long-lived reader while the file grows */
    if (s.oldest_reader_lag >= STAT_LAG_WARN && s.map_used > 2 * s.live_bytes && !a->quiet)
        fprintf(stderr,
                "msadb: warning: %s: a reader has kept a snapshot open for %llu commits; the "
                "pages it holds cannot be reused, so the file grows (%llu bytes used, %llu "
                "live): end or renew long-lived snapshots\n",
                a->db, (unsigned long long)s.oldest_reader_lag, (unsigned long long)s.map_used,
                (unsigned long long)s.live_bytes);
    if (a->json)
        out = cli_json_print(stat_json(a, sig, &s));
    else if (!a->quiet)
        stat_table(a, sig, &s);
    cli_db_close(db);
    return out;
}

/* ------------------------------------------------------------------------ */
/* ls                                                                       */
/* ------------------------------------------------------------------------ */

typedef struct ls_ctx {
    json_t *arr;
    cli_table *t;
    cli_db *db;
} ls_ctx;

/* A document's metadata: as a JSON object when it is metadata text (else
 * NULL), and as one line "K=V, K=V" for a table. */
static int ls_meta(cli_db *db, uint64_t id, size_t len, json_t **obj, char *line, size_t cap)
{
    *obj = NULL;
    line[0] = 0;
    if (!len)
        return 0;
    char *m = malloc(len);
    if (!m)
        return MSADB_ENOMEM;
    size_t got = 0;
    int rc = db->ops->doc_meta(db, id, m, len, &got);
    if (rc == MSADB_ENOTSUP) /* msadb-mpi: no metadata */
        rc = 0;
    else if (rc == 0) {
        *obj = cli_meta_json(m, got);
        size_t o = 0;
        for (size_t i = 0; i < got && o + 3 < cap; i++) {
            if (m[i] == '\n' && i + 1 < got) {
                line[o++] = ',';
                line[o++] = ' ';
            } else if (m[i] != '\n') {
                line[o++] = (unsigned char)m[i] < 0x20 ? '?' : m[i];
            }
        }
        line[o] = 0;
        cli_utf8_fix(line);
    }
    free(m);
    return rc;
}

static int ls_cb(const msadb_doc_info *d, void *ud)
{
    ls_ctx *c = ud;
    json_t *meta;
    char mline[256], when[32], until[32] = "-";
    int rc = ls_meta(c->db, d->id, d->meta_len, &meta, mline, sizeof mline);
    if (rc)
        return rc;
    cli_time_str(d->created, when, sizeof when);
    if (d->expires)
        cli_time_str(d->expires, until, sizeof until);
    if (c->arr) {
        json_array_append_new(c->arr,
                              json_pack("{s:I, s:s, s:I, s:o, s:I, s:I, s:I, s:b, s:b, s:o, s:o}", "id",
                                        (json_int_t)d->id, "space", d->space, "tokens",
                                        (json_int_t)d->n_tokens, "title",
                                        cli_json_bytes(d->title, strlen(d->title)), "blocks",
                                        (json_int_t)d->n_blocks, "created", (json_int_t)d->created,
                                        "text_bytes", (json_int_t)d->text_len, "has_tokens",
                                        d->has_tokens, "has_spans", d->has_spans, "expires",
                                        d->expires ? json_integer((json_int_t)d->expires) : json_null(),
                                        "meta", meta ? meta : json_null()));
    } else {
        json_decref(meta);
        cli_table_addf(c->t, "%llu\t%s\t%llu\t%llu\t%s\t%s\t%s\t%s", (unsigned long long)d->id, d->space,
                       (unsigned long long)d->n_tokens, (unsigned long long)d->n_blocks, when, until,
                       mline[0] ? mline : "-", d->title);
    }
    return 0;
}

int cmd_ls(const cli_args *a)
{
    cli_db *db;
    if (cli_db_open(a, 1, &db) != CLI_OK)
        return CLI_ERROR;
    int rc = a->space ? cli_require_space(db, a->db, a->space) : CLI_OK;
    if (rc != CLI_OK) {
        cli_db_close(db);
        return rc;
    }
    static const char *const hdr[] = {"id", "space", "tokens", "blocks", "created", "expires", "meta", "title"};
    ls_ctx c = {a->json ? json_array() : NULL, a->json ? NULL : cli_table_new(8, hdr), db};
    int mrc = cli_doc_list(a, db, a->space, ls_cb, &c);
    cli_db_close(db);
    if (mrc != 0) {
        json_decref(c.arr);
        cli_table_free(c.t);
        return mrc == MSADB_ENOTSUP ? CLI_ERROR : cli_error_rc(mrc, "%s: listing documents", a->db);
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
static int rm_check(const cli_args *a, cli_db *db, const uint64_t *ids, size_t n)
{
    int rc = CLI_OK, mrc;
    for (size_t i = 0; i < n && rc == CLI_OK; i++) {
        msadb_doc_info info;
        mrc = db->ops->doc_get(db, ids[i], &info);
        if (mrc != 0)
            rc = cli_doc_error(a, ids[i], mrc, "; nothing was deleted");
    }
    return rc;
}

typedef struct id_list {
    uint64_t *ids;
    size_t n, cap;
} id_list;

static int collect_id(const msadb_doc_info *d, void *ud)
{
    id_list *l = ud;
    if (cli_grow(&l->ids, &l->cap, l->n + 1, sizeof *l->ids, 64) != 0)
        return MSADB_ENOMEM;
    l->ids[l->n++] = d->id;
    return 0;
}

/* rm --space S and/or --where K=V: the ids of every document that passes. */
static int filter_ids(const cli_args *a, cli_db *db, id_list *l)
{
    if (a->space && cli_require_space(db, a->db, a->space) != CLI_OK)
        return CLI_ERROR;
    int mrc = cli_doc_list(a, db, a->space, collect_id, l);
    if (mrc == MSADB_ENOTSUP)
        return CLI_ERROR;
    return mrc ? cli_error_rc(mrc, "%s: listing documents", a->db) : CLI_OK;
}

int cmd_rm(const cli_args *a)
{
    cli_db *db;
    int rc = cli_db_open(a, 0, &db);
    if (rc != CLI_OK)
        return rc;
    id_list l = {0};
    if (!a->n_doc_ids) { /* --space S and/or --where K=V */
        rc = filter_ids(a, db, &l);
    } else if (!(l.ids = malloc(a->n_doc_ids * sizeof *l.ids))) {
        rc = cli_error("out of memory");
    } else {
        memcpy(l.ids, a->doc_ids, a->n_doc_ids * sizeof *l.ids);
        l.n = a->n_doc_ids;
    }
    uint64_t *ids = l.ids;
    size_t n = 0;
    if (rc == CLI_OK) {
        qsort(ids, l.n, sizeof *ids, u64_cmp);
        for (size_t i = 0; i < l.n; i++)
            if (n == 0 || ids[n - 1] != ids[i])
                ids[n++] = ids[i];
    }
    if (rc == CLI_OK && n) {
        rc = rm_check(a, db, ids, n);
        int mrc = rc == CLI_OK ? db->ops->del(db, ids, n) : 0;
        if (mrc == MSADB_ESCOPE || mrc == MSADB_ENOTFOUND) /* changed since the check */
            rc = cli_error("%s: delete: %s; nothing was deleted", a->db, msadb_strerror(mrc));
        else if (mrc != 0)
            rc = cli_error_rc(mrc, "%s: delete", a->db);
    }
    cli_db_close(db);
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
        json_array_append_new(c->arr, json_pack("{s:I, s:s, s:I, s:I, s:b}", "id", (json_int_t)s->id,
                                                "name", s->name, "documents",
                                                (json_int_t)s->n_documents, "tokens",
                                                (json_int_t)s->n_tokens, "keyed", s->keyed));
    else
        cli_table_addf(c->t, "%u\t%s\t%llu\t%llu", s->id, s->name,
                       (unsigned long long)s->n_documents, (unsigned long long)s->n_tokens);
    return 0;
}

static int space_ls(const cli_args *a, cli_db *db)
{
    static const char *const hdr[] = {"id", "name", "documents", "tokens"};
    ls_ctx c = {a->json ? json_array() : NULL, a->json ? NULL : cli_table_new(4, hdr), db};
    int mrc = db->ops->space_list(db, space_ls_cb, &c);
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

static int space_change(const cli_args *a, cli_db *db)
{
    const char *name = a->space_name;
    uint32_t id = 0;
    int mrc;
    if (a->space_action == SPACE_CREATE && (a->space_key_file || a->space_passphrase_env)) {
        unsigned char key[MSADB_KEY_BYTES];
        const unsigned char *k;
        const char *pass;
        if (!cli_db_store(db))
            return cli_error("%s: a space with its own key is made in an ordinary store, not a sharded one",
                             a->db);
        if (cli_space_key(a, key, &k, &pass) != CLI_OK)
            return CLI_ERROR;
        mrc = msadb_space_create_keyed(cli_db_store(db), name, k, pass, &id);
        explicit_bzero(key, sizeof key);
        if (mrc == MSADB_EINVAL && !msadb_store_encrypted(cli_db_store(db)))
            return cli_error("%s: space create %s: a space with its own key needs an encrypted store (one "
                             "made with 'msadb init --key-file F' or '--passphrase-env VAR')",
                             a->db, name);
    } else {
        mrc = a->space_action == SPACE_CREATE ? db->ops->space_create(db, name, &id) : db->ops->space_drop(db, name);
    }
    if (mrc == MSADB_EKEY && a->space_action == SPACE_DROP)
        return cli_error("%s: space '%s' has its own key: give it with --space-key-file F or "
                         "--space-passphrase-env VAR to drop it",
                         a->db, name);
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
    cli_db *db;
    if (cli_db_open(a, a->space_action == SPACE_LS, &db) != CLI_OK)
        return CLI_ERROR;
    int rc = a->space_action == SPACE_LS ? space_ls(a, db) : space_change(a, db);
    cli_db_close(db);
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
    cli_db *db;
    if (cli_db_open(a, 1, &db) != CLI_OK)
        return CLI_ERROR;
    verify_ctx c = {a, a->json ? json_array() : NULL, 0};
    cli_progress(a, "verify: checking %s", a->db);
    int mrc = db->ops->verify(db, verify_cb, &c);
    cli_progress_end(a);
    msadb_stat_info s;
    int have_stat = db->ops->stat(db, &s) == 0;
    cli_db_close(db);
    if (mrc != 0 && mrc != MSADB_ECORRUPT) {
        json_decref(c.arr);
        return mrc == MSADB_EKEY ? cli_error("%s: verify could not complete: a space has its own key, and "
                                             "verify reads every record (msadb_verify() with "
                                             "msadb_space_unlock() for each keyed space)",
                                             a->db)
                                 : cli_error_rc(mrc, "%s: verify could not complete", a->db);
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
    cli_db *db;
    if (cli_db_open(a, 0, &db) != CLI_OK)
        return CLI_ERROR;
    msadb_stat_info before, after;
    int mrc = db->ops->stat(db, &before);
    if (mrc == 0)
        mrc = db->ops->compact(db);
    if (mrc == 0)
        mrc = db->ops->stat(db, &after);
    cli_db_close(db);
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

