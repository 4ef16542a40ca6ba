/* test_kernels.c -- the query engine's kernels against naive loops:
 * summary scores (and bit-identity of the vector and portable versions,
 * which is what makes selection machine-independent), the Quest bound,
 * partial top-k against a full sort with ties, exact attention against a
 * double-precision softmax, and LSE merging of split key sets. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec/summary.h"
#include "core/kernels.h"
#include "msadb.h"
#include "testutil.h"
#include "core/util.h"

static uint64_t rng = 12345;

static void fill_f16(uint16_t *h, size_t n, float sigma)
{
    for (size_t i = 0; i < n; i++)
        h[i] = msadb_f32_to_f16(sigma * tu_randn(&rng));
}

/* naive: max over the group's rows of q . m (double) */
static double naive_mean_score(const float *rows, uint32_t gsize, uint32_t d, const uint16_t *m,
                               int cosine)
{
    double best = -INFINITY, n2 = 0.0;
    for (uint32_t j = 0; j < d; j++)
        n2 += (double)msadb_f16_to_f32(m[j]) * msadb_f16_to_f32(m[j]);
    for (uint32_t r = 0; r < gsize; r++) {
        double s = 0.0;
        for (uint32_t j = 0; j < d; j++)
            s += (double)rows[r * d + j] * msadb_f16_to_f32(m[j]);
        if (s > best)
            best = s;
    }
    if (cosine)
        best = n2 > 0 ? best / sqrt(n2) : 0.0;
    return best;
}

static double naive_minmax_score(const float *rows, uint32_t gsize, uint32_t d, const uint16_t *mm)
{
    double best = -INFINITY;
    for (uint32_t r = 0; r < gsize; r++) {
        double s = 0.0;
        for (uint32_t j = 0; j < d; j++) {
            double q = rows[r * d + j], lo = msadb_f16_to_f32(mm[j]), hi = msadb_f16_to_f32(mm[d + j]);
            s += q * lo > q * hi ? q * lo : q * hi;
        }
        if (s > best)
            best = s;
    }
    return best;
}

/* Fixture of the scoring cases: n_groups query groups of gsize rows of
 * head dim d, prepared (kq); n blocks' f16 means (with a zero mean and an
 * outlier channel) and f16 min/max bounds of 8 random keys per block
 * (rounded outward); score buffers for the SIMD and the portable kernels. */
typedef struct {
    uint32_t d, n_groups, gsize;
    size_t n;
    float *rows, *keys, *s_simd, *s_port;
    uint16_t *mean, *mm;
    msadb_kq kq;
} scores_fixture;

static void scores_setup(scores_fixture *fx, uint32_t d, uint32_t n_groups, uint32_t gsize)
{
    memset(fx, 0, sizeof *fx);
    const size_t n = fx->n = 301;
    fx->d = d, fx->n_groups = n_groups, fx->gsize = gsize;
    fx->rows = malloc(sizeof(float) * n_groups * gsize * d);
    fx->mean = malloc(2 * n * d);
    fx->mm = malloc(4 * n * d);
    fx->s_simd = malloc(sizeof(float) * n * n_groups);
    fx->s_port = malloc(sizeof(float) * n * n_groups);
    CHECK(fx->rows && fx->mean && fx->mm && fx->s_simd && fx->s_port);
    tu_fill_randn(&rng, fx->rows, (size_t)n_groups * gsize * d, 1.0f);
    uint16_t *mean = fx->mean;
    fill_f16(mean, n * d, 0.5f);
    /* a zero mean (cosine must give 0) and an outlier channel */
    memset(mean + 7 * d, 0, 2 * d);
    for (size_t i = 0; i < n; i++)
        mean[i * d] = msadb_f32_to_f16(20.0f);
    mean[7 * d] = 0;
    /* minmax: bounds of 8 random keys per block, rounded outward */
    fx->keys = malloc(sizeof(float) * n * 8 * d);
    CHECK(fx->keys);
    tu_fill_randn(&rng, fx->keys, n * 8 * d, 1.0f);
    for (size_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < d; j++) {
            float lo = INFINITY, hi = -INFINITY;
            for (int t = 0; t < 8; t++) {
                float v = fx->keys[(i * 8 + t) * d + j];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
            fx->mm[i * 2 * d + j] = msadb_f32_to_f16_down(lo);
            fx->mm[i * 2 * d + d + j] = msadb_f32_to_f16_up(hi);
        }
    CHECK_OK(msadb_kq_prepare(&fx->kq, fx->rows, n_groups, gsize, (size_t)gsize * d, d, d, 0));
}

static void scores_teardown(scores_fixture *fx)
{
    msadb_kq_free(&fx->kq);
    free(fx->keys);
    free(fx->rows);
    free(fx->mean);
    free(fx->mm);
    free(fx->s_simd);
    free(fx->s_port);
}

/* Mean scores (dot and cosine; kq prepared again for each): SIMD equals
 * portable bit for bit, both equal the naive formula. */
static void scores_mean(scores_fixture *fx)
{
    const uint32_t d = fx->d, gsize = fx->gsize;
    const size_t n = fx->n;
    for (int cosine = 0; cosine <= 1; cosine++) {
        CHECK_OK(msadb_kq_prepare(&fx->kq, fx->rows, fx->n_groups, gsize, (size_t)gsize * d, d, d, 0));
        msadb_k_force_portable(0);
        msadb_k_score_mean(&fx->kq, fx->mean, n, cosine, fx->s_simd, n);
        msadb_k_force_portable(1);
        msadb_k_score_mean(&fx->kq, fx->mean, n, cosine, fx->s_port, n);
        msadb_k_force_portable(0);
        CHECK(memcmp(fx->s_simd, fx->s_port, sizeof(float) * n * fx->n_groups) == 0);
        for (uint32_t g = 0; g < fx->n_groups; g++)
            for (size_t i = 0; i < n; i++) {
                double want = naive_mean_score(fx->rows + (size_t)g * gsize * d, gsize, d, fx->mean + i * d,
                                               cosine);
                double got = fx->s_simd[g * n + i];
                CHECK(fabs(got - want) <= 1e-4 * (1.0 + fabs(want)));
            }
    }
}

/* Min/max bound scores: SIMD equals portable, both equal the naive
 * formula, and the bound holds for every key of the block and every row. */
static void scores_minmax(scores_fixture *fx)
{
    const uint32_t d = fx->d, gsize = fx->gsize;
    const size_t n = fx->n;
    msadb_k_score_minmax(&fx->kq, fx->mm, n, fx->s_simd, n);
    msadb_k_force_portable(1);
    msadb_k_score_minmax(&fx->kq, fx->mm, n, fx->s_port, n);
    msadb_k_force_portable(0);
    CHECK(memcmp(fx->s_simd, fx->s_port, sizeof(float) * n * fx->n_groups) == 0);
    for (uint32_t g = 0; g < fx->n_groups; g++)
        for (size_t i = 0; i < n; i++) {
            const float *qr = fx->rows + (size_t)g * gsize * d;
            double want = naive_minmax_score(qr, gsize, d, fx->mm + i * 2 * d);
            double got = fx->s_simd[g * n + i];
            CHECK(fabs(got - want) <= 1e-4 * (1.0 + fabs(want)));
            for (int t = 0; t < 8; t++)
                for (uint32_t r = 0; r < gsize; r++) {
                    double dot = 0.0, mag = 0.0;
                    for (uint32_t j = 0; j < d; j++) {
                        dot += (double)qr[r * d + j] * fx->keys[(i * 8 + t) * d + j];
                        mag += fabs((double)qr[r * d + j] * fx->keys[(i * 8 + t) * d + j]);
                    }
                    CHECK(got >= dot - 1e-6 * mag);
                }
        }
}

/* int8 summaries: exact integer arithmetic in both versions, and close to
 * the f16 score (int8 is a routing approximation). */
static void scores_i8(scores_fixture *fx)
{
    const uint32_t d = fx->d, gsize = fx->gsize;
    const size_t n = fx->n;
    const msadb_kq *kq = &fx->kq;
    const uint16_t *mean = fx->mean;
    int8_t *v8 = calloc(n, d);
    float *vs = calloc(n, sizeof(float));
    CHECK(v8 && vs);
    for (size_t i = 0; i < n; i++) {
        float tmp[MSADB_MAX_HEAD_DIM];
        for (uint32_t j = 0; j < d; j++)
            tmp[j] = msadb_f16_to_f32(mean[i * d + j]);
        vs[i] = msadb_k_quantize_i8(tmp, d, v8 + i * d);
    }
    msadb_k_score_i8(kq, v8, vs, n, fx->s_simd, n);
    msadb_k_force_portable(1);
    msadb_k_score_i8(kq, v8, vs, n, fx->s_port, n);
    msadb_k_force_portable(0);
    CHECK(memcmp(fx->s_simd, fx->s_port, sizeof(float) * n * fx->n_groups) == 0);
    for (uint32_t g = 0; g < fx->n_groups; g++)
        for (size_t i = 0; i < n; i++) {
            double best = -INFINITY;
            for (uint32_t r = 0; r < kq->gpad; r++) {
                size_t ri = (size_t)g * kq->gpad + r;
                long acc = 0;
                for (uint32_t j = 0; j < d; j++)
                    acc += (long)v8[i * d + j] * kq->q8[ri * kq->dpad8 + j];
                double s = (double)acc * kq->q8_scale[ri];
                best = s > best ? s : best;
            }
            best *= vs[i];
            CHECK(fabs(fx->s_simd[g * n + i] - best) <= 1e-5 * (1.0 + fabs(best)));
            double f = naive_mean_score(fx->rows + (size_t)g * gsize * d, gsize, d, mean + i * d, 0);
            double mag = 0.0;
            for (uint32_t j = 0; j < d; j++)
                mag += fabs(msadb_f16_to_f32(mean[i * d + j]));
            CHECK(fabs(fx->s_simd[g * n + i] - f) <= 0.05 * (1.0 + mag));
        }
    free(v8);
    free(vs);
}

static void test_scores(uint32_t d, uint32_t n_groups, uint32_t gsize)
{
    scores_fixture fx;
    scores_setup(&fx, d, n_groups, gsize);
    scores_mean(&fx);
    scores_minmax(&fx);
    scores_i8(&fx);
    scores_teardown(&fx);
}

typedef struct pair {
    float s;
    uint64_t id;
} pair;

static int pair_cmp(const void *a, const void *b)
{
    const pair *x = a, *y = b;
    if (x->s != y->s)
        return x->s > y->s ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static void test_topk(void)
{
    for (int trial = 0; trial < 200; trial++) {
        size_t n = 1 + tu_rand(&rng) % 3000;
        uint32_t k = 1 + (uint32_t)(tu_rand(&rng) % 70);
        int levels = 1 + (int)(tu_rand(&rng) % 20); /* few levels: many ties */
        pair *p = malloc(sizeof(pair) * n);
        float *s = malloc(sizeof(float) * n), *hs = malloc(sizeof(float) * k);
        uint64_t *id = malloc(8 * n), *hid = malloc(8 * k);
        uint32_t *idx = malloc(4 * n);
        CHECK(p && s && id && hs && hid && idx);
        for (size_t i = 0; i < n; i++) {
            s[i] = (float)(tu_rand(&rng) % (uint64_t)levels) - 3.0f;
            /* ids not in scan order, to test the tie rule for real */
            id[i] = (i * 7919u) % 100003u;
            p[i].s = s[i];
            p[i].id = id[i];
        }
        qsort(p, n, sizeof(pair), pair_cmp);
        size_t want = n < k ? n : k;

        /* heap, fed through the threshold filter the engine uses */
        msadb_topk t;
        msadb_topk_reset(&t, hs, hid, k);
        for (size_t i0 = 0; i0 < n; i0 += 64) {
            size_t m = n - i0 < 64 ? n - i0 : 64;
            size_t c = msadb_k_select_ge(s + i0, m, msadb_topk_threshold(&t), idx);
            for (size_t j = 0; j < c; j++)
                msadb_topk_offer(&t, s[i0 + idx[j]], id[i0 + idx[j]]);
        }
        msadb_topk_sort(&t);
        CHECK(t.n == want);
        for (size_t i = 0; i < want; i++)
            CHECK(hs[i] == p[i].s && hid[i] == p[i].id);

        /* in-place selection */
        msadb_k_topk_array(s, id, n, k);
        for (size_t i = 0; i < want; i++)
            CHECK(s[i] == p[i].s && id[i] == p[i].id);
        free(p);
        free(s);
        free(id);
        free(hs);
        free(hid);
        free(idx);
    }
    /* NaN never enters */
    float hs[2];
    uint64_t hid[2];
    msadb_topk t;
    msadb_topk_reset(&t, hs, hid, 2);
    msadb_topk_offer(&t, NAN, 1);
    CHECK(t.n == 0);
    float sc[3] = {NAN, 1.0f, -INFINITY};
    uint32_t idx[3];
    CHECK(msadb_k_select_ge(sc, 3, -INFINITY, idx) == 2);
}

static void naive_attend(const float *Q, uint32_t nq, const float *K, const float *V, size_t T,
                         uint32_t d, float scale, double *O, double *lse)
{
    double *w = malloc(sizeof(double) * (T ? T : 1));
    CHECK(w);
    for (uint32_t r = 0; r < nq; r++) {
        double m = -INFINITY;
        for (size_t t = 0; t < T; t++) {
            double s = 0.0;
            for (uint32_t j = 0; j < d; j++)
                s += (double)Q[r * d + j] * K[t * d + j];
            w[t] = s * scale;
            m = w[t] > m ? w[t] : m;
        }
        double sum = 0.0;
        for (size_t t = 0; t < T; t++)
            sum += (w[t] = exp(w[t] - m));
        for (uint32_t j = 0; j < d; j++) {
            double o = 0.0;
            for (size_t t = 0; t < T; t++)
                o += w[t] * V[t * d + j];
            O[r * d + j] = T ? o / sum : 0.0;
        }
        lse[r] = T ? m + log(sum) : -INFINITY;
    }
    free(w);
}

static void test_attend(uint32_t nq, size_t T, uint32_t d, int portable)
{
    msadb_k_force_portable(portable);
    float *Q = malloc(sizeof(float) * nq * d), *K = malloc(sizeof(float) * (T + 1) * d),
          *V = malloc(sizeof(float) * (T + 1) * d), *O = malloc(sizeof(float) * nq * d),
          *L = malloc(sizeof(float) * nq), *W = malloc(sizeof(float) * nq * (T + 1));
    double *Od = malloc(sizeof(double) * nq * d), *Ld = malloc(sizeof(double) * nq);
    CHECK(Q && K && V && O && L && W && Od && Ld);
    tu_fill_randn(&rng, Q, (size_t)nq * d, 1.0f);
    tu_fill_randn(&rng, K, T * d, 1.0f);
    tu_fill_randn(&rng, V, T * d, 1.0f);
    if (T > 3) /* a peaked row: large logits must not overflow */
        for (uint32_t j = 0; j < d; j++)
            K[3 * d + j] = 40.0f * Q[j];
    float scale = 1.0f / sqrtf((float)d);
    msadb_k_attend(Q, nq, K, V, T, d, scale, W, O, L);
    naive_attend(Q, nq, K, V, T, d, scale, Od, Ld);
    for (uint32_t r = 0; r < nq; r++) {
        if (T == 0) {
            CHECK(L[r] == -INFINITY);
        } else {
            CHECK(fabs(L[r] - Ld[r]) <= 1e-5 * (1.0 + fabs(Ld[r])));
        }
        for (uint32_t j = 0; j < d; j++)
            CHECK(fabs(O[r * d + j] - Od[r * d + j]) <= 2e-5);
    }

    /* split the keys in two and merge: equals the union */
    if (T >= 2) {
        size_t T1 = T / 3 + 1;
        float *O2 = malloc(sizeof(float) * nq * d), *L2 = malloc(sizeof(float) * nq);
        CHECK(O2 && L2);
        msadb_k_attend(Q, nq, K, V, T1, d, scale, W, O, L);
        msadb_k_attend(Q, nq, K + T1 * d, V + T1 * d, T - T1, d, scale, W, O2, L2);
        msadb_k_lse_merge(nq, d, O, L, O2, L2, O, L); /* aliasing out = o1 */
        for (uint32_t r = 0; r < nq; r++) {
            CHECK(fabs(L[r] - Ld[r]) <= 1e-5 * (1.0 + fabs(Ld[r])));
            for (uint32_t j = 0; j < d; j++)
                CHECK(fabs(O[r * d + j] - Od[r * d + j]) <= 2e-5);
        }
        /* merging with an empty result is the identity, both sides */
        float *Oe = calloc((size_t)nq * d, sizeof(float)), *Le = malloc(sizeof(float) * nq);
        CHECK(Oe && Le);
        for (uint32_t r = 0; r < nq; r++)
            Le[r] = -INFINITY;
        msadb_k_lse_merge(nq, d, Oe, Le, O, L, O2, L2);
        CHECK(memcmp(O2, O, sizeof(float) * nq * d) == 0 && memcmp(L2, L, sizeof(float) * nq) == 0);
        msadb_k_lse_merge(nq, d, O, L, Oe, Le, O2, L2);
        CHECK(memcmp(O2, O, sizeof(float) * nq * d) == 0 && memcmp(L2, L, sizeof(float) * nq) == 0);
        msadb_k_lse_merge(nq, d, Oe, Le, Oe, Le, O2, L2);
        for (uint32_t r = 0; r < nq; r++)
            CHECK(L2[r] == -INFINITY && O2[r * d] == 0.0f);
        free(Oe);
        free(Le);
        free(O2);
        free(L2);
    }
    free(Q);
    free(K);
    free(V);
    free(O);
    free(L);
    free(W);
    free(Od);
    free(Ld);
    msadb_k_force_portable(0);
}

/* The representatives summary: its best vector scores a planted outlier
 * token and a planted 4-token run about as well as those tokens do. */
static void test_reps(void)
{
    enum { N = 64, DD = 128 };
    float K[N * DD], q[4 * DD];
    int8_t v8[MSADB_K_REPS * DD];
    float sc[MSADB_K_REPS], tmp[MSADB_K_REPS], s_simd, s_port;
    for (int trial = 0; trial < 3; trial++) {
        tu_fill_randn(&rng, K, N * DD, 1.0f);
        tu_fill_randn(&rng, q, 4 * DD, 1.0f);
        double qn = 0;
        for (int j = 0; j < DD; j++)
            qn += (double)q[j] * q[j];
        if (trial == 1) /* one token along q head 0 */
            for (int j = 0; j < DD; j++)
                K[17 * DD + j] = 3.0f * q[j];
        if (trial == 2) /* a run of 4 tokens, moved toward q head 0 */
            for (int t = 33; t < 37; t++)
                for (int j = 0; j < DD; j++)
                    K[t * DD + j] = 0.3f * K[t * DD + j] + 1.5f * q[j];
        msadb_summarize_reps(K, N, DD, v8, sc);
        msadb_kq kq;
        memset(&kq, 0, sizeof kq);
        CHECK_OK(msadb_kq_prepare(&kq, q, 1, 4, 0, DD, DD, 0));
        msadb_k_score_reps_i8(&kq, v8, sc, 1, MSADB_K_REPS, tmp, &s_simd, 1);
        msadb_k_force_portable(1);
        msadb_k_score_reps_i8(&kq, v8, sc, 1, MSADB_K_REPS, tmp, &s_port, 1);
        msadb_k_force_portable(0);
        CHECK(s_simd == s_port);
        /* the best token of head 0 */
        double best = -INFINITY;
        for (int t = 0; t < N; t++) {
            double s = 0;
            for (int j = 0; j < DD; j++)
                s += (double)q[j] * K[t * DD + j];
            best = s > best ? s : best;
        }
        if (trial == 1)
            CHECK(s_simd >= 0.95 * best);
        if (trial == 2) /* a 4-window mean holds most of the run */
            CHECK(s_simd >= 0.6 * best);
        msadb_kq_free(&kq);
    }
}

/* The representatives as first written, one token at a time: the
 * library's vectorized version must give the same bits (stored summaries
 * must not depend on the build's vector width). */
static double ref_sqdist(const float *a, const float *b, uint32_t d)
{
    double s = 0.0;
    for (uint32_t j = 0; j < d; j++)
        s += (double)(a[j] - b[j]) * (a[j] - b[j]);
    return s;
}

static void ref_reps(const float *K, uint32_t n, uint32_t d, int8_t *v8, float *scale)
{
    float m[MSADB_MAX_HEAD_DIM], vec[MSADB_MAX_HEAD_DIM], wm[MSADB_MAX_HEAD_DIM];
    for (uint32_t j = 0; j < d; j++) {
        double a = 0.0;
        for (uint32_t t = 0; t < n; t++)
            a += K[(size_t)t * d + j];
        m[j] = (float)(a / n);
    }
    uint32_t f1 = 0, f2 = 0;
    double b1 = -1.0, b2 = -1.0;
    for (uint32_t t = 0; t < n; t++) {
        double dd = ref_sqdist(K + (size_t)t * d, m, d);
        if (dd > b1)
            b1 = dd, f1 = t;
    }
    for (uint32_t t = 0; t < n; t++) {
        double dm = ref_sqdist(K + (size_t)t * d, m, d), df = ref_sqdist(K + (size_t)t * d, K + (size_t)f1 * d, d);
        double dd = dm < df ? dm : df;
        if (dd > b2)
            b2 = dd, f2 = t;
    }
    scale[0] = msadb_k_quantize_i8(K + (size_t)f1 * d, d, v8);
    scale[1] = msadb_k_quantize_i8(K + (size_t)f2 * d, d, v8 + d);
    double best = -1.0;
    for (uint32_t s0 = 0; s0 < n; s0 += 4) {
        uint32_t e = s0 + 4 < n ? s0 + 4 : n;
        for (uint32_t j = 0; j < d; j++) {
            double a = 0.0;
            for (uint32_t t = s0; t < e; t++)
                a += K[(size_t)t * d + j];
            wm[j] = (float)(a / (e - s0));
        }
        double dd = ref_sqdist(wm, m, d);
        if (dd > best) {
            best = dd;
            memcpy(vec, wm, d * sizeof(float));
        }
    }
    scale[2] = msadb_k_quantize_i8(vec, d, v8 + 2 * (size_t)d);
}

static void test_reps_bits(void)
{
    const uint32_t ns[] = {1, 3, 7, 8, 9, 16, 63, 64, 100, 256}, ds[] = {1, 5, 64, 80, 96, 128, 256};
    uint64_t seed = 77;
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
        for (size_t b = 0; b < sizeof ds / sizeof *ds; b++) {
            uint32_t n = ns[a], d = ds[b];
            float *K = malloc(sizeof(float) * n * d);
            int8_t v1[MSADB_K_REPS * 256], v2[MSADB_K_REPS * 256];
            float s1[MSADB_K_REPS], s2[MSADB_K_REPS];
            CHECK(K != NULL);
            for (uint32_t t = 0; t < n; t++)
                for (uint32_t j = 0; j < d; j++)
                    K[t * d + j] = (float)(tu_rand(&seed) % 20001) / 1000.0f - 10.0f + (j % 7 == 3 ? 12.0f : 0.0f);
            if (n > 4) /* ties: the earlier token must win */
                memcpy(K + (size_t)(n - 1) * d, K + (size_t)2 * d, sizeof(float) * d);
            ref_reps(K, n, d, v1, s1);
            msadb_summarize_reps(K, n, d, v2, s2);
            CHECK(memcmp(v1, v2, (size_t)MSADB_K_REPS * d) == 0 && memcmp(s1, s2, sizeof s1) == 0);
            free(K);
        }
}

int main(void)
{
    printf("simd: %s\n", msadb_k_simd() ? "avx512" : "portable");
    /* every common head dim (64, 80, 96, 128, 256) and odd ones; GQA
     * groups 1, 2, 4 and 8 (vector paths: 4 summaries at a time, the rest
     * one by one; n = 301 leaves a remainder) */
    uint32_t dims[] = {128, 64, 80, 96, 40, 100, 16, 1, 256};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        for (uint32_t gq = 1; gq <= 8; gq *= 2)
            test_scores(dims[i], 1, gq);
        test_scores(dims[i], 1, 3);
        test_scores(dims[i], 5, 2);
        test_scores(dims[i], 2, 9);
    }
    test_topk();
    test_reps();
    test_reps_bits();
    for (int portable = 0; portable <= 1; portable++) {
        test_attend(1, 100, 128, portable);
        test_attend(4, 777, 128, portable);
        test_attend(3, 1, 40, portable);
        test_attend(8, 0, 64, portable);
        test_attend(8, 9000, 128, portable); /* large: the BLAS path */
        test_attend(1, 33, 7, portable);
    }
    printf("ok\n");
    return 0;
}
