/* manifest.c -- the JSON manifest of an msadb dump, parsed and checked
 * before `load` touches a store (layout: docs/cli.md).  Uses only the
 * public API (msadb.h). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "input/manifest.h"

static int manifest_doc(const char *path, dump_manifest *c, json_t *d, size_t i)
{
    load_doc *o = &c->docs[i];
    json_t *id = json_object_get(d, "id"), *sp = json_object_get(d, "space"),
           *ti = json_object_get(d, "title"), *tk = json_object_get(d, "tokens"),
           *ht = json_object_get(d, "has_tokens"), *hs = json_object_get(d, "has_spans"),
           *cr = json_object_get(d, "created"), *tb = json_object_get(d, "text_bytes"),
           *mb = json_object_get(d, "meta_bytes");
    if (!json_is_object(d) || !json_is_integer(id) || !json_is_string(sp) || !json_is_string(ti) ||
        !json_is_integer(tk) || !json_is_boolean(ht) || !json_is_boolean(hs) ||
        !json_is_integer(cr) || !json_is_integer(tb) || !json_is_integer(mb) ||
        json_integer_value(id) < 0 || json_integer_value(tk) < 1 || json_integer_value(tb) < 0 ||
        json_integer_value(mb) < 0)
        return cli_error("%s: manifest: document entry %zu lacks id, space, title, created, "
                         "tokens (>= 1), has_tokens, has_spans, text_bytes or meta_bytes (>= 0)",
                         path, i);
    if (json_object_size(d) != 9)
        return cli_error("%s: manifest: document entry %zu has fields beyond id, space, title, "
                         "created, tokens, has_tokens, has_spans, text_bytes and meta_bytes",
                         path, i);
    o->created = json_integer_value(cr);
    o->text_bytes = (uint64_t)json_integer_value(tb);
    o->meta_bytes = (uint64_t)json_integer_value(mb);
    o->old_id = (uint64_t)json_integer_value(id);
    o->tokens = (uint64_t)json_integer_value(tk);
    o->space = json_string_value(sp);
    o->title = json_string_value(ti);
    o->has_tokens = json_is_true(ht);
    o->has_spans = json_is_true(hs);
    int known = 0;
    for (size_t k = 0; k < c->n_spaces; k++)
        known |= strcmp(c->spaces[k], o->space) == 0;
    if (!known)
        return cli_error("%s: manifest: document %zu is in space '%.70s', not in the spaces list",
                         path, i, o->space);
    if (strlen(o->title) > MSADB_TITLE_MAX)
        return cli_error("%s: manifest: document %zu: title longer than %d bytes", path, i,
                         MSADB_TITLE_MAX);
    for (size_t k = 0; k < i; k++)
        if (c->docs[k].old_id == o->old_id)
            return cli_error("%s: manifest: documents %zu and %zu have the same id %llu", path, k,
                             i, (unsigned long long)o->old_id);
    return CLI_OK;
}

int dump_manifest_parse(const char *path, const uint8_t *bytes, size_t len, dump_manifest *c)
{
    char err[512];
    memset(c, 0, sizeof *c);
    json_error_t je;
    c->json = json_loadb((const char *)bytes, len, JSON_REJECT_DUPLICATES, &je);
    if (!c->json)
        return cli_error("%s: manifest: JSON at byte %d: %s", path, je.position, je.text);
    json_t *ver = json_object_get(c->json, "format_version"), *fmt = json_object_get(c->json, "format");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), DUMP_FORMAT) != 0)
        return cli_error("%s: manifest: format is not \"%s\"", path, DUMP_FORMAT);
    if (!json_is_integer(ver) || json_integer_value(ver) != DUMP_VERSION)
        return cli_error("%s: manifest: format_version is not %d", path, DUMP_VERSION);
    if (!json_is_string(json_object_get(c->json, "msadb_version")) ||
        !json_is_boolean(json_object_get(c->json, "encrypted_source")))
        return cli_error("%s: manifest: msadb_version (a string) or encrypted_source (true or "
                         "false) is missing",
                         path);
    if (cli_signature_from_json(json_object_get(c->json, "signature"), &c->sig, err, sizeof err) != 0)
        return cli_error("%s: manifest: %s", path, err);
    json_t *sp = json_object_get(c->json, "spaces"), *docs = json_object_get(c->json, "documents");
    if (!json_is_array(sp) || !json_is_array(docs))
        return cli_error("%s: manifest: 'spaces' or 'documents' is not a list", path);
    c->n_spaces = json_array_size(sp);
    c->n_docs = json_array_size(docs);
    c->spaces = calloc(c->n_spaces + 1, sizeof(char *));
    c->docs = calloc(c->n_docs + 1, sizeof(load_doc));
    if (!c->spaces || !c->docs)
        return cli_error("out of memory");
    for (size_t i = 0; i < c->n_spaces; i++) {
        c->spaces[i] = json_string_value(json_array_get(sp, i));
        if (!c->spaces[i] || !cli_space_name_ok(c->spaces[i]))
            return cli_error("%s: manifest: space entry %zu is not a valid space name", path, i);
    }
    for (size_t i = 0; i < c->n_docs; i++)
        if (manifest_doc(path, c, json_array_get(docs, i), i) != CLI_OK)
            return CLI_ERROR;
    return CLI_OK;
}

void dump_manifest_free(dump_manifest *m)
{
    json_decref(m->json);
    free(m->spaces);
    free(m->docs);
    memset(m, 0, sizeof *m);
}
