/* record.c -- the record layer: every get, put and cursor read of a
 * store's named databases goes through here.  In an encrypted store whose
 * key check says v3, each value of every database but `meta` (covered as a
 * whole by the meta MAC) and `blocks` (each plane AEAD-sealed with its own
 * binding) is bound to the store's key, its store id, the database's name
 * and the record's key (docs/format.md, *Record MACs*): the summary,
 * routing and slot pages, document records (lengths, times) and space
 * records and names are sealed (XChaCha20-Poly1305, that binding as
 * additional data), every other value ends with a 16-byte MAC.
 * A database opened through msadb_dbi_open is covered without any code of
 * its own; callers see the value without its MAC or seal. */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/crypto.h"
#include "store/store_impl.h"

int msadb_dbi_open(msadb_store *st, MDB_txn *txn, const char *name, unsigned flags, MDB_dbi *dbi)
{
    int rc = mdb_dbi_open(txn, name, flags, dbi);
    if (rc)
        return rc;
    if (*dbi >= MSADB_MAX_DBI)
        return MSADB_ELIMIT;
    st->db_name[*dbi] = name;
    st->db_mac[*dbi] = strcmp(name, "meta") != 0 && strcmp(name, "blocks") != 0;
    static const char *const sealed[] = {"summ", "route", "docs", "slots", "spaces", "spaceids"};
    st->db_seal[*dbi] = 0;
    for (size_t i = 0; i < sizeof sealed / sizeof sealed[0]; i++)
        st->db_seal[*dbi] |= strcmp(name, sealed[i]) == 0;
    /* keys starting with a space id: sealed with that space's key when keyed */
    st->db_spaced[*dbi] = !strcmp(name, "slots") || !strcmp(name, "summ") || !strcmp(name, "route");
    return 0;
}

void msadb_rec_key_derive(msadb_store *st)
{
    static const char label[] = "msadb record mac v1";
    crypto_generichash(st->rec_key, sizeof st->rec_key, (const uint8_t *)label, sizeof label - 1, st->key,
                       sizeof st->key);
}

/* Nonzero when values of dbi carry a MAC, or are sealed. */
static int macced(const msadb_store *st, MDB_dbi dbi)
{
    return st->rec_mac && dbi < MSADB_MAX_DBI && st->db_mac[dbi] && !st->db_seal[dbi];
}

int msadb_rec_sealed(const msadb_store *st, MDB_dbi dbi)
{
    return st->rec_mac && dbi < MSADB_MAX_DBI && st->db_seal[dbi];
}

/* The key a sealed record is sealed with: its space's own for a page of a
 * keyed space whose key this handle holds (tenant.c), else the store's. */
static const uint8_t *seal_key(const msadb_store *st, MDB_dbi dbi, const MDB_val *k)
{
    if (!st->db_spaced[dbi] || k->mv_size < 4 || !st->n_space_keys)
        return st->key;
    return msadb_space_seal_key(st, msadb_get_be32(k->mv_data));
}

/* The binding of a record: store id, database name, record key
 * (docs/format.md); ad has room for 16 + 1 + 255 + 4 + 511 bytes. */
#define AD_MAX (16 + 1 + 255 + 4 + 511)
static size_t rec_binding(const msadb_store *st, MDB_dbi dbi, const MDB_val *k, uint8_t *ad)
{
    const char *name = st->db_name[dbi];
    size_t nl = strlen(name), ks = k->mv_size < 511 ? k->mv_size : 511;
    memcpy(ad, st->store_id, 16);
    ad[16] = (uint8_t)nl;
    memcpy(ad + 17, name, nl);
    msadb_put_le32(ad + 17 + nl, (uint32_t)k->mv_size);
    memcpy(ad + 21 + nl, k->mv_data, ks);
    return 21 + nl + ks;
}

/* MAC over the binding and the value. */
static void rec_mac(const msadb_store *st, MDB_dbi dbi, const MDB_val *k, const void *data, size_t len,
                    uint8_t out[MSADB_REC_MAC_BYTES])
{
    uint8_t ad[AD_MAX];
    size_t h = rec_binding(st, dbi, k, ad);
    crypto_generichash_state s;
    crypto_generichash_init(&s, st->rec_key, sizeof st->rec_key, MSADB_REC_MAC_BYTES);
    crypto_generichash_update(&s, ad, h);
    crypto_generichash_update(&s, data, len);
    crypto_generichash_final(&s, out, MSADB_REC_MAC_BYTES);
}

int msadb_rec_unseal(const msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v, uint8_t *out)
{
    if (v->mv_size < MSADB_SEAL_OVERHEAD)
        return MSADB_EAUTH;
    uint8_t ad[AD_MAX];
    if (msadb_unseal(seal_key(st, dbi, k), ad, rec_binding(st, dbi, k, ad), v->mv_data, v->mv_size, out))
        return MSADB_EAUTH;
    v->mv_data = out;
    v->mv_size -= MSADB_SEAL_OVERHEAD;
    return 0;
}

int msadb_rec_open(const msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v, uint8_t **buf, size_t *cap)
{
    if (!msadb_rec_sealed(st, dbi))
        return msadb_rec_check(st, dbi, k, v);
    if (v->mv_size < MSADB_SEAL_OVERHEAD)
        return MSADB_EAUTH;
    if (msadb_grow(buf, cap, v->mv_size - MSADB_SEAL_OVERHEAD + 1, 1, 4096))
        return MSADB_ENOMEM;
    return msadb_rec_unseal(st, dbi, k, v, *buf);
}

int msadb_rec_get_into(MDB_txn *txn, const msadb_store *st, MDB_dbi dbi, const MDB_val *k, void *out, size_t cap,
                       size_t *len)
{
    MDB_val key = *k, v;
    int rc = mdb_get(txn, dbi, &key, &v);
    if (rc)
        return rc;
    if (msadb_rec_sealed(st, dbi)) {
        if (v.mv_size < MSADB_SEAL_OVERHEAD || v.mv_size - MSADB_SEAL_OVERHEAD > cap)
            return MSADB_EAUTH;
        rc = msadb_rec_unseal(st, dbi, &key, &v, out);
    } else if (!(rc = msadb_rec_check(st, dbi, &key, &v))) {
        if (v.mv_size > cap)
            return MSADB_ECORRUPT;
        memcpy(out, v.mv_data, v.mv_size);
    }
    if (!rc)
        *len = v.mv_size;
    return rc;
}

int msadb_rec_read(MDB_txn *txn, const msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v, uint8_t **buf,
                   size_t *cap)
{
    MDB_val key = *k;
    int rc = mdb_get(txn, dbi, &key, v);
    return rc ? rc : msadb_rec_open(st, dbi, &key, v, buf, cap);
}

int msadb_rec_check(const msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v)
{
    if (msadb_rec_sealed(st, dbi))
        return MSADB_EINVAL; /* read with msadb_rec_read / msadb_rec_open */
    if (!macced(st, dbi))
        return 0;
    if (v->mv_size < MSADB_REC_MAC_BYTES)
        return MSADB_EAUTH;
    size_t n = v->mv_size - MSADB_REC_MAC_BYTES;
    uint8_t mac[MSADB_REC_MAC_BYTES];
    rec_mac(st, dbi, k, v->mv_data, n, mac);
    if (sodium_memcmp(mac, (const uint8_t *)v->mv_data + n, sizeof mac) != 0)
        return MSADB_EAUTH;
    v->mv_size = n;
    return 0;
}

int msadb_rec_get(MDB_txn *txn, const msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v)
{
    MDB_val key = *k;
    int rc = mdb_get(txn, dbi, &key, v);
    return rc ? rc : msadb_rec_check(st, dbi, &key, v);
}

int msadb_rec_cursor_get(const msadb_store *st, MDB_cursor *cur, MDB_val *k, MDB_val *v, MDB_cursor_op op,
                         uint8_t **buf, size_t *cap)
{
    int rc = mdb_cursor_get(cur, k, v, op);
    return rc ? rc : msadb_rec_open(st, mdb_cursor_dbi(cur), k, v, buf, cap);
}

int msadb_rec_each(MDB_txn *txn, const msadb_store *st, MDB_dbi dbi,
                   int (*fn)(const MDB_val *k, const MDB_val *v, void *ud), void *ud)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc)
        return rc;
    MDB_val k, v;
    uint8_t *buf = NULL;
    size_t cap = 0;
    for (rc = msadb_rec_cursor_get(st, cur, &k, &v, MDB_FIRST, &buf, &cap); rc == 0;
         rc = msadb_rec_cursor_get(st, cur, &k, &v, MDB_NEXT, &buf, &cap))
        if ((rc = fn(&k, &v, ud)))
            break;
    free(buf);
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* A sealed record: reserves the sealed size and seals data into it; with
 * MDB_RESERVE the caller fills st->seal_buf first (msadb_rec_seal). */
static int sealed_put(MDB_txn *txn, msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v, unsigned flags)
{
    MDB_val key = *k, r = {v->mv_size + MSADB_SEAL_OVERHEAD, NULL};
    int rc = mdb_put(txn, dbi, &key, &r, flags | MDB_RESERVE);
    if (rc)
        return rc;
    if (flags & MDB_RESERVE) {
        if (msadb_grow(&st->seal_buf, &st->seal_cap, v->mv_size + 1, 1, 4096))
            return MSADB_ENOMEM;
        st->seal_dst = r.mv_data;
        v->mv_data = st->seal_buf;
        return 0;
    }
    uint8_t ad[AD_MAX];
    return msadb_seal(seal_key(st, dbi, k), ad, rec_binding(st, dbi, k, ad), v->mv_data, v->mv_size, r.mv_data);
}

int msadb_rec_put(MDB_txn *txn, msadb_store *st, MDB_dbi dbi, const MDB_val *k, MDB_val *v, unsigned flags)
{
    MDB_val key = *k;
    if (msadb_rec_sealed(st, dbi))
        return sealed_put(txn, st, dbi, k, v, flags);
    if (!macced(st, dbi))
        return mdb_put(txn, dbi, &key, v, flags);
    const void *data = v->mv_data;
    size_t n = v->mv_size;
    MDB_val r = {n + MSADB_REC_MAC_BYTES, NULL};
    int rc = mdb_put(txn, dbi, &key, &r, flags | MDB_RESERVE);
    if (rc)
        return rc;
    if (flags & MDB_RESERVE) {
        v->mv_data = r.mv_data; /* the caller fills it, then msadb_rec_seal() */
        return 0;
    }
    memcpy(r.mv_data, data, n);
    r.mv_size = n;
    msadb_rec_seal(st, dbi, k, &r);
    return 0;
}

void msadb_rec_seal(msadb_store *st, MDB_dbi dbi, const MDB_val *k, const MDB_val *v)
{
    if (msadb_rec_sealed(st, dbi)) {
        uint8_t ad[AD_MAX];
        msadb_seal(seal_key(st, dbi, k), ad, rec_binding(st, dbi, k, ad), v->mv_data, v->mv_size, st->seal_dst);
        st->seal_dst = NULL;
    } else if (macced(st, dbi))
        rec_mac(st, dbi, k, v->mv_data, v->mv_size, (uint8_t *)v->mv_data + v->mv_size);
}

/* Rewrites every value of one database with its MAC appended (the keys
 * are gathered first, so the rewrite never runs under an open cursor). */
static int add_macs(msadb_store *st, MDB_txn *txn, MDB_dbi dbi)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc)
        return rc;
    uint8_t *keys = NULL;
    size_t used = 0, cap = 0;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size > 255 || msadb_grow(&keys, &cap, used + 1 + k.mv_size, 1, 4096)) {
            rc = k.mv_size > 255 ? MSADB_ECORRUPT : MSADB_ENOMEM;
            break;
        }
        keys[used] = (uint8_t)k.mv_size;
        memcpy(keys + used + 1, k.mv_data, k.mv_size);
        used += 1 + k.mv_size;
    }
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        rc = 0;
    uint8_t *buf = NULL;
    size_t bcap = 0;
    for (size_t off = 0; !rc && off < used; off += 1 + keys[off]) {
        MDB_val key = {keys[off], keys + off + 1};
        if ((rc = mdb_get(txn, dbi, &key, &v)))
            break;
        if (msadb_grow(&buf, &bcap, v.mv_size + 1, 1, 4096)) {
            rc = MSADB_ENOMEM;
            break;
        }
        memcpy(buf, v.mv_data, v.mv_size);
        MDB_val nv = {v.mv_size, buf};
        rc = msadb_rec_put(txn, st, dbi, &key, &nv, 0);
    }
    free(buf);
    free(keys);
    return rc;
}

int msadb_rec_upgrade(msadb_store *st, MDB_txn *txn)
{
    if (st->rec_mac)
        return 0;
    st->rec_mac = 1;
    int rc = 0;
    for (MDB_dbi d = 0; !rc && d < MSADB_MAX_DBI; d++)
        if (st->db_name[d] && st->db_mac[d])
            rc = add_macs(st, txn, d);
    if (rc)
        st->rec_mac = 0;
    return rc;
}

int msadb_rec_walk(msadb_store *st, MDB_txn *txn, void (*bad)(const char *db, const MDB_val *k, void *ud),
                   void *ud)
{
    if (!st->rec_mac)
        return 0;
    for (MDB_dbi d = 0; d < MSADB_MAX_DBI; d++) {
        if (!st->db_name[d] || !st->db_mac[d])
            continue;
        MDB_cursor *cur;
        int rc = mdb_cursor_open(txn, d, &cur);
        if (rc)
            return rc;
        MDB_val k, v;
        uint8_t *buf = NULL;
        size_t cap = 0;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            int bad_rc = msadb_rec_open(st, d, &k, &v, &buf, &cap);
            if (bad_rc == MSADB_ENOMEM) {
                rc = bad_rc;
                break;
            }
            if (bad_rc)
                bad(st->db_name[d], &k, ud);
        }
        free(buf);
        mdb_cursor_close(cur);
        if (rc != MDB_NOTFOUND)
            return rc;
    }
    return 0;
}
