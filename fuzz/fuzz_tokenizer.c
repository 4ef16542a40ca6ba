/* fuzz_tokenizer.c -- encodes arbitrary bytes with a small SentencePiece-
 * style and a small byte-level BPE vocabulary and checks what must hold for
 * every input:
 *   - decode(encode(x)) == x exactly, valid UTF-8 or not (both vocabularies
 *     have every byte token; the SPM dummy prefix's space is dropped again
 *     by decode, and a literal U+2581 travels as byte tokens);
 *   - spans are in bounds, in order and tile x;
 *   - the count-only call agrees with the filling call, and a too-small
 *     buffer gives MSADB_ELIMIT with the right count;
 *   - the pieces, concatenated, equal the decoded text;
 *   - with BOS/EOS the body is unchanged.
 * The first input byte (when present) also picks a prefix length used to
 * encode a truncated copy, so cuts inside UTF-8 sequences are exercised. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msadb.h"
#include "runtime/tokenizer.h"

#define FAIL(what)                                                               \
    do {                                                                         \
        fprintf(stderr, "fuzz_tokenizer: %s (line %d)\n", what, __LINE__);      \
        abort();                                                                 \
    } while (0)

#define SP "\xE2\x96\x81"

static const char *const spm_pieces[] = {
    SP, SP SP, SP SP SP SP, SP "t", "he", SP "the", "in", "er", SP "a", "an", SP "an",
    "e", "t", "h", "a", "n", "i", "r", "s", SP "s", "\xC3\xA9", "\xE6\x97\xA5", "th", "\n",
    "<x>", SP "u", "ab", "abc", "a", "b", "c",
};
/* "th" and "ab" are UNUSED (merged through, split at output); "<x>" and
 * "▁u" user-defined. */
static int spm_type(const char *p)
{
    if (!strcmp(p, "th") || !strcmp(p, "ab"))
        return MSADB_TOKEN_UNUSED;
    if (!strcmp(p, "<x>") || !strcmp(p, SP "u"))
        return MSADB_TOKEN_USER_DEFINED;
    return MSADB_TOKEN_NORMAL;
}

/* GPT-2 byte characters: "Ġ" is the space, "Ċ" the newline, "Ã" "©" the
 * bytes of é. */
#define G "\xC4\xA0"
static const char *const bpe_merges[] = {
    G " t", "h e", G "t he", "i n", "e r", G " a", "a n", G " " G, G G " " G G,
    "\xC3\x83 \xC2\xA9", "\xC4\x8A \xC4\x8A", "t h", "th e", "' s",
};

static msadb_tokenizer *spm, *bpe;

static msadb_tokenizer *build_spm(void)
{
    size_t np = sizeof spm_pieces / sizeof spm_pieces[0];
    size_t n = 3 + 256 + np;
    const char **tok = calloc(n, sizeof *tok);
    float *score = calloc(n, sizeof *score);
    int32_t *type = calloc(n, sizeof *type);
    char(*bytes)[8] = calloc(256, 8);
    if (!tok || !score || !type || !bytes)
        FAIL("out of memory");
    tok[0] = "<unk>";
    type[0] = MSADB_TOKEN_UNKNOWN;
    tok[1] = "<s>";
    type[1] = MSADB_TOKEN_CONTROL;
    tok[2] = "</s>";
    type[2] = MSADB_TOKEN_CONTROL;
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], 8, "<0x%02X>", b);
        tok[3 + b] = bytes[b];
        type[3 + b] = MSADB_TOKEN_BYTE;
    }
    for (size_t i = 0; i < np; i++) {
        tok[259 + i] = spm_pieces[i];
        type[259 + i] = spm_type(spm_pieces[i]);
        score[259 + i] = -(float)(i % 7); /* repeated scores: ties matter */
    }
    msadb_tokenizer_config cfg;
    msadb_tokenizer_config_init(&cfg, MSADB_TOKENIZER_SPM);
    cfg.n_tokens = (uint32_t)n;
    cfg.tokens = tok;
    cfg.scores = score;
    cfg.token_types = type;
    cfg.unk_id = 0;
    cfg.bos_id = 1;
    cfg.eos_id = 2;
    msadb_tokenizer *t = NULL;
    if (msadb_tokenizer_new(&cfg, &t))
        FAIL("spm vocabulary refused");
    free(tok);
    free(score);
    free(type);
    free(bytes);
    return t;
}

static size_t put_utf8(uint32_t cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    o[0] = (char)(0xC0 | cp >> 6);
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

static msadb_tokenizer *build_bpe(void)
{
    size_t nm = sizeof bpe_merges / sizeof bpe_merges[0];
    size_t n = 256 + nm + 2;
    const char **tok = calloc(n, sizeof *tok);
    int32_t *type = calloc(n, sizeof *type);
    char(*store)[24] = calloc(n, 24);
    if (!tok || !type || !store)
        FAIL("out of memory");
    unsigned k = 0;
    for (unsigned b = 0; b < 256; b++) {
        int self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        uint32_t cp = self ? b : 0x100 + k++;
        store[b][put_utf8(cp, store[b])] = 0;
        tok[b] = store[b];
        type[b] = MSADB_TOKEN_NORMAL;
    }
    for (size_t i = 0; i < nm; i++) {
        /* merge "l r" -> token "lr" */
        const char *m = bpe_merges[i], *sp = strchr(m + 1, ' ');
        size_t ll = (size_t)(sp - m);
        memcpy(store[256 + i], m, ll);
        strcpy(store[256 + i] + ll, sp + 1);
        tok[256 + i] = store[256 + i];
        type[256 + i] = MSADB_TOKEN_NORMAL;
    }
    tok[256 + nm] = "<|endoftext|>";
    type[256 + nm] = MSADB_TOKEN_CONTROL;
    tok[257 + nm] = "<u>";
    type[257 + nm] = MSADB_TOKEN_USER_DEFINED;
    msadb_tokenizer_config cfg;
    msadb_tokenizer_config_init(&cfg, MSADB_TOKENIZER_BPE);
    cfg.n_tokens = (uint32_t)n;
    cfg.tokens = tok;
    cfg.token_types = type;
    cfg.n_merges = (uint32_t)nm;
    cfg.merges = bpe_merges;
    cfg.bos_id = cfg.eos_id = (int32_t)(256 + nm);
    msadb_tokenizer *t = NULL;
    if (msadb_tokenizer_new(&cfg, &t))
        FAIL("bpe vocabulary refused");
    free(tok);
    free(type);
    free(store);
    return t;
}

static void check(const msadb_tokenizer *t, const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    size_t cap = msadb_tokenizer_encode_bound(t, size), n = 0, n2 = 0;
    int32_t *ids = malloc((cap + 1) * sizeof *ids);
    int64_t *spans = malloc((cap + 1) * 2 * sizeof *spans);
    char *out = malloc(4 * size + 64);
    if (!ids || !spans || !out)
        FAIL("out of memory");
    if (msadb_tokenizer_encode(t, text, size, 0, ids, spans, cap, &n))
        FAIL("encode failed");
    if (n > cap)
        FAIL("more tokens than encode_bound");
    if (msadb_tokenizer_encode(t, text, size, 0, NULL, NULL, 0, &n2) || n2 != n)
        FAIL("count-only call disagrees");
    if (n > 0) {
        if (msadb_tokenizer_encode(t, text, size, 0, ids, NULL, n - 1, &n2) != MSADB_ELIMIT ||
            n2 != n)
            FAIL("small buffer not refused");
    }
    int64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= msadb_tokenizer_n_vocab(t))
            FAIL("id out of range");
        if (spans[2 * i] != at || spans[2 * i + 1] < spans[2 * i] ||
            spans[2 * i + 1] > (int64_t)size)
            FAIL("spans do not tile the input");
        at = spans[2 * i + 1];
    }
    if ((size_t)at != size)
        FAIL("spans end early");
    size_t len = 0;
    if (msadb_tokenizer_decode(t, ids, n, 0, out, 4 * size + 64, &len))
        FAIL("decode failed");
    if (len != size || memcmp(out, text, size) != 0)
        FAIL("decode(encode(x)) != x");
    /* Streaming pieces give the same bytes (less the dummy prefix space). */
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t pl;
        if (msadb_tokenizer_piece(t, ids[i], &p, &pl))
            FAIL("piece failed");
        if (i == 0 && msadb_tokenizer_space_prefix(t) && pl > 0 && p[0] == ' ' &&
            msadb_tokenizer_token_type(t, ids[0]) != MSADB_TOKEN_BYTE) {
            p++;
            pl--;
        }
        if (o + pl > 4 * size + 64)
            FAIL("pieces too long");
        memcpy(out + o, p, pl);
        o += pl;
    }
    if (o != size || memcmp(out, text, size) != 0)
        FAIL("pieces != text");
    /* BOS/EOS wrap the same body. */
    int has_bos = msadb_tokenizer_special(t, MSADB_TOKEN_BOS) >= 0;
    int has_eos = msadb_tokenizer_special(t, MSADB_TOKEN_EOS) >= 0;
    if (msadb_tokenizer_encode(t, text, size, MSADB_TOKENIZE_ADD_BOS | MSADB_TOKENIZE_ADD_EOS,
                               ids, spans, cap, &n2))
        FAIL("encode with BOS/EOS failed");
    if (n2 != n + (size_t)has_bos + (size_t)has_eos ||
        (has_bos && (spans[0] != 0 || spans[1] != 0)) ||
        (n2 > 0 && spans[2 * n2 - 1] != (int64_t)size))
        FAIL("BOS/EOS wrong");
    free(ids);
    free(spans);
    free(out);
}

/* Inputs "VOCAB" K SPEC \0 TEXT build a vocabulary from SPEC on top of a
 * complete byte set (K odd: SPM with <unk> <s> </s> and <0x00>..<0xFF>; K
 * even: BPE with the 256 byte characters) and then check TEXT as above.
 * SPEC lines: "=left right" is a merge; otherwise the first byte is the
 * type ('0'..'6', others normal), the second a score, the rest the token.
 * Whatever the extra tokens, scores and merges, the invariants must hold:
 * the byte set alone guarantees the round trip. */
static void fuzz_vocab(const uint8_t *data, size_t size)
{
    /* data[0] is the kind; the spec runs from data[1] to the first NUL. */
    const uint8_t *nul = size > 1 ? memchr(data + 1, 0, size - 1) : NULL;
    if (!nul)
        return;
    int spm_kind = data[0] & 1;
    const char *spec = (const char *)data + 1;
    size_t spec_len = (size_t)(nul - data) - 1;
    enum { MAXN = 256 + 3 + 400 };
    const char **tok = calloc(MAXN, sizeof *tok);
    uint32_t *lens = calloc(MAXN, sizeof *lens);
    float *score = calloc(MAXN, sizeof *score);
    int32_t *type = calloc(MAXN, sizeof *type);
    const char **merges = calloc(400, sizeof *merges);
    uint32_t *mlens = calloc(400, sizeof *mlens);
    char(*bytes)[8] = calloc(256, 8);
    if (!tok || !lens || !score || !type || !merges || !mlens || !bytes)
        FAIL("out of memory");
    uint32_t n = 0, nm = 0;
    if (spm_kind) {
        static const char *const sp[3] = {"<unk>", "<s>", "</s>"};
        for (int i = 0; i < 3; i++) {
            tok[n] = sp[i];
            lens[n] = (uint32_t)strlen(sp[i]);
            type[n++] = i == 0 ? MSADB_TOKEN_UNKNOWN : MSADB_TOKEN_CONTROL;
        }
    }
    unsigned k = 0;
    for (unsigned b = 0; b < 256; b++) {
        if (spm_kind) {
            snprintf(bytes[b], 8, "<0x%02X>", b);
            type[n] = MSADB_TOKEN_BYTE;
        } else {
            int self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
            bytes[b][put_utf8(self ? b : 0x100 + k++, bytes[b])] = 0;
            type[n] = MSADB_TOKEN_NORMAL;
        }
        tok[n] = bytes[b];
        lens[n++] = (uint32_t)strlen(bytes[b]);
    }
    for (size_t i = 0; i < spec_len && n < MAXN && nm < 400;) {
        const char *line = spec + i, *nl = memchr(line, '\n', spec_len - i);
        size_t ll = nl ? (size_t)(nl - line) : spec_len - i;
        i += ll + 1;
        if (ll >= 1 && line[0] == '=') {
            merges[nm] = line + 1;
            mlens[nm++] = (uint32_t)(ll - 1);
        } else if (ll >= 2) {
            type[n] = line[0] >= '0' && line[0] <= '6' ? line[0] - '0' : MSADB_TOKEN_NORMAL;
            score[n] = (float)(int8_t)line[1] / 4.0f;
            tok[n] = line + 2;
            lens[n++] = (uint32_t)(ll - 2);
        }
    }
    msadb_tokenizer_config cfg;
    msadb_tokenizer_config_init(&cfg, spm_kind ? MSADB_TOKENIZER_SPM : MSADB_TOKENIZER_BPE);
    cfg.n_tokens = n;
    cfg.tokens = tok;
    cfg.token_lens = lens;
    cfg.scores = score;
    cfg.token_types = type;
    cfg.n_merges = nm;
    cfg.merges = merges;
    cfg.merge_lens = mlens;
    if (spm_kind) {
        cfg.unk_id = 0;
        cfg.bos_id = 1;
        cfg.eos_id = 2;
    }
    msadb_tokenizer *t = NULL;
    int rc = msadb_tokenizer_new(&cfg, &t);
    if (rc == 0) {
        check(t, nul + 1, size - (size_t)(nul + 1 - data));
        msadb_tokenizer_free(t);
    } else if (rc != MSADB_EINVAL && rc != MSADB_ELIMIT) {
        FAIL("unexpected error building a vocabulary");
    }
    free(tok);
    free(lens);
    free(score);
    free(type);
    free(merges);
    free(mlens);
    free(bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size >= 6 && memcmp(data, "VOCAB", 5) == 0) {
        fuzz_vocab(data + 5, size - 5);
        return 0;
    }
    if (!spm) {
        spm = build_spm();
        bpe = build_bpe();
    }
    check(spm, data, size);
    check(bpe, data, size);
    if (size > 1) {
        size_t cut = 1 + data[0] % (size - 1);
        check(spm, data + 1, cut);
        check(bpe, data + 1, cut);
    }
    return 0;
}
