/* codec.h -- the block codec: one block of one plane (K[n_tok][d] and
 * V[n_tok][d]) <-> an encoded byte string.
 *
 * Encoding: quantize to the storage dtype (keys per channel within the
 * block, values per token, for int8 and q4), byte-shuffle multi-byte
 * elements, compress with zstd when that makes it smaller, then protect with
 * a CRC-32C.  Encryption (msadb_block_seal) is a separate step because the
 * additional data binding a block to its place (store, space, plane, block
 * id) is known only inside the write transaction.
 *
 * Encoded block, format v1, little-endian:
 *   off size field
 *   0   4    magic "MSB1"
 *   4   1    codec version (1)
 *   5   1    dtype (msadb_dtype)
 *   6   1    flags: bit0 byte-shuffled, bit1 zstd, bit2 encrypted
 *   7   1    reserved, 0
 *   8   2    n_tok (1..MSADB_MAX_BLOCK)
 *   10  2    head_dim (1..MSADB_MAX_HEAD_DIM)
 *   12  4    raw_len: bytes of the quantized payload before zstd
 *   16  4    payload_len: bytes after the 24-byte header
 *   20  4    CRC-32C of bytes [0,20) followed by the payload
 *   24  ...  payload (if encrypted: 24-byte nonce, ciphertext, 16-byte tag,
 *            the AEAD additional data being header bytes [0,20) + the
 *            caller's binding bytes)
 * The raw (quantized) payload layout per dtype is documented in docs/format.md.
 */
#ifndef MSADB_CODEC_H
#define MSADB_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "core/util.h"

#define MSADB_BLOCK_HEADER 24
#define MSADB_BLOCK_MAGIC "MSB1"
#define MSADB_BLOCK_F_SHUFFLE 1u
#define MSADB_BLOCK_F_ZSTD 2u
#define MSADB_BLOCK_F_ENCRYPTED 4u

typedef struct msadb_block_header {
    uint8_t version, dtype, flags;
    uint32_t n_tok, head_dim, raw_len, payload_len, crc;
} msadb_block_header;

/* Per-thread scratch state: zstd contexts and work buffers. */
typedef struct msadb_codec msadb_codec;

/* zstd_level 1..19.  Returns NULL on allocation failure. */
MSADB_HIDDEN msadb_codec *msadb_codec_new(int zstd_level);
MSADB_HIDDEN void msadb_codec_free(msadb_codec *c);

/* Upper bound of an encoded block's size, sealing overhead included. */
MSADB_HIDDEN size_t msadb_block_bound(int dtype, uint32_t n_tok, uint32_t d);

/* Encodes K and V ([n_tok][d] f32, finite) in storage dtype `dtype`.
 * Writes at most `cap` bytes to out and the size to *out_len.  If K_deq /
 * V_deq are not NULL they receive exactly what msadb_block_decode() will
 * return for this block (used to compute summaries from stored values).
 * Errors: MSADB_EINVAL, MSADB_ELIMIT (cap too small), MSADB_ENOMEM. */
MSADB_HIDDEN int msadb_block_encode(msadb_codec *c, int dtype, const float *K, const float *V,
                                    uint32_t n_tok, uint32_t d, uint8_t *out, size_t cap,
                                    size_t *out_len, float *K_deq, float *V_deq);

/* Encrypts an encoded block with XChaCha20-Poly1305 (random nonce), binding
 * it to ad[ad_len].  out must not overlap in; cap >= len + 40.  */
MSADB_HIDDEN int msadb_block_seal(const uint8_t *in, size_t len, const uint8_t key[32],
                                  const uint8_t *ad, size_t ad_len, uint8_t *out, size_t cap,
                                  size_t *out_len);

/* Parses and checks the header and CRC of an encoded block of len bytes.
 * Errors: MSADB_ECORRUPT, MSADB_EVERSION. */
MSADB_HIDDEN int msadb_block_peek(const uint8_t *in, size_t len, msadb_block_header *h);

/* Decodes a block.  Checks header, CRC, and (if encrypted) authenticates
 * with key and ad (key NULL on an encrypted block: MSADB_EKEY; failed
 * authentication: MSADB_EAUTH).  expect_d must equal the stored head_dim and
 * n_tok must not exceed max_tok.  K and V (either may be NULL) receive
 * [n_tok][d] floats.  Never reads outside in[0,len) and never returns data
 * from a block that fails a check. */
MSADB_HIDDEN int msadb_block_decode(msadb_codec *c, const uint8_t *in, size_t len,
                                    uint32_t expect_d, uint32_t max_tok, const uint8_t *key,
                                    const uint8_t *ad, size_t ad_len, float *K, float *V,
                                    uint32_t *n_tok);

#endif
