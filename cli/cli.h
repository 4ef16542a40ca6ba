/* cli.h -- internal interface between the parts of the msadb program:
 * command-line parsing (args.c), output helpers (output.c), the commands
 * (cmd_store.c, cmd_ingest.c, cmd_query.c, cmd_model.c, cmd_dump.c, with
 * common.c), the input readers (input/) and main (msadb.c).
 *
 * The program uses only the public API in msadb.h.  Every command function
 * returns the process exit status: 0 success, 1 runtime error (a message
 * prefixed "msadb: " has been printed on stderr), 2 usage error.
 */
#ifndef MSADB_CLI_H
#define MSADB_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "msadb.h"
#include "msadb_shard.h"
#include "input/tensorfile.h"
#include "input/textfile.h"

/* CLI_ABSTAIN: query and search found nothing in memory scoring at least
 * the minimum score (the answer is "not in memory"), or the model answered
 * with its declared abstain answer (msadb_llm_is_abstain). */
enum { CLI_OK = 0, CLI_ERROR = 1, CLI_USAGE = 2, CLI_ABSTAIN = 3 };

typedef struct cli_db cli_db; /* db.c */

/* ------------------------------------------------------------------------ */
/* args.c: parsing                                                          */
/* ------------------------------------------------------------------------ */

typedef enum cli_cmd {
    CMD_NONE, CMD_HELP, CMD_VERSION, CMD_INIT, CMD_INGEST, CMD_QUERY, CMD_STAT, CMD_LS,
    CMD_RM, CMD_SPACE, CMD_VERIFY, CMD_DUMP, CMD_LOAD, CMD_COMPACT, CMD_SPLIT, CMD_MERGE, CMD_DOCTOR,
    CMD_SEARCH, CMD_SHOW, CMD_VACUUM, CMD_UPDATE, CMD_EXPIRE, CMD_COUNT
} cli_cmd;

typedef enum cli_space_action { SPACE_CREATE, SPACE_DROP, SPACE_LS } cli_space_action;

/* The parsed command line.  Strings point into argv. */
typedef struct cli_args {
    cli_cmd cmd;
    cli_cmd help_cmd;          /* help: the command asked about (CMD_NONE: all) */
    const char *db;
    int json, quiet, help;
    const char *key_file, *passphrase_env;
    const char *space_key_file, *space_passphrase_env; /* a keyed space's key (--space) */
    /* init */
    uint32_t layers, kv_heads, q_heads, head_dim, block;
    uint32_t shards;           /* init, split: --shards N (0: an ordinary store) */
    int has_memory_layers;
    uint32_t n_memory_layers;
    uint16_t memory_layers[MSADB_MAX_LAYERS];
    int dtype;                 /* -1: library default */
    uint32_t summary;          /* init: kinds (0: default); query: one kind (0: default) */
    /* ingest, ls */
    const char *space, *title;
    const char **files;        /* ingest: FILE...; dump/load: one FILE */
    size_t n_files;
    /* query */
    const char *q_file, *out;
    uint32_t layer;
    const char **spaces;
    size_t n_spaces;
    uint32_t top_k;
    int select, exact, per_token;
    /* init, ingest, query with a model (cmd_model.c) */
    const char *model;         /* -m/--model: GGUF file; NULL: the store's, then $MSADB_MODEL */
    int use_model;             /* init --model, query with a question, search */
    int force_model;           /* --force-model */
    float min_score;           /* --min-score (when has_min_score) */
    int has_min_score;
    int split;                 /* ingest --split */
    uint64_t commit_tokens;    /* ingest --commit-every Nt (0: not given) */
    uint64_t commit_docs;      /* ingest --commit-every Nd (0: not given) */
    int binary_ok;             /* ingest --binary-ok */
    int segment;               /* ingest/update --segment: MSADB_SEGMENT_*; 0: the model's */
    int no_memory;             /* query */
    uint32_t max_tokens, interleave, followups, query_pos;
    float temperature, top_p;
    uint64_t seed;
    const char *question;      /* query: the positional QUESTION ("-": stdin) */
    /* documents: ingest/update --meta and --ttl, ls/rm/query/search --where */
    const char **meta, **where; /* KEY=VALUE terms */
    size_t n_meta, n_where;
    int64_t ttl;               /* seconds; 0: not given */
    const char *text;          /* update --text */
    /* rm, show, update */
    uint64_t *doc_ids;
    size_t n_doc_ids;
    /* space */
    cli_space_action space_action;
    const char *space_name;
    const char **pos_owner_;   /* private: the positional argument array */
} cli_args;

/* Parses argv.  Returns CLI_OK, or CLI_USAGE with a message (no "msadb: "
 * prefix) in err.  cli_args_free() must be called either way. */
int cli_parse(int argc, char **argv, cli_args *a, char *err, size_t errlen);
void cli_args_free(cli_args *a);

/* Name of a command ("ingest"). */
const char *cli_cmd_name(cli_cmd c);
/* Prints the usage of one command (CMD_NONE: overview of all). */
void cli_usage(FILE *fp, cli_cmd c);
/* Whether a space name is valid (1..MSADB_NAME_MAX of [A-Za-z0-9._-:@/]). */
int cli_space_name_ok(const char *s);

/* ------------------------------------------------------------------------ */
/* output.c                                                                 */
/* ------------------------------------------------------------------------ */

#if defined(__GNUC__)
#define CLI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CLI_PRINTF(a, b)
#endif

/* "msadb: <message>\n" on stderr; returns CLI_ERROR. */
int cli_error(const char *fmt, ...) CLI_PRINTF(1, 2);
/* "msadb: <message>: <msadb_strerror(rc)>\n"; returns CLI_ERROR. */
int cli_error_rc(int rc, const char *fmt, ...) CLI_PRINTF(2, 3);

/* Whether stdout / stderr are terminals (computed once). */
int cli_stdout_tty(void);
int cli_stderr_tty(void);

/* Progress line on stderr, only when stderr is a terminal and !quiet. */
void cli_progress(const cli_args *a, const char *fmt, ...) CLI_PRINTF(2, 3);
void cli_progress_end(const cli_args *a);

/* Prints a JSON value on stdout (indented on a terminal) and releases it. */
int cli_json_print(json_t *v);
/* A JSON string from bytes that may not be valid UTF-8 (bad bytes become
 * U+FFFD). */
json_t *cli_json_bytes(const char *s, size_t n);
/* Whether n bytes are valid UTF-8 without NUL; cli_utf8_fix() replaces each
 * byte of an invalid sequence with '?' in place (titles made of file names). */
int cli_utf8_valid(const char *s, size_t n);
void cli_utf8_fix(char *s);

/* Length of the valid UTF-8 sequence at s (n >= 1 bytes left), or 0. */
size_t cli_utf8_seq(const unsigned char *s, size_t n);

/* A table: aligned columns with a header on a terminal, tab-separated
 * lines with a header line otherwise. */
typedef struct cli_table cli_table;
cli_table *cli_table_new(size_t ncols, const char *const *headers);
void cli_table_add(cli_table *t, const char *const *cells);
/* Adds a row from printf-style cells separated by '\t'. */
void cli_table_addf(cli_table *t, const char *fmt, ...) CLI_PRINTF(2, 3);
void cli_table_print(cli_table *t, FILE *fp);
void cli_table_free(cli_table *t);

/* Summary kinds and their names ("mean", "minmax", "reps"), ending {0, NULL}. */
typedef struct cli_kind_name {
    uint32_t kind;
    const char *name;
} cli_kind_name;
extern const cli_kind_name cli_summary_kinds[];
const char *cli_summary_name(uint32_t kind);

/* Signature <-> JSON (used by stat, init --json, dump and load). */
json_t *cli_signature_json(const msadb_signature *sig);
int cli_signature_from_json(json_t *j, msadb_signature *sig, char *err, size_t errlen);
/* "2,3" or "mean,minmax" renderings. */
void cli_layers_str(const msadb_signature *sig, char *buf, size_t cap);
void cli_summary_str(uint32_t kinds, char *buf, size_t cap);

/* Grows the array *pp (elements of `size` bytes, room for *cap) to room for
 * at least n, doubling from `first`; contents kept.  0, or -1 when out of
 * memory (nothing changed).  Every growing array of the program uses it. */
int cli_grow(void *pp, size_t *cap, size_t n, size_t size, size_t first);

/* Monotonic clock in milliseconds. */
double cli_now_ms(void);
/* A Unix time as "2026-12-03T12:00:00Z" into buf ("" if it cannot be shown). */
void cli_time_str(int64_t t, char *buf, size_t cap);
/* Metadata text (lines KEY=VALUE, msadb.h) as a JSON object {KEY: VALUE},
 * or NULL when the bytes are not such text (or empty). */
json_t *cli_meta_json(const char *meta, size_t len);

/* ------------------------------------------------------------------------ */
/* common.c: opening stores and what commands share                         */
/* ------------------------------------------------------------------------ */

/* Fills opt (and key) from --key-file / --passphrase-env.  Returns 0 or
 * CLI_ERROR after a message. */
int cli_key_options(const cli_args *a, msadb_options *opt, unsigned char key[MSADB_KEY_BYTES]);
/* Opens a.db; returns 0 or CLI_ERROR after a message naming the problem. */
int cli_open(const cli_args *a, int read_only, msadb_store **out);
/* The space a command is limited to (--space on ls, rm, show, update; a
 * single --space on query, search): cli_open and cli_db_open limit the
 * handle to it (msadb_store_scope).  NULL: none. */
const char *cli_scope_space(const cli_args *a);
/* Gives st the key of the command's keyed space (--space-key-file,
 * --space-passphrase-env), then limits it to the command's space
 * (cli_scope_space).  CLI_OK, or CLI_ERROR after a message. */
int cli_limit(const cli_args *a, msadb_store *st);
/* A keyed space's key (--space-key-file F) or passphrase
 * (--space-passphrase-env VAR): *kout or *pout set (both NULL if neither
 * was given).  CLI_OK or CLI_ERROR after a message. */
int cli_space_key(const cli_args *a, unsigned char key[MSADB_KEY_BYTES], const unsigned char **kout,
                  const char **pout);
/* Message for a failed msadb_store_scope; returns CLI_ERROR. */
int cli_scope_error(const cli_args *a, int rc);
/* Message for a document read or delete that failed with rc (no such
 * document, outside --space, other errors), `after` appended; CLI_ERROR. */
int cli_doc_error(const cli_args *a, uint64_t id, int rc, const char *after);
/* Message for a failed open (creating = 0) or create of `path`; returns
 * CLI_ERROR. */
int cli_open_error(const char *path, int rc, int creating);

/* input/kvsource.c: one input file (safetensors, or a .npy pair) checked against a store
 * signature and cut into documents. */
typedef struct kv_source {
    char *label;               /* file name for messages (the keys file for .npy) */
    char *values_label, *tokens_label; /* .npy inputs: the other files */
    tf_file st, npy_values, npy_tokens;
    const tf_tensor *keys, *values, *tokens, *spans, *text, *meta;
    uint64_t L, H, T, D;
    size_t n_docs;
    uint64_t *doc_start;       /* [n_docs + 1] token offsets */
    uint64_t *text_range;      /* [n_docs][2] byte range of each document's text, or NULL */
    uint64_t *meta_range;      /* [n_docs][2], or NULL */
} kv_source;

/* One document cut from a kv_source: contiguous [L][H][n][D] keys/values
 * and rebased token spans; text and meta point into the file. */
typedef struct kv_doc {
    msadb_doc doc;
    void *keys, *values;
    int32_t *token_ids;
    int64_t *token_spans;
} kv_doc;

/* scan: look for NaN and Inf in keys and values now (a pass over the data,
 * in bounded memory); without it the library refuses them when the
 * document is added (MSADB_ENONFINITE). */
int kv_source_open(kv_source *s, const char *path, const msadb_signature *sig, int scan);
/* The same from a safetensors file in memory (buf must outlive s). */
int kv_source_parse(kv_source *s, const char *label, const uint8_t *buf, size_t len,
                    const msadb_signature *sig, int scan);
int kv_source_open_npy(kv_source *s, const char *keys_path, const char *values_path,
                       const char *tokens_path, const msadb_signature *sig, int scan);
int kv_source_doc(const kv_source *s, size_t i, kv_doc *d);
void kv_doc_free(kv_doc *d);
void kv_source_close(kv_source *s);

/* Checks that a space exists, naming the store and the fix in the message:
 * 0, or CLI_ERROR after a message. */
int cli_require_space(cli_db *d, const char *db, const char *space);
/* The message for a keyed space whose key was not given; CLI_ERROR. */
int cli_space_locked(const char *db, const char *space);
/* A query's --summary is stored and every --space exists in the store:
 * CLI_OK, or CLI_ERROR with a message naming the first that is not. */
int cli_check_memory_args(const cli_args *a, cli_db *db);
/* Commits db's batch of n documents (freed whatever happens); *ids gets
 * their ids (caller frees). */
int cli_commit_db(const cli_args *a, cli_db *db, size_t n, uint64_t **ids);
/* --meta as metadata text ("K=V\n" per term, malloc'ed; NULL, 0 without
 * --meta).  0, or CLI_ERROR after a message. */
int cli_meta_text(const cli_args *a, char **out, size_t *len);
/* The expiry time --ttl asks for (msadb_time_now() + ttl), 0 without it. */
int64_t cli_expires(const cli_args *a);
/* The documents of `space` (NULL: all) that pass --where: db's listing, or
 * the library's filtered one (an ordinary store only: a sharded store with
 * --where is an error).  Returns the library's code (after a message for
 * a sharded store: CLI_ERROR is then returned as MSADB_ENOTSUP). */
int cli_doc_list(const cli_args *a, cli_db *db, const char *space,
                 int (*cb)(const msadb_doc_info *, void *), void *ud);

/* init's second half: applies --memory-layers, --block, --dtype and
 * --summary to *sig, validates it, creates a.db, records the model (when
 * not NULL) and prints the result.  Returns the exit status. */
int cli_init_store(const cli_args *a, msadb_signature *sig, const msadb_model_id *model);
/* A model identity as JSON {path, blake2b, file_size}. */
json_t *cli_model_json(const msadb_model_id *m);

/* ------------------------------------------------------------------------ */
/* db.c: what a command opens (an ordinary or a sharded store)              */
/* ------------------------------------------------------------------------ */

/* The operations, as the library names them (msadb_stat, msadb_space_*,
 * msadb_doc_list, ..., msadb_attend), for each kind of store.  Reads go
 * through one snapshot, renewed by each attend. */
typedef struct cli_db_ops {
    void (*close)(cli_db *db);
    int (*stat)(cli_db *db, msadb_stat_info *s);
    int (*space_get)(cli_db *db, const char *name, msadb_space_info *info);
    int (*space_list)(cli_db *db, int (*cb)(const msadb_space_info *, void *), void *ud);
    int (*space_create)(cli_db *db, const char *name, uint32_t *id);
    int (*space_drop)(cli_db *db, const char *name);
    int (*doc_list)(cli_db *db, const char *space, int (*cb)(const msadb_doc_info *, void *), void *ud);
    int (*doc_get)(cli_db *db, uint64_t id, msadb_doc_info *info);
    int (*doc_text)(cli_db *db, uint64_t id, char *buf, size_t cap, size_t *len); /* after doc_get */
    int (*doc_spans)(cli_db *db, uint64_t id, int64_t *spans, size_t n);         /* after doc_get */
    int (*doc_meta)(cli_db *db, uint64_t id, void *buf, size_t cap, size_t *len); /* after doc_get or
                                                                                 doc_list */
    int (*del)(cli_db *db, const uint64_t *ids, size_t n);
    int (*verify)(cli_db *db, void (*report)(const char *, void *), void *ud);
    int (*compact)(cli_db *db);
    int (*batch_begin)(cli_db *db);
    int (*batch_add)(cli_db *db, const msadb_doc *doc);
    int (*batch_commit)(cli_db *db, uint64_t *ids);
    void (*batch_abort)(cli_db *db);
    int (*attend)(cli_db *db, const msadb_query *q, float *out, float *lse, msadb_hit *hits, size_t cap,
                  size_t *n_hits);
} cli_db_ops;

struct cli_db {
    const cli_db_ops *ops;
    void *h;                  /* msadb_store, msadb_shards or msadb_mpi */
    void *snap, *batch;       /* the open snapshot and batch of that kind */
    const msadb_signature *sig;
    const char *path;
};

/* Opens a.db, an ordinary store or a sharded directory.  In msadb-mpi a
 * sharded store is served by every rank: ranks other than 0 do not return
 * (they serve rank 0's operations until it closes, then end the process);
 * an ordinary store is opened by rank 0 alone.  CLI_OK, or CLI_ERROR after
 * a message. */
int cli_db_open(const cli_args *a, int read_only, cli_db **out);
void cli_db_close(cli_db *db);
/* Opens a.db as one ordinary store (a sharded store is an error naming
 * 'msadb merge'): for the commands that work on one store. */
int cli_open_one(const cli_args *a, int read_only, cli_db **out);
/* The ordinary store behind db, or NULL when it is sharded. */
msadb_store *cli_db_store(cli_db *db);
/* An ordinary store's snapshot (begun, or renewed to the newest state):
 * the one doc_text and doc_meta read.  0 or the library's code. */
int cli_db_snapshot(cli_db *db, msadb_snapshot **out);
/* A document's information, and its text and token spans (malloc'ed, NULL
 * when it has none). */
int cli_db_doc_view(cli_db *db, uint64_t id, msadb_doc_info *info, char **text, int64_t **spans);
int cli_db_wrap(const cli_db_ops *ops, void *h, const msadb_signature *sig, const char *path, cli_db **out);
/* init --shards: creates a.db with a.shards shards (all of them here, or
 * each rank its own in msadb-mpi).  CLI_OK or CLI_ERROR after a message. */
int cli_db_create_sharded(const cli_args *a, const msadb_signature *sig, const msadb_options *opt,
                          int *encrypted);

/* mpi.c (msadb-mpi) or mpi_none.c (msadb): the MPI job, if any. */
void cli_mpi_init(int *argc, char ***argv);
/* Ends MPI (without MPI_Finalize if a rank failed: a peer may be gone) and
 * returns rc, the exit status. */
int cli_mpi_finish(int rc);
/* Ends this rank's process (status 0) after MPI_Finalize: for ranks with
 * nothing to do. */
void cli_mpi_leave(void);
int cli_mpi_active(void); /* 1 in msadb-mpi */
int cli_mpi_rank(void);
int cli_mpi_open(const cli_args *a, int read_only, cli_db **out);
int cli_mpi_create(const cli_args *a, const msadb_signature *sig, const msadb_options *opt, int *encrypted);

/* stream.c: streaming ingest (both forms of ingest) */
#define CLI_COMMIT_BYTES ((size_t)8 << 20) /* default chunk: 8 MiB of encoded data */
/* Begins db's batch.  An ordinary store's commits in chunks (--commit-every,
 * else CLI_COMMIT_BYTES), calling on_commit after each commit; a sharded
 * store's is one batch, committed by cli_stream_finish (which then calls
 * on_commit), and --commit-every there is a usage error.  Catches SIGINT and
 * SIGTERM (cli_stream_stop_signal).  CLI_OK, CLI_USAGE or CLI_ERROR. */
int cli_stream_begin(const cli_args *a, cli_db *db, msadb_commit_fn on_commit, void *user);
/* The signal that asked ingest to stop, or 0. */
int cli_stream_stop_signal(void);
/* Ends a streaming ingest: commits what db's batch holds (n_held documents)
 * when rc is CLI_OK or a signal stopped it (whole documents either way),
 * ends the batch, restores the signal handlers and clears the progress
 * line.  Returns rc, or CLI_ERROR after a message when the commit failed;
 * *sig gets the signal that stopped the ingest, or 0. */
int cli_stream_finish(const cli_args *a, cli_db *db, size_t n_held, int rc, int *sig);
typedef struct cli_progress_state {
    double t0, last_ms;
    uint64_t total;   /* known up front, in units */
    const char *unit; /* "tokens", "bytes" */
} cli_progress_state;
/* Progress line (terminal only): done of total, percent, rate and ETA. */
void cli_stream_progress(const cli_args *a, cli_progress_state *p, uint64_t done, uint64_t committed);
/* The message of an interrupted ingest; returns the exit status 128 + sig. */
int cli_stream_interrupted(const cli_args *a, int sig, uint64_t committed, uint64_t already);
/* The closing line of a failed ingest: nothing written, or how to resume. */
void cli_stream_failed(const cli_args *a, uint64_t committed);

/* cmd_store.c */
int cmd_init(const cli_args *a);
int cmd_stat(const cli_args *a);
int cmd_ls(const cli_args *a);
int cmd_rm(const cli_args *a);
int cmd_space(const cli_args *a);
int cmd_verify(const cli_args *a);
int cmd_compact(const cli_args *a);
int cmd_split(const cli_args *a);
int cmd_merge(const cli_args *a);

/* cmd_ingest.c */
int cmd_ingest(const cli_args *a);

/* cmd_query.c */
int cmd_query(const cli_args *a);

/* cmd_model.c: init, ingest and query with --model (the built-in runtime) */
int cmd_model_init(const cli_args *a);
int cmd_model_ingest(const cli_args *a);
int cmd_model_query(const cli_args *a);
int cmd_search(const cli_args *a);

/* cmd_docs.c: update (the tensor form; both forms share cli_update_*),
 * expire */
int cmd_update(const cli_args *a);
int cmd_expire(const cli_args *a);
/* What an update keeps of the old document and what it changes. */
typedef struct cli_update {
    msadb_doc_info old;
    char *meta;       /* the new document's metadata: --meta, else the old one's */
    size_t meta_len;
    int64_t expires;  /* --ttl from now, else the old expiry */
} cli_update;
/* Reads document a->doc_ids[0] of st and what the new one keeps of it.
 * CLI_OK, or CLI_ERROR after a message ("no document N"). */
int cli_update_begin(const cli_args *a, msadb_store *st, cli_update *u);
/* The new document's space, title (--title, else the old), metadata and
 * expiry into doc. */
void cli_update_fill(const cli_args *a, const cli_update *u, msadb_doc *doc);
/* Begins the update's batch and names the old document for deletion in it
 * (before anything is added).  0 or the library's code. */
int cli_update_batch(msadb_store *st, const cli_update *u, msadb_batch **batch);
/* Commits the batch (all or nothing: the old document deleted, the new one
 * added) and prints "document OLD replaced by NEW"; a batch that holds no
 * new document (its content was already stored) is aborted with an error
 * message.  The batch is freed. */
int cli_update_commit(const cli_args *a, msadb_batch *batch, cli_update *u);
void cli_update_free(cli_update *u);

/* cmd_model.c: update with text through the model */
int cmd_model_update(const cli_args *a);

/* cmd_doctor.c: doctor (what is installed), show, vacuum */
int cmd_doctor(const cli_args *a);
int cmd_show(const cli_args *a);
int cmd_vacuum(const cli_args *a);

/* Whether a file given to ingest holds tensors (safetensors or .npy) rather
 * than text for a model. */
int cli_is_tensor_file(const char *path);

/* cmd_dump.c */
int cmd_dump(const cli_args *a);
int cmd_load(const cli_args *a);

#endif
