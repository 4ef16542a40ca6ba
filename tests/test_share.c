/* test_share.c -- one selection shared by the planes of a layer
 * (msadb_query.share): with identical planes every mode selects what each
 * plane selects alone; a needle that lives in one plane only is found for
 * every kv head by HEADS and by ROUTE_HEAD naming its plane, and missed by
 * ROUTE_HEAD naming another; a selection retrieved on one layer attends
 * another layer (sharing across layers); bad options are refused. */
#include <math.h>
#include <string.h>

#include "msadb.h"
#include "testutil.h"

enum { D = 16, B = 4, NKV = 4, G = 2, NQH = NKV * G, T = 96, NDOC = 24, K = 3 };
enum { L0 = 2, L1 = 3 }; /* the memory layers of a 4-layer model */

static msadb_store *open_store(const char *dir)
{
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 4, NKV, NQH, D));
    sig.block_size = B;
    CHECK(sig.n_memory_layers == 2 && sig.memory_layers[0] == L0 && sig.memory_layers[1] == L1);
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, NULL, &st));
    return st;
}

/* Document `seed`: with same 1, every plane holds the same keys and
 * values; with same 2, plane 0's plus a little noise of each plane's own;
 * else each plane its own.  needle_plane >= 0: token T/2 of that plane is a
 * long copy of the direction u. */
static uint64_t add_doc(msadb_store *st, uint64_t seed, int same, int needle_plane, const float *u)
{
    const uint32_t planes = 2 * NKV;
    const size_t pf = (size_t)T * D;
    float *Kp = malloc(planes * pf * 4), *Vp = malloc(planes * pf * 4);
    if (same) {
        tu_make_kv(seed, pf, Kp, Vp);
        uint64_t r = seed * 31 + 1;
        for (uint32_t p = 1; p < planes; p++) {
            memcpy(Kp + p * pf, Kp, pf * 4);
            memcpy(Vp + p * pf, Vp, pf * 4);
            for (size_t i = 0; same == 2 && i < pf; i++)
                Kp[p * pf + i] += 0.3f * tu_randn(&r);
        }
    } else {
        tu_make_kv(seed, planes * pf, Kp, Vp);
    }
    if (needle_plane >= 0)
        for (int j = 0; j < D; j++)
            Kp[(size_t)needle_plane * pf + (size_t)(T / 2) * D + j] = 10.0f * u[j];
    msadb_doc doc = {0};
    return tu_append_f32(st, &doc, T, Kp, Vp);
}

/* n_query tokens of q: every kv head's group gets the same rows (row j of
 * the group is q + j*D), so identical planes score identically. */
static void make_q(float *q, size_t n_query, uint64_t seed)
{
    uint64_t r = seed;
    float rows[2][G * D];
    for (size_t t = 0; t < n_query; t++) {
        tu_fill_randn(&r, rows[t], G * D, 1.0f);
        for (uint32_t h = 0; h < NKV; h++)
            memcpy(q + (t * NQH + (size_t)h * G) * D, rows[t], sizeof(float) * G * D);
    }
}

static msadb_query query(uint32_t layer, const float *q, size_t n_query, int share, uint32_t route_head, int route,
                         int select, int per_token)
{
    msadb_query qq;
    msadb_query_init(&qq);
    qq.layer = layer;
    qq.q = q;
    qq.n_query = n_query;
    qq.top_k = K;
    qq.share = share;
    qq.route_head = route_head;
    qq.route = route;
    qq.select = select;
    qq.per_token = per_token;
    return qq;
}

static int has_block(const msadb_hit *h, size_t n, uint32_t kv_head, uint64_t doc, uint32_t tok)
{
    for (size_t i = 0; i < n; i++)
        if (h[i].kv_head == kv_head && h[i].doc_id == doc && h[i].token_start <= tok && tok < h[i].token_end)
            return 1;
    return 0;
}

#define CAP 4096

/* Identical planes: every mode, routing and selection kind selects what a
 * plane selects alone, and attends to the same result. */
static void test_identical(void)
{
    msadb_store *st = open_store(tu_tmpdir("share-same"));
    for (uint64_t i = 0; i < NDOC; i++)
        add_doc(st, 100 + i, 1, -1, NULL);
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    static msadb_hit h0[CAP], h1[CAP];
    static float q[2 * NQH * D], o0[2 * NQH * D], o1[2 * NQH * D], l0[2 * NQH], l1[2 * NQH];
    const int routes[] = {MSADB_ROUTE_SCAN, MSADB_ROUTE_INDEX};
    for (int ri = 0; ri < 2; ri++)
        for (int select = 0; select < 2; select++)
            for (int pt = 0; pt < 2; pt++) {
                if (routes[ri] == MSADB_ROUTE_INDEX && select == MSADB_SELECT_DOCUMENTS)
                    continue; /* the index serves block selection */
                size_t nq = pt ? 2 : 1;
                make_q(q, nq, 7 + (uint64_t)ri * 4 + (uint64_t)select * 2 + (uint64_t)pt);
                msadb_query base = query(L0, q, nq, MSADB_SHARE_NONE, 0, routes[ri], select, pt);
                size_t n0 = 0, n1 = 0;
                CHECK_OK(msadb_attend(snap, &base, o0, l0, h0, CAP, &n0));
                CHECK(n0 > 0 && n0 < CAP);
                /* every kv head selected the same blocks alone */
                for (size_t i = 0; i < n0; i++)
                    CHECK(h0[i].block_id == h0[i % (n0 / NKV)].block_id);
                for (int share = 1; share <= 2; share++)
                    for (uint32_t rh = 0; rh < (share == MSADB_SHARE_ROUTE_HEAD ? NKV : 1); rh++) {
                        msadb_query sq = query(L0, q, nq, share, rh, routes[ri], select, pt);
                        CHECK_OK(msadb_attend(snap, &sq, o1, l1, h1, CAP, &n1));
                        for (size_t i = 0; i < nq * NQH; i++) {
                            CHECK(fabsf(l0[i] - l1[i]) < 1e-5f);
                            for (int j = 0; j < D; j++)
                                CHECK(fabsf(o0[i * D + j] - o1[i * D + j]) < 1e-5f);
                        }
                        msadb_hit a[CAP], b[CAP];
                        memcpy(a, h0, n0 * sizeof *a);
                        memcpy(b, h1, n1 * sizeof *b);
                        tu_same_hits(a, n0, b, n1);
                    }
            }
    /* exact mode ignores sharing */
    make_q(q, 1, 3);
    msadb_query ex = query(L0, q, 1, MSADB_SHARE_NONE, 0, 0, 0, 0);
    ex.exact = 1;
    CHECK_OK(msadb_attend(snap, &ex, o0, l0, NULL, 0, NULL));
    ex.share = MSADB_SHARE_HEADS;
    CHECK_OK(msadb_attend(snap, &ex, o1, l1, NULL, 0, NULL));
    CHECK(memcmp(o0, o1, sizeof(float) * NQH * D) == 0 && memcmp(l0, l1, sizeof(float) * NQH) == 0);

    /* sharing across layers: the selection retrieved on layer L0 attends
     * layer L1 (the same planes here) as L1's own routing does */
    make_q(q, 1, 11);
    msadb_query r0 = query(L0, q, 1, MSADB_SHARE_HEADS, 0, 0, 0, 0);
    size_t n0 = 0, n1 = 0;
    CHECK_OK(msadb_retrieve(snap, &r0, h0, CAP, &n0));
    CHECK(n0 == (size_t)NKV * K);
    msadb_query a1 = query(L1, q, 1, MSADB_SHARE_NONE, 0, 0, 0, 0);
    CHECK_OK(msadb_attend(snap, &a1, o0, l0, h1, CAP, &n1));
    CHECK_OK(msadb_attend_blocks(snap, &a1, h0, n0, o1, l1));
    for (size_t i = 0; i < NQH; i++) {
        CHECK(fabsf(l0[i] - l1[i]) < 1e-5f);
        for (int j = 0; j < D; j++)
            CHECK(fabsf(o0[i * D + j] - o1[i * D + j]) < 1e-5f);
    }
    msadb_snapshot_end(snap);
    msadb_close(st);
}

/* A needle in plane (layer L0, kv head 3) only. */
static void test_one_plane_needle(void)
{
    msadb_store *st = open_store(tu_tmpdir("share-needle"));
    uint64_t r = 77;
    float u[D];
    tu_fill_randn(&r, u, D, 1.0f);
    float nu = 0;
    for (int j = 0; j < D; j++)
        nu += u[j] * u[j];
    for (int j = 0; j < D; j++)
        u[j] /= sqrtf(nu);
    const uint32_t NH = 3; /* the needle's kv head */
    uint64_t needle_doc = 0;
    for (uint64_t i = 0; i < NDOC; i++) {
        uint64_t id = add_doc(st, 500 + i, 0, i == NDOC / 2 ? (int)NH : -1, u);
        if (i == NDOC / 2)
            needle_doc = id;
    }
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    static float q[NQH * D], o[NQH * D], l[NQH];
    for (int h = 0; h < NQH; h++)
        for (int j = 0; j < D; j++)
            q[h * D + j] = 3.0f * u[j];
    static msadb_hit h[CAP];
    const int routes[] = {MSADB_ROUTE_SCAN, MSADB_ROUTE_INDEX};
    for (int ri = 0; ri < 2; ri++) {
        size_t n = 0;
        msadb_query qq = query(L0, q, 1, MSADB_SHARE_NONE, 0, routes[ri], 0, 0);
        CHECK_OK(msadb_attend(snap, &qq, o, l, h, CAP, &n));
        for (uint32_t kh = 0; kh < NKV; kh++)
            CHECK(has_block(h, n, kh, needle_doc, T / 2) == (kh == NH));
        qq = query(L0, q, 1, MSADB_SHARE_HEADS, 0, routes[ri], 0, 0);
        CHECK_OK(msadb_attend(snap, &qq, o, l, h, CAP, &n));
        CHECK(n == (size_t)NKV * K);
        for (uint32_t kh = 0; kh < NKV; kh++)
            CHECK(has_block(h, n, kh, needle_doc, T / 2));
        for (uint32_t rh = 0; rh < NKV; rh++) {
            qq = query(L0, q, 1, MSADB_SHARE_ROUTE_HEAD, rh, routes[ri], 0, 0);
            CHECK_OK(msadb_retrieve(snap, &qq, h, CAP, &n));
            CHECK(n == (size_t)NKV * K);
            for (uint32_t kh = 0; kh < NKV; kh++)
                CHECK(has_block(h, n, kh, needle_doc, T / 2) == (rh == NH));
        }
    }
    /* document selection: the needle's document for every kv head */
    size_t n = 0;
    msadb_query qd = query(L0, q, 1, MSADB_SHARE_HEADS, 0, MSADB_ROUTE_SCAN, MSADB_SELECT_DOCUMENTS, 0);
    qd.top_k = 1;
    CHECK_OK(msadb_retrieve(snap, &qd, h, CAP, &n));
    CHECK(n == (size_t)NKV * (T / B));
    for (size_t i = 0; i < n; i++)
        CHECK(h[i].doc_id == needle_doc);
    qd.share = MSADB_SHARE_NONE;
    CHECK_OK(msadb_retrieve(snap, &qd, h, CAP, &n));
    size_t in_needle_doc = 0;
    for (size_t i = 0; i < n; i++)
        in_needle_doc += h[i].doc_id == needle_doc;
    CHECK(in_needle_doc == T / B); /* only the needle's plane chose it */
    msadb_snapshot_end(snap);
    msadb_close(st);
}

static int cmp_score_block(const void *a, const void *b)
{
    const msadb_hit *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->block_id < y->block_id ? -1 : x->block_id > y->block_id;
}

/* Planes that differ a little: the kv heads' own selections overlap with
 * different scores, and HEADS keeps the top_k of their union, each block
 * with its best score. */
static void test_union_max(void)
{
    msadb_store *st = open_store(tu_tmpdir("share-union"));
    for (uint64_t i = 0; i < NDOC; i++)
        add_doc(st, 900 + i, 2, -1, NULL);
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    static float q[NQH * D];
    static msadb_hit h0[CAP], h1[CAP], want[CAP];
    int overlaps = 0;
    for (uint64_t seed = 1; seed <= 8; seed++) {
        make_q(q, 1, seed);
        size_t n0 = 0, n1 = 0, nw = 0;
        msadb_query qq = query(L0, q, 1, MSADB_SHARE_NONE, 0, MSADB_ROUTE_SCAN, 0, 0);
        CHECK_OK(msadb_retrieve(snap, &qq, h0, CAP, &n0));
        CHECK(n0 == (size_t)NKV * K);
        /* the union of the kv heads' selections, each block once at its best */
        for (size_t i = 0; i < n0; i++) {
            size_t j = 0;
            while (j < nw && want[j].block_id != h0[i].block_id)
                j++;
            if (j == nw)
                want[nw++] = h0[i];
            else if (h0[i].score != want[j].score) {
                overlaps++;
                if (h0[i].score > want[j].score)
                    want[j].score = h0[i].score;
            }
        }
        qsort(want, nw, sizeof *want, cmp_score_block);
        qq.share = MSADB_SHARE_HEADS;
        CHECK_OK(msadb_retrieve(snap, &qq, h1, CAP, &n1));
        CHECK(n1 == (size_t)NKV * K);
        for (size_t i = 0; i < n1; i++) {
            CHECK(h1[i].kv_head == i / K);
            CHECK(h1[i].block_id == want[i % K].block_id && h1[i].score == want[i % K].score);
        }
    }
    CHECK(overlaps > 0); /* the max was exercised */
    msadb_snapshot_end(snap);
    msadb_close(st);
}

static void test_invalid(void)
{
    msadb_store *st = open_store(tu_tmpdir("share-bad"));
    add_doc(st, 1, 0, -1, NULL);
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    static float q[NQH * D], o[NQH * D], l[NQH];
    make_q(q, 1, 5);
    msadb_query qq = query(L0, q, 1, 3, 0, 0, 0, 0);
    CHECK_RC(msadb_attend(snap, &qq, o, l, NULL, 0, NULL), MSADB_EINVAL);
    qq = query(L0, q, 1, -1, 0, 0, 0, 0);
    CHECK_RC(msadb_retrieve(snap, &qq, NULL, 0, NULL), MSADB_EINVAL);
    qq = query(L0, q, 1, MSADB_SHARE_ROUTE_HEAD, NKV, 0, 0, 0);
    CHECK_RC(msadb_attend(snap, &qq, o, l, NULL, 0, NULL), MSADB_EINVAL);
    qq = query(L0, q, 1, MSADB_SHARE_NONE, 1, 0, 0, 0);
    CHECK_RC(msadb_attend(snap, &qq, o, l, NULL, 0, NULL), MSADB_EINVAL);
    qq = query(L0, q, 1, MSADB_SHARE_HEADS, 1, 0, 0, 0);
    CHECK_RC(msadb_attend(snap, &qq, o, l, NULL, 0, NULL), MSADB_EINVAL);
    qq = query(L0, q, 1, MSADB_SHARE_ROUTE_HEAD, NKV - 1, 0, 0, 0);
    CHECK_OK(msadb_attend(snap, &qq, o, l, NULL, 0, NULL));
    msadb_snapshot_end(snap);
    msadb_close(st);
}

int main(void)
{
    test_identical();
    test_one_plane_needle();
    test_union_max();
    test_invalid();
    return 0;
}
