/* cmd_docs.c -- a document's life after ingest: `msadb update` (replace a
 * document's content: the new document gets a new id and the old one is
 * deleted, in one transaction) and `msadb expire` (purge the documents
 * whose --ttl has passed).  Uses only the public API (msadb.h). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* ------------------------------------------------------------------------ */
/* update                                                                   */
/* ------------------------------------------------------------------------ */

int cli_update_begin(const cli_args *a, msadb_store *st, cli_update *u)
{
    memset(u, 0, sizeof *u);
    uint64_t id = a->doc_ids[0];
    msadb_snapshot *snap;
    int mrc = msadb_snapshot_begin(st, &snap);
    if (mrc == 0)
        mrc = msadb_doc_get(snap, id, &u->old);
    if (mrc == 0 && !a->n_meta && u->old.meta_len) {
        u->meta = malloc(u->old.meta_len);
        mrc = u->meta ? msadb_doc_meta(snap, id, u->meta, u->old.meta_len, &u->meta_len) : MSADB_ENOMEM;
    }
    msadb_snapshot_end(snap);
    if (mrc != 0)
        return cli_doc_error(a, id, mrc, "; nothing was changed");
    if (a->n_meta && cli_meta_text(a, &u->meta, &u->meta_len) != CLI_OK)
        return CLI_ERROR;
    u->expires = a->ttl ? cli_expires(a) : u->old.expires;
    return CLI_OK;
}

void cli_update_fill(const cli_args *a, const cli_update *u, msadb_doc *doc)
{
    doc->space = u->old.space;
    doc->title = a->title ? a->title : u->old.title[0] ? u->old.title : NULL;
    doc->meta = u->meta;
    doc->meta_len = u->meta_len;
    doc->expires = u->expires;
}

void cli_update_free(cli_update *u)
{
    free(u->meta);
    u->meta = NULL;
}

int cli_update_batch(msadb_store *st, const cli_update *u, msadb_batch **batch)
{
    int mrc = msadb_batch_begin(st, batch);
    if (mrc == 0) /* first: the old document's key does not make the new one a duplicate */
        mrc = msadb_batch_delete(*batch, &u->old.id, 1);
    return mrc;
}

int cli_update_commit(const cli_args *a, msadb_batch *batch, cli_update *u)
{
    size_t n = msadb_batch_count(batch);
    uint64_t old = u->old.id, *ids = calloc(n + 1, sizeof *ids);
    msadb_batch_status bs = {0};
    msadb_batch_status_get(batch, &bs);
    if (ids && n == 0) { /* the content is another document's already */
        msadb_batch_abort(batch);
        free(ids);
        return cli_error("%s: update: the new content is already in the store as document %llu; "
                         "document %llu was kept (nothing was changed)",
                         a->db, (unsigned long long)bs.last_duplicate, (unsigned long long)old);
    }
    int mrc = ids ? msadb_batch_commit(batch, ids) : MSADB_ENOMEM;
    if (!ids)
        msadb_batch_abort(batch);
    if (mrc != 0) {
        free(ids);
        if (mrc == MSADB_ENOTFOUND)
            return cli_error("%s: document %llu was deleted by another writer during the update; "
                             "nothing was changed",
                             a->db, (unsigned long long)old);
        return cli_error_rc(mrc, "%s: update of document %llu failed; nothing was changed", a->db,
                            (unsigned long long)old);
    }
    int rc = CLI_OK;
    if (a->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, json_integer((json_int_t)ids[i]));
        rc = cli_json_print(json_pack("{s:I, s:o}", "replaced", (json_int_t)old, "documents", arr));
    } else if (!a->quiet) {
        if (n == 1)
            printf("document %llu replaced by document %llu\n", (unsigned long long)old,
                   (unsigned long long)ids[0]);
        else
            printf("document %llu replaced by documents %llu..%llu\n", (unsigned long long)old,
                   (unsigned long long)ids[0], (unsigned long long)ids[n - 1]);
    }
    free(ids);
    return rc;
}

/* The tensor form: FILE is a safetensors file of one document. */
int cmd_update(const cli_args *a)
{
    msadb_store *st;
    if (cli_open(a, 0, &st) != CLI_OK)
        return CLI_ERROR;
    cli_update u;
    int rc = cli_update_begin(a, st, &u);
    kv_source s;
    memset(&s, 0, sizeof s);
    int opened = 0;
    if (rc == CLI_OK) {
        rc = kv_source_open(&s, a->files[0], msadb_store_signature(st), 0);
        opened = 1;
    }
    if (rc == CLI_OK && s.n_docs != 1)
        rc = cli_error("%s: holds %zu documents; update replaces one document with one (use ingest "
                       "and rm for more)",
                       a->files[0], s.n_docs);
    msadb_batch *b = NULL;
    kv_doc d;
    if (rc == CLI_OK && kv_source_doc(&s, 0, &d) == CLI_OK) {
        cli_update_fill(a, &u, &d.doc);
        int mrc = cli_update_batch(st, &u, &b);
        if (mrc == 0)
            mrc = msadb_batch_add(b, &d.doc);
        kv_doc_free(&d);
        if (mrc != 0) {
            msadb_batch_abort(b);
            rc = cli_error_rc(mrc, "%s", a->files[0]);
        } else {
            rc = cli_update_commit(a, b, &u);
        }
    } else if (rc == CLI_OK) {
        rc = CLI_ERROR;
    }
    if (opened)
        kv_source_close(&s);
    cli_update_free(&u);
    msadb_close(st);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* expire                                                                   */
/* ------------------------------------------------------------------------ */

int cmd_expire(const cli_args *a)
{
    msadb_store *st;
    if (cli_open(a, 0, &st) != CLI_OK)
        return CLI_ERROR;
    uint64_t n = 0;
    int mrc = msadb_expire(st, &n);
    msadb_close(st);
    if (mrc != 0)
        return cli_error_rc(mrc, "%s: expire", a->db);
    if (a->json)
        return cli_json_print(json_pack("{s:I}", "purged", (json_int_t)n));
    if (!a->quiet)
        printf("purged %llu expired document%s\n", (unsigned long long)n, n == 1 ? "" : "s");
    return CLI_OK;
}
