/* tenant.c -- per-space keys.  A space of an encrypted store may have a key
 * of its own (a raw key or a passphrase), independent of the store's: the
 * store key does not derive or unwrap it.  A handle that holds it
 * (msadb_space_create_keyed, msadb_space_unlock) seals that space's blocks,
 * document data, document records and slot, summary and routing pages with
 * a key derived from it; a handle without it sees the space's name and
 * counts, and nothing of its documents (docs/format.md, *Per-space keys*). */
#include <string.h>

#include <sodium.h>

#include "core/crypto.h"
#include "store/store_impl.h"

#define SPACE_KEY_RAW 1
#define SPACE_KEY_PASSPHRASE 2

const uint8_t *msadb_space_seal_key(const msadb_store *st, uint32_t space)
{
    for (unsigned i = 0; i < st->n_space_keys; i++)
        if (st->space_keys[i].id == space)
            return st->space_keys[i].key;
    return st->key;
}

int msadb_space_unlocked(const msadb_store *st, uint32_t space)
{
    return msadb_space_seal_key(st, space) != st->key;
}

int msadb_space_access(const msadb_store *st, const msadb_spacerec *r)
{
    return !(r->flags & SPACE_F_KEYED) || msadb_space_unlocked(st, r->id) ? 0 : MSADB_EKEY;
}

/* The sealing key and the key check of a space from its key info (mode
 * u32, opslimit u64, memlimit u64, salt[16]) and the key or passphrase
 * given: keyed BLAKE2b-256 of a label, the store id and the salt. */
static int space_derive(const msadb_store *st, const uint8_t *info, const unsigned char *key, const char *pass,
                        uint8_t seal[32], uint8_t check[32])
{
    uint32_t mode = msadb_get_le32(info);
    if (mode != SPACE_KEY_RAW && mode != SPACE_KEY_PASSPHRASE)
        return MSADB_ECORRUPT;
    if ((mode == SPACE_KEY_RAW) != (key != NULL))
        return MSADB_EKEY; /* a key for a passphrase's space, or the reverse */
    uint8_t base[32];
    if (mode == SPACE_KEY_RAW) {
        memcpy(base, key, 32);
    } else {
        /* bounded before any work, as the store's own parameters */
        uint64_t ops = msadb_get_le64(info + 4), mem = msadb_get_le64(info + 12);
        if (ops < crypto_pwhash_opslimit_min() || ops > crypto_pwhash_opslimit_interactive() ||
            mem < crypto_pwhash_memlimit_min() || mem > crypto_pwhash_memlimit_interactive())
            return MSADB_ECORRUPT;
        int rc = msadb_kdf(pass, info + 20, ops, mem, base);
        if (rc)
            return rc;
    }
    static const char seal_label[] = "msadb space seal v1", check_label[] = "msadb space check v1";
    uint8_t msg[sizeof check_label + 16 + MSADB_SALT_BYTES];
    for (int i = 0; i < 2; i++) {
        const char *label = i ? check_label : seal_label;
        size_t ll = strlen(label);
        memcpy(msg, label, ll);
        memcpy(msg + ll, st->store_id, 16);
        memcpy(msg + ll + 16, info + 20, MSADB_SALT_BYTES);
        crypto_generichash(i ? check : seal, 32, msg, ll + 16 + MSADB_SALT_BYTES, base, sizeof base);
    }
    sodium_memzero(base, sizeof base);
    return 0;
}

static int hold_key(msadb_store *st, uint32_t space, const uint8_t seal[32])
{
    unsigned i = 0;
    while (i < st->n_space_keys && st->space_keys[i].id != space)
        i++;
    if (i == MSADB_SPACE_KEYS_MAX)
        return MSADB_ELIMIT;
    st->space_keys[i].id = space;
    memcpy(st->space_keys[i].key, seal, 32);
    if (i == st->n_space_keys)
        st->n_space_keys++;
    return 0;
}

static int key_args_ok(const msadb_store *st, const char *name, const unsigned char *key, const char *pass)
{
    return st && msadb_space_name_valid(name) && (!key != !pass) && (!pass || pass[0]);
}

struct keyed_create {
    const char *name;
    const uint8_t *info;
    uint32_t id;
};

static int keyed_create_fn(msadb_store *st, MDB_txn *txn, void *ud)
{
    struct keyed_create *a = ud;
    int rc = msadb_space_create_txn(st, txn, a->name, &a->id);
    msadb_spacerec rec;
    if (rc || (rc = msadb_space_get_txn(txn, st, a->name, &rec)))
        return rc;
    rec.flags |= SPACE_F_KEYED;
    memcpy(rec.keyinfo, a->info, SPACE_KEYINFO_BYTES);
    if ((rc = msadb_space_put_txn(txn, st, a->name, &rec)))
        return rc;
    return msadb_meta_raise_format(txn, st, MSADB_FORMAT_SPACEKEYS);
}

int msadb_space_create_keyed(msadb_store *st, const char *name, const unsigned char *key, const char *passphrase,
                             uint32_t *id_out)
{
    if (!key_args_ok(st, name, key, passphrase))
        return MSADB_EINVAL;
    if (st->scoped)
        return MSADB_ESCOPE;
    if (!st->encrypted || !st->rec_mac)
        return MSADB_EINVAL; /* an encrypted store with record MACs (msadb_upgrade) */
    if (st->read_only)
        return MSADB_EREADONLY;
    if (st->n_space_keys == MSADB_SPACE_KEYS_MAX)
        return MSADB_ELIMIT;
    uint8_t info[SPACE_KEYINFO_BYTES], seal[32];
    msadb_put_le32(info, key ? SPACE_KEY_RAW : SPACE_KEY_PASSPHRASE);
    msadb_put_le64(info + 4, crypto_pwhash_opslimit_interactive());
    msadb_put_le64(info + 12, crypto_pwhash_memlimit_interactive());
    msadb_random(info + 20, MSADB_SALT_BYTES);
    int rc = space_derive(st, info, key, passphrase, seal, info + 36);
    struct keyed_create a = {name, info, 0};
    if (!rc)
        rc = msadb_write(st, keyed_create_fn, &a);
    if (!rc) {
        if (st->format < MSADB_FORMAT_SPACEKEYS)
            st->format = MSADB_FORMAT_SPACEKEYS;
        rc = hold_key(st, a.id, seal);
    }
    sodium_memzero(seal, sizeof seal);
    if (!rc && id_out)
        *id_out = a.id;
    return rc;
}

int msadb_space_unlock(msadb_store *st, const char *name, const unsigned char *key, const char *passphrase)
{
    if (!key_args_ok(st, name, key, passphrase))
        return MSADB_EINVAL;
    if (msadb_scope_name(st, name))
        return MSADB_ESCOPE;
    msadb_spacerec rec;
    int rc = msadb_space_read(st, name, &rec);
    if (!rc && (rc = msadb_scope_id(st, rec.id)) == 0 && !(rec.flags & SPACE_F_KEYED))
        rc = MSADB_EINVAL; /* the space has no key of its own */
    if (rc)
        return rc;
    uint8_t seal[32], check[32];
    if (!(rc = space_derive(st, rec.keyinfo, key, passphrase, seal, check)))
        rc = sodium_memcmp(check, rec.keyinfo + 36, 32) == 0 ? hold_key(st, rec.id, seal) : MSADB_EKEY;
    sodium_memzero(seal, sizeof seal);
    return rc;
}

/* Additional data of a keyed space's document record: store id, 'S',
 * document id u64 LE, space id u32 LE. */
static void docrec_ad(const msadb_store *st, uint64_t id, uint32_t space, uint8_t ad[29])
{
    memcpy(ad, st->store_id, 16);
    ad[16] = 'S';
    msadb_put_le64(ad + 17, id);
    msadb_put_le32(ad + 25, space);
}

size_t msadb_docrec_store(const msadb_store *st, uint64_t id, const msadb_docrec *d, uint8_t *p)
{
    if (!msadb_space_unlocked(st, d->space_id))
        return msadb_docrec_encode(d, p);
    uint8_t inner[DOC_REC_BYTES_V2], ad[29];
    size_t n = msadb_docrec_encode(d, inner);
    memset(p, 0, DOC_REC_WRAP_HEAD);
    p[0] = 3;
    msadb_put_le32(p + 4, d->space_id);
    docrec_ad(st, id, d->space_id, ad);
    msadb_seal(msadb_space_seal_key(st, d->space_id), ad, sizeof ad, inner, n, p + DOC_REC_WRAP_HEAD);
    return DOC_REC_WRAP_HEAD + n + MSADB_SEAL_OVERHEAD;
}

int msadb_docrec_open(const msadb_store *st, uint64_t id, const uint8_t *p, size_t len, msadb_docrec *d)
{
    if (len < 1 || p[0] != 3) { /* a keyed space's records are never stored unwrapped */
        int rc = msadb_docrec_decode(p, len, d);
        return rc ? rc : msadb_space_unlocked(st, d->space_id) ? MSADB_EAUTH : 0;
    }
    size_t n = len - DOC_REC_WRAP_HEAD - MSADB_SEAL_OVERHEAD;
    if ((len != DOC_REC_WRAP_HEAD + DOC_REC_BYTES + MSADB_SEAL_OVERHEAD &&
         len != DOC_REC_WRAP_HEAD + DOC_REC_BYTES_V2 + MSADB_SEAL_OVERHEAD) ||
        p[1] || p[2] || p[3])
        return MSADB_ECORRUPT;
    uint32_t space = msadb_get_le32(p + 4);
    memset(d, 0, sizeof *d);
    d->space_id = space;
    if (!msadb_space_unlocked(st, space))
        return MSADB_EKEY;
    uint8_t inner[DOC_REC_BYTES_V2], ad[29];
    docrec_ad(st, id, space, ad);
    if (msadb_unseal(msadb_space_seal_key(st, space), ad, sizeof ad, p + DOC_REC_WRAP_HEAD,
                     len - DOC_REC_WRAP_HEAD, inner))
        return MSADB_EAUTH;
    int rc = msadb_docrec_decode(inner, n, d);
    return rc ? rc : d->space_id != space ? MSADB_ECORRUPT : 0;
}
