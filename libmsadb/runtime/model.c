/* model.c -- see model.h.
 *
 * Layouts (row-major, f32):
 *   weights        W[out][in] as GGUF stores them (ne[0] = in is contiguous),
 *                  so a projection of n token rows is Y = X W^T (one sgemm).
 *   activations    token-major: x[n][n_embd], q[n][n_heads * head_dim], ...
 *   KV cache       f32 products: K[layer][kv_head][capacity][head_dim] (V
 *                  alike), keys after RoPE, so a kv head's cached keys are
 *                  one contiguous matrix that sgemm reads directly.  bf16
 *                  products: per layer and kv head, keys packed as the
 *                  matrix K[token][dim] and values as V^T[dim][token]
 *                  (runtime/matmul.h), each token written once as it is
 *                  cached, so attention reads them as packed weights.
 * Attention runs per kv head over tiles of query tokens: the tile's queries
 * of every q head of the group are gathered into one matrix (so grouped q
 * heads share one pass over the keys), S = scale * Q K^T over all cached
 * keys up to the tile's last token, causal mask and softmax per row (which
 * also gives the LSE the memory hooks need), then O = P V. */
#include "runtime/model.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "msadb.h"
#include "runtime/matmul.h"

/* A matrix as the products read it: f32 (the reference path) or packed bf16
 * (runtime/matmul.h), one of the two. */
typedef struct mat {
    const float *f;
    const uint16_t *b;
} mat;

typedef struct layer_w {
    const float *attn_norm, *ffn_norm;
    mat wq, wk, wv, wo, w_gate, w_up, w_down;
} layer_w;

struct msadb_model {
    msadb_model_config cfg;
    const msadb_gguf *g;
    msadb_gguf *owned;      /* set by msadb_model_open */
    const float *tok_embd, *output_norm;
    mat output;
    int bf16;               /* products in bf16 (runtime/matmul.h), else f32 */
    layer_w *layers;
    double *inv_freq;       /* [n_rot / 2]: theta^(-2i / n_rot) */
    void **bufs;            /* allocated (dequantized) weights */
    size_t n_bufs, cap_bufs, weight_bytes;
};

struct msadb_model_ctx {
    const msadb_model *m;
    uint32_t cap, len;
    float *kc, *vc;         /* f32 caches, see the top comment (f32 products) */
    uint32_t *kpk, *vpk;    /* packed caches (bf16 products) */
    size_t kblk, vblk;      /* words of one layer and kv head in kpk, vpk */
    size_t vld;             /* group stride of vpk in pairs: ceil(capacity / 2) */
    int32_t *pos;           /* [cap] position of each cached token */
    /* scratch for one chunk of up to MSADB_MODEL_UBATCH tokens */
    float *x, *h, *q, *k, *v, *att, *lse, *kh, *vh, *gate, *up, *cs;
    float *qg, *og, *scores;
    size_t scores_cap;      /* floats in scores */
    uint32_t *xb;           /* bf16 products: a chunk's inputs as bf16 pairs */
    msadb_mm_pool *pool;    /* bf16 products: their threads */
};

/* ------------------------------------------------------------------------ */
/* Loading                                                                  */
/* ------------------------------------------------------------------------ */

static int track(msadb_model *m, void *p)
{
    if (m->n_bufs == m->cap_bufs) {
        size_t cap = m->cap_bufs ? 2 * m->cap_bufs : 32;
        void **b = realloc(m->bufs, cap * sizeof *b);
        if (!b)
            return MSADB_ENOMEM;
        m->bufs = b;
        m->cap_bufs = cap;
    }
    m->bufs[m->n_bufs++] = p;
    return 0;
}

/* A required integer key; absent keys fall back to `def` when def >= 0. */
static int get_u32(const msadb_gguf *g, const char *key, int64_t def, int64_t min, int64_t max,
                   uint32_t *out)
{
    int64_t v;
    int rc = msadb_gguf_get_int(g, key, min, max, &v);
    if (rc == MSADB_ENOTFOUND && def >= 0) {
        *out = (uint32_t)def;
        return 0;
    }
    if (rc == MSADB_EDTYPE)
        return MSADB_ECORRUPT; /* e.g. per-layer head counts as arrays */
    if (rc)
        return rc;
    *out = (uint32_t)v;
    return 0;
}

static int get_f32_def(const msadb_gguf *g, const char *key, float def, float *out)
{
    int rc = msadb_gguf_get_f32(g, key, out);
    if (rc == MSADB_ENOTFOUND) {
        *out = def;
        return 0;
    }
    return rc == MSADB_EDTYPE ? MSADB_ECORRUPT : rc;
}

static int read_config(const msadb_gguf *g, msadb_model_config *c)
{
    char arch[32];
    int rc = msadb_gguf_get_cstr(g, "general.architecture", arch, sizeof arch);
    if (rc == MSADB_ELIMIT || (!rc && strcmp(arch, "llama")))
        return MSADB_EINVAL;
    if (rc)
        return rc;
    memset(c, 0, sizeof *c);
    if ((rc = get_u32(g, "llama.block_count", -1, 1, MSADB_MAX_LAYERS, &c->n_layers)) ||
        (rc = get_u32(g, "llama.embedding_length", -1, 1, 1 << 17, &c->n_embd)) ||
        (rc = get_u32(g, "llama.feed_forward_length", -1, 1, 1 << 20, &c->n_ff)) ||
        (rc = get_u32(g, "llama.attention.head_count", -1, 1, MSADB_MAX_HEADS, &c->n_heads)) ||
        (rc = get_u32(g, "llama.attention.head_count_kv", c->n_heads, 1, MSADB_MAX_HEADS,
                      &c->n_kv_heads)) ||
        (rc = get_u32(g, "llama.context_length", 0, 0, UINT32_MAX, &c->n_ctx_train)))
        return rc;
    if (c->n_heads % c->n_kv_heads)
        return MSADB_ECORRUPT;
    uint32_t kl, vl;
    int64_t dflt = c->n_embd % c->n_heads ? -1 : (int64_t)(c->n_embd / c->n_heads);
    if ((rc = get_u32(g, "llama.attention.key_length", dflt, 1, MSADB_MAX_HEAD_DIM, &kl)) ||
        (rc = get_u32(g, "llama.attention.value_length", kl, 1, MSADB_MAX_HEAD_DIM, &vl)))
        return rc == MSADB_ENOTFOUND ? MSADB_ECORRUPT : rc;
    if (kl != vl)
        return MSADB_EINVAL;
    c->head_dim = kl;
    if ((rc = get_u32(g, "llama.rope.dimension_count", c->head_dim, 0, c->head_dim, &c->n_rot)))
        return rc;
    if (c->n_rot % 2)
        return MSADB_EINVAL;
    if ((rc = get_f32_def(g, "llama.rope.freq_base", 10000.0f, &c->rope_theta)) ||
        (rc = get_f32_def(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f, &c->norm_eps)))
        return rc;
    /* eps = 0 would turn an all-zero row into 0 * inf = NaN */
    if (!(c->rope_theta > 1.0f) || !(c->norm_eps > 0.0f && c->norm_eps < 1.0f))
        return MSADB_ECORRUPT;
    c->rope_freq_scale = 1.0f;
    char st[32];
    rc = msadb_gguf_get_cstr(g, "llama.rope.scaling.type", st, sizeof st);
    if (rc && rc != MSADB_ENOTFOUND)
        return rc == MSADB_ELIMIT ? MSADB_EINVAL : rc == MSADB_EDTYPE ? MSADB_ECORRUPT : rc;
    if (!rc && strcmp(st, "none")) {
        if (strcmp(st, "linear"))
            return MSADB_EINVAL;
        float f;
        if ((rc = msadb_gguf_get_f32(g, "llama.rope.scaling.factor", &f)))
            return rc == MSADB_EDTYPE ? MSADB_ECORRUPT : rc;
        if (!(f > 0.0f))
            return MSADB_ECORRUPT;
        c->rope_freq_scale = 1.0f / f;
    }
    int64_t t;
    c->bos_token = msadb_gguf_get_int(g, "tokenizer.ggml.bos_token_id", 0, INT32_MAX, &t) ? -1
                                                                                       : (int32_t)t;
    c->eos_token = msadb_gguf_get_int(g, "tokenizer.ggml.eos_token_id", 0, INT32_MAX, &t) ? -1
                                                                                       : (int32_t)t;
    return 0;
}

static int all_finite(const float *w, size_t n)
{
    /* integer test on the exponent bits: immune to -ffast-math */
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &w[i], 4);
        if ((b & 0x7f800000u) == 0x7f800000u)
            return 0;
    }
    return 1;
}

/* Finds a weight of shape ne0 x ne1 (ne1 = 0: a vector of ne0) and makes it
 * usable as f32: in place for aligned F32 data, else converted into a new
 * 64-byte aligned buffer, kept (tracked) when `keep`, else set in *tmp for
 * the caller to free. */
static int weight_f32(msadb_model *m, const char *name, uint64_t ne0, uint64_t ne1, int keep,
                      const float **out, float **tmp)
{
    const msadb_gguf_tensor *t;
    *tmp = NULL;
    int rc = msadb_gguf_get_tensor(m->g, name, &t);
    if (rc)
        return rc;
    if (ne1 ? (t->n_dims != 2 || t->ne[0] != ne0 || t->ne[1] != ne1)
            : (t->n_dims != 1 || t->ne[0] != ne0))
        return MSADB_ECORRUPT;
    if (!msadb_ggml_convertible(t->type))
        return MSADB_EDTYPE;
    size_t n = (size_t)t->n_elements;
    if (t->type == MSADB_GGML_F32 && ((uintptr_t)t->data % sizeof(float)) == 0) {
        *out = (const float *)(const void *)t->data;
    } else {
        float *w = msadb_aalloc(n * sizeof(float));
        if (!w)
            return MSADB_ENOMEM;
        if (keep) {
            if ((rc = track(m, w))) {
                msadb_afree(w);
                return rc;
            }
            m->weight_bytes += n * sizeof(float);
        } else {
            *tmp = w;
        }
        if ((rc = msadb_gguf_to_f32(t, 0, n, w)))
            return rc;
        *out = w;
    }
    return all_finite(*out, n) ? 0 : MSADB_ENONFINITE;
}

static int load_weight(msadb_model *m, const char *name, uint64_t ne0, uint64_t ne1,
                       const float **out)
{
    float *tmp;
    return weight_f32(m, name, ne0, ne1, 1, out, &tmp);
}

/* A product's copy of f32 weights W[out][in]: packed bf16 in bf16 mode. */
static int make_mat(msadb_model *m, const float *w, uint64_t in, uint64_t out, mat *dst)
{
    dst->f = w;
    dst->b = NULL;
    if (!m->bf16)
        return 0;
    uint16_t *p;
    int rc = msadb_mm_pack_bf16(w, (uint32_t)out, (uint32_t)in, &p);
    if (rc)
        return rc;
    if ((rc = track(m, p))) {
        msadb_afree(p);
        return rc;
    }
    m->weight_bytes += msadb_mm_packed_bytes((uint32_t)out, (uint32_t)in);
    dst->f = NULL;
    dst->b = p;
    return 0;
}

/* A matrix weight of ne0 inputs and ne1 outputs, as the products read it
 * (the f32 copy is not kept in bf16 mode). */
static int load_matrix(msadb_model *m, const char *name, uint64_t ne0, uint64_t ne1, mat *dst)
{
    const float *w;
    float *tmp;
    int rc = weight_f32(m, name, ne0, ne1, !m->bf16, &w, &tmp);
    if (!rc)
        rc = make_mat(m, w, ne0, ne1, dst);
    msadb_afree(tmp);
    return rc;
}

static int load_weights(msadb_model *m)
{
    msadb_model_config *c = &m->cfg;
    const msadb_gguf_tensor *emb;
    int rc = msadb_gguf_get_tensor(m->g, "token_embd.weight", &emb);
    if (rc)
        return rc;
    if (emb->n_dims != 2 || emb->ne[0] != c->n_embd || emb->ne[1] < 1 || emb->ne[1] > INT32_MAX)
        return MSADB_ECORRUPT;
    c->n_vocab = (uint32_t)emb->ne[1];
    if (msadb_gguf_find_tensor(m->g, "rope_freqs.weight"))
        return MSADB_EINVAL; /* llama 3.1 frequency factors: not implemented */
    uint64_t D = c->n_embd, QD = (uint64_t)c->n_heads * c->head_dim;
    uint64_t KD = (uint64_t)c->n_kv_heads * c->head_dim, F = c->n_ff, V = c->n_vocab;
    if ((rc = load_weight(m, "token_embd.weight", D, V, &m->tok_embd)) ||
        (rc = load_weight(m, "output_norm.weight", D, 0, &m->output_norm)))
        return rc;
    rc = load_matrix(m, "output.weight", D, V, &m->output);
    if (rc == MSADB_ENOTFOUND) {
        c->tied_output = 1;
        rc = make_mat(m, m->tok_embd, D, V, &m->output);
    }
    if (rc)
        return rc;
    m->layers = calloc(c->n_layers, sizeof *m->layers);
    if (!m->layers)
        return MSADB_ENOMEM;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        layer_w *L = &m->layers[l];
        static const char *const names[9] = {"attn_norm", "attn_q", "attn_k",
                                             "attn_v", "attn_output", "ffn_norm",
                                             "ffn_gate", "ffn_up", "ffn_down"};
        const float **vec[9] = {&L->attn_norm, NULL, NULL, NULL, NULL, &L->ffn_norm};
        mat *mats[9] = {NULL, &L->wq, &L->wk, &L->wv, &L->wo, NULL, &L->w_gate, &L->w_up,
                        &L->w_down};
        const uint64_t shape[9][2] = {{D, 0}, {D, QD}, {D, KD}, {D, KD}, {QD, D},
                                      {D, 0}, {D, F},  {D, F},  {F, D}};
        for (int i = 0; i < 9; i++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%u.%s.weight", l, names[i]);
            rc = vec[i] ? load_weight(m, name, shape[i][0], 0, vec[i])
                        : load_matrix(m, name, shape[i][0], shape[i][1], mats[i]);
            if (rc)
                return rc;
        }
    }
    const msadb_gguf_tensor *q0 = msadb_gguf_find_tensor(m->g, "blk.0.attn_q.weight");
    c->weight_type = q0 ? q0->type : MSADB_GGML_F32;
    m->inv_freq = malloc((c->n_rot / 2 + 1) * sizeof *m->inv_freq);
    if (!m->inv_freq)
        return MSADB_ENOMEM;
    for (uint32_t i = 0; i < c->n_rot / 2; i++)
        m->inv_freq[i] = pow((double)c->rope_theta, -2.0 * i / (double)c->n_rot);
    return 0;
}

/* bf16 products where the CPU has them, unless MSADB_MODEL_F32 is set (to
 * anything but "" or "0"). */
static int use_bf16(void)
{
    const char *e = getenv("MSADB_MODEL_F32");
    if (e && *e && strcmp(e, "0") != 0)
        return 0;
    return msadb_mm_bf16_available();
}

int msadb_model_load(const msadb_gguf *g, msadb_model **out)
{
    if (!g || !out)
        return MSADB_EINVAL;
    *out = NULL;
    msadb_model *m = calloc(1, sizeof *m);
    if (!m)
        return MSADB_ENOMEM;
    m->g = g;
    m->bf16 = use_bf16();
    int rc = read_config(g, &m->cfg);
    if (!rc)
        rc = load_weights(m);
    if (rc) {
        msadb_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int msadb_model_open(const char *path, msadb_model **out)
{
    if (!path || !out)
        return MSADB_EINVAL;
    *out = NULL;
    msadb_gguf *g;
    int rc = msadb_gguf_open(path, &g);
    if (rc)
        return rc;
    if ((rc = msadb_model_load(g, out))) {
        msadb_gguf_close(g);
        return rc;
    }
    (*out)->owned = g;
    return 0;
}

void msadb_model_free(msadb_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_bufs; i++)
        msadb_afree(m->bufs[i]);
    free(m->bufs);
    free(m->layers);
    free(m->inv_freq);
    msadb_gguf_close(m->owned);
    free(m);
}

const msadb_model_config *msadb_model_get_config(const msadb_model *m)
{
    return m ? &m->cfg : NULL;
}

const msadb_gguf *msadb_model_gguf(const msadb_model *m) { return m ? m->g : NULL; }

size_t msadb_model_weight_bytes(const msadb_model *m) { return m ? m->weight_bytes : 0; }

const char *msadb_model_matmul(const msadb_model *m) { return m && m->bf16 ? "bf16" : "f32"; }

/* ------------------------------------------------------------------------ */
/* Contexts                                                                 */
/* ------------------------------------------------------------------------ */

/* Floats of the attention score scratch: at least one query token of a
 * whole group against a full cache, at most a chunk's worth, aiming at
 * about 16 MiB so that long prefills use few, large products. */
static size_t scores_floats(uint32_t grp, uint32_t cap)
{
    size_t row = (size_t)grp * cap;
    size_t tiles = ((size_t)4 << 20) / row;
    if (tiles < 1)
        tiles = 1;
    if (tiles > MSADB_MODEL_UBATCH)
        tiles = MSADB_MODEL_UBATCH;
    return row * tiles;
}

void msadb_model_ctx_free(msadb_model_ctx *ctx)
{
    if (!ctx)
        return;
    float *bufs[] = {ctx->kc, ctx->vc, ctx->x, ctx->h, ctx->q, ctx->k, ctx->v, ctx->att,
                     ctx->lse, ctx->kh, ctx->vh, ctx->gate, ctx->up, ctx->cs, ctx->qg,
                     ctx->og, ctx->scores};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        msadb_afree(bufs[i]);
    msadb_afree(ctx->xb);
    msadb_afree(ctx->kpk);
    msadb_afree(ctx->vpk);
    msadb_mm_pool_free(ctx->pool);
    free(ctx->pos);
    free(ctx);
}

int msadb_model_ctx_new(const msadb_model *m, uint32_t capacity, msadb_model_ctx **out)
{
    if (!m || !out || capacity == 0)
        return MSADB_EINVAL;
    *out = NULL;
    if (capacity > MSADB_MODEL_MAX_CTX)
        return MSADB_ELIMIT;
    const msadb_model_config *c = &m->cfg;
    msadb_model_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return MSADB_ENOMEM;
    ctx->m = m;
    ctx->cap = capacity;
    size_t B = MSADB_MODEL_UBATCH, d = c->head_dim, D = c->n_embd;
    size_t QD = (size_t)c->n_heads * d, KD = (size_t)c->n_kv_heads * d;
    size_t grp = c->n_heads / c->n_kv_heads;
    size_t cache = (size_t)c->n_layers * KD * capacity; /* < 2^8 * 2^18 * 2^24 */
    size_t hw = D > QD ? D : QD;
    ctx->scores_cap = scores_floats((uint32_t)grp, capacity);
    if (!m->bf16) {
        ctx->kc = msadb_aalloc(cache * sizeof(float));
        ctx->vc = msadb_aalloc(cache * sizeof(float));
    }
    ctx->pos = malloc((size_t)capacity * sizeof *ctx->pos);
    ctx->x = msadb_aalloc(B * D * sizeof(float));
    ctx->h = msadb_aalloc(B * hw * sizeof(float));
    ctx->q = msadb_aalloc(B * QD * sizeof(float));
    ctx->k = msadb_aalloc(B * KD * sizeof(float));
    ctx->v = msadb_aalloc(B * KD * sizeof(float));
    ctx->att = msadb_aalloc(B * QD * sizeof(float));
    ctx->lse = msadb_aalloc(B * c->n_heads * sizeof(float));
    ctx->kh = msadb_aalloc(B * KD * sizeof(float));
    ctx->vh = msadb_aalloc(B * KD * sizeof(float));
    ctx->gate = msadb_aalloc(B * c->n_ff * sizeof(float));
    ctx->up = msadb_aalloc(B * c->n_ff * sizeof(float));
    ctx->cs = msadb_aalloc(B * (c->n_rot + 1) * sizeof(float));
    ctx->qg = msadb_aalloc(B * grp * d * sizeof(float));
    ctx->og = msadb_aalloc(B * grp * d * sizeof(float));
    ctx->scores = msadb_aalloc(ctx->scores_cap * sizeof(float));
    if (m->bf16) {
        /* inputs of a projection, or of P V over a tile (scores_cap floats
         * in rows of at most B * grp) */
        size_t widest = D > QD ? D : QD;
        widest = widest > c->n_ff ? widest : c->n_ff;
        size_t words = msadb_mm_scratch_words(B, (uint32_t)widest);
        if (words < ctx->scores_cap / 2 + B * grp)
            words = ctx->scores_cap / 2 + B * grp;
        size_t layers = (size_t)c->n_layers * c->n_kv_heads;
        ctx->kblk = msadb_mm_packed_bytes(capacity, (uint32_t)d) / sizeof(uint32_t);
        ctx->vblk = msadb_mm_packed_bytes((uint32_t)d, capacity) / sizeof(uint32_t);
        ctx->vld = ((size_t)capacity + 1) / 2;
        ctx->xb = msadb_aalloc(words * sizeof(uint32_t));
        /* zeroed: a product over an odd number of tokens reads the other
         * half of the last value pair (times a zero input); it must be
         * finite */
        ctx->kpk = msadb_aalloc(layers * ctx->kblk * sizeof(uint32_t));
        ctx->vpk = msadb_aalloc(layers * ctx->vblk * sizeof(uint32_t));
        if (!ctx->xb || !ctx->kpk || !ctx->vpk ||
            msadb_mm_pool_new(msadb_env_threads("MSADB_MODEL_THREADS", 8), &ctx->pool)) {
            msadb_model_ctx_free(ctx);
            return MSADB_ENOMEM;
        }
        memset(ctx->kpk, 0, layers * ctx->kblk * sizeof(uint32_t));
        memset(ctx->vpk, 0, layers * ctx->vblk * sizeof(uint32_t));
    }
    if ((!m->bf16 && (!ctx->kc || !ctx->vc)) || !ctx->pos || !ctx->x || !ctx->h || !ctx->q || !ctx->k ||
        !ctx->v || !ctx->att || !ctx->lse || !ctx->kh || !ctx->vh || !ctx->gate || !ctx->up ||
        !ctx->cs || !ctx->qg || !ctx->og || !ctx->scores) {
        msadb_model_ctx_free(ctx);
        return MSADB_ENOMEM;
    }
    *out = ctx;
    return 0;
}

uint32_t msadb_model_ctx_len(const msadb_model_ctx *ctx) { return ctx ? ctx->len : 0; }
uint32_t msadb_model_ctx_capacity(const msadb_model_ctx *ctx) { return ctx ? ctx->cap : 0; }

int32_t msadb_model_ctx_next_pos(const msadb_model_ctx *ctx)
{
    return ctx && ctx->len ? ctx->pos[ctx->len - 1] + 1 : 0;
}

void msadb_model_ctx_reset(msadb_model_ctx *ctx)
{
    if (ctx)
        ctx->len = 0;
}

int msadb_model_ctx_truncate(msadb_model_ctx *ctx, uint32_t n)
{
    if (!ctx || n > ctx->len)
        return MSADB_EINVAL;
    ctx->len = n;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Forward pass                                                             */
/* ------------------------------------------------------------------------ */

/* Y[n][out] = X[n][in] W[out][in]^T */
static void linear(msadb_model_ctx *ctx, const float *X, mat W, float *Y, size_t n, size_t in,
                   size_t out)
{
    if (W.b)
        msadb_mm_bf16(ctx->pool, X, n, W.b, (uint32_t)out, (uint32_t)in, Y, ctx->xb);
    else if (n == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)out, (int)in, 1.0f, W.f, (int)in, X, 1,
                    0.0f, Y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)out, (int)in, 1.0f,
                    X, (int)in, W.f, (int)in, 0.0f, Y, (int)out);
}

static void rmsnorm(const float *x, const float *w, float *y, size_t n, size_t D, float eps)
{
    for (size_t i = 0; i < n; i++) {
        const float *xi = x + i * D;
        float *yi = y + i * D;
        double ss = 0.0;
        for (size_t j = 0; j < D; j++)
            ss += (double)xi[j] * xi[j];
        float r = (float)(1.0 / sqrt(ss / (double)D + eps));
        for (size_t j = 0; j < D; j++)
            yi[j] = xi[j] * r * w[j];
    }
}

/* cos/sin table for the chunk: cs[i][2k], cs[i][2k+1] for pair k of token i
 * (angles in double: positions reach millions, where a float angle would
 * lose the low frequencies' precision). */
static void rope_table(const msadb_model *m, const int32_t *pos, size_t n, float *cs)
{
    uint32_t half = m->cfg.n_rot / 2;
    double fs = m->cfg.rope_freq_scale;
    for (size_t i = 0; i < n; i++)
        for (uint32_t k = 0; k < half; k++) {
            double a = (double)pos[i] * fs * m->inv_freq[k];
            cs[i * m->cfg.n_rot + 2 * k] = (float)cos(a);
            cs[i * m->cfg.n_rot + 2 * k + 1] = (float)sin(a);
        }
}

/* Rotates pairs (2k, 2k+1), 2k < n_rot, of every head of x[n][heads][d]. */
static void rope_apply(const msadb_model *m, const float *cs, float *x, size_t n, size_t heads)
{
    uint32_t d = m->cfg.head_dim, nr = m->cfg.n_rot;
    for (size_t i = 0; i < n; i++)
        for (size_t h = 0; h < heads; h++) {
            float *v = x + (i * heads + h) * d;
            const float *t = cs + i * nr;
            for (uint32_t k = 0; k < nr; k += 2) {
                float c = t[k], s = t[k + 1], a = v[k], b = v[k + 1];
                v[k] = a * c - b * s;
                v[k + 1] = a * s + b * c;
            }
        }
}

/* e^x for x <= 0 (arguments of softmax after subtracting the max, and of
 * the sigmoid of -|x|), written without branches or calls so that loops
 * over it vectorize (16 lanes with -march=native on AVX-512): glibc's expf
 * is a call per element, and was a quarter of the prefill time.  x = k ln2
 * + r with |r| <= ln2/2 (Cody-Waite, ln2 split in two), e^r by its Taylor
 * polynomial of degree 6 (truncation < 1.2e-7 relative), then 2^k built in
 * the exponent bits.  Below -87.3 the result is clamped to about 2^-126
 * instead of flushing to 0; in a softmax that weight is 1e-38 of the max. */
static inline float exp_le0(float x)
{
    x = x > -87.3f ? x : -87.3f;
    float k = x * 1.44269504088896341f + 12582912.0f; /* round to nearest */
    k -= 12582912.0f;
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)k + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}

/* Causal softmax of one score row in place: columns [0, L) are the keys the
 * token sees, [L, T) are zeroed.  Returns the LSE of the row.  Max and sum
 * run in 16 independent lanes so that the loops vectorize. */
static float softmax_causal(float *row, size_t L, size_t T)
{
    float lane[16];
    for (int j = 0; j < 16; j++)
        lane[j] = -INFINITY;
    size_t t = 0;
    for (; t + 16 <= L; t += 16)
        for (int j = 0; j < 16; j++)
            lane[j] = row[t + j] > lane[j] ? row[t + j] : lane[j];
    float mx = -INFINITY;
    for (; t < L; t++)
        mx = row[t] > mx ? row[t] : mx;
    for (int j = 0; j < 16; j++)
        mx = lane[j] > mx ? lane[j] : mx;
    for (int j = 0; j < 16; j++)
        lane[j] = 0.0f;
    for (t = 0; t + 16 <= L; t += 16)
        for (int j = 0; j < 16; j++) {
            float e = exp_le0(row[t + j] - mx);
            row[t + j] = e;
            lane[j] += e;
        }
    double sum = 0.0;
    for (; t < L; t++)
        sum += (row[t] = exp_le0(row[t] - mx));
    for (int j = 0; j < 16; j++)
        sum += lane[j];
    float inv = (float)(1.0 / sum);
    for (t = 0; t < L; t++)
        row[t] *= inv;
    memset(row + L, 0, (T - L) * sizeof(float));
    return mx + (float)log(sum);
}

/* SwiGLU: gate <- silu(gate) * up, with sigmoid(g) from e = e^-|g| so that
 * the exponential never overflows. */
static void swiglu(float *gate, const float *up, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        float e = exp_le0(g < 0 ? g : -g);
        float sig = g >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
        gate[i] = g * sig * up[i];
    }
}

/* The causal softmax of rows [u * 8, u * 8 + 8) of a tile of R score rows
 * (row r: q head g * grp + r % grp of token i0 + r / grp), their LSE into
 * lse, and with xb the rows as bf16 pairs there too (ceil(T/2) words a
 * row: the input of the bf16 product P V, converted while the row is in
 * cache); a unit of msadb_mm_pool_run(). */
typedef struct softmax_tile {
    float *scores, *lse;
    size_t R, T, c0, i0, grp, nq, g;
    uint32_t *xb;
} softmax_tile;

#define SOFTMAX_ROWS 8
/* Tiles of fewer scores run their softmax on the calling thread: waking the
 * workers costs more than it saves. */
#define SOFTMAX_MIN_SPLIT ((size_t)1 << 15)

static void softmax_rows(void *arg, size_t u)
{
    const softmax_tile *S = arg;
    size_t r1 = (u + 1) * SOFTMAX_ROWS < S->R ? (u + 1) * SOFTMAX_ROWS : S->R;
    for (size_t r = u * SOFTMAX_ROWS; r < r1; r++) {
        size_t i = S->i0 + r / S->grp;
        S->lse[i * S->nq + S->g * S->grp + r % S->grp] =
            softmax_causal(S->scores + r * S->T, S->c0 + i + 1, S->T);
        if (S->xb)
            msadb_mm_bf16_row(S->scores + r * S->T, (uint32_t)S->T, S->xb + r * ((S->T + 1) / 2));
    }
}

/* Local attention with bf16 products on the packed caches: as attention()
 * below, the scale applied to the queries as they are gathered and the
 * softmax run on the context's threads when the tile is large. */
static void attention_bf16(msadb_model_ctx *ctx, uint32_t l, size_t c0, size_t n)
{
    const msadb_model_config *c = &ctx->m->cfg;
    size_t d = c->head_dim, nq = c->n_heads, grp = nq / c->n_kv_heads;
    float scale = 1.0f / sqrtf((float)d);
    size_t Tmax = c0 + n;
    size_t tq = ctx->scores_cap / (grp * Tmax);
    if (tq < 1)
        tq = 1;
    for (size_t g = 0; g < c->n_kv_heads; g++) {
        const uint32_t *K = ctx->kpk + ((size_t)l * c->n_kv_heads + g) * ctx->kblk;
        const uint32_t *V = ctx->vpk + ((size_t)l * c->n_kv_heads + g) * ctx->vblk;
        for (size_t i0 = 0; i0 < n; i0 += tq) {
            size_t i1 = i0 + tq < n ? i0 + tq : n;
            size_t R = (i1 - i0) * grp, T = c0 + i1;
            for (size_t i = i0; i < i1; i++) {
                const float *src = ctx->q + (i * nq + g * grp) * d;
                float *dst = ctx->qg + (i - i0) * grp * d;
                for (size_t j = 0; j < grp * d; j++)
                    dst[j] = src[j] * scale;
            }
            msadb_mm_bf16_ld(ctx->pool, ctx->qg, R, K, (d + 1) / 2, (uint32_t)T, (uint32_t)d,
                             ctx->scores, T, ctx->xb);
            /* the probabilities leave the softmax as bf16 pairs in ctx->xb
             * (the product of the scores above is done with it) */
            softmax_tile S = {ctx->scores, ctx->lse, R, T, c0, i0, grp, nq, g, ctx->xb};
            msadb_mm_pool_run(R * T >= SOFTMAX_MIN_SPLIT ? ctx->pool : NULL,
                              (R + SOFTMAX_ROWS - 1) / SOFTMAX_ROWS, softmax_rows, &S);
            msadb_mm_bf16_pairs(ctx->pool, ctx->xb, R, V, ctx->vld, (uint32_t)d, (uint32_t)T,
                                ctx->og, d);
            for (size_t i = i0; i < i1; i++)
                memcpy(ctx->att + (i * nq + g * grp) * d, ctx->og + (i - i0) * grp * d,
                       grp * d * sizeof(float));
        }
    }
}

/* Local attention of the chunk's n tokens (cache slots c0..c0+n-1, already
 * cached) for layer l: ctx->att [n][n_heads][d] and ctx->lse [n][n_heads]. */
static void attention(msadb_model_ctx *ctx, uint32_t l, size_t c0, size_t n)
{
    const msadb_model_config *c = &ctx->m->cfg;
    size_t d = c->head_dim, nq = c->n_heads, grp = nq / c->n_kv_heads;
    float scale = 1.0f / sqrtf((float)d);
    size_t Tmax = c0 + n;
    size_t tq = ctx->scores_cap / (grp * Tmax); /* query tokens per tile */
    if (tq < 1)
        tq = 1; /* cannot happen: scores_cap >= grp * capacity */
    for (size_t g = 0; g < c->n_kv_heads; g++) {
        const float *K = ctx->kc + ((size_t)l * c->n_kv_heads + g) * ctx->cap * d;
        const float *V = ctx->vc + ((size_t)l * c->n_kv_heads + g) * ctx->cap * d;
        for (size_t i0 = 0; i0 < n; i0 += tq) {
            size_t i1 = i0 + tq < n ? i0 + tq : n;
            size_t R = (i1 - i0) * grp, T = c0 + i1;
            /* gather: row (i - i0) * grp + j is q head g * grp + j of token i */
            for (size_t i = i0; i < i1; i++)
                memcpy(ctx->qg + (i - i0) * grp * d, ctx->q + (i * nq + g * grp) * d,
                       grp * d * sizeof(float));
            /* OpenBLAS packs K for every sgemm; for decode of a small group
             * (R <= 3 rows) one sgemv per row is faster (measured at 4000
             * cached tokens: R = 1: 1.7 vs 3.5 ms, R = 3: 3.2 vs 4.8 ms per
             * 12 heads; from R = 4 on sgemm wins). */
            int rows = R <= 3;
            if (rows)
                for (size_t r = 0; r < R; r++)
                    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)T, (int)d, scale, K, (int)d,
                                ctx->qg + r * d, 1, 0.0f, ctx->scores + r * T, 1);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)R, (int)T, (int)d,
                            scale, ctx->qg, (int)d, K, (int)d, 0.0f, ctx->scores, (int)T);
            for (size_t r = 0; r < R; r++) {
                size_t i = i0 + r / grp;
                ctx->lse[i * nq + g * grp + r % grp] =
                    softmax_causal(ctx->scores + r * T, c0 + i + 1, T);
            }
            if (rows)
                for (size_t r = 0; r < R; r++)
                    cblas_sgemv(CblasRowMajor, CblasTrans, (int)T, (int)d, 1.0f, V, (int)d,
                                ctx->scores + r * T, 1, 0.0f, ctx->og + r * d, 1);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)R, (int)d, (int)T,
                            1.0f, ctx->scores, (int)T, V, (int)d, 0.0f, ctx->og, (int)d);
            for (size_t i = i0; i < i1; i++)
                memcpy(ctx->att + (i * nq + g * grp) * d, ctx->og + (i - i0) * grp * d,
                       grp * d * sizeof(float));
        }
    }
}

/* Copies the chunk's keys and values [n][n_kv][d] into the cache at c0 (f32
 * or packed) and, for the capture hook, into head-major kh/vh [n_kv][n][d]. */
static void cache_store(msadb_model_ctx *ctx, uint32_t l, size_t c0, size_t n, int want_heads)
{
    const msadb_model_config *c = &ctx->m->cfg;
    size_t d = c->head_dim, nkv = c->n_kv_heads;
    for (size_t g = 0; g < nkv; g++) {
        size_t lg = (size_t)l * nkv + g;
        for (size_t i = 0; i < n; i++) {
            const float *k = ctx->k + (i * nkv + g) * d, *v = ctx->v + (i * nkv + g) * d;
            if (ctx->kc) {
                memcpy(ctx->kc + (lg * ctx->cap + c0 + i) * d, k, d * sizeof(float));
                memcpy(ctx->vc + (lg * ctx->cap + c0 + i) * d, v, d * sizeof(float));
            } else {
                uint32_t *V = ctx->vpk + lg * ctx->vblk;
                msadb_mm_pack_row(k, (uint32_t)d, c0 + i, (d + 1) / 2, ctx->kpk + lg * ctx->kblk);
                for (size_t j = 0; j < d; j++)
                    msadb_mm_pack_set(V, ctx->vld, j, c0 + i, v[j]);
            }
            if (want_heads) {
                memcpy(ctx->kh + (g * n + i) * d, k, d * sizeof(float));
                memcpy(ctx->vh + (g * n + i) * d, v, d * sizeof(float));
            }
        }
    }
}

static void add_into(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* One chunk of n <= UBATCH tokens at cache slots c0..; `first` is the
 * chunk's offset in the caller's input (for the hooks and logits). */
static int forward_chunk(msadb_model_ctx *ctx, const int32_t *tok, const int32_t *pos, size_t n,
                         uint32_t first, float *logits, int logits_all, int want_last,
                         const msadb_model_hooks *hooks)
{
    const msadb_model *m = ctx->m;
    const msadb_model_config *c = &m->cfg;
    size_t D = c->n_embd, d = c->head_dim, QD = (size_t)c->n_heads * d;
    size_t KD = (size_t)c->n_kv_heads * d, F = c->n_ff, c0 = ctx->len;
    int rc;
    for (size_t i = 0; i < n; i++)
        memcpy(ctx->x + i * D, m->tok_embd + (size_t)tok[i] * D, D * sizeof(float));
    rope_table(m, pos, n, ctx->cs);
    /* With no logits wanted from this chunk and no attend hook, nothing reads
     * what the last layer computes after its keys and values (the cache keeps
     * only keys and values; later tokens never see this chunk's hidden
     * states): an ingest skips that layer's queries, attention and FFN. */
    int kv_only_last = !logits_all && !want_last && !(hooks && hooks->attend);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const layer_w *L = &m->layers[l];
        int kv_only = kv_only_last && l + 1 == c->n_layers;
        rmsnorm(ctx->x, L->attn_norm, ctx->h, n, D, c->norm_eps);
        if (!kv_only)
            linear(ctx, ctx->h, L->wq, ctx->q, n, D, QD);
        linear(ctx, ctx->h, L->wk, ctx->k, n, D, KD);
        linear(ctx, ctx->h, L->wv, ctx->v, n, D, KD);
        if (!kv_only)
            rope_apply(m, ctx->cs, ctx->q, n, c->n_heads);
        rope_apply(m, ctx->cs, ctx->k, n, c->n_kv_heads);
        int cap_hook = hooks && hooks->capture;
        cache_store(ctx, l, c0, n, cap_hook);
        if (cap_hook && (rc = hooks->capture(l, first, (uint32_t)n, ctx->kh, ctx->vh, hooks->user)))
            return rc;
        if (kv_only)
            break;
        if (m->bf16)
            attention_bf16(ctx, l, c0, n);
        else
            attention(ctx, l, c0, n);
        if (hooks && hooks->attend &&
            (rc = hooks->attend(l, first, (uint32_t)n, ctx->q, ctx->att, ctx->lse, hooks->user)))
            return rc;
        linear(ctx, ctx->att, L->wo, ctx->h, n, QD, D);
        add_into(ctx->x, ctx->h, n * D);
        rmsnorm(ctx->x, L->ffn_norm, ctx->h, n, D, c->norm_eps);
        linear(ctx, ctx->h, L->w_gate, ctx->gate, n, D, F);
        linear(ctx, ctx->h, L->w_up, ctx->up, n, D, F);
        swiglu(ctx->gate, ctx->up, n * F);
        linear(ctx, ctx->gate, L->w_down, ctx->h, n, F, D);
        add_into(ctx->x, ctx->h, n * D);
    }
    if (logits_all) {
        rmsnorm(ctx->x, m->output_norm, ctx->h, n, D, c->norm_eps);
        linear(ctx, ctx->h, m->output, logits + (size_t)first * c->n_vocab, n, D, c->n_vocab);
    } else if (want_last) {
        rmsnorm(ctx->x + (n - 1) * D, m->output_norm, ctx->h, 1, D, c->norm_eps);
        linear(ctx, ctx->h, m->output, logits, 1, D, c->n_vocab);
    }
    return 0;
}

int msadb_model_forward(msadb_model_ctx *ctx, const int32_t *tokens, uint32_t n,
                        const int32_t *positions, float *logits, int logits_all,
                        const msadb_model_hooks *hooks)
{
    if (!ctx || !tokens || n == 0)
        return MSADB_EINVAL;
    const msadb_model_config *c = &ctx->m->cfg;
    for (uint32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= c->n_vocab)
            return MSADB_EINVAL;
        if (positions && positions[i] < 0)
            return MSADB_EINVAL;
    }
    if (n > ctx->cap - ctx->len)
        return MSADB_ELIMIT;
    uint32_t start = ctx->len;
    int32_t next = msadb_model_ctx_next_pos(ctx);
    for (uint32_t i = 0; i < n; i++) {
        if (positions)
            ctx->pos[start + i] = positions[i];
        else if (next > INT32_MAX - (int32_t)i) /* position would overflow */
            return MSADB_ELIMIT;
        else
            ctx->pos[start + i] = next + (int32_t)i;
    }
    for (uint32_t first = 0; first < n; first += MSADB_MODEL_UBATCH) {
        uint32_t cn = n - first < MSADB_MODEL_UBATCH ? n - first : MSADB_MODEL_UBATCH;
        int last = first + cn == n;
        int rc = forward_chunk(ctx, tokens + first, ctx->pos + ctx->len, cn, first,
                               logits, logits && logits_all, logits && last, hooks);
        if (rc) {
            ctx->len = start; /* the cache stays as before the call */
            return rc;
        }
        ctx->len += cn;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Sampling                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct cand {
    float p;
    int32_t id;
} cand;

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void msadb_sampler_init(msadb_sampler *s, float temperature, float top_p, uint32_t top_k,
                        uint64_t seed)
{
    if (!s)
        return;
    memset(s, 0, sizeof *s);
    s->temperature = temperature;
    s->top_p = top_p;
    s->top_k = top_k;
    s->state = seed;
}

/* Higher probability first; equal: lower id first (a total order, so the
 * result does not depend on qsort's algorithm). */
static int cmp_cand(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int msadb_sample(msadb_sampler *s, const float *logits, uint32_t n_vocab, int32_t *token)
{
    if (!s || !logits || !token || n_vocab == 0 || n_vocab > INT32_MAX)
        return MSADB_EINVAL;
    uint32_t best = 0;
    for (uint32_t i = 0; i < n_vocab; i++) {
        if (logits[i] != logits[i])
            return MSADB_ENONFINITE;
        if (logits[i] > logits[best])
            best = i;
    }
    if (!(s->temperature > 0.0f) || logits[best] == INFINITY) {
        *token = (int32_t)best;
        return 0;
    }
    cand *cd = malloc((size_t)n_vocab * sizeof *cd);
    if (!cd)
        return MSADB_ENOMEM;
    double inv_t = 1.0 / s->temperature, sum = 0.0;
    for (uint32_t i = 0; i < n_vocab; i++) {
        double e = exp(((double)logits[i] - logits[best]) * inv_t);
        cd[i].p = (float)e;
        cd[i].id = (int32_t)i;
        sum += e;
    }
    size_t n = n_vocab;
    int need_sort = (s->top_k && s->top_k < n_vocab) || (s->top_p > 0.0f && s->top_p < 1.0f);
    if (need_sort) {
        qsort(cd, n, sizeof *cd, cmp_cand);
        if (s->top_k && s->top_k < n)
            n = s->top_k;
        double kept = 0.0;
        for (size_t i = 0; i < n; i++)
            kept += cd[i].p;
        if (s->top_p > 0.0f && s->top_p < 1.0f) {
            double acc = 0.0, target = (double)s->top_p * kept;
            size_t i = 0;
            while (i < n) {
                acc += cd[i++].p;
                if (acc >= target)
                    break;
            }
            n = i;
            kept = acc;
        }
        sum = kept;
    }
    /* 53 random bits -> uniform in [0, sum) */
    double r = (double)(splitmix64(&s->state) >> 11) * (1.0 / 9007199254740992.0) * sum;
    double acc = 0.0;
    size_t i = 0;
    for (; i < n; i++) {
        acc += cd[i].p;
        if (r < acc)
            break;
    }
    if (i == n) {
        /* rounding left r just above the total: take the last candidate
         * with non-zero probability */
        while (i > 1 && cd[i - 1].p == 0.0f)
            i--;
        i--;
    }
    *token = cd[i].id;
    free(cd);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Generation                                                               */
/* ------------------------------------------------------------------------ */

static int is_stop(const msadb_generate_params *p, int32_t t)
{
    for (size_t i = 0; i < p->n_stop; i++)
        if (p->stop_tokens[i] == t)
            return 1;
    return 0;
}

int msadb_model_generate(msadb_model_ctx *ctx, const int32_t *prompt, uint32_t n_prompt,
                         const int32_t *positions, const msadb_generate_params *p, int32_t *out,
                         size_t cap, size_t *n_out, int *why)
{
    if (!ctx || !prompt || n_prompt == 0 || !p || p->max_tokens == 0 ||
        (p->n_stop && !p->stop_tokens))
        return MSADB_EINVAL;
    size_t count = 0;
    int reason = MSADB_GEN_MAX_TOKENS;
    if (n_out)
        *n_out = 0;
    msadb_sampler greedy;
    msadb_sampler_init(&greedy, 0.0f, 1.0f, 0, 0);
    msadb_sampler *smp = p->sampler ? p->sampler : &greedy;
    uint32_t V = ctx->m->cfg.n_vocab;
    float *logits = malloc((size_t)V * sizeof(float));
    if (!logits)
        return MSADB_ENOMEM;
    int rc = msadb_model_forward(ctx, prompt, n_prompt, positions, logits, 0, p->hooks);
    while (!rc) {
        int32_t t;
        if ((rc = msadb_sample(smp, logits, V, &t)))
            break;
        if (is_stop(p, t)) {
            reason = MSADB_GEN_STOP_TOKEN;
            break;
        }
        if (out && count < cap)
            out[count] = t;
        count++;
        if (p->on_token) {
            int cb = p->on_token(t, p->user);
            if (cb < 0) {
                rc = cb;
                break;
            }
            if (cb > 0) {
                reason = MSADB_GEN_CALLBACK;
                break;
            }
        }
        if (count >= p->max_tokens)
            break;
        if (ctx->len >= ctx->cap) {
            reason = MSADB_GEN_CONTEXT_FULL;
            break;
        }
        rc = msadb_model_forward(ctx, &t, 1, NULL, logits, 0, p->hooks);
    }
    free(logits);
    if (n_out)
        *n_out = count;
    if (why)
        *why = reason;
    return rc;
}
