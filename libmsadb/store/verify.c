/* verify.c -- a full consistency check of a store, in one read snapshot:
 * every block decodes (checksum, authentication), summaries equal those
 * recomputed from the blocks, and documents, slots, pages and space
 * counters agree with each other. */
#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/index.h"
#include "store/store_impl.h"

typedef struct {
    msadb_snapshot *snap;
    msadb_store *st;
    void (*report)(const char *, void *);
    void *ud;
    uint64_t problems;
    float *K, *V;
    uint8_t *summ;
    uint8_t *route; /* a recomputed coarse page */
    size_t route_cap;
    uint64_t route_pages; /* coarse pages checked */
    uint8_t *page;        /* a summary page, unsealed */
    uint8_t *slot;        /* a slot page, unsealed */
    size_t slot_cap;
    size_t page_cap;
} verifier;

__attribute__((format(printf, 2, 3))) static void problem(verifier *vf, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    vf->problems++;
    if (vf->report)
        vf->report(line, vf->ud);
}

typedef struct {
    uint8_t *p;
    size_t cap;
} vbuf;

/* A cursor step that passes over records failing their MAC: the record
 * walk (bad_record) has reported each of them already. */
static int vstep(verifier *vf, MDB_cursor *cur, MDB_val *k, MDB_val *v, MDB_cursor_op op, vbuf *b)
{
    int rc;
    do {
        rc = mdb_cursor_get(cur, k, v, op);
        if (!rc)
            rc = msadb_rec_open(vf->st, mdb_cursor_dbi(cur), k, v, &b->p, &b->cap);
        op = MDB_NEXT;
    } while (rc == MSADB_EAUTH);
    return rc;
}

/* Reports a record whose MAC fails, by database and key (hex; a key of
 * printable characters, such as a space name, also as text). */
static void bad_record(const char *db, const MDB_val *k, void *ud)
{
    char hex[2 * 64 + 1], text[64 + 1];
    size_t n = k->mv_size < 64 ? k->mv_size : 64;
    const uint8_t *p = k->mv_data;
    int printable = n > 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(hex + 2 * i, 3, "%02x", p[i]);
        text[i] = (char)p[i];
        printable &= p[i] >= 0x20 && p[i] < 0x7f;
    }
    hex[2 * n] = 0;
    text[n] = 0;
    problem(ud, "%s record %s%s%s%s: fails authentication (edited, moved or from another store)", db, hex,
            printable ? " (\"" : "", printable ? text : "", printable ? "\")" : "");
}

/* Fetches stored summary entry `slot` of (space, plane), whose page holds
 * n entries, into out, in concatenated form (codec/summary.h). */
static int stored_summary(verifier *vf, uint32_t space, uint32_t plane, uint64_t slot, size_t n, uint8_t *out)
{
    msadb_store *st = vf->st;
    uint8_t k[16];
    msadb_key_summ(k, space, plane, slot / st->page_cap);
    MDB_val kv = {16, k}, v;
    int rc = msadb_rec_read(vf->snap->txn, st, st->db_summ, &kv, &v, &vf->page, &vf->page_cap);
    if (rc)
        return rc;
    size_t i = slot % st->page_cap;
    if (v.mv_size != msadb_summ_page_bytes(&st->summ, n) || i >= n)
        return MSADB_ECORRUPT;
    msadb_summ_entry_get(&st->summ, v.mv_data, n, i, out);
    return 0;
}

/* Slot entry `slot` of a space, and the number of entries in its page. */
static int get_slot(verifier *vf, uint32_t space, uint64_t slot, msadb_slot *s, size_t *page_n)
{
    msadb_store *st = vf->st;
    uint8_t k[12];
    msadb_key_slots(k, space, slot / st->page_cap);
    MDB_val kv = {12, k}, v;
    int rc = msadb_rec_read(vf->snap->txn, st, st->db_slots, &kv, &v, &vf->slot, &vf->slot_cap);
    if (rc)
        return rc;
    size_t i = slot % st->page_cap;
    if (v.mv_size % MSADB_SLOT_BYTES || i >= v.mv_size / MSADB_SLOT_BYTES)
        return MSADB_ECORRUPT;
    msadb_slot_at(v.mv_data, (uint32_t)i, s);
    *page_n = v.mv_size / MSADB_SLOT_BYTES;
    return 0;
}

static void check_docdata(verifier *vf, uint64_t id, const msadb_docrec *r)
{
    static const struct {
        uint32_t flag;
        uint8_t kind;
        const char *name;
    } kinds[] = {{DOC_F_TITLE, DD_TITLE, "title"}, {DOC_F_META, DD_META, "metadata"}, {DOC_F_TEXT, DD_TEXT, "text"},
                 {DOC_F_TOKENS, DD_TOKENS, "token ids"}, {DOC_F_SPANS, DD_SPANS, "token spans"}};
    uint64_t want[] = {r->title_len, r->meta_len, r->text_len, r->n_tokens * 4, r->n_tokens * 16};
    for (size_t i = 0; i < 5; i++) {
        size_t len = 0;
        int rc = msadb_docdata_read(vf->snap, id, r->space_id, kinds[i].kind, NULL, 0, &len);
        int present = rc == 0;
        if (rc && rc != MSADB_ENOTFOUND) {
            problem(vf, "document %llu: %s unreadable: %s", (unsigned long long)id, kinds[i].name, msadb_strerror(rc));
            continue;
        }
        if (present != ((r->flags & kinds[i].flag) != 0)) {
            problem(vf, "document %llu: %s %s but the record says otherwise", (unsigned long long)id, kinds[i].name,
                    present ? "present" : "missing");
            continue;
        }
        if (!present)
            continue;
        if (len != want[i]) {
            problem(vf, "document %llu: %s is %zu bytes, expected %llu", (unsigned long long)id, kinds[i].name, len,
                    (unsigned long long)want[i]);
            continue;
        }
        uint8_t *buf = malloc(len ? len : 1);
        if (!buf)
            continue;
        if ((rc = msadb_docdata_read(vf->snap, id, r->space_id, kinds[i].kind, buf, len, &len)))
            problem(vf, "document %llu: %s fails to open: %s", (unsigned long long)id, kinds[i].name,
                    msadb_strerror(rc));
        free(buf);
    }
}

/* A keyed document's key is stored and maps back to it. */
static void check_key(verifier *vf, uint64_t id, const msadb_docrec *r, uint64_t *keyed)
{
    uint8_t key[MSADB_DOCKEY_MAX];
    size_t len = 0;
    int rc = msadb_dockey_of(vf->snap->txn, vf->st, id, key, &len);
    if (!(r->flags & DOC_F_KEY)) {
        if (rc != MSADB_ENOTFOUND)
            problem(vf, "document %llu: a key is stored but the record says none", (unsigned long long)id);
        return;
    }
    (*keyed)++;
    if (rc) {
        problem(vf, "document %llu: key missing or malformed: %s", (unsigned long long)id, msadb_strerror(rc));
        return;
    }
    uint64_t back = 0;
    rc = msadb_dockey_get(vf->snap->txn, vf->st, key, len, &back);
    if (rc)
        problem(vf, "document %llu: its key is not in the key index: %s", (unsigned long long)id,
                msadb_strerror(rc));
    else if (back != id)
        problem(vf, "document %llu: its key names document %llu", (unsigned long long)id,
                (unsigned long long)back);
}

/* Checks one document; returns non-zero only if the check itself failed. */
static int check_doc(verifier *vf, uint64_t id, const msadb_docrec *r, uint64_t *blocks_seen)
{
    msadb_store *st = vf->st;
    const msadb_signature *sig = &st->sig;
    const uint32_t B = sig->block_size, d = sig->head_dim, planes = msadb_signature_planes(sig);
    const size_t se = st->summ.entry;
    char name[MSADB_NAME_MAX + 1];
    if (msadb_space_name_txn(vf->snap->txn, st, r->space_id, name)) {
        problem(vf, "document %llu: space %u does not exist", (unsigned long long)id, r->space_id);
        return 0;
    }
    if (r->n_blocks != (r->n_tokens + B - 1) / B) {
        problem(vf, "document %llu: %llu blocks for %llu tokens", (unsigned long long)id,
                (unsigned long long)r->n_blocks, (unsigned long long)r->n_tokens);
        return 0;
    }
    check_docdata(vf, id, r);
    uint32_t format = 0;
    if (r->expires && msadb_meta_format(vf->snap->txn, st, &format) == 0 && format < MSADB_FORMAT_EXPIRY)
        problem(vf, "document %llu: an expiry time in a store of format %u (expiry needs format %u)",
                (unsigned long long)id, format, MSADB_FORMAT_EXPIRY);
    for (uint64_t j = 0; j < r->n_blocks; j++) {
        uint64_t slot = r->first_slot + j, blk = r->first_block + j;
        uint32_t want_n = (uint32_t)(r->n_tokens - j * B < B ? r->n_tokens - j * B : B);
        msadb_slot s;
        size_t page_n = 0;
        int rc = get_slot(vf, r->space_id, slot, &s, &page_n);
        if (rc) {
            problem(vf, "document %llu: slot %llu missing: %s", (unsigned long long)id, (unsigned long long)slot,
                    msadb_strerror(rc));
            return 0; /* the rest of this document is unreachable the same way */
        } else if (s.block_id != blk || s.doc_id != id || s.tok_start != j * B || s.n_tok != want_n ||
                 (s.flags & MSADB_SLOT_DELETED))
            problem(vf, "document %llu: slot %llu does not describe block %llu", (unsigned long long)id,
                    (unsigned long long)slot, (unsigned long long)blk);
        (*blocks_seen)++; /* one record per block id, all planes inside */
        for (uint32_t p = 0; p < planes; p++) {
            uint32_t n = 0;
            rc = msadb_snap_block(vf->snap, r->space_id, blk, p, vf->K, vf->V, &n);
            if (rc == MSADB_ENOTFOUND) {
                problem(vf, "block %llu plane %u (document %llu): missing", (unsigned long long)blk, p,
                        (unsigned long long)id);
                return 0;
            }
            if (rc) {
                problem(vf, "block %llu plane %u (document %llu): %s", (unsigned long long)blk, p,
                        (unsigned long long)id, msadb_strerror(rc));
                continue;
            }
            if (n != want_n) {
                problem(vf, "block %llu plane %u: %u tokens, expected %u", (unsigned long long)blk, p, n, want_n);
                continue;
            }
            msadb_summarize_entry(&st->summ, vf->K, n, vf->summ);
            if ((rc = stored_summary(vf, r->space_id, p, slot, page_n, vf->summ + se)))
                problem(vf, "block %llu plane %u: summary missing: %s", (unsigned long long)blk, p,
                        msadb_strerror(rc));
            else if (memcmp(vf->summ, vf->summ + se, se) != 0)
                problem(vf, "block %llu plane %u: stored summary differs from the block's keys",
                        (unsigned long long)blk, p);
        }
    }
    (void)d;
    return 0;
}

/* Per-space totals gathered from the documents. */
typedef struct {
    uint32_t id;
    uint64_t docs, tokens, blocks;
    int has_record; /* a space record names this id */
} space_tally;

static space_tally *tally_for(space_tally *t, size_t n, uint32_t id)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].id == id)
            return &t[i];
    return NULL;
}

/* Checks a space's record, id map, pages and counters. */
static void check_space(verifier *vf, const char *name, const msadb_spacerec *sr, const space_tally *t)
{
    msadb_store *st = vf->st;
    char back[MSADB_NAME_MAX + 1];
    if (msadb_space_name_txn(vf->snap->txn, st, sr->id, back) || strcmp(back, name) != 0)
        problem(vf, "space %s: id %u does not map back to it", name, sr->id);
    uint64_t docs = t ? t->docs : 0, tokens = t ? t->tokens : 0, blocks = t ? t->blocks : 0;
    if (sr->n_docs != docs || sr->n_tokens != tokens)
        problem(vf, "space %s: counts %llu documents / %llu tokens, found %llu / %llu", name,
                (unsigned long long)sr->n_docs, (unsigned long long)sr->n_tokens, (unsigned long long)docs,
                (unsigned long long)tokens);
    const uint32_t planes = msadb_signature_planes(&st->sig);
    /* Walk the pages that exist (a damaged counter must not drive the loop):
     * numbered 0, 1, ... with every page full but the last. */
    uint64_t live = 0, slots = 0, expect_pg = 0;
    MDB_cursor *cur;
    if (mdb_cursor_open(vf->snap->txn, st->db_slots, &cur))
        return;
    uint8_t k0[12];
    msadb_key_slots(k0, sr->id, 0);
    MDB_val kv = {12, k0}, v;
    int rc;
    vbuf vb = {0};
    for (rc = vstep(vf, cur, &kv, &v, MDB_SET_RANGE, &vb); rc == 0; rc = vstep(vf, cur, &kv, &v, MDB_NEXT, &vb)) {
        if (kv.mv_size != 12 || msadb_get_be32(kv.mv_data) != sr->id)
            break;
        uint64_t pg = msadb_get_be64((const uint8_t *)kv.mv_data + 4);
        uint64_t n = v.mv_size / MSADB_SLOT_BYTES;
        if (pg != expect_pg || v.mv_size % MSADB_SLOT_BYTES || n == 0 || n > st->page_cap ||
            slots % st->page_cap) {
            problem(vf, "space %s: slot page %llu out of sequence or of the wrong size", name, (unsigned long long)pg);
            break;
        }
        expect_pg++;
        slots += n;
        for (uint32_t i = 0; i < n; i++) {
            msadb_slot s;
            msadb_slot_at(v.mv_data, i, &s);
            live += !(s.flags & MSADB_SLOT_DELETED);
        }
        for (uint32_t p = 0; p < planes; p++) {
            uint8_t k[16];
            msadb_key_summ(k, sr->id, p, pg);
            MDB_val sk = {16, k}, sv;
            if (msadb_rec_read(vf->snap->txn, st, st->db_summ, &sk, &sv, &vf->page, &vf->page_cap) ||
                sv.mv_size != msadb_summ_page_bytes(&st->summ, n)) {
                problem(vf, "space %s: summary page %llu of plane %u missing or of the wrong size", name,
                        (unsigned long long)pg, p);
                continue;
            }
            int rr = msadb_route_check(st, vf->snap->txn, sr->id, p, pg, sv.mv_data, (uint32_t)n, &vf->route,
                                       &vf->route_cap);
            if (rr == MSADB_ENOTFOUND || rr == MSADB_ECORRUPT)
                problem(vf, "space %s: routing index page %llu of plane %u %s (msadb_upgrade() rebuilds the index)", name, (unsigned long long)pg, p,
                        rr == MSADB_ENOTFOUND ? "missing" : "differs from its summary page");
            else if (rr)
                problem(vf, "space %s: routing index page %llu of plane %u unreadable: %s", name,
                        (unsigned long long)pg, p, msadb_strerror(rr));
            vf->route_pages++;
        }
    }
    mdb_cursor_close(cur);
    free(vb.p);
    if (slots != sr->n_slots)
        problem(vf, "space %s: counts %llu slots, its pages hold %llu", name, (unsigned long long)sr->n_slots,
                (unsigned long long)slots);
    if (live != blocks)
        problem(vf, "space %s: %llu live slots but its documents have %llu blocks", name, (unsigned long long)live,
                (unsigned long long)blocks);
}

/* The largest key of a database as a big-endian id of `width` bytes (0 when
 * empty). */
static int last_id(MDB_txn *txn, MDB_dbi dbi, size_t width, uint64_t *out)
{
    MDB_cursor *cur;
    MDB_val k, v;
    *out = 0;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc)
        return rc;
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST) /* keys only */;
    if (rc == 0 && k.mv_size >= width)
        *out = width == 8 ? msadb_get_be64(k.mv_data) : msadb_get_be32(k.mv_data);
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* The meta records: the MAC of an encrypted store, and counters ahead of
 * every id in use (a counter behind would make a later write collide). */
static int check_meta(verifier *vf)
{
    msadb_store *st = vf->st;
    MDB_txn *txn = vf->snap->txn;
    int rc;
    if (st->encrypted) {
        uint8_t mac[32];
        MDB_val k = {8, (void *)"meta_mac"}, v;
        int got = msadb_rec_get(txn, st, st->db_meta, &k, &v);
        if (got && got != MDB_NOTFOUND)
            return got;
        if ((rc = msadb_meta_mac(st, txn, mac)))
            return rc;
        if (got == MDB_NOTFOUND ? st->kc_ver >= 2 : (v.mv_size != 32 || memcmp(mac, v.mv_data, 32) != 0))
            problem(vf, "the meta records (signature, counters, key parameters) fail authentication");
    }
    static const struct {
        const char *counter;
        int db; /* 0 docs, 1 blocks, 2 space ids */
    } counters[] = {{"next_doc", 0}, {"next_block", 1}, {"next_space", 2}};
    for (size_t i = 0; i < 3; i++) {
        uint64_t next, last;
        MDB_dbi dbi = counters[i].db == 0 ? st->db_docs : counters[i].db == 1 ? st->db_blocks : st->db_spaceids;
        int any;
        if ((rc = msadb_meta_u64(txn, st, counters[i].counter, &next)) == MSADB_ECORRUPT) {
            problem(vf, "meta %s: malformed", counters[i].counter);
            continue;
        }
        if (rc || (rc = last_id(txn, dbi, counters[i].db == 2 ? 4 : 8, &last)))
            return rc;
        MDB_stat ds;
        if ((rc = mdb_stat(txn, dbi, &ds)))
            return rc;
        any = ds.ms_entries > 0;
        if (any && next <= last)
            problem(vf, "meta %s is %llu but id %llu is in use (a later write would collide)",
                    counters[i].counter, (unsigned long long)next, (unsigned long long)last);
    }
    return 0;
}

static int verify_all(verifier *vf)
{
    msadb_store *st = vf->st;
    MDB_txn *txn = vf->snap->txn;
    space_tally *tally = NULL;
    size_t n_tally = 0;
    uint64_t blocks_seen = 0, keyed = 0;
    MDB_cursor *cur;
    int rc = check_meta(vf);
    if (rc || (rc = msadb_rec_walk(st, txn, bad_record, vf)) || (rc = mdb_cursor_open(txn, st->db_docs, &cur)))
        return rc;
    MDB_val k, v;
    vbuf vb = {0};
    for (rc = vstep(vf, cur, &k, &v, MDB_FIRST, &vb); rc == 0; rc = vstep(vf, cur, &k, &v, MDB_NEXT, &vb)) {
        msadb_docrec r;
        if (k.mv_size != 8 || msadb_docrec_open(st, msadb_get_be64(k.mv_data), v.mv_data, v.mv_size, &r)) {
            problem(vf, "a document record is malformed");
            continue;
        }
        uint64_t id = msadb_get_be64(k.mv_data);
        space_tally *t = tally_for(tally, n_tally, r.space_id);
        if (!t) {
            space_tally *nt = realloc(tally, (n_tally + 1) * sizeof *nt);
            if (!nt) {
                rc = MSADB_ENOMEM;
                break;
            }
            tally = nt;
            t = &tally[n_tally++];
            memset(t, 0, sizeof *t);
            t->id = r.space_id;
        }
        t->docs++;
        t->tokens += r.n_tokens;
        t->blocks += r.n_blocks;
        check_key(vf, id, &r, &keyed);
        if ((rc = check_doc(vf, id, &r, &blocks_seen)))
            break;
    }
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        rc = 0;
    /* the spaces by their names (`spaceids`: the keys of `spaces` may be hashes) */
    uint64_t n_names = 0;
    if (!rc && !(rc = mdb_cursor_open(txn, st->db_spaceids, &cur))) {
        for (rc = vstep(vf, cur, &k, &v, MDB_FIRST, &vb); rc == 0; rc = vstep(vf, cur, &k, &v, MDB_NEXT, &vb)) {
            char name[MSADB_NAME_MAX + 1];
            msadb_spacerec sr;
            n_names++;
            if (k.mv_size != 4 || v.mv_size < 1 || v.mv_size > MSADB_NAME_MAX) {
                problem(vf, "a space name is malformed");
                continue;
            }
            memcpy(name, v.mv_data, v.mv_size);
            name[v.mv_size] = 0;
            if (msadb_space_get_txn(txn, st, name, &sr) || sr.id != msadb_get_be32(k.mv_data)) {
                problem(vf, "space %s: record missing, malformed or of another id", name);
                continue;
            }
            space_tally *t = tally_for(tally, n_tally, sr.id);
            if (t)
                t->has_record = 1;
            check_space(vf, name, &sr, t);
        }
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    MDB_stat ss;
    if (!rc && !(rc = mdb_stat(txn, st->db_spaces, &ss)) && ss.ms_entries != n_names)
        problem(vf, "%llu space records but %llu space names", (unsigned long long)ss.ms_entries,
                (unsigned long long)n_names);
    for (size_t i = 0; !rc && i < n_tally; i++)
        if (!tally[i].has_record)
            problem(vf, "%llu documents are in space id %u, which has no space record",
                    (unsigned long long)tally[i].docs, tally[i].id);
    if (!rc) {
        MDB_stat bs;
        if (!(rc = mdb_stat(txn, st->db_blocks, &bs)) && bs.ms_entries != blocks_seen)
            problem(vf, "%llu stored blocks but documents account for %llu", (unsigned long long)bs.ms_entries,
                    (unsigned long long)blocks_seen);
    }
    MDB_stat ks;
    if (!rc && st->has_dockeys && mdb_stat(txn, st->db_dockeys, &ks) == 0 && ks.ms_entries != keyed)
        problem(vf, "%llu document keys stored but %llu documents have one", (unsigned long long)ks.ms_entries,
                (unsigned long long)keyed);
    if (!rc && st->has_route) {
        MDB_stat rs;
        if (!(rc = mdb_stat(txn, st->db_route, &rs)) && rs.ms_entries != vf->route_pages)
            problem(vf, "%llu routing index pages but %llu summary pages (msadb_upgrade() rebuilds the index)",
                    (unsigned long long)rs.ms_entries, (unsigned long long)vf->route_pages);
    }
    free(tally);
    free(vb.p);
    return rc;
}

int msadb_verify(msadb_store *st, void (*report)(const char *, void *), void *ud)
{
    if (!st)
        return MSADB_EINVAL;
    if (st->scoped)
        return MSADB_ESCOPE; /* whole-store work */
    verifier vf = {0};
    vf.st = st;
    vf.report = report;
    vf.ud = ud;
    size_t n = (size_t)st->sig.block_size * st->sig.head_dim;
    vf.K = malloc(n * sizeof(float));
    vf.V = malloc(n * sizeof(float));
    vf.summ = malloc(2 * st->summ.entry);
    int rc = msadb_dockeys_open(st);
    if (rc == MSADB_ENOTFOUND)
        rc = 0; /* a read-only version-1 store: no keys */
    if (!rc) /* every record is checked: every keyed space's key is needed */
        rc = msadb_spaces_open(st);
    if (!rc)
        rc = (!vf.K || !vf.V || !vf.summ) ? MSADB_ENOMEM : msadb_snapshot_begin(st, &vf.snap);
    if (!rc) {
        rc = verify_all(&vf);
        msadb_snapshot_end(vf.snap);
    }
    free(vf.K);
    free(vf.V);
    free(vf.summ);
    free(vf.route);
    free(vf.page);
    free(vf.slot);
    if (rc)
        return rc;
    return vf.problems ? MSADB_ECORRUPT : 0;
}
