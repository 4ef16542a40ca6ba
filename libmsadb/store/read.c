/* read.c -- snapshots (LMDB read transactions) and everything read inside
 * them: document information, text, tokens, decoded K/V, and the zero-copy
 * summary page views the query engine scans. */
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "core/crypto.h"
#include "store/store_impl.h"

struct msadb_page_cache;
static void page_cache_free(struct msadb_page_cache *c);

/* ------------------------------------------------------------------------ */
/* Snapshots and reads                                                      */
/* ------------------------------------------------------------------------ */

int msadb_snapshot_begin(msadb_store *st, msadb_snapshot **out)
{
    if (!st || !out)
        return MSADB_EINVAL;
    *out = NULL;
    msadb_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return MSADB_ENOMEM;
    s->st = st;
    s->codec = msadb_codec_new(1);
    if (!s->codec) {
        free(s);
        return MSADB_ENOMEM;
    }
    /* A key database another process created since this one opened the
     * store: its handle must exist before the snapshot's transaction. */
    int rc = msadb_dockeys_open(st);
    if (rc && rc != MSADB_ENOTFOUND) {
        msadb_codec_free(s->codec);
        free(s);
        return rc;
    }
    rc = msadb_txn_read(st, &s->txn);
    if (rc) {
        msadb_codec_free(s->codec);
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int msadb_snapshot_renew(msadb_snapshot *s)
{
    if (!s || !s->txn)
        return MSADB_EINVAL;
    mdb_txn_reset(s->txn);
    int rc = mdb_txn_renew(s->txn);
    if (rc) { /* e.g. MDB_MAP_RESIZED: start a fresh transaction */
        msadb_txn_done(s->st, s->txn);
        s->txn = NULL;
        if ((rc = msadb_txn_read(s->st, &s->txn)))
            s->txn = NULL;
    }
    return rc;
}

void msadb_snapshot_end(msadb_snapshot *s)
{
    if (!s)
        return;
    if (s->scratch_free)
        s->scratch_free(s->scratch);
    msadb_docmask_free(s->mask);
    free(s->merge_buf);
    page_cache_free(s->pages);
    if (s->txn)
        msadb_txn_done(s->st, s->txn);
    msadb_codec_free(s->codec);
    free(s);
}

void *msadb_snap_scratch(msadb_snapshot *s) { return s->scratch; }

void msadb_snap_set_scratch(msadb_snapshot *s, void *p, void (*destroy)(void *))
{
    s->scratch = p;
    s->scratch_free = destroy;
}

float *msadb_snap_floats(msadb_snapshot *s, size_t n)
{
    return msadb_grow(&s->merge_buf, &s->merge_cap, n, sizeof(float), 1) ? NULL : s->merge_buf;
}

const msadb_signature *msadb_snap_signature(msadb_snapshot *s) { return &s->st->sig; }

static int snap_ok(msadb_snapshot *s) { return s && s->txn; }

/* A document as reads see it: MSADB_ENOTFOUND once it has expired. */
static int doc_visible(msadb_snapshot *s, uint64_t id, msadb_docrec *r)
{
    int rc = msadb_doc_lookup(s->txn, s->st, id, r);
    if (rc == MSADB_EKEY && msadb_scope_id(s->st, r->space_id))
        return MSADB_ESCOPE; /* outside the scope, whether or not its space is keyed */
    if (!rc && !msadb_docrec_live(r, msadb_time_now()))
        rc = MSADB_ENOTFOUND;
    return rc ? rc : msadb_scope_id(s->st, r->space_id);
}

/* Reads a docdata record into buf (decrypting), or just its length. */
int msadb_docdata_read(msadb_snapshot *s, uint64_t doc, uint32_t space, uint8_t kind, void *buf, size_t cap,
                       size_t *len)
{
    msadb_store *st = s->st;
    uint8_t k[9];
    msadb_key_docdata(k, doc, kind);
    MDB_val kv = {9, k}, v;
    int rc = msadb_rec_get(s->txn, st, st->db_docdata, &kv, &v);
    if (rc == MDB_NOTFOUND)
        return MSADB_ENOTFOUND;
    if (rc)
        return rc;
    size_t n = v.mv_size;
    if (st->encrypted) {
        if (n < MSADB_SEAL_OVERHEAD)
            return MSADB_ECORRUPT;
        n -= MSADB_SEAL_OVERHEAD;
    }
    if (len)
        *len = n;
    if (!buf)
        return 0;
    if (cap < n)
        return MSADB_ELIMIT;
    if (!st->encrypted) {
        memcpy(buf, v.mv_data, n);
        return 0;
    }
    uint8_t ad[26];
    msadb_docdata_ad(st, doc, kind, ad);
    return msadb_unseal(msadb_space_seal_key(st, space), ad, sizeof ad, v.mv_data, v.mv_size, buf);
}

static int msadb_doc_info_fill(msadb_snapshot *s, uint64_t id, const msadb_docrec *r, msadb_doc_info *out)
{
    memset(out, 0, sizeof *out);
    out->id = id;
    out->space_id = r->space_id;
    out->n_tokens = r->n_tokens;
    out->n_blocks = r->n_blocks;
    out->first_block = r->first_block;
    out->created = r->created;
    out->text_len = (size_t)r->text_len;
    out->meta_len = (size_t)r->meta_len;
    out->has_tokens = (r->flags & DOC_F_TOKENS) != 0;
    out->has_spans = (r->flags & DOC_F_SPANS) != 0;
    out->expires = r->expires;
    int rc = msadb_space_name_txn(s->txn, s->st, r->space_id, out->space);
    if (rc)
        return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
    if (r->flags & DOC_F_TITLE) {
        size_t n = 0;
        rc = msadb_docdata_read(s, id, r->space_id, DD_TITLE, out->title, MSADB_TITLE_MAX, &n);
        if (rc)
            return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
        out->title[n] = 0;
    }
    return 0;
}

int msadb_doc_find_key(msadb_snapshot *s, const void *key, size_t len, uint64_t *doc_id)
{
    if (!snap_ok(s) || !key || len < 1 || len > MSADB_DOCKEY_MAX || !doc_id)
        return MSADB_EINVAL;
    int rc = msadb_dockey_get(s->txn, s->st, key, len, doc_id);
    if (rc || (!s->st->scoped && !s->st->encrypted))
        return rc;
    msadb_docrec r; /* a document of another space, or of a keyed space without its key */
    rc = msadb_doc_lookup(s->txn, s->st, *doc_id, &r);
    if (rc == MSADB_ENOTFOUND)
        return MSADB_ECORRUPT;
    return (rc == 0 || rc == MSADB_EKEY) && msadb_scope_id(s->st, r.space_id) ? MSADB_ESCOPE : rc;
}

int msadb_doc_get(msadb_snapshot *s, uint64_t id, msadb_doc_info *out)
{
    if (!snap_ok(s) || !out)
        return MSADB_EINVAL;
    msadb_docrec r;
    int rc = doc_visible(s, id, &r);
    return rc ? rc : msadb_doc_info_fill(s, id, &r, out);
}

int msadb_doc_list(msadb_snapshot *s, const char *space, int (*cb)(const msadb_doc_info *, void *), void *ud)
{
    return msadb_doc_list_where(s, space, NULL, 0, cb, ud);
}

typedef struct list_ctx {
    msadb_snapshot *s;
    const msadb_docmask *mask;
    uint32_t space; /* UINT32_MAX: every space */
    int64_t now;
    int (*cb)(const msadb_doc_info *, void *);
    void *ud;
} list_ctx;

static int list_one(uint64_t id, const msadb_docrec *r, void *ud)
{
    list_ctx *c = ud;
    if ((c->space != UINT32_MAX && r->space_id != c->space) || msadb_docmask_hides(c->mask, id) ||
        !msadb_docrec_live(r, c->now))
        return 0;
    msadb_doc_info info;
    int rc = msadb_doc_info_fill(c->s, id, r, &info);
    return rc ? rc : c->cb(&info, c->ud);
}

int msadb_doc_list_where(msadb_snapshot *s, const char *space, const char *const *where, size_t n_where,
                         int (*cb)(const msadb_doc_info *, void *), void *ud)
{
    if (!snap_ok(s) || !cb)
        return MSADB_EINVAL;
    list_ctx c = {s, NULL, UINT32_MAX, msadb_time_now(), cb, ud};
    int rc = msadb_snap_mask(s, where, n_where, &c.mask);
    if (rc)
        return rc;
    if (space) {
        msadb_spacerec sr;
        if ((rc = msadb_scope_name(s->st, space)) || (rc = msadb_space_get_txn(s->txn, s->st, space, &sr)) ||
            (rc = msadb_scope_id(s->st, sr.id)) || (rc = msadb_space_access(s->st, &sr)))
            return rc;
        c.space = sr.id;
    } else if (s->st->scoped)
        c.space = s->st->scope_id;
    return msadb_docs_each(s->txn, s->st, list_one, &c);
}

static int docdata_copy(msadb_snapshot *s, uint64_t id, uint8_t kind, void *buf, size_t cap, size_t *len)
{
    if (!snap_ok(s) || !len)
        return MSADB_EINVAL;
    msadb_docrec r;
    int rc = doc_visible(s, id, &r);
    if (rc)
        return rc;
    rc = msadb_docdata_read(s, id, r.space_id, kind, buf, cap, len);
    if (rc == MSADB_ENOTFOUND) { /* a document without text/meta has length 0 */
        *len = 0;
        return 0;
    }
    return rc;
}

int msadb_doc_text(msadb_snapshot *s, uint64_t id, char *buf, size_t cap, size_t *len)
{
    return docdata_copy(s, id, DD_TEXT, buf, cap, len);
}

int msadb_doc_meta(msadb_snapshot *s, uint64_t id, void *buf, size_t cap, size_t *len)
{
    return docdata_copy(s, id, DD_META, buf, cap, len);
}

int msadb_doc_tokens(msadb_snapshot *s, uint64_t id, int32_t *ids, int64_t *spans, size_t cap)
{
    if (!snap_ok(s))
        return MSADB_EINVAL;
    msadb_docrec r;
    int rc = doc_visible(s, id, &r);
    if (rc)
        return rc;
    if (cap < r.n_tokens)
        return MSADB_ELIMIT;
    if ((ids && !(r.flags & DOC_F_TOKENS)) || (spans && !(r.flags & DOC_F_SPANS)))
        return MSADB_ENOTFOUND;
    size_t n;
    if (ids && (rc = msadb_docdata_read(s, id, r.space_id, DD_TOKENS, ids, (size_t)r.n_tokens * 4, &n)))
        return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
    if (ids && n != r.n_tokens * 4)
        return MSADB_ECORRUPT;
    if (spans && (rc = msadb_docdata_read(s, id, r.space_id, DD_SPANS, spans, (size_t)r.n_tokens * 16, &n)))
        return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
    if (spans && n != r.n_tokens * 16)
        return MSADB_ECORRUPT;
    return 0;
}

int msadb_snap_block(msadb_snapshot *s, uint32_t space_id, uint64_t block_id, uint32_t plane, float *K,
                     float *V, uint32_t *n_tok)
{
    if (!snap_ok(s) || !n_tok || plane >= msadb_signature_planes(&s->st->sig))
        return MSADB_EINVAL;
    msadb_store *st = s->st;
    uint8_t k[8];
    msadb_key_block(k, block_id);
    MDB_val kv = {8, k}, v;
    int rc = msadb_rec_get(s->txn, st, st->db_blocks, &kv, &v);
    if (rc == MDB_NOTFOUND)
        return MSADB_ENOTFOUND;
    if (rc)
        return rc;
    const uint8_t *part;
    size_t part_len;
    if ((rc = msadb_block_part(v.mv_data, v.mv_size, msadb_signature_planes(&st->sig), plane, &part, &part_len)))
        return rc;
    uint8_t ad[32];
    msadb_block_ad(st, space_id, plane, block_id, ad);
    return msadb_block_decode(s->codec, part, part_len, st->sig.head_dim, st->sig.block_size,
                              st->encrypted ? msadb_space_seal_key(st, space_id) : NULL, ad, sizeof ad, K, V,
                              n_tok);
}

int msadb_doc_kv(msadb_snapshot *s, uint64_t id, uint32_t plane, float *K, float *V)
{
    if (!snap_ok(s))
        return MSADB_EINVAL;
    const msadb_signature *sig = &s->st->sig;
    if (plane >= msadb_signature_planes(sig))
        return MSADB_EINVAL;
    msadb_docrec r;
    int rc = doc_visible(s, id, &r);
    if (rc)
        return rc;
    size_t d = sig->head_dim;
    for (uint64_t j = 0; j < r.n_blocks; j++) {
        uint32_t n = 0;
        uint64_t t0 = j * sig->block_size;
        uint64_t want = r.n_tokens - t0 < sig->block_size ? r.n_tokens - t0 : sig->block_size;
        rc = msadb_snap_block(s, r.space_id, r.first_block + j, plane, K ? K + t0 * d : NULL,
                                 V ? V + t0 * d : NULL, &n);
        if (rc)
            return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
        if (n != want)
            return MSADB_ECORRUPT;
    }
    return 0;
}

int msadb_snap_space_id(msadb_snapshot *s, const char *name, uint32_t *id)
{
    if (!snap_ok(s) || !id)
        return MSADB_EINVAL;
    msadb_spacerec sr;
    int rc = msadb_scope_name(s->st, name);
    if (!rc && !(rc = msadb_space_get_txn(s->txn, s->st, name, &sr)) && !(rc = msadb_scope_id(s->st, sr.id)) &&
        !(rc = msadb_space_access(s->st, &sr)))
        *id = sr.id;
    return rc;
}

/* Whether space id is keyed and this handle lacks its key. */
static int space_locked(msadb_snapshot *s, uint32_t id, int *locked)
{
    char name[MSADB_NAME_MAX + 1];
    msadb_spacerec sr;
    int rc = msadb_space_name_txn(s->txn, s->st, id, name);
    if (!rc)
        rc = msadb_space_get_txn(s->txn, s->st, name, &sr);
    if (rc)
        return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
    *locked = msadb_space_access(s->st, &sr) != 0;
    return 0;
}

int msadb_snap_space_ids(msadb_snapshot *s, uint32_t *ids, size_t cap, size_t *n)
{
    if (!snap_ok(s) || !n)
        return MSADB_EINVAL;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(s->txn, s->st->db_spaceids, &cur);
    if (rc)
        return rc;
    MDB_val k, v;
    size_t cnt = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 4) { /* ids only: the names are not read here */
            rc = MSADB_ECORRUPT;
            break;
        }
        if (msadb_scope_id(s->st, msadb_get_be32(k.mv_data)))
            continue;
        int locked = 0;
        if (s->st->encrypted && (rc = space_locked(s, msadb_get_be32(k.mv_data), &locked)))
            break;
        if (locked) /* a keyed space without its key: out of every query */
            continue;
        if (ids && cnt < cap)
            ids[cnt] = msadb_get_be32(k.mv_data);
        cnt++;
    }
    mdb_cursor_close(cur);
    *n = cnt;
    if (rc == MDB_NOTFOUND)
        rc = 0;
    if (!rc && ids && cnt > cap)
        rc = MSADB_ELIMIT;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Sealed pages                                                             */
/* ------------------------------------------------------------------------ */

/* An encrypted store's summary and routing pages are sealed: a snapshot
 * decrypts each page the first time a query reads it and keeps the
 * plaintext, so later queries scan memory as they would scan the map.  An
 * entry is valid while the stored value keeps its nonce and tag (a page
 * rewritten by a later commit gets a fresh random nonce), so the copies
 * survive msadb_snapshot_renew() and only changed pages are decrypted
 * again.  Memory: the summary and routing pages the snapshot's queries
 * read (docs/benchmarks.md, *Sealed summaries*). */
typedef struct {
    uint8_t key[17]; /* database handle, then the 16-byte page key */
    uint8_t ident[MSADB_NONCE_BYTES + MSADB_TAG_BYTES];
    uint8_t *data; /* 64-byte aligned */
    size_t len;
} page_entry;

struct msadb_page_cache {
    page_entry *e;
    size_t cap, n; /* cap a power of two, or 0 */
};

static void page_cache_free(struct msadb_page_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->cap; i++)
        free(c->e[i].data);
    free(c->e);
    free(c);
}

static size_t page_hash(const uint8_t key[17])
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < 17; i++)
        h = (h ^ key[i]) * 1099511628211ull;
    return (size_t)(h ^ (h >> 29));
}

/* The slot of key: its entry, or the empty one where it goes. */
static page_entry *page_slot(struct msadb_page_cache *c, const uint8_t key[17])
{
    for (size_t i = page_hash(key) & (c->cap - 1);; i = (i + 1) & (c->cap - 1))
        if (!c->e[i].data || memcmp(c->e[i].key, key, 17) == 0)
            return &c->e[i];
}

static int page_cache_grow(struct msadb_page_cache *c)
{
    size_t cap = c->cap ? 2 * c->cap : 64;
    page_entry *old = c->e, *e = calloc(cap, sizeof *e);
    if (!e)
        return MSADB_ENOMEM;
    size_t old_cap = c->cap;
    c->e = e;
    c->cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].data)
            *page_slot(c, old[i].key) = old[i];
    free(old);
    return 0;
}

/* v (read from dbi under the key k of klen <= 16 bytes) as the page's
 * plaintext, checked: the map's bytes in a store without record MACs, else
 * the snapshot's copy, decrypted (summary and routing pages) or with its
 * MAC checked (slot pages) once.  A copy is reused while the stored value
 * ends with the same tag (and, sealed, starts with the same nonce): a
 * value edited behind a kept tag still yields the authentic copy. */
static int snap_page(msadb_snapshot *s, MDB_dbi dbi, const uint8_t *k, size_t klen, MDB_val *v)
{
    msadb_store *st = s->st;
    MDB_val kv = {klen, (void *)k};
    int sealed = msadb_rec_sealed(st, dbi);
    if (!st->rec_mac)
        return msadb_rec_check(st, dbi, &kv, v);
    size_t over = sealed ? MSADB_SEAL_OVERHEAD : MSADB_REC_MAC_BYTES;
    if (v->mv_size < over)
        return MSADB_EAUTH;
    struct msadb_page_cache *c = s->pages;
    if (!c && !(c = s->pages = calloc(1, sizeof *c)))
        return MSADB_ENOMEM;
    if ((c->n + 1) * 2 > c->cap && page_cache_grow(c))
        return MSADB_ENOMEM;
    uint8_t key[17] = {0}, ident[MSADB_NONCE_BYTES + MSADB_TAG_BYTES] = {0};
    key[0] = (uint8_t)dbi;
    memcpy(key + 1, k, klen);
    const uint8_t *stored = v->mv_data;
    if (sealed)
        memcpy(ident, stored, MSADB_NONCE_BYTES);
    memcpy(ident + MSADB_NONCE_BYTES, stored + v->mv_size - 16, 16); /* the tag, or the MAC */
    page_entry *e = page_slot(c, key);
    if (e->data && memcmp(e->ident, ident, sizeof ident) == 0) {
        v->mv_data = e->data;
        v->mv_size = e->len;
        return 0;
    }
    size_t n = v->mv_size - over;
    void *buf = NULL;
    if (posix_memalign(&buf, 64, n ? n : 1))
        return MSADB_ENOMEM;
    MDB_val sv = *v;
    int rc = sealed ? msadb_rec_unseal(st, dbi, &kv, &sv, buf) : msadb_rec_check(st, dbi, &kv, &sv);
    if (rc) {
        free(buf);
        return rc;
    }
    if (!sealed)
        memcpy(buf, sv.mv_data, n);
    if (!e->data)
        c->n++;
    free(e->data);
    memcpy(e->key, key, 17);
    memcpy(e->ident, ident, sizeof ident);
    e->data = buf;
    e->len = n;
    v->mv_data = buf;
    v->mv_size = n;
    return 0;
}

/* The routing index page of summary page key ks (n slots) into pv, when
 * the store has an index (cr: a cursor on it).  A snapshot taken before
 * this process built the index has none: n_coarse stays 0. */
static int coarse_view(msadb_snapshot *s, MDB_cursor *cr, uint8_t ks[16], uint32_t cnt, msadb_page_view *pv)
{
    msadb_store *st = s->st;
    pv->n_coarse = 0;
    pv->coarse_S = st->has_route ? st->route.S : 0;
    memset(&pv->coarse, 0, sizeof pv->coarse);
    if (!cr)
        return 0;
    MDB_val rk = {16, ks}, rv;
    int rc = mdb_cursor_get(cr, &rk, &rv, MDB_SET_KEY);
    if (rc)
        return rc == MDB_NOTFOUND ? 0 : rc;
    if ((rc = snap_page(s, st->db_route, ks, 16, &rv)))
        return rc;
    if (rv.mv_size != msadb_coarse_page_bytes(&st->route, cnt) || ((uintptr_t)rv.mv_data & 15))
        return MSADB_ECORRUPT;
    msadb_coarse_view_of(&st->route, rv.mv_data, cnt, &pv->coarse);
    pv->n_coarse = (uint32_t)msadb_coarse_entries(&st->route, cnt);
    return 0;
}

int msadb_snap_pages(msadb_snapshot *s, uint32_t space_id, uint32_t plane, msadb_page_view **views, size_t *n,
                     size_t *cap)
{
    if (!snap_ok(s) || !views || !n || !cap)
        return MSADB_EINVAL;
    msadb_store *st = s->st;
    if (plane >= msadb_signature_planes(&st->sig))
        return MSADB_EINVAL;
    *n = 0;
    MDB_cursor *cs, *cp;
    int rc = mdb_cursor_open(s->txn, st->db_slots, &cs);
    if (rc)
        return rc;
    if ((rc = mdb_cursor_open(s->txn, st->db_summ, &cp))) {
        mdb_cursor_close(cs);
        return rc;
    }
    MDB_cursor *cr = NULL;
    if (st->has_route && (rc = mdb_cursor_open(s->txn, st->db_route, &cr))) {
        mdb_cursor_close(cs);
        mdb_cursor_close(cp);
        return rc;
    }
    uint8_t k0[16];
    msadb_key_slots(k0, space_id, 0);
    MDB_val k = {12, k0}, v;
    for (rc = mdb_cursor_get(cs, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cs, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 12 || msadb_get_be32(k.mv_data) != space_id)
            break;
        if ((rc = snap_page(s, st->db_slots, k.mv_data, 12, &v)))
            break;
        uint64_t pg = msadb_get_be64((const uint8_t *)k.mv_data + 4);
        if (v.mv_size == 0 || v.mv_size % MSADB_SLOT_BYTES || v.mv_size / MSADB_SLOT_BYTES > st->page_cap) {
            rc = MSADB_ECORRUPT;
            break;
        }
        uint32_t cnt = (uint32_t)(v.mv_size / MSADB_SLOT_BYTES);
        uint8_t ks[16];
        msadb_key_summ(ks, space_id, plane, pg);
        MDB_val sk = {16, ks}, sv;
        if ((rc = mdb_cursor_get(cp, &sk, &sv, MDB_SET_KEY)) || (rc = snap_page(s, st->db_summ, ks, 16, &sv))) {
            rc = rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
            break;
        }
        if (sv.mv_size != msadb_summ_page_bytes(&st->summ, cnt) || ((uintptr_t)sv.mv_data & 15)) {
            rc = MSADB_ECORRUPT;
            break;
        }
        if (msadb_grow(views, cap, *n + 1, sizeof **views, 64)) {
            rc = MSADB_ENOMEM;
            break;
        }
        msadb_page_view *pv = &(*views)[(*n)++];
        pv->page_no = pg;
        pv->n = cnt;
        pv->slots = v.mv_data;
        msadb_summ_view_of(&st->summ, sv.mv_data, cnt, &pv->summ);
        if ((rc = coarse_view(s, cr, ks, cnt, pv)))
            break;
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    mdb_cursor_close(cs);
    mdb_cursor_close(cp);
    if (cr)
        mdb_cursor_close(cr);
    return rc;
}


int msadb_snap_has_index(msadb_snapshot *s)
{
    return snap_ok(s) && s->st->has_route;
}

int msadb_snap_doc_space(msadb_snapshot *s, uint64_t doc_id, uint32_t *space_id)
{
    if (!snap_ok(s) || !space_id)
        return MSADB_EINVAL;
    msadb_docrec r;
    int rc = doc_visible(s, doc_id, &r);
    if (!rc)
        *space_id = r.space_id;
    return rc;
}
