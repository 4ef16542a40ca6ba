/* shard_fixture.h -- the needle workload of tools/bench/workload.h as documents of
 * a small two-kv-head store, for the tests of sharded stores (test_shard.c,
 * test_mpi.c): the same documents go into one store and into a sharded one,
 * and the same queries read both. */
#ifndef MSADB_SHARD_FIXTURE_H
#define MSADB_SHARD_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "msadb.h"
#include "msadb_shard.h"

enum { SFX_NKV = 2, SFX_G = 4, SFX_NQH = SFX_NKV * SFX_G, SFX_D = 64, SFX_BLOCK = 32, SFX_LAYER = 1 };

typedef struct sfx_query {
    uint32_t needle_len; /* 0: no needle */
    size_t doc;          /* document index of the needle */
    uint32_t tok;        /* its first token */
} sfx_query;

/* Builds the workload (n_tokens over documents of ~600 tokens, 4 needle
 * queries of each length 1, 4, 16 and 2 plain ones).  0 or -1. */
int sfx_init(uint64_t n_tokens, uint64_t seed);
void sfx_free(void);
size_t sfx_n_docs(void);
size_t sfx_n_queries(void);
const sfx_query *sfx_query_info(size_t qi);
/* q: [SFX_NQH][SFX_D], the query of kv head 0's group and its mirror for
 * kv head 1 (channels reversed, as the keys of kv head 1). */
void sfx_query_vec(size_t qi, float *q);
/* The signature: 2 layers, memory layer 1, 2 kv heads, 8 q heads, d 64,
 * block 32, f16. */
void sfx_signature(msadb_signature *sig);
/* Document di with its needles planted: K/V into buffers owned by the
 * fixture (valid until the next call). */
void sfx_doc(size_t di, msadb_doc *doc);
/* Appends documents [first, first+n) in batches of 8; ids[di] get their ids. */
void sfx_fill_store(msadb_store *st, size_t first, size_t n, uint64_t *ids);
void sfx_fill_shards(msadb_shards *sh, size_t first, size_t n, uint64_t *ids);
/* Whether the hits name the needle's block in kv head kh.  ids maps
 * document indexes to the store's ids. */
int sfx_hits_needle(const msadb_hit *hits, size_t n, size_t qi, const uint64_t *ids, uint32_t kh);
/* Largest relative error (row norm) of a against b over n rows of d, and
 * largest absolute LSE difference. */
double sfx_rel_err(const float *a, const float *b, size_t rows, size_t d);
double sfx_lse_err(const float *a, const float *b, size_t rows);

#endif
