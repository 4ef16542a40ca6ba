/* test_query.c -- the query engine through the public API, on small f32
 * stores: exact mode against a naive dense attention over msadb_doc_kv(),
 * needles found by sparse selection, document selection, per-token
 * selection, deleted documents, spaces, GQA mapping, snapshot isolation,
 * argument validation, selection independent of SIMD and thread count,
 * and position-centred routing against a reference. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels.h"
#include "msadb.h"
#include "testutil.h"

enum { NL = 4, NKV = 2, NQH = 8, GRP = NQH / NKV, D = 32, B = 8 };
#define NPLANES (2 * NKV) /* memory layers 2 and 3 */
#define MAXDOC 64

static uint64_t rng = 777;

typedef struct tdoc {
    uint64_t id;
    const char *space;
    size_t T;
    int deleted;
} tdoc;

static tdoc docs[MAXDOC];
static int ndocs;

static msadb_store *make_store(const char *dir, uint32_t block, uint32_t d)
{
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, NL, NKV, NQH, d));
    sig.block_size = block;
    sig.dtype = MSADB_DTYPE_F32;
    sig.summary_kinds = MSADB_SUMMARY_ALL;
    msadb_options opt;
    msadb_options_init(&opt);
    opt.no_sync = 1;
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, &opt, &st));
    return st;
}

/* Appends a random document; if needle is not NULL, token needle_tok of
 * plane needle_plane gets key alpha * needle (a planted needle). */
static uint64_t add_doc(msadb_store *st, const char *space, size_t T, const float *needle,
                        uint32_t needle_plane, size_t needle_tok, float alpha)
{
    size_t n = (size_t)NPLANES * T * D;
    float *K = malloc(n * 4), *V = malloc(n * 4);
    CHECK(K && V);
    tu_fill_randn(&rng, K, n, 0.5f);
    tu_fill_randn(&rng, V, n, 1.0f);
    if (needle)
        for (int j = 0; j < D; j++)
            K[((size_t)needle_plane * T + needle_tok) * D + j] = alpha * needle[j];
    msadb_doc doc = {0};
    doc.space = space;
    uint64_t id = tu_append_f32(st, &doc, T, K, V);
    CHECK(ndocs < MAXDOC);
    docs[ndocs].id = id;
    docs[ndocs].space = space ? space : "default";
    docs[ndocs].T = T;
    docs[ndocs].deleted = 0;
    ndocs++;
    return id;
}

static int in_spaces(const char *space, const char *const *spaces, size_t ns)
{
    if (ns == 0)
        return 1;
    for (size_t i = 0; i < ns; i++)
        if (strcmp(space, spaces[i]) == 0)
            return 1;
    return 0;
}

/* Naive dense attention in double over every live document of the spaces,
 * as returned by msadb_doc_kv(); optionally restricted to the tokens of
 * the given hits (kv head kh, query token qt). */
static void naive(msadb_snapshot *snap, const float *q, size_t nq, uint32_t layer_index,
                  const char *const *spaces, size_t ns, const msadb_hit *hits, size_t nh,
                  int per_token, float *out, float *lse)
{
    for (uint32_t kh = 0; kh < NKV; kh++) {
        uint32_t plane = layer_index * NKV + kh;
        for (size_t t = 0; t < nq; t++)
            for (uint32_t j = 0; j < GRP; j++) {
                uint32_t h = kh * GRP + j;
                const float *qr = q + (t * NQH + h) * D;
                double m = -INFINITY, sum = 0.0, o[D] = {0};
                /* two passes: max, then weighted sums */
                for (int pass = 0; pass < 2; pass++) {
                    for (int di = 0; di < ndocs; di++) {
                        if (docs[di].deleted || !in_spaces(docs[di].space, spaces, ns))
                            continue;
                        size_t T = docs[di].T;
                        float *K = malloc(T * D * 4), *V = malloc(T * D * 4);
                        CHECK(K && V);
                        CHECK_OK(msadb_doc_kv(snap, docs[di].id, plane, K, V));
                        for (size_t tok = 0; tok < T; tok++) {
                            if (hits) {
                                int found = 0;
                                for (size_t x = 0; x < nh; x++)
                                    if (hits[x].kv_head == kh && hits[x].doc_id == docs[di].id &&
                                        (!per_token || hits[x].query == t) && tok >= hits[x].token_start &&
                                        tok < hits[x].token_end)
                                        found = 1;
                                if (!found)
                                    continue;
                            }
                            double s = 0.0;
                            for (int c = 0; c < D; c++)
                                s += (double)qr[c] * K[tok * D + c];
                            s /= sqrt((double)D);
                            if (pass == 0) {
                                m = s > m ? s : m;
                            } else {
                                double w = exp(s - m);
                                sum += w;
                                for (int c = 0; c < D; c++)
                                    o[c] += w * V[tok * D + c];
                            }
                        }
                        free(K);
                        free(V);
                    }
                }
                for (int c = 0; c < D; c++)
                    out[(t * NQH + h) * D + c] = sum > 0 ? (float)(o[c] / sum) : 0.0f;
                lse[t * NQH + h] = sum > 0 ? (float)(m + log(sum)) : -INFINITY;
            }
    }
}

static void check_close(const float *a, const float *b, size_t n, double tol)
{
    for (size_t i = 0; i < n; i++) {
        if (isinf(b[i])) {
            CHECK(a[i] == b[i]);
            continue;
        }
        if (!(fabs(a[i] - b[i]) <= tol * (1.0 + fabs(b[i])))) {
            fprintf(stderr, "mismatch at %zu: %.7g vs %.7g\n", i, a[i], b[i]);
            CHECK(0);
        }
    }
}

static int has_block(const msadb_hit *h, size_t n, uint32_t kh, uint64_t doc, uint32_t tok, int query)
{
    for (size_t i = 0; i < n; i++)
        if (h[i].kv_head == kh && h[i].doc_id == doc && tok >= h[i].token_start && tok < h[i].token_end &&
            (query < 0 || h[i].query == (uint32_t)query))
            return 1;
    return 0;
}

static void random_q(float *q, size_t nq)
{
    tu_fill_randn(&rng, q, nq * NQH * D, 1.0f);
}

#define NQ 3
static float qbuf[NQ * NQH * D], out[NQ * NQH * D], lse[NQ * NQH], ref[NQ * NQH * D], rlse[NQ * NQH];
static msadb_hit hits[4096];

/* The fixture of the query cases: one store with needles, one snapshot. */
typedef struct qfix {
    msadb_store *st;
    msadb_snapshot *snap;
    msadb_query q;
    float needle_q[D], needle2_q[D];
    uint64_t needle_doc, needle2_doc;
    uint64_t strong; /* the stronger needle a later commit adds */
    size_t total_blocks, total_tokens;
} qfix;

static void qfix_setup(qfix *f)
{
    const char *dir = tu_tmpdir("query");
    f->st = make_store(dir, B, D);
    CHECK_OK(msadb_space_create(f->st, "alpha", NULL));
    CHECK_OK(msadb_space_create(f->st, "beta", NULL));
    CHECK_OK(msadb_space_create(f->st, "empty", NULL));

    /* needles: for kv head 1 of memory layer 3 (plane 3), aligned with the
     * query of q head 6 (group of kv head 1) */
    tu_fill_randn(&rng, f->needle_q, D, 1.0f);
    tu_fill_randn(&rng, f->needle2_q, D, 1.0f);
    size_t sizes[] = {5, 17, 40, 8, 33, 64, 1, 23, 16, 30};
    const char *sp[] = {NULL, "alpha", "beta", "alpha", NULL, "beta", "alpha", "beta", NULL, "alpha"};
    for (int i = 0; i < 10; i++) {
        if (i == 4)
            f->needle_doc = add_doc(f->st, sp[i], sizes[i], f->needle_q, 3, 13, 6.0f);
        else if (i == 7)
            f->needle2_doc = add_doc(f->st, sp[i], sizes[i], f->needle2_q, 3, 20, 6.0f);
        else
            add_doc(f->st, sp[i], sizes[i], NULL, 0, 0, 0);
    }

    CHECK_OK(msadb_snapshot_begin(f->st, &f->snap));
    msadb_query_init(&f->q);
    CHECK(f->q.top_k == 16 && f->q.select == MSADB_SELECT_BLOCKS);
    random_q(qbuf, NQ);
    f->q.layer = 3;
    f->q.q = qbuf;
    f->q.n_query = NQ;

    for (int i = 0; i < ndocs; i++) {
        f->total_blocks += (docs[i].T + B - 1) / B;
        f->total_tokens += docs[i].T;
    }
}

/* the exact mode equals dense attention over every stored token, with
 * hits and statistics for every block. */
static void case_exact_all_spaces(qfix *f)
{
    msadb_query *const qp = &f->q;
    size_t nh = 0;
    /* exact mode = dense attention over every stored token, all spaces */
    static msadb_query_stats stats;
    qp->exact = 1;
    qp->stats = &stats;
    CHECK_OK(msadb_attend(f->snap, qp, out, lse, hits, 4096, &nh));
    naive(f->snap, qbuf, NQ, 1, NULL, 0, NULL, 0, 0, ref, rlse);
    check_close(out, ref, sizeof out / 4, 1e-5);
    check_close(lse, rlse, sizeof lse / 4, 1e-5);
    CHECK(nh == NKV * f->total_blocks);
    CHECK(stats.tokens_attended == NKV * f->total_tokens && stats.blocks_read == NKV * f->total_blocks);
    (void)nh;
}

/* exact attention over two spaces equals the LSE merge of per-space results. */
static void case_exact_spaces_merge(qfix *f)
{
    msadb_query *const qp = &f->q;
    size_t nh = 0;
    /* exact over two spaces, and the public LSE merge of per-space results */
    const char *ab[] = {"alpha", "beta"}, *a1[] = {"alpha"}, *b1[] = {"beta"};
    qp->spaces = ab;
    qp->n_spaces = 2;
    CHECK_OK(msadb_attend(f->snap, qp, out, lse, NULL, 0, NULL));
    naive(f->snap, qbuf, NQ, 1, ab, 2, NULL, 0, 0, ref, rlse);
    check_close(out, ref, sizeof out / 4, 1e-5);
    check_close(lse, rlse, sizeof lse / 4, 1e-5);
    static float o1[NQ * NQH * D], l1[NQ * NQH];
    qp->spaces = a1;
    qp->n_spaces = 1;
    CHECK_OK(msadb_attend(f->snap, qp, o1, l1, NULL, 0, NULL));
    qp->spaces = b1;
    CHECK_OK(msadb_attend(f->snap, qp, out, lse, NULL, 0, NULL));
    msadb_lse_merge(NQ * NQH, D, o1, l1, out, lse, o1, l1);
    check_close(o1, ref, sizeof out / 4, 1e-5);
    check_close(l1, rlse, sizeof lse / 4, 1e-5);
    (void)nh;
}

/* an empty space attends nothing; an unknown one is ENOTFOUND. */
static void case_empty_and_unknown_spaces(qfix *f)
{
    msadb_query *const qp = &f->q;
    size_t nh = 0;
    /* empty space: output 0, lse -inf, no hits */
    const char *e1[] = {"empty"};
    qp->spaces = e1;
    CHECK_OK(msadb_attend(f->snap, qp, out, lse, hits, 4096, &nh));
    CHECK(nh == 0);
    for (size_t i = 0; i < sizeof lse / 4; i++)
        CHECK(lse[i] == -INFINITY);
    for (size_t i = 0; i < sizeof out / 4; i++)
        CHECK(out[i] == 0.0f);
    qp->exact = 0;
    CHECK_OK(msadb_attend(f->snap, qp, out, lse, hits, 4096, &nh));
    CHECK(nh == 0 && lse[0] == -INFINITY);

    /* unknown space */
    const char *u1[] = {"nope"};
    qp->spaces = u1;
    CHECK_RC(msadb_attend(f->snap, qp, out, lse, hits, 4096, &nh), MSADB_ENOTFOUND);
    CHECK_RC(msadb_retrieve(f->snap, qp, hits, 4096, &nh), MSADB_ENOTFOUND);
    qp->spaces = NULL;
    qp->n_spaces = 0;
    (void)nh;
}

/* sparse routing with every summary kind finds the needle and attends
 * exactly the selected blocks. */
static void case_sparse_every_summary(qfix *f)
{
    msadb_query *const qp = &f->q;
    size_t nh = 0;
    /* sparse: query token 1, q head 6 (kv head 1) points at the needle */
    for (int j = 0; j < D; j++)
        qbuf[(1 * NQH + 6) * D + j] = 3.0f * f->needle_q[j];
    static const uint32_t kinds[] = {MSADB_SUMMARY_MEAN, MSADB_SUMMARY_MINMAX, MSADB_SUMMARY_REPS};
    for (int ki = 0; ki < 3; ki++) {
        qp->summary = kinds[ki];
        qp->top_k = 2;
        CHECK_OK(msadb_attend(f->snap, qp, out, lse, hits, 4096, &nh));
        CHECK(nh == 2 * NKV);
        CHECK(has_block(hits, nh, 1, f->needle_doc, 13, -1));
        for (size_t i = 0; i < nh; i++) {
            CHECK(hits[i].query == 0 && hits[i].kv_head == (i < 2 ? 0u : 1u));
            if (i % 2 == 1) /* best first */
                CHECK(hits[i].score <= hits[i - 1].score);
        }
        /* the output is exact attention over the selected tokens */
        naive(f->snap, qbuf, NQ, 1, NULL, 0, hits, nh, 0, ref, rlse);
        check_close(out, ref, sizeof out / 4, 1e-5);
        check_close(lse, rlse, sizeof lse / 4, 1e-5);
        /* retrieve selects the same blocks */
        static msadb_hit h2[4096];
        size_t nh2 = 0;
        CHECK_OK(msadb_retrieve(f->snap, qp, h2, 4096, &nh2));
        CHECK(nh2 == nh && memcmp(h2, hits, nh * sizeof *hits) == 0);
        /* hits_cap smaller than the selection: count still reported */
        CHECK_OK(msadb_retrieve(f->snap, qp, h2, 1, &nh2));
        CHECK(nh2 == nh && memcmp(h2, hits, sizeof *hits) == 0);
        /* the portable kernels select exactly the same blocks */
        msadb_k_force_portable(1);
        CHECK_OK(msadb_retrieve(f->snap, qp, h2, 4096, &nh2));
        msadb_k_force_portable(0);
        CHECK(nh2 == nh && memcmp(h2, hits, nh * sizeof *hits) == 0);
        /* attending the same blocks without routing gives the same result
         * (twice: the second time from the decoded-block cache) */
        static float out2[sizeof out / 4], lse2[sizeof lse / 4];
        for (int rep = 0; rep < 2; rep++) {
            CHECK_OK(msadb_attend_blocks(f->snap, qp, hits, nh, out2, lse2));
            check_close(out2, out, sizeof out / 4, 1e-6);
            check_close(lse2, lse, sizeof lse / 4, 1e-6);
        }
        /* a subset of the blocks gives attention over that subset */
        CHECK_OK(msadb_attend_blocks(f->snap, qp, hits, 1, out2, lse2));
        naive(f->snap, qbuf, NQ, 1, NULL, 0, hits, 1, 0, ref, rlse);
        check_close(out2, ref, sizeof out / 4, 1e-5);
        msadb_hit badh = hits[0];
        badh.kv_head = NKV;
        CHECK_RC(msadb_attend_blocks(f->snap, qp, &badh, 1, out2, lse2), MSADB_EINVAL);
        badh = hits[0];
        badh.doc_id = 999999;
        CHECK_RC(msadb_attend_blocks(f->snap, qp, &badh, 1, out2, lse2), MSADB_ENOTFOUND);
    }
    qp->summary = 0;
    (void)nh;
}

/* GQA groups route per kv head; per-token selection routes each token. */
static void case_gqa_and_per_token(qfix *f)
{
    msadb_query *const qp = &f->q;
    size_t nh = 0;
    /* GQA: q head 6 belongs to kv head 1, whose plane holds the needle;
     * kv head 0's plane has no needle, so its best score stays ordinary */
    qp->top_k = 1;
    CHECK_OK(msadb_retrieve(f->snap, qp, hits, 4096, &nh));
    CHECK(nh == NKV && hits[1].kv_head == 1 && hits[1].doc_id == f->needle_doc);
    float hs_needle = hits[1].score;
    CHECK(hits[0].score < hs_needle); /* kv head 0 saw no needle */

    /* per-token: token 0 points at needle 2 through q head 5, token 1 at
     * needle 1 through q head 6; each token gets its own selection */
    for (int j = 0; j < D; j++)
        qbuf[(0 * NQH + 5) * D + j] = 3.0f * f->needle2_q[j];
    qp->per_token = 1;
    qp->top_k = 2;
    CHECK_OK(msadb_attend(f->snap, qp, out, lse, hits, 4096, &nh));
    CHECK(nh == (size_t)NKV * NQ * 2);
    CHECK(has_block(hits, nh, 1, f->needle2_doc, 20, 0));
    CHECK(has_block(hits, nh, 1, f->needle_doc, 13, 1));
    naive(f->snap, qbuf, NQ, 1, NULL, 0, hits, nh, 1, ref, rlse);
    check_close(out, ref, sizeof out / 4, 1e-5);
    check_close(lse, rlse, sizeof lse / 4, 1e-5);
    qp->per_token = 0;
    (void)nh;
}

/* document selection takes the best documents and all their blocks. */
static void case_document_selection(qfix *f)
{
    msadb_query *const qp = &f->q;
    size_t nh = 0;
    /* document selection: the top-2 documents by their best block, and all
     * of their blocks */
    qp->select = MSADB_SELECT_DOCUMENTS;
    qp->top_k = 2;
    CHECK_OK(msadb_attend(f->snap, qp, out, lse, hits, 4096, &nh));
    {
        /* reference: every block's score from a large block retrieval */
        msadb_query qb = *qp;
        qb.select = MSADB_SELECT_BLOCKS;
        qb.top_k = 10000;
        static msadb_hit all[4096];
        size_t na = 0;
        CHECK_OK(msadb_retrieve(f->snap, &qb, all, 4096, &na));
        CHECK(na == NKV * f->total_blocks);
        for (uint32_t kh = 0; kh < NKV; kh++) {
            /* best two documents */
            uint64_t best[2] = {0, 0};
            float bs[2] = {-INFINITY, -INFINITY};
            for (int di = 0; di < ndocs; di++) {
                float m = -INFINITY;
                for (size_t i = 0; i < na; i++)
                    if (all[i].kv_head == kh && all[i].doc_id == docs[di].id && all[i].score > m)
                        m = all[i].score;
                if (m > bs[0]) {
                    bs[1] = bs[0];
                    best[1] = best[0];
                    bs[0] = m;
                    best[0] = docs[di].id;
                } else if (m > bs[1]) {
                    bs[1] = m;
                    best[1] = docs[di].id;
                }
            }
            size_t want = 0;
            for (int di = 0; di < ndocs; di++)
                if (docs[di].id == best[0] || docs[di].id == best[1]) {
                    for (uint32_t tok = 0; tok < docs[di].T; tok += B)
                        CHECK(has_block(hits, nh, kh, docs[di].id, tok, 0));
                    want += (docs[di].T + B - 1) / B;
                }
            size_t got = 0;
            for (size_t i = 0; i < nh; i++)
                if (hits[i].kv_head == kh) {
                    CHECK(hits[i].doc_id == best[0] || hits[i].doc_id == best[1]);
                    got++;
                }
            CHECK(got == want);
            /* the best document's blocks come first */
            for (size_t i = 0; i < nh; i++)
                if (hits[i].kv_head == kh) {
                    CHECK(hits[i].doc_id == best[0]);
                    break;
                }
        }
        CHECK(has_block(hits, nh, 1, f->needle_doc, 0, 0) && has_block(hits, nh, 1, f->needle_doc, 32, 0));
        naive(f->snap, qbuf, NQ, 1, NULL, 0, hits, nh, 0, ref, rlse);
        check_close(out, ref, sizeof out / 4, 1e-5);
        check_close(lse, rlse, sizeof lse / 4, 1e-5);
    }
    /* per-token document selection */
    qp->per_token = 1;
    CHECK_OK(msadb_attend(f->snap, qp, out, lse, hits, 4096, &nh));
    CHECK(has_block(hits, nh, 1, f->needle2_doc, 0, 0) && has_block(hits, nh, 1, f->needle_doc, 0, 1));
    naive(f->snap, qbuf, NQ, 1, NULL, 0, hits, nh, 1, ref, rlse);
    check_close(out, ref, sizeof out / 4, 1e-5);
    qp->per_token = 0;
    qp->select = MSADB_SELECT_BLOCKS;
    (void)nh;
}

/* a snapshot does not see a later commit until renewed. */
static void case_snapshot_isolation(qfix *f)
{
    msadb_query *const qp = &f->q;
    size_t nh = 0;
    /* snapshot isolation: a writer commits a stronger needle; the old
     * snapshot's answer does not change until it is renewed */
    qp->top_k = 1;
    static float out_before[sizeof out / 4], lse_before[sizeof lse / 4];
    static msadb_hit hb[64];
    size_t nhb;
    CHECK_OK(msadb_attend(f->snap, qp, out_before, lse_before, hb, 64, &nhb));
    int ndocs_before = ndocs;
    f->strong = add_doc(f->st, "beta", 9, f->needle_q, 3, 2, 12.0f);
    ndocs = ndocs_before; /* invisible to the old snapshot */
    CHECK_OK(msadb_attend(f->snap, qp, out, lse, hits, 64, &nh));
    CHECK(nh == nhb && memcmp(hits, hb, nh * sizeof *hits) == 0);
    CHECK(memcmp(out, out_before, sizeof out) == 0 && memcmp(lse, lse_before, sizeof lse) == 0);
    ndocs = ndocs_before + 1;
    CHECK_OK(msadb_snapshot_renew(f->snap));
    CHECK_OK(msadb_retrieve(f->snap, qp, hits, 64, &nh));
    CHECK(hits[1].kv_head == 1 && hits[1].doc_id == f->strong);
    (void)nh;
}

/* deleted documents are never selected nor attended, also after compaction. */
static void case_deleted_and_compacted(qfix *f)
{
    msadb_query *const qp = &f->q;
    size_t nh = 0;
    /* deleted documents are never selected, nor attended in exact mode */
    CHECK_OK(msadb_doc_delete(f->st, &f->strong, 1));
    CHECK_OK(msadb_doc_delete(f->st, &f->needle_doc, 1));
    docs[ndocs - 1].deleted = 1;
    for (int i = 0; i < ndocs; i++)
        if (docs[i].id == f->needle_doc)
            docs[i].deleted = 1;
    CHECK_OK(msadb_snapshot_renew(f->snap));
    qp->top_k = 1000;
    CHECK_OK(msadb_retrieve(f->snap, qp, hits, 4096, &nh));
    for (size_t i = 0; i < nh; i++)
        CHECK(hits[i].doc_id != f->strong && hits[i].doc_id != f->needle_doc);
    qp->select = MSADB_SELECT_DOCUMENTS;
    qp->top_k = 100;
    CHECK_OK(msadb_retrieve(f->snap, qp, hits, 4096, &nh));
    for (size_t i = 0; i < nh; i++)
        CHECK(hits[i].doc_id != f->strong && hits[i].doc_id != f->needle_doc);
    qp->select = MSADB_SELECT_BLOCKS;
    qp->exact = 1;
    CHECK_OK(msadb_attend(f->snap, qp, out, lse, NULL, 0, NULL));
    naive(f->snap, qbuf, NQ, 1, NULL, 0, NULL, 0, 0, ref, rlse);
    check_close(out, ref, sizeof out / 4, 1e-5);
    check_close(lse, rlse, sizeof lse / 4, 1e-5);
    /* after compaction too */
    CHECK_OK(msadb_compact(f->st));
    CHECK_OK(msadb_snapshot_renew(f->snap));
    CHECK_OK(msadb_attend(f->snap, qp, out, lse, NULL, 0, NULL));
    check_close(out, ref, sizeof out / 4, 1e-5);
    qp->exact = 0;
    (void)nh;
}

/* another memory layer reads its own planes. */
static void case_other_memory_layer(qfix *f)
{
    msadb_query *const qp = &f->q;
    size_t nh = 0;
    /* memory layer 2 uses planes 0 and 1 */
    qp->layer = 2;
    qp->exact = 1;
    CHECK_OK(msadb_attend(f->snap, qp, out, lse, NULL, 0, NULL));
    naive(f->snap, qbuf, NQ, 0, NULL, 0, NULL, 0, 0, ref, rlse);
    check_close(out, ref, sizeof out / 4, 1e-5);
    qp->exact = 0;
    (void)nh;
}

/* every invalid query is refused with its code. */
static void case_validation(qfix *f)
{
    msadb_query *const qp = &f->q;
    size_t nh = 0;
    /* validation */
    msadb_query bad = *qp;
    bad.layer = 1; /* not a memory layer */
    CHECK_RC(msadb_attend(f->snap, &bad, out, lse, NULL, 0, NULL), MSADB_EINVAL);
    bad.layer = 99;
    CHECK_RC(msadb_retrieve(f->snap, &bad, hits, 1, &nh), MSADB_EINVAL);
    bad = *qp;
    bad.top_k = 0;
    CHECK_RC(msadb_attend(f->snap, &bad, out, lse, NULL, 0, NULL), MSADB_EINVAL);
    bad = *qp;
    bad.select = 7;
    CHECK_RC(msadb_attend(f->snap, &bad, out, lse, NULL, 0, NULL), MSADB_EINVAL);
    bad = *qp;
    bad.summary = 8; /* no such kind */
    CHECK_RC(msadb_attend(f->snap, &bad, out, lse, NULL, 0, NULL), MSADB_EINVAL);
    bad.summary = MSADB_SUMMARY_ALL;
    CHECK_RC(msadb_attend(f->snap, &bad, out, lse, NULL, 0, NULL), MSADB_EINVAL);
    bad = *qp;
    bad.scale = NAN;
    CHECK_RC(msadb_attend(f->snap, &bad, out, lse, NULL, 0, NULL), MSADB_EINVAL);
    bad.scale = -1.0f;
    CHECK_RC(msadb_attend(f->snap, &bad, out, lse, NULL, 0, NULL), MSADB_EINVAL);
    bad = *qp;
    bad.n_query = 0;
    CHECK_RC(msadb_attend(f->snap, &bad, out, lse, NULL, 0, NULL), MSADB_EINVAL);
    bad = *qp;
    bad.q = NULL;
    CHECK_RC(msadb_attend(f->snap, &bad, out, lse, NULL, 0, NULL), MSADB_EINVAL);
    bad = *qp;
    bad.n_spaces = 1;
    bad.spaces = NULL;
    CHECK_RC(msadb_attend(f->snap, &bad, out, lse, NULL, 0, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_attend(f->snap, qp, NULL, lse, NULL, 0, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_attend(f->snap, qp, out, NULL, NULL, 0, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_attend(NULL, qp, out, lse, NULL, 0, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_attend(f->snap, NULL, out, lse, NULL, 0, NULL), MSADB_EINVAL);
    float saved = qbuf[5];
    qbuf[5] = NAN;
    CHECK_RC(msadb_attend(f->snap, qp, out, lse, NULL, 0, NULL), MSADB_ENONFINITE);
    qbuf[5] = INFINITY;
    CHECK_RC(msadb_retrieve(f->snap, qp, hits, 1, &nh), MSADB_ENONFINITE);
    qbuf[5] = saved;
    msadb_query_init(NULL);
    msadb_lse_merge(1, 1, NULL, NULL, NULL, NULL, NULL, NULL);
    (void)nh;
}

static void test_main(void)
{
    static qfix fix;
    qfix_setup(&fix);
    case_exact_all_spaces(&fix);
    case_exact_spaces_merge(&fix);
    case_empty_and_unknown_spaces(&fix);
    case_sparse_every_summary(&fix);
    case_gqa_and_per_token(&fix);
    case_document_selection(&fix);
    case_snapshot_isolation(&fix);
    case_deleted_and_compacted(&fix);
    case_other_memory_layer(&fix);
    case_validation(&fix);
    msadb_snapshot_end(fix.snap);
    msadb_close(fix.st);
}

/* Enough blocks for the parallel scan, with many exact ties: the selection
 * must not depend on the number of scan threads. */
static void test_threads(void)
{
    ndocs = 0;
    const char *dir = tu_tmpdir("query-threads");
    msadb_store *st = make_store(dir, 1, 16);
    enum { T = 40000, DD = 16 };
    size_t n = (size_t)NPLANES * T * DD;
    float *K = malloc(n * 4), *V = malloc(n * 4);
    CHECK(K && V);
    for (size_t i = 0; i < n; i++) /* few distinct keys: ties everywhere */
        K[i] = (float)((int)(tu_rand(&rng) % 3) - 1);
    tu_fill_randn(&rng, V, n, 1.0f);
    msadb_doc doc = {0};
    doc.n_tokens = T / 2;
    doc.kv_dtype = MSADB_DTYPE_F32;
    for (int part = 0; part < 2; part++) {
        /* two documents, keys of plane p at [p][T/2][DD] */
        float *Kp = malloc(n / 2 * 4), *Vp = malloc(n / 2 * 4);
        CHECK(Kp && Vp);
        for (int p = 0; p < NPLANES; p++) {
            memcpy(Kp + (size_t)p * (T / 2) * DD, K + ((size_t)p * T + (size_t)part * T / 2) * DD, (T / 2) * DD * 4);
            memcpy(Vp + (size_t)p * (T / 2) * DD, V + ((size_t)p * T + (size_t)part * T / 2) * DD, (T / 2) * DD * 4);
        }
        doc.keys = Kp;
        doc.values = Vp;
        CHECK_OK(msadb_doc_append(st, &doc, NULL));
        free(Kp);
        free(Vp);
    }
    float qv[2 * NQH * DD];
    for (size_t i = 0; i < sizeof qv / 4; i++)
        qv[i] = (float)((int)(tu_rand(&rng) % 3) - 1);
    msadb_query q;
    msadb_query_init(&q);
    q.layer = 2;
    q.q = qv;
    q.n_query = 2;
    q.top_k = 300;
    static msadb_hit h1[4096], h2[4096];
    size_t n1, n2;
    for (int mode = 0; mode < 4; mode++) {
        q.per_token = mode == 1;
        q.summary = mode == 2 ? MSADB_SUMMARY_MINMAX : MSADB_SUMMARY_MEAN;
        q.score = mode == 3 ? MSADB_SCORE_DOT_CENTRED : MSADB_SCORE_DEFAULT; /* its sums too */
        msadb_snapshot *s1, *s2;
        setenv("MSADB_SCAN_THREADS", "1", 1);
        CHECK_OK(msadb_snapshot_begin(st, &s1));
        CHECK_OK(msadb_retrieve(s1, &q, h1, 4096, &n1));
        setenv("MSADB_SCAN_THREADS", "3", 1);
        CHECK_OK(msadb_snapshot_begin(st, &s2));
        msadb_query_stats stt;
        q.stats = &stt;
        CHECK_OK(msadb_retrieve(s2, &q, h2, 4096, &n2));
        q.stats = NULL;
        CHECK(stt.blocks_scanned == (uint64_t)NKV * T);
        CHECK(n1 == n2 && n1 == (size_t)NKV * 300 * (q.per_token ? 2 : 1));
        CHECK(memcmp(h1, h2, n1 * sizeof *h1) == 0);
        /* documents mode too */
        q.select = MSADB_SELECT_DOCUMENTS;
        q.top_k = 1;
        CHECK_OK(msadb_retrieve(s1, &q, h1, 4096, &n1));
        CHECK_OK(msadb_retrieve(s2, &q, h2, 4096, &n2));
        CHECK(n1 == n2 && n1 == (size_t)NKV * (T / 2) * (q.per_token ? 2 : 1));
        CHECK(memcmp(h1, h2, 4096 * sizeof *h1) == 0);
        q.select = MSADB_SELECT_BLOCKS;
        q.top_k = 300;
        msadb_snapshot_end(s1);
        msadb_snapshot_end(s2);
    }
    unsetenv("MSADB_SCAN_THREADS");
    free(K);
    free(V);
    msadb_close(st);
}

/* The reference centred score of a block scoring s whose position's n
 * blocks score bsum together, in a store whose blocks score mean on average
 * (the position's mean shrunk toward it with 16 blocks' weight). */
static double centred_ref(double s, double bsum, double mean, int n)
{
    return s - (bsum + 16.0 * mean) / (n + 16.0);
}

/* Position-centred routing (MSADB_SCORE_DOT_CENTRED): every document's
 * first block carries a common key part that the query meets, as RoPE
 * gives the blocks near a question's positions; plain dot fills the top-k
 * with first blocks, centring finds the needle.  Scores are checked against
 * a reference computed here from the stored keys. */
static void test_centred(void)
{
    ndocs = 0;
    const char *dir = tu_tmpdir("query-centred");
    msadb_store *st = make_store(dir, B, D);
    enum { NDOC = 60, T = 3 * B, NEEDLE_DOC = 9 };
    float cvec[D], needle[D];
    tu_fill_randn(&rng, cvec, D, 1.0f);
    tu_fill_randn(&rng, needle, D, 1.0f);
    size_t n = (size_t)NPLANES * T * D;
    uint64_t ids[NDOC];
    for (int di = 0; di < NDOC; di++) {
        float *K = malloc(n * 4), *V = malloc(n * 4); /* tu_append_f32 frees them */
        CHECK(K && V);
        tu_fill_randn(&rng, K, n, 0.1f);
        tu_fill_randn(&rng, V, n, 1.0f);
        for (int p = 0; p < NPLANES; p++)
            for (int tok = 0; tok < T; tok++)
                for (int j = 0; j < D; j++) {
                    float *k = &K[((size_t)p * T + tok) * D + j];
                    if (tok < B)
                        *k += cvec[j]; /* every first block */
                    if (di == NEEDLE_DOC && p == 3 && tok >= 2 * B)
                        *k += 0.5f * needle[j]; /* kv head 1 of layer 3, third block */
                }
        msadb_doc doc = {0};
        ids[di] = tu_append_f32(st, &doc, T, K, V);
        docs[ndocs].id = ids[di];
        docs[ndocs].space = "default";
        docs[ndocs].T = T;
        docs[ndocs].deleted = 0;
        ndocs++;
    }
    float qv[2 * NQH * D];
    tu_fill_randn(&rng, qv, sizeof qv / 4, 0.05f);
    for (int j = 0; j < D; j++) /* token 0, q head 5 (kv head 1): needle and common part */
        qv[(0 * NQH + 5) * D + j] = needle[j] + cvec[j];
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    msadb_query q;
    msadb_query_init(&q);
    q.layer = 3;
    q.q = qv;
    q.n_query = 2;
    q.scale = 1.0f;
    q.summary = MSADB_SUMMARY_MEAN;
    q.top_k = 8;
    static msadb_hit h[4096];
    size_t nh;
    q.score = MSADB_SCORE_DOT;
    CHECK_OK(msadb_retrieve(snap, &q, h, 4096, &nh));
    CHECK(nh == 2 * 8 && !has_block(h, nh, 1, ids[NEEDLE_DOC], 2 * B, -1));
    for (size_t i = 8; i < nh; i++)
        CHECK(h[i].token_start == 0); /* kv head 1: first blocks only */
    q.score = MSADB_SCORE_DOT_CENTRED;
    q.top_k = 1;
    CHECK_OK(msadb_retrieve(snap, &q, h, 4096, &nh));
    CHECK(nh == 2 && h[1].kv_head == 1 && h[1].doc_id == ids[NEEDLE_DOC] && h[1].token_start == 2 * B);

    /* the reference: per block the best row of the group against the mean
     * key, less the position's mean shrunk toward the mean of all blocks
     * with 16 blocks' weight */
    double sc[NDOC][3], bsum[3] = {0}, all = 0.0;
    float *Kd = malloc((size_t)T * D * 4), *Vd = malloc((size_t)T * D * 4);
    CHECK(Kd && Vd);
    for (int di = 0; di < NDOC; di++) {
        CHECK_OK(msadb_doc_kv(snap, ids[di], 3, Kd, Vd));
        for (int b = 0; b < 3; b++) {
            double best = -INFINITY;
            for (int t = 0; t < 2; t++)
                for (int g = 0; g < GRP; g++) {
                    const float *qr = qv + ((size_t)t * NQH + GRP + g) * D;
                    double dot = 0.0;
                    for (int j = 0; j < D; j++) {
                        double m = 0.0;
                        for (int tok = b * B; tok < (b + 1) * B; tok++)
                            m += Kd[(size_t)tok * D + j];
                        dot += qr[j] * (m / B);
                    }
                    best = dot > best ? dot : best;
                }
            sc[di][b] = best;
            bsum[b] += best;
            all += best;
        }
    }
    double mean = all / (NDOC * 3);
    /* the selected block's reported score (f16 means: loose) */
    double want = centred_ref(sc[NEEDLE_DOC][2], bsum[2], mean, NDOC);
    CHECK(fabs(h[1].score - want) < 0.02 * (1.0 + fabs(want)));
    /* every block's centred score, from a retrieval of all of them */
    q.top_k = NDOC * 3;
    CHECK_OK(msadb_retrieve(snap, &q, h, 4096, &nh));
    CHECK(nh == 2 * (size_t)NDOC * 3);
    for (size_t i = 0; i < nh; i++) {
        if (h[i].kv_head != 1)
            continue;
        int di = 0;
        while (ids[di] != h[i].doc_id)
            di++;
        int b = (int)(h[i].token_start / B);
        want = centred_ref(sc[di][b], bsum[b], mean, NDOC);
        CHECK(fabs(h[i].score - want) < 0.02 * (1.0 + fabs(want)));
    }
    /* documents mode ranks documents by their best centred block */
    q.select = MSADB_SELECT_DOCUMENTS;
    q.top_k = 1;
    CHECK_OK(msadb_retrieve(snap, &q, h, 4096, &nh));
    CHECK(has_block(h, nh, 1, ids[NEEDLE_DOC], 2 * B, -1));
    q.score = 4;
    CHECK_RC(msadb_retrieve(snap, &q, h, 4096, &nh), MSADB_EINVAL);
    free(Kd);
    free(Vd);
    msadb_snapshot_end(snap);
    msadb_close(st);
}

int main(void)
{
    test_main();
    test_threads();
    test_centred();
    printf("ok\n");
    return 0;
}
