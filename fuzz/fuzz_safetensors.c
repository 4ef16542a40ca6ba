/* fuzz_safetensors.c -- the strict safetensors reader (cli/input/tensorfile.c) on
 * arbitrary bytes.  Whatever parses must describe bytes inside the input;
 * every float tensor is converted and checked for non-finite values, and the
 * file is written back with tf_write_header() and must parse again to the
 * same tensors. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "input/tensorfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void touch(const tf_tensor *t)
{
    if (tf_is_float(t->dtype)) {
        float buf[64];
        uint64_t n = t->nelem < 64 ? t->nelem : 64;
        tf_to_f32(t->dtype, t->data, t->nelem - n, n, buf);
        (void)tf_first_nonfinite(t->dtype, t->data, t->nelem);
    } else if (t->dtype == TF_I64 || t->dtype == TF_I32 || t->dtype == TF_U8) {
        if (t->nelem)
            (void)tf_get_int(t, t->nelem - 1);
    }
}

static void roundtrip(const tf_file *f)
{
    tf_spec *specs = calloc(f->n ? f->n : 1, sizeof *specs);
    if (!specs)
        return;
    for (size_t i = 0; i < f->n; i++) {
        specs[i].name = f->tensors[i].name;
        specs[i].dtype = f->tensors[i].dtype;
        specs[i].ndim = f->tensors[i].ndim;
        memcpy(specs[i].shape, f->tensors[i].shape, sizeof specs[i].shape);
    }
    char *mem = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&mem, &len);
    char err[256];
    if (!fp) {
        free(specs);
        return;
    }
    int rc = tf_write_header(fp, specs, f->n, (const char *const *)f->meta_keys,
                             (const char *const *)f->meta_values, f->n_meta, NULL, err, sizeof err);
    for (size_t i = 0; rc == 0 && i < f->n; i++)
        fwrite(f->tensors[i].data, 1, f->tensors[i].nbytes, fp);
    fclose(fp);
    if (rc != 0)
        abort(); /* a parsed file must be writable */
    tf_file g;
    if (tf_safetensors_parse((const uint8_t *)mem, len, &g, err, sizeof err) != 0) {
        fprintf(stderr, "re-parse failed: %s\n", err);
        abort();
    }
    if (g.n != f->n || g.n_meta != f->n_meta)
        abort();
    for (size_t i = 0; i < f->n; i++) {
        const tf_tensor *a = &f->tensors[i], *b = tf_find(&g, a->name);
        if (!b || b->dtype != a->dtype || b->ndim != a->ndim || b->nbytes != a->nbytes ||
            memcmp(a->data, b->data, a->nbytes) != 0)
            abort();
    }
    tf_file_close(&g);
    free(mem);
    free(specs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tf_file f;
    char err[256];
    if (tf_safetensors_parse(data, size, &f, err, sizeof err) != 0)
        return 0;
    for (size_t i = 0; i < f.n; i++) {
        const tf_tensor *t = &f.tensors[i];
        if (t->data < data || t->data + t->nbytes > data + size)
            abort();
        touch(t);
    }
    roundtrip(&f);
    tf_file_close(&f);
    return 0;
}
