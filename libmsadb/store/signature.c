/* signature.c -- model signatures, dtype names, options and key files. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "store/store_impl.h"

/* ------------------------------------------------------------------------ */
/* Signatures                                                               */
/* ------------------------------------------------------------------------ */

const char *msadb_dtype_name(int dtype)
{
    static const char *names[] = {"f32", "f16", "bf16", "int8", "q4"};
    return dtype >= 0 && dtype <= MSADB_DTYPE_Q4 ? names[dtype] : NULL;
}

int msadb_dtype_parse(const char *name)
{
    if (!name)
        return MSADB_EINVAL;
    for (int i = 0; i <= MSADB_DTYPE_Q4; i++)
        if (strcmp(name, msadb_dtype_name(i)) == 0)
            return i;
    return MSADB_EINVAL;
}

int msadb_signature_init(msadb_signature *sig, uint32_t n_layers, uint32_t n_kv_heads,
                         uint32_t n_q_heads, uint32_t head_dim)
{
    if (!sig)
        return MSADB_EINVAL;
    memset(sig, 0, sizeof *sig);
    sig->n_layers = n_layers;
    sig->n_kv_heads = n_kv_heads;
    sig->n_q_heads = n_q_heads;
    sig->head_dim = head_dim;
    uint32_t first = n_layers / 2;
    sig->n_memory_layers = n_layers - first;
    for (uint32_t l = first; l < n_layers && l < MSADB_MAX_LAYERS; l++)
        sig->memory_layers[l - first] = (uint16_t)l;
    sig->block_size = 64;
    sig->dtype = MSADB_DTYPE_F16;
    sig->summary_kinds = MSADB_SUMMARY_MEAN | MSADB_SUMMARY_REPS;
    sig->position_scheme = MSADB_POSITIONS_DOCUMENT;
    return msadb_signature_validate(sig);
}

int msadb_signature_validate(const msadb_signature *s)
{
    if (!s)
        return MSADB_EINVAL;
    if (s->n_layers < 1 || s->n_layers > MSADB_MAX_LAYERS || s->n_kv_heads < 1 ||
        s->n_kv_heads > MSADB_MAX_HEADS || s->n_q_heads < s->n_kv_heads ||
        s->n_q_heads > MSADB_MAX_HEADS || s->n_q_heads % s->n_kv_heads != 0 || s->head_dim < 1 ||
        s->head_dim > MSADB_MAX_HEAD_DIM)
        return MSADB_EINVAL;
    if (s->n_memory_layers < 1 || s->n_memory_layers > s->n_layers)
        return MSADB_EINVAL;
    for (uint32_t i = 0; i < s->n_memory_layers; i++) {
        if (s->memory_layers[i] >= s->n_layers)
            return MSADB_EINVAL;
        if (i > 0 && s->memory_layers[i] <= s->memory_layers[i - 1])
            return MSADB_EINVAL;
    }
    for (uint32_t i = s->n_memory_layers; i < MSADB_MAX_LAYERS; i++)
        if (s->memory_layers[i] != 0)
            return MSADB_EINVAL; /* unused entries are zero so signatures compare bytewise */
    if (s->block_size < 1 || s->block_size > MSADB_MAX_BLOCK)
        return MSADB_EINVAL;
    if (s->dtype > MSADB_DTYPE_Q4)
        return MSADB_EINVAL;
    if (s->summary_kinds == 0 || (s->summary_kinds & ~MSADB_SUMMARY_ALL))
        return MSADB_EINVAL;
    if (s->position_scheme != MSADB_POSITIONS_DOCUMENT)
        return MSADB_EINVAL;
    return 0;
}

uint32_t msadb_signature_planes(const msadb_signature *sig)
{
    return sig ? sig->n_memory_layers * sig->n_kv_heads : 0;
}

int msadb_signature_memory_index(const msadb_signature *sig, uint32_t layer)
{
    if (!sig)
        return MSADB_EINVAL;
    for (uint32_t i = 0; i < sig->n_memory_layers && i < MSADB_MAX_LAYERS; i++)
        if (sig->memory_layers[i] == layer)
            return (int)i;
    return MSADB_ENOTFOUND;
}

/* Serialized signature: 9 LE u32 fields then n_memory_layers LE u16. */
size_t msadb_sig_encode(const msadb_signature *s, uint8_t *out)
{
    uint32_t f[9] = {s->n_layers,   s->n_kv_heads, s->n_q_heads,     s->head_dim,      s->n_memory_layers,
                     s->block_size, s->dtype,      s->summary_kinds, s->position_scheme};
    for (int i = 0; i < 9; i++)
        msadb_put_le32(out + 4 * i, f[i]);
    for (uint32_t i = 0; i < s->n_memory_layers; i++)
        msadb_put_le16(out + 36 + 2 * i, s->memory_layers[i]);
    return 36 + 2 * (size_t)s->n_memory_layers;
}

int msadb_sig_decode(const uint8_t *p, size_t len, msadb_signature *s)
{
    if (len < 36)
        return MSADB_ECORRUPT;
    memset(s, 0, sizeof *s);
    uint32_t f[9];
    for (int i = 0; i < 9; i++)
        f[i] = msadb_get_le32(p + 4 * i);
    s->n_layers = f[0];
    s->n_kv_heads = f[1];
    s->n_q_heads = f[2];
    s->head_dim = f[3];
    s->n_memory_layers = f[4];
    s->block_size = f[5];
    s->dtype = f[6];
    s->summary_kinds = f[7];
    s->position_scheme = f[8];
    if (s->n_memory_layers > MSADB_MAX_LAYERS || len != 36 + 2 * (size_t)s->n_memory_layers)
        return MSADB_ECORRUPT;
    for (uint32_t i = 0; i < s->n_memory_layers; i++)
        s->memory_layers[i] = msadb_get_le16(p + 36 + 2 * i);
    return msadb_signature_validate(s) == 0 ? 0 : MSADB_ECORRUPT;
}

int msadb_sig_equal(const msadb_signature *a, const msadb_signature *b)
{
    uint8_t ea[36 + 2 * MSADB_MAX_LAYERS], eb[36 + 2 * MSADB_MAX_LAYERS];
    size_t na = msadb_sig_encode(a, ea), nb = msadb_sig_encode(b, eb);
    return na == nb && memcmp(ea, eb, na) == 0;
}

/* ------------------------------------------------------------------------ */
/* Options, keys                                                            */
/* ------------------------------------------------------------------------ */


void msadb_options_init(msadb_options *opt)
{
    if (!opt)
        return;
    memset(opt, 0, sizeof *opt);
    opt->zstd_level = 1;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int msadb_key_file_read(const char *path, unsigned char key[MSADB_KEY_BYTES])
{
    if (!path || !key)
        return MSADB_EINVAL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno ? errno : MSADB_EIO;
    /* one byte more than the longest valid file, so trailing bytes show */
    uint8_t buf[67];
    size_t n = fread(buf, 1, sizeof buf, f);
    int err = ferror(f);
    fclose(f);
    if (err)
        return MSADB_EIO;
    if (n == MSADB_KEY_BYTES) {
        memcpy(key, buf, MSADB_KEY_BYTES);
        sodium_memzero(buf, sizeof buf);
        return 0;
    }
    /* 64 hex digits, then at most one line ending */
    if (n == 66 && buf[64] == '\r' && buf[65] == '\n')
        n = 64;
    else if (n == 65 && buf[64] == '\n')
        n = 64;
    int rc = n == 64 ? 0 : MSADB_EINVAL;
    for (int i = 0; rc == 0 && i < MSADB_KEY_BYTES; i++) {
        int hi = hexval(buf[2 * i]), lo = hexval(buf[2 * i + 1]);
        if (hi < 0 || lo < 0)
            rc = MSADB_EINVAL;
        else
            key[i] = (unsigned char)(hi << 4 | lo);
    }
    sodium_memzero(buf, sizeof buf);
    return rc;
}
