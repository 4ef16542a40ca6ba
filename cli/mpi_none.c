/* mpi_none.c -- the msadb program runs as one process: no MPI job (the
 * msadb-mpi program links mpi.c instead). */
#include <stdlib.h>

#include "cli.h"

void cli_mpi_init(int *argc, char ***argv) { (void)argc, (void)argv; }
int cli_mpi_finish(int rc) { return rc; }
void cli_mpi_leave(void) { exit(0); }
int cli_mpi_active(void) { return 0; }
int cli_mpi_rank(void) { return 0; }

int cli_mpi_open(const cli_args *a, int read_only, cli_db **out)
{
    (void)read_only, (void)out;
    return cli_error("%s: opening a store through MPI needs msadb-mpi", a->db);
}

int cli_mpi_create(const cli_args *a, const msadb_signature *sig, const msadb_options *opt, int *encrypted)
{
    (void)sig, (void)opt, (void)encrypted;
    return cli_error("%s: creating a store through MPI needs msadb-mpi", a->db);
}
