/* fuzz_npy.c -- the strict .npy reader (cli/input/tensorfile.c) on arbitrary
 * bytes.  A parsed array must lie inside the input and match its shape. */
#include <stdint.h>
#include <stdlib.h>

#include "input/tensorfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tf_file f;
    char err[256];
    if (tf_npy_parse(data, size, &f, err, sizeof err) != 0)
        return 0;
    const tf_tensor *t = &f.tensors[0];
    if (f.n != 1 || t->data < data || t->data + t->nbytes != data + size ||
        t->nbytes != t->nelem * tf_dtype_size(t->dtype))
        abort();
    if (tf_is_float(t->dtype)) {
        float buf[16];
        uint64_t n = t->nelem < 16 ? t->nelem : 16;
        tf_to_f32(t->dtype, t->data, 0, n, buf);
        (void)tf_first_nonfinite(t->dtype, t->data, t->nelem);
    } else if (t->nelem) {
        (void)tf_get_int(t, t->nelem - 1);
    }
    tf_file_close(&f);
    return 0;
}
