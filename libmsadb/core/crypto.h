/* crypto.h -- encryption at rest: XChaCha20-Poly1305 records and key
 * derivation (Argon2id) through libsodium. */
#ifndef MSADB_CRYPTO_H
#define MSADB_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#include "core/util.h"

#define MSADB_NONCE_BYTES 24
#define MSADB_TAG_BYTES 16
#define MSADB_SEAL_OVERHEAD (MSADB_NONCE_BYTES + MSADB_TAG_BYTES)
#define MSADB_SALT_BYTES 16

/* Initializes libsodium once; 0 or MSADB_ENOMEM-style failure code. */
MSADB_HIDDEN int msadb_crypto_init(void);

/* out (len + MSADB_SEAL_OVERHEAD bytes) = nonce || ciphertext || tag. */
MSADB_HIDDEN int msadb_seal(const uint8_t key[32], const uint8_t *ad, size_t ad_len,
                            const uint8_t *in, size_t len, uint8_t *out);

/* Inverse of msadb_seal; out receives len - MSADB_SEAL_OVERHEAD bytes.
 * Errors: MSADB_ECORRUPT (too short), MSADB_EAUTH. */
MSADB_HIDDEN int msadb_unseal(const uint8_t key[32], const uint8_t *ad, size_t ad_len,
                              const uint8_t *in, size_t len, uint8_t *out);

/* Derives a key from a passphrase with Argon2id. */
MSADB_HIDDEN int msadb_kdf(const char *passphrase, const uint8_t salt[MSADB_SALT_BYTES],
                           uint64_t opslimit, uint64_t memlimit, uint8_t key[32]);

MSADB_HIDDEN void msadb_random(void *buf, size_t len);

#endif
