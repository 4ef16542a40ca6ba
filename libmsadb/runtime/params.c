/* params.c -- the defaults of a question to the built-in runtime
 * (msadb_ask_params), built with or without the runtime itself. */
#include <string.h>

#include "msadb.h"

void msadb_ask_params_init(msadb_ask_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->top_k = 16;
    p->select = MSADB_SELECT_BLOCKS;
    p->max_tokens = 64;
    p->top_p = 1.0f;
    p->followups = 2;
}
