/* llm.c -- the built-in runtime behind the public API: a GGUF llama model
 * with its tokenizer, ingesting text into a store (capture) and answering
 * questions with memory attention merged into every memory layer. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>

#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "store/store.h"
#include "runtime/gguf.h"
#include "runtime/matmul.h"
#include "runtime/model.h"
#include "codec/summary.h"
#include "runtime/tokenizer.h"

/* Longest run of tokens captured as one document; longer text becomes
 * several consecutive documents (positions restart in each). */
#define LLM_DOC_MAX ((size_t)MSADB_LLM_DOC_MAX)

struct msadb_llm {
    msadb_model *model;
    msadb_tokenizer *tok;
    /* how the model was trained to route (GGUF msadb.routing.*), 0 = not said */
    uint32_t route_summary;
    int route_score;
    int segment;      /* MSADB_SEGMENT_* that ingest runs (GGUF msadb.segment, set_segment) */
    char *abstain;    /* the declared "not in memory" answer (GGUF msadb.abstain), or NULL */
    size_t abstain_len;
    char *followup;   /* the declared prefix of a follow-up question (GGUF msadb.followup), or NULL */
    size_t followup_len;
    char *path;       /* absolute path of the file */
    int have_id;      /* id computed (msadb_llm_identity) */
    msadb_model_id id;
};

typedef struct {
    const char *name;
    int value;
} named_value;

/* An optional string key of the model naming one of n values: 0 with *out
 * set (left alone when the key is absent), MSADB_EINVAL for an unknown
 * name, MSADB_ECORRUPT for a value of another type. */
static int read_named(const msadb_gguf *g, const char *key, const named_value *vals, size_t n,
                      int *out)
{
    char v[16];
    int rc = msadb_gguf_get_cstr(g, key, v, sizeof v);
    if (rc == MSADB_ENOTFOUND)
        return 0;
    if (rc)
        return rc == MSADB_ELIMIT ? MSADB_EINVAL : rc == MSADB_EDTYPE ? MSADB_ECORRUPT : rc;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(vals[i].name, v)) {
            *out = vals[i].value;
            return 0;
        }
    return MSADB_EINVAL;
}

/* The model's declared routing: msadb.routing.summary ("mean", "reps",
 * "minmax") and msadb.routing.score ("dot", "cosine", "dot-centred"). */
static int read_routing(msadb_llm *llm)
{
    static const named_value summaries[] = {{"mean", MSADB_SUMMARY_MEAN},
                                            {"reps", MSADB_SUMMARY_REPS},
                                            {"minmax", MSADB_SUMMARY_MINMAX}};
    static const named_value scores[] = {
        {"dot", MSADB_SCORE_DOT}, {"cosine", MSADB_SCORE_COSINE}, {"dot-centred", MSADB_SCORE_DOT_CENTRED}};
    const msadb_gguf *g = msadb_model_gguf(llm->model);
    int summary = 0;
    int rc = read_named(g, "msadb.routing.summary", summaries,
                        sizeof summaries / sizeof summaries[0], &summary);
    if (!rc)
        rc = read_named(g, "msadb.routing.score", scores, sizeof scores / sizeof scores[0],
                        &llm->route_score);
    llm->route_summary = (uint32_t)summary;
    return rc;
}

/* How the model reads a document at ingest (GGUF msadb.segment: "document",
 * the default, "paragraph" or "joined"). */
static const named_value segments[] = {{"document", MSADB_SEGMENT_DOCUMENT},
                                       {"paragraph", MSADB_SEGMENT_PARAGRAPH},
                                       {"joined", MSADB_SEGMENT_JOINED}};

static int read_segment(const msadb_gguf *g, int *segment)
{
    *segment = MSADB_SEGMENT_DOCUMENT;
    return read_named(g, "msadb.segment", segments, sizeof segments / sizeof segments[0], segment);
}

/* Longest declared abstain answer (msadb.abstain) and follow-up prefix
 * (msadb.followup), and the longest answer taken as a follow-up question
 * (a longer one is an answer), in bytes. */
#define LLM_ABSTAIN_MAX 256
#define LLM_FOLLOWUP_MAX 64
#define LLM_FOLLOWUP_Q_MAX 1024
/* Tokens a round that may be a follow-up question generates at most: the
 * answer limit (max_tokens) holds for answers, not for a follow-up. */
#define LLM_FOLLOWUP_TOKENS 64u

/* An optional short string key of the model, *s and *n its bytes: 0,
 * MSADB_ENOTFOUND (absent), MSADB_EINVAL (not a string, empty, longer than
 * max or holding a NUL byte).  The keys: msadb.abstain, the answer the model
 * was trained to give when memory does not hold what is asked, and
 * msadb.followup, the prefix of an answer that is a follow-up question. */
static int short_str(const msadb_gguf *g, const char *key, size_t max, const char **s, size_t *n)
{
    int rc = msadb_gguf_get_str(g, key, s, n);
    if (rc)
        return rc == MSADB_EDTYPE ? MSADB_EINVAL : rc;
    return *n == 0 || *n > max || memchr(*s, 0, *n) ? MSADB_EINVAL : 0;
}

/* short_str's value, copied NUL-terminated into *out (left NULL when the
 * key is absent). */
static int read_short_str(msadb_llm *llm, const char *key, size_t max, char **out, size_t *len)
{
    const char *s;
    size_t n;
    int rc = short_str(msadb_model_gguf(llm->model), key, max, &s, &n);
    if (rc)
        return rc == MSADB_ENOTFOUND ? 0 : rc;
    if (!(*out = malloc(n + 1)))
        return MSADB_ENOMEM;
    memcpy(*out, s, n);
    (*out)[n] = 0;
    *len = n;
    return 0;
}

int msadb_llm_open(const char *path, msadb_llm **out)
{
    if (!path || !out)
        return MSADB_EINVAL;
    *out = NULL;
    msadb_llm *llm = calloc(1, sizeof *llm);
    if (!llm)
        return MSADB_ENOMEM;
    int rc = msadb_model_open(path, &llm->model);
    if (!rc)
        rc = msadb_tokenizer_from_gguf(msadb_model_gguf(llm->model), &llm->tok);
    if (!rc)
        rc = read_routing(llm);
    if (!rc)
        rc = read_short_str(llm, "msadb.abstain", LLM_ABSTAIN_MAX, &llm->abstain, &llm->abstain_len);
    if (!rc)
        rc = read_short_str(llm, "msadb.followup", LLM_FOLLOWUP_MAX, &llm->followup,
                            &llm->followup_len);
    if (!rc)
        rc = read_segment(msadb_model_gguf(llm->model), &llm->segment);
    if (!rc && !(llm->path = realpath(path, NULL)))
        rc = errno;
    if (rc) {
        msadb_llm_close(llm);
        return rc;
    }
    *out = llm;
    return 0;
}

void msadb_llm_close(msadb_llm *llm)
{
    if (!llm)
        return;
    msadb_tokenizer_free(llm->tok);
    msadb_model_free(llm->model);
    free(llm->abstain);
    free(llm->followup);
    free(llm->path);
    free(llm);
}

/* Whether the store holds K/V of this model's shape. */
static int check_signature(const msadb_llm *llm, const msadb_store *st)
{
    msadb_signature want;
    int rc = msadb_llm_signature(llm, &want);
    if (rc)
        return rc;
    const msadb_signature *have = msadb_store_signature(st);
    if (!have)
        return MSADB_EINVAL;
    if (have->n_layers != want.n_layers || have->n_kv_heads != want.n_kv_heads ||
        have->n_q_heads != want.n_q_heads || have->head_dim != want.head_dim)
        return MSADB_ESIGNATURE;
    return 0;
}

int msadb_llm_available(void) { return 1; }

/* BLAKE2b-256 of a file, read in 1 MiB pieces. */
static int hash_file(const char *path, uint8_t out[MSADB_MODEL_HASH_BYTES], uint64_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, MSADB_MODEL_HASH_BYTES);
    size_t cap = 1u << 20;
    unsigned char *buf = malloc(cap);
    int rc = buf ? 0 : MSADB_ENOMEM;
    *size = 0;
    while (!rc) {
        ssize_t got = read(fd, buf, cap);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            rc = errno;
        if (got <= 0)
            break;
        crypto_generichash_update(&h, buf, (unsigned long long)got);
        *size += (uint64_t)got;
    }
    close(fd);
    free(buf);
    if (!rc)
        crypto_generichash_final(&h, out, MSADB_MODEL_HASH_BYTES);
    return rc;
}

int msadb_llm_identity(msadb_llm *llm, msadb_model_id *out)
{
    if (!llm || !out)
        return MSADB_EINVAL;
    if (!llm->have_id) {
        msadb_model_id *id = &llm->id;
        memset(id, 0, sizeof *id);
        if (strlen(llm->path) > MSADB_MODEL_PATH_MAX)
            return MSADB_ELIMIT;
        strcpy(id->path, llm->path);
        int rc = hash_file(llm->path, id->hash, &id->file_size);
        if (rc)
            return rc;
        const msadb_model_config *c = msadb_model_get_config(llm->model);
        id->n_layers = c->n_layers;
        id->n_kv_heads = c->n_kv_heads;
        id->n_q_heads = c->n_heads;
        id->head_dim = c->head_dim;
        llm->have_id = 1;
    }
    *out = llm->id;
    return 0;
}

int msadb_llm_check_store(msadb_llm *llm, msadb_store *st, msadb_model_id *rec)
{
    msadb_model_id local;
    msadb_model_id *r = rec ? rec : &local;
    if (rec)
        memset(rec, 0, sizeof *rec);
    if (!llm || !st)
        return MSADB_EINVAL;
    int rc = check_signature(llm, st);
    if (rc)
        return rc;
    rc = msadb_store_get_model(st, r);
    if (rc == MSADB_ENOTFOUND) {
        memset(r, 0, sizeof *r);
        return 0;
    }
    msadb_model_id mine;
    if (rc || (rc = msadb_llm_identity(llm, &mine)))
        return rc;
    return memcmp(mine.hash, r->hash, sizeof mine.hash) == 0 ? 0 : MSADB_EMODEL;
}

int msadb_llm_explain(const char *path, int err, char *buf, size_t cap)
{
    if (!path || !buf || !cap)
        return MSADB_EINVAL;
    unsigned char magic[4] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t got = fd >= 0 ? read(fd, magic, 4) : -1;
    int open_errno = errno;
    if (fd >= 0)
        close(fd);
    if (fd < 0) {
        snprintf(buf, cap, "%s", strerror(open_errno));
        return 0;
    }
    if (got != 4 || memcmp(magic, "GGUF", 4) != 0) {
        snprintf(buf, cap, "not a GGUF file (it does not begin with 'GGUF'); give a llama-architecture "
                           ".gguf model");
        return 0;
    }
    msadb_gguf *g = NULL;
    int rc = msadb_gguf_open(path, &g);
    if (rc) {
        snprintf(buf, cap, "a GGUF file the reader refuses (%s); it may be truncated or of an "
                           "unsupported GGUF version (3 is read)",
                 msadb_strerror(rc));
        return 0;
    }
    char arch[64] = "", tmodel[64] = "", pre[64] = "";
    msadb_gguf_get_cstr(g, "general.architecture", arch, sizeof arch);
    msadb_gguf_get_cstr(g, "tokenizer.ggml.model", tmodel, sizeof tmodel);
    int has_pre = msadb_gguf_get_cstr(g, "tokenizer.ggml.pre", pre, sizeof pre) == 0;
    const char *ab;
    size_t abn;
    int bad_abstain = short_str(g, "msadb.abstain", LLM_ABSTAIN_MAX, &ab, &abn) == MSADB_EINVAL;
    int bad_followup = short_str(g, "msadb.followup", LLM_FOLLOWUP_MAX, &ab, &abn) == MSADB_EINVAL;
    int seg, bad_segment = read_segment(g, &seg) != 0;
    msadb_gguf_close(g);
    if (strcmp(arch, "llama") != 0)
        snprintf(buf, cap, "its architecture '%s' (general.architecture) is not one the built-in "
                           "runtime runs: only llama",
                 arch);
    else if (strcmp(tmodel, "llama") != 0 && strcmp(tmodel, "gpt2") != 0)
        snprintf(buf, cap, "its tokenizer '%s' (tokenizer.ggml.model) is not implemented: only "
                           "'llama' (SentencePiece) and 'gpt2' (BPE)",
                 tmodel);
    else if (!strcmp(tmodel, "gpt2") && has_pre && strcmp(pre, "default") && strcmp(pre, "gpt-2"))
        snprintf(buf, cap, "its pre-tokenizer '%s' (tokenizer.ggml.pre) is not implemented: only "
                           "GPT-2's ('default', 'gpt-2') is; the rest of the model is supported",
                 pre);
    else if (err == MSADB_EINVAL && bad_abstain)
        snprintf(buf, cap, "its msadb.abstain (the answer the model gives when memory does not hold "
                           "what is asked) is not a string of 1-%d bytes without NUL; correct or "
                           "delete that key",
                 LLM_ABSTAIN_MAX);
    else if (err == MSADB_EINVAL && bad_followup)
        snprintf(buf, cap, "its msadb.followup (the prefix of an answer that is a follow-up question "
                           "to ask memory) is not a string of 1-%d bytes without NUL; correct or "
                           "delete that key",
                 LLM_FOLLOWUP_MAX);
    else if ((err == MSADB_EINVAL || err == MSADB_ECORRUPT) && bad_segment)
        snprintf(buf, cap, "its msadb.segment (how the model reads a document at ingest) is not "
                           "the string \"document\", \"paragraph\" or \"joined\"; correct or delete that key");
    else if (err == MSADB_EDTYPE)
        snprintf(buf, cap, "a weight type the runtime cannot read (F32, F16, BF16 and Q8_0 only)");
    else if (err == MSADB_ENOTFOUND)
        snprintf(buf, cap, "a tensor or metadata key the llama runtime needs is missing");
    else
        snprintf(buf, cap, "a llama GGUF the runtime cannot load (%s)", msadb_strerror(err));
    return 0;
}

int msadb_llm_set_segment(msadb_llm *llm, int mode)
{
    if (!llm || (mode != MSADB_SEGMENT_DOCUMENT && mode != MSADB_SEGMENT_PARAGRAPH && mode != MSADB_SEGMENT_JOINED))
        return MSADB_EINVAL;
    llm->segment = mode;
    return 0;
}

int msadb_llm_get_segment(const msadb_llm *llm)
{
    return llm ? llm->segment : MSADB_EINVAL;
}

int msadb_llm_abstain_answer(const msadb_llm *llm, const char **text)
{
    if (!llm || !text)
        return MSADB_EINVAL;
    *text = llm->abstain;
    return llm->abstain ? 0 : MSADB_ENOTFOUND;
}

int msadb_llm_is_abstain(const msadb_llm *llm, const char *answer, size_t len)
{
    if (!llm || (!answer && len))
        return MSADB_EINVAL;
    if (!llm->abstain)
        return 0;
    /* white space around the answer and one closing full stop do not count */
    while (len && isspace((unsigned char)answer[0]))
        answer++, len--;
    while (len && isspace((unsigned char)answer[len - 1]))
        len--;
    if (len && answer[len - 1] == '.')
        len--;
    return len == llm->abstain_len && strncasecmp(answer, llm->abstain, len) == 0;
}

const char *msadb_llm_products(const msadb_llm *llm)
{
    if (!llm)
        return NULL;
    if (strcmp(msadb_model_matmul(llm->model), "bf16") != 0)
        return "f32";
    return msadb_mm_amx_used() ? "bf16-amx" : "bf16-avx512";
}

int msadb_llm_get_info(const msadb_llm *llm, msadb_llm_info *out)
{
    if (!llm || !out)
        return MSADB_EINVAL;
    const msadb_model_config *c = msadb_model_get_config(llm->model);
    memset(out, 0, sizeof *out);
    out->n_layers = c->n_layers;
    out->n_q_heads = c->n_heads;
    out->n_kv_heads = c->n_kv_heads;
    out->head_dim = c->head_dim;
    out->n_embd = c->n_embd;
    out->n_vocab = c->n_vocab;
    out->n_ctx_train = c->n_ctx_train;
    out->weight_bytes = msadb_model_weight_bytes(llm->model);
    return 0;
}

int msadb_llm_signature(const msadb_llm *llm, msadb_signature *sig)
{
    if (!llm || !sig)
        return MSADB_EINVAL;
    const msadb_model_config *c = msadb_model_get_config(llm->model);
    return msadb_signature_init(sig, c->n_layers, c->n_kv_heads, c->n_heads, c->head_dim);
}

int msadb_llm_tokenize(const msadb_llm *llm, const char *text, size_t len, int add_bos, int32_t *ids,
                       int64_t *spans, size_t cap, size_t *n)
{
    if (!llm || (!text && len) || !n)
        return MSADB_EINVAL;
    return msadb_tokenizer_encode(llm->tok, text ? text : "", len, add_bos ? MSADB_TOKENIZE_ADD_BOS : 0, ids,
                                  spans, cap, n);
}

int msadb_llm_detokenize(const msadb_llm *llm, const int32_t *ids, size_t n, char *buf, size_t cap,
                         size_t *len)
{
    if (!llm || (!ids && n) || !len)
        return MSADB_EINVAL;
    return msadb_tokenizer_decode(llm->tok, ids, n, 0, buf, cap, len);
}

/* Tokenizes a whole text into freshly allocated ids and spans. */
static int tokenize_alloc(const msadb_llm *llm, const char *text, size_t len, int add_bos, int32_t **ids,
                          int64_t **spans, size_t *n)
{
    size_t cap = msadb_tokenizer_encode_bound(llm->tok, len);
    if (cap == SIZE_MAX)
        return MSADB_ELIMIT;
    *ids = malloc((cap + 1) * sizeof **ids);
    if (spans)
        *spans = malloc((cap + 1) * 2 * sizeof **spans);
    if (!*ids || (spans && !*spans))
        return MSADB_ENOMEM;
    return msadb_tokenizer_encode(llm->tok, text, len, add_bos ? MSADB_TOKENIZE_ADD_BOS : 0, *ids,
                                  spans ? *spans : NULL, cap, n);
}

/* ------------------------------------------------------------------------ */
/* Ingest                                                                   */
/* ------------------------------------------------------------------------ */

/* The capture of a document run through the model in one or more passes:
 * a pass's token `first` is the document's token offset + first. */
typedef struct {
    msadb_capture *cap;
    uint64_t offset;
} capture_at;

static int capture_hook(uint32_t layer, uint32_t first, uint32_t n, const float *k, const float *v, void *user)
{
    capture_at *c = user;
    return msadb_capture_kv(c->cap, layer, c->offset + first, n, k, v);
}

/* Whether a paragraph starts at byte p of text (len bytes): right after a
 * blank line ("\n\n"), not on a line break itself. */
static int paragraph_at(const char *text, size_t len, size_t p)
{
    return p >= 2 && p < len && text[p - 1] == '\n' && text[p - 2] == '\n' && text[p] != '\n' &&
           text[p] != '\r';
}

/* The end of the paragraph that starts at token i of [i, end): the first
 * later token whose span starts a paragraph (and starts after the token
 * before it), or end.  The line breaks stay with the paragraph before them. */
static size_t paragraph_end(const char *text, size_t len, const int64_t *spans, size_t i, size_t end)
{
    for (size_t j = i + 1; j < end; j++)
        if (spans[2 * j] > spans[2 * (j - 1)] && paragraph_at(text, len, (size_t)spans[2 * j]))
            return j;
    return end;
}

/* Tokenizes text paragraph by paragraph (MSADB_SEGMENT_PARAGRAPH, _JOINED): each
 * one as if it began a text (the tokenizer's dummy prefix makes its first
 * word a word start, as a fact tokenized on its own is), spans rebased onto
 * the whole text.  *ids and *spans (the caller frees them, also on error)
 * hold *n tokens. */
static int tokenize_paragraphs(const msadb_llm *llm, const char *text, size_t len, int32_t **ids,
                               int64_t **spans, size_t *n)
{
    *ids = NULL;
    *spans = NULL;
    *n = 0;
    size_t cap = 0; /* grown by doubling: many short paragraphs stay linear */
    for (size_t a = 0; a < len;) {
        size_t b = a + 1;
        while (b < len && !paragraph_at(text, len, b))
            b++;
        int32_t *pi = NULL;
        int64_t *ps = NULL;
        size_t pn = 0;
        int rc = tokenize_alloc(llm, text + a, b - a, 0, &pi, &ps, &pn);
        if (!rc && *n + pn + 1 > cap) {
            size_t want = 2 * cap > *n + pn + 1 ? 2 * cap : *n + pn + 1;
            int32_t *ni = realloc(*ids, want * sizeof *ni);
            if (ni)
                *ids = ni;
            int64_t *ns = ni ? realloc(*spans, want * 2 * sizeof *ns) : NULL;
            if (ns)
                *spans = ns;
            if (!ni || !ns)
                rc = MSADB_ENOMEM;
            else
                cap = want;
        }
        if (!rc) {
            memcpy(*ids + *n, pi, pn * sizeof *pi);
            for (size_t i = 0; i < 2 * pn; i++)
                (*spans)[2 * *n + i] = ps[i] + (int64_t)a;
            *n += pn;
        }
        free(pi);
        free(ps);
        if (rc)
            return rc;
        a = b;
    }
    return 0;
}

/* The tokens the model reads for a document's text, as its segment mode
 * says (whole, or paragraph by paragraph): what ingest stores and what an
 * interleave round puts before the question.  spans may be NULL; the
 * caller frees *ids (and *spans), also on error. */
static int read_tokens(const msadb_llm *llm, const char *text, size_t len, int32_t **ids, int64_t **spans,
                       size_t *n)
{
    if (llm->segment == MSADB_SEGMENT_DOCUMENT)
        return tokenize_alloc(llm, text, len, 0, ids, spans, n);
    int64_t *own = NULL;
    int rc = tokenize_paragraphs(llm, text, len, ids, spans ? spans : &own, n);
    free(own);
    return rc;
}

/* The key of part p (of n) of a text ingested into a space: the text's
 * content hash (msadb_doc_key_hash, keyed per store when encrypted), so
 * the same text ingested again into the same space is recognized. */
static int text_key(const msadb_store *st, const char *space, const char *text, size_t len, size_t p, size_t n,
                    int segment, unsigned char key[MSADB_DOCKEY_HASH])
{
    /* the same text read per paragraph, or tokenized per paragraph, has
     * other keys/values: another key */
    const char *tag = segment == MSADB_SEGMENT_PARAGRAPH ? "msadb text v1 paragraph"
                      : segment == MSADB_SEGMENT_JOINED  ? "msadb text v1 joined"
                                                         : "msadb text v1";
    uint8_t pn[8];
    msadb_put_le32(pn, (uint32_t)p);
    msadb_put_le32(pn + 4, (uint32_t)n);
    const char *sp = space ? space : "default";
    const void *parts[] = {tag, sp, text, pn};
    const size_t lens[] = {strlen(tag), strlen(sp), len, sizeof pn};
    return msadb_doc_key_hash(st, parts, lens, 4, key);
}

/* Captures tokens [t0, t0 + n) of the text as one document added to the
 * batch.  The document keeps only its own slice of the text (spans tile the
 * text, so the slices of consecutive parts tile it too), with spans rebased
 * to that slice. */
static int ingest_part(msadb_store *st, msadb_batch *batch, msadb_model_ctx *ctx, int segment,
                       const msadb_doc *meta, const int32_t *ids, const int64_t *spans, size_t t0, size_t n)
{
    msadb_capture *cap;
    int rc = msadb_capture_begin(st, &cap);
    if (rc)
        return rc;
    capture_at at = {cap, 0};
    msadb_model_hooks hooks = {capture_hook, NULL, &at};
    int32_t *pos = malloc(n * sizeof *pos);
    int64_t *part_spans = malloc(n * 2 * sizeof *part_spans);
    if (!pos || !part_spans) {
        free(pos);
        free(part_spans);
        msadb_capture_abort(cap);
        return MSADB_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        pos[i] = (int32_t)i; /* document-wise positions (per paragraph: from 0 in each) */
    /* one pass over the part, or one per paragraph, each from an empty context */
    for (size_t i = t0; i < t0 + n && !rc;) {
        size_t e = segment == MSADB_SEGMENT_PARAGRAPH ? paragraph_end(meta->text, meta->text_len, spans, i, t0 + n)
                                                       : t0 + n;
        msadb_model_ctx_reset(ctx);
        at.offset = i - t0;
        rc = msadb_model_forward(ctx, ids + i, (uint32_t)(e - i), pos, NULL, 0, &hooks);
        i = e;
    }
    free(pos);
    if (rc) {
        free(part_spans);
        msadb_capture_abort(cap);
        return rc;
    }
    int64_t a = spans[2 * t0], b = spans[2 * (t0 + n - 1) + 1];
    if (t0 == 0)
        a = 0;
    if (t0 + n == meta->n_tokens) /* the last part runs to the end of the text */
        b = (int64_t)meta->text_len;
    for (size_t i = 0; i < 2 * n; i++)
        part_spans[i] = spans[2 * t0 + i] - a;
    msadb_doc doc = *meta;
    doc.text = meta->text + a;
    doc.text_len = (size_t)(b - a);
    doc.n_tokens = n;
    doc.token_ids = ids + t0;
    doc.token_spans = part_spans;
    rc = msadb_capture_add(cap, batch, &doc);
    free(part_spans);
    return rc;
}

int msadb_llm_ingest_batch(msadb_llm *llm, msadb_store *st, msadb_batch *batch, const char *space,
                           const char *title, const char *text, size_t len, size_t *n_docs)
{
    msadb_doc doc = {0};
    doc.space = space;
    doc.title = title;
    doc.text = text;
    doc.text_len = len;
    return msadb_llm_ingest_doc(llm, st, batch, &doc, n_docs);
}

int msadb_llm_ingest_doc(msadb_llm *llm, msadb_store *st, msadb_batch *batch, const msadb_doc *doc,
                         size_t *n_docs)
{
    if (n_docs)
        *n_docs = 0;
    if (!llm || !st || !batch || !doc || !doc->text || !doc->text_len || (doc->meta_len && !doc->meta))
        return MSADB_EINVAL;
    const char *title = doc->title, *text = doc->text;
    size_t len = doc->text_len;
    if (title && strlen(title) > MSADB_TITLE_MAX)
        return MSADB_EINVAL;
    int rc = check_signature(llm, st);
    if (rc)
        return rc;
    int32_t *ids = NULL;
    int64_t *spans = NULL;
    size_t n = 0;
    msadb_model_ctx *ctx = NULL;
    rc = read_tokens(llm, text, len, &ids, &spans, &n);
    if (rc)
        goto out;
    if (n == 0) {
        rc = MSADB_EINVAL;
        goto out;
    }
    size_t window = n < LLM_DOC_MAX ? n : LLM_DOC_MAX;
    if ((rc = msadb_model_ctx_new(llm->model, (uint32_t)window, &ctx)))
        goto out;
    msadb_doc meta = {0};
    meta.space = doc->space;
    meta.title = title;
    meta.text = text;
    meta.text_len = len;
    meta.meta = doc->meta;
    meta.meta_len = doc->meta_len;
    meta.expires = doc->expires;
    meta.n_tokens = n; /* of the whole text; each part sets its own */
    size_t parts = (n + window - 1) / window;
    for (size_t p = 0; p < parts && !rc; p++) {
        char part_title[MSADB_TITLE_MAX + 1];
        if (parts > 1) {
            /* cut the title on a UTF-8 character boundary */
            size_t keep = title ? strlen(title) : 0;
            if (keep > 230) {
                keep = 230;
                while (keep > 0 && ((unsigned char)title[keep] & 0xc0) == 0x80)
                    keep--;
            }
            snprintf(part_title, sizeof part_title, "%.*s%s[%zu/%zu]", (int)keep, title ? title : "",
                     keep ? " " : "", p + 1, parts);
            meta.title = part_title;
        }
        size_t t0 = p * window, cnt = n - t0 < window ? n - t0 : window;
        unsigned char key[MSADB_DOCKEY_HASH];
        if ((rc = text_key(st, doc->space, text, len, p, parts, llm->segment, key)))
            break;
        meta.key = key;
        meta.key_len = sizeof key;
        rc = msadb_batch_skip_key(batch, key, sizeof key); /* already in: no forward pass */
        if (rc == 1) {
            rc = 0;
            continue;
        }
        if (!rc)
            rc = ingest_part(st, batch, ctx, llm->segment, &meta, ids, spans, t0, cnt);
        if (!rc && n_docs)
            (*n_docs)++;
    }
out:
    msadb_model_ctx_free(ctx);
    free(ids);
    free(spans);
    return rc;
}

int msadb_llm_ingest(msadb_llm *llm, msadb_store *st, const char *space, const char *title, const char *text,
                     size_t len, uint64_t *doc_id)
{
    if (!llm || !st || !text || !len)
        return MSADB_EINVAL;
    int rc = check_signature(llm, st);
    if (rc)
        return rc;
    msadb_batch *batch;
    if ((rc = msadb_batch_begin(st, &batch)))
        return rc;
    size_t nd = 0;
    if ((rc = msadb_llm_ingest_batch(llm, st, batch, space, title, text, len, &nd))) {
        msadb_batch_abort(batch);
        return rc;
    }
    msadb_batch_status bs;
    msadb_batch_status_get(batch, &bs);
    uint64_t *ids = malloc((nd + 1) * sizeof *ids);
    if (!ids) {
        msadb_batch_abort(batch);
        return MSADB_ENOMEM;
    }
    rc = msadb_batch_commit(batch, ids); /* frees the batch */
    if (!rc && doc_id)
        *doc_id = nd ? ids[0] : bs.last_duplicate;
    free(ids);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Asking                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct {
    msadb_llm *llm;
    msadb_snapshot *snap; /* NULL: no memory */
    const msadb_ask_params *p;
    const msadb_signature *sig;
    uint32_t summary; /* routing of every memory query */
    int score;
    uint32_t last_memory_layer;
    size_t prompt_len;    /* hits are kept from the pass over the prompt's */
    int recorded;         /* last chunk, in the last memory layer */
    msadb_hit *hits;
    size_t hits_cap, n_hits;
    /* documents already pulled into the context by interleave rounds */
    uint64_t pulled[8];
    size_t n_pulled;
    /* answer text */
    char *answer;
    size_t cap, len;
    int first_piece;
    int stopped;
    /* streaming: bytes of an incomplete UTF-8 character held back */
    char pending[4];
    size_t n_pending;
    /* follow-up questions (msadb.followup): while `watch`, a round's text is
     * kept in `round` and held back from on_text until it is known not to
     * begin with the model's follow-up prefix */
    int watch;
    int fu_state; /* 0 undecided, 1 an answer (streamed), 2 a follow-up (held back) */
    char round[LLM_FOLLOWUP_Q_MAX];
    size_t round_len;
    uint32_t round_tokens;
    /* routing once per prompt: each memory layer's selection from the
     * prompt's last chunk, reused by every generated token */
    msadb_hit **route;
    size_t *n_route, *route_cap;
    float *mem_out; /* memory result before the merge */
    size_t mem_cap;
} ask_state;

static int attend_hook(uint32_t layer, uint32_t first, uint32_t n, const float *q, float *out, float *lse,
                       void *user)
{
    ask_state *a = user;
    int mi = a->snap ? msadb_signature_memory_index(a->sig, layer) : -1;
    if (mi < 0)
        return 0;
    msadb_query mq;
    msadb_query_init(&mq);
    mq.layer = layer;
    mq.q = q;
    mq.n_query = n;
    mq.spaces = a->p->spaces;
    mq.n_spaces = a->p->n_spaces;
    mq.where = a->p->where;
    mq.n_where = a->p->n_where;
    mq.top_k = a->p->top_k;
    mq.select = a->p->select;
    mq.exact = a->p->exact;
    mq.summary = a->summary;
    mq.score = a->score;
    int in_prompt = first + n <= a->prompt_len && !a->recorded;
    if (!in_prompt && !a->p->route_each_token) {
        /* a generated token: attend the prompt's selection again */
        size_t rows = n * (size_t)a->sig->n_q_heads, d = a->sig->head_dim;
        if (rows * (d + 1) > a->mem_cap) {
            float *m = realloc(a->mem_out, rows * (d + 1) * sizeof *m);
            if (!m)
                return MSADB_ENOMEM;
            a->mem_out = m;
            a->mem_cap = rows * (d + 1);
        }
        int rc = msadb_attend_blocks(a->snap, &mq, a->route[mi], a->n_route[mi], a->mem_out, a->mem_out + rows * d);
        if (!rc)
            msadb_lse_merge(rows, d, out, lse, a->mem_out, a->mem_out + rows * d, out, lse);
        return rc;
    }
    int last_chunk = in_prompt && first + n == a->prompt_len;
    size_t got = 0;
    int rc = msadb_attend_merge(a->snap, &mq, out, lse, last_chunk ? a->route[mi] : NULL,
                                last_chunk ? a->route_cap[mi] : 0, &got);
    if (!rc && last_chunk && got > a->route_cap[mi]) {
        /* more blocks than room (document selection): fetch them all */
        msadb_hit *h = realloc(a->route[mi], got * sizeof *h);
        if (!h)
            return MSADB_ENOMEM;
        a->route[mi] = h;
        a->route_cap[mi] = got;
        rc = msadb_retrieve(a->snap, &mq, h, got, &got);
    }
    if (rc || !last_chunk)
        return rc;
    a->n_route[mi] = got;
    if (layer == a->last_memory_layer) {
        a->n_hits = got < a->hits_cap ? got : a->hits_cap;
        memcpy(a->hits, a->route[mi], a->n_hits * sizeof *a->hits);
        a->n_hits = got;
        a->recorded = 1; /* the prompt is done: later calls are generation */
    }
    return 0;
}

/* Length of the UTF-8 sequence a lead byte announces (1 for anything that
 * cannot start a multi-byte sequence: it is passed through as is). */
static size_t utf8_need(unsigned char c)
{
    return c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? (c <= 0xef ? 3 : 1) : c >= 0xc2 ? 2 : 1;
}

/* Streams bytes to on_text, holding back a trailing incomplete UTF-8
 * character; flush sends whatever is held.  Returns 1 if on_text asked to
 * stop. */
static int stream_text(ask_state *a, const char *s, size_t n, int flush)
{
    if (!a->p->on_text)
        return 0;
    char buf[4 + 256];
    const char *out = s;
    size_t len = n;
    char *tmp = NULL;
    if (a->n_pending) {
        size_t total = a->n_pending + n;
        char *dst = total <= sizeof buf ? buf : (tmp = malloc(total));
        if (!dst)
            return 0; /* cannot hold back: drop the held bytes' guarantee */
        memcpy(dst, a->pending, a->n_pending);
        if (n)
            memcpy(dst + a->n_pending, s, n);
        out = dst;
        len = total;
        a->n_pending = 0;
    }
    size_t emit = len;
    if (!flush) {
        /* find the start of the last character (at most 3 bytes back) */
        size_t back = 0;
        while (back < 3 && back < len && ((unsigned char)out[len - 1 - back] & 0xc0) == 0x80)
            back++;
        if (back < len) {
            size_t lead = len - 1 - back;
            size_t need = utf8_need((unsigned char)out[lead]);
            if (need > 1 && need > back + 1) { /* incomplete: hold it back */
                emit = lead;
                a->n_pending = len - lead;
                memcpy(a->pending, out + lead, a->n_pending);
            }
        }
    }
    int stop = 0;
    if (emit && a->p->on_text(out, emit, a->p->user))
        stop = 1;
    free(tmp);
    return stop;
}

/* Advances *t past leading white space, *m its remaining length. */
static void skip_space(const char **t, size_t *m)
{
    while (*m && isspace((unsigned char)**t))
        (*t)++, (*m)--;
}

/* Follows a round's text while it may be a follow-up question: keeps it in
 * a->round and, once enough of it is known, decides whether it begins with
 * the model's prefix (fu_state 2: held back, to be asked) or not (1: what
 * was held back is streamed now, the rest as it comes).  Text too long for
 * a follow-up question is an answer.  Returns 1 if on_text asked to stop. */
static int watch_text(ask_state *a, const char *piece, size_t n)
{
    if (a->round_len + n > sizeof a->round) {
        a->fu_state = 1;
        return stream_text(a, a->round, a->round_len, 0) || stream_text(a, piece, n, 0);
    }
    memcpy(a->round + a->round_len, piece, n);
    a->round_len += n;
    if (a->fu_state == 0) {
        const char *t = a->round;
        size_t m = a->round_len, want = a->llm->followup_len;
        skip_space(&t, &m);
        if (strncasecmp(t, a->llm->followup, m < want ? m : want) != 0)
            a->fu_state = 1;
        else if (m >= want)
            a->fu_state = 2;
    }
    return a->fu_state == 1 ? stream_text(a, a->round, a->round_len, 0) : 0;
}

/* Tokens the next round may generate (see LLM_FOLLOWUP_TOKENS). */
static uint32_t round_limit(const ask_state *a)
{
    uint32_t m = a->p->max_tokens;
    return a->watch && m < LLM_FOLLOWUP_TOKENS ? LLM_FOLLOWUP_TOKENS : m;
}

static int on_token(int32_t token, void *user)
{
    ask_state *a = user;
    a->round_tokens++;
    const char *piece;
    size_t n;
    if (msadb_tokenizer_piece(a->llm->tok, token, &piece, &n))
        return 0;
    if (a->first_piece && n && piece[0] == ' ' && msadb_tokenizer_space_prefix(a->llm->tok)) {
        piece++;
        n--;
    }
    if (n)
        a->first_piece = 0;
    if (a->answer && a->len + n < a->cap)
        memcpy(a->answer + a->len, piece, n);
    a->len += n;
    if (n && (a->watch && a->fu_state != 1 ? watch_text(a, piece, n) : stream_text(a, piece, n, 0))) {
        a->stopped = 1;
        return 1;
    }
    /* an answer (not a follow-up) ends at max_tokens */
    return a->watch && a->fu_state != 2 && a->round_tokens >= a->p->max_tokens;
}

/* Tokens of the best-scoring document among the hits that is not in the
 * context yet, for interleave. */
static int best_doc_text(ask_state *a, int32_t **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    const msadb_hit *best = NULL;
    size_t nh = a->n_hits < a->hits_cap ? a->n_hits : a->hits_cap;
    for (size_t i = 0; i < nh; i++) {
        int seen = 0;
        for (size_t j = 0; j < a->n_pulled; j++)
            seen |= a->pulled[j] == a->hits[i].doc_id;
        if (!seen && (!best || a->hits[i].score > best->score))
            best = &a->hits[i];
    }
    if (!best)
        return 0;
    if (a->n_pulled < sizeof a->pulled / sizeof a->pulled[0])
        a->pulled[a->n_pulled++] = best->doc_id;
    size_t len = 0;
    int rc = msadb_doc_text(a->snap, best->doc_id, NULL, 0, &len);
    if (rc || !len)
        return rc;
    char *text = malloc(len);
    if (!text)
        return MSADB_ENOMEM;
    rc = msadb_doc_text(a->snap, best->doc_id, text, len, &len);
    if (!rc)
        rc = read_tokens(a->llm, text, len, ids, NULL, n);
    free(text);
    if (rc) {
        free(*ids);
        *ids = NULL;
        *n = 0;
    }
    return rc;
}

/* The parameters of an ask or a search, checked. */
static int check_params(const msadb_ask_params *p)
{
    if (p->max_tokens == 0 || p->query_pos < 0 || p->interleave > 8 || p->followups > 8 ||
        !(p->temperature >= 0.0f) ||
        isinf(p->temperature) || !(p->top_p > 0.0f && p->top_p <= 1.0f) || (p->n_spaces && !p->spaces) ||
        (p->n_where && !p->where) ||
        (p->summary && !msadb_summary_is_one(p->summary)) || !msadb_score_valid(p->score))
        return MSADB_EINVAL;
    return 0;
}

/* The routing step's state: a snapshot of the store, the summary and score
 * to route by (an explicit choice must be stored, else the engine says
 * EINVAL; the model's own applies where the store holds it) and room for
 * each memory layer's selection. */
static int route_begin(ask_state *a, msadb_llm *llm, msadb_store *st, const msadb_ask_params *p)
{
    a->sig = msadb_store_signature(st);
    a->summary = p->summary;
    a->score = p->score ? p->score : llm->route_score;
    if (!a->summary && (a->sig->summary_kinds & llm->route_summary))
        a->summary = llm->route_summary;
    a->last_memory_layer = a->sig->memory_layers[a->sig->n_memory_layers - 1];
    int rc = msadb_snapshot_begin(st, &a->snap);
    if (rc)
        return rc;
    uint32_t nm = a->sig->n_memory_layers;
    a->route = calloc(nm, sizeof *a->route);
    a->n_route = calloc(nm, sizeof *a->n_route);
    a->route_cap = calloc(nm, sizeof *a->route_cap);
    if (!a->route || !a->n_route || !a->route_cap)
        return MSADB_ENOMEM;
    for (uint32_t i = 0; i < nm; i++) {
        a->route_cap[i] = (size_t)a->sig->n_kv_heads * (p->exact ? 1024 : p->top_k);
        if (!(a->route[i] = malloc(a->route_cap[i] * sizeof *a->route[i])))
            return MSADB_ENOMEM;
    }
    return 0;
}

static void ask_state_free(ask_state *a)
{
    msadb_snapshot_end(a->snap);
    for (uint32_t i = 0; a->route && i < a->sig->n_memory_layers; i++)
        free(a->route[i]);
    free(a->route);
    free(a->n_route);
    free(a->route_cap);
    free(a->mem_out);
}

/* A context for n prompt tokens and `extra` more, and their positions
 * (query_pos, query_pos + 1, ...). */
static int prompt_ctx(ask_state *a, size_t n, uint32_t extra, msadb_model_ctx **ctx, int32_t **pos)
{
    if ((uint64_t)n + extra + 1 > MSADB_MODEL_MAX_CTX)
        return MSADB_ELIMIT;
    msadb_model_ctx_free(*ctx);
    *ctx = NULL;
    free(*pos);
    if (!(*pos = malloc(n * sizeof **pos)))
        return MSADB_ENOMEM;
    for (size_t i = 0; i < n; i++)
        (*pos)[i] = a->p->query_pos + (int32_t)i;
    a->prompt_len = n;
    a->recorded = 0;
    a->n_hits = 0;
    return msadb_model_ctx_new(a->llm->model, (uint32_t)(n + extra + 1), ctx);
}

/* The routing step shared by ask and search: the prompt's pass through the
 * model with memory attention in every memory layer; a->hits gets the last
 * memory layer's selection. */
static int route_prompt(ask_state *a, msadb_model_ctx *ctx, const int32_t *ids, size_t n,
                        const int32_t *pos)
{
    msadb_model_hooks hooks = {NULL, attend_hook, a};
    return msadb_model_forward(ctx, ids, (uint32_t)n, pos, NULL, 0, &hooks);
}

/* One interleave round after route_prompt: the best document's text goes
 * in front of the question (after BOS, if any). */
static int pull_best_doc(ask_state *a, int32_t **ctx_ids, size_t *n_ctx)
{
    int32_t *doc_ids;
    size_t nd;
    int rc = best_doc_text(a, &doc_ids, &nd);
    if (rc || !nd)
        return rc;
    int32_t *grown = realloc(*ctx_ids, (*n_ctx + nd) * sizeof *grown);
    if (!grown) {
        free(doc_ids);
        return MSADB_ENOMEM;
    }
    size_t at = (*n_ctx && grown[0] == msadb_tokenizer_special(a->llm->tok, MSADB_TOKEN_BOS)) ? 1 : 0;
    memmove(grown + at + nd, grown + at, (*n_ctx - at) * sizeof *grown);
    memcpy(grown + at, doc_ids, nd * sizeof *grown);
    free(doc_ids);
    *ctx_ids = grown;
    *n_ctx += nd;
    return 0;
}

/* Generation after the prompt: generated tokens query memory too (the
 * prompt's selection unless route_each_token); the hits kept are those of
 * the prompt's pass. */
static int generate(ask_state *a, msadb_model_ctx *ctx, const int32_t *ids, size_t n, const int32_t *pos)
{
    const msadb_ask_params *p = a->p;
    msadb_model_hooks hooks = {NULL, attend_hook, a};
    int32_t eos = msadb_tokenizer_special(a->llm->tok, MSADB_TOKEN_EOS);
    msadb_sampler sampler;
    msadb_sampler_init(&sampler, p->temperature, p->top_p, 0, p->seed);
    msadb_generate_params gp = {0};
    gp.max_tokens = round_limit(a);
    a->round_tokens = 0;
    gp.stop_tokens = eos >= 0 ? &eos : NULL;
    gp.n_stop = eos >= 0 ? 1 : 0;
    gp.sampler = &sampler;
    gp.hooks = &hooks;
    gp.on_token = on_token;
    gp.user = a;
    size_t n_out = 0;
    int why = 0;
    int rc = msadb_model_generate(ctx, ids, (uint32_t)n, pos, &gp, NULL, 0, &n_out, &why);
    if (!rc && a->watch && a->fu_state == 0) { /* shorter than the prefix: an answer */
        a->fu_state = 1;
        a->stopped = stream_text(a, a->round, a->round_len, 0);
    }
    if (!rc && !a->stopped && a->fu_state != 2)
        stream_text(a, NULL, 0, 1); /* a held-back incomplete character */
    return rc;
}

/* The follow-up question of a round whose text begins with the model's
 * prefix: the text after it, white space trimmed (may be empty). */
static void followup_question(const ask_state *a, const char **q, size_t *n)
{
    const char *t = a->round;
    size_t m = a->round_len;
    skip_space(&t, &m);
    t += a->llm->followup_len;
    m -= a->llm->followup_len;
    skip_space(&t, &m);
    while (m && isspace((unsigned char)t[m - 1]))
        m--;
    *q = t;
    *n = m;
}

/* The question's tokens (with BOS when the tokenizer adds one). */
static int question_tokens(msadb_llm *llm, const char *q, size_t qlen, int32_t **ids, size_t *n)
{
    int rc = tokenize_alloc(llm, q, qlen, msadb_tokenizer_add_bos(llm->tok), ids, NULL, n);
    return !rc && *n == 0 ? MSADB_EINVAL : rc;
}

int msadb_llm_ask(msadb_llm *llm, msadb_store *st, const char *question, size_t qlen, const msadb_ask_params *p_in,
                  char *answer, size_t cap, size_t *len, msadb_hit *hits, size_t hits_cap, size_t *n_hits)
{
    if (len)
        *len = 0;
    if (n_hits)
        *n_hits = 0;
    if (!llm || !question || !qlen || (!hits && hits_cap))
        return MSADB_EINVAL;
    msadb_ask_params defaults;
    msadb_ask_params_init(&defaults);
    const msadb_ask_params *p = p_in ? p_in : &defaults;
    int rc = check_params(p);
    if (rc || (st && (rc = check_signature(llm, st))))
        return rc;
    ask_state a = {0};
    a.llm = llm;
    a.p = p;
    a.answer = answer;
    a.cap = answer ? cap : 0;
    a.first_piece = 1;
    msadb_hit local_hits[64];
    a.hits = hits ? hits : local_hits;
    a.hits_cap = hits ? hits_cap : 64;
    int32_t *ctx_ids = NULL, *pos = NULL;
    size_t n_ctx = 0;
    msadb_model_ctx *ctx = NULL;
    if (st && !p->no_memory && (rc = route_begin(&a, llm, st, p)))
        goto out;
    /* Context: [pulled document texts...] + question; interleave rounds
     * grow it by the best document's text and query memory again.  An
     * answer that is a follow-up question (msadb.followup) is asked next,
     * with the same parameters but no interleave round, up to p->followups
     * times; the last question's answer is the answer. */
    if ((rc = question_tokens(llm, question, qlen, &ctx_ids, &n_ctx)))
        goto out;
    for (uint32_t asked = 0;; asked++) {
        for (uint32_t round = 0; a.snap && !asked && round < p->interleave; round++) {
            if ((rc = prompt_ctx(&a, n_ctx, p->max_tokens, &ctx, &pos)) ||
                (rc = route_prompt(&a, ctx, ctx_ids, n_ctx, pos)) ||
                (rc = pull_best_doc(&a, &ctx_ids, &n_ctx)))
                goto out;
        }
        a.watch = llm->followup && asked < p->followups;
        a.fu_state = 0;
        a.round_len = 0;
        if ((rc = prompt_ctx(&a, n_ctx, round_limit(&a), &ctx, &pos)) ||
            (rc = generate(&a, ctx, ctx_ids, n_ctx, pos)) || a.stopped || a.fu_state != 2)
            goto out;
        const char *fq;
        size_t fn;
        followup_question(&a, &fq, &fn);
        if (!fn) { /* the prefix alone: an answer */
            stream_text(&a, a.round, a.round_len, 1);
            goto out;
        }
        if (p->on_followup && p->on_followup(fq, fn, p->user))
            goto out; /* the answer is the follow-up question as generated */
        free(ctx_ids);
        ctx_ids = NULL;
        if ((rc = question_tokens(llm, fq, fn, &ctx_ids, &n_ctx)))
            goto out;
        a.len = 0;
        a.first_piece = 1;
        a.n_pending = 0;
    }
out:
    if (a.answer && a.cap)
        a.answer[a.len < a.cap ? a.len : a.cap - 1] = 0;
    if (len)
        *len = a.len;
    if (n_hits)
        *n_hits = a.n_hits;
    if (!rc && answer && a.len >= cap)
        rc = MSADB_ELIMIT;
    msadb_model_ctx_free(ctx);
    ask_state_free(&a);
    free(ctx_ids);
    free(pos);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Search                                                                   */
/* ------------------------------------------------------------------------ */

int msadb_llm_search(msadb_llm *llm, msadb_store *st, const char *question, size_t qlen,
                     const msadb_ask_params *p_in, float min_score, msadb_span *spans, size_t cap,
                     size_t *n)
{
    if (n)
        *n = 0;
    if (!llm || !st || !question || !qlen || !n || (!spans && cap) || isnan(min_score))
        return MSADB_EINVAL;
    msadb_ask_params defaults;
    msadb_ask_params_init(&defaults);
    const msadb_ask_params *p = p_in ? p_in : &defaults;
    int rc = check_params(p);
    if (rc || (rc = check_signature(llm, st)))
        return rc;
    ask_state a = {0};
    a.llm = llm;
    a.p = p;
    int32_t *ids = NULL, *pos = NULL;
    size_t nq = 0, nm = 0;
    msadb_model_ctx *ctx = NULL;
    msadb_span *all = NULL;
    if ((rc = route_begin(&a, llm, st, p)) || (rc = question_tokens(llm, question, qlen, &ids, &nq)) ||
        (rc = prompt_ctx(&a, nq, 0, &ctx, &pos)))
        goto out;
    /* the selection of the last memory layer, every kv head */
    size_t room = a.route_cap[a.sig->n_memory_layers - 1];
    if (!(a.hits = malloc((room + 1) * sizeof *a.hits))) {
        rc = MSADB_ENOMEM;
        goto out;
    }
    a.hits_cap = room;
    if ((rc = route_prompt(&a, ctx, ids, nq, pos)))
        goto out;
    size_t nh = a.n_hits < a.hits_cap ? a.n_hits : a.hits_cap, ns = 0;
    if (!(all = malloc((nh + 1) * sizeof *all))) {
        rc = MSADB_ENOMEM;
        goto out;
    }
    if ((rc = msadb_hits_to_spans(a.snap, a.hits, nh, all, nh, &ns)))
        goto out;
    while (nm < ns && all[nm].score >= min_score) /* best first */
        nm++;
    memcpy(spans, all, (nm < cap ? nm : cap) * sizeof *spans);
    *n = nm;
out:
    free(all);
    free(a.hits);
    msadb_model_ctx_free(ctx);
    ask_state_free(&a);
    free(ids);
    free(pos);
    return rc;
}
