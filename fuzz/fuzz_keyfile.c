/* fuzz_keyfile.c -- the key-file reader (msadb_key_file_read) on arbitrary
 * file contents.  A file is accepted only when it is exactly 32 raw bytes,
 * or 64 hexadecimal digits followed by at most one line ending ("\n" or
 * "\r\n"); an accepted hex file must decode to the digits' value. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "msadb.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int hexdigit(uint8_t c, unsigned *v)
{
    if (c >= '0' && c <= '9')
        *v = c - '0';
    else if ((c | 32) >= 'a' && (c | 32) <= 'f')
        *v = (unsigned)((c | 32) - 'a' + 10);
    else
        return 0;
    return 1;
}

/* The rule, written independently of the reader: 1 and the key, or 0. */
static int expected(const uint8_t *d, size_t n, unsigned char key[32])
{
    if (n == 32) {
        memcpy(key, d, 32);
        return 1;
    }
    if (!(n == 64 || (n == 65 && d[64] == '\n') || (n == 66 && d[64] == '\r' && d[65] == '\n')))
        return 0;
    for (int i = 0; i < 32; i++) {
        unsigned hi, lo;
        if (!hexdigit(d[2 * i], &hi) || !hexdigit(d[2 * i + 1], &lo))
            return 0;
        key[i] = (unsigned char)(hi << 4 | lo);
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    if (!path[0])
        snprintf(path, sizeof path, "/tmp/msadb-fuzz-keyfile-%d", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    unsigned char got[32], want[32];
    int rc = msadb_key_file_read(path, got), ok = expected(data, size, want);
    unlink(path);
    if ((rc == 0) != ok || (ok && memcmp(got, want, 32) != 0))
        abort();
    if (rc != 0 && rc != MSADB_EINVAL)
        abort();
    return 0;
}
