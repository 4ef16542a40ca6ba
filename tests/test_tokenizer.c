/* test_tokenizer.c -- tokenizer tests.
 *
 *   test_tokenizer                 unit tests on small hand-made vocabularies
 *                                  (exact ids, spans, round trips, errors,
 *                                  speed on 1 MB and on pathological inputs)
 *   test_tokenizer ref GGUF TSV    compares with reference ids: every line of
 *                                  TSV is hex(text) TAB ids; the tokenizer is
 *                                  loaded from GGUF metadata.  Run by
 *                                  tests/tokenizer_reference.py. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/gguf.h"
#include "msadb.h"
#include "testutil.h"
#include "runtime/tokenizer.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Encodes into malloc'ed arrays (caller frees *ids and *spans). */
static size_t encode(const msadb_tokenizer *t, const char *s, size_t len, unsigned flags,
                     int32_t **ids, int64_t **spans)
{
    size_t cap = msadb_tokenizer_encode_bound(t, len), n = 0;
    *ids = malloc((cap ? cap : 1) * sizeof **ids);
    *spans = malloc((cap ? cap : 1) * 2 * sizeof **spans);
    CHECK(*ids && *spans);
    CHECK_OK(msadb_tokenizer_encode(t, s, len, flags, *ids, *spans, cap, &n));
    return n;
}

/* Spans tile the text: start at 0, contiguous, end at len. */
static int spans_tile(const int64_t *spans, size_t n, size_t len)
{
    int64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (spans[2 * i] != at || spans[2 * i + 1] < spans[2 * i])
            return 0;
        at = spans[2 * i + 1];
    }
    return (size_t)at == len;
}

/* decode(ids) == s[0, len) */
static int decodes_to(const msadb_tokenizer *t, const int32_t *ids, size_t n, const char *s,
                      size_t len)
{
    size_t need = 0;
    CHECK_OK(msadb_tokenizer_decode(t, ids, n, 0, NULL, 0, &need));
    char *buf = malloc(need + 1);
    CHECK(buf);
    size_t got = 0;
    CHECK_OK(msadb_tokenizer_decode(t, ids, n, 0, buf, need, &got));
    int ok = got == len && memcmp(buf, s, len) == 0;
    free(buf);
    return ok;
}

/* Streaming: the pieces concatenated, less the SPM dummy prefix's space,
 * equal decode. */
static int pieces_match(const msadb_tokenizer *t, const int32_t *ids, size_t n, const char *s,
                        size_t len)
{
    char *buf = malloc(4 * len + 16);
    CHECK(buf);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t pl;
        CHECK_OK(msadb_tokenizer_piece(t, ids[i], &p, &pl));
        if (i == 0 && msadb_tokenizer_space_prefix(t) &&
            msadb_tokenizer_token_type(t, ids[i]) == MSADB_TOKEN_NORMAL && pl > 0 && p[0] == ' ') {
            p++;
            pl--;
        }
        memcpy(buf + o, p, pl);
        o += pl;
    }
    int ok = o == len && memcmp(buf, s, len) == 0;
    free(buf);
    return ok;
}

/* Full round-trip check of one text; returns the token count. */
static size_t roundtrip(const msadb_tokenizer *t, const char *s, size_t len)
{
    int32_t *ids;
    int64_t *spans;
    size_t n = encode(t, s, len, 0, &ids, &spans);
    CHECK(spans_tile(spans, n, len));
    CHECK(decodes_to(t, ids, n, s, len));
    free(ids);
    free(spans);
    return n;
}

/* ------------------------------------------------------------------------ */
/* Small vocabularies                                                       */
/* ------------------------------------------------------------------------ */

#define MAXTOK 600

typedef struct vocab {
    const char *tok[MAXTOK];
    char store[MAXTOK][16];
    float score[MAXTOK];
    int32_t type[MAXTOK];
    uint32_t n;
    const char *merges[64];
    uint32_t n_merges;
} vocab;

static int32_t add(vocab *v, const char *s, float score, int32_t type)
{
    CHECK(v->n < MAXTOK && strlen(s) < 16);
    strcpy(v->store[v->n], s);
    v->tok[v->n] = v->store[v->n];
    v->score[v->n] = score;
    v->type[v->n] = type;
    return (int32_t)v->n++;
}

/* SPM: <unk> <s> </s>, 256 byte tokens, then pieces. */
static void spm_base(vocab *v)
{
    memset(v, 0, sizeof *v);
    add(v, "<unk>", 0, MSADB_TOKEN_UNKNOWN);
    add(v, "<s>", 0, MSADB_TOKEN_CONTROL);
    add(v, "</s>", 0, MSADB_TOKEN_CONTROL);
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        add(v, s, 0, MSADB_TOKEN_BYTE);
    }
}

static msadb_tokenizer *make(const vocab *v, int kind)
{
    msadb_tokenizer_config cfg;
    msadb_tokenizer_config_init(&cfg, kind);
    cfg.n_tokens = v->n;
    cfg.tokens = v->tok;
    cfg.scores = v->score;
    cfg.token_types = v->type;
    cfg.n_merges = v->n_merges;
    cfg.merges = v->merges;
    if (kind == MSADB_TOKENIZER_SPM) {
        cfg.unk_id = 0;
        cfg.bos_id = 1;
        cfg.eos_id = 2;
    }
    msadb_tokenizer *t = NULL;
    CHECK_OK(msadb_tokenizer_new(&cfg, &t));
    return t;
}

static void expect(const msadb_tokenizer *t, const char *s, const int32_t *want, size_t nwant,
                   const int64_t *want_spans)
{
    int32_t *ids;
    int64_t *spans;
    size_t n = encode(t, s, strlen(s), 0, &ids, &spans);
    int ok = n == nwant;
    for (size_t i = 0; ok && i < n; i++)
        ok = ids[i] == want[i] &&
             (!want_spans || (spans[2 * i] == want_spans[2 * i] &&
                              spans[2 * i + 1] == want_spans[2 * i + 1]));
    if (!ok) {
        fprintf(stderr, "encode(%s):", s);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d[%lld,%lld)", ids[i], (long long)spans[2 * i],
                    (long long)spans[2 * i + 1]);
        fprintf(stderr, "\n");
    }
    CHECK(ok);
    CHECK(spans_tile(spans, n, strlen(s)));
    CHECK(decodes_to(t, ids, n, s, strlen(s)));
    free(ids);
    free(spans);
}

#define SP "\xE2\x96\x81"
#define BYTE(b) (3 + (b))

static void test_spm_basic(void)
{
    vocab v;
    spm_base(&v);
    int32_t sp = add(&v, SP, -5, MSADB_TOKEN_NORMAL);
    int32_t a = add(&v, "a", -3, MSADB_TOKEN_NORMAL);
    int32_t b = add(&v, "b", -3, MSADB_TOKEN_NORMAL);
    add(&v, "c", -3, MSADB_TOKEN_NORMAL);
    int32_t spa = add(&v, SP "a", -1, MSADB_TOKEN_NORMAL);
    add(&v, "ab", -2, MSADB_TOKEN_NORMAL);
    int32_t spab = add(&v, SP "ab", -0.5f, MSADB_TOKEN_NORMAL);
    int32_t aa = add(&v, "aa", -1, MSADB_TOKEN_NORMAL);
    msadb_tokenizer *t = make(&v, MSADB_TOKENIZER_SPM);
    CHECK(msadb_tokenizer_n_vocab(t) == v.n);
    CHECK(msadb_tokenizer_special(t, MSADB_TOKEN_BOS) == 1);
    CHECK(msadb_tokenizer_special(t, MSADB_TOKEN_PAD) == -1);
    CHECK(msadb_tokenizer_token_id(t, SP "ab", 5) == spab);

    /* "▁a" (-1) beats "ab" (-2), then "▁a"+"b" = "▁ab"; the dummy "▁" has
     * an empty span, so "▁ab" covers "ab". */
    expect(t, "ab", (int32_t[]){spab}, 1, (int64_t[]){0, 2});
    /* A space's "▁" spans the space. */
    expect(t, "ab b", (int32_t[]){spab, sp, b}, 3, (int64_t[]){0, 2, 2, 3, 3, 4});
    /* Ties go to the leftmost pair: "▁a"(-1) at 0 and "aa"(-1) at 1 ->
     * "▁a", then "a" "a" -> "aa". */
    expect(t, "aaa", (int32_t[]){spa, aa}, 2, (int64_t[]){0, 1, 1, 3});
    /* Leading spaces: dummy + space. */
    expect(t, " a", (int32_t[]){sp, spa}, 2, (int64_t[]){0, 0, 0, 2});
    /* Byte fallback for a character without a piece: é = C3 A9. */
    expect(t, "\xC3\xA9", (int32_t[]){sp, BYTE(0xC3), BYTE(0xA9)}, 3,
           (int64_t[]){0, 0, 0, 1, 1, 2});
    /* Bytes that are not UTF-8 are byte tokens, and come back unchanged. */
    expect(t, "a\xFF", (int32_t[]){spa, BYTE(0xFF)}, 2, (int64_t[]){0, 1, 1, 2});
    /* A literal U+2581 is not a space: byte tokens keep it. */
    expect(t, SP, (int32_t[]){sp, BYTE(0xE2), BYTE(0x96), BYTE(0x81)}, 4,
           (int64_t[]){0, 0, 0, 1, 1, 2, 2, 3});
    /* "<s>" in text is text, not the control token. */
    expect(t, "<s>", (int32_t[]){sp, BYTE('<'), BYTE('s'), BYTE('>')}, 4, NULL);
    expect(t, "", NULL, 0, NULL);
    (void)a;

    /* BOS / EOS, with empty spans at the ends. */
    int32_t ids[8];
    int64_t spans[16];
    size_t n = 0;
    CHECK_OK(msadb_tokenizer_encode(t, "ab", 2, MSADB_TOKENIZE_ADD_BOS | MSADB_TOKENIZE_ADD_EOS,
                                    ids, spans, 8, &n));
    CHECK(n == 3 && ids[0] == 1 && ids[1] == spab && ids[2] == 2);
    CHECK(spans[0] == 0 && spans[1] == 0 && spans[4] == 2 && spans[5] == 2);
    /* Control tokens decode to nothing, or their text on request; the dummy
     * prefix space is dropped after a leading BOS too. */
    char out[32];
    size_t len;
    CHECK_OK(msadb_tokenizer_decode(t, ids, 3, 0, out, sizeof out, &len));
    CHECK(len == 2 && memcmp(out, "ab", 2) == 0);
    CHECK_OK(msadb_tokenizer_decode(t, ids, 3, MSADB_DETOKENIZE_SPECIAL, out, sizeof out, &len));
    CHECK(len == 9 && memcmp(out, "<s>ab</s>", 9) == 0);
    CHECK_OK(msadb_tokenizer_decode(t, ids + 1, 1, MSADB_DETOKENIZE_KEEP_SPACE, out, sizeof out,
                                    &len));
    CHECK(len == 3 && memcmp(out, " ab", 3) == 0);

    /* Size queries and small buffers. */
    CHECK_OK(msadb_tokenizer_encode(t, "ab b", 4, 0, NULL, NULL, 0, &n));
    CHECK(n == 3);
    CHECK_RC(msadb_tokenizer_encode(t, "ab b", 4, 0, ids, spans, 2, &n), MSADB_ELIMIT);
    CHECK(n == 3 && ids[0] == spab && ids[1] == sp);
    CHECK_RC(msadb_tokenizer_decode(t, ids, 2, 0, out, 2, &len), MSADB_ELIMIT);
    CHECK(len == 3); /* "ab" + " " */

    /* Validation. */
    CHECK_RC(msadb_tokenizer_encode(NULL, "a", 1, 0, ids, spans, 8, &n), MSADB_EINVAL);
    CHECK_RC(msadb_tokenizer_encode(t, NULL, 1, 0, ids, spans, 8, &n), MSADB_EINVAL);
    CHECK_RC(msadb_tokenizer_encode(t, "a", 1, 0, ids, spans, 8, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_tokenizer_encode(t, "a", 1, 0x100, ids, spans, 8, &n), MSADB_EINVAL);
    CHECK_OK(msadb_tokenizer_encode(t, NULL, 0, 0, ids, spans, 8, &n));
    CHECK(n == 0);
    int32_t bad[2] = {0, (int32_t)v.n};
    CHECK_RC(msadb_tokenizer_decode(t, bad, 2, 0, out, sizeof out, &len), MSADB_EINVAL);
    bad[1] = -1;
    CHECK_RC(msadb_tokenizer_decode(t, bad, 2, 0, out, sizeof out, &len), MSADB_EINVAL);
    const char *p;
    CHECK_RC(msadb_tokenizer_piece(t, (int32_t)v.n, &p, &len), MSADB_EINVAL);
    CHECK_OK(msadb_tokenizer_piece(t, spab, &p, &len));
    CHECK(len == 3 && memcmp(p, " ab", 3) == 0);
    CHECK_OK(msadb_tokenizer_piece(t, BYTE(0x0A), &p, &len));
    CHECK(len == 1 && p[0] == '\n');
    CHECK_OK(msadb_tokenizer_token_text(t, BYTE(0x0A), &p, &len));
    CHECK(len == 6 && memcmp(p, "<0x0A>", 6) == 0);
    CHECK(msadb_tokenizer_token_type(t, 1) == MSADB_TOKEN_CONTROL);
    CHECK(msadb_tokenizer_token_type(t, -1) == MSADB_EINVAL);
    msadb_tokenizer_free(t);
}

/* UNUSED pieces are merged through and split again at output, as
 * SentencePiece does; user-defined pieces are matched whole. */
static void test_spm_unused_user(void)
{
    vocab v;
    spm_base(&v);
    int32_t sp = add(&v, SP, -5, MSADB_TOKEN_NORMAL);
    int32_t a = add(&v, "a", -3, MSADB_TOKEN_NORMAL);
    int32_t b = add(&v, "b", -3, MSADB_TOKEN_NORMAL);
    int32_t c = add(&v, "c", -3, MSADB_TOKEN_NORMAL);
    add(&v, "ab", 0, MSADB_TOKEN_UNUSED);
    int32_t abc = add(&v, "abc", -1, MSADB_TOKEN_NORMAL);
    int32_t user = add(&v, "<x>", 0, MSADB_TOKEN_USER_DEFINED);
    int32_t user_sp = add(&v, SP "u", 0, MSADB_TOKEN_USER_DEFINED);
    msadb_tokenizer *t = make(&v, MSADB_TOKENIZER_SPM);
    expect(t, "ab", (int32_t[]){sp, a, b}, 3, (int64_t[]){0, 0, 0, 1, 1, 2});
    expect(t, "abc", (int32_t[]){sp, abc}, 2, (int64_t[]){0, 0, 0, 3});
    expect(t, "c<x>c", (int32_t[]){sp, c, user, c}, 4, (int64_t[]){0, 0, 0, 1, 1, 4, 4, 5});
    /* A user token's "▁" matches a source space. */
    expect(t, "c u", (int32_t[]){sp, c, user_sp}, 3, (int64_t[]){0, 0, 0, 1, 1, 3});
    msadb_tokenizer_free(t);
}

/* Without byte tokens, characters without a piece are <unk>, a run of
 * them one <unk> (SentencePiece joins them). */
static void test_spm_unknown(void)
{
    vocab v;
    memset(&v, 0, sizeof v);
    add(&v, "<unk>", 0, MSADB_TOKEN_UNKNOWN);
    int32_t sp = add(&v, SP, -1, MSADB_TOKEN_NORMAL);
    int32_t a = add(&v, "a", -1, MSADB_TOKEN_NORMAL);
    msadb_tokenizer *t = make(&v, MSADB_TOKENIZER_SPM);
    int32_t *ids;
    int64_t *spans;
    size_t n = encode(t, "xyz a", 5, 0, &ids, &spans);
    CHECK(n == 4 && ids[0] == sp && ids[1] == 0 && ids[2] == sp && ids[3] == a);
    CHECK(spans[2] == 0 && spans[3] == 3);
    CHECK(spans_tile(spans, n, 5));
    char out[32];
    size_t len;
    CHECK_OK(msadb_tokenizer_decode(t, ids, n, 0, out, sizeof out, &len));
    CHECK(len == 7 && memcmp(out, " \xE2\x81\x87  a", 7) == 0);
    free(ids);
    free(spans);
    msadb_tokenizer_free(t);
}

static void test_config_errors(void)
{
    vocab v;
    spm_base(&v);
    add(&v, SP, -1, MSADB_TOKEN_NORMAL);
    msadb_tokenizer_config cfg;
    msadb_tokenizer *t = NULL;
    msadb_tokenizer_config_init(&cfg, MSADB_TOKENIZER_SPM);
    cfg.n_tokens = v.n;
    cfg.tokens = v.tok;
    cfg.token_types = v.type;
    CHECK_OK(msadb_tokenizer_new(&cfg, &t));
    msadb_tokenizer_free(t);
    CHECK_RC(msadb_tokenizer_new(NULL, &t), MSADB_EINVAL);
    CHECK_RC(msadb_tokenizer_new(&cfg, NULL), MSADB_EINVAL);
    cfg.kind = 7;
    CHECK_RC(msadb_tokenizer_new(&cfg, &t), MSADB_EINVAL);
    CHECK(t == NULL);
    cfg.kind = MSADB_TOKENIZER_SPM;
    cfg.bos_id = (int32_t)v.n;
    CHECK_RC(msadb_tokenizer_new(&cfg, &t), MSADB_EINVAL);
    cfg.bos_id = -1;
    v.type[259] = 9;
    CHECK_RC(msadb_tokenizer_new(&cfg, &t), MSADB_EINVAL);
    v.type[259] = MSADB_TOKEN_NORMAL;
    float nan_scores[MAXTOK] = {0};
    nan_scores[5] = nanf("");
    cfg.scores = nan_scores;
    CHECK_RC(msadb_tokenizer_new(&cfg, &t), MSADB_EINVAL);
    cfg.scores = NULL;
    strcpy(v.store[10], "<0xZZ>"); /* a BYTE token that is not <0xNN> */
    CHECK_RC(msadb_tokenizer_new(&cfg, &t), MSADB_EINVAL);
    strcpy(v.store[10], "<0x07>");
    /* Neither all byte tokens nor <unk>: some bytes could not be encoded. */
    v.type[10] = MSADB_TOKEN_NORMAL;
    v.type[0] = MSADB_TOKEN_NORMAL;
    CHECK_RC(msadb_tokenizer_new(&cfg, &t), MSADB_EINVAL);
    cfg.unk_id = 0;
    CHECK_OK(msadb_tokenizer_new(&cfg, &t));
    msadb_tokenizer_free(t);
    /* A pattern PCRE2 refuses. */
    vocab w;
    memset(&w, 0, sizeof w);
    add(&w, "a", 0, MSADB_TOKEN_NORMAL);
    msadb_tokenizer_config_init(&cfg, MSADB_TOKENIZER_BPE);
    cfg.n_tokens = w.n;
    cfg.tokens = w.tok;
    cfg.unk_id = 0;
    cfg.pretokenizer = "(unclosed";
    CHECK_RC(msadb_tokenizer_new(&cfg, &t), MSADB_EINVAL);
    cfg.pretokenizer = NULL;
    CHECK_OK(msadb_tokenizer_new(&cfg, &t));
    msadb_tokenizer_free(t);
    msadb_tokenizer_free(NULL);
}

/* BPE: the 256 byte characters in byte order, then merges. */
static void bpe_base(vocab *v)
{
    memset(v, 0, sizeof *v);
    for (int b = 0; b < 256; b++) {
        unsigned cp = (unsigned)b;
        int self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        if (!self) {
            unsigned k = 0;
            for (int x = 0; x < b; x++)
                if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE))
                    k++;
            cp = 0x100 + k;
        }
        char s[4] = {0};
        if (cp < 0x80) {
            s[0] = (char)cp;
        } else {
            s[0] = (char)(0xC0 | cp >> 6);
            s[1] = (char)(0x80 | (cp & 0x3F));
        }
        add(v, s, 0, MSADB_TOKEN_NORMAL);
    }
}

static int32_t merge(vocab *v, const char *l, const char *r)
{
    char *m = malloc(40), joined[40];
    snprintf(m, 40, "%s %s", l, r);
    snprintf(joined, sizeof joined, "%s%s", l, r);
    v->merges[v->n_merges++] = m;
    return add(v, joined, 0, MSADB_TOKEN_NORMAL);
}

static void free_merges(vocab *v)
{
    for (uint32_t i = 0; i < v->n_merges; i++)
        free((void *)v->merges[i]);
}

#define G "\xC4\xA0" /* Ġ, GPT-2's space */

static void test_bpe_basic(void)
{
    vocab v;
    bpe_base(&v);
    merge(&v, G, "t");
    int32_t he = merge(&v, "h", "e");
    int32_t gthe = merge(&v, G "t", "he");
    int32_t gg = merge(&v, G, G);
    int32_t gb = merge(&v, G, "b");
    merge(&v, "t", "'");
    int32_t yth = merge(&v, "\xC3\xBF", "\xC3\xBE"); /* bytes FF FE */
    int32_t eot = add(&v, "<|endoftext|>", 0, MSADB_TOKEN_CONTROL);
    int32_t user = add(&v, "<u>", 0, MSADB_TOKEN_USER_DEFINED);
    msadb_tokenizer *t = make(&v, MSADB_TOKENIZER_BPE);
    /* " the" is one pre-token: Ġ t h e -> Ġt h e -> Ġt he -> Ġthe. */
    expect(t, " the", (int32_t[]){gthe}, 1, (int64_t[]){0, 4});
    expect(t, "the the", (int32_t[]){'t', he, gthe}, 3, (int64_t[]){0, 1, 1, 3, 3, 7});
    /* Pre-tokens "a" "1" " " " b" "!": "\s+(?!\S)" leaves the last space to
     * the word, so "Ġ Ġ" never merges here. */
    expect(t, "a1  b!", (int32_t[]){'a', '1', ' ', gb, '!'}, 5,
           (int64_t[]){0, 1, 1, 2, 2, 3, 3, 5, 5, 6});
    expect(t, "   ", (int32_t[]){gg, ' '}, 2, (int64_t[]){0, 2, 2, 3});
    /* "it's" is "it" + "'s": "t '" must not merge across them. */
    expect(t, "it's", (int32_t[]){'i', 't', '\'', 's'}, 4, NULL);
    /* Ill-formed UTF-8: a run of bad bytes is a pre-token of its own. */
    expect(t, "a\xFF\xFE" "b", (int32_t[]){'a', yth, 'b'}, 3,
           (int64_t[]){0, 1, 1, 3, 3, 4});
    expect(t, "\xC3", (int32_t[]){0xC3}, 1, NULL);
    /* Control text is plain text; user-defined tokens are matched whole. */
    int32_t *ids;
    int64_t *spans;
    size_t n = encode(t, "<|endoftext|>", 13, 0, &ids, &spans);
    CHECK(n > 1);
    for (size_t i = 0; i < n; i++)
        CHECK(ids[i] != eot);
    free(ids);
    free(spans);
    expect(t, "x<u>y", (int32_t[]){'x', user, 'y'}, 3, (int64_t[]){0, 1, 1, 4, 4, 5});
    /* Decoding: byte characters back to bytes; control tokens on request. */
    int32_t seq[3] = {gthe, eot, 0x0A};
    char out[32];
    size_t len;
    CHECK_OK(msadb_tokenizer_decode(t, seq, 3, 0, out, sizeof out, &len));
    CHECK(len == 5 && memcmp(out, " the\n", 5) == 0);
    CHECK_OK(msadb_tokenizer_decode(t, seq, 3, MSADB_DETOKENIZE_SPECIAL, out, sizeof out, &len));
    CHECK(len == 18 && memcmp(out, " the<|endoftext|>\n", 18) == 0);
    msadb_tokenizer_free(t);
    free_merges(&v);
}

/* GPT-2 merges in rounds: all occurrences of the best pair, left to right,
 * before any pair formed meanwhile.  With "aa a" ranked above "a a",
 * "aaaa" is "aa" "aa" (round "a a" takes both), not "aaa" "a". */
static void test_bpe_rounds(void)
{
    vocab v;
    bpe_base(&v);
    int32_t aaa = merge(&v, "aa", "a");
    int32_t aa = merge(&v, "a", "a");
    msadb_tokenizer *t = make(&v, MSADB_TOKENIZER_BPE);
    expect(t, "aaaa", (int32_t[]){aa, aa}, 2, (int64_t[]){0, 2, 2, 4});
    expect(t, "aaa", (int32_t[]){aaa}, 1, NULL);
    expect(t, "aaaaa", (int32_t[]){aa, aaa}, 2, NULL);
    msadb_tokenizer_free(t);
    free_merges(&v);
}

/* Random bytes round-trip through both kinds, spans tile. */
static void test_random_roundtrip(void)
{
    vocab sv, bv;
    spm_base(&sv);
    add(&sv, SP, -5, MSADB_TOKEN_NORMAL);
    add(&sv, "a", -3, MSADB_TOKEN_NORMAL);
    add(&sv, SP "a", -1, MSADB_TOKEN_NORMAL);
    add(&sv, SP SP, -2, MSADB_TOKEN_NORMAL);
    bpe_base(&bv);
    merge(&bv, G, "a");
    merge(&bv, "a", "a");
    msadb_tokenizer *ts = make(&sv, MSADB_TOKENIZER_SPM);
    msadb_tokenizer *tb = make(&bv, MSADB_TOKENIZER_BPE);
    static const char alphabet[] = "a a\n\t\xE2\x96\x81\xC3\xA9\xFF\x80\xF0\x9F\x98\x80 '1";
    uint64_t seed = 42;
    char buf[256];
    for (int iter = 0; iter < 3000; iter++) {
        size_t len = tu_rand(&seed) % sizeof buf;
        for (size_t i = 0; i < len; i++)
            buf[i] = (iter & 1) ? (char)tu_rand(&seed)
                                : alphabet[tu_rand(&seed) % (sizeof alphabet - 1)];
        roundtrip(ts, buf, len);
        roundtrip(tb, buf, len);
    }
    msadb_tokenizer_free(ts);
    msadb_tokenizer_free(tb);
    free_merges(&bv);
}

/* A tokenizer is shared by threads: concurrent encodes agree. */
typedef struct thread_job {
    const msadb_tokenizer *t;
    const char *text;
    size_t len, n;
    int32_t *ids;
} thread_job;

static void *thread_encode(void *arg)
{
    thread_job *j = arg;
    int64_t *spans;
    for (int rep = 0; rep < 20; rep++) {
        free(j->ids);
        j->n = encode(j->t, j->text, j->len, 0, &j->ids, &spans);
        free(spans);
    }
    return NULL;
}

static void test_threads(void)
{
    vocab sv, bv;
    spm_base(&sv);
    add(&sv, SP, -5, MSADB_TOKEN_NORMAL);
    add(&sv, "e", -3, MSADB_TOKEN_NORMAL);
    add(&sv, SP "t", -1, MSADB_TOKEN_NORMAL);
    bpe_base(&bv);
    merge(&bv, G, "t");
    merge(&bv, "h", "e");
    msadb_tokenizer *ts[2] = {make(&sv, MSADB_TOKENIZER_SPM), make(&bv, MSADB_TOKENIZER_BPE)};
    char text[20000];
    for (size_t i = 0; i < sizeof text; i++)
        text[i] = "the tee\n \xC3\xA9"[i % 12];
    for (int k = 0; k < 2; k++) {
        thread_job jobs[4];
        pthread_t th[4];
        for (int i = 0; i < 4; i++) {
            jobs[i] = (thread_job){ts[k], text, sizeof text, 0, NULL};
            CHECK(pthread_create(&th[i], NULL, thread_encode, &jobs[i]) == 0);
        }
        for (int i = 0; i < 4; i++)
            CHECK(pthread_join(th[i], NULL) == 0);
        for (int i = 1; i < 4; i++)
            CHECK(jobs[i].n == jobs[0].n &&
                  memcmp(jobs[i].ids, jobs[0].ids, jobs[0].n * sizeof(int32_t)) == 0);
        CHECK(decodes_to(ts[k], jobs[0].ids, jobs[0].n, text, sizeof text));
        for (int i = 0; i < 4; i++)
            free(jobs[i].ids);
        msadb_tokenizer_free(ts[k]);
    }
    free_merges(&bv);
}

/* Linear-ish time: 1 MB of prose, and 1 MB single "words" that a quadratic
 * merge would never finish. */
static void test_speed(void)
{
    vocab sv, bv;
    spm_base(&sv);
    add(&sv, SP, -5, MSADB_TOKEN_NORMAL);
    add(&sv, "a", -3, MSADB_TOKEN_NORMAL);
    add(&sv, "aa", -2, MSADB_TOKEN_NORMAL);
    add(&sv, "aaaa", -1, MSADB_TOKEN_NORMAL);
    add(&sv, SP SP, -2, MSADB_TOKEN_NORMAL);
    bpe_base(&bv);
    merge(&bv, "a", "a");
    merge(&bv, "aa", "aa");
    merge(&bv, G, G);
    msadb_tokenizer *ts = make(&sv, MSADB_TOKENIZER_SPM);
    msadb_tokenizer *tb = make(&bv, MSADB_TOKENIZER_BPE);
    size_t len = 1 << 20;
    char *text = malloc(len);
    CHECK(text);
    const char *inputs[3] = {"prose", "aaaa...", "spaces"};
    for (int k = 0; k < 3; k++) {
        if (k == 0) {
            static const char *words[] = {"the ", "memory ", "of ", "attention, ", "database. ",
                                          "It's ", "1234 ", "tokens\n"};
            size_t o = 0;
            uint64_t seed = 7;
            while (o < len) {
                const char *w = words[tu_rand(&seed) % 8];
                size_t wl = strlen(w);
                memcpy(text + o, w, o + wl <= len ? wl : len - o);
                o += wl;
            }
        } else {
            memset(text, k == 1 ? 'a' : ' ', len);
        }
        for (int which = 0; which < 2; which++) {
            double t0 = now_s();
            size_t n = roundtrip(which ? tb : ts, text, len);
            double dt = now_s() - t0;
            printf("%s %s: 1 MiB -> %zu tokens, %.3f s (encode + decode + checks)\n",
                   which ? "bpe" : "spm", inputs[k], n, dt);
            CHECK(dt < 10.0); /* generous: catches quadratic behaviour, not noise */
        }
    }
    free(text);
    msadb_tokenizer_free(ts);
    msadb_tokenizer_free(tb);
    free_merges(&bv);
}

/* ------------------------------------------------------------------------ */
/* GGUF loader                                                              */
/* ------------------------------------------------------------------------ */

typedef struct gbuf {
    uint8_t *p;
    size_t n, cap;
    uint64_t n_kv;
} gbuf;

static void g_put(gbuf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = 2 * (b->n + n) + 64;
        b->p = realloc(b->p, b->cap);
        CHECK(b->p);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void g_u32(gbuf *b, uint32_t v) { g_put(b, &v, 4); }
static void g_u64(gbuf *b, uint64_t v) { g_put(b, &v, 8); }
static void g_str(gbuf *b, const char *s)
{
    g_u64(b, strlen(s));
    g_put(b, s, strlen(s));
}
static void g_key(gbuf *b, const char *key, uint32_t type)
{
    g_str(b, key);
    g_u32(b, type);
    b->n_kv++;
}
static void g_kv_str(gbuf *b, const char *key, const char *v)
{
    g_key(b, key, MSADB_GGUF_STRING);
    g_str(b, v);
}
static void g_kv_u32(gbuf *b, const char *key, uint32_t v)
{
    g_key(b, key, MSADB_GGUF_UINT32);
    g_u32(b, v);
}
static void g_kv_bool(gbuf *b, const char *key, int v)
{
    uint8_t x = (uint8_t)v;
    g_key(b, key, MSADB_GGUF_BOOL);
    g_put(b, &x, 1);
}
static void g_kv_strs(gbuf *b, const char *key, const char *const *v, size_t n)
{
    g_key(b, key, MSADB_GGUF_ARRAY);
    g_u32(b, MSADB_GGUF_STRING);
    g_u64(b, n);
    for (size_t i = 0; i < n; i++)
        g_str(b, v[i]);
}
static void g_kv_nums(gbuf *b, const char *key, uint32_t et, const void *v, size_t n)
{
    g_key(b, key, MSADB_GGUF_ARRAY);
    g_u32(b, et);
    g_u64(b, n);
    g_put(b, v, 4 * n);
}

/* Wraps the collected metadata in a GGUF header and loads a tokenizer. */
static int from_gguf(gbuf *kv, msadb_tokenizer **t)
{
    gbuf f = {0};
    g_put(&f, "GGUF", 4);
    g_u32(&f, 3);
    g_u64(&f, 0);
    g_u64(&f, kv->n_kv);
    g_put(&f, kv->p, kv->n);
    static const uint8_t zeros[32];
    g_put(&f, zeros, (32 - f.n % 32) % 32);
    msadb_gguf *g = NULL;
    CHECK_OK(msadb_gguf_open_memory(f.p, f.n, &g));
    int rc = msadb_tokenizer_from_gguf(g, t);
    msadb_gguf_close(g);
    free(f.p);
    free(kv->p);
    memset(kv, 0, sizeof *kv);
    return rc;
}

static void test_gguf_loader(void)
{
    vocab v;
    spm_base(&v);
    add(&v, SP, -2, MSADB_TOKEN_NORMAL);
    add(&v, "a", -2, MSADB_TOKEN_NORMAL);
    int32_t spa = add(&v, SP "a", -1, MSADB_TOKEN_NORMAL);
    gbuf b = {0};
    msadb_tokenizer *t = NULL;

    /* A llama tokenizer; add_bos defaults to true for llama. */
    g_kv_str(&b, "tokenizer.ggml.model", "llama");
    g_kv_strs(&b, "tokenizer.ggml.tokens", v.tok, v.n);
    g_kv_nums(&b, "tokenizer.ggml.scores", MSADB_GGUF_FLOAT32, v.score, v.n);
    g_kv_nums(&b, "tokenizer.ggml.token_type", MSADB_GGUF_INT32, v.type, v.n);
    g_kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
    g_kv_u32(&b, "tokenizer.ggml.eos_token_id", 2);
    g_kv_u32(&b, "tokenizer.ggml.unknown_token_id", 0);
    g_kv_u32(&b, "tokenizer.ggml.padding_token_id", 100000); /* beyond: none */
    CHECK_OK(from_gguf(&b, &t));
    CHECK(msadb_tokenizer_kind(t) == MSADB_TOKENIZER_SPM);
    CHECK(msadb_tokenizer_add_bos(t) == 1 && msadb_tokenizer_add_eos(t) == 0);
    CHECK(msadb_tokenizer_space_prefix(t) == 1);
    CHECK(msadb_tokenizer_special(t, MSADB_TOKEN_EOS) == 2);
    CHECK(msadb_tokenizer_special(t, MSADB_TOKEN_PAD) == -1);
    expect(t, "a", (int32_t[]){spa}, 1, (int64_t[]){0, 1});
    msadb_tokenizer_free(t);

    /* add_space_prefix false: no dummy prefix. */
    g_kv_str(&b, "tokenizer.ggml.model", "llama");
    g_kv_strs(&b, "tokenizer.ggml.tokens", v.tok, v.n);
    g_kv_nums(&b, "tokenizer.ggml.token_type", MSADB_GGUF_INT32, v.type, v.n);
    g_kv_bool(&b, "tokenizer.ggml.add_space_prefix", 0);
    g_kv_bool(&b, "tokenizer.ggml.add_bos_token", 0);
    CHECK_OK(from_gguf(&b, &t));
    CHECK(msadb_tokenizer_add_bos(t) == 0);
    CHECK(msadb_tokenizer_space_prefix(t) == 0);
    expect(t, "a", (int32_t[]){(int32_t)v.n - 2}, 1, NULL);
    msadb_tokenizer_free(t);

    /* Errors. */
    g_kv_strs(&b, "tokenizer.ggml.tokens", v.tok, v.n);
    CHECK_RC(from_gguf(&b, &t), MSADB_ENOTFOUND); /* no model */
    g_kv_str(&b, "tokenizer.ggml.model", "bert");
    g_kv_strs(&b, "tokenizer.ggml.tokens", v.tok, v.n);
    CHECK_RC(from_gguf(&b, &t), MSADB_EINVAL);
    g_kv_str(&b, "tokenizer.ggml.model", "llama");
    CHECK_RC(from_gguf(&b, &t), MSADB_ENOTFOUND); /* no tokens */
    g_kv_str(&b, "tokenizer.ggml.model", "llama");
    g_kv_nums(&b, "tokenizer.ggml.tokens", MSADB_GGUF_INT32, v.type, v.n);
    CHECK_RC(from_gguf(&b, &t), MSADB_EDTYPE);
    g_kv_str(&b, "tokenizer.ggml.model", "llama");
    g_kv_strs(&b, "tokenizer.ggml.tokens", v.tok, v.n);
    g_kv_nums(&b, "tokenizer.ggml.scores", MSADB_GGUF_FLOAT32, v.score, v.n - 1);
    CHECK_RC(from_gguf(&b, &t), MSADB_EINVAL);
    CHECK(t == NULL);

    /* gpt2: GPT-2's pre-tokenizer only. */
    vocab w;
    bpe_base(&w);
    merge(&w, "a", "b");
    for (int k = 0; k < 3; k++) {
        static const char *pre[3] = {"gpt-2", "default", "llama-bpe"};
        g_kv_str(&b, "tokenizer.ggml.model", "gpt2");
        g_kv_str(&b, "tokenizer.ggml.pre", pre[k]);
        g_kv_strs(&b, "tokenizer.ggml.tokens", w.tok, w.n);
        g_kv_strs(&b, "tokenizer.ggml.merges", w.merges, w.n_merges);
        int rc = from_gguf(&b, &t);
        if (k < 2) {
            CHECK_OK(rc);
            CHECK(msadb_tokenizer_add_bos(t) == 0);
            expect(t, "ab", (int32_t[]){(int32_t)w.n - 1}, 1, NULL);
            msadb_tokenizer_free(t);
        } else {
            CHECK_RC(rc, MSADB_EINVAL);
        }
    }
    free_merges(&w);
}

/* ------------------------------------------------------------------------ */
/* Reference mode                                                           */
/* ------------------------------------------------------------------------ */

typedef struct ref_case {
    char *text;
    size_t len;
    int32_t *ids;
    size_t n;
} ref_case;

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Reads "hex TAB ids" lines; returns the number of cases. */
static size_t read_cases(const char *path, ref_case **out)
{
    FILE *f = fopen(path, "rb");
    CHECK(f);
    size_t cap = 64, n = 0, lcap = 1 << 16;
    ref_case *cs = malloc(cap * sizeof *cs);
    char *line = malloc(lcap);
    CHECK(cs && line);
    for (;;) {
        size_t ll = 0;
        int c;
        while ((c = fgetc(f)) != EOF && c != '\n') {
            if (ll + 1 >= lcap) {
                lcap *= 2;
                line = realloc(line, lcap);
                CHECK(line);
            }
            line[ll++] = (char)c;
        }
        line[ll] = 0;
        if (ll > 0 && line[0] != '#') {
            if (n == cap) {
                cap *= 2;
                cs = realloc(cs, cap * sizeof *cs);
                CHECK(cs);
            }
            char *tab = strchr(line, '\t');
            CHECK(tab);
            size_t hl = (size_t)(tab - line);
            CHECK(hl % 2 == 0);
            ref_case *rc = &cs[n++];
            rc->len = hl / 2;
            rc->text = malloc(rc->len + 1);
            rc->ids = malloc((strlen(tab) + 1) * sizeof *rc->ids);
            CHECK(rc->text && rc->ids);
            for (size_t i = 0; i < rc->len; i++) {
                int hi = hexval(line[2 * i]), lo = hexval(line[2 * i + 1]);
                CHECK(hi >= 0 && lo >= 0);
                rc->text[i] = (char)(hi * 16 + lo);
            }
            rc->n = 0;
            char *p = tab + 1, *end;
            for (;;) {
                long v = strtol(p, &end, 10);
                if (end == p)
                    break;
                rc->ids[rc->n++] = (int32_t)v;
                p = end;
            }
        }
        if (c == EOF)
            break;
    }
    fclose(f);
    free(line);
    *out = cs;
    return n;
}

static void show(const msadb_tokenizer *t, const char *what, const int32_t *ids, size_t n)
{
    fprintf(stderr, "  %s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 40; i++) {
        const char *p;
        size_t l;
        if (msadb_tokenizer_token_text(t, ids[i], &p, &l) == 0)
            fprintf(stderr, " %d'%.*s'", ids[i], (int)l, p);
        else
            fprintf(stderr, " %d?", ids[i]);
    }
    fprintf(stderr, "%s\n", n > 40 ? " ..." : "");
}

static int ref_mode(const char *gguf_path, const char *tsv)
{
    msadb_gguf *g = NULL;
    msadb_tokenizer *t = NULL;
    CHECK_OK(msadb_gguf_open(gguf_path, &g));
    CHECK_OK(msadb_tokenizer_from_gguf(g, &t));
    msadb_gguf_close(g);
    ref_case *cs;
    size_t n_cases = read_cases(tsv, &cs), bad = 0, tokens = 0, total_len = 0;
    for (size_t k = 0; k < n_cases; k++) {
        ref_case *c = &cs[k];
        int32_t *ids;
        int64_t *spans;
        size_t n = encode(t, c->text, c->len, 0, &ids, &spans);
        tokens += n;
        total_len += c->len;
        int same = n == c->n && memcmp(ids, c->ids, n * sizeof *ids) == 0;
        int tiles = spans_tile(spans, n, c->len);
        int rt = decodes_to(t, ids, n, c->text, c->len);
        int rt_ref = decodes_to(t, c->ids, c->n, c->text, c->len);
        int streamed = pieces_match(t, ids, n, c->text, c->len);
        if (!(same && tiles && rt && rt_ref && streamed)) {
            if (bad++ < 8) {
                fprintf(stderr, "case %zu (%zu bytes) %.60s: ids %s, spans %s, round trip %s, "
                        "reference decodes %s, pieces %s\n", k, c->len, c->text,
                        same ? "equal" : "DIFFER", tiles ? "ok" : "BAD", rt ? "ok" : "BAD",
                        rt_ref ? "ok" : "BAD", streamed ? "ok" : "BAD");
                if (!same) {
                    size_t i = 0;
                    while (i < n && i < c->n && ids[i] == c->ids[i])
                        i++;
                    size_t from = i > 3 ? i - 3 : 0;
                    fprintf(stderr, "  first difference at token %zu\n", i);
                    show(t, "msadb    ", ids + from, n - from);
                    show(t, "reference", c->ids + from, c->n - from);
                }
            }
        }
        free(ids);
        free(spans);
    }
    printf("%s: %zu cases, %zu bytes, %zu tokens, %zu mismatches\n", tsv, n_cases, total_len,
           tokens, bad);

    /* Ill-formed UTF-8 with the real vocabulary: exact round trips. */
    uint64_t seed = 99;
    char buf[300];
    for (int iter = 0; iter < 2000; iter++) {
        size_t len = tu_rand(&seed) % sizeof buf;
        for (size_t i = 0; i < len; i++) {
            uint64_t r = tu_rand(&seed);
            buf[i] = (r & 3) == 0 ? (char)(r >> 8) : "ab \n\xC3\xA9\xE2\x96\x81"[(r >> 8) % 9];
        }
        roundtrip(t, buf, len);
    }

    /* Speed on about 1 MB made of the cases' texts. */
    size_t big = 1 << 20, o = 0;
    char *text = malloc(big + 4096);
    CHECK(text);
    while (o < big && total_len > 0)
        for (size_t k = 0; k < n_cases && o < big; k++)
            if (cs[k].len < 4096) {
                memcpy(text + o, cs[k].text, cs[k].len);
                o += cs[k].len;
            }
    double t0 = now_s();
    size_t nt = 0;
    CHECK_OK(msadb_tokenizer_encode(t, text, o, 0, NULL, NULL, 0, &nt));
    double dt = now_s() - t0;
    printf("encode of %zu bytes: %zu tokens in %.3f s (%.1f MB/s)\n", o, nt, dt,
           dt > 0 ? o / dt / 1e6 : 0.0);
    CHECK(dt < 10.0);
    free(text);
    for (size_t k = 0; k < n_cases; k++) {
        free(cs[k].text);
        free(cs[k].ids);
    }
    free(cs);
    msadb_tokenizer_free(t);
    return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "ref") == 0)
        return ref_mode(argv[2], argv[3]);
    if (argc != 1) {
        fprintf(stderr, "usage: test_tokenizer [ref GGUF TSV]\n");
        return 2;
    }
    test_spm_basic();
    test_spm_unused_user();
    test_spm_unknown();
    test_config_errors();
    test_bpe_basic();
    test_bpe_rounds();
    test_gguf_loader();
    test_random_roundtrip();
    test_threads();
    test_speed();
    printf("ok\n");
    return 0;
}
