/* route.c -- building the views of the routing index's two levels (see
 * route.h). */
#include <stdlib.h>
#include <string.h>

#include "query/route.h"

int msadb_route_views_indexed(const msadb_page_view *views, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (views[i].n_coarse == 0)
            return 0;
    return 1;
}

void msadb_route_coarse_views(const msadb_page_view *views, size_t n, msadb_page_view *out)
{
    for (size_t i = 0; i < n; i++) {
        out[i] = views[i];
        out[i].n = views[i].n_coarse;
        out[i].slots = NULL;
        out[i].summ = views[i].coarse;
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

size_t msadb_route_fine_views(const msadb_page_view *views, const uint32_t *space, uint64_t *cand, size_t nc,
                              uint32_t d, msadb_page_view *out, uint32_t *out_space)
{
    /* storage order: scan order is then independent of the groups' ranks */
    qsort(cand, nc, sizeof *cand, cmp_u64);
    size_t m = 0;
    for (size_t i = 0; i < nc; i++) {
        if (i > 0 && cand[i] == cand[i - 1])
            continue;
        size_t vi = (size_t)(cand[i] >> 16);
        uint32_t e = (uint32_t)(cand[i] & 0xffffu);
        const msadb_page_view *v = &views[vi];
        uint32_t first = e * v->coarse_S;
        msadb_page_view *o = &out[m];
        *o = *v;
        o->n = v->n - first < v->coarse_S ? v->n - first : v->coarse_S;
        o->slots = v->slots + (size_t)first * MSADB_SLOT_BYTES;
        msadb_summ_view_from(&v->summ, d, first, &o->summ);
        o->n_coarse = 0;
        out_space[m++] = space[vi];
    }
    return m;
}
