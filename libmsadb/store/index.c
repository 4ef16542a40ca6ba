/* index.c -- storage of the routing index: one coarse page (codec/coarse.h)
 * per summary page, in the `route` database under the summary page's key,
 * written in the same transaction as the summary page it is computed from
 * (ingest, compaction), removed with it (space drop), built for a store
 * without one by msadb_upgrade(), and compared with a recomputation by
 * verify.  A store has an index when its `route` database exists.
 *
 * meta/route (16 bytes, u32 LE each): kind, S (slots per super-block), R
 * (representatives per super-block), reserved 0.  Present only in stores
 * whose signature keeps MSADB_SUMMARY_REPS: the coarse level is chosen
 * among the block representatives. */
#include <stdlib.h>
#include <string.h>

#include "store/index.h"
#include "store/store_impl.h"

/* Chosen by measurement (docs/benchmarks.md, "Routing index"). */
#define ROUTE_DEFAULT_S 16
#define ROUTE_DEFAULT_R 8

static int meta_route(MDB_txn *txn, msadb_store *st, msadb_coarse_layout *C)
{
    MDB_val k = {5, (void *)"route"}, v;
    int rc = msadb_rec_get(txn, st, st->db_meta, &k, &v);
    if (rc)
        return rc;
    if (v.mv_size != 16)
        return MSADB_ECORRUPT;
    const uint8_t *p = v.mv_data;
    C->d = st->sig.head_dim;
    C->kind = msadb_get_le32(p);
    C->S = msadb_get_le32(p + 4);
    C->R = msadb_get_le32(p + 8);
    if (!msadb_coarse_valid(C, st->page_cap) || msadb_get_le32(p + 12) != 0 ||
        !(st->sig.summary_kinds & MSADB_SUMMARY_REPS))
        return MSADB_ECORRUPT;
    return 0;
}

int msadb_route_open(msadb_store *st, MDB_txn *txn)
{
    st->has_route = 0;
    /* The database's presence, not the format number, tells: a store of
     * format 1 that gained document keys is of format 3 without an index. */
    int rc = msadb_dbi_open(st, txn, "route", 0, &st->db_route);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    rc = meta_route(txn, st, &st->route);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    st->has_route = 1;
    return 0;
}

int msadb_route_create(msadb_store *st, MDB_txn *txn)
{
    int rc = msadb_dbi_open(st, txn, "route", MDB_CREATE, &st->db_route);
    if (rc || !(st->sig.summary_kinds & MSADB_SUMMARY_REPS))
        return rc;
    if (meta_route(txn, st, &st->route) == 0) { /* keep the store's parameters */
        st->has_route = 1;
        return 0;
    }
    uint8_t b[16] = {0};
    msadb_put_le32(b, MSADB_COARSE_KCENTER_MIX);
    msadb_put_le32(b + 4, st->page_cap % ROUTE_DEFAULT_S == 0 ? ROUTE_DEFAULT_S : 1);
    msadb_put_le32(b + 8, ROUTE_DEFAULT_R);
    MDB_val k = {5, (void *)"route"}, v = {16, b};
    if ((rc = msadb_rec_put(txn, st, st->db_meta, &k, &v, 0)))
        return rc;
    if ((rc = meta_route(txn, st, &st->route)))
        return rc;
    st->has_route = 1;
    return 0;
}

int msadb_route_refresh(msadb_store *st, MDB_txn *txn)
{
    if (st->has_route)
        return 0;
    /* another process may have upgraded the store since it was opened here */
    MDB_val k = {6, (void *)"format"}, v;
    int rc = msadb_rec_get(txn, st, st->db_meta, &k, &v);
    if (rc || v.mv_size != 4)
        return rc ? rc : MSADB_ECORRUPT;
    st->format = msadb_get_le32(v.mv_data);
    return msadb_route_open(st, txn);
}

int msadb_route_put(msadb_store *st, MDB_txn *txn, uint32_t space, uint32_t plane, uint64_t pg, const uint8_t *summ,
                    uint32_t n)
{
    if (!st->has_route)
        return 0;
    uint8_t k[16];
    msadb_key_summ(k, space, plane, pg);
    MDB_val kv = {16, k}, v = {msadb_coarse_page_bytes(&st->route, n), NULL};
    int rc = msadb_rec_put(txn, st, st->db_route, &kv, &v, MDB_RESERVE);
    if (rc)
        return rc;
    msadb_summ_view fine;
    msadb_summ_view_of(&st->summ, summ, n, &fine);
    msadb_coarse_page_build(&st->route, &fine, n, v.mv_data);
    msadb_rec_seal(st, st->db_route, &kv, &v);
    return 0;
}

int msadb_route_del(msadb_store *st, MDB_txn *txn, uint32_t space, uint32_t plane, uint64_t pg)
{
    if (!st->has_route)
        return 0;
    uint8_t k[16];
    msadb_key_summ(k, space, plane, pg);
    MDB_val kv = {16, k};
    int rc = mdb_del(txn, st->db_route, &kv, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int msadb_route_check(msadb_store *st, MDB_txn *txn, uint32_t space, uint32_t plane, uint64_t pg, const uint8_t *summ,
                      uint32_t n, uint8_t **buf, size_t *cap)
{
    if (!st->has_route)
        return 0;
    uint8_t k[16];
    msadb_key_summ(k, space, plane, pg);
    MDB_val kv = {16, k}, v;
    size_t bytes = msadb_coarse_page_bytes(&st->route, n);
    /* [0, bytes): the recomputed page; after it, the stored one (unsealed) */
    if (msadb_grow(buf, cap, 2 * bytes + 64, 1, 4096))
        return MSADB_ENOMEM;
    uint8_t *stored = NULL;
    size_t scap = 0;
    int rc = msadb_rec_read(txn, st, st->db_route, &kv, &v, &stored, &scap);
    if (!rc && v.mv_size != bytes)
        rc = MSADB_ECORRUPT;
    if (!rc) {
        msadb_summ_view fine;
        msadb_summ_view_of(&st->summ, summ, n, &fine);
        msadb_coarse_page_build(&st->route, &fine, n, *buf);
        rc = memcmp(*buf, v.mv_data, bytes) ? MSADB_ECORRUPT : 0;
    }
    free(stored);
    return rc == MDB_NOTFOUND ? MSADB_ENOTFOUND : rc;
}

/* Builds every coarse page of the store from its summary pages. */
static int build_all(msadb_store *st, MDB_txn *txn)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, st->db_summ, &cur);
    if (rc)
        return rc;
    MDB_val k, v;
    uint8_t *slot_buf = NULL;
    size_t slot_cap = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if ((rc = msadb_rec_open(st, st->db_summ, &k, &v, &st->wread_buf, &st->wread_cap)))
            break;
        const uint8_t *kp = k.mv_data;
        if (k.mv_size != 16 || ((uintptr_t)v.mv_data & 15)) {
            rc = MSADB_ECORRUPT;
            break;
        }
        /* the slot page tells how many entries the summary page holds */
        uint8_t ks[12];
        msadb_key_slots(ks, msadb_get_be32(kp), msadb_get_be64(kp + 8));
        MDB_val sk = {12, ks}, sv;
        if ((rc = msadb_rec_read(txn, st, st->db_slots, &sk, &sv, &slot_buf, &slot_cap))) {
            rc = rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
            break;
        }
        uint32_t n = (uint32_t)(sv.mv_size / MSADB_SLOT_BYTES);
        if (n == 0 || v.mv_size != msadb_summ_page_bytes(&st->summ, n)) {
            rc = MSADB_ECORRUPT;
            break;
        }
        if ((rc = msadb_route_put(st, txn, msadb_get_be32(kp), msadb_get_be32(kp + 4), msadb_get_be64(kp + 8),
                                  v.mv_data, n)))
            break;
    }
    free(slot_buf);
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int upgrade_fn(msadb_store *st, MDB_txn *txn, void *ud)
{
    (void)ud;
    MDB_val k = {6, (void *)"format"}, v;
    /* an encrypted store written before record MACs gets them (record.c) */
    int rc = st->encrypted ? msadb_rec_upgrade(st, txn) : 0;
    if (!rc)
        rc = msadb_rec_get(txn, st, st->db_meta, &k, &v);
    if (rc || v.mv_size != 4)
        return rc ? rc : MSADB_ECORRUPT;
    uint32_t format = msadb_get_le32(v.mv_data);
    if (st->sig.summary_kinds & MSADB_SUMMARY_REPS) {
        /* (re)build: the index is derived from the summary pages alone */
        if ((rc = msadb_route_create(st, txn)) || (rc = mdb_drop(txn, st->db_route, 0)) ||
            (rc = build_all(st, txn)))
            return rc;
    } else if (format >= MSADB_FORMAT_DOCKEYS) {
        return 0;
    }
    /* format 3: the database of document keys (empty until a keyed document) */
    MDB_dbi keys;
    if ((rc = msadb_dbi_open(st, txn, "dockeys", MDB_CREATE, &keys)))
        return rc;
    return msadb_meta_raise_format(txn, st, MSADB_FORMAT_DOCKEYS);
}

int msadb_upgrade(msadb_store *st)
{
    if (!st)
        return MSADB_EINVAL;
    if (st->scoped)
        return MSADB_ESCOPE; /* whole-store work */
    int rc = msadb_spaces_open(st); /* it rewrites every space's pages */
    if (!rc)
        rc = msadb_write(st, upgrade_fn, NULL);
    if (rc) {
        st->has_route = 0; /* the transaction is gone, and the handle with it */
        return rc;
    }
    if (st->format < MSADB_FORMAT_DOCKEYS)
        st->format = MSADB_FORMAT_DOCKEYS;
    return msadb_dockeys_open(st);
}

static int rebuild_fn(msadb_store *st, MDB_txn *txn, void *ud)
{
    const uint32_t *sr = ud;
    uint8_t b[16] = {0};
    msadb_put_le32(b, sr[2]);
    msadb_put_le32(b + 4, sr[0]);
    msadb_put_le32(b + 8, sr[1]);
    MDB_val k = {5, (void *)"route"}, v = {16, b};
    int rc = msadb_rec_put(txn, st, st->db_meta, &k, &v, 0);
    if (rc || (rc = meta_route(txn, st, &st->route)))
        return rc;
    return upgrade_fn(st, txn, NULL);
}

int msadb_route_rebuild(msadb_store *st, uint32_t S, uint32_t R, uint32_t kind)
{
    if (!st)
        return MSADB_EINVAL;
    msadb_coarse_layout C = {st->sig.head_dim, S, R, kind};
    if (!(st->sig.summary_kinds & MSADB_SUMMARY_REPS) || !msadb_coarse_valid(&C, st->page_cap))
        return MSADB_EINVAL;
    uint32_t sr[3] = {S, R, kind};
    int rc = msadb_write(st, rebuild_fn, sr);
    if (rc)
        st->has_route = 0;
    return rc;
}
