/* coarse.c -- the routing index's coarse summary: choice of a super-block's
 * representatives and the coarse page layout (see coarse.h). */
#include <math.h>
#include <string.h>

#include "codec/coarse.h"

int msadb_coarse_valid(const msadb_coarse_layout *C, uint32_t page_cap)
{
    return C->kind >= MSADB_COARSE_KCENTER && C->kind <= MSADB_COARSE_KCENTER_MIX && C->S >= 1 && C->S <= MSADB_COARSE_MAX_S && C->S <= page_cap && page_cap % C->S == 0 && C->R >= 1 &&
           C->R <= MSADB_COARSE_MAX_R && C->d >= 1 && C->d <= MSADB_MAX_HEAD_DIM;
}

size_t msadb_coarse_page_bytes(const msadb_coarse_layout *C, size_t n)
{
    size_t b = msadb_coarse_entries(C, n) * C->R * (sizeof(float) + C->d);
    return b < MSADB_SUMM_PAGE_MIN ? MSADB_SUMM_PAGE_MIN : b;
}

void msadb_coarse_view_of(const msadb_coarse_layout *C, const uint8_t *page, size_t n, msadb_summ_view *v)
{
    size_t ns = msadb_coarse_entries(C, n);
    memset(v, 0, sizeof *v);
    v->reps_scale = (const float *)(const void *)page;
    v->reps = (const int8_t *)(page + ns * C->R * sizeof(float));
    v->n_reps = C->R;
}

/* Squared distance between representative a (int8 * scale) and f32 x. */
static double dist_to(const int8_t *a, float sa, const float *x, uint32_t d)
{
    double s = 0.0;
    for (uint32_t j = 0; j < d; j++) {
        double t = (double)a[j] * sa - x[j];
        s += t * t;
    }
    return s;
}

/* Makes vector p a center: near[i] becomes the distance of vector i to its
 * nearest center, and p is never chosen again (x: scratch of d floats). */
static void add_center(const int8_t *v, const float *scale, uint32_t m, uint32_t d, uint32_t p, float *x,
                       double *near)
{
    for (uint32_t j = 0; j < d; j++)
        x[j] = (float)((double)v[(size_t)p * d + j] * scale[p]);
    for (uint32_t i = 0; i < m; i++) {
        double t = dist_to(v + (size_t)i * d, scale[i], x, d);
        near[i] = t < near[i] ? t : near[i];
    }
    near[p] = -1.0;
}

/* k-center choice among m representatives (v[m][d], scale[m]; with dir,
 * each scale is taken as 1/|v8| so distances are between directions):
 * indexes of up to R vectors into pick, after the np0 already there (which
 * count as centers); returns how many pick holds. */
static uint32_t kcenter(const int8_t *v, const float *scale_in, uint32_t m, uint32_t d, uint32_t R, int dir,
                        uint32_t *pick, uint32_t np0)
{
    float dscale[MSADB_K_REPS * MSADB_COARSE_MAX_S];
    const float *scale = scale_in;
    if (dir) {
        for (uint32_t i = 0; i < m; i++) {
            double n2 = 0.0;
            for (uint32_t j = 0; j < d; j++)
                n2 += (double)v[(size_t)i * d + j] * v[(size_t)i * d + j];
            dscale[i] = n2 > 0.0 ? (float)(1.0 / sqrt(n2)) : 0.0f;
        }
        scale = dscale;
    }
    float mean[MSADB_MAX_HEAD_DIM], x[MSADB_MAX_HEAD_DIM];
    double near[MSADB_K_REPS * MSADB_COARSE_MAX_S];
    for (uint32_t j = 0; j < d; j++) {
        double a = 0.0;
        for (uint32_t i = 0; i < m; i++)
            a += (double)v[(size_t)i * d + j] * scale[i];
        mean[j] = (float)(a / m);
    }
    for (uint32_t i = 0; i < m; i++)
        near[i] = dist_to(v + (size_t)i * d, scale[i], mean, d);
    for (uint32_t c = 0; c < np0; c++)
        add_center(v, scale, m, d, pick[c], x, near);
    uint32_t np = np0;
    while (np < R && np < m) {
        uint32_t best = 0;
        for (uint32_t i = 1; i < m; i++)
            if (near[i] > near[best])
                best = i;
        if (np > 0 && near[best] <= 0.0)
            break; /* every other vector equals one already kept */
        pick[np++] = best;
        add_center(v, scale, m, d, best, x, near);
    }
    return np;
}

void msadb_coarse_page_build(const msadb_coarse_layout *C, const msadb_summ_view *fine, size_t n, uint8_t *page)
{
    const uint32_t d = C->d, R = C->R, K = MSADB_K_REPS;
    size_t ns = msadb_coarse_entries(C, n);
    memset(page, 0, msadb_coarse_page_bytes(C, n));
    msadb_summ_view out;
    msadb_coarse_view_of(C, page, n, &out);
    float *osc = (float *)(void *)(page);
    int8_t *ov = (int8_t *)(uintptr_t)out.reps;
    for (size_t e = 0; e < ns; e++) {
        size_t b0 = e * C->S, b1 = b0 + C->S < n ? b0 + C->S : n;
        uint32_t m = (uint32_t)((b1 - b0) * K), pick[MSADB_COARSE_MAX_R];
        const int8_t *v = fine->reps + b0 * K * d;
        const float *sc = fine->reps_scale + b0 * K;
        uint32_t np;
        if (C->kind == MSADB_COARSE_KCENTER_MIX) /* half by distance, the rest by direction */
            np = kcenter(v, sc, m, d, R, 1, pick, kcenter(v, sc, m, d, (R + 1) / 2, 0, pick, 0));
        else
            np = kcenter(v, sc, m, d, R, C->kind == MSADB_COARSE_KCENTER_DIR, pick, 0);
        for (uint32_t r = 0; r < R; r++) {
            uint32_t src = pick[r < np ? r : 0];
            memcpy(ov + (e * R + r) * d, v + (size_t)src * d, d);
            osc[e * R + r] = sc[src];
        }
    }
}
