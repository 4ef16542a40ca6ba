/* llm.c -- the built-in runtime behind the public API: a GGUF llama model
 * with its tokenizer, ingesting text into a store (capture) and answering
 * questions with memory attention merged into every memory layer. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "runtime/gguf.h"
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
 * "minmax") and msadb.routing.score ("dot", "cosine"). */
static int read_routing(msadb_llm *llm)
{
    static const named_value summaries[] = {{"mean", MSADB_SUMMARY_MEAN},
                                            {"reps", MSADB_SUMMARY_REPS},
                                            {"minmax", MSADB_SUMMARY_MINMAX}};
    static const named_value scores[] = {{"dot", MSADB_SCORE_DOT}, {"cosine", MSADB_SCORE_COSINE}};
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
    free(llm);
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

static int capture_hook(uint32_t layer, uint32_t first, uint32_t n, const float *k, const float *v, void *user)
{
    return msadb_capture_kv(user, layer, first, n, k, v);
}

/* The key of part p (of n) of a text ingested into a space: the text's
 * content hash (msadb_doc_key_hash, keyed per store when encrypted), so
 * the same text ingested again into the same space is recognized. */
static int text_key(const msadb_store *st, const char *space, const char *text, size_t len, size_t p, size_t n,
                    unsigned char key[MSADB_DOCKEY_HASH])
{
    static const char tag[] = "msadb text v1";
    uint8_t pn[8];
    msadb_put_le32(pn, (uint32_t)p);
    msadb_put_le32(pn + 4, (uint32_t)n);
    const char *sp = space ? space : "default";
    const void *parts[] = {tag, sp, text, pn};
    const size_t lens[] = {sizeof tag - 1, strlen(sp), len, sizeof pn};
    return msadb_doc_key_hash(st, parts, lens, 4, key);
}

/* Captures tokens [t0, t0 + n) of the text as one document added to the
 * batch.  The document keeps only its own slice of the text (spans tile the
 * text, so the slices of consecutive parts tile it too), with spans rebased
 * to that slice. */
static int ingest_part(msadb_store *st, msadb_batch *batch, msadb_model_ctx *ctx, const msadb_doc *meta,
                       const int32_t *ids, const int64_t *spans, size_t t0, size_t n)
{
    msadb_capture *cap;
    int rc = msadb_capture_begin(st, &cap);
    if (rc)
        return rc;
    msadb_model_ctx_reset(ctx);
    msadb_model_hooks hooks = {capture_hook, NULL, cap};
    int32_t *pos = malloc(n * sizeof *pos);
    int64_t *part_spans = malloc(n * 2 * sizeof *part_spans);
    if (!pos || !part_spans) {
        free(pos);
        free(part_spans);
        msadb_capture_abort(cap);
        return MSADB_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        pos[i] = (int32_t)i; /* document-wise positions */
    rc = msadb_model_forward(ctx, ids + t0, (uint32_t)n, pos, NULL, 0, &hooks);
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
    if ((rc = tokenize_alloc(llm, text, len, 0, &ids, &spans, &n)))
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
        if ((rc = text_key(st, doc->space, text, len, p, parts, key)))
            break;
        meta.key = key;
        meta.key_len = sizeof key;
        rc = msadb_batch_skip_key(batch, key, sizeof key); /* already in: no forward pass */
        if (rc == 1) {
            rc = 0;
            continue;
        }
        if (!rc)
            rc = ingest_part(st, batch, ctx, &meta, ids, spans, t0, cnt);
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

static int on_token(int32_t token, void *user)
{
    ask_state *a = user;
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
    if (n && stream_text(a, piece, n, 0)) {
        a->stopped = 1;
        return 1;
    }
    return 0;
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
        rc = tokenize_alloc(a->llm, text, len, 0, ids, NULL, n);
    free(text);
    if (rc) {
        free(*ids);
        *ids = NULL;
        *n = 0;
    }
    return rc;
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
    if (p->max_tokens == 0 || p->query_pos < 0 || p->interleave > 8 || !(p->temperature >= 0.0f) ||
        isinf(p->temperature) || !(p->top_p > 0.0f && p->top_p <= 1.0f) || (p->n_spaces && !p->spaces) ||
        (p->summary && !msadb_summary_is_one(p->summary)) || !msadb_score_valid(p->score))
        return MSADB_EINVAL;
    int rc;
    if (st && (rc = check_signature(llm, st)))
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
    int32_t *qids = NULL, *ctx_ids = NULL, *pos = NULL;
    size_t nq = 0, n_ctx = 0;
    msadb_model_ctx *ctx = NULL;
    if (st && !p->no_memory) {
        a.sig = msadb_store_signature(st);
        /* an explicit choice must be stored (else the engine says EINVAL);
         * the model's own applies where the store holds it */
        a.summary = p->summary;
        a.score = p->score ? p->score : llm->route_score;
        if (!a.summary && (a.sig->summary_kinds & llm->route_summary))
            a.summary = llm->route_summary;
        a.last_memory_layer = a.sig->memory_layers[a.sig->n_memory_layers - 1];
        if ((rc = msadb_snapshot_begin(st, &a.snap)))
            return rc;
        uint32_t nm = a.sig->n_memory_layers;
        a.route = calloc(nm, sizeof *a.route);
        a.n_route = calloc(nm, sizeof *a.n_route);
        a.route_cap = calloc(nm, sizeof *a.route_cap);
        if (!a.route || !a.n_route || !a.route_cap) {
            rc = MSADB_ENOMEM;
            goto out;
        }
        for (uint32_t i = 0; i < nm; i++) {
            a.route_cap[i] = (size_t)a.sig->n_kv_heads * (p->exact ? 1024 : p->top_k);
            if (!(a.route[i] = malloc(a.route_cap[i] * sizeof *a.route[i]))) {
                rc = MSADB_ENOMEM;
                goto out;
            }
        }
    }
    if ((rc = tokenize_alloc(llm, question, qlen, msadb_tokenizer_add_bos(llm->tok), &qids, NULL, &nq)))
        goto out;
    if (nq == 0) {
        rc = MSADB_EINVAL;
        goto out;
    }
    /* Context: [pulled document texts...] + question; interleave rounds
     * grow it by the best document's text and query memory again. */
    ctx_ids = malloc(nq * sizeof *ctx_ids);
    if (!ctx_ids) {
        rc = MSADB_ENOMEM;
        goto out;
    }
    memcpy(ctx_ids, qids, nq * sizeof *ctx_ids);
    n_ctx = nq;
    for (uint32_t round = 0;; round++) {
        if ((uint64_t)n_ctx + p->max_tokens + 1 > MSADB_MODEL_MAX_CTX) {
            rc = MSADB_ELIMIT;
            goto out;
        }
        uint32_t capacity = (uint32_t)(n_ctx + p->max_tokens + 1);
        msadb_model_ctx_free(ctx);
        ctx = NULL;
        free(pos);
        pos = malloc(n_ctx * sizeof *pos);
        if (!pos) {
            rc = MSADB_ENOMEM;
            goto out;
        }
        for (size_t i = 0; i < n_ctx; i++)
            pos[i] = p->query_pos + (int32_t)i;
        if ((rc = msadb_model_ctx_new(llm->model, capacity, &ctx)))
            goto out;
        msadb_model_hooks hooks = {NULL, attend_hook, &a};
        a.prompt_len = n_ctx;
        a.recorded = 0;
        a.n_hits = 0;
        if (round < p->interleave && a.snap) {
            /* Prompt pass only: route, then pull the best document in. */
            if ((rc = msadb_model_forward(ctx, ctx_ids, (uint32_t)n_ctx, pos, NULL, 0, &hooks)))
                goto out;
            int32_t *doc_ids;
            size_t nd;
            if ((rc = best_doc_text(&a, &doc_ids, &nd)))
                goto out;
            if (nd) {
                int32_t *grown = realloc(ctx_ids, (n_ctx + nd) * sizeof *grown);
                if (!grown) {
                    free(doc_ids);
                    rc = MSADB_ENOMEM;
                    goto out;
                }
                ctx_ids = grown;
                /* Keep BOS (if any) first: document text goes after it. */
                size_t at = (n_ctx && ctx_ids[0] == msadb_tokenizer_special(llm->tok, MSADB_TOKEN_BOS)) ? 1 : 0;
                memmove(ctx_ids + at + nd, ctx_ids + at, (n_ctx - at) * sizeof *ctx_ids);
                memcpy(ctx_ids + at, doc_ids, nd * sizeof *ctx_ids);
                n_ctx += nd;
            }
            free(doc_ids);
            continue;
        }
        int32_t eos = msadb_tokenizer_special(llm->tok, MSADB_TOKEN_EOS);
        msadb_sampler sampler;
        msadb_sampler_init(&sampler, p->temperature, p->top_p, 0, p->seed);
        msadb_generate_params gp = {0};
        gp.max_tokens = p->max_tokens;
        gp.stop_tokens = eos >= 0 ? &eos : NULL;
        gp.n_stop = eos >= 0 ? 1 : 0;
        gp.sampler = &sampler;
        gp.hooks = &hooks;
        gp.on_token = on_token;
        gp.user = &a;
        size_t n_out = 0;
        int why = 0;
        /* Generated tokens query memory too; the hits kept are those of
         * the prompt's pass. */
        rc = msadb_model_generate(ctx, ctx_ids, (uint32_t)n_ctx, pos, &gp, NULL, 0, &n_out, &why);
        if (!rc && !a.stopped)
            stream_text(&a, NULL, 0, 1); /* a held-back incomplete character */
        break;                            /* one generation, whatever the rounds */
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
    msadb_snapshot_end(a.snap);
    for (uint32_t i = 0; a.route && i < a.sig->n_memory_layers; i++)
        free(a.route[i]);
    free(a.route);
    free(a.n_route);
    free(a.route_cap);
    free(a.mem_out);
    free(qids);
    free(ctx_ids);
    free(pos);
    return rc;
}
