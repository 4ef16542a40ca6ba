/* delete.c -- removing documents and spaces, and compacting summary pages.
 *
 * Deleting a document removes its blocks and records at once (LMDB puts the
 * freed pages on its free list for reuse) and marks its slots deleted, so
 * queries skip them.  Compaction later rewrites the pages of a space without
 * the deleted slots.  Readers that began earlier keep their snapshot. */
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/index.h"
#include "store/store_impl.h"

/* Deletes every key of `dbi` in [lo, hi) (hi NULL = every key with prefix
 * lo[0..prefix)). */
static int del_range(MDB_txn *txn, MDB_dbi dbi, const uint8_t *lo, size_t lo_len, const uint8_t *hi,
                     size_t hi_len, size_t prefix)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc)
        return rc;
    for (;;) {
        /* Seek again after each delete: the next key >= lo is the next one. */
        MDB_val k = {lo_len, (void *)lo}, v;
        if ((rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE))) /* keys only */
            break;
        if (hi) {
            size_t m = k.mv_size < hi_len ? k.mv_size : hi_len;
            int c = memcmp(k.mv_data, hi, m);
            if (c > 0 || (c == 0 && k.mv_size >= hi_len))
                break;
        } else if (k.mv_size < prefix || memcmp(k.mv_data, lo, prefix) != 0) {
            break;
        }
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    mdb_cursor_close(cur);
    return rc;
}

/* Removes a document's blocks, data, key and record (not its slots). */
static int drop_doc(msadb_store *st, MDB_txn *txn, uint64_t id, const msadb_docrec *r)
{
    uint8_t lo[8], hi[8], k[9];
    int rc = 0;
    if (r->flags & DOC_F_KEY) {
        uint8_t key[MSADB_DOCKEY_MAX];
        size_t len = 0;
        if ((rc = msadb_dockey_of(txn, st, id, key, &len)))
            return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
        MDB_val kv = {len, key};
        if (!st->has_dockeys)
            return MSADB_ECORRUPT;
        rc = mdb_del(txn, st->db_dockeys, &kv, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0; /* verify reports a missing entry; deleting still works */
        if (rc)
            return rc;
    }
    msadb_key_block(lo, r->first_block);
    msadb_key_block(hi, r->first_block + r->n_blocks);
    rc = del_range(txn, st->db_blocks, lo, 8, hi, 8, 0);
    for (uint8_t kind = DD_TITLE; !rc && kind <= DD_KEY; kind++) {
        msadb_key_docdata(k, id, kind);
        MDB_val kv = {9, k};
        rc = mdb_del(txn, st->db_docdata, &kv, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    if (!rc) {
        msadb_key_doc(k, id);
        MDB_val kv = {8, k};
        rc = mdb_del(txn, st->db_docs, &kv, NULL);
    }
    return rc;
}

/* Sets the deleted flag on slots [first, first + n) of a space. */
static int mark_slots(msadb_store *st, MDB_txn *txn, uint32_t space, uint64_t first, uint64_t n)
{
    uint8_t *page = malloc((size_t)st->page_cap * MSADB_SLOT_BYTES);
    if (!page)
        return MSADB_ENOMEM;
    int rc = 0;
    for (uint64_t s = first; s < first + n;) {
        uint64_t pg = s / st->page_cap;
        uint8_t k[12];
        msadb_key_slots(k, space, pg);
        MDB_val kv = {12, k}, v;
        if ((rc = msadb_rec_read(txn, st, st->db_slots, &kv, &v, &st->wread_buf, &st->wread_cap))) {
            rc = rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
            break;
        }
        if (v.mv_size % MSADB_SLOT_BYTES || v.mv_size > (size_t)st->page_cap * MSADB_SLOT_BYTES) {
            rc = MSADB_ECORRUPT;
            break;
        }
        uint64_t cnt = v.mv_size / MSADB_SLOT_BYTES, base = pg * st->page_cap;
        memcpy(page, v.mv_data, v.mv_size);
        for (; s < first + n && s < base + cnt; s++) {
            uint8_t *e = page + (s - base) * MSADB_SLOT_BYTES;
            msadb_put_le16(e + 22, (uint16_t)(msadb_get_le16(e + 22) | MSADB_SLOT_DELETED));
        }
        if (s < first + n && s == base + cnt && cnt < st->page_cap) {
            rc = MSADB_ECORRUPT; /* slots beyond the last page */
            break;
        }
        v.mv_data = page;
        if ((rc = msadb_rec_put(txn, st, st->db_slots, &kv, &v, 0)))
            break;
    }
    free(page);
    return rc;
}

int msadb_delete_txn(msadb_store *st, MDB_txn *txn, const uint64_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        msadb_docrec r;
        int rc = msadb_doc_lookup(txn, st, ids[i], &r);
        char name[MSADB_NAME_MAX + 1];
        msadb_spacerec sr;
        if (rc || (rc = msadb_space_name_txn(txn, st, r.space_id, name)) ||
            (rc = msadb_space_get_txn(txn, st, name, &sr)))
            return rc;
        if ((rc = drop_doc(st, txn, ids[i], &r)) || (rc = mark_slots(st, txn, r.space_id, r.first_slot, r.n_blocks)))
            return rc;
        sr.n_docs--;
        sr.n_tokens -= r.n_tokens;
        if ((rc = msadb_space_put_txn(txn, st, name, &sr)))
            return rc;
    }
    return 0;
}

typedef struct expired {
    int64_t now;
    uint64_t *ids;
    size_t n, cap;
} expired;

static int collect_expired(uint64_t id, const msadb_docrec *r, void *ud)
{
    expired *e = ud;
    if (msadb_docrec_live(r, e->now))
        return 0;
    if (msadb_grow(&e->ids, &e->cap, e->n + 1, sizeof *e->ids, 64))
        return MSADB_ENOMEM;
    e->ids[e->n++] = id;
    return 0;
}

int msadb_expire_txn(msadb_store *st, MDB_txn *txn, int64_t now, uint64_t *n)
{
    if (n)
        *n = 0;
    uint32_t format;
    int rc = msadb_meta_format(txn, st, &format);
    if (rc || format < MSADB_FORMAT_EXPIRY)
        return rc;
    /* collect first: the deletes rewrite the database the walk reads */
    expired e = {now, NULL, 0, 0};
    rc = msadb_docs_each(txn, st, collect_expired, &e);
    if (!rc)
        rc = msadb_delete_txn(st, txn, e.ids, e.n);
    free(e.ids);
    if (!rc && n)
        *n = e.n;
    return rc;
}

struct delete_args {
    const uint64_t *ids;
    size_t n;
};

/* Expired documents go first: an expired id is no longer there to delete. */
static int delete_fn(msadb_store *st, MDB_txn *txn, void *ud)
{
    struct delete_args *a = ud;
    int rc = msadb_expire_txn(st, txn, msadb_time_now(), NULL);
    for (size_t i = 0; !rc && st->scoped && i < a->n; i++) { /* every id in scope, or none deleted */
        msadb_docrec r;
        if (!(rc = msadb_doc_lookup(txn, st, a->ids[i], &r)))
            rc = msadb_scope_id(st, r.space_id);
    }
    return rc ? rc : msadb_delete_txn(st, txn, a->ids, a->n);
}

static int expire_fn(msadb_store *st, MDB_txn *txn, void *ud)
{
    return msadb_expire_txn(st, txn, msadb_time_now(), ud);
}

int msadb_expire(msadb_store *st, uint64_t *n_purged)
{
    if (n_purged)
        *n_purged = 0;
    if (!st)
        return MSADB_EINVAL;
    uint64_t n = 0;
    int rc = msadb_write(st, expire_fn, &n);
    if (!rc && n_purged)
        *n_purged = n;
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int msadb_doc_delete(msadb_store *st, const uint64_t *ids, size_t n)
{
    if (!st || (!ids && n))
        return MSADB_EINVAL;
    if (n == 0)
        return 0;
    uint64_t *sorted = malloc(n * sizeof *sorted);
    if (!sorted)
        return MSADB_ENOMEM;
    memcpy(sorted, ids, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_u64);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) /* a repeated id is deleted once */
        if (m == 0 || sorted[m - 1] != sorted[i])
            sorted[m++] = sorted[i];
    struct delete_args a = {sorted, m};
    int rc = msadb_write(st, delete_fn, &a);
    free(sorted);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Spaces                                                                   */
/* ------------------------------------------------------------------------ */

static int space_drop_fn(msadb_store *st, MDB_txn *txn, void *ud)
{
    const char *name = ud;
    msadb_spacerec sr;
    int rc = msadb_space_get_txn(txn, st, name, &sr);
    if (rc || (rc = msadb_scope_id(st, sr.id)) || (rc = msadb_space_access(st, &sr)))
        return rc;
    /* The slot pages name every document of the space (deleted ones too:
     * their records are gone, so a failed lookup is skipped). */
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, st->db_slots, &cur)))
        return rc;
    uint64_t *docs = NULL;
    size_t n_docs = 0, cap = 0;
    uint8_t k0[12];
    msadb_key_slots(k0, sr.id, 0);
    MDB_val k = {12, k0}, v;
    uint64_t last = 0;
    uint8_t *pbuf = NULL;
    size_t pcap = 0;
    for (rc = msadb_rec_cursor_get(st, cur, &k, &v, MDB_SET_RANGE, &pbuf, &pcap); rc == 0;
         rc = msadb_rec_cursor_get(st, cur, &k, &v, MDB_NEXT, &pbuf, &pcap)) {
        if (k.mv_size != 12 || msadb_get_be32(k.mv_data) != sr.id)
            break;
        for (size_t i = 0; i + MSADB_SLOT_BYTES <= v.mv_size; i += MSADB_SLOT_BYTES) {
            msadb_slot s;
            msadb_slot_at((const uint8_t *)v.mv_data + i, 0, &s);
            if ((s.flags & MSADB_SLOT_DELETED) || s.doc_id == last)
                continue;
            last = s.doc_id;
            if (msadb_grow(&docs, &cap, n_docs + 1, sizeof *docs, 64)) {
                rc = MSADB_ENOMEM;
                break;
            }
            docs[n_docs++] = s.doc_id;
        }
        if (rc)
            break;
    }
    free(pbuf);
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        rc = 0;
    for (size_t i = 0; !rc && i < n_docs; i++) {
        msadb_docrec r;
        rc = msadb_doc_lookup(txn, st, docs[i], &r);
        if (rc == MSADB_ENOTFOUND) {
            rc = 0;
            continue;
        }
        if (!rc)
            rc = drop_doc(st, txn, docs[i], &r);
    }
    free(docs);
    uint8_t p4[4];
    msadb_put_be32(p4, sr.id);
    if (!rc)
        rc = del_range(txn, st->db_slots, p4, 4, NULL, 0, 4);
    if (!rc)
        rc = del_range(txn, st->db_summ, p4, 4, NULL, 0, 4);
    if (!rc && st->has_route)
        rc = del_range(txn, st->db_route, p4, 4, NULL, 0, 4);
    if (!rc) {
        uint8_t h[32];
        MDB_val kn = msadb_space_dbkey(st, name, h), ki = {4, p4};
        if (!(rc = mdb_del(txn, st->db_spaces, &kn, NULL)))
            rc = mdb_del(txn, st->db_spaceids, &ki, NULL);
    }
    return rc;
}

int msadb_space_drop(msadb_store *st, const char *name)
{
    if (!st || !name)
        return MSADB_EINVAL;
    if (msadb_scope_name(st, name))
        return MSADB_ESCOPE;
    return msadb_write(st, space_drop_fn, (void *)name);
}

/* ------------------------------------------------------------------------ */
/* Compaction                                                               */
/* ------------------------------------------------------------------------ */

typedef struct {
    msadb_store *st;
    MDB_txn *txn;
    MDB_dbi dbi;
    uint32_t space, plane; /* plane UINT32_MAX: slot pages */
} page_stream;

static void stream_key(const page_stream *ps, uint64_t pg, uint8_t *k, size_t *len)
{
    if (ps->plane == UINT32_MAX) {
        msadb_key_slots(k, ps->space, pg);
        *len = 12;
    } else {
        msadb_key_summ(k, ps->space, ps->plane, pg);
        *len = 16;
    }
}

/* Writes output page pg of a stream (n entries); a summary page takes its
 * coarse page with it (store/index.c). */
static int stream_put(const page_stream *ps, const msadb_summ_layout *L, uint64_t pg, const uint8_t *page, uint32_t n)
{
    uint8_t k[16];
    size_t klen;
    stream_key(ps, pg, k, &klen);
    MDB_val ok = {klen, k}, ov = {msadb_summ_page_bytes(L, n), (void *)page};
    int rc = msadb_rec_put(ps->txn, ps->st, ps->dbi, &ok, &ov, 0);
    if (!rc && ps->plane != UINT32_MAX)
        rc = msadb_route_put(ps->st, ps->txn, ps->space, ps->plane, pg, page, n);
    return rc;
}

/* Rewrites the pages of one stream keeping only slots whose bit is set in
 * `live`.  Output page q never passes input page p, and each input page is
 * copied before any write, so the rewrite can go in place. */
static int compact_stream(const page_stream *ps, const msadb_summ_layout *L, const uint8_t *live, uint64_t n_slots,
                          uint64_t *n_out)
{
    const uint32_t cap = ps->st->page_cap;
    const size_t e = L->entry, most = msadb_summ_page_bytes(L, cap);
    uint8_t *in = malloc(most), *acc = malloc((size_t)cap * e), *page = malloc(most);
    int rc = (!in || !acc || !page) ? MSADB_ENOMEM : 0;
    uint64_t out_pg = 0, n_pages = (n_slots + cap - 1) / cap, total = 0;
    uint32_t n_acc = 0;
    uint8_t k[16];
    size_t klen;
    for (uint64_t pg = 0; !rc && pg < n_pages; pg++) {
        stream_key(ps, pg, k, &klen);
        MDB_val kv = {klen, k}, v;
        if ((rc = msadb_rec_read(ps->txn, ps->st, ps->dbi, &kv, &v, &ps->st->wread_buf, &ps->st->wread_cap))) {
            rc = rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
            break;
        }
        uint64_t cnt = n_slots - pg * cap < cap ? n_slots - pg * cap : cap;
        if (v.mv_size != msadb_summ_page_bytes(L, cnt)) {
            rc = MSADB_ECORRUPT;
            break;
        }
        memcpy(in, v.mv_data, v.mv_size);
        for (uint32_t i = 0; i < cnt && !rc; i++) {
            uint64_t s = pg * cap + i;
            if (!(live[s >> 3] & (1u << (s & 7))))
                continue;
            msadb_summ_entry_get(L, in, cnt, i, acc + (size_t)n_acc * e);
            total++;
            if (++n_acc == cap) {
                msadb_summ_page_build(L, acc, n_acc, page);
                rc = stream_put(ps, L, out_pg++, page, n_acc);
                n_acc = 0;
            }
        }
    }
    if (!rc && n_acc) {
        msadb_summ_page_build(L, acc, n_acc, page);
        rc = stream_put(ps, L, out_pg++, page, n_acc);
    }
    for (uint64_t pg = out_pg; !rc && pg < n_pages; pg++) {
        stream_key(ps, pg, k, &klen);
        MDB_val kv = {klen, k};
        rc = mdb_del(ps->txn, ps->dbi, &kv, NULL);
        if (!rc && ps->plane != UINT32_MAX)
            rc = msadb_route_del(ps->st, ps->txn, ps->space, ps->plane, pg);
    }
    if (n_out)
        *n_out = total;
    free(in);
    free(acc);
    free(page);
    return rc;
}

/* Calls fn(slot number, entry, ud) for every slot of a space, in slot
 * order, stopping at the first non-zero return. */
static int each_slot(msadb_store *st, MDB_txn *txn, uint32_t space, uint64_t n_slots,
                     int (*fn)(uint64_t, const msadb_slot *, void *), void *ud)
{
    /* Each page is copied before fn runs: fn may write (renumbering), and a
     * write ends the life of values LMDB returned earlier. */
    uint8_t *page = malloc((size_t)st->page_cap * MSADB_SLOT_BYTES);
    int rc = page ? 0 : MSADB_ENOMEM;
    for (uint64_t pg = 0; !rc && pg * st->page_cap < n_slots; pg++) {
        uint8_t k[12];
        msadb_key_slots(k, space, pg);
        MDB_val kv = {12, k}, v;
        if ((rc = msadb_rec_read(txn, st, st->db_slots, &kv, &v, &st->wread_buf, &st->wread_cap))) {
            rc = rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
            break;
        }
        uint32_t n = (uint32_t)(v.mv_size / MSADB_SLOT_BYTES);
        if (n > st->page_cap) {
            rc = MSADB_ECORRUPT;
            break;
        }
        memcpy(page, v.mv_data, (size_t)n * MSADB_SLOT_BYTES);
        for (uint32_t i = 0; !rc && i < n; i++) {
            msadb_slot sl;
            msadb_slot_at(page, i, &sl);
            uint64_t slot = pg * st->page_cap + i;
            rc = slot >= n_slots ? MSADB_ECORRUPT : fn(slot, &sl, ud);
        }
    }
    free(page);
    return rc;
}

typedef struct {
    uint8_t *live;
    uint64_t n_dead;
} live_args;

static int live_fn(uint64_t slot, const msadb_slot *sl, void *ud)
{
    live_args *a = ud;
    if (sl->flags & MSADB_SLOT_DELETED)
        a->n_dead++;
    else
        a->live[slot >> 3] |= (uint8_t)(1u << (slot & 7));
    return 0;
}

/* Reads the live bitmap of a space; *n_dead counts deleted slots. */
static int read_live(msadb_store *st, MDB_txn *txn, const msadb_spacerec *sr, uint8_t **live, uint64_t *n_dead)
{
    live_args a = {calloc((size_t)(sr->n_slots / 8 + 1), 1), 0};
    *live = a.live;
    if (!a.live)
        return MSADB_ENOMEM;
    int rc = each_slot(st, txn, sr->id, sr->n_slots, live_fn, &a);
    *n_dead = a.n_dead;
    return rc;
}

typedef struct {
    msadb_store *st;
    MDB_txn *txn;
    uint64_t last;
} renumber_args;

static int renumber_fn(uint64_t slot, const msadb_slot *sl, void *ud)
{
    renumber_args *a = ud;
    if (sl->doc_id == a->last)
        return 0;
    a->last = sl->doc_id;
    msadb_docrec r;
    int rc = msadb_doc_lookup(a->txn, a->st, sl->doc_id, &r);
    if (rc)
        return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
    r.first_slot = slot;
    return msadb_docrec_put(a->txn, a->st, sl->doc_id, &r, 0);
}

/* Points every document of the space at its new first slot. */
static int renumber_docs(msadb_store *st, MDB_txn *txn, uint32_t space, uint64_t n_slots)
{
    renumber_args a = {st, txn, 0};
    return each_slot(st, txn, space, n_slots, renumber_fn, &a);
}

static int compact_space(msadb_store *st, MDB_txn *txn, const char *name)
{
    msadb_spacerec sr;
    int rc = msadb_space_get_txn(txn, st, name, &sr);
    if (rc)
        return rc;
    if (msadb_space_access(st, &sr))
        return 0; /* a keyed space without its key: its pages are out of reach */
    uint8_t *live;
    uint64_t n_dead, n_new = 0;
    if ((rc = read_live(st, txn, &sr, &live, &n_dead)) || n_dead == 0) {
        free(live);
        return rc;
    }
    msadb_summ_layout Ls;
    msadb_summ_layout_flat(&Ls, MSADB_SLOT_BYTES);
    page_stream ps = {st, txn, st->db_slots, sr.id, UINT32_MAX};
    rc = compact_stream(&ps, &Ls, live, sr.n_slots, &n_new);
    for (uint32_t p = 0; !rc && p < msadb_signature_planes(&st->sig); p++) {
        page_stream pp = {st, txn, st->db_summ, sr.id, p};
        rc = compact_stream(&pp, &st->summ, live, sr.n_slots, NULL);
    }
    free(live);
    if (rc)
        return rc;
    sr.n_slots = n_new;
    if ((rc = renumber_docs(st, txn, sr.id, n_new)))
        return rc;
    return msadb_space_put_txn(txn, st, name, &sr);
}

struct names {
    char (*names)[MSADB_NAME_MAX + 1];
    size_t n, cap;
};

static int collect_name(uint32_t id, const char *name, void *ud)
{
    (void)id;
    struct names *c = ud;
    if (msadb_grow(&c->names, &c->cap, c->n + 1, sizeof *c->names, 8))
        return MSADB_ENOMEM;
    snprintf(c->names[c->n++], MSADB_NAME_MAX + 1, "%s", name);
    return 0;
}

static int compact_fn(msadb_store *st, MDB_txn *txn, void *ud)
{
    (void)ud;
    if (st->scoped) { /* the handle's space alone */
        msadb_spacerec sr;
        int rc = msadb_space_get_txn(txn, st, st->scope_name, &sr);
        return rc ? rc : (rc = msadb_scope_id(st, sr.id)) ? rc : compact_space(st, txn, st->scope_name);
    }
    /* Collect the names first (from `spaceids`: the keys of `spaces` may be
     * hashes), then compact each space. */
    struct names c = {NULL, 0, 0};
    int rc = msadb_space_names_each(txn, st, collect_name, &c);
    for (size_t i = 0; !rc && i < c.n; i++)
        rc = compact_space(st, txn, c.names[i]);
    free(c.names);
    return rc;
}

int msadb_compact(msadb_store *st)
{
    if (!st)
        return MSADB_EINVAL;
    return msadb_write(st, compact_fn, NULL);
}
