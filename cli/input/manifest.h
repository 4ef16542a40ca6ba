/* manifest.h -- the JSON manifest of an msadb dump (manifest.c): what `load`
 * reads back before it touches a store. */
#ifndef MSADB_CLI_MANIFEST_H
#define MSADB_CLI_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "msadb.h"

#define DUMP_FORMAT "msadb-dump"
#define DUMP_VERSION 1

/* One document of the manifest; strings point into the manifest's JSON. */
typedef struct load_doc {
    uint64_t old_id, tokens, text_bytes, meta_bytes;
    int64_t created;
    const char *space, *title;
    int has_tokens, has_spans;
} load_doc;

typedef struct dump_manifest {
    json_t *json;
    msadb_signature sig;
    load_doc *docs;
    size_t n_docs;
    const char **spaces;
    size_t n_spaces;
} dump_manifest;

/* Parses and checks the manifest's JSON bytes (label names the file in
 * messages).  Returns CLI_OK, or CLI_ERROR after a message; either way
 * dump_manifest_free() releases m. */
int dump_manifest_parse(const char *label, const uint8_t *json, size_t len, dump_manifest *m);
void dump_manifest_free(dump_manifest *m);

#endif
