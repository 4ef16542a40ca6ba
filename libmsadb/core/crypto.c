/* crypto.c -- libsodium wrappers for sealed records and key derivation. */
#include "core/crypto.h"

#include <sodium.h>

#include "msadb.h"

int msadb_crypto_init(void)
{
    return sodium_init() < 0 ? MSADB_EIO : 0;
}

int msadb_seal(const uint8_t key[32], const uint8_t *ad, size_t ad_len, const uint8_t *in,
               size_t len, uint8_t *out)
{
    randombytes_buf(out, MSADB_NONCE_BYTES);
    unsigned long long clen = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + MSADB_NONCE_BYTES, &clen, in, len, ad, ad_len,
                                               NULL, out, key);
    return 0;
}

int msadb_unseal(const uint8_t key[32], const uint8_t *ad, size_t ad_len, const uint8_t *in,
                 size_t len, uint8_t *out)
{
    if (len < MSADB_SEAL_OVERHEAD)
        return MSADB_ECORRUPT;
    unsigned long long mlen = 0;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, &mlen, NULL, in + MSADB_NONCE_BYTES,
                                                   len - MSADB_NONCE_BYTES, ad, ad_len, in,
                                                   key) != 0)
        return MSADB_EAUTH;
    return 0;
}

int msadb_kdf(const char *passphrase, const uint8_t salt[MSADB_SALT_BYTES], uint64_t opslimit,
              uint64_t memlimit, uint8_t key[32])
{
    if (crypto_pwhash(key, 32, passphrase, strlen(passphrase), salt, opslimit, (size_t)memlimit,
                      crypto_pwhash_ALG_ARGON2ID13) != 0)
        return MSADB_ENOMEM;
    return 0;
}

void msadb_random(void *buf, size_t len) { randombytes_buf(buf, len); }
