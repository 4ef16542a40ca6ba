/* fuzz_gguf.c -- the strict GGUF reader (libmsadb/runtime/gguf.c) and the llama
 * model loader (libmsadb/runtime/model.c) on arbitrary bytes.
 *
 * The input is parsed from memory; whatever parses must describe bytes
 * inside the input, so every metadata value, every array element and every
 * tensor byte is read back through the accessors, and the convertible
 * tensors are converted at both ends.  Then the file is handed to the model
 * loader; a model that loads and is small runs two tokens through the
 * forward pass and one sampling step.  Any outcome but a crash or a
 * sanitizer report is fine. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/gguf.h"
#include "runtime/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile unsigned sink;

static void walk(const msadb_gguf *g)
{
    unsigned h = 0;
    for (size_t i = 0; i < msadb_gguf_n_kv(g); i++) {
        const msadb_gguf_kv *kv = msadb_gguf_kv_at(g, i);
        if (msadb_gguf_find(g, kv->key) != kv)
            abort(); /* keys are unique: lookup finds this very entry */
        if (kv->type == MSADB_GGUF_STRING) {
            const char *s;
            size_t n;
            if (msadb_gguf_get_str(g, kv->key, &s, &n) == 0)
                for (size_t j = 0; j < n; j++)
                    h += (unsigned char)s[j];
        } else if (kv->type == MSADB_GGUF_ARRAY) {
            for (uint64_t j = 0; j < kv->n; j++) {
                const char *s;
                size_t n;
                int64_t v;
                double d;
                if (msadb_gguf_arr_str(kv, j, &s, &n) == 0) {
                    for (size_t b = 0; b < n; b++)
                        h += (unsigned char)s[b];
                } else {
                    (void)msadb_gguf_arr_int(kv, j, &v);
                    if (msadb_gguf_arr_f64(kv, j, &d) == 0)
                        h += d > 0;
                }
            }
        } else {
            int64_t v;
            float f;
            int b;
            if (msadb_gguf_get_int(g, kv->key, INT64_MIN, INT64_MAX, &v) == 0)
                h += (unsigned)v;
            if (msadb_gguf_get_f32(g, kv->key, &f) == 0)
                h += f > 0;
            if (msadb_gguf_get_bool(g, kv->key, &b) == 0)
                h += (unsigned)b;
        }
    }
    for (size_t i = 0; i < msadb_gguf_n_tensors(g); i++) {
        const msadb_gguf_tensor *t = msadb_gguf_tensor_at(g, i);
        if (msadb_gguf_find_tensor(g, t->name) != t)
            abort();
        for (uint64_t j = 0; j < t->n_bytes; j++)
            h += t->data[j];
        if (msadb_ggml_convertible(t->type)) {
            uint32_t blk = msadb_ggml_block_size(t->type);
            uint64_t n = t->n_elements < 64 ? t->n_elements : 64;
            float tmp[64];
            n -= n % blk;
            if (n && (msadb_gguf_to_f32(t, 0, n, tmp) ||
                      msadb_gguf_to_f32(t, t->n_elements - n, n, tmp)))
                abort(); /* valid ranges of a parsed tensor always convert */
        }
    }
    sink = h;
}

/* Scratch of a context is about UBATCH * (n_ff + n_embd + ...) floats; skip
 * the forward pass for models whose scratch would dwarf the input. */
static int small_enough(const msadb_model_config *c)
{
    uint64_t per_tok = (uint64_t)2 * c->n_ff + 6 * (uint64_t)c->n_embd +
                       6 * (uint64_t)c->n_heads * c->head_dim + c->n_vocab;
    return per_tok * MSADB_MODEL_UBATCH * 4 < ((uint64_t)64 << 20);
}

static void try_model(const msadb_gguf *g)
{
    msadb_model *m;
    if (msadb_model_load(g, &m))
        return;
    const msadb_model_config *c = msadb_model_get_config(m);
    msadb_model_ctx *ctx;
    if (small_enough(c) && msadb_model_ctx_new(m, 4, &ctx) == 0) {
        float *logits = malloc((size_t)c->n_vocab * sizeof(float));
        int32_t tok[2] = {0, (int32_t)(c->n_vocab - 1)}, pos[2] = {0, 1000000};
        if (logits && msadb_model_forward(ctx, tok, 2, pos, logits, 0, NULL) == 0) {
            msadb_sampler s;
            int32_t t;
            msadb_sampler_init(&s, 0.7f, 0.9f, 5, 1);
            (void)msadb_sample(&s, logits, c->n_vocab, &t);
        }
        free(logits);
        msadb_model_ctx_free(ctx);
    }
    msadb_model_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    msadb_gguf *g;
    if (msadb_gguf_open_memory(data, size, &g))
        return 0;
    walk(g);
    try_model(g);
    msadb_gguf_close(g);
    return 0;
}
