/* fuzz_kvsource.c -- the layer that cuts a K/V tensor file into documents
 * by doc_lengths, text_lengths, meta_lengths and token_spans
 * (cli/input/kvsource.c), for a store of 1 memory layer, 1 kv head and head
 * dim 4.  Whatever is accepted must cut into documents whose token counts
 * sum to T, whose text and meta lie inside their tensors, and whose spans,
 * rebased, lie inside the document's own text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_doc(const kv_source *s, const kv_doc *d)
{
    const msadb_doc *doc = &d->doc;
    if (doc->text) {
        const uint8_t *t = (const uint8_t *)doc->text;
        if (!s->text || t < s->text->data || t + doc->text_len > s->text->data + s->text->nbytes)
            abort();
    }
    if (doc->meta) {
        const uint8_t *m = doc->meta;
        if (!s->meta || m < s->meta->data || m + doc->meta_len > s->meta->data + s->meta->nbytes)
            abort();
    }
    if (doc->token_spans) {
        if (!doc->text)
            abort();
        for (size_t k = 0; k < doc->n_tokens; k++) {
            int64_t a = doc->token_spans[2 * k], b = doc->token_spans[2 * k + 1];
            if (a < 0 || a > b || (uint64_t)b > doc->text_len)
                abort();
        }
    }
    /* touch every element of the cut keys and values */
    size_t elems = doc->n_tokens * 4, es = doc->kv_dtype == MSADB_DTYPE_F32 ? 4 : 2;
    volatile uint8_t acc = 0;
    for (size_t k = 0; k < elems * es; k++)
        acc ^= ((const uint8_t *)doc->keys)[k] ^ ((const uint8_t *)doc->values)[k];
    (void)acc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    msadb_signature sig;
    if (msadb_signature_init(&sig, 2, 1, 1, 4) != 0)
        abort();
    kv_source s;
    if (kv_source_parse(&s, "fuzz", data, size, &sig, 1) == CLI_OK) {
        uint64_t total = 0;
        for (size_t i = 0; i < s.n_docs; i++) {
            kv_doc d;
            if (kv_source_doc(&s, i, &d) != CLI_OK)
                abort();
            total += d.doc.n_tokens;
            check_doc(&s, &d);
            kv_doc_free(&d);
        }
        if (total != s.T)
            abort();
    }
    kv_source_close(&s);
    return 0;
}
