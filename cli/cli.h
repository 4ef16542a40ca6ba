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
#include "input/tensorfile.h"
#include "input/textfile.h"

enum { CLI_OK = 0, CLI_ERROR = 1, CLI_USAGE = 2 };

/* ------------------------------------------------------------------------ */
/* args.c: parsing                                                          */
/* ------------------------------------------------------------------------ */

typedef enum cli_cmd {
    CMD_NONE, CMD_HELP, CMD_VERSION, CMD_INIT, CMD_INGEST, CMD_QUERY, CMD_STAT, CMD_LS,
    CMD_RM, CMD_SPACE, CMD_VERIFY, CMD_DUMP, CMD_LOAD, CMD_COMPACT, CMD_COUNT
} cli_cmd;

typedef enum cli_space_action { SPACE_CREATE, SPACE_DROP, SPACE_LS } cli_space_action;

/* The parsed command line.  Strings point into argv. */
typedef struct cli_args {
    cli_cmd cmd;
    cli_cmd help_cmd;          /* help: the command asked about (CMD_NONE: all) */
    const char *db;
    int json, quiet, help;
    const char *key_file, *passphrase_env;
    /* init */
    uint32_t layers, kv_heads, q_heads, head_dim, block;
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
    const char *model;         /* --model: GGUF file; NULL = the tensor forms */
    int split;                 /* ingest --split */
    uint64_t commit_tokens;    /* ingest --commit-every Nt (0: not given) */
    uint64_t commit_docs;      /* ingest --commit-every Nd (0: not given) */
    int binary_ok;             /* ingest --binary-ok */
    int no_memory;             /* query */
    uint32_t max_tokens, interleave, query_pos;
    float temperature, top_p;
    uint64_t seed;
    const char *question;      /* query: the positional QUESTION ("-": stdin) */
    /* rm */
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

/* ------------------------------------------------------------------------ */
/* common.c: opening stores and what commands share                         */
/* ------------------------------------------------------------------------ */

/* Fills opt (and key) from --key-file / --passphrase-env.  Returns 0 or
 * CLI_ERROR after a message. */
int cli_key_options(const cli_args *a, msadb_options *opt, unsigned char key[MSADB_KEY_BYTES]);
/* Opens a.db; returns 0 or CLI_ERROR after a message naming the problem. */
int cli_open(const cli_args *a, int read_only, msadb_store **out);
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
int kv_source_open_npy(kv_source *s, const char *keys_path, const char *values_path,
                       const char *tokens_path, const msadb_signature *sig, int scan);
int kv_source_doc(const kv_source *s, size_t i, kv_doc *d);
void kv_doc_free(kv_doc *d);
void kv_source_close(kv_source *s);

/* Checks that a space exists, naming the store and the fix in the message:
 * 0, or CLI_ERROR after a message. */
int cli_require_space(msadb_store *st, const char *db, const char *space);
/* A query's --summary is stored and every --space exists in the store:
 * CLI_OK, or CLI_ERROR with a message naming the first that is not. */
int cli_check_memory_args(const cli_args *a, msadb_store *st);
/* Commits a batch of n documents (the batch is freed and *batch set to
 * NULL whatever happens); *ids gets their ids (caller frees). */
int cli_commit_batch(const cli_args *a, msadb_batch **batch, size_t n, uint64_t **ids);
/* init's second half: applies --memory-layers, --block, --dtype and
 * --summary to *sig, validates it, creates a.db, prints the result (with
 * "model" in the JSON when model is not NULL).  Returns the exit status. */
int cli_init_store(const cli_args *a, msadb_signature *sig, const char *model);

/* stream.c: streaming ingest (both forms of ingest) */
#define CLI_COMMIT_BYTES ((size_t)64 << 20) /* default chunk: 64 MiB of encoded data */
/* Begins a batch that commits in chunks (--commit-every, else
 * CLI_COMMIT_BYTES), calling on_commit after each commit, and catches
 * SIGINT and SIGTERM (cli_stream_stop_signal).  CLI_OK or CLI_ERROR. */
int cli_stream_begin(const cli_args *a, msadb_store *st, msadb_commit_fn on_commit, void *user,
                     msadb_batch **out);
/* The signal that asked ingest to stop, or 0. */
int cli_stream_stop_signal(void);
/* Ends a streaming ingest: commits what the batch holds when rc is CLI_OK
 * or a signal stopped it (whole documents either way), frees the batch,
 * restores the signal handlers and clears the progress line.  Returns rc,
 * or CLI_ERROR after a message when the commit failed; *sig gets the
 * signal that stopped the ingest, or 0. */
int cli_stream_finish(const cli_args *a, msadb_batch **batch, int rc, int *sig);
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

/* cmd_ingest.c */
int cmd_ingest(const cli_args *a);

/* cmd_query.c */
int cmd_query(const cli_args *a);

/* cmd_model.c: init, ingest and query with --model (the built-in runtime) */
int cmd_model_init(const cli_args *a);
int cmd_model_ingest(const cli_args *a);
int cmd_model_query(const cli_args *a);

/* cmd_dump.c */
int cmd_dump(const cli_args *a);
int cmd_load(const cli_args *a);

#endif
