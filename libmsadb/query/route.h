/* route.h -- the two-level search over the routing index (query/route.c).
 *
 * Level 1 scans the coarse pages (one entry per super-block of S slots) as
 * if they were summary pages of R representatives per entry, keeping the
 * best `route_candidates` super-blocks per selection group.  Level 2 scans
 * the block summaries of those super-blocks only, as sub-views of their
 * pages, with the ordinary top-k selection.  query.c drives both scans with
 * its scan threads; this file builds the views each level scans. */
#ifndef MSADB_QUERY_ROUTE_H
#define MSADB_QUERY_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* Whether every page view carries its index page. */
MSADB_HIDDEN int msadb_route_views_indexed(const msadb_page_view *views, size_t n);

/* Level 1: out[i] is views[i]'s coarse page as a view of n_coarse entries
 * with no slot page (a super-block is never masked: its blocks are, at
 * level 2).  out holds n entries. */
MSADB_HIDDEN void msadb_route_coarse_views(const msadb_page_view *views, size_t n, msadb_page_view *out);

/* Level 2: the sub-views of super-blocks cand[0, nc) (each (view << 16) |
 * super-block, sorted and deduplicated here, in place) into out (nc entries),
 * with out_space[j] = space[view of j]; returns their count.  d: head dim. */
MSADB_HIDDEN size_t msadb_route_fine_views(const msadb_page_view *views, const uint32_t *space, uint64_t *cand,
                                           size_t nc, uint32_t d, msadb_page_view *out, uint32_t *out_space);

#endif
