/* fuzz_cli_args.c -- the msadb command-line parser (cli/args.c) on
 * arbitrary argument vectors: the input is split at NUL bytes into at most
 * 64 arguments after "msadb".  The parser must return 0 or 2, never crash,
 * and always leave a NUL-terminated message on a usage error.
 *
 * args.c is compiled into this file so the target needs no extra sources
 * (it includes only msadb.h and tensorfile.h declarations). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "args.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *buf = malloc(size + 1);
    char *argv[66];
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    int argc = 0;
    argv[argc++] = (char *)"msadb";
    for (size_t i = 0; i <= size && argc < 65;) {
        argv[argc++] = buf + i;
        i += strlen(buf + i) + 1;
    }
    argv[argc] = NULL;
    cli_args a;
    char err[256];
    int rc = cli_parse(argc, argv, &a, err, sizeof err);
    if (rc != CLI_OK && (rc != CLI_USAGE || !err[0] || !memchr(err, 0, sizeof err)))
        abort();
    /* every command but help, version and doctor names a store */
    int no_db = a.cmd == CMD_HELP || a.cmd == CMD_VERSION || a.cmd == CMD_DOCTOR;
    if (rc == CLI_OK && !no_db && !a.db)
        abort();
    cli_args_free(&a);
    free(buf);
    return 0;
}
