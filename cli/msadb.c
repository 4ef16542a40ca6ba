/* msadb.c -- main of the msadb command-line program: parses the command
 * line (args.c) and runs one command.  Exit status: 0 success, 1 runtime
 * error, 2 usage error.  See docs/cli.md and msadb(1). */
#include <signal.h>
#include <stdio.h>

#include "cli.h"

typedef int (*cmd_fn)(const cli_args *a);

static const cmd_fn commands[CMD_COUNT] = {
    [CMD_INIT] = cmd_init,     [CMD_INGEST] = cmd_ingest, [CMD_QUERY] = cmd_query,
    [CMD_STAT] = cmd_stat,     [CMD_LS] = cmd_ls,         [CMD_RM] = cmd_rm,
    [CMD_SPACE] = cmd_space,   [CMD_VERIFY] = cmd_verify, [CMD_DUMP] = cmd_dump,
    [CMD_LOAD] = cmd_load,     [CMD_COMPACT] = cmd_compact, [CMD_SPLIT] = cmd_split,
    [CMD_MERGE] = cmd_merge,
    [CMD_DOCTOR] = cmd_doctor,
    [CMD_SEARCH] = cmd_search, [CMD_SHOW] = cmd_show,         [CMD_VACUUM] = cmd_vacuum,
    [CMD_UPDATE] = cmd_update, [CMD_EXPIRE] = cmd_expire,
};

static const cmd_fn model_commands[CMD_COUNT] = {
    [CMD_INIT] = cmd_model_init, [CMD_INGEST] = cmd_model_ingest, [CMD_QUERY] = cmd_model_query,
    [CMD_UPDATE] = cmd_model_update,
};

static int usage_error(const cli_args *a, const char *msg)
{
    fprintf(stderr, "msadb: %s\n", msg);
    if (a->cmd > CMD_VERSION)
        fprintf(stderr, "usage: msadb %s ... (run 'msadb help %s')\n", cli_cmd_name(a->cmd),
                cli_cmd_name(a->cmd));
    else
        fprintf(stderr, "run 'msadb help' for the list of commands\n");
    return CLI_USAGE;
}

/* Under msadb-mpi, whether every rank takes part in the command (the
 * commands that may open a sharded store, and init --shards); for the
 * others rank 0 works alone. */
static int all_ranks(const cli_args *a)
{
    switch (a->cmd) {
    case CMD_STAT: case CMD_LS: case CMD_RM: case CMD_SPACE: case CMD_VERIFY: case CMD_COMPACT:
        return 1;
    case CMD_INGEST: case CMD_QUERY: return !a->model;
    case CMD_INIT: return a->shards != 0;
    default: return 0;
    }
}

int main(int argc, char **argv)
{
    cli_args a;
    char err[512];
    cli_mpi_init(&argc, &argv);
    /* past RLIMIT_FSIZE a write then fails with EFBIG, reported as "File
     * size limit exceeded", instead of the signal killing the program */
    signal(SIGXFSZ, SIG_IGN);
    int rc = cli_parse(argc, argv, &a, err, sizeof err);
    if (cli_mpi_rank() != 0 && (rc != CLI_OK || !all_ranks(&a))) {
        cli_args_free(&a);
        cli_mpi_leave();
    }
    if (rc != CLI_OK) {
        rc = usage_error(&a, err);
    } else if (a.cmd == CMD_HELP) {
        cli_usage(stdout, a.help_cmd);
    } else if (a.cmd == CMD_VERSION) {
        printf("msadb %s (format %d)\n", msadb_version(), msadb_format_version());
    } else if (model_commands[a.cmd] &&
               (a.use_model ||
                ((a.cmd == CMD_INGEST || a.cmd == CMD_UPDATE) &&
                 (a.model || a.text || !cli_is_tensor_file(a.files[0]))))) {
        rc = model_commands[a.cmd](&a); /* the model forms (cmd_model.c) */
    } else {
        rc = commands[a.cmd](&a);
    }
    cli_args_free(&a);
    if (fflush(stdout) != 0 && rc == CLI_OK)
        rc = CLI_ERROR;
    return cli_mpi_finish(rc);
}
