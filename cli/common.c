/* common.c -- what every command that opens a store shares: key options,
 * opening with messages that name the cause, committing batches, checking
 * --space and --summary.  Uses only the public API (msadb.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ------------------------------------------------------------------------ */
/* opening stores                                                           */
/* ------------------------------------------------------------------------ */

/* A key from a key file or a passphrase from an environment variable (the
 * options named fopt, eopt), whichever was given. */
static int read_key(const char *file, const char *env, const char *fopt, const char *eopt,
                    unsigned char key[MSADB_KEY_BYTES], const unsigned char **kout, const char **pout)
{
    *kout = NULL;
    *pout = NULL;
    if (file) {
        int rc = msadb_key_file_read(file, key);
        if (rc == MSADB_EINVAL)
            return cli_error("%s %s: expected exactly 32 raw bytes, or 64 hexadecimal "
                             "digits and at most one newline",
                             fopt, file);
        if (rc != 0)
            return cli_error_rc(rc, "%s %s", fopt, file);
        *kout = key;
    } else if (env) {
        const char *p = getenv(env);
        if (!p)
            return cli_error("%s %s: the environment variable is not set", eopt, env);
        if (!*p)
            return cli_error("%s %s: the environment variable is empty", eopt, env);
        *pout = p;
    }
    return CLI_OK;
}

int cli_key_options(const cli_args *a, msadb_options *opt, unsigned char key[MSADB_KEY_BYTES])
{
    msadb_options_init(opt);
    return read_key(a->key_file, a->passphrase_env, "--key-file", "--passphrase-env", key, &opt->key,
                    &opt->passphrase);
}

int cli_space_key(const cli_args *a, unsigned char key[MSADB_KEY_BYTES], const unsigned char **kout,
                  const char **pout)
{
    return read_key(a->space_key_file, a->space_passphrase_env, "--space-key-file", "--space-passphrase-env", key,
                    kout, pout);
}

/* The keyed space the command names (--space, or space drop NAME). */
static const char *key_space(const cli_args *a)
{
    if (a->cmd == CMD_SPACE)
        return a->space_action == SPACE_DROP ? a->space_name : NULL;
    return a->space ? a->space : a->n_spaces == 1 ? a->spaces[0] : NULL;
}

int cli_limit(const cli_args *a, msadb_store *st)
{
    const char *space = key_space(a);
    if (space && (a->space_key_file || a->space_passphrase_env)) {
        unsigned char key[MSADB_KEY_BYTES];
        const unsigned char *k;
        const char *pass;
        if (cli_space_key(a, key, &k, &pass) != CLI_OK)
            return CLI_ERROR;
        int rc = msadb_space_unlock(st, space, k, pass);
        explicit_bzero(key, sizeof key);
        if (rc == MSADB_EKEY)
            return cli_error("%s: wrong key for space '%s' (check %s, and that the space was created with "
                             "a %s)",
                             a->db, space, k ? "--space-key-file" : "--space-passphrase-env",
                             k ? "key file" : "passphrase");
        if (rc == MSADB_EINVAL)
            return cli_error("%s: space '%s' has no key of its own (leave out --space-key-file and "
                             "--space-passphrase-env)",
                             a->db, space);
        if (rc)
            return cli_scope_error(a, rc);
    }
    int rc = cli_scope_space(a) ? msadb_store_scope(st, cli_scope_space(a)) : 0;
    return rc ? cli_scope_error(a, rc) : CLI_OK;
}

int cli_open_error(const char *path, int rc, int creating)
{
    if (creating && rc != MSADB_EEXIST)
        return cli_error_rc(rc, "%s: cannot create the store", path);
    switch (rc) {
    case MSADB_EKEY:
        return cli_error("%s: the store is encrypted and the key or passphrase is missing or "
                         "wrong (give --key-file F or --passphrase-env VAR)",
                         path);
    case MSADB_ENOTSTORE:
        return cli_error("%s: not an msadb store (the directory holds no msadb data)", path);
    case ENOENT:
        return cli_error("%s: no such file or directory (create a store with 'msadb init %s "
                         "--model M.gguf')",
                         path, path);
    case MSADB_EVERSION:
        return cli_error("%s: the store's format is newer than this msadb (%s) supports", path,
                         msadb_version());
    case MSADB_EEXIST:
        return cli_error("%s: a store already exists there", path);
    default:
        return cli_error_rc(rc, "%s", path);
    }
}

const char *cli_scope_space(const cli_args *a)
{
    switch (a->cmd) {
    case CMD_LS:
    case CMD_RM:
    case CMD_SHOW:
    case CMD_UPDATE: return a->space;
    case CMD_QUERY:
    case CMD_SEARCH: return a->n_spaces == 1 ? a->spaces[0] : NULL;
    default: return NULL;
    }
}

int cli_scope_error(const cli_args *a, int rc)
{
    const char *space = cli_scope_space(a) ? cli_scope_space(a) : key_space(a);
    if (rc == MSADB_ENOTFOUND && (a->cmd == CMD_QUERY || a->cmd == CMD_SEARCH))
        return cli_error("--space %s: no such space in %s", space, a->db);
    if (rc == MSADB_ENOTFOUND)
        return cli_error("%s: no space '%s' (create it with: msadb space %s create %s)", a->db, space, a->db,
                         space);
    return cli_error_rc(rc, "%s: --space %s", a->db, space);
}

int cli_doc_error(const cli_args *a, uint64_t id, int rc, const char *after)
{
    if (rc == MSADB_ENOTFOUND)
        return cli_error("%s: no document %llu (msadb ls %s lists them)%s", a->db, (unsigned long long)id, a->db,
                         after);
    if (rc == MSADB_ESCOPE)
        return cli_error("%s: document %llu is not in space '%s' (--space limits 'msadb %s' to that space)%s",
                         a->db, (unsigned long long)id, cli_scope_space(a), cli_cmd_name(a->cmd), after);
    if (rc == MSADB_EKEY)
        return cli_error("%s: document %llu is in a space with its own key (give --space S with "
                         "--space-key-file F or --space-passphrase-env VAR)%s",
                         a->db, (unsigned long long)id, after);
    return cli_error_rc(rc, "%s: document %llu%s", a->db, (unsigned long long)id, after);
}

int cli_open(const cli_args *a, int read_only, msadb_store **out)
{
    msadb_options opt;
    unsigned char key[MSADB_KEY_BYTES];
    *out = NULL;
    if (cli_key_options(a, &opt, key) != CLI_OK)
        return CLI_ERROR;
    opt.read_only = read_only;
    int rc = msadb_shards_probe(a->db) == 1 ? MSADB_ESTATE : msadb_open(a->db, NULL, &opt, out);
    explicit_bzero(key, sizeof key);
    if (rc == MSADB_ESTATE)
        return cli_error("%s is a sharded store: 'msadb %s' works on one store (make one with 'msadb merge "
                         "%s DB')",
                         a->db, cli_cmd_name(a->cmd), a->db);
    if (rc != 0) {
        *out = NULL;
        return cli_open_error(a->db, rc, 0);
    }
    if (cli_limit(a, *out) != CLI_OK) {
        msadb_close(*out);
        *out = NULL;
        return CLI_ERROR;
    }
    return CLI_OK;
}

int cli_commit_db(const cli_args *a, cli_db *db, size_t n, uint64_t **ids)
{
    *ids = calloc(n + 1, sizeof **ids);
    if (!*ids)
        return cli_error("out of memory");
    int mrc = db->ops->batch_commit(db, *ids);
    return mrc ? cli_error_rc(mrc, "%s: commit failed", a->db) : CLI_OK;
}

int cli_check_memory_args(const cli_args *a, cli_db *db)
{
    const msadb_signature *sig = db->sig;
    if (a->summary && !(sig->summary_kinds & a->summary))
        return cli_error("--summary: %s does not store %s summaries", a->db,
                         cli_summary_name(a->summary));
    for (size_t i = 0; i < a->n_spaces; i++) {
        msadb_space_info info;
        int rc = db->ops->space_get(db, a->spaces[i], &info);
        if (rc == MSADB_ENOTFOUND)
            return cli_error("--space %s: no such space in %s", a->spaces[i], a->db);
        if (rc != 0)
            return cli_error_rc(rc, "--space %s", a->spaces[i]);
        if (info.locked)
            return cli_space_locked(a->db, a->spaces[i]);
    }
    return CLI_OK;
}

int cli_require_space(cli_db *d, const char *db, const char *space)
{
    msadb_space_info info;
    int rc = d->ops->space_get(d, space, &info);
    if (rc == MSADB_ENOTFOUND)
        return cli_error("%s: no space '%s' (create it with: msadb space %s create %s)", db, space,
                         db, space);
    if (rc != 0)
        return cli_error_rc(rc, "%s: space '%s'", db, space);
    if (info.locked)
        return cli_space_locked(db, space);
    return CLI_OK;
}

int cli_space_locked(const char *db, const char *space)
{
    return cli_error("%s: space '%s' has its own key: give it with --space-key-file F or "
                     "--space-passphrase-env VAR",
                     db, space);
}


/* ------------------------------------------------------------------------ */
/* documents: metadata, expiry, filtered listings                           */
/* ------------------------------------------------------------------------ */

int cli_meta_text(const cli_args *a, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (!a->n_meta)
        return CLI_OK;
    size_t n = 0;
    for (size_t i = 0; i < a->n_meta; i++)
        n += strlen(a->meta[i]) + 1;
    char *m = malloc(n);
    if (!m)
        return cli_error("out of memory");
    size_t o = 0;
    for (size_t i = 0; i < a->n_meta; i++) {
        size_t l = strlen(a->meta[i]);
        memcpy(m + o, a->meta[i], l);
        m[o + l] = '\n';
        o += l + 1;
    }
    *out = m;
    *len = n;
    return CLI_OK;
}

int64_t cli_expires(const cli_args *a)
{
    return a->ttl ? msadb_time_now() + a->ttl : 0;
}

int cli_doc_list(const cli_args *a, cli_db *db, const char *space,
                 int (*cb)(const msadb_doc_info *, void *), void *ud)
{
    if (!a->n_where)
        return db->ops->doc_list(db, space, cb, ud);
    msadb_snapshot *snap;
    int rc = cli_db_snapshot(db, &snap);
    if (rc == MSADB_ENOTSUP)
        cli_error("%s: --where works on one store, not a sharded one (make one with 'msadb merge "
                  "%s DB')",
                  a->db, a->db);
    return rc ? rc : msadb_doc_list_where(snap, space, a->where, a->n_where, cb, ud);
}
