/* bcache.c -- a 4-way set-associative cache of decoded blocks, least
 * recently used replaced within a set. */
#include "query/bcache.h"

#include <stdlib.h>
#include <string.h>

#include "store/store.h"

#define WAYS 4

int msadb_bcache_init(msadb_bcache *c, size_t bytes, uint32_t block_size, uint32_t head_dim)
{
    memset(c, 0, sizeof *c);
    c->block_floats = (size_t)block_size * head_dim;
    size_t per = 2 * c->block_floats * sizeof(float);
    c->n_sets = bytes / (per * WAYS);
    if (c->n_sets == 0)
        c->n_sets = 1;
    c->e = calloc(c->n_sets * WAYS, sizeof *c->e);
    c->data = msadb_aalloc(c->n_sets * WAYS * per);
    if (!c->e || !c->data) {
        msadb_bcache_free(c);
        return MSADB_ENOMEM;
    }
    return 0;
}

void msadb_bcache_free(msadb_bcache *c)
{
    free(c->e);
    msadb_afree(c->data);
    memset(c, 0, sizeof *c);
}

static size_t set_of(const msadb_bcache *c, uint64_t block_id, uint32_t plane)
{
    uint64_t h = (block_id * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)plane * 0xc2b2ae3d27d4eb4full);
    h ^= h >> 29;
    return (size_t)(h % c->n_sets);
}

int msadb_bcache_get(msadb_bcache *c, msadb_snapshot *snap, uint32_t space_id, uint64_t block_id, uint32_t plane,
                     const float **K, const float **V, uint32_t *n_tok)
{
    size_t base = set_of(c, block_id, plane) * WAYS, victim = base;
    c->clock++;
    for (size_t i = base; i < base + WAYS; i++) {
        msadb_bcache_entry *e = &c->e[i];
        if (e->n_tok && e->block_id == block_id && e->plane == plane) {
            e->used = c->clock;
            c->hits++;
            *K = c->data + i * 2 * c->block_floats;
            *V = *K + c->block_floats;
            *n_tok = e->n_tok;
            return 0;
        }
        if (c->e[i].used < c->e[victim].used)
            victim = i;
    }
    c->misses++;
    msadb_bcache_entry *e = &c->e[victim];
    float *k = c->data + victim * 2 * c->block_floats, *v = k + c->block_floats;
    uint32_t n = 0;
    e->n_tok = 0; /* invalid until decoded */
    int rc = msadb_snap_block(snap, space_id, block_id, plane, k, v, &n);
    if (rc)
        return rc;
    e->block_id = block_id;
    e->plane = plane;
    e->n_tok = n;
    e->used = c->clock;
    *K = k;
    *V = v;
    *n_tok = n;
    return 0;
}
