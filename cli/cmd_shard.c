/* cmd_shard.c -- split a store into a sharded one, merge a sharded store
 * back into one (msadb_shards_split / msadb_shards_merge): the commands
 * that take a single-machine store to N machines and back.  Public API
 * only. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct copy_out {
    const cli_args *a;
    json_t *arr;
    cli_table *t;
    size_t n;
} copy_out;

static void on_copy(uint64_t old_id, uint64_t new_id, const msadb_doc_info *info, void *ud)
{
    copy_out *c = ud;
    c->n++;
    cli_progress(c->a, "%s: %zu documents copied", cli_cmd_name(c->a->cmd), c->n);
    if (c->arr)
        json_array_append_new(c->arr, json_pack("{s:I, s:I, s:s, s:I, s:o}", "id", (json_int_t)new_id, "old_id",
                                                (json_int_t)old_id, "space", info->space, "tokens",
                                                (json_int_t)info->n_tokens, "title",
                                                cli_json_bytes(info->title, strlen(info->title))));
    else if (c->t)
        cli_table_addf(c->t, "%llu\t%llu\t%s\t%llu\t%s", (unsigned long long)new_id, (unsigned long long)old_id,
                       info->space, (unsigned long long)info->n_tokens, info->title);
}

/* split DB DIR --shards N, merge DIR DB: the source is a.db, the
 * destination a.files[0]; both opened with the same key options. */
static int copy_cmd(const cli_args *a, int split)
{
    const char *dst = a->files[0];
    msadb_options src_opt, dst_opt;
    unsigned char key[MSADB_KEY_BYTES];
    if (cli_key_options(a, &src_opt, key) != CLI_OK)
        return CLI_ERROR;
    dst_opt = src_opt;
    src_opt.read_only = 1;
    static const char *const hdr[] = {"id", "old_id", "space", "tokens", "title"};
    copy_out c = {a, a->json ? json_array() : NULL, a->json || a->quiet ? NULL : cli_table_new(5, hdr), 0};
    int rc = split ? msadb_shards_split(a->db, &src_opt, dst, a->shards, &dst_opt, on_copy, &c)
                   : msadb_shards_merge(a->db, &src_opt, dst, &dst_opt, on_copy, &c);
    explicit_bzero(key, sizeof key);
    cli_progress_end(a);
    if (rc) {
        json_decref(c.arr);
        cli_table_free(c.t);
        if (rc == MSADB_EEXIST)
            return cli_error("%s: %s: a store already exists there (choose a new directory)", cli_cmd_name(a->cmd),
                             dst);
        if (rc == MSADB_ENOTSTORE || rc == ENOENT)
            return cli_error("%s: %s is not %s", cli_cmd_name(a->cmd), a->db,
                             split ? "an msadb store" : "a sharded msadb store (no msadb-shards manifest)");
        if (rc == MSADB_ENOTSUP && split)
            return cli_error("split: %s has spaces with their own key, which the copy would make plain "
                             "spaces: not split (%s was left without a manifest: remove it)",
                             a->db, dst);
        return cli_error_rc(rc, "%s %s into %s", cli_cmd_name(a->cmd), a->db, dst);
    }
    if (c.arr)
        return cli_json_print(json_pack("{s:s, s:o}", "path", dst, "documents", c.arr));
    if (c.t)
        cli_table_print(c.t, stdout);
    cli_table_free(c.t);
    return CLI_OK;
}

int cmd_split(const cli_args *a) { return copy_cmd(a, 1); }
int cmd_merge(const cli_args *a) { return copy_cmd(a, 0); }
