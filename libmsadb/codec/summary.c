/* summary.c -- block summaries: computing them, laying them out in pages,
 * scoring a page (see summary.h). */
#include <string.h>

#include "codec/summary.h"
#include "core/kernels.h"
#include "core/util.h"

/* ------------------------------------------------------------------------ */
/* Page layout                                                              */
/* ------------------------------------------------------------------------ */

static void layout_sum(msadb_summ_layout *L)
{
    L->entry = 0;
    for (int r = 0; r < MSADB_SUMM_REGIONS; r++)
        L->entry += L->eb[r];
}

void msadb_summ_layout_init(msadb_summ_layout *L, uint32_t d, uint32_t kinds)
{
    L->d = d;
    L->eb[MSADB_REG_REPS_SCALE] = (kinds & MSADB_SUMMARY_REPS) ? MSADB_K_REPS * sizeof(float) : 0;
    L->eb[MSADB_REG_MEAN] = (kinds & MSADB_SUMMARY_MEAN) ? 2 * (size_t)d : 0;
    L->eb[MSADB_REG_MINMAX] = (kinds & MSADB_SUMMARY_MINMAX) ? 4 * (size_t)d : 0;
    L->eb[MSADB_REG_REPS] = (kinds & MSADB_SUMMARY_REPS) ? MSADB_K_REPS * (size_t)d : 0;
    L->min_bytes = MSADB_SUMM_PAGE_MIN;
    layout_sum(L);
}

void msadb_summ_layout_flat(msadb_summ_layout *L, size_t entry)
{
    memset(L, 0, sizeof *L);
    L->eb[0] = entry;
    layout_sum(L);
}

size_t msadb_summ_page_bytes(const msadb_summ_layout *L, size_t n)
{
    size_t b = n * L->entry;
    return b < L->min_bytes ? L->min_bytes : b;
}

void msadb_summ_entry_get(const msadb_summ_layout *L, const uint8_t *page, size_t n, size_t i, uint8_t *out)
{
    for (int r = 0; r < MSADB_SUMM_REGIONS; r++) {
        memcpy(out, page + i * L->eb[r], L->eb[r]);
        out += L->eb[r];
        page += n * L->eb[r];
    }
}

void msadb_summ_entry_put(const msadb_summ_layout *L, uint8_t *page, size_t n, size_t i, const uint8_t *entry)
{
    for (int r = 0; r < MSADB_SUMM_REGIONS; r++) {
        memcpy(page + i * L->eb[r], entry, L->eb[r]);
        entry += L->eb[r];
        page += n * L->eb[r];
    }
}

void msadb_summ_page_build(const msadb_summ_layout *L, const uint8_t *entries, uint32_t n, uint8_t *page)
{
    memset(page, 0, msadb_summ_page_bytes(L, n));
    for (uint32_t i = 0; i < n; i++)
        msadb_summ_entry_put(L, page, n, i, entries + (size_t)i * L->entry);
}

void msadb_summ_view_of(const msadb_summ_layout *L, const uint8_t *page, size_t n, msadb_summ_view *v)
{
    /* Regions in order; the page is 16-byte aligned (pages are padded into
     * LMDB overflow pages), so each pointer is aligned for its type. */
    const uint8_t *reg[MSADB_SUMM_REGIONS];
    for (int r = 0; r < MSADB_SUMM_REGIONS; r++) {
        reg[r] = L->eb[r] ? page : NULL;
        page += n * L->eb[r];
    }
    v->reps_scale = (const float *)(const void *)reg[MSADB_REG_REPS_SCALE];
    v->mean = (const uint16_t *)(const void *)reg[MSADB_REG_MEAN];
    v->minmax = (const uint16_t *)(const void *)reg[MSADB_REG_MINMAX];
    v->reps = (const int8_t *)reg[MSADB_REG_REPS];
    v->n_reps = MSADB_K_REPS;
}

void msadb_summ_view_from(const msadb_summ_view *v, uint32_t d, uint32_t e, msadb_summ_view *out)
{
    out->mean = v->mean ? v->mean + (size_t)e * d : NULL;
    out->minmax = v->minmax ? v->minmax + (size_t)e * 2 * d : NULL;
    out->reps = v->reps ? v->reps + (size_t)e * v->n_reps * d : NULL;
    out->reps_scale = v->reps_scale ? v->reps_scale + (size_t)e * v->n_reps : NULL;
    out->n_reps = v->n_reps;
}

/* ------------------------------------------------------------------------ */
/* Computing summaries                                                      */
/* ------------------------------------------------------------------------ */

void msadb_summarize(const float *K, uint32_t n, uint32_t d, uint16_t *mean, uint16_t *minmax)
{
    /* Row by row so the inner loop runs over contiguous channels and
     * vectorizes; the f32 sums of at most MSADB_MAX_BLOCK rows are exact
     * enough for an f16 result. */
    float sum[MSADB_MAX_HEAD_DIM], lo[MSADB_MAX_HEAD_DIM], hi[MSADB_MAX_HEAD_DIM];
    memcpy(sum, K, d * sizeof(float));
    memcpy(lo, K, d * sizeof(float));
    memcpy(hi, K, d * sizeof(float));
    for (uint32_t t = 1; t < n; t++) {
        const float *r = K + (size_t)t * d;
        for (uint32_t c = 0; c < d; c++) {
            sum[c] += r[c];
            lo[c] = r[c] < lo[c] ? r[c] : lo[c];
            hi[c] = r[c] > hi[c] ? r[c] : hi[c];
        }
    }
    float inv = 1.0f / (float)n;
    for (uint32_t c = 0; c < d; c++) {
        if (mean)
            mean[c] = msadb_f32_to_f16(sum[c] * inv);
        if (minmax) {
            minmax[c] = msadb_f32_to_f16_down(lo[c]);
            minmax[d + c] = msadb_f32_to_f16_up(hi[c]);
        }
    }
}

static double sqdist(const float *a, const float *b, uint32_t d)
{
    double s = 0.0;
    for (uint32_t j = 0; j < d; j++)
        s += (double)(a[j] - b[j]) * (a[j] - b[j]);
    return s;
}

/* Tokens whose squared distances are summed side by side: each lane adds
 * its channels in order, exactly as sqdist() does, so the results are the
 * same bits while the lanes fill a vector. */
#define REP_LANES 8

/* out[t] = sqdist(K row t, c) for every token of the block. */
static void sqdist_rows(const float *K, uint32_t n, uint32_t d, const float *c, double *out)
{
    float tile[MSADB_MAX_HEAD_DIM][REP_LANES];
    uint32_t t = 0;
    for (; t + REP_LANES <= n; t += REP_LANES) {
        for (uint32_t l = 0; l < REP_LANES; l++)
            for (uint32_t j = 0; j < d; j++)
                tile[j][l] = K[(size_t)(t + l) * d + j] - c[j];
        double acc[REP_LANES] = {0};
        for (uint32_t j = 0; j < d; j++)
            for (uint32_t l = 0; l < REP_LANES; l++)
                acc[l] += (double)tile[j][l] * tile[j][l];
        memcpy(out + t, acc, sizeof acc);
    }
    for (; t < n; t++)
        out[t] = sqdist(K + (size_t)t * d, c, d);
}

/* The mean of tokens [s0, e) into out, each channel summed in token order
 * in double. */
static void mean_rows(const float *K, uint32_t s0, uint32_t e, uint32_t d, float *out)
{
    double a[MSADB_MAX_HEAD_DIM];
    for (uint32_t j = 0; j < d; j++)
        a[j] = 0.0;
    for (uint32_t t = s0; t < e; t++)
        for (uint32_t j = 0; j < d; j++)
            a[j] += K[(size_t)t * d + j];
    for (uint32_t j = 0; j < d; j++)
        out[j] = (float)(a[j] / (e - s0));
}

/* The aligned window of w tokens whose mean lies farthest from m; its mean
 * goes to out (the whole block when it is shorter than w). */
static void farthest_window(const float *K, uint32_t n, uint32_t d, uint32_t w, const float *m, float *out)
{
    double best = -1.0;
    float wm[MSADB_MAX_HEAD_DIM];
    for (uint32_t s0 = 0; s0 < n; s0 += w) {
        uint32_t e = s0 + w < n ? s0 + w : n;
        mean_rows(K, s0, e, d, wm);
        double dd = sqdist(wm, m, d);
        if (dd > best) {
            best = dd;
            memcpy(out, wm, d * sizeof(float));
        }
    }
}

void msadb_summarize_reps(const float *K, uint32_t n, uint32_t d, int8_t *v8, float *scale)
{
    float m[MSADB_MAX_HEAD_DIM] = {0}, vec[MSADB_MAX_HEAD_DIM];
    double dm[MSADB_MAX_BLOCK], df[MSADB_MAX_BLOCK];
    mean_rows(K, 0, n, d, m);
    /* two k-center steps from the mean (ties: the earlier token) */
    uint32_t f1 = 0, f2 = 0;
    double b1 = -1.0, b2 = -1.0;
    sqdist_rows(K, n, d, m, dm);
    for (uint32_t t = 0; t < n; t++)
        if (dm[t] > b1)
            b1 = dm[t], f1 = t;
    sqdist_rows(K, n, d, K + (size_t)f1 * d, df);
    for (uint32_t t = 0; t < n; t++) {
        double dd = dm[t] < df[t] ? dm[t] : df[t];
        if (dd > b2)
            b2 = dd, f2 = t;
    }
    scale[0] = msadb_k_quantize_i8(K + (size_t)f1 * d, d, v8);
    scale[1] = msadb_k_quantize_i8(K + (size_t)f2 * d, d, v8 + d);
    farthest_window(K, n, d, 4, m, vec);
    scale[2] = msadb_k_quantize_i8(vec, d, v8 + 2 * (size_t)d);
}

void msadb_summarize_entry(const msadb_summ_layout *L, const float *K, uint32_t n, uint8_t *out)
{
    uint32_t d = L->d;
    uint16_t mean[MSADB_MAX_HEAD_DIM], mm[2 * MSADB_MAX_HEAD_DIM];
    int8_t reps[MSADB_K_REPS * MSADB_MAX_HEAD_DIM];
    float scale[MSADB_K_REPS];
    msadb_summarize(K, n, d, L->eb[MSADB_REG_MEAN] ? mean : NULL, L->eb[MSADB_REG_MINMAX] ? mm : NULL);
    if (L->eb[MSADB_REG_REPS])
        msadb_summarize_reps(K, n, d, reps, scale);
    /* concatenated form, in region order */
    const void *src[MSADB_SUMM_REGIONS] = {scale, mean, mm, reps};
    for (int r = 0; r < MSADB_SUMM_REGIONS; r++) {
        memcpy(out, src[r], L->eb[r]);
        out += L->eb[r];
    }
}

/* ------------------------------------------------------------------------ */
/* Scoring                                                                  */
/* ------------------------------------------------------------------------ */

msadb_summ_score msadb_summ_score_of(uint32_t kind, int score)
{
    if (kind == MSADB_SUMMARY_MINMAX)
        return MSADB_SUMM_SCORE_MINMAX;
    if (kind == MSADB_SUMMARY_REPS)
        return MSADB_SUMM_SCORE_REPS;
    /* the centring of MSADB_SCORE_DOT_CENTRED is the scan's (query/query.c) */
    return score == MSADB_SCORE_DOT || score == MSADB_SCORE_DOT_CENTRED ? MSADB_SUMM_SCORE_MEAN_DOT
                                                                       : MSADB_SUMM_SCORE_MEAN_COS;
}

void msadb_summ_score_page(const msadb_kq *kq, msadb_summ_score how, const msadb_summ_view *v, size_t n,
                           float *tmp, float *scores)
{
    if (how == MSADB_SUMM_SCORE_REPS)
        msadb_k_score_reps_i8(kq, v->reps, v->reps_scale, n, v->n_reps, tmp, scores, n);
    else if (how == MSADB_SUMM_SCORE_MINMAX)
        msadb_k_score_minmax(kq, v->minmax, n, scores, n);
    else
        msadb_k_score_mean(kq, v->mean, n, how == MSADB_SUMM_SCORE_MEAN_COS, scores, n);
}
