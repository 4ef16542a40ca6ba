/* matmul.c -- see matmul.h.
 *
 * Why bf16.  On the 2-core AMD EPYC (Zen 4) this runtime is measured on, one
 * core issues about 3.7 G 512-bit FMAs per second (59 G f32 multiply-adds,
 * of which OpenBLAS's sgemm reaches 52 G on the model's shapes) and as many
 * VDPBF16PS (117 G bf16 multiply-adds); VPDPBUSD (int8) issues at about
 * half that rate, 133 G multiply-adds, and would also need a scale per
 * 32-value block of every input row and weight row.  bf16 doubles the
 * arithmetic rate for a rounding of 2^-9, the precision the model was
 * trained with (docs/model.md: bf16 autocast), and halves the bytes a
 * decode step reads.
 *
 * The kernel keeps MM_MR rows x 64 outputs (24 accumulators) in registers;
 * a pair step broadcasts each row's two bf16 inputs and multiplies them
 * against four 16-output panels.  Work is cut into units of (64 outputs,
 * MM_SLAB rows) that the threads take in turn from a shared counter, so a
 * thread the system pauses holds up one unit, not half the product.
 *
 * Where the CPU has AMX (Intel Xeon from Sapphire Rapids on) the units run
 * on tiles instead (amx_block): one TDPBF16PS does 16 x 16 x 32 bf16
 * multiply-adds, and on the 2-core Xeon of docs/benchmarks.md (*AMX tiles*)
 * ingest takes about half the time of the AVX512 kernel's. */
#include "runtime/matmul.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "msadb.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define MM_X86 1
#define TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#if defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11
#define MM_AMX 1
#define TARGET_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))
#else
#define MM_AMX 0
#endif
#else
#define MM_X86 0
#define MM_AMX 0
#endif

#define MM_MR 6     /* rows per kernel call */
#define MM_SLAB 48  /* rows per work unit (a multiple of MM_MR) */
/* Products smaller than this many multiply-adds stay on the caller's
 * thread: waking a worker costs more than it saves. */
#define MM_MIN_SPLIT ((size_t)1 << 18)
/* Inputs of at least this many values are converted to bf16 on the threads
 * (where the product is split). */
#define MM_MIN_CONVERT ((size_t)1 << 16)

static size_t pairs_of(uint32_t in) { return ((size_t)in + 1) / 2; }
static size_t groups_of(uint32_t out) { return ((size_t)out + MSADB_MM_COLS - 1) / MSADB_MM_COLS; }

int msadb_mm_bf16_available(void)
{
#if MM_X86
    static int avail = -1;
    int a = __atomic_load_n(&avail, __ATOMIC_RELAXED);
    if (a < 0) { /* benign race: every thread computes the same answer */
        unsigned eax, ebx, ecx, edx;
        __builtin_cpu_init();
        a = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") &&
            __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && ((eax >> 5) & 1u); /* BF16 */
        __atomic_store_n(&avail, a, __ATOMIC_RELAXED);
    }
    return a;
#else
    return 0;
#endif
}

/* AMX: the CPU's tiles (CPUID 7.0 EDX bits 22 AMX-BF16 and 24 AMX-TILE),
 * enabled by the kernel (XCR0 bits 17-18) and granted to this process
 * (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA, Linux 5.16 on). */
#define ARCH_REQ_XCOMP_PERM_ 0x1023
#define XFEATURE_XTILEDATA_ 18

static int amx_probe(void)
{
#if MM_AMX
    unsigned eax, ebx, ecx, edx;
    if (!msadb_mm_bf16_available() || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) ||
        !((edx >> 22) & 1u) || !((edx >> 24) & 1u))
        return 0;
    __get_cpuid(1, &eax, &ebx, &ecx, &edx);
    if (!((ecx >> 27) & 1u)) /* OSXSAVE: xgetbv allowed */
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17))
        return 0;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM_, XFEATURE_XTILEDATA_) == 0;
#else
    return 0;
#endif
}

static int amx_state = -1; /* -1 unknown, 0 unavailable, 1 available */
static int amx_on = 1;     /* msadb_mm_set_amx */

int msadb_mm_amx_available(void)
{
    int a = __atomic_load_n(&amx_state, __ATOMIC_ACQUIRE);
    if (a < 0) { /* benign race: every thread computes the same answer */
        const char *e = getenv("MSADB_MODEL_AMX");
        a = e && !strcmp(e, "0") ? 0 : amx_probe();
        __atomic_store_n(&amx_state, a, __ATOMIC_RELEASE);
    }
    return a;
}

int msadb_mm_set_amx(int on)
{
    __atomic_store_n(&amx_on, on ? 1 : 0, __ATOMIC_RELAXED);
    return on && msadb_mm_amx_available();
}

int msadb_mm_amx_used(void)
{
    return __atomic_load_n(&amx_on, __ATOMIC_RELAXED) && msadb_mm_amx_available();
}

uint16_t msadb_mm_bf16_of(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

size_t msadb_mm_packed_bytes(uint32_t out, uint32_t in)
{
    return groups_of(out) * pairs_of(in) * MSADB_MM_COLS * sizeof(uint32_t);
}

size_t msadb_mm_scratch_words(size_t n, uint32_t in) { return n * pairs_of(in); }

void msadb_mm_pack_row(const float *w, uint32_t in, size_t j, size_t ld, uint32_t *packed)
{
    uint32_t *dst = packed + msadb_mm_word(ld, j, 0);
    for (size_t k = 0; k < in; k += 2) {
        uint32_t hi = k + 1 < in ? msadb_mm_bf16_of(w[k + 1]) : 0;
        dst[(k / 2) * MSADB_MM_COLS] = msadb_mm_bf16_of(w[k]) | hi << 16;
    }
}

void msadb_mm_pack_set(uint32_t *packed, size_t ld, size_t j, size_t k, float v)
{
    uint32_t *w = packed + msadb_mm_word(ld, j, k);
    uint32_t b = msadb_mm_bf16_of(v);
    *w = k % 2 ? (*w & 0xffffu) | b << 16 : (*w & 0xffff0000u) | b;
}

int msadb_mm_pack_bf16(const float *W, uint32_t out, uint32_t in, uint16_t **packed)
{
    if (!W || !packed || !out || !in)
        return MSADB_EINVAL;
    size_t bytes = msadb_mm_packed_bytes(out, in);
    uint32_t *p = msadb_aalloc(bytes);
    if (!p)
        return MSADB_ENOMEM;
    memset(p, 0, bytes);
    for (size_t j = 0; j < out; j++)
        msadb_mm_pack_row(W + j * in, in, j, pairs_of(in), p);
    *packed = (uint16_t *)p;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Kernel                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct mm_job {
    const uint32_t *xb;   /* [n][kp] input pairs */
    const uint32_t *w;    /* packed weights, group stride ld pairs */
    float *Y;             /* row stride ldy */
    size_t n, kp, ld, out, ldy, slabs, units;
    int amx;              /* run the units on AMX tiles */
} mm_job;

#if MM_X86
/* X rows as bf16 pairs: xb[r][kk], zero beyond `in`. */
TARGET_BF16 static void convert_rows(const float *X, size_t n, uint32_t in, uint32_t *xb)
{
    size_t kp = pairs_of(in);
    for (size_t r = 0; r < n; r++) {
        const float *x = X + r * in;
        uint32_t *o = xb + r * kp;
        for (size_t k = 0; k < in; k += 32) {
            size_t left = in - k;
            __mmask16 mlo = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
            __mmask16 mhi = left >= 32 ? 0xffff : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
            __m512 lo = _mm512_maskz_loadu_ps(mlo, x + k);
            __m512 hi = _mm512_maskz_loadu_ps(mhi, x + k + 16);
            __m512i v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            size_t words = left >= 32 ? 16 : (left + 1) / 2;
            _mm512_mask_storeu_epi32(o + k / 2, (__mmask16)((1u << words) - 1), v);
        }
    }
}

/* MR rows (r0..) x the 64 outputs of group g. */
TARGET_BF16 static inline __attribute__((always_inline)) void
kernel(int MR, const mm_job *J, size_t r0, size_t g)
{
    __m512 acc[MM_MR][4];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++)
            acc[r][q] = _mm512_setzero_ps();
    const uint32_t *w = J->w + g * J->ld * MSADB_MM_COLS;
    const uint32_t *x = J->xb + r0 * J->kp;
    size_t kp = J->kp;
    for (size_t kk = 0; kk < kp; kk++) {
        const uint32_t *wk = w + kk * MSADB_MM_COLS;
        __m512bh w0 = (__m512bh)_mm512_load_si512(wk);
        __m512bh w1 = (__m512bh)_mm512_load_si512(wk + 16);
        __m512bh w2 = (__m512bh)_mm512_load_si512(wk + 32);
        __m512bh w3 = (__m512bh)_mm512_load_si512(wk + 48);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)x[r * kp + kk]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, w0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, w1);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], a, w2);
            acc[r][3] = _mm512_dpbf16_ps(acc[r][3], a, w3);
        }
    }
    size_t c0 = g * MSADB_MM_COLS;
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        float *y = J->Y + (r0 + r) * J->ldy + c0;
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) {
            size_t c = c0 + 16 * (size_t)q;
            if (c + 16 <= J->out)
                _mm512_storeu_ps(y + 16 * q, acc[r][q]);
            else if (c < J->out)
                _mm512_mask_storeu_ps(y + 16 * q, (__mmask16)((1u << (J->out - c)) - 1),
                                      acc[r][q]);
        }
    }
}

#if MM_AMX
/* The tile kernel.  Tiles 0-3 hold the f32 sums of up to 16 rows x 64
 * outputs (16 each), tile 4 the rows' next 16 input pairs, tiles 5-7 the
 * weights' 16 pairs x 16 outputs.  The packed layout is already what a
 * weight tile reads: 16 pair steps of one 16-output panel, 256 bytes apart.
 * TDPBF16PS adds each pair's two products to its output, pair after pair in
 * k order, so every output is computed alone as in the AVX512 kernel (same
 * inputs, same rounding points; the two kernels may differ in the last bits
 * of a sum, which is why one process uses one of them).  A last step of
 * fewer than 16 pairs runs under a tile shape of that many: the sums are
 * stored, the shape changed (which clears the tiles) and the sums loaded
 * again, so no tile ever reads past a row or a group. */
typedef struct amx_cfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg;

static void amx_shape(amx_cfg *c, size_t m, size_t pairs)
{
    memset(c, 0, sizeof *c);
    c->palette = 1;
    for (int t = 0; t < 4; t++) { /* sums: m rows x 16 f32 */
        c->rows[t] = (uint8_t)m;
        c->colsb[t] = 64;
    }
    c->rows[4] = (uint8_t)m; /* inputs: m rows x `pairs` words */
    c->colsb[4] = (uint16_t)(pairs * 4);
    for (int t = 5; t < 8; t++) { /* weights: `pairs` rows x 16 words */
        c->rows[t] = (uint8_t)pairs;
        c->colsb[t] = 64;
    }
}

/* The tile shape this thread has loaded: loading one (LDTILECFG) costs
 * about as much as a short block's arithmetic, so a thread keeps its shape
 * from block to block and unit to unit, and gives its tiles back
 * (TILERELEASE) when its part of a product is done (amx_done). */
static __thread amx_cfg amx_cur __attribute__((aligned(64)));
static __thread int amx_loaded;

TARGET_AMX static void amx_config(size_t m, size_t pairs)
{
    amx_cfg c __attribute__((aligned(64)));
    amx_shape(&c, m, pairs);
    if (!amx_loaded || memcmp(&c, &amx_cur, sizeof c) != 0) {
        _tile_loadconfig(&c);
        amx_cur = c;
        amx_loaded = 1;
    }
}

TARGET_AMX static void amx_done(void)
{
    if (amx_loaded) {
        _tile_release();
        amx_loaded = 0;
    }
}

/* One pair step of the tile kernel: inputs at x (row stride xs bytes),
 * weights at w (the step's first pair of the group). */
#define AMX_STEP(x, xs, w)                                                     \
    do {                                                                       \
        _tile_loadd(4, (x), (xs));                                             \
        _tile_loadd(5, (w), 256);                                              \
        _tile_loadd(6, (w) + 16, 256);                                         \
        _tile_loadd(7, (w) + 32, 256);                                         \
        _tile_dpbf16ps(0, 4, 5);                                               \
        _tile_dpbf16ps(1, 4, 6);                                               \
        _tile_dpbf16ps(2, 4, 7);                                               \
        _tile_loadd(5, (w) + 48, 256);                                         \
        _tile_dpbf16ps(3, 4, 5);                                               \
    } while (0)

/* The four sums tiles to y, or from it (op _tile_stored or _tile_loadd),
 * rows ys bytes apart (tile numbers must be constants). */
#define AMX_SUMS(op, y, ys)                                                    \
    do {                                                                       \
        op(0, (y), (ys));                                                      \
        op(1, (y) + 16, (ys));                                                 \
        op(2, (y) + 32, (ys));                                                 \
        op(3, (y) + 48, (ys));                                                 \
    } while (0)

/* m (<= 16) rows from r0 x the 64 outputs of group g. */
TARGET_AMX static void amx_block(const mm_job *J, size_t r0, size_t m, size_t g)
{
    float sums[16 * MSADB_MM_COLS] __attribute__((aligned(64)));
    size_t kp = J->kp, full = kp / 16, rest = kp % 16, xs = kp * 4;
    const uint32_t *w = J->w + g * J->ld * MSADB_MM_COLS;
    const uint32_t *x = J->xb + r0 * kp;
    amx_config(m, full ? 16 : rest);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (size_t t = 0; t < full; t++)
        AMX_STEP(x + t * 16, xs, w + t * 16 * MSADB_MM_COLS);
    if (rest) {
        if (full) {
            AMX_SUMS(_tile_stored, sums, 256);
            amx_config(m, rest); /* clears the tiles: the sums come back */
            AMX_SUMS(_tile_loadd, sums, 256);
        }
        AMX_STEP(x + full * 16, xs, w + full * 16 * MSADB_MM_COLS);
    }
    size_t c0 = g * MSADB_MM_COLS;
    float *y = J->Y + r0 * J->ldy + c0;
    if (c0 + MSADB_MM_COLS <= J->out) {
        AMX_SUMS(_tile_stored, y, J->ldy * sizeof(float));
    } else {
        AMX_SUMS(_tile_stored, sums, 256);
        for (size_t r = 0; r < m; r++)
            memcpy(y + r * J->ldy, sums + r * MSADB_MM_COLS, (J->out - c0) * sizeof(float));
    }
}

TARGET_AMX static void amx_unit(const mm_job *J, size_t u)
{
    size_t g = u / J->slabs, s = u % J->slabs;
    size_t r = s * MM_SLAB, r1 = r + MM_SLAB < J->n ? r + MM_SLAB : J->n;
    for (; r < r1; r += 16)
        amx_block(J, r, r1 - r < 16 ? r1 - r : 16, g);
}
#endif

TARGET_BF16 static void run_unit(const mm_job *J, size_t u)
{
#if MM_AMX
    if (J->amx) {
        amx_unit(J, u);
        return;
    }
#endif
    size_t g = u / J->slabs, s = u % J->slabs;
    size_t r = s * MM_SLAB, r1 = r + MM_SLAB < J->n ? r + MM_SLAB : J->n;
    for (; r + MM_MR <= r1; r += MM_MR)
        kernel(MM_MR, J, r, g);
    switch (r1 - r) {
    case 5: kernel(5, J, r, g); break;
    case 4: kernel(4, J, r, g); break;
    case 3: kernel(3, J, r, g); break;
    case 2: kernel(2, J, r, g); break;
    case 1: kernel(1, J, r, g); break;
    default: break;
    }
}
#endif

#if !MM_AMX
static void amx_done(void) {}
#endif

/* ------------------------------------------------------------------------ */
/* Pool                                                                     */
/* ------------------------------------------------------------------------ */

struct msadb_mm_pool {
    int workers;
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned gen;       /* bumped for every task handed to the workers */
    int busy;           /* workers still on the current task */
    int quit;
    msadb_mm_task fn;   /* the current task: fn(arg, u) for u < units */
    void *arg;
    size_t units;
    size_t next;        /* next unit to take (atomic) */
};

static void take_units(msadb_mm_pool *p)
{
    for (;;) {
        size_t u = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
        if (u >= p->units)
            break;
        p->fn(p->arg, u);
    }
}

static void *worker_main(void *arg)
{
    msadb_mm_pool *p = arg;
    unsigned seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->quit)
            pthread_cond_wait(&p->go, &p->mu);
        if (p->quit)
            break;
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        take_units(p);
        amx_done(); /* this thread's tiles, if a product used them */
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int msadb_mm_pool_new(int threads, msadb_mm_pool **out)
{
    if (!out)
        return MSADB_EINVAL;
    *out = NULL;
    msadb_mm_pool *p = calloc(1, sizeof *p);
    int want = threads > 1 ? threads - 1 : 0;
    if (!p || (want && !(p->th = calloc((size_t)want, sizeof *p->th)))) {
        free(p);
        return MSADB_ENOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 0; i < want; i++) {
        if (pthread_create(&p->th[i], NULL, worker_main, p) != 0)
            break;
        p->workers++;
    }
    *out = p;
    return 0;
}

void msadb_mm_pool_free(msadb_mm_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->workers; i++)
        pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->th);
    free(p);
}

void msadb_mm_pool_run(msadb_mm_pool *p, size_t units, msadb_mm_task fn, void *arg)
{
    if (!fn || !units)
        return;
    if (!p || !p->workers || units < 2) {
        for (size_t u = 0; u < units; u++)
            fn(arg, u);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->units = units;
    p->next = 0;
    p->busy = p->workers;
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    take_units(p);
    pthread_mutex_lock(&p->mu);
    while (p->busy)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

#if MM_X86
static void mm_unit(void *arg, size_t u) { run_unit(arg, u); }

typedef struct convert_job {
    const float *X;
    size_t n;
    uint32_t in;
    uint32_t *xb;
} convert_job;

static void convert_unit(void *arg, size_t u)
{
    const convert_job *C = arg;
    size_t r = u * MM_SLAB, m = C->n - r < MM_SLAB ? C->n - r : MM_SLAB;
    convert_rows(C->X + r * C->in, m, C->in, C->xb + r * pairs_of(C->in));
}
#endif

void msadb_mm_bf16(msadb_mm_pool *pool, const float *X, size_t n, const uint16_t *packed,
                   uint32_t out, uint32_t in, float *Y, uint32_t *scratch)
{
    msadb_mm_bf16_ld(pool, X, n, (const uint32_t *)(const void *)packed, pairs_of(in), out, in, Y,
                     out, scratch);
}

void msadb_mm_bf16_row(const float *x, uint32_t in, uint32_t *xb)
{
    if (!msadb_mm_bf16_available() || !x || !xb || !in)
        return;
#if MM_X86
    convert_rows(x, 1, in, xb);
#endif
}

/* The product on inputs xb already as bf16 pairs (X NULL), or on X
 * converted into scratch first (xb NULL). */
static void product(msadb_mm_pool *pool, const float *X, const uint32_t *xb, size_t n,
                    const uint32_t *packed, size_t ld, uint32_t out, uint32_t in, float *Y,
                    size_t ldy, uint32_t *scratch)
{
#if MM_X86
    mm_job J = {.xb = X ? scratch : xb, .w = packed, .Y = Y, .n = n, .kp = pairs_of(in), .ld = ld,
                .out = out, .ldy = ldy, .slabs = (n + MM_SLAB - 1) / MM_SLAB,
                .amx = msadb_mm_amx_used()};
    J.units = J.slabs * groups_of(out);
    int split = n * (size_t)in * out >= MM_MIN_SPLIT;
    if (X) {
        /* the inputs' conversion is a pass over n x in floats: on the
         * threads too when it is large */
        convert_job C = {X, n, in, scratch};
        msadb_mm_pool_run(split && n * (size_t)in >= MM_MIN_CONVERT ? pool : NULL, J.slabs,
                          convert_unit, &C);
    }
    msadb_mm_pool_run(split ? pool : NULL, J.units, mm_unit, &J);
    amx_done();
#else
    (void)pool, (void)X, (void)xb, (void)n, (void)packed, (void)ld, (void)out, (void)in;
    (void)Y, (void)ldy, (void)scratch;
#endif
}

void msadb_mm_bf16_ld(msadb_mm_pool *pool, const float *X, size_t n, const uint32_t *packed,
                      size_t ld, uint32_t out, uint32_t in, float *Y, size_t ldy,
                      uint32_t *scratch)
{
    if (!msadb_mm_bf16_available() || !X || !packed || !Y || !scratch || !n || !out || !in ||
        ld < pairs_of(in) || ldy < out)
        return;
    product(pool, X, NULL, n, packed, ld, out, in, Y, ldy, scratch);
}

void msadb_mm_bf16_pairs(msadb_mm_pool *pool, const uint32_t *xb, size_t n,
                         const uint32_t *packed, size_t ld, uint32_t out, uint32_t in, float *Y,
                         size_t ldy)
{
    if (!msadb_mm_bf16_available() || !xb || !packed || !Y || !n || !out || !in ||
        ld < pairs_of(in) || ldy < out)
        return;
    product(pool, NULL, xb, n, packed, ld, out, in, Y, ldy, NULL);
}
