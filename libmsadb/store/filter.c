/* filter.c -- which documents a read may see: the clock that decides
 * expiry, metadata text and its filter terms (KEY=VALUE), and the
 * per-snapshot document mask the query engine consults while it routes. */
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/store_impl.h"

int64_t msadb_time_now(void)
{
    /* For tests only (docs/cli.md): a fixed clock, so expiry is tested
     * without sleeping. */
    const char *e = getenv("MSADB_TEST_NOW");
    if (e && *e) {
        char *end = NULL;
        long long v = strtoll(e, &end, 10);
        if (end && !*end && v > 0)
            return (int64_t)v;
    }
    return (int64_t)time(NULL);
}

/* ------------------------------------------------------------------------ */
/* Metadata text and filter terms                                           */
/* ------------------------------------------------------------------------ */

static int key_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("._-:@/", c));
}

/* A term "KEY=VALUE" of n bytes: 0 or MSADB_EINVAL. */
static int term_check(const char *t, size_t n)
{
    const char *eq = memchr(t, '=', n);
    if (!eq)
        return MSADB_EINVAL;
    size_t kl = (size_t)(eq - t), vl = n - kl - 1;
    if (kl == 0 || kl > MSADB_META_KEY_MAX || vl > MSADB_META_VALUE_MAX)
        return MSADB_EINVAL;
    for (size_t i = 0; i < kl; i++)
        if (!key_char((unsigned char)t[i]))
            return MSADB_EINVAL;
    if (memchr(eq + 1, '\n', vl) || memchr(eq + 1, 0, vl))
        return MSADB_EINVAL;
    return 0;
}

int msadb_meta_term_check(const char *term)
{
    if (!term)
        return MSADB_EINVAL;
    return term_check(term, strnlen(term, MSADB_META_KEY_MAX + MSADB_META_VALUE_MAX + 2));
}

static int where_check(const char *const *where, size_t n)
{
    if (n && !where)
        return MSADB_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (msadb_meta_term_check(where[i]))
            return MSADB_EINVAL;
    return 0;
}

/* Whether metadata text holds the line `t` (tl bytes). */
static int has_line(const uint8_t *m, size_t len, const char *t, size_t tl)
{
    size_t i = 0;
    while (i < len) {
        const uint8_t *nl = memchr(m + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - m) : len;
        if (end - i == tl && memcmp(m + i, t, tl) == 0)
            return 1;
        i = end + 1;
    }
    return 0;
}

static int meta_match(const void *meta, size_t len, const char *const *where, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!has_line(meta, len, where[i], strlen(where[i])))
            return 0;
    return 1;
}

int msadb_meta_match(const void *meta, size_t len, const char *const *where, size_t n_where)
{
    if ((len && !meta) || where_check(where, n_where))
        return MSADB_EINVAL;
    return meta_match(meta, len, where, n_where);
}

/* ------------------------------------------------------------------------ */
/* Document masks                                                           */
/* ------------------------------------------------------------------------ */

static void mask_clear(msadb_docmask *m)
{
    if (m->used)
        memset(m->used, 0, m->cap);
    m->n = 0;
}

static int mask_add(msadb_docmask *m, uint64_t doc)
{
    if (2 * (m->n + 1) > m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 64;
        uint64_t *keys = malloc(cap * sizeof *keys);
        uint8_t *used = calloc(cap, 1);
        if (!keys || !used) {
            free(keys);
            free(used);
            return MSADB_ENOMEM;
        }
        for (size_t i = 0; i < m->cap; i++)
            if (m->used[i]) {
                size_t h = msadb_docmask_hash(m->keys[i], cap - 1);
                while (used[h])
                    h = (h + 1) & (cap - 1);
                used[h] = 1;
                keys[h] = m->keys[i];
            }
        free(m->keys);
        free(m->used);
        m->keys = keys;
        m->used = used;
        m->cap = cap;
    }
    size_t h = msadb_docmask_hash(doc, m->cap - 1);
    while (m->used[h] && m->keys[h] != doc)
        h = (h + 1) & (m->cap - 1);
    if (!m->used[h]) {
        m->used[h] = 1;
        m->keys[h] = doc;
        m->n++;
    }
    return 0;
}

void msadb_docmask_free(msadb_docmask *m)
{
    if (!m)
        return;
    free(m->keys);
    free(m->used);
    free(m->where);
    free(m->meta);
    free(m);
}

/* The filter terms joined by NUL, to tell whether a cached mask fits. */
static int where_key(const char *const *where, size_t n, char **out, size_t *len)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += strlen(where[i]) + 1;
    char *b = malloc(total ? total : 1);
    if (!b)
        return MSADB_ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(where[i]) + 1;
        memcpy(b + o, where[i], l);
        o += l;
    }
    *out = b;
    *len = total;
    return 0;
}

/* Whether document id (record r) passes the filter terms. */
static int doc_passes(msadb_snapshot *s, msadb_docmask *m, uint64_t id, const msadb_docrec *r,
                      const char *const *where, size_t n)
{
    if (n == 0)
        return 1;
    if (!(r->flags & DOC_F_META) || r->meta_len == 0)
        return 0;
    size_t len = 0;
    int rc = msadb_docdata_read(s, id, r->space_id, DD_META, NULL, 0, &len);
    if (rc)
        return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
    if (msadb_grow(&m->meta, &m->meta_cap, len ? len : 1, 1, 256))
        return MSADB_ENOMEM;
    if ((rc = msadb_docdata_read(s, id, r->space_id, DD_META, m->meta, m->meta_cap, &len)))
        return rc;
    return meta_match(m->meta, len, where, n);
}

typedef struct mask_ctx {
    msadb_snapshot *s;
    msadb_docmask *m;
    const char *const *where;
    size_t n;
    int64_t now;
} mask_ctx;

static int mask_one(uint64_t id, const msadb_docrec *r, void *ud)
{
    mask_ctx *c = ud;
    msadb_docmask *m = c->m;
    int live = msadb_docrec_live(r, c->now);
    if (live && r->expires && r->expires < m->valid_until)
        m->valid_until = r->expires;
    if (!m->include)
        return live ? 0 : mask_add(m, id);
    int ok = live ? doc_passes(c->s, m, id, r, c->where, c->n) : 0;
    return ok < 0 ? ok : ok ? mask_add(m, id) : 0;
}

/* Walks every document record: the set of visible matching documents
 * (include mode, with filter terms) or of expired ones (exclude mode). */
static int mask_build(msadb_snapshot *s, msadb_docmask *m, const char *const *where, size_t n, int64_t now)
{
    mask_clear(m);
    m->include = n > 0;
    m->valid_until = INT64_MAX;
    mask_ctx c = {s, m, where, n, now};
    return msadb_docs_each(s->txn, s->st, mask_one, &c);
}

int msadb_snap_mask(msadb_snapshot *s, const char *const *where, size_t n_where, const msadb_docmask **out)
{
    if (!s || !s->txn || !out || where_check(where, n_where))
        return MSADB_EINVAL;
    *out = NULL;
    uint32_t format;
    int rc = msadb_meta_format(s->txn, s->st, &format);
    if (rc)
        return rc;
    if (n_where == 0 && format < MSADB_FORMAT_EXPIRY)
        return 0; /* no document of this store has ever had an expiry time */
    int64_t now = msadb_time_now();
    char *wk;
    size_t wl;
    if ((rc = where_key(where, n_where, &wk, &wl)))
        return rc;
    msadb_docmask *m = s->mask;
    size_t txn_id = mdb_txn_id(s->txn);
    if (m && m->txn_id == txn_id && m->where_len == wl && memcmp(m->where, wk, wl) == 0 &&
        now >= m->built_at && now < m->valid_until) {
        free(wk);
        *out = m->include || m->n ? m : NULL;
        return 0;
    }
    if (!m && !(m = s->mask = calloc(1, sizeof *m))) {
        free(wk);
        return MSADB_ENOMEM;
    }
    free(m->where);
    m->where = wk;
    m->where_len = wl;
    m->txn_id = (size_t)-1; /* not valid until built */
    if ((rc = mask_build(s, m, where, n_where, now)))
        return rc;
    m->txn_id = txn_id;
    m->built_at = now;
    *out = m->include || m->n ? m : NULL;
    return 0;
}
