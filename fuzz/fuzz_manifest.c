/* fuzz_manifest.c -- the JSON manifest of a dump (cli/input/manifest.c),
 * what `msadb load` trusts before it writes anything.  Whatever is accepted
 * must be usable as is: a valid signature, every document in a listed
 * space with a title the library takes, every space name valid. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "input/manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dump_manifest m;
    if (dump_manifest_parse("fuzz", data, size, &m) == CLI_OK) {
        if (msadb_signature_validate(&m.sig) != 0)
            abort();
        for (size_t i = 0; i < m.n_spaces; i++)
            if (!cli_space_name_ok(m.spaces[i]))
                abort();
        for (size_t i = 0; i < m.n_docs; i++) {
            const load_doc *d = &m.docs[i];
            int known = 0;
            for (size_t k = 0; k < m.n_spaces; k++)
                known |= strcmp(m.spaces[k], d->space) == 0;
            if (!known || d->tokens < 1 || strlen(d->title) > MSADB_TITLE_MAX)
                abort();
        }
    }
    dump_manifest_free(&m);
    return 0;
}
