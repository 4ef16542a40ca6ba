/* workload.h -- the synthetic memory workload shared by gen_workload.c and
 * bench_query.c (header-only: both tools are single-file programs).
 *
 * One memory plane (one layer, one kv head) read by a group of G q heads.
 * What makes it more than Gaussian noise:
 *  - keys: low-rank topic structure (a rank-r basis; each document has a
 *    topic centroid and its tokens follow an AR(1) walk around it, so nearby
 *    tokens and whole documents are correlated), isotropic token noise, a
 *    per-channel bias, and a few large outlier channels with a constant sign
 *    placed in low-frequency RoPE pairs (as in real LLM keys);
 *  - "delimiter" tokens (a fraction of tokens, like punctuation, BOS or
 *    attention-sink tokens) with a large component along one of a few
 *    shared directions: they are the natural outliers of every block;
 *  - post-RoPE: channel pairs (2i, 2i+1) rotated by pos * 10000^(-2i/d),
 *    positions restarting at 0 in every document;
 *  - values: their own rank-r basis driven by the same latent walk plus a
 *    per-document offset and noise;
 *  - queries: not distributed like keys: a topic direction mixed with
 *    head-specific latent noise and a large isotropic component, rotated at a
 *    query position, and scaled so that the std of the scaled logits against
 *    random memory is a chosen "temperature" per head;
 *  - needles: for one q head of a query, 1, 4 or 16 consecutive tokens of
 *    one block are moved toward the query so that the needle's softmax mass
 *    against the whole memory is sigmoid(margin): each needle token's logit
 *    is LSE(rest of memory) + margin - ln(len).  The rest-of-memory LSE is
 *    measured exactly by a first pass over the generated keys.  Two needle
 *    styles: "add" (k + delta * q^, the key grows) and "rotate" (the key
 *    turns toward q^ keeping its norm when possible, so it cannot be spotted
 *    by its norm).
 * Everything is a deterministic function of the seed.
 */
#ifndef MSADB_WORKLOAD_H
#define MSADB_WORKLOAD_H

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels.h"

#define WL_MAX_DOC 8192
#define WL_MAX_G 16
#define WL_MAGIC 0x324c574275534d41ull /* "AMSuBWL2" */

typedef struct wl_config {
    uint64_t seed;
    uint64_t n_tokens;
    uint32_t d, G, block;
    uint32_t rank, n_topics, n_outliers;
    float outlier_mag;
    float doc_len_mean;
    float margin;        /* nats: needle mass = sigmoid(margin) */
    int needle_rotate;   /* 0 add, 1 rotate */
    uint32_t n_per_size; /* needle queries per needle length (1, 4, 16) */
    uint32_t n_plain;    /* queries without a needle */
    float temp_lo, temp_hi; /* range of per-head logit std */
    float delim_rate;    /* fraction of delimiter tokens */
    float delim_mag;     /* their extra norm */
    uint32_t n_kv;       /* kv heads per memory layer (planes: n_layers * n_kv) */
    uint32_t n_layers;   /* memory layers */
    int needle_one;      /* 1: a needle lives in one plane only (wl_needle_plane) */
} wl_config;

static inline void wl_config_default(wl_config *c)
{
    memset(c, 0, sizeof *c);
    c->seed = 42;
    c->n_tokens = 1000000;
    c->d = 128;
    c->G = 4;
    c->block = 64;
    c->rank = 16;
    c->n_topics = 64;
    c->n_outliers = 4;
    c->outlier_mag = 6.0f;
    c->doc_len_mean = 1500.0f;
    c->margin = 3.0f;
    c->needle_rotate = 1;
    c->n_per_size = 64;
    c->n_plain = 32;
    c->temp_lo = 0.8f;
    c->temp_hi = 1.6f;
    c->delim_rate = 1.0f / 24.0f;
    c->delim_mag = 16.0f;
    c->n_kv = 1;
    c->n_layers = 1;
}

typedef struct wl_doc {
    uint64_t tok0;  /* first token in memory order */
    uint32_t len, topic;
    uint64_t seed;
} wl_doc;

typedef struct wl_query {
    uint32_t needle_len; /* 0: no needle */
    uint32_t head;       /* the q head the needle answers */
    uint64_t doc;        /* document index of the needle */
    uint32_t tok;        /* first needle token inside the document */
    uint32_t topic;
    float lse_rest;      /* LSE of the needle head over memory without the needle */
    float target;        /* needle token logit */
    float *q;            /* [G][d], post-RoPE */
} wl_query;

typedef struct wl_model {
    wl_config c;
    float *U, *Uv;       /* [d][r] key and value bases */
    float *topics;       /* [n_topics][r] */
    float *bias;         /* [d] */
    float *delims;       /* [4][d] unit directions of delimiter tokens */
    uint32_t *out_ch;    /* outlier channels */
    float *out_off;      /* their offsets */
    float *rope_cos, *rope_sin; /* [WL_MAX_DOC][d/2] */
    wl_doc *docs;
    size_t n_docs;
    wl_query *qs;
    size_t n_q;
    float *qmem;
    int n_rotate_capped; /* rotate needles that had to grow the key */
} wl_model;

/* ---- random numbers: splitmix64 seeding, xoshiro256** stream ---------- */
typedef struct wl_rng {
    uint64_t s[4];
    int has;
    float spare;
} wl_rng;

static inline uint64_t wl_splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline void wl_rng_seed(wl_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = wl_splitmix(&seed);
    r->has = 0;
}

static inline uint64_t wl_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t wl_next(wl_rng *r)
{
    uint64_t *s = r->s, res = wl_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = wl_rotl(s[3], 45);
    return res;
}

static inline double wl_unif(wl_rng *r) { return ((wl_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static inline float wl_randn(wl_rng *r)
{
    if (r->has) {
        r->has = 0;
        return r->spare;
    }
    double u1 = wl_unif(r), u2 = wl_unif(r), m = sqrt(-2.0 * log(u1));
    r->spare = (float)(m * sin(6.283185307179586 * u2));
    r->has = 1;
    return (float)(m * cos(6.283185307179586 * u2));
}

/* Fast normals for bulk noise: inverse CDF table of 4096 quantiles with
 * linear interpolation (tails cut near 3.6 sigma, fine for token noise). */
static float wl_ntab[4097];
static inline void wl_ntab_init(void)
{
    if (wl_ntab[4096] != 0.0f)
        return;
    /* invert the normal CDF by bisection on erfc */
    for (int i = 0; i <= 4096; i++) {
        double p = (i + 0.5) / 4097.0, lo = -9, hi = 9;
        for (int it = 0; it < 80; it++) {
            double mid = 0.5 * (lo + hi);
            if (0.5 * erfc(-mid / sqrt(2.0)) < p)
                lo = mid;
            else
                hi = mid;
        }
        wl_ntab[i] = (float)(0.5 * (lo + hi));
    }
}

static inline float wl_fastn(wl_rng *r)
{
    uint64_t x = wl_next(r);
    uint32_t i = (uint32_t)(x >> 52), f = (uint32_t)(x >> 32) & 0xfffff;
    float t = f * (1.0f / 1048576.0f);
    return wl_ntab[i] + t * (wl_ntab[i + 1] - wl_ntab[i]);
}

/* ---- model ------------------------------------------------------------- */
static inline void wl_orthonormal(wl_rng *r, float *U, uint32_t d, uint32_t k)
{
    /* Gram-Schmidt on random columns of U[d][k] */
    for (uint32_t j = 0; j < k; j++) {
        for (uint32_t i = 0; i < d; i++)
            U[i * k + j] = wl_randn(r);
        for (uint32_t p = 0; p < j; p++) {
            double dot = 0;
            for (uint32_t i = 0; i < d; i++)
                dot += (double)U[i * k + j] * U[i * k + p];
            for (uint32_t i = 0; i < d; i++)
                U[i * k + j] -= (float)dot * U[i * k + p];
        }
        double n = 0;
        for (uint32_t i = 0; i < d; i++)
            n += (double)U[i * k + j] * U[i * k + j];
        for (uint32_t i = 0; i < d; i++)
            U[i * k + j] /= (float)sqrt(n);
    }
}

static inline void wl_rope(const wl_model *m, float *x, uint32_t pos)
{
    uint32_t h = m->c.d / 2;
    const float *cs = m->rope_cos + (size_t)pos * h, *sn = m->rope_sin + (size_t)pos * h;
    for (uint32_t i = 0; i < h; i++) {
        float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * cs[i] - b * sn[i];
        x[2 * i + 1] = a * sn[i] + b * cs[i];
    }
}

/* y[d] = U[d][r] x[r]: small enough that a plain loop beats a BLAS call. */
static inline void wl_matvec(const float *U, const float *x, float *y, uint32_t d, uint32_t r)
{
    for (uint32_t i = 0; i < d; i++) {
        float s = 0.0f;
        for (uint32_t j = 0; j < r; j++)
            s += U[i * r + j] * x[j];
        y[i] = s;
    }
}

/* Keys (and values if V) of document di without needles: [len][d]. */
static inline void wl_doc_kv(const wl_model *m, size_t di, float *K, float *V)
{
    const wl_config *c = &m->c;
    const wl_doc *doc = &m->docs[di];
    uint32_t d = c->d, r = c->rank;
    wl_rng g;
    wl_rng_seed(&g, doc->seed);
    float cdoc[64], cval[64], z[64], lat[64];
    float amp = sqrtf((float)d / (float)r);
    for (uint32_t j = 0; j < r; j++) {
        cdoc[j] = m->topics[doc->topic * r + j] + 0.5f * wl_randn(&g);
        cval[j] = wl_randn(&g);
        z[j] = wl_randn(&g);
    }
    const float rho = 0.9f, inn = sqrtf(1.0f - rho * rho);
    for (uint32_t t = 0; t < doc->len; t++) {
        for (uint32_t j = 0; j < r; j++) {
            z[j] = rho * z[j] + inn * wl_fastn(&g);
            lat[j] = 0.8f * amp * (cdoc[j] + z[j]);
        }
        float *k = K + (size_t)t * d;
        /* k = U lat + bias + noise (+ outliers), then RoPE at position t */
        wl_matvec(m->U, lat, k, d, r);
        for (uint32_t i = 0; i < d; i++)
            k[i] += m->bias[i] + 0.6f * wl_fastn(&g);
        for (uint32_t o = 0; o < c->n_outliers; o++)
            k[m->out_ch[o]] += m->out_off[o] * (1.0f + 0.25f * wl_fastn(&g));
        uint64_t x = wl_next(&g);
        if ((x >> 11) * (1.0 / 9007199254740992.0) < c->delim_rate) {
            const float *e = m->delims + (size_t)(x & 3) * d;
            float a = c->delim_mag * (1.0f + 0.2f * wl_fastn(&g));
            for (uint32_t i = 0; i < d; i++)
                k[i] += a * e[i];
        }
        wl_rope(m, k, t);
        if (V) {
            for (uint32_t j = 0; j < r; j++)
                lat[j] = 0.7f * amp * (z[j] + cval[j]);
            float *v = V + (size_t)t * d;
            wl_matvec(m->Uv, lat, v, d, r);
            for (uint32_t i = 0; i < d; i++)
                v[i] += 0.7f * wl_fastn(&g);
        }
    }
}

static inline void wl_free(wl_model *m)
{
    free(m->U);
    free(m->Uv);
    free(m->topics);
    free(m->bias);
    free(m->delims);
    free(m->out_ch);
    free(m->out_off);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->docs);
    free(m->qs);
    free(m->qmem);
    memset(m, 0, sizeof *m);
}

/* Builds the model: bases, documents, queries (needle placement; targets
 * come from wl_calibrate).  Returns 0 or -1 (allocation). */
static inline int wl_init(wl_model *m, const wl_config *c)
{
    memset(m, 0, sizeof *m);
    m->c = *c;
    wl_ntab_init();
    uint32_t d = c->d, r = c->rank;
    if (d % 2 || r > 64 || c->G > WL_MAX_G || c->n_outliers > d / 4)
        return -1;
    wl_rng g;
    wl_rng_seed(&g, c->seed);
    m->U = malloc(sizeof(float) * d * r);
    m->Uv = malloc(sizeof(float) * d * r);
    m->topics = malloc(sizeof(float) * c->n_topics * r);
    m->bias = malloc(sizeof(float) * d);
    m->delims = malloc(sizeof(float) * 4 * d);
    m->out_ch = malloc(sizeof(uint32_t) * (c->n_outliers + 1));
    m->out_off = malloc(sizeof(float) * (c->n_outliers + 1));
    m->rope_cos = malloc(sizeof(float) * WL_MAX_DOC * (d / 2));
    m->rope_sin = malloc(sizeof(float) * WL_MAX_DOC * (d / 2));
    if (!m->U || !m->Uv || !m->topics || !m->bias || !m->delims || !m->out_ch || !m->out_off || !m->rope_cos || !m->rope_sin)
        return -1;
    wl_orthonormal(&g, m->U, d, r);
    wl_orthonormal(&g, m->Uv, d, r);
    for (uint32_t i = 0; i < c->n_topics * r; i++)
        m->topics[i] = wl_randn(&g);
    for (uint32_t i = 0; i < d; i++)
        m->bias[i] = 0.3f * wl_randn(&g);
    for (uint32_t j = 0; j < 4; j++) {
        double n = 0;
        for (uint32_t i = 0; i < d; i++) {
            m->delims[j * d + i] = wl_randn(&g);
            n += (double)m->delims[j * d + i] * m->delims[j * d + i];
        }
        for (uint32_t i = 0; i < d; i++)
            m->delims[j * d + i] /= (float)sqrt(n);
    }
    /* outliers in the lowest-frequency pairs (the last channels) */
    for (uint32_t o = 0; o < c->n_outliers; o++) {
        m->out_ch[o] = d - 1 - 2 * o;
        m->out_off[o] = (o % 2 ? -1.0f : 1.0f) * c->outlier_mag;
    }
    for (uint32_t p = 0; p < WL_MAX_DOC; p++)
        for (uint32_t i = 0; i < d / 2; i++) {
            double th = p * pow(10000.0, -2.0 * i / d);
            m->rope_cos[(size_t)p * (d / 2) + i] = (float)cos(th);
            m->rope_sin[(size_t)p * (d / 2) + i] = (float)sin(th);
        }
    /* documents: log-normal lengths */
    size_t cap = 1024;
    m->docs = malloc(cap * sizeof(wl_doc));
    if (!m->docs)
        return -1;
    uint64_t tok = 0;
    while (tok < c->n_tokens) {
        if (m->n_docs == cap) {
            cap *= 2;
            wl_doc *nd = realloc(m->docs, cap * sizeof(wl_doc));
            if (!nd)
                return -1;
            m->docs = nd;
        }
        double len = exp(log(c->doc_len_mean) - 0.5 + 1.0 * wl_randn(&g));
        uint64_t L = len < 32 ? 32 : len > WL_MAX_DOC ? WL_MAX_DOC : (uint64_t)len;
        if (L > c->n_tokens - tok)
            L = c->n_tokens - tok;
        wl_doc *dd = &m->docs[m->n_docs++];
        dd->tok0 = tok;
        dd->len = (uint32_t)L;
        dd->topic = (uint32_t)(wl_next(&g) % c->n_topics);
        dd->seed = wl_next(&g);
        tok += L;
    }
    /* queries */
    m->n_q = 3 * (size_t)c->n_per_size + c->n_plain;
    m->qs = calloc(m->n_q, sizeof(wl_query));
    m->qmem = malloc(sizeof(float) * m->n_q * c->G * d);
    if (!m->qs || !m->qmem)
        return -1;
    static const uint32_t lens[3] = {1, 4, 16};
    for (size_t qi = 0; qi < m->n_q; qi++) {
        wl_query *q = &m->qs[qi];
        q->q = m->qmem + qi * c->G * d;
        q->needle_len = qi < 3 * (size_t)c->n_per_size ? lens[qi / c->n_per_size] : 0;
        q->head = (uint32_t)(wl_next(&g) % c->G);
        /* needle: a random token of memory, moved so the needle fits in its block */
        uint64_t t = wl_next(&g) % c->n_tokens;
        size_t lo = 0, hi = m->n_docs;
        while (hi - lo > 1) {
            size_t mid = (lo + hi) / 2;
            if (m->docs[mid].tok0 <= t)
                lo = mid;
            else
                hi = mid;
        }
        /* pick a document long enough for the needle */
        while (m->docs[lo].len < 16)
            lo = (lo + 1) % m->n_docs;
        q->doc = lo;
        const wl_doc *dd = &m->docs[lo];
        uint32_t nb = (dd->len + c->block - 1) / c->block;
        uint32_t L = q->needle_len ? q->needle_len : 1;
        for (;;) {
            uint32_t b = (uint32_t)(wl_next(&g) % nb);
            uint32_t bl = dd->len - b * c->block < c->block ? dd->len - b * c->block : c->block;
            if (bl < L)
                continue;
            q->tok = b * c->block + (uint32_t)(wl_next(&g) % (bl - L + 1));
            break;
        }
        /* half of the queries ask about the needle document's topic */
        q->topic = (wl_next(&g) & 1) ? dd->topic : (uint32_t)(wl_next(&g) % c->n_topics);
        uint32_t qpos = (uint32_t)(wl_next(&g) % 4096);
        float amp = sqrtf((float)d / (float)r);
        for (uint32_t h = 0; h < c->G; h++) {
            float lat[64], *qq = q->q + (size_t)h * d;
            for (uint32_t j = 0; j < r; j++)
                lat[j] = amp * (0.7f * m->topics[q->topic * r + j] + 0.7f * wl_randn(&g));
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)d, (int)r, 1.0f, m->U, (int)r, lat, 1, 0.0f, qq, 1);
            for (uint32_t i = 0; i < d; i++)
                qq[i] += 1.2f * wl_randn(&g); /* not in the key subspace */
            for (uint32_t o = 0; o < c->n_outliers; o++)
                qq[m->out_ch[o]] += 0.5f * wl_randn(&g);
            wl_rope(m, qq, qpos);
        }
    }
    return 0;
}

/* Scales every query head to its temperature (std of scaled logits against
 * a sample of memory), then measures each needle head's exact LSE over the
 * whole memory and sets the needle target.  kbuf holds WL_MAX_DOC * d. */
static inline int wl_calibrate(wl_model *m, int (*progress)(size_t done, size_t total))
{
    const wl_config *c = &m->c;
    uint32_t d = c->d, G = c->G;
    float isd = 1.0f / sqrtf((float)d);
    float *K = malloc(sizeof(float) * WL_MAX_DOC * d);
    size_t nrow = m->n_q * G;
    float *S = malloc(sizeof(float) * WL_MAX_DOC * nrow);
    if (!K || !S) {
        free(K);
        free(S);
        return -1;
    }
    /* temperature: sample ~64 documents spread over memory */
    double *s1 = calloc(nrow, sizeof(double)), *s2 = calloc(nrow, sizeof(double));
    double cnt = 0;
    size_t step = m->n_docs > 64 ? m->n_docs / 64 : 1;
    for (size_t di = 0; di < m->n_docs; di += step) {
        uint32_t L = m->docs[di].len;
        wl_doc_kv(m, di, K, NULL);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nrow, (int)L, (int)d, isd, m->qmem, (int)d, K,
                    (int)d, 0.0f, S, (int)L);
        for (size_t r = 0; r < nrow; r++)
            for (uint32_t t = 0; t < L; t++) {
                s1[r] += S[r * L + t];
                s2[r] += (double)S[r * L + t] * S[r * L + t];
            }
        cnt += L;
    }
    wl_rng g;
    wl_rng_seed(&g, c->seed ^ 0x5eedull);
    for (size_t r = 0; r < nrow; r++) {
        double mean = s1[r] / cnt, sd = sqrt(s2[r] / cnt - mean * mean);
        double temp = c->temp_lo + (c->temp_hi - c->temp_lo) * wl_unif(&g);
        float f = (float)(temp / (sd > 0 ? sd : 1));
        for (uint32_t i = 0; i < d; i++)
            m->qmem[r * d + i] *= f;
    }
    free(s1);
    free(s2);
    /* exact LSE of every needle head over the whole memory (streaming,
     * with the engine's attention kernel; documents merged by log-add) */
    size_t nq = m->n_q;
    float *Qn = malloc(sizeof(float) * nq * d), *O = malloc(sizeof(float) * nq * d);
    float *ld = malloc(sizeof(float) * nq);
    double *lt = malloc(sizeof(double) * nq);
    if (!Qn || !O || !ld || !lt) {
        free(Qn);
        free(O);
        free(ld);
        free(lt);
        free(K);
        free(S);
        return -1;
    }
    for (size_t qi = 0; qi < nq; qi++) {
        memcpy(Qn + qi * d, m->qs[qi].q + (size_t)m->qs[qi].head * d, sizeof(float) * d);
        lt[qi] = -INFINITY;
    }
    for (size_t di = 0; di < m->n_docs; di++) {
        uint32_t L = m->docs[di].len;
        wl_doc_kv(m, di, K, NULL);
        msadb_k_attend(Qn, (uint32_t)nq, K, K, L, d, isd, S, O, ld);
        for (size_t qi = 0; qi < nq; qi++) {
            double a = lt[qi], b = ld[qi], mxv = a > b ? a : b;
            lt[qi] = mxv + log(exp(a - mxv) + exp(b - mxv));
        }
        if (progress && (di % 256 == 0 || di + 1 == m->n_docs))
            progress(di + 1, m->n_docs);
    }
    for (size_t qi = 0; qi < nq; qi++) {
        wl_query *q = &m->qs[qi];
        q->lse_rest = (float)lt[qi];
        q->target = q->needle_len ? q->lse_rest + c->margin - logf((float)q->needle_len) : 0.0f;
    }
    free(Qn);
    free(O);
    free(ld);
    free(lt);
    free(K);
    free(S);
    return 0;
}

/* A second kv head from the first: rows of d channels reversed (a
 * permutation, so q.k and the needles carry over to queries mirrored the
 * same way).  Used for two-kv-head stores (tests/shard_fixture.c,
 * bench_shard.c). */
static inline void wl_mirror(const float *x, float *y, size_t rows, uint32_t d)
{
    for (size_t r = 0; r < rows; r++)
        for (uint32_t i = 0; i < d; i++)
            y[r * d + i] = x[r * d + d - 1 - i];
}

/* Plane p of a multi-plane workload holds plane 0's vectors with their
 * channels permuted: p 1 reversed (wl_mirror), p >= 2 a permutation drawn
 * from p.  A permutation keeps every dot product, so plane p answers the
 * queries permuted the same way exactly as plane 0 answers the originals.
 * perm: [d] source channel of each channel. */
static inline void wl_plane_perm(uint32_t d, uint32_t p, uint32_t *perm)
{
    for (uint32_t i = 0; i < d; i++)
        perm[i] = p == 1 ? d - 1 - i : i;
    if (p < 2)
        return;
    wl_rng g;
    wl_rng_seed(&g, 0x9a7e5ull + p);
    for (uint32_t i = d - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(wl_next(&g) % (i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

static inline void wl_permute(const uint32_t *perm, const float *x, float *y, size_t rows, uint32_t d)
{
    for (size_t r = 0; r < rows; r++)
        for (uint32_t i = 0; i < d; i++)
            y[r * d + i] = x[r * d + perm[i]];
}

/* The plane that holds query qi's needle when needles live in one plane
 * (c.needle_one): spread over all planes. */
static inline uint32_t wl_needle_plane(const wl_model *m, size_t qi)
{
    uint32_t np = m->c.n_kv * m->c.n_layers;
    return (uint32_t)((qi * 7 + 3) % np);
}

/* Plants into K[len][d] the needles of document di that live in plane
 * `plane` (every needle of di when plane < 0). */
static inline void wl_plant_plane(wl_model *m, size_t di, float *K, int plane);

/* Plants the needles that live in document di into its keys K[len][d]. */
static inline void wl_plant(wl_model *m, size_t di, float *K)
{
    wl_plant_plane(m, di, K, -1);
}

static inline void wl_plant_plane(wl_model *m, size_t di, float *K, int plane)
{
    const wl_config *c = &m->c;
    uint32_t d = c->d;
    float sd = sqrtf((float)d);
    for (size_t qi = 0; qi < m->n_q; qi++) {
        const wl_query *q = &m->qs[qi];
        if (!q->needle_len || q->doc != di || (plane >= 0 && wl_needle_plane(m, qi) != (uint32_t)plane))
            continue;
        const float *qq = q->q + (size_t)q->head * d;
        double qn = 0;
        for (uint32_t i = 0; i < d; i++)
            qn += (double)qq[i] * qq[i];
        qn = sqrt(qn);
        double want = q->target * sd / qn; /* wanted k . q^ */
        for (uint32_t j = 0; j < q->needle_len; j++) {
            float *k = K + (size_t)(q->tok + j) * d;
            double a = 0, kn = 0;
            for (uint32_t i = 0; i < d; i++) {
                a += (double)k[i] * qq[i] / qn;
                kn += (double)k[i] * k[i];
            }
            if (!c->needle_rotate) {
                for (uint32_t i = 0; i < d; i++)
                    k[i] += (float)((want - a) * qq[i] / qn);
                continue;
            }
            /* rotate toward q^ in the plane (k, q^), keeping |k| if possible */
            double perp2 = kn - a * a, keep = kn - want * want;
            double f = keep > 0 && perp2 > 0 ? sqrt(keep / perp2) : 0.0;
            if (keep <= 0)
                m->n_rotate_capped++;
            for (uint32_t i = 0; i < d; i++) {
                double qi_ = qq[i] / qn, perp = k[i] - a * qi_;
                k[i] = (float)(want * qi_ + f * perp);
            }
        }
    }
}

/* ---- sidecar file: the model's configuration and queries ---------------- */
static inline int wl_save(const wl_model *m, const char *path, const uint64_t *doc_ids)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint64_t magic = WL_MAGIC, nq = m->n_q, nd = m->n_docs;
    int ok = fwrite(&magic, 8, 1, f) == 1 && fwrite(&m->c, sizeof m->c, 1, f) == 1 && fwrite(&nq, 8, 1, f) == 1 &&
             fwrite(&nd, 8, 1, f) == 1;
    for (size_t i = 0; ok && i < m->n_q; i++) {
        wl_query q = m->qs[i];
        q.q = NULL;
        ok = fwrite(&q, sizeof q, 1, f) == 1 && fwrite(m->qs[i].q, sizeof(float) * m->c.G * m->c.d, 1, f) == 1;
    }
    ok = ok && fwrite(doc_ids, 8, nd, f) == nd;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Loads a sidecar: rebuilds the model from its configuration and replaces
 * the queries (calibrated) with the saved ones. */
static inline int wl_load(wl_model *m, const char *path, uint64_t **doc_ids)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    uint64_t magic = 0, nq = 0, nd = 0;
    wl_config c;
    int ok = fread(&magic, 8, 1, f) == 1 && magic == WL_MAGIC && fread(&c, sizeof c, 1, f) == 1 &&
             fread(&nq, 8, 1, f) == 1 && fread(&nd, 8, 1, f) == 1;
    ok = ok && wl_init(m, &c) == 0 && nq == m->n_q && nd == m->n_docs;
    for (size_t i = 0; ok && i < nq; i++) {
        float *qp = m->qs[i].q;
        ok = fread(&m->qs[i], sizeof(wl_query), 1, f) == 1 && fread(qp, sizeof(float) * c.G * c.d, 1, f) == 1;
        m->qs[i].q = qp;
    }
    *doc_ids = ok ? malloc(8 * (nd ? nd : 1)) : NULL;
    ok = ok && *doc_ids && fread(*doc_ids, 8, nd, f) == nd;
    fclose(f);
    return ok ? 0 : -1;
}

#endif
