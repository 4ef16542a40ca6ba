/* testutil.h -- tiny helpers shared by the C tests: checks that print the
 * failing expression and exit, a temporary directory, deterministic data. */
#ifndef MSADB_TESTUTIL_H
#define MSADB_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stddef.h>

#include "msadb.h"

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

#define CHECK_RC(expr, want)                                                          \
    do {                                                                              \
        int rc_ = (expr);                                                             \
        if (rc_ != (want)) {                                                          \
            fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d\n", __FILE__,    \
                    __LINE__, #expr, rc_, msadb_strerror(rc_), (int)(want));          \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

#define CHECK_OK(expr) CHECK_RC(expr, 0)

/* Creates a fresh empty directory under $TMPDIR (or /tmp); the returned
 * string is static until the next call.  Removed at exit unless
 * MSADB_KEEP_TMP is set. */
const char *tu_tmpdir(const char *tag);
/* Creates a store at dir: 2 layers (the second a memory layer), kv_heads
 * kv heads, 2 query heads, head_dim d, blocks of `block` tokens, dtype,
 * encrypted with key when not NULL. */
msadb_store *tu_create(const char *dir, uint32_t kv_heads, uint32_t d, uint32_t block, msadb_dtype dtype,
                       const unsigned char *key);
/* Whether the file at path holds the n bytes of needle. */
int tu_file_contains(const char *path, const void *needle, size_t n);
/* Removes a directory tree. */
void tu_rmtree(const char *path);
/* Copies file `from` to `to` (created or truncated); CHECKs every step. */
void tu_copy_file(const char *from, const char *to);
/* Deterministic pseudo-random numbers (splitmix64). */
uint64_t tu_rand(uint64_t *state);
float tu_randn(uint64_t *state); /* approximately standard normal */
/* Fills n floats with N(0, sigma^2) values. */
void tu_fill_randn(uint64_t *state, float *x, size_t n, float sigma);

/* Deterministic keys and values of n floats each, from a seed. */
void tu_make_kv(uint64_t seed, size_t n, float *K, float *V);

/* A document of T tokens over f32 keys and values ([planes][T][d] each),
 * every other field zero. */
msadb_doc tu_doc_f32(size_t T, const float *K, const float *V);

/* fork() with a pipe from the child to the parent: returns the child's pid
 * (0 in the child); *fd is the write end in the child, the read end in the
 * parent (the other end closed). */
int tu_fork_pipe(int *fd);

/* Makes the (closed, unencrypted) store at dir look as a library of format
 * version 1 or 2 wrote it: without the `dockeys` database (format < 3) and
 * without the routing index (format < 2), meta "format" set to version. */
void tu_store_as_format(const char *dir, uint32_t version);

/* Appends doc to st with T tokens of f32 keys K and values V (malloc'ed;
 * freed here), checking that the append succeeds; returns the id. */
uint64_t tu_append_f32(msadb_store *st, msadb_doc *doc, size_t T, float *K, float *V);

/* Checks that two selections hold the same hits (kv head, query token,
 * block, document, token range, score), whatever their order; sorts both. */
void tu_same_hits(msadb_hit *a, size_t na, msadb_hit *b, size_t nb);

/* Writes DIR/NAME.gguf, a small llama model with seeded random weights,
 * with tools/memmodel/make_test_model.py OPTS (needs MSADB_SOURCE_ROOT, and
 * MSADB_PYTHON or /usr/bin/python3 with numpy).  Returns the path (static
 * until the next call), or NULL when the tools are unavailable. */
const char *tu_make_model(const char *dir, const char *name, const char *opts);

/* Turns an encrypted store (closed) into one as written before any MAC:
 * every value of every database but meta and blocks loses its last 16
 * bytes (its record MAC), the key check is sealed again as version 1 and
 * the meta MAC is removed. */
void tu_make_legacy_store(const char *dir, const unsigned char key[32]);

#endif
