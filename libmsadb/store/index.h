/* index.h -- the routing index's storage (store/index.c): coarse pages kept
 * beside the summary pages, in the same write transactions.  Private to
 * store/. */
#ifndef MSADB_STORE_INDEX_H
#define MSADB_STORE_INDEX_H

#include <lmdb.h>

#include "codec/coarse.h"
#include "msadb.h"

/* Opens the index of a store: none when the `route` database does not exist
 * (a store written before format 2) or meta/route is absent. */
MSADB_HIDDEN int msadb_route_open(msadb_store *st, MDB_txn *txn);
/* At creation (and upgrade): the `route` database and meta/route with the
 * default parameters when the signature keeps representatives. */
MSADB_HIDDEN int msadb_route_create(msadb_store *st, MDB_txn *txn);
/* At the start of every write transaction: adopts an index another process
 * built since this one opened the store. */
MSADB_HIDDEN int msadb_route_refresh(msadb_store *st, MDB_txn *txn);
/* Writes the coarse page of summary page (space, plane, pg) of n slots
 * (summ: the summary page, 16-byte aligned); no-op without an index. */
MSADB_HIDDEN int msadb_route_put(msadb_store *st, MDB_txn *txn, uint32_t space, uint32_t plane, uint64_t pg,
                                 const uint8_t *summ, uint32_t n);
MSADB_HIDDEN int msadb_route_del(msadb_store *st, MDB_txn *txn, uint32_t space, uint32_t plane, uint64_t pg);
/* Compares the stored coarse page with a recomputation (buf: scratch grown
 * with msadb_grow): 0, MSADB_ENOTFOUND (missing) or MSADB_ECORRUPT. */
MSADB_HIDDEN int msadb_route_check(msadb_store *st, MDB_txn *txn, uint32_t space, uint32_t plane, uint64_t pg,
                                   const uint8_t *summ, uint32_t n, uint8_t **buf, size_t *cap);

#endif
