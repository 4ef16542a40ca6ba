/* tokenizer.h -- text <-> token ids for the built-in model runtime, built
 * from the tokenizer metadata that llama.cpp's GGUF files carry.
 *
 * Two kinds (GGUF key tokenizer.ggml.model):
 *
 *   "llama"  SentencePiece-style BPE (MSADB_TOKENIZER_SPM).  Spaces become
 *            U+2581 ("▁"), a dummy "▁" is put in front of the text, and
 *            adjacent pieces are merged by score: repeatedly the adjacent
 *            pair whose concatenation is a vocabulary piece with the highest
 *            score is merged, ties going to the leftmost pair.  Characters
 *            left without a piece fall back to byte tokens "<0xNN>".
 *   "gpt2"   byte-level BPE (MSADB_TOKENIZER_BPE).  The text is cut into
 *            pre-tokens by a regular expression (GPT-2's by default, run by
 *            PCRE2), every byte becomes the token of its GPT-2 byte-to-unicode
 *            character, and merges are applied by rank within each pre-token.
 *
 * docs/tokenizer.md gives the exact rules, the span rules and every place
 * where msadb deliberately differs from the reference implementations.
 *
 * Guarantees:
 * - decode(encode(x)) == x for ANY byte string x (valid UTF-8 or not) when
 *   the vocabulary has the 256 byte tokens (SPM) or the 256 byte characters
 *   (BPE) -- true of every real llama/gpt2 vocabulary.  Bytes that are not
 *   valid UTF-8 are always encoded with byte tokens.
 * - Spans: token i covers source bytes [spans[2i], spans[2i+1]).  Spans are
 *   in order and tile the text: the first starts at 0, each starts where the
 *   previous ended, the last ends at the text length.  BOS/EOS get empty
 *   spans at 0 and at the end.
 * - A tokenizer is immutable after creation: any number of threads may
 *   encode and decode with it at once.
 *
 * Lifetimes: pointers returned by msadb_tokenizer_piece() and
 * msadb_tokenizer_token_text() point into the tokenizer and stay valid until
 * msadb_tokenizer_free().  The config's arrays are copied by
 * msadb_tokenizer_new() and may be released when it returns.
 */
#ifndef MSADB_TOKENIZER_H
#define MSADB_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "core/util.h"

/* Tokenizer kinds. */
enum {
    MSADB_TOKENIZER_SPM = 1, /* GGUF "llama" */
    MSADB_TOKENIZER_BPE = 2, /* GGUF "gpt2" */
};

/* Token types, GGUF tokenizer.ggml.token_type numbering (0 = undefined is
 * taken as normal). */
enum {
    MSADB_TOKEN_NORMAL = 1,
    MSADB_TOKEN_UNKNOWN = 2,
    MSADB_TOKEN_CONTROL = 3,
    MSADB_TOKEN_USER_DEFINED = 4,
    MSADB_TOKEN_UNUSED = 5,
    MSADB_TOKEN_BYTE = 6,
};

/* Special ids for msadb_tokenizer_special(). */
enum {
    MSADB_TOKEN_BOS = 0,
    MSADB_TOKEN_EOS = 1,
    MSADB_TOKEN_UNK = 2,
    MSADB_TOKEN_PAD = 3,
};

/* Encode flags. */
#define MSADB_TOKENIZE_ADD_BOS 1u /* put the BOS id first (ignored if none) */
#define MSADB_TOKENIZE_ADD_EOS 2u /* put the EOS id last (ignored if none) */

/* Decode flags. */
#define MSADB_DETOKENIZE_SPECIAL 1u     /* render control tokens as their text */
#define MSADB_DETOKENIZE_KEEP_SPACE 2u  /* SPM: keep the leading space of the
                                           first piece (decoding a continuation) */

/* Limits checked by msadb_tokenizer_new() and encode (MSADB_ELIMIT). */
#define MSADB_TOKENIZER_MAX_TOKENS (1u << 24)
#define MSADB_TOKENIZER_MAX_TOKEN_LEN 4096u
#define MSADB_TOKENIZER_MAX_MERGES (1u << 24)
#define MSADB_TOKENIZER_MAX_TEXT ((size_t)INT32_MAX / 4)

typedef struct msadb_tokenizer msadb_tokenizer;

/* Everything a tokenizer is built from: the arrays of GGUF's tokenizer.ggml
 * keys.  Strings are byte strings of the given lengths (lens NULL: each is
 * NUL-terminated).  Fill with msadb_tokenizer_config_init() first. */
typedef struct msadb_tokenizer_config {
    int kind;                        /* MSADB_TOKENIZER_SPM or _BPE */
    uint32_t n_tokens;               /* 1..MSADB_TOKENIZER_MAX_TOKENS */
    const char *const *tokens;       /* [n_tokens] (.tokens) */
    const uint32_t *token_lens;      /* [n_tokens] or NULL */
    const float *scores;             /* [n_tokens] (.scores) or NULL: all 0; no NaN */
    const int32_t *token_types;      /* [n_tokens] MSADB_TOKEN_* or 0, or NULL: normal */
    uint32_t n_merges;               /* BPE (.merges) */
    const char *const *merges;       /* [n_merges] "left right", in rank order */
    const uint32_t *merge_lens;      /* [n_merges] or NULL */
    int32_t bos_id, eos_id, unk_id, pad_id; /* -1 = none (default) */
    int add_bos, add_eos;            /* the model's defaults, reported by
                                        msadb_tokenizer_add_bos/_eos() */
    int add_space_prefix;            /* SPM dummy prefix (default 1) */
    const char *pretokenizer;        /* BPE: PCRE2 pattern (UTF mode), NULL =
                                        MSADB_TOKENIZER_GPT2_PATTERN */
} msadb_tokenizer_config;

/* GPT-2's pre-tokenizer.  "\s" is spelled out as the whitespace set of
 * JavaScript and of the gpt-3-encoder reference: tab, LF, VT, FF, CR, the
 * Unicode separators (\p{Z}) and U+FEFF. */
#define MSADB_TOKENIZER_WS "\\t\\n\\x{0B}\\f\\r\\p{Z}\\x{FEFF}"
#define MSADB_TOKENIZER_GPT2_PATTERN                                             \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" MSADB_TOKENIZER_WS         \
    "\\p{L}\\p{N}]+|[" MSADB_TOKENIZER_WS "]+(?![^" MSADB_TOKENIZER_WS "])|["    \
    MSADB_TOKENIZER_WS "]+"

/* Defaults: the given kind, no tokens, special ids -1, add_bos 0,
 * add_eos 0, add_space_prefix 1, GPT-2 pattern. */
MSADB_HIDDEN void msadb_tokenizer_config_init(msadb_tokenizer_config *cfg, int kind);

/* Builds a tokenizer.  Errors: MSADB_EINVAL (bad kind, NULL arrays, a bad
 * token type, NaN score, a special id out of range, a BYTE token whose text
 * is not "<0xNN>", a pattern PCRE2 refuses, or a vocabulary that can encode
 * neither every byte nor an unknown token), MSADB_ELIMIT, MSADB_ENOMEM.
 * Merges whose parts or result are not tokens are ignored; of duplicate
 * merges the first (lowest rank) counts; of duplicate token strings the
 * lowest id is the one encode produces. */
MSADB_HIDDEN int msadb_tokenizer_new(const msadb_tokenizer_config *cfg, msadb_tokenizer **out);

/* Builds a tokenizer from a GGUF file's tokenizer.ggml.* metadata (model
 * "llama" or "gpt2").  `g` is a msadb_gguf handle (gguf.h); it may be closed
 * afterwards.  Errors: MSADB_ENOTFOUND (no tokenizer.ggml.model or tokens),
 * MSADB_EDTYPE (a key of the wrong type), MSADB_EINVAL (unsupported model
 * name or inconsistent arrays), and those of msadb_tokenizer_new(). */
struct msadb_gguf;
MSADB_HIDDEN int msadb_tokenizer_from_gguf(const struct msadb_gguf *g, msadb_tokenizer **out);

/* Frees a tokenizer; NULL allowed. */
MSADB_HIDDEN void msadb_tokenizer_free(msadb_tokenizer *t);

/* Enough entries for encoding any text of `len` bytes (tokens never exceed
 * len + 3 for SPM -- the dummy prefix -- or len for BPE, plus BOS/EOS).
 * SIZE_MAX if len is above MSADB_TOKENIZER_MAX_TEXT. */
MSADB_HIDDEN size_t msadb_tokenizer_encode_bound(const msadb_tokenizer *t, size_t len);

/* Encodes text[0, len).  ids (and spans, [cap][2] int64, may be NULL)
 * receive up to cap entries; *n_tokens receives the number of tokens of the
 * whole text.  ids == NULL only counts.  Returns MSADB_ELIMIT (with
 * *n_tokens set) if cap is too small; capacity encode_bound() never is.
 * Errors: MSADB_EINVAL, MSADB_ELIMIT (len above MSADB_TOKENIZER_MAX_TEXT),
 * MSADB_ENOMEM. */
MSADB_HIDDEN int msadb_tokenizer_encode(const msadb_tokenizer *t, const char *text, size_t len,
                                        unsigned flags, int32_t *ids, int64_t *spans,
                                        size_t cap, size_t *n_tokens);

/* Decodes ids[0, n) into out (capacity cap, not NUL-terminated); *len
 * receives the byte length of the whole text.  out == NULL only measures.
 * MSADB_ELIMIT (with *len set) if cap is too small; MSADB_EINVAL for an id
 * out of range.  Control tokens produce nothing unless
 * MSADB_DETOKENIZE_SPECIAL.  SPM: "▁" becomes a space and the first piece's
 * leading space (the dummy prefix) is dropped unless
 * MSADB_DETOKENIZE_KEEP_SPACE; byte tokens give their raw byte. */
MSADB_HIDDEN int msadb_tokenizer_decode(const msadb_tokenizer *t, const int32_t *ids, size_t n,
                                        unsigned flags, char *out, size_t cap, size_t *len);

/* The bytes one token contributes to decoded text, for streaming output:
 * SPM "▁" already turned into a space (the caller drops the first space of
 * a sequence when msadb_tokenizer_space_prefix() says so), byte tokens
 * their single raw byte, control tokens nothing.  A piece may end inside a
 * UTF-8 character (byte tokens, and BPE tokens that split characters):
 * holding back an incomplete character until the next piece completes it is
 * the caller's job.  Errors: MSADB_EINVAL. */
MSADB_HIDDEN int msadb_tokenizer_piece(const msadb_tokenizer *t, int32_t id, const char **piece,
                                       size_t *len);

/* The token's string exactly as in the vocabulary (e.g. "▁the", "Ġthe",
 * "<0x0A>", "<s>").  Errors: MSADB_EINVAL. */
MSADB_HIDDEN int msadb_tokenizer_token_text(const msadb_tokenizer *t, int32_t id,
                                            const char **text, size_t *len);

/* Token type (MSADB_TOKEN_*) or MSADB_EINVAL. */
MSADB_HIDDEN int msadb_tokenizer_token_type(const msadb_tokenizer *t, int32_t id);
/* Id of a vocabulary string (the lowest id if repeated), or -1. */
MSADB_HIDDEN int32_t msadb_tokenizer_token_id(const msadb_tokenizer *t, const char *text,
                                              size_t len);

MSADB_HIDDEN int msadb_tokenizer_kind(const msadb_tokenizer *t);
MSADB_HIDDEN uint32_t msadb_tokenizer_n_vocab(const msadb_tokenizer *t);
/* MSADB_TOKEN_BOS/_EOS/_UNK/_PAD -> id, -1 if the vocabulary has none. */
MSADB_HIDDEN int32_t msadb_tokenizer_special(const msadb_tokenizer *t, int which);
/* 1 if encode puts the SPM dummy "▁" in front of the text (and decode drops
 * the first piece's leading space): a streaming caller drops that space
 * too.  0 for BPE, and for SPM without add_space_prefix or without a "▁"
 * piece. */
MSADB_HIDDEN int msadb_tokenizer_space_prefix(const msadb_tokenizer *t);
MSADB_HIDDEN int msadb_tokenizer_add_bos(const msadb_tokenizer *t);
MSADB_HIDDEN int msadb_tokenizer_add_eos(const msadb_tokenizer *t);

#endif
