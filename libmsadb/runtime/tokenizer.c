/* tokenizer.c -- SentencePiece-style ("llama") and byte-level BPE ("gpt2")
 * tokenizers built from GGUF tokenizer metadata.  See tokenizer.h for the
 * contract and docs/tokenizer.md for the rules and their reasons.
 *
 * Both merge loops keep the text as a doubly linked list of symbols and a
 * binary min-heap of candidate pairs keyed so that the pair to merge next is
 * always on top; a popped candidate is checked against the current list and
 * dropped when stale.  That is O(n log n) on any input, including a single
 * megabyte-long word. */
#include "runtime/tokenizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "runtime/gguf.h"
#include "msadb.h"

/* U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's visible space. */
static const char SPM_SPACE[3] = {(char)0xE2, (char)0x96, (char)0x81};

/* ------------------------------------------------------------------------ */
/* Hashing                                                                  */
/* ------------------------------------------------------------------------ */

/* A multiply-xorshift hash over 8-byte words: fast on the short strings a
 * vocabulary holds, and well mixed in the low bits used as slot index. */
static uint64_t hash_bytes(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        uint64_t w = 0;
        memcpy(&w, p, n);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    }
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_pair(int32_t a, int32_t b)
{
    uint64_t h = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

/* Smallest power of two >= 2 * n (load factor at most one half). */
static uint32_t table_size(uint32_t n)
{
    uint32_t s = 16;
    while (s < 2 * (uint64_t)n)
        s <<= 1;
    return s;
}

/* ------------------------------------------------------------------------ */
/* The tokenizer                                                            */
/* ------------------------------------------------------------------------ */

typedef struct user_token {
    uint8_t first; /* first source byte the token matches */
    uint32_t len;
    int32_t id;
} user_token;

struct msadb_tokenizer {
    int kind;
    uint32_t n;
    char *text;               /* token strings, each NUL-terminated */
    uint32_t *text_off, *text_len;
    char *piece;              /* bytes each token decodes to */
    uint32_t *piece_off, *piece_len;
    float *scores;
    uint32_t *score_key;      /* SPM heap order: higher score -> smaller key */
    uint8_t *types;
    int32_t special[4];
    int add_bos, add_eos, space_prefix;
    uint32_t max_len;         /* longest token string */

    /* token string -> lowest id: open addressing, `vmask + 1` slots */
    uint32_t vmask;
    int32_t *vslot;
    uint32_t *vtag;

    /* SPM: id of "<0xNN>"; BPE: id of byte b's GPT-2 character; -1 none */
    int32_t byte_tok[256];
    int32_t spm_space;        /* SPM: id of "▁" if mergeable, else -1 */
    int spm_cut;              /* SPM: no piece has "▁" after another character */

    /* BPE merges by rank, and (left, right) -> rank */
    uint32_t n_ranks;
    int32_t *m_left, *m_right, *m_out;
    uint32_t pmask;
    uint64_t *pkey;
    int32_t *prank;

    /* user-defined tokens, matched in the text before anything else */
    uint32_t n_user;
    user_token *user;
    uint32_t user_first[257]; /* user[] index range per first byte */

    pcre2_code *re;
};

static int type_mergeable(uint8_t type)
{
    /* SentencePiece merges into NORMAL, USER_DEFINED and UNUSED pieces;
     * control, unknown and byte pieces are reserved and never formed. */
    return type == MSADB_TOKEN_NORMAL || type == MSADB_TOKEN_USER_DEFINED ||
           type == MSADB_TOKEN_UNUSED;
}

static const char *tok_str(const msadb_tokenizer *t, int32_t id)
{
    return t->text + t->text_off[id];
}

/* Id of a token string, -1 if absent. */
static int32_t vocab_find(const msadb_tokenizer *t, const char *s, size_t len)
{
    if (len == 0 || len > t->max_len)
        return -1;
    uint64_t h = hash_bytes(s, len);
    uint32_t tag = (uint32_t)(h >> 32);
    for (uint32_t i = (uint32_t)h & t->vmask;; i = (i + 1) & t->vmask) {
        int32_t id = t->vslot[i];
        if (id < 0)
            return -1;
        if (t->vtag[i] == tag && t->text_len[id] == len && memcmp(tok_str(t, id), s, len) == 0)
            return id;
    }
}

static void vocab_insert(msadb_tokenizer *t, int32_t id)
{
    const char *s = tok_str(t, id);
    size_t len = t->text_len[id];
    uint64_t h = hash_bytes(s, len);
    uint32_t tag = (uint32_t)(h >> 32);
    for (uint32_t i = (uint32_t)h & t->vmask;; i = (i + 1) & t->vmask) {
        int32_t old = t->vslot[i];
        if (old < 0) {
            t->vslot[i] = id;
            t->vtag[i] = tag;
            return;
        }
        if (t->vtag[i] == tag && t->text_len[old] == len && memcmp(tok_str(t, old), s, len) == 0)
            return; /* repeated string: the lowest id stays */
    }
}

static int32_t pair_rank(const msadb_tokenizer *t, int32_t a, int32_t b)
{
    if (t->pmask == 0)
        return -1;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (uint32_t i = (uint32_t)hash_pair(a, b) & t->pmask;; i = (i + 1) & t->pmask) {
        if (t->pkey[i] == UINT64_MAX)
            return -1;
        if (t->pkey[i] == key)
            return t->prank[i];
    }
}

/* Returns 1 if inserted, 0 if the pair already had a (lower) rank. */
static int pair_insert(msadb_tokenizer *t, int32_t a, int32_t b, int32_t rank)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (uint32_t i = (uint32_t)hash_pair(a, b) & t->pmask;; i = (i + 1) & t->pmask) {
        if (t->pkey[i] == UINT64_MAX) {
            t->pkey[i] = key;
            t->prank[i] = rank;
            return 1;
        }
        if (t->pkey[i] == key)
            return 0;
    }
}

/* ------------------------------------------------------------------------ */
/* UTF-8                                                                    */
/* ------------------------------------------------------------------------ */

/* Length of the well-formed UTF-8 character at s (at most n bytes), or 0 if
 * the bytes there are not one (overlong forms, surrogates and code points
 * above U+10FFFF are refused, as RFC 3629 and PCRE2 require). */
static size_t utf8_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    out[0] = (char)(0xE0 | cp >> 12);
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

/* GPT-2's byte-to-unicode map: printable Latin-1 bytes ('!'..'~',
 * U+00A1..U+00AC, U+00AE..U+00FF) stand for themselves; the other 68 bytes
 * take U+0100, U+0101, ... in byte order, so that every byte has a visible,
 * non-space character and token strings never contain raw whitespace. */
static uint32_t gpt2_byte_char(unsigned b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE))
        return b;
    uint32_t k = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE)))
            k++;
    return 0x100 + k;
}

/* Inverse map: the byte a code point stands for, or -1. */
static int gpt2_char_byte(uint32_t cp)
{
    if (cp < 0x100) {
        int self = (cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || cp >= 0xAE;
        return self ? (int)cp : -1;
    }
    if (cp >= 0x100 + 68)
        return -1;
    uint32_t k = 0;
    for (unsigned x = 0; x < 256; x++) {
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE))) {
            if (k == cp - 0x100)
                return (int)x;
            k++;
        }
    }
    return -1;
}

/* Code point of the well-formed character at s of length len. */
static uint32_t utf8_decode(const uint8_t *s, size_t len)
{
    if (len == 1)
        return s[0];
    uint32_t cp = s[0] & (0x7F >> len);
    for (size_t i = 1; i < len; i++)
        cp = cp << 6 | (s[i] & 0x3F);
    return cp;
}

/* ------------------------------------------------------------------------ */
/* Construction                                                             */
/* ------------------------------------------------------------------------ */

void msadb_tokenizer_config_init(msadb_tokenizer_config *cfg, int kind)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof *cfg);
    cfg->kind = kind;
    cfg->bos_id = cfg->eos_id = cfg->unk_id = cfg->pad_id = -1;
    cfg->add_space_prefix = 1;
}

static size_t cfg_len(const char *const *strs, const uint32_t *lens, uint32_t i)
{
    return lens ? lens[i] : strlen(strs[i]);
}

static int parse_byte_token(const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    const char *h = strchr(hex, s[3]), *l = strchr(hex, s[4]);
    if (!h || !l || s[3] == 0 || s[4] == 0)
        return -1;
    return (int)((h - hex) * 16 + (l - hex));
}

static int check_config(const msadb_tokenizer_config *cfg)
{
    if (cfg->kind != MSADB_TOKENIZER_SPM && cfg->kind != MSADB_TOKENIZER_BPE)
        return MSADB_EINVAL;
    if (cfg->n_tokens == 0 || !cfg->tokens)
        return MSADB_EINVAL;
    if (cfg->n_tokens > MSADB_TOKENIZER_MAX_TOKENS || cfg->n_merges > MSADB_TOKENIZER_MAX_MERGES)
        return MSADB_ELIMIT;
    if (cfg->n_merges > 0 && !cfg->merges)
        return MSADB_EINVAL;
    const int32_t ids[4] = {cfg->bos_id, cfg->eos_id, cfg->unk_id, cfg->pad_id};
    for (int i = 0; i < 4; i++)
        if (ids[i] < -1 || ids[i] >= (int64_t)cfg->n_tokens)
            return MSADB_EINVAL;
    for (uint32_t i = 0; i < cfg->n_tokens; i++) {
        if (!cfg->tokens[i])
            return MSADB_EINVAL;
        if (cfg_len(cfg->tokens, cfg->token_lens, i) > MSADB_TOKENIZER_MAX_TOKEN_LEN)
            return MSADB_ELIMIT;
        if (cfg->token_types && (cfg->token_types[i] < 0 || cfg->token_types[i] > 6))
            return MSADB_EINVAL;
        if (cfg->scores && isnan(cfg->scores[i]))
            return MSADB_EINVAL;
    }
    for (uint32_t i = 0; i < cfg->n_merges; i++) {
        if (!cfg->merges[i])
            return MSADB_EINVAL;
        if (cfg_len(cfg->merges, cfg->merge_lens, i) > 2 * MSADB_TOKENIZER_MAX_TOKEN_LEN + 1)
            return MSADB_ELIMIT;
    }
    return 0;
}

/* Copies the token strings, types and scores, and builds the string map. */
static int load_tokens(msadb_tokenizer *t, const msadb_tokenizer_config *cfg)
{
    uint32_t n = cfg->n_tokens;
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += cfg_len(cfg->tokens, cfg->token_lens, i) + 1;
    t->text = malloc(total);
    t->text_off = malloc(n * sizeof *t->text_off);
    t->text_len = malloc(n * sizeof *t->text_len);
    t->types = malloc(n);
    t->scores = malloc(n * sizeof *t->scores);
    t->score_key = malloc(n * sizeof *t->score_key);
    t->vmask = table_size(n) - 1;
    t->vslot = malloc(((size_t)t->vmask + 1) * sizeof *t->vslot);
    t->vtag = malloc(((size_t)t->vmask + 1) * sizeof *t->vtag);
    if (!t->text || !t->text_off || !t->text_len || !t->types || !t->scores ||
        !t->score_key || !t->vslot || !t->vtag)
        return MSADB_ENOMEM;
    memset(t->vslot, 0xFF, ((size_t)t->vmask + 1) * sizeof *t->vslot);
    size_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t len = cfg_len(cfg->tokens, cfg->token_lens, i);
        memcpy(t->text + off, cfg->tokens[i], len);
        t->text[off + len] = 0;
        t->text_off[i] = (uint32_t)off;
        t->text_len[i] = (uint32_t)len;
        off += len + 1;
        if (len > t->max_len)
            t->max_len = (uint32_t)len;
        int type = cfg->token_types ? cfg->token_types[i] : MSADB_TOKEN_NORMAL;
        t->types[i] = (uint8_t)(type == 0 ? MSADB_TOKEN_NORMAL : type);
        float s = cfg->scores ? cfg->scores[i] + 0.0f : 0.0f; /* -0 -> +0 */
        t->scores[i] = s;
        /* Map the float onto an unsigned order, then invert it so that the
         * min-heap pops the highest score first. */
        uint32_t u;
        memcpy(&u, &s, 4);
        u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
        t->score_key[i] = ~u;
    }
    for (uint32_t i = 0; i < n; i++)
        if (t->text_len[i] > 0)
            vocab_insert(t, (int32_t)i);
    return 0;
}

static int user_cmp(const void *a, const void *b)
{
    const user_token *x = a, *y = b;
    if (x->first != y->first)
        return x->first < y->first ? -1 : 1;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1; /* longest first */
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Collects user-defined tokens, bucketed by the source byte they start
 * with (for SPM a leading "▁" matches a space). */
static int load_user_tokens(msadb_tokenizer *t)
{
    uint32_t count = 0;
    for (uint32_t i = 0; i < t->n; i++)
        if (t->types[i] == MSADB_TOKEN_USER_DEFINED && t->text_len[i] > 0)
            count++;
    memset(t->user_first, 0, sizeof t->user_first);
    if (count == 0)
        return 0;
    t->user = malloc(count * sizeof *t->user);
    if (!t->user)
        return MSADB_ENOMEM;
    for (uint32_t i = 0; i < t->n; i++) {
        if (t->types[i] != MSADB_TOKEN_USER_DEFINED || t->text_len[i] == 0)
            continue;
        const char *s = tok_str(t, (int32_t)i);
        uint8_t first = (uint8_t)s[0];
        if (t->kind == MSADB_TOKENIZER_SPM && t->text_len[i] >= 3 && memcmp(s, SPM_SPACE, 3) == 0)
            first = ' ';
        t->user[t->n_user++] = (user_token){first, t->text_len[i], (int32_t)i};
    }
    qsort(t->user, t->n_user, sizeof *t->user, user_cmp);
    /* user_first[b] .. user_first[b + 1] is the bucket of byte b. */
    for (uint32_t i = 0; i < t->n_user; i++)
        t->user_first[t->user[i].first + 1]++;
    for (int b = 0; b < 256; b++)
        t->user_first[b + 1] += t->user_first[b];
    return 0;
}

/* Length of source text matched by user token u at s, 0 if none.  For SPM a
 * "▁" in the token matches a source space, as in the normalized text. */
static size_t user_match(const msadb_tokenizer *t, const user_token *u, const uint8_t *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)tok_str(t, u->id);
    size_t i = 0, j = 0;
    while (j < u->len) {
        if (i >= n)
            return 0;
        if (t->kind == MSADB_TOKENIZER_SPM && u->len - j >= 3 && memcmp(p + j, SPM_SPACE, 3) == 0) {
            if (s[i] != ' ')
                return 0;
            i++;
            j += 3;
        } else {
            if (s[i] != p[j])
                return 0;
            i++;
            j++;
        }
    }
    return i;
}

/* Longest user-defined token at s; its id and source length, or -1. */
static int32_t user_find(const msadb_tokenizer *t, const uint8_t *s, size_t n, size_t *mlen)
{
    for (uint32_t k = t->user_first[s[0]]; k < t->user_first[s[0] + 1]; k++) {
        size_t m = user_match(t, &t->user[k], s, n);
        if (m > 0) {
            *mlen = m;
            return t->user[k].id;
        }
    }
    return -1;
}

/* SPM: byte tokens by value, the "▁" piece, and what each token decodes to. */
static int setup_spm(msadb_tokenizer *t)
{
    for (uint32_t i = 0; i < t->n; i++) {
        if (t->types[i] != MSADB_TOKEN_BYTE)
            continue;
        int b = parse_byte_token(tok_str(t, (int32_t)i), t->text_len[i]);
        if (b < 0)
            return MSADB_EINVAL;
        if (t->byte_tok[b] < 0)
            t->byte_tok[b] = (int32_t)i;
    }
    int32_t sp = vocab_find(t, SPM_SPACE, 3);
    t->spm_space = (sp >= 0 && type_mergeable(t->types[sp])) ? sp : -1;
    /* Without a "▁" piece the dummy prefix could vanish (nothing to emit
     * for it) while decode still dropped a space: turn it off instead. */
    if (t->spm_space < 0)
        t->space_prefix = 0;
    /* If every "▁" inside a piece starts it or follows another "▁" (true of
     * SentencePiece models trained with split_by_whitespace, the default),
     * no merge can join a character to a following "▁", so the text can be
     * merged word by word: small heaps that stay in cache. */
    t->spm_cut = 1;
    for (uint32_t i = 0; i < t->n && t->spm_cut; i++) {
        const char *s = tok_str(t, (int32_t)i);
        size_t len = t->text_len[i];
        if (!type_mergeable(t->types[i]))
            continue;
        for (size_t k = 1; k + 3 <= len; k++)
            if (memcmp(s + k, SPM_SPACE, 3) == 0 && (k < 3 || memcmp(s + k - 3, SPM_SPACE, 3) != 0))
                t->spm_cut = 0;
    }
    return 0;
}

/* BPE: a token spelled in byte characters, which decoding maps back to
 * bytes; control, unknown and user-defined tokens decode as plain text (or
 * not at all), so encoding must never produce them from bytes. */
static int32_t bpe_find(const msadb_tokenizer *t, const char *s, size_t len)
{
    int32_t id = vocab_find(t, s, len);
    if (id < 0)
        return -1;
    uint8_t type = t->types[id];
    return (type == MSADB_TOKEN_NORMAL || type == MSADB_TOKEN_UNUSED || type == MSADB_TOKEN_BYTE)
               ? id
               : -1;
}

/* BPE: the token of every byte's character, and the merges table. */
static int setup_bpe(msadb_tokenizer *t, const msadb_tokenizer_config *cfg)
{
    for (unsigned b = 0; b < 256; b++) {
        char ch[4];
        size_t l = utf8_put(gpt2_byte_char(b), ch);
        t->byte_tok[b] = bpe_find(t, ch, l);
    }
    if (cfg->n_merges == 0)
        return 0;
    t->m_left = malloc(cfg->n_merges * sizeof(int32_t));
    t->m_right = malloc(cfg->n_merges * sizeof(int32_t));
    t->m_out = malloc(cfg->n_merges * sizeof(int32_t));
    t->pmask = table_size(cfg->n_merges) - 1;
    t->pkey = malloc(((size_t)t->pmask + 1) * sizeof *t->pkey);
    t->prank = malloc(((size_t)t->pmask + 1) * sizeof *t->prank);
    char *joined = malloc(2 * MSADB_TOKENIZER_MAX_TOKEN_LEN + 2);
    if (!t->m_left || !t->m_right || !t->m_out || !t->pkey || !t->prank || !joined) {
        free(joined);
        return MSADB_ENOMEM;
    }
    memset(t->pkey, 0xFF, ((size_t)t->pmask + 1) * sizeof *t->pkey);
    for (uint32_t i = 0; i < cfg->n_merges; i++) {
        const char *m = cfg->merges[i];
        size_t len = cfg_len(cfg->merges, cfg->merge_lens, i);
        /* "left right": split at the first space after the first byte. */
        const char *sp = len > 1 ? memchr(m + 1, ' ', len - 1) : NULL;
        if (!sp)
            continue;
        size_t ll = (size_t)(sp - m), rl = len - ll - 1;
        int32_t a = bpe_find(t, m, ll), b = bpe_find(t, sp + 1, rl);
        memcpy(joined, m, ll);
        memcpy(joined + ll, sp + 1, rl);
        int32_t c = bpe_find(t, joined, ll + rl);
        if (a < 0 || b < 0 || c < 0)
            continue; /* a merge that cannot produce a token is never useful */
        int32_t rank = (int32_t)t->n_ranks;
        if (!pair_insert(t, a, b, rank))
            continue;
        t->m_left[rank] = a;
        t->m_right[rank] = b;
        t->m_out[rank] = c;
        t->n_ranks++;
    }
    free(joined);
    return 0;
}

/* Decoded bytes of one token, into out (room for 3x the token's length). */
static size_t make_piece(const msadb_tokenizer *t, int32_t id, char *out)
{
    const char *s = tok_str(t, id);
    size_t len = t->text_len[id], o = 0;
    uint8_t type = t->types[id];
    if (type == MSADB_TOKEN_CONTROL)
        return 0;
    if (t->kind == MSADB_TOKENIZER_SPM) {
        if (type == MSADB_TOKEN_BYTE) {
            out[0] = (char)parse_byte_token(s, len);
            return 1;
        }
        if (type == MSADB_TOKEN_UNKNOWN) { /* SentencePiece shows " ⁇ " */
            memcpy(out, " \xE2\x81\x87 ", 5);
            return 5;
        }
        for (size_t i = 0; i < len;) {
            if (len - i >= 3 && memcmp(s + i, SPM_SPACE, 3) == 0) {
                out[o++] = ' ';
                i += 3;
            } else {
                out[o++] = s[i++];
            }
        }
        return o;
    }
    if (type == MSADB_TOKEN_USER_DEFINED || type == MSADB_TOKEN_UNKNOWN) {
        memcpy(out, s, len); /* added tokens are stored as plain text */
        return len;
    }
    /* Byte-level: every character stands for one byte; a character outside
     * the map (not produced by this scheme) is kept as it is. */
    const uint8_t *u = (const uint8_t *)s;
    for (size_t i = 0; i < len;) {
        size_t cl = utf8_len(u + i, len - i);
        int b = cl ? gpt2_char_byte(utf8_decode(u + i, cl)) : -1;
        if (b >= 0) {
            out[o++] = (char)b;
        } else {
            cl = cl ? cl : 1;
            memcpy(out + o, s + i, cl);
            o += cl;
        }
        i += cl;
    }
    return o;
}

static int build_pieces(msadb_tokenizer *t)
{
    size_t total = 0;
    for (uint32_t i = 0; i < t->n; i++)
        total += (size_t)t->text_len[i] + 5;
    t->piece = malloc(total);
    t->piece_off = malloc(t->n * sizeof *t->piece_off);
    t->piece_len = malloc(t->n * sizeof *t->piece_len);
    if (!t->piece || !t->piece_off || !t->piece_len)
        return MSADB_ENOMEM;
    size_t off = 0;
    for (uint32_t i = 0; i < t->n; i++) {
        size_t l = make_piece(t, (int32_t)i, t->piece + off);
        t->piece_off[i] = (uint32_t)off;
        t->piece_len[i] = (uint32_t)l;
        off += l;
    }
    return 0;
}

static int compile_pattern(msadb_tokenizer *t, const char *pattern)
{
    int err;
    PCRE2_SIZE erroff;
    t->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                          &err, &erroff, NULL);
    if (!t->re)
        return err == PCRE2_ERROR_NOMEMORY ? MSADB_ENOMEM : MSADB_EINVAL;
    /* JIT is an optimization only: without it (no JIT support, or no
     * executable memory) the interpreter gives the same matches. */
    (void)pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);
    return 0;
}

/* Every byte must be encodable: by its byte token, or else as unknown. */
static int check_coverage(const msadb_tokenizer *t)
{
    if (t->special[MSADB_TOKEN_UNK] >= 0)
        return 0;
    for (int b = 0; b < 256; b++)
        if (t->byte_tok[b] < 0)
            return MSADB_EINVAL;
    return 0;
}

int msadb_tokenizer_new(const msadb_tokenizer_config *cfg, msadb_tokenizer **out)
{
    if (!out)
        return MSADB_EINVAL;
    *out = NULL;
    if (!cfg)
        return MSADB_EINVAL;
    int rc = check_config(cfg);
    if (rc)
        return rc;
    msadb_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return MSADB_ENOMEM;
    t->kind = cfg->kind;
    t->n = cfg->n_tokens;
    t->special[MSADB_TOKEN_BOS] = cfg->bos_id;
    t->special[MSADB_TOKEN_EOS] = cfg->eos_id;
    t->special[MSADB_TOKEN_UNK] = cfg->unk_id;
    t->special[MSADB_TOKEN_PAD] = cfg->pad_id;
    t->add_bos = cfg->add_bos != 0;
    t->add_eos = cfg->add_eos != 0;
    t->space_prefix = cfg->add_space_prefix != 0;
    t->spm_space = -1;
    for (int b = 0; b < 256; b++)
        t->byte_tok[b] = -1;
    rc = load_tokens(t, cfg);
    if (!rc)
        rc = load_user_tokens(t);
    if (!rc)
        rc = t->kind == MSADB_TOKENIZER_SPM ? setup_spm(t) : setup_bpe(t, cfg);
    if (!rc && t->kind == MSADB_TOKENIZER_BPE)
        rc = compile_pattern(t, cfg->pretokenizer ? cfg->pretokenizer
                                                  : MSADB_TOKENIZER_GPT2_PATTERN);
    if (!rc)
        rc = check_coverage(t);
    if (!rc)
        rc = build_pieces(t);
    if (rc) {
        msadb_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void msadb_tokenizer_free(msadb_tokenizer *t)
{
    if (!t)
        return;
    free(t->text);
    free(t->text_off);
    free(t->text_len);
    free(t->piece);
    free(t->piece_off);
    free(t->piece_len);
    free(t->scores);
    free(t->score_key);
    free(t->types);
    free(t->vslot);
    free(t->vtag);
    free(t->m_left);
    free(t->m_right);
    free(t->m_out);
    free(t->pkey);
    free(t->prank);
    free(t->user);
    if (t->re)
        pcre2_code_free(t->re);
    free(t);
}

/* ------------------------------------------------------------------------ */
/* Encoding: shared pieces                                                  */
/* ------------------------------------------------------------------------ */

/* Output sink: stores while there is room, always counts. */
typedef struct sink {
    int32_t *ids;
    int64_t *spans;
    size_t cap, n;
    int last_unk; /* the last token was an unknown from fallback (SPM) */
} sink;

static void sink_put(sink *o, int32_t id, size_t start, size_t end)
{
    if (o->ids && o->n < o->cap) {
        o->ids[o->n] = id;
        if (o->spans) {
            o->spans[2 * o->n] = (int64_t)start;
            o->spans[2 * o->n + 1] = (int64_t)end;
        }
    }
    o->n++;
    o->last_unk = 0;
}

/* One candidate pair in a merge heap.  key orders the heap (smallest
 * first); the low 32 bits of key are the left symbol's index. */
typedef struct cand {
    uint64_t key;
    int32_t right;
    int32_t aux; /* SPM: id of the merged piece; BPE: unused */
} cand;

typedef struct heap {
    cand *a;
    size_t n, cap;
} heap;

static int heap_push(heap *h, uint64_t key, int32_t right, int32_t aux)
{
    if (msadb_grow(&h->a, &h->cap, h->n + 1, sizeof *h->a, 64))
        return MSADB_ENOMEM;
    size_t i = h->n++;
    cand c = {key, right, aux};
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h->a[p].key <= key)
            break;
        h->a[i] = h->a[p];
        i = p;
    }
    h->a[i] = c;
    return 0;
}

static cand heap_pop(heap *h)
{
    cand top = h->a[0];
    cand last = h->a[--h->n];
    size_t i = 0, n = h->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && h->a[c + 1].key < h->a[c].key)
            c++;
        if (h->a[c].key >= last.key)
            break;
        h->a[i] = h->a[c];
        i = c;
    }
    if (n > 0)
        h->a[i] = last;
    return top;
}

/* ------------------------------------------------------------------------ */
/* Encoding: SentencePiece-style                                            */
/* ------------------------------------------------------------------------ */

enum { SYM_FROZEN = 1, SYM_DEAD = 2, SYM_RAW = 4 };

/* A symbol: a run of normalized bytes [nstart, nstart + nlen) that came
 * from source bytes [sstart, send). */
typedef struct spm_sym {
    uint32_t nstart, nlen, sstart, send;
    int32_t prev, next;
    int32_t id;    /* piece id of the symbol, -1 if not in the vocabulary */
    int32_t tree;  /* for an UNUSED piece: the merge that formed it, or -1 */
    uint32_t flags;
} spm_sym;

/* The two halves of a merge into an UNUSED piece, kept so that the piece
 * can be split again at output (SentencePiece's "resegmentation"). */
typedef struct spm_part {
    uint32_t sstart, send;
    int32_t id, tree;
} spm_part;

typedef struct spm_state {
    const msadb_tokenizer *t;
    spm_sym *sym;
    size_t n_sym;
    char *norm;
    size_t n_norm;
    heap h;
    spm_part *tree;    /* pairs of parts */
    size_t n_tree, cap_tree;
} spm_state;

static void spm_leaf(spm_state *st, const char *nbytes, size_t nlen, size_t s0, size_t s1,
                    uint32_t flags, int32_t id)
{
    spm_sym *y = &st->sym[st->n_sym];
    y->nstart = (uint32_t)st->n_norm;
    y->nlen = (uint32_t)nlen;
    memcpy(st->norm + st->n_norm, nbytes, nlen);
    st->n_norm += nlen;
    y->sstart = (uint32_t)s0;
    y->send = (uint32_t)s1;
    y->prev = (int32_t)st->n_sym - 1;
    y->next = (int32_t)st->n_sym + 1; /* fixed for the last one afterwards */
    y->tree = -1;
    y->flags = flags;
    if (id < 0 && !(flags & (SYM_FROZEN | SYM_RAW))) {
        id = vocab_find(st->t, nbytes, nlen);
        if (id >= 0 && !type_mergeable(st->t->types[id]))
            id = -1;
    }
    y->id = id;
    st->n_sym++;
}

/* Cuts the text into symbols: the dummy "▁", user-defined tokens, and one
 * character each otherwise (a space becomes "▁").  Bytes that are not
 * well-formed UTF-8, and literal U+2581 characters, are frozen as raw bytes
 * so that they come back unchanged from decoding. */
static void spm_split(spm_state *st, const uint8_t *s, size_t len)
{
    const msadb_tokenizer *t = st->t;
    if (t->space_prefix && len > 0)
        spm_leaf(st, SPM_SPACE, 3, 0, 0, 0, t->spm_space);
    size_t i = 0;
    while (i < len) {
        size_t m;
        int32_t uid = t->n_user ? user_find(t, s + i, len - i, &m) : -1;
        if (uid >= 0) {
            spm_leaf(st, "", 0, i, i + m, SYM_FROZEN, uid);
            i += m;
            continue;
        }
        if (s[i] == ' ') {
            spm_leaf(st, SPM_SPACE, 3, i, i + 1, 0, t->spm_space);
            i++;
            continue;
        }
        size_t cl = utf8_len(s + i, len - i);
        if (cl == 0 || (cl == 3 && memcmp(s + i, SPM_SPACE, 3) == 0)) {
            cl = cl ? cl : 1;
            spm_leaf(st, "", 0, i, i + cl, SYM_RAW | SYM_FROZEN, -1);
        } else {
            spm_leaf(st, (const char *)s + i, cl, i, i + cl, 0, -1);
        }
        i += cl;
    }
    if (st->n_sym > 0)
        st->sym[st->n_sym - 1].next = -1;
}

/* Queues the pair (l, r) if their concatenation is a mergeable piece. */
static int spm_try(spm_state *st, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return 0;
    const spm_sym *a = &st->sym[l], *b = &st->sym[r];
    if ((a->flags | b->flags) & SYM_FROZEN)
        return 0;
    int32_t id = vocab_find(st->t, st->norm + a->nstart, (size_t)a->nlen + b->nlen);
    if (id < 0 || !type_mergeable(st->t->types[id]))
        return 0;
    uint64_t key = (uint64_t)st->t->score_key[id] << 32 | (uint32_t)l;
    return heap_push(&st->h, key, r, id);
}

static int spm_record(spm_state *st, const spm_sym *a, const spm_sym *b, int32_t *tree)
{
    if (msadb_grow(&st->tree, &st->cap_tree, st->n_tree + 2, sizeof *st->tree, 64))
        return MSADB_ENOMEM;
    st->tree[st->n_tree] = (spm_part){a->sstart, a->send, a->id, a->tree};
    st->tree[st->n_tree + 1] = (spm_part){b->sstart, b->send, b->id, b->tree};
    *tree = (int32_t)st->n_tree;
    st->n_tree += 2;
    return 0;
}

static int spm_is_space(const spm_state *st, const spm_sym *y)
{
    return y->nlen == 3 && memcmp(st->norm + y->nstart, SPM_SPACE, 3) == 0;
}

/* Whether no merge can ever join symbols k-1 and k (see spm_cut). */
static int spm_boundary(const spm_state *st, size_t k)
{
    return st->t->spm_cut && spm_is_space(st, &st->sym[k]) && !spm_is_space(st, &st->sym[k - 1]);
}

/* The merge loop over symbols [from, to): always the highest-scoring pair,
 * ties to the left. */
static int spm_merge_range(spm_state *st, size_t from, size_t to)
{
    const msadb_tokenizer *t = st->t;
    int rc = 0;
    st->h.n = 0;
    for (size_t i = from + 1; i < to && !rc; i++)
        rc = spm_try(st, (int32_t)i - 1, (int32_t)i);
    while (!rc && st->h.n > 0) {
        cand c = heap_pop(&st->h);
        int32_t l = (int32_t)(uint32_t)c.key, r = c.right;
        spm_sym *a = &st->sym[l], *b = &st->sym[r];
        /* Stale if either side has changed since the pair was queued: a
         * symbol only grows by absorbing its right neighbour. */
        if ((a->flags | b->flags) & SYM_DEAD || a->next != r ||
            (size_t)a->nlen + b->nlen != t->text_len[c.aux])
            continue;
        int32_t tree = -1;
        if (t->types[c.aux] == MSADB_TOKEN_UNUSED && (rc = spm_record(st, a, b, &tree)))
            break;
        a->id = c.aux;
        a->tree = tree;
        a->nlen += b->nlen;
        a->send = b->send;
        a->next = b->next;
        if (b->next >= 0)
            st->sym[b->next].prev = l;
        b->flags |= SYM_DEAD;
        /* Pairs reaching across a word boundary are never in the
         * vocabulary, so these stay inside [from, to). */
        rc = spm_try(st, a->prev, l);
        if (!rc)
            rc = spm_try(st, l, a->next);
    }
    return rc;
}

static int spm_merge(spm_state *st)
{
    int rc = 0;
    size_t from = 0;
    while (from < st->n_sym && !rc) {
        size_t to = from + 1;
        while (to < st->n_sym && !spm_boundary(st, to))
            to++;
        rc = spm_merge_range(st, from, to);
        from = to;
    }
    return rc;
}

/* A symbol without a piece: its source bytes as byte tokens, or one
 * unknown token (runs of unknowns joined, as SentencePiece does). */
static void spm_fallback(const msadb_tokenizer *t, sink *o, const uint8_t *s, size_t s0,
                         size_t s1)
{
    int all = 1;
    for (size_t i = s0; i < s1; i++)
        if (t->byte_tok[s[i]] < 0)
            all = 0;
    if (all) {
        for (size_t i = s0; i < s1; i++)
            sink_put(o, t->byte_tok[s[i]], i, i + 1);
        return;
    }
    if (o->last_unk) {
        if (o->spans && o->ids && o->n - 1 < o->cap)
            o->spans[2 * (o->n - 1) + 1] = (int64_t)s1;
        return;
    }
    sink_put(o, t->special[MSADB_TOKEN_UNK], s0, s1);
    o->last_unk = 1;
}

/* Emits one symbol, splitting UNUSED pieces back into their halves. */
static int spm_emit(spm_state *st, sink *o, const uint8_t *s, spm_part top)
{
    const msadb_tokenizer *t = st->t;
    spm_part stack[64];
    size_t depth = 0;
    stack[depth++] = top;
    while (depth > 0) {
        spm_part p = stack[--depth];
        if (p.id >= 0 && p.tree >= 0 && t->types[p.id] == MSADB_TOKEN_UNUSED) {
            if (depth + 2 > sizeof stack / sizeof stack[0]) {
                sink_put(o, p.id, p.sstart, p.send); /* too deep to split: keep */
                continue;
            }
            stack[depth++] = st->tree[p.tree + 1];
            stack[depth++] = st->tree[p.tree];
            continue;
        }
        if (p.id >= 0)
            sink_put(o, p.id, p.sstart, p.send);
        else
            spm_fallback(t, o, s, p.sstart, p.send);
    }
    return 0;
}

static int spm_encode(const msadb_tokenizer *t, const uint8_t *s, size_t len, sink *o)
{
    spm_state st = {.t = t};
    size_t n_max = len + 1;
    st.sym = malloc(n_max * sizeof *st.sym);
    st.norm = malloc(3 * len + 3);
    int rc = (st.sym && st.norm) ? 0 : MSADB_ENOMEM;
    if (!rc) {
        spm_split(&st, s, len);
        rc = spm_merge(&st);
    }
    for (int32_t i = st.n_sym > 0 ? 0 : -1; !rc && i >= 0; i = st.sym[i].next) {
        const spm_sym *y = &st.sym[i];
        if (y->flags & SYM_RAW)
            spm_fallback(t, o, s, y->sstart, y->send);
        else
            rc = spm_emit(&st, o, s, (spm_part){y->sstart, y->send, y->id, y->tree});
    }
    free(st.sym);
    free(st.norm);
    free(st.h.a);
    free(st.tree);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Encoding: byte-level BPE                                                 */
/* ------------------------------------------------------------------------ */

typedef struct bpe_state {
    const msadb_tokenizer *t;
    int32_t *id, *prev, *next;
    size_t cap;
    heap h;
    cand *deferred;
    size_t n_def, cap_def;
    pcre2_match_data *md;
} bpe_state;

static int bpe_grow(bpe_state *st, size_t n)
{
    msadb_array a[] = {{&st->id, sizeof *st->id}, {&st->prev, sizeof *st->prev}, {&st->next, sizeof *st->next}};
    return msadb_grow_arrays(a, 3, &st->cap, n, 256, 0);
}

static int bpe_defer(bpe_state *st, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return 0;
    int32_t rank = pair_rank(st->t, st->id[l], st->id[r]);
    if (rank < 0)
        return 0;
    if (msadb_grow(&st->deferred, &st->cap_def, st->n_def + 1, sizeof *st->deferred, 64))
        return MSADB_ENOMEM;
    st->deferred[st->n_def++] = (cand){(uint64_t)rank << 32 | (uint32_t)l, r, 0};
    return 0;
}

static int bpe_flush(bpe_state *st)
{
    int rc = 0;
    for (size_t i = 0; i < st->n_def && !rc; i++)
        rc = heap_push(&st->h, st->deferred[i].key, st->deferred[i].right, 0);
    st->n_def = 0;
    return rc;
}

/* Merges one pre-token s[0, n) and emits its tokens (spans offset by base).
 *
 * GPT-2 applies merges in rounds: find the lowest-ranked pair present, merge
 * every occurrence of it left to right, repeat.  The heap pops pairs in
 * (rank, position) order; pairs created during a round are held back until
 * the round's rank is exhausted, which reproduces the rounds exactly even
 * for merge lists where a new pair could outrank the current one. */
static int bpe_word(bpe_state *st, const uint8_t *s, size_t n, size_t base, sink *o)
{
    const msadb_tokenizer *t = st->t;
    if (n == 0)
        return 0;
    int rc = bpe_grow(st, n);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_tok[s[i]];
        st->id[i] = id >= 0 ? id : t->special[MSADB_TOKEN_UNK];
        st->prev[i] = (int32_t)i - 1;
        st->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    st->h.n = 0;
    st->n_def = 0;
    for (size_t i = 1; i < n && !rc; i++)
        rc = bpe_defer(st, (int32_t)i - 1, (int32_t)i);
    if (!rc)
        rc = bpe_flush(st);
    uint32_t round = UINT32_MAX;
    while (!rc && (st->h.n > 0 || st->n_def > 0)) {
        if (st->h.n == 0 || (st->n_def > 0 && (uint32_t)(st->h.a[0].key >> 32) != round)) {
            rc = bpe_flush(st);
            round = UINT32_MAX;
            continue;
        }
        cand c = heap_pop(&st->h);
        uint32_t rank = (uint32_t)(c.key >> 32);
        int32_t l = (int32_t)(uint32_t)c.key, r = c.right;
        if (st->id[l] < 0 || st->next[l] != r || st->id[l] != t->m_left[rank] ||
            st->id[r] != t->m_right[rank])
            continue; /* stale */
        round = rank;
        st->id[l] = t->m_out[rank];
        st->next[l] = st->next[r];
        if (st->next[r] >= 0)
            st->prev[st->next[r]] = l;
        st->id[r] = -1;
        rc = bpe_defer(st, st->prev[l], l);
        if (!rc)
            rc = bpe_defer(st, l, st->next[l]);
    }
    for (int32_t i = 0; !rc && i >= 0; i = st->next[i]) {
        size_t end = st->next[i] >= 0 ? (size_t)st->next[i] : n;
        sink_put(o, st->id[i], base + (size_t)i, base + end);
    }
    return rc;
}

/* Pre-tokenizes a well-formed UTF-8 run s[0, n) and merges each piece. */
static int bpe_run(bpe_state *st, const uint8_t *s, size_t n, size_t base, sink *o)
{
    size_t off = 0;
    uint32_t opts = PCRE2_NO_UTF_CHECK; /* validated by the caller */
    while (off < n) {
        int m = pcre2_match(st->t->re, s, n, off, opts, st->md, NULL);
        if (m == PCRE2_ERROR_JIT_STACKLIMIT && !(opts & PCRE2_NO_JIT)) {
            opts |= PCRE2_NO_JIT; /* the interpreter keeps its frames on the heap */
            continue;
        }
        if (m == PCRE2_ERROR_NOMATCH)
            return bpe_word(st, s + off, n - off, base + off, o);
        if (m < 0)
            return m == PCRE2_ERROR_NOMEMORY ? MSADB_ENOMEM : MSADB_ELIMIT;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
        size_t ms = ov[0], me = ov[1];
        int rc = 0;
        if (ms > off) /* text the pattern skipped is a pre-token of its own */
            rc = bpe_word(st, s + off, ms - off, base + off, o);
        if (me == ms) /* an empty match (custom patterns): take one character */
            me = ms < n ? ms + utf8_len(s + ms, n - ms) : n;
        if (!rc)
            rc = bpe_word(st, s + ms, me - ms, base + ms, o);
        if (rc)
            return rc;
        off = me;
    }
    return 0;
}

/* Ill-formed UTF-8 cannot go through the regex (PCRE2 would refuse it), so
 * the text is cut into well-formed runs, and each maximal run of bad bytes
 * is a pre-token of its own. */
static int bpe_plain(bpe_state *st, const uint8_t *s, size_t n, size_t base, sink *o)
{
    size_t p = 0;
    int rc = 0;
    while (p < n && !rc) {
        size_t q = p, cl;
        while (q < n && (cl = utf8_len(s + q, n - q)) > 0)
            q += cl;
        if (q > p)
            rc = bpe_run(st, s + p, q - p, base + p, o);
        size_t r = q;
        while (r < n && utf8_len(s + r, n - r) == 0)
            r++;
        if (!rc && r > q)
            rc = bpe_word(st, s + q, r - q, base + q, o);
        p = r;
    }
    return rc;
}

static int bpe_encode(const msadb_tokenizer *t, const uint8_t *s, size_t len, sink *o)
{
    bpe_state st = {.t = t};
    st.md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!st.md)
        return MSADB_ENOMEM;
    int rc = 0;
    size_t p = 0, start = 0;
    /* User-defined tokens cut the text first; the pieces between them go
     * through the pre-tokenizer. */
    while (p < len && !rc && t->n_user) {
        size_t m;
        int32_t uid = user_find(t, s + p, len - p, &m);
        if (uid < 0) {
            p++;
            continue;
        }
        rc = bpe_plain(&st, s + start, p - start, start, o);
        sink_put(o, uid, p, p + m);
        p += m;
        start = p;
    }
    if (!rc)
        rc = bpe_plain(&st, s + start, len - start, start, o);
    pcre2_match_data_free(st.md);
    free(st.id);
    free(st.prev);
    free(st.next);
    free(st.h.a);
    free(st.deferred);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Public entry points                                                      */
/* ------------------------------------------------------------------------ */

size_t msadb_tokenizer_encode_bound(const msadb_tokenizer *t, size_t len)
{
    if (!t || len > MSADB_TOKENIZER_MAX_TEXT)
        return SIZE_MAX;
    /* Every token covers at least one source byte, except the dummy prefix
     * and BOS/EOS. */
    return len + 3;
}

int msadb_tokenizer_encode(const msadb_tokenizer *t, const char *text, size_t len,
                           unsigned flags, int32_t *ids, int64_t *spans, size_t cap,
                           size_t *n_tokens)
{
    if (!t || !n_tokens || (!text && len > 0) ||
        (flags & ~(MSADB_TOKENIZE_ADD_BOS | MSADB_TOKENIZE_ADD_EOS)))
        return MSADB_EINVAL;
    *n_tokens = 0;
    if (len > MSADB_TOKENIZER_MAX_TEXT)
        return MSADB_ELIMIT;
    sink o = {.ids = ids, .spans = ids ? spans : NULL, .cap = ids ? cap : 0};
    if ((flags & MSADB_TOKENIZE_ADD_BOS) && t->special[MSADB_TOKEN_BOS] >= 0)
        sink_put(&o, t->special[MSADB_TOKEN_BOS], 0, 0);
    const uint8_t *s = (const uint8_t *)text;
    int rc = 0;
    if (len > 0)
        rc = t->kind == MSADB_TOKENIZER_SPM ? spm_encode(t, s, len, &o) : bpe_encode(t, s, len, &o);
    if (rc)
        return rc;
    if ((flags & MSADB_TOKENIZE_ADD_EOS) && t->special[MSADB_TOKEN_EOS] >= 0)
        sink_put(&o, t->special[MSADB_TOKEN_EOS], len, len);
    *n_tokens = o.n;
    return (ids && o.n > cap) ? MSADB_ELIMIT : 0;
}

int msadb_tokenizer_decode(const msadb_tokenizer *t, const int32_t *ids, size_t n,
                           unsigned flags, char *out, size_t cap, size_t *len)
{
    if (!t || !len || (!ids && n > 0) ||
        (flags & ~(MSADB_DETOKENIZE_SPECIAL | MSADB_DETOKENIZE_KEEP_SPACE)))
        return MSADB_EINVAL;
    *len = 0;
    int strip = t->kind == MSADB_TOKENIZER_SPM && t->space_prefix &&
                !(flags & MSADB_DETOKENIZE_KEEP_SPACE);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || (uint32_t)id >= t->n)
            return MSADB_EINVAL;
        uint8_t type = t->types[id];
        const char *p = t->piece + t->piece_off[id];
        size_t pl = t->piece_len[id];
        if (type == MSADB_TOKEN_CONTROL) {
            if (!(flags & MSADB_DETOKENIZE_SPECIAL))
                continue;
            p = tok_str(t, id);
            pl = t->text_len[id];
        } else if (strip) {
            /* The dummy prefix: the first piece's leading space is not in
             * the text.  Byte and unknown tokens never carry it. */
            strip = 0;
            if (type_mergeable(type) && pl > 0 && p[0] == ' ') {
                p++;
                pl--;
            }
        }
        if (out && total + pl <= cap)
            memcpy(out + total, p, pl);
        total += pl;
    }
    *len = total;
    return (out && total > cap) ? MSADB_ELIMIT : 0;
}

int msadb_tokenizer_piece(const msadb_tokenizer *t, int32_t id, const char **piece, size_t *len)
{
    if (!t || !piece || !len || id < 0 || (uint32_t)id >= t->n)
        return MSADB_EINVAL;
    *piece = t->piece + t->piece_off[id];
    *len = t->piece_len[id];
    return 0;
}

int msadb_tokenizer_token_text(const msadb_tokenizer *t, int32_t id, const char **text,
                               size_t *len)
{
    if (!t || !text || !len || id < 0 || (uint32_t)id >= t->n)
        return MSADB_EINVAL;
    *text = tok_str(t, id);
    *len = t->text_len[id];
    return 0;
}

int msadb_tokenizer_token_type(const msadb_tokenizer *t, int32_t id)
{
    if (!t || id < 0 || (uint32_t)id >= t->n)
        return MSADB_EINVAL;
    return t->types[id];
}

int32_t msadb_tokenizer_token_id(const msadb_tokenizer *t, const char *text, size_t len)
{
    if (!t || (!text && len > 0))
        return -1;
    return vocab_find(t, text, len);
}

int msadb_tokenizer_kind(const msadb_tokenizer *t) { return t ? t->kind : MSADB_EINVAL; }
uint32_t msadb_tokenizer_n_vocab(const msadb_tokenizer *t) { return t ? t->n : 0; }
int msadb_tokenizer_add_bos(const msadb_tokenizer *t) { return t ? t->add_bos : 0; }
int msadb_tokenizer_space_prefix(const msadb_tokenizer *t)
{
    return t && t->kind == MSADB_TOKENIZER_SPM && t->space_prefix;
}
int msadb_tokenizer_add_eos(const msadb_tokenizer *t) { return t ? t->add_eos : 0; }

int32_t msadb_tokenizer_special(const msadb_tokenizer *t, int which)
{
    if (!t || which < 0 || which > MSADB_TOKEN_PAD)
        return -1;
    return t->special[which];
}

/* ------------------------------------------------------------------------ */
/* GGUF loader                                                              */
/* ------------------------------------------------------------------------ */

typedef struct gguf_arrays {
    const char **tokens;
    uint32_t *token_lens;
    float *scores;
    int32_t *types;
    const char **merges;
    uint32_t *merge_lens;
} gguf_arrays;

static void gguf_arrays_free(gguf_arrays *a)
{
    free(a->tokens);
    free(a->token_lens);
    free(a->scores);
    free(a->types);
    free(a->merges);
    free(a->merge_lens);
}

/* A string array into pointer + length arrays (pointing into the file). */
static int gguf_strings(const msadb_gguf *g, const char *key, uint64_t max_n, const char ***strs,
                        uint32_t **lens, uint32_t *n_out)
{
    const msadb_gguf_kv *kv;
    uint32_t et;
    uint64_t n;
    int rc = msadb_gguf_get_arr(g, key, &kv, &et, &n);
    if (rc)
        return rc;
    if (et != MSADB_GGUF_STRING)
        return MSADB_EDTYPE;
    if (n > max_n)
        return MSADB_ELIMIT;
    *strs = malloc((n ? n : 1) * sizeof **strs);
    *lens = malloc((n ? n : 1) * sizeof **lens);
    if (!*strs || !*lens)
        return MSADB_ENOMEM;
    for (uint64_t i = 0; i < n; i++) {
        size_t l;
        rc = msadb_gguf_arr_str(kv, i, &(*strs)[i], &l);
        if (rc)
            return rc;
        if (l > 2 * MSADB_TOKENIZER_MAX_TOKEN_LEN + 1)
            return MSADB_ELIMIT;
        (*lens)[i] = (uint32_t)l;
    }
    *n_out = (uint32_t)n;
    return 0;
}

/* An optional numeric array of exactly n entries; absent leaves *out NULL. */
static int gguf_numbers(const msadb_gguf *g, const char *key, uint32_t n, float **fout,
                        int32_t **iout)
{
    const msadb_gguf_kv *kv;
    uint32_t et;
    uint64_t cnt;
    int rc = msadb_gguf_get_arr(g, key, &kv, &et, &cnt);
    if (rc == MSADB_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (cnt != n)
        return MSADB_EINVAL;
    if (fout) {
        *fout = malloc(n * sizeof **fout);
        if (!*fout)
            return MSADB_ENOMEM;
    } else {
        *iout = malloc(n * sizeof **iout);
        if (!*iout)
            return MSADB_ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (fout) {
            double v;
            if ((rc = msadb_gguf_arr_f64(kv, i, &v)))
                return rc;
            (*fout)[i] = (float)v;
        } else {
            int64_t v;
            if ((rc = msadb_gguf_arr_int(kv, i, &v)))
                return rc;
            if (v < INT32_MIN || v > INT32_MAX)
                return MSADB_EINVAL;
            (*iout)[i] = (int32_t)v;
        }
    }
    return 0;
}

/* An optional token id: absent is -1. */
static int gguf_id(const msadb_gguf *g, const char *key, int32_t *out)
{
    int64_t v;
    int rc = msadb_gguf_get_int(g, key, -1, INT32_MAX, &v);
    if (rc == MSADB_ENOTFOUND) {
        *out = -1;
        return 0;
    }
    *out = (int32_t)v;
    return rc;
}

static int gguf_flag(const msadb_gguf *g, const char *key, int *out)
{
    int rc = msadb_gguf_get_bool(g, key, out);
    return rc == MSADB_ENOTFOUND ? 0 : rc;
}

int msadb_tokenizer_from_gguf(const struct msadb_gguf *g, msadb_tokenizer **out)
{
    if (!out)
        return MSADB_EINVAL;
    *out = NULL;
    if (!g)
        return MSADB_EINVAL;
    const char *model;
    size_t mlen;
    int rc = msadb_gguf_get_str(g, "tokenizer.ggml.model", &model, &mlen);
    if (rc)
        return rc;
    msadb_tokenizer_config cfg;
    if (mlen == 5 && memcmp(model, "llama", 5) == 0)
        msadb_tokenizer_config_init(&cfg, MSADB_TOKENIZER_SPM);
    else if (mlen == 4 && memcmp(model, "gpt2", 4) == 0)
        msadb_tokenizer_config_init(&cfg, MSADB_TOKENIZER_BPE);
    else
        return MSADB_EINVAL;
    if (cfg.kind == MSADB_TOKENIZER_BPE) {
        /* Only GPT-2's own pre-tokenizer is implemented; a model naming
         * another one (llama.cpp's tokenizer.ggml.pre) would be split
         * wrongly, so it is refused rather than silently mis-tokenized. */
        const char *pre;
        size_t plen;
        rc = msadb_gguf_get_str(g, "tokenizer.ggml.pre", &pre, &plen);
        if (rc == 0 && !((plen == 7 && memcmp(pre, "default", 7) == 0) ||
                         (plen == 5 && memcmp(pre, "gpt-2", 5) == 0)))
            return MSADB_EINVAL;
        if (rc && rc != MSADB_ENOTFOUND)
            return rc;
    }
    gguf_arrays a = {0};
    rc = gguf_strings(g, "tokenizer.ggml.tokens", MSADB_TOKENIZER_MAX_TOKENS, &a.tokens,
                      &a.token_lens, &cfg.n_tokens);
    if (!rc)
        rc = gguf_numbers(g, "tokenizer.ggml.scores", cfg.n_tokens, &a.scores, NULL);
    if (!rc)
        rc = gguf_numbers(g, "tokenizer.ggml.token_type", cfg.n_tokens, NULL, &a.types);
    if (!rc && cfg.kind == MSADB_TOKENIZER_BPE) {
        rc = gguf_strings(g, "tokenizer.ggml.merges", MSADB_TOKENIZER_MAX_MERGES, &a.merges,
                          &a.merge_lens, &cfg.n_merges);
        if (rc == MSADB_ENOTFOUND)
            rc = 0;
    }
    if (!rc)
        rc = gguf_id(g, "tokenizer.ggml.bos_token_id", &cfg.bos_id);
    if (!rc)
        rc = gguf_id(g, "tokenizer.ggml.eos_token_id", &cfg.eos_id);
    if (!rc)
        rc = gguf_id(g, "tokenizer.ggml.unknown_token_id", &cfg.unk_id);
    if (!rc)
        rc = gguf_id(g, "tokenizer.ggml.padding_token_id", &cfg.pad_id);
    /* llama.cpp's defaults: BOS added for llama, not for gpt2. */
    cfg.add_bos = cfg.kind == MSADB_TOKENIZER_SPM;
    if (!rc)
        rc = gguf_flag(g, "tokenizer.ggml.add_bos_token", &cfg.add_bos);
    if (!rc)
        rc = gguf_flag(g, "tokenizer.ggml.add_eos_token", &cfg.add_eos);
    if (!rc)
        rc = gguf_flag(g, "tokenizer.ggml.add_space_prefix", &cfg.add_space_prefix);
    /* Ids beyond the vocabulary are treated as absent, as llama.cpp does. */
    int32_t *ids[4] = {&cfg.bos_id, &cfg.eos_id, &cfg.unk_id, &cfg.pad_id};
    for (int i = 0; i < 4; i++)
        if (*ids[i] >= (int64_t)cfg.n_tokens)
            *ids[i] = -1;
    if (!rc) {
        cfg.tokens = a.tokens;
        cfg.token_lens = a.token_lens;
        cfg.scores = a.scores;
        cfg.token_types = a.types;
        cfg.merges = a.merges;
        cfg.merge_lens = a.merge_lens;
        rc = msadb_tokenizer_new(&cfg, out);
    }
    gguf_arrays_free(&a);
    return rc;
}
