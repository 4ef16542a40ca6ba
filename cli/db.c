/* db.c -- what the commands open: an ordinary store, or a sharded store
 * read and written by this process (msadb_shard.h) or, in msadb-mpi, by
 * every rank of the job (mpi.c).  The commands see one interface, so they
 * print the same output whatever the store's shape.  Public API only. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* ---- an ordinary store -------------------------------------------------- */

static msadb_store *st_of(cli_db *db) { return db->h; }

static int snap_get(cli_db *db, msadb_snapshot **out)
{
    int rc = db->snap ? msadb_snapshot_renew(db->snap) : msadb_snapshot_begin(st_of(db), (msadb_snapshot **)&db->snap);
    *out = db->snap;
    return rc;
}

static void st_close(cli_db *db)
{
    msadb_batch_abort(db->batch);
    msadb_snapshot_end(db->snap);
    msadb_close(st_of(db));
}

static int st_stat(cli_db *db, msadb_stat_info *s) { return msadb_stat(st_of(db), s); }
static int st_space_get(cli_db *db, const char *n, msadb_space_info *i) { return msadb_space_get(st_of(db), n, i); }
static int st_space_list(cli_db *db, int (*cb)(const msadb_space_info *, void *), void *ud)
{
    return msadb_space_list(st_of(db), cb, ud);
}
static int st_space_create(cli_db *db, const char *n, uint32_t *id) { return msadb_space_create(st_of(db), n, id); }
static int st_space_drop(cli_db *db, const char *n) { return msadb_space_drop(st_of(db), n); }

static int st_doc_list(cli_db *db, const char *space, int (*cb)(const msadb_doc_info *, void *), void *ud)
{
    msadb_snapshot *s;
    int rc = snap_get(db, &s);
    return rc ? rc : msadb_doc_list(s, space, cb, ud);
}

static int st_doc_get(cli_db *db, uint64_t id, msadb_doc_info *info)
{
    msadb_snapshot *s;
    int rc = snap_get(db, &s);
    return rc ? rc : msadb_doc_get(s, id, info);
}
static int st_doc_text(cli_db *db, uint64_t id, char *buf, size_t cap, size_t *len)
{
    return msadb_doc_text(db->snap, id, buf, cap, len);
}
static int st_doc_spans(cli_db *db, uint64_t id, int64_t *spans, size_t n)
{
    return msadb_doc_tokens(db->snap, id, NULL, spans, n);
}
static int st_doc_meta(cli_db *db, uint64_t id, void *buf, size_t cap, size_t *len)
{
    return msadb_doc_meta(db->snap, id, buf, cap, len);
}


static int st_delete(cli_db *db, const uint64_t *ids, size_t n) { return msadb_doc_delete(st_of(db), ids, n); }
static int st_verify(cli_db *db, void (*report)(const char *, void *), void *ud)
{
    return msadb_verify(st_of(db), report, ud);
}
static int st_compact(cli_db *db) { return msadb_compact(st_of(db)); }
static int st_batch_begin(cli_db *db) { return msadb_batch_begin(st_of(db), (msadb_batch **)&db->batch); }
static int st_batch_add(cli_db *db, const msadb_doc *doc) { return msadb_batch_add(db->batch, doc); }
static int st_batch_commit(cli_db *db, uint64_t *ids)
{
    int rc = msadb_batch_commit(db->batch, ids);
    db->batch = NULL;
    return rc;
}
static void st_batch_abort(cli_db *db)
{
    msadb_batch_abort(db->batch);
    db->batch = NULL;
}
static int st_attend(cli_db *db, const msadb_query *q, float *out, float *lse, msadb_hit *hits, size_t cap,
                     size_t *n)
{
    msadb_snapshot *s;
    int rc = snap_get(db, &s);
    return rc ? rc : msadb_attend(s, q, out, lse, hits, cap, n);
}

static const cli_db_ops store_ops = {
    st_close, st_stat, st_space_get, st_space_list, st_space_create, st_space_drop, st_doc_list,
    st_doc_get, st_doc_text, st_doc_spans, st_doc_meta, st_delete, st_verify, st_compact, st_batch_begin, st_batch_add, st_batch_commit,
    st_batch_abort, st_attend,
};

int cli_db_snapshot(cli_db *db, msadb_snapshot **out)
{
    if (db->ops != &store_ops)
        return MSADB_ENOTSUP;
    return snap_get(db, out);
}

/* ---- a sharded store in this process ------------------------------------ */

static msadb_shards *sh_of(cli_db *db) { return db->h; }

static int ssnap_get(cli_db *db, msadb_shards_snapshot **out)
{
    int rc = db->snap ? msadb_shards_snapshot_renew(db->snap)
                      : msadb_shards_snapshot_begin(sh_of(db), (msadb_shards_snapshot **)&db->snap);
    *out = db->snap;
    return rc;
}

static void sh_close(cli_db *db)
{
    msadb_shards_batch_abort(db->batch);
    msadb_shards_snapshot_end(db->snap);
    msadb_shards_close(sh_of(db));
}

static int sh_stat(cli_db *db, msadb_stat_info *s) { return msadb_shards_stat(sh_of(db), s); }
static int sh_space_get(cli_db *db, const char *n, msadb_space_info *i) { return msadb_shards_space_get(sh_of(db), n, i); }
static int sh_space_list(cli_db *db, int (*cb)(const msadb_space_info *, void *), void *ud)
{
    return msadb_shards_space_list(sh_of(db), cb, ud);
}
static int sh_space_create(cli_db *db, const char *n, uint32_t *id) { return msadb_shards_space_create(sh_of(db), n, id); }
static int sh_space_drop(cli_db *db, const char *n) { return msadb_shards_space_drop(sh_of(db), n); }

static int sh_doc_list(cli_db *db, const char *space, int (*cb)(const msadb_doc_info *, void *), void *ud)
{
    msadb_shards_snapshot *s;
    int rc = ssnap_get(db, &s);
    return rc ? rc : msadb_shards_doc_list(s, space, cb, ud);
}

static int sh_doc_get(cli_db *db, uint64_t id, msadb_doc_info *info)
{
    msadb_shards_snapshot *s;
    int rc = ssnap_get(db, &s);
    return rc ? rc : msadb_shards_doc_get(s, id, info);
}
static int sh_doc_text(cli_db *db, uint64_t id, char *buf, size_t cap, size_t *len)
{
    return msadb_shards_doc_text(db->snap, id, buf, cap, len);
}
static int sh_doc_spans(cli_db *db, uint64_t id, int64_t *spans, size_t n)
{
    return msadb_shards_doc_tokens(db->snap, id, NULL, spans, n);
}
static int sh_doc_meta(cli_db *db, uint64_t id, void *buf, size_t cap, size_t *len)
{
    return msadb_shards_doc_meta(db->snap, id, buf, cap, len);
}

static int sh_delete(cli_db *db, const uint64_t *ids, size_t n) { return msadb_shards_doc_delete(sh_of(db), ids, n); }
static int sh_verify(cli_db *db, void (*report)(const char *, void *), void *ud)
{
    return msadb_shards_verify(sh_of(db), report, ud);
}
static int sh_compact(cli_db *db) { return msadb_shards_compact(sh_of(db)); }
static int sh_batch_begin(cli_db *db)
{
    return msadb_shards_batch_begin(sh_of(db), (msadb_shards_batch **)&db->batch);
}
static int sh_batch_add(cli_db *db, const msadb_doc *doc) { return msadb_shards_batch_add(db->batch, doc, NULL); }
static int sh_batch_commit(cli_db *db, uint64_t *ids)
{
    int rc = msadb_shards_batch_commit(db->batch, ids);
    db->batch = NULL;
    return rc;
}
static void sh_batch_abort(cli_db *db)
{
    msadb_shards_batch_abort(db->batch);
    db->batch = NULL;
}
static int sh_attend(cli_db *db, const msadb_query *q, float *out, float *lse, msadb_hit *hits, size_t cap,
                     size_t *n)
{
    msadb_shards_snapshot *s;
    int rc = ssnap_get(db, &s);
    return rc ? rc : msadb_shards_attend(s, q, out, lse, hits, cap, n);
}

static const cli_db_ops shards_ops = {
    sh_close, sh_stat, sh_space_get, sh_space_list, sh_space_create, sh_space_drop, sh_doc_list,
    sh_doc_get, sh_doc_text, sh_doc_spans, sh_doc_meta, sh_delete, sh_verify, sh_compact, sh_batch_begin, sh_batch_add, sh_batch_commit,
    sh_batch_abort, sh_attend,
};

/* ---- opening ------------------------------------------------------------ */

int cli_db_wrap(const cli_db_ops *ops, void *h, const msadb_signature *sig, const char *path, cli_db **out)
{
    cli_db *db = calloc(1, sizeof *db);
    if (!db)
        return cli_error("out of memory");
    db->ops = ops;
    db->h = h;
    db->sig = sig;
    db->path = path;
    *out = db;
    return CLI_OK;
}

int cli_open_one(const cli_args *a, int read_only, cli_db **out)
{
    msadb_store *st;
    *out = NULL;
    if (cli_open(a, read_only, &st) != CLI_OK)
        return CLI_ERROR;
    if (cli_db_wrap(&store_ops, st, msadb_store_signature(st), a->db, out) != CLI_OK) {
        msadb_close(st);
        return CLI_ERROR;
    }
    return CLI_OK;
}

int cli_db_open(const cli_args *a, int read_only, cli_db **out)
{
    *out = NULL;
    int sharded = msadb_shards_probe(a->db);
    if (sharded < 0)
        return cli_error_rc(sharded, "%s: the shard manifest (msadb-shards)", a->db);
    if (sharded && cli_mpi_active() && a->cmd == CMD_RM && a->n_doc_ids && a->space)
        return cli_error("%s: msadb-mpi does not limit 'rm' to --space; run 'msadb rm %s --space %s DOC...' "
                         "(without MPI)",
                         a->db, a->db, a->space);
    if (sharded && cli_mpi_active() && (a->space_key_file || a->space_passphrase_env))
        return cli_error("%s: msadb-mpi does not take space keys (--space-key-file, --space-passphrase-env)",
                         a->db);
    if (sharded && cli_mpi_active())
        return cli_mpi_open(a, read_only, out);
    if (cli_mpi_rank() != 0)
        cli_mpi_leave(); /* one process is enough for an ordinary store */
    if (!sharded)
        return cli_open_one(a, read_only, out);
    msadb_options opt;
    unsigned char key[MSADB_KEY_BYTES];
    if (cli_key_options(a, &opt, key) != CLI_OK)
        return CLI_ERROR;
    opt.read_only = read_only;
    msadb_shards *sh;
    int rc = msadb_shards_open(a->db, NULL, &opt, &sh);
    explicit_bzero(key, sizeof key);
    if (rc)
        return cli_open_error(a->db, rc, 0);
    for (uint32_t i = 0; i < msadb_shards_local_count(sh); i++) { /* every shard */
        msadb_store *st;
        rc = msadb_shards_store(sh, (uint32_t)msadb_shards_local_index(sh, i), &st);
        if (rc || cli_limit(a, st) != CLI_OK) {
            msadb_shards_close(sh);
            return rc ? cli_error_rc(rc, "%s: shard %u", a->db, i) : CLI_ERROR;
        }
    }
    if (cli_db_wrap(&shards_ops, sh, msadb_shards_signature(sh), a->db, out) != CLI_OK) {
        msadb_shards_close(sh);
        return CLI_ERROR;
    }
    return CLI_OK;
}

void cli_db_close(cli_db *db)
{
    if (!db)
        return;
    db->ops->close(db);
    free(db);
}

int cli_db_doc_view(cli_db *db, uint64_t id, msadb_doc_info *info, char **text, int64_t **spans)
{
    *text = NULL;
    *spans = NULL;
    int rc = db->ops->doc_get(db, id, info);
    if (rc || !info->text_len || !info->has_spans)
        return rc;
    size_t len = 0;
    *text = malloc(info->text_len + 1);
    *spans = malloc((size_t)info->n_tokens * 2 * sizeof(int64_t));
    if (!*text || !*spans || (rc = db->ops->doc_text(db, id, *text, info->text_len + 1, &len)) ||
        (rc = db->ops->doc_spans(db, id, *spans, (size_t)info->n_tokens))) {
        free(*text);
        free(*spans);
        *text = NULL;
        *spans = NULL;
        return rc ? rc : MSADB_ENOMEM;
    }
    (*text)[len] = 0;
    return 0;
}

msadb_store *cli_db_store(cli_db *db) { return db && db->ops == &store_ops ? db->h : NULL; }

int cli_db_create_sharded(const cli_args *a, const msadb_signature *sig, const msadb_options *opt, int *encrypted)
{
    if (cli_mpi_active())
        return cli_mpi_create(a, sig, opt, encrypted);
    msadb_shards *sh;
    int rc = msadb_shards_create(a->db, a->shards, sig, opt, &sh);
    if (rc)
        return cli_open_error(a->db, rc, 1);
    msadb_stat_info s;
    *encrypted = msadb_shards_stat(sh, &s) == 0 && s.encrypted;
    msadb_shards_close(sh);
    return CLI_OK;
}
