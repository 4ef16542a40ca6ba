/* test_shard.c -- sharded stores in one process (include/msadb_shard.h):
 * the manifest and shard labels, ids and placement, exact attention of 4
 * shards against one store holding the same documents, sparse hits on the
 * needle workload (tools/bench/workload.h) equal to one store's, attend_blocks and
 * attend_merge, reads by global id, deletion, spaces, verify, open errors,
 * open of a part, and split / merge round trips. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "msadb.h"
#include "msadb_shard.h"
#include "shard_fixture.h"
#include "testutil.h"
#include "core/util.h"

enum { NSH = 4, ROWS = SFX_NQH, HCAP = 4096 };

static msadb_options opts(void)
{
    msadb_options o;
    msadb_options_init(&o);
    o.no_sync = 1;
    return o;
}

static char *path_in(const char *dir, const char *name)
{
    static char buf[4][1024];
    static int k;
    char tmp[1024], *p = buf[k++ % 4];
    snprintf(tmp, sizeof tmp, "%s/%s", dir, name);
    memcpy(p, tmp, sizeof tmp);
    return p;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(p, 1, n, f) == n && fclose(f) == 0);
}

static size_t read_bytes(const char *path, void *p, size_t cap)
{
    FILE *f = fopen(path, "rb");
    CHECK(f);
    size_t n = fread(p, 1, cap, f);
    fclose(f);
    return n;
}

/* The hits as comparable tuples: kv head, query, document index, token start. */
typedef struct tuple {
    uint32_t kh, q, tok;
    size_t doc;
} tuple;

static size_t doc_index(const uint64_t *ids, size_t n, uint64_t id)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return i;
    CHECK(!"hit names an unknown document");
    return 0;
}

static int tuple_cmp(const void *x, const void *y)
{
    const tuple *a = x, *b = y;
    if (a->kh != b->kh)
        return a->kh < b->kh ? -1 : 1;
    if (a->q != b->q)
        return a->q < b->q ? -1 : 1;
    if (a->doc != b->doc)
        return a->doc < b->doc ? -1 : 1;
    return a->tok < b->tok ? -1 : a->tok > b->tok;
}

static void same_selection(const msadb_hit *a, size_t na, const uint64_t *ida, const msadb_hit *b, size_t nb,
                           const uint64_t *idb, size_t n_docs)
{
    CHECK(na == nb);
    tuple *ta = malloc((na + 1) * sizeof *ta), *tb = malloc((nb + 1) * sizeof *tb);
    CHECK(ta && tb);
    for (size_t i = 0; i < na; i++) {
        ta[i] = (tuple){a[i].kv_head, a[i].query, a[i].token_start, doc_index(ida, n_docs, a[i].doc_id)};
        tb[i] = (tuple){b[i].kv_head, b[i].query, b[i].token_start, doc_index(idb, n_docs, b[i].doc_id)};
    }
    qsort(ta, na, sizeof *ta, tuple_cmp);
    qsort(tb, nb, sizeof *tb, tuple_cmp);
    for (size_t i = 0; i < na; i++)
        CHECK(tuple_cmp(&ta[i], &tb[i]) == 0);
    free(ta);
    free(tb);
}

static void test_manifest(const char *root)
{
    msadb_signature sig;
    sfx_signature(&sig);
    msadb_options o = opts();
    char dir[1024], plain[1024];
    strcpy(dir, path_in(root, "m"));
    msadb_shards *sh;
    CHECK_RC(msadb_shards_create(dir, 0, &sig, &o, &sh), MSADB_EINVAL);
    CHECK_RC(msadb_shards_create(dir, MSADB_SHARDS_MAX + 1, &sig, &o, &sh), MSADB_EINVAL);
    CHECK_OK(msadb_shards_create(dir, 3, &sig, &o, &sh));
    CHECK(msadb_shards_local_count(sh) == 3 && msadb_shards_get_manifest(sh)->n_shards == 3);
    msadb_shards_close(sh);
    CHECK(msadb_shards_probe(dir) == 1);
    CHECK_RC(msadb_shards_create(dir, 3, &sig, &o, &sh), MSADB_EEXIST);
    /* an ordinary store is not sharded, and cannot become one */
    strcpy(plain, path_in(root, "plain"));
    msadb_store *st;
    CHECK_OK(msadb_create(plain, &sig, &o, &st));
    msadb_close(st);
    CHECK(msadb_shards_probe(plain) == 0);
    CHECK_RC(msadb_shards_open(plain, NULL, &o, &sh), MSADB_ENOTSTORE);
    CHECK_RC(msadb_shards_create(plain, 2, &sig, &o, &sh), MSADB_EEXIST);

    /* a damaged manifest, a newer one */
    uint8_t rec[64], bad[64];
    CHECK(read_bytes(path_in(dir, "msadb-shards"), rec, sizeof rec) == 64);
    memcpy(bad, rec, 64);
    bad[13] ^= 1;
    write_bytes(path_in(dir, "msadb-shards"), bad, 64);
    CHECK(msadb_shards_probe(dir) == MSADB_ECORRUPT);
    memcpy(bad, rec, 64);
    msadb_put_le32(bad + 8, MSADB_SHARDS_FORMAT_VERSION + 1);
    msadb_put_le32(bad + 60, msadb_crc32c(0, bad, 60));
    write_bytes(path_in(dir, "msadb-shards"), bad, 64);
    CHECK_RC(msadb_shards_open(dir, NULL, &o, &sh), MSADB_EVERSION);
    write_bytes(path_in(dir, "msadb-shards"), rec, 64);

    /* shards swapped: their labels tell */
    CHECK(rename(path_in(dir, "shard-0"), path_in(dir, "tmp")) == 0);
    CHECK(rename(path_in(dir, "shard-1"), path_in(dir, "shard-0")) == 0);
    CHECK(rename(path_in(dir, "tmp"), path_in(dir, "shard-1")) == 0);
    CHECK_RC(msadb_shards_open(dir, NULL, &o, &sh), MSADB_ECORRUPT);
    CHECK(rename(path_in(dir, "shard-0"), path_in(dir, "tmp")) == 0);
    CHECK(rename(path_in(dir, "shard-1"), path_in(dir, "shard-0")) == 0);
    CHECK(rename(path_in(dir, "tmp"), path_in(dir, "shard-1")) == 0);
    /* a shard missing */
    CHECK(rename(path_in(dir, "shard-1"), path_in(dir, "gone")) == 0);
    CHECK_RC(msadb_shards_open(dir, NULL, &o, &sh), ENOENT);
    CHECK(rename(path_in(dir, "gone"), path_in(dir, "shard-1")) == 0);
    /* a part: shard 1 of 0..2 for part 1 of 2 */
    CHECK_RC(msadb_shards_open_part(dir, NULL, &o, 2, 2, &sh), MSADB_EINVAL);
    CHECK_RC(msadb_shards_open_part(dir, NULL, &o, 0, 4, &sh), MSADB_EINVAL);
    CHECK_OK(msadb_shards_open_part(dir, NULL, &o, 1, 2, &sh));
    CHECK(msadb_shards_local_count(sh) == 1 && msadb_shards_local_index(sh, 0) == 1);
    CHECK(msadb_shards_store(sh, 0, &st) == MSADB_ENOTFOUND);
    msadb_shards_close(sh);
    /* another signature expected */
    msadb_signature other = sig;
    other.block_size = 64;
    CHECK_RC(msadb_shards_open(dir, &other, &o, &sh), MSADB_ESIGNATURE);

    /* ids and placement */
    CHECK(msadb_shards_id_global(7, 2, 4) == 30 && msadb_shards_id_shard(30, 4) == 2 &&
          msadb_shards_id_local(30, 4) == 7);
    uint64_t load[4] = {5, 3, 3, 9};
    CHECK(msadb_shards_pick(load, 4) == 1);
}

/* Query qi of the workload (into q), exact mode. */
static void exact_query(msadb_query *mq, size_t qi, float *q)
{
    sfx_query_vec(qi, q);
    msadb_query_init(mq);
    mq->layer = SFX_LAYER;
    mq->q = q;
    mq->n_query = 1;
    mq->exact = 1;
}

/* Exact and sparse attention of `sh` against `st`, query by query. */
static void compare_stores(msadb_store *st, const uint64_t *ids1, msadb_shards *sh, const uint64_t *idsn,
                           int check_selection)
{
    size_t nd = sfx_n_docs();
    msadb_snapshot *s1;
    msadb_shards_snapshot *sn;
    CHECK_OK(msadb_snapshot_begin(st, &s1));
    CHECK_OK(msadb_shards_snapshot_begin(sh, &sn));
    float q[ROWS * SFX_D], o1[ROWS * SFX_D], on[ROWS * SFX_D], oe[ROWS * SFX_D], l1[ROWS], ln[ROWS], le[ROWS];
    msadb_hit *h1 = malloc(HCAP * sizeof *h1), *hn = malloc(HCAP * sizeof *hn);
    CHECK(h1 && hn);
    int found1 = 0, foundn = 0;
    for (size_t qi = 0; qi < sfx_n_queries(); qi++) {
        msadb_query mq;
        exact_query(&mq, qi, q);
        size_t n1, nn;
        CHECK_OK(msadb_attend(s1, &mq, oe, le, h1, HCAP, &n1));
        CHECK_OK(msadb_shards_attend(sn, &mq, on, ln, hn, HCAP, &nn));
        CHECK(n1 == nn);
        double re = sfx_rel_err(on, oe, ROWS, SFX_D), le_ = sfx_lse_err(ln, le, ROWS);
        if (!(re <= 1e-5 && le_ <= 1e-5)) {
            fprintf(stderr, "query %zu exact: rel err %.3g, lse err %.3g\n", qi, re, le_);
            CHECK(0);
        }
        /* sparse, blocks and documents */
        for (int sel = 0; sel < 2; sel++) {
            mq.exact = 0;
            mq.select = sel ? MSADB_SELECT_DOCUMENTS : MSADB_SELECT_BLOCKS;
            mq.top_k = sel ? 2 : 8;
            CHECK_OK(msadb_attend(s1, &mq, o1, l1, h1, HCAP, &n1));
            CHECK_OK(msadb_shards_attend(sn, &mq, on, ln, hn, HCAP, &nn));
            CHECK(n1 <= HCAP && nn <= HCAP);
            if (check_selection)
                same_selection(h1, n1, ids1, hn, nn, idsn, nd);
            /* each shard attends its own top k, a superset of the global
             * selection: the softmax mass covered (exp(lse - exact lse)) is
             * at least one store's */
            for (size_t r = 0; r < ROWS; r++)
                CHECK(ln[r] >= l1[r] - 1e-5f && ln[r] <= le[r] + 1e-5f);
            if (sfx_query_info(qi)->needle_len && sel == 0)
                for (uint32_t kh = 0; kh < SFX_NKV; kh++) {
                    int a = sfx_hits_needle(h1, n1, qi, ids1, kh), b = sfx_hits_needle(hn, nn, qi, idsn, kh);
                    CHECK(b >= a);
                    found1 += a;
                    foundn += b;
                }
            /* the global selection attended is one store's sparse result */
            if (check_selection) {
                CHECK_OK(msadb_shards_attend_global(sn, &mq, on, ln, hn, HCAP, &nn));
                CHECK(sfx_rel_err(on, o1, ROWS, SFX_D) <= 1e-5 && sfx_lse_err(ln, l1, ROWS) <= 1e-5);
                same_selection(h1, n1, ids1, hn, nn, idsn, nd);
            }
            /* the selection attended again, block by block, equals one
             * store attending its own selection */
            if (sel == 0 && check_selection) {
                CHECK_OK(msadb_attend_blocks(s1, &mq, h1, n1, o1, l1));
                CHECK_OK(msadb_shards_attend_blocks(sn, &mq, hn, nn, on, ln));
                CHECK(sfx_rel_err(on, o1, ROWS, SFX_D) <= 1e-5 && sfx_lse_err(ln, l1, ROWS) <= 1e-5);
            }
        }
        /* retrieve = attend's selection; per token */
        size_t nr;
        mq.select = MSADB_SELECT_BLOCKS;
        CHECK_OK(msadb_shards_retrieve(sn, &mq, hn, HCAP, &nr));
        CHECK(nr == (size_t)mq.top_k * SFX_NKV);
        mq.per_token = 1;
        CHECK_OK(msadb_retrieve(s1, &mq, h1, HCAP, &n1));
        CHECK_OK(msadb_shards_retrieve(sn, &mq, hn, HCAP, &nn));
        if (check_selection)
            same_selection(h1, n1, ids1, hn, nn, idsn, nd);
        /* a short hits buffer: the count is still the whole selection */
        mq.per_token = 0;
        CHECK_OK(msadb_shards_attend(sn, &mq, on, ln, hn, 3, &nn));
        CHECK(nn == (size_t)mq.top_k * SFX_NKV);
        /* attend_merge with an empty local context equals attend */
        for (size_t r = 0; r < ROWS; r++)
            le[r] = -INFINITY;
        memset(oe, 0, sizeof oe);
        CHECK_OK(msadb_shards_attend_merge(sn, &mq, oe, le, NULL, 0, NULL));
        CHECK_OK(msadb_shards_attend(sn, &mq, on, ln, NULL, 0, NULL));
        CHECK(sfx_rel_err(oe, on, ROWS, SFX_D) <= 1e-6 && sfx_lse_err(le, ln, ROWS) <= 1e-6);
    }
    /* the needles are found at all (the workload is not trivially missed) */
    CHECK(found1 > 0 && foundn >= found1);
    printf("  needles found: one store %d, sharded %d (of %zu)\n", found1, foundn,
           (size_t)SFX_NKV * 3 * 4);
    free(h1);
    free(hn);
    msadb_snapshot_end(s1);
    msadb_shards_snapshot_end(sn);
}

typedef struct pairs {
    uint64_t *map; /* old -> new, indexed by document index */
    const uint64_t *old_ids;
    size_t n, seen;
} pairs;

static void on_copy(uint64_t old_id, uint64_t new_id, const msadb_doc_info *info, void *ud)
{
    pairs *p = ud;
    p->seen++;
    CHECK(info->id == new_id);
    p->map[doc_index(p->old_ids, p->n, old_id)] = new_id;
}

static void report_collect(const char *problem, void *ud)
{
    (*(int *)ud)++;
    printf("  verify: %s\n", problem);
}

static int doc_count(const msadb_doc_info *info, void *ud)
{
    (void)info;
    (*(size_t *)ud)++;
    return 0;
}

/* Fixture: the workload in one store ("one") and in NSH shards ("four");
 * ids1 / idsn: the documents' ids in each, by document index. */
typedef struct {
    char root[512];
    size_t nd;
    msadb_signature sig;
    msadb_options o;
    uint64_t *ids1, *idsn;
    msadb_store *st;
    msadb_shards *sh;
} shard_fixture;

static void shard_setup(shard_fixture *fx)
{
    snprintf(fx->root, sizeof fx->root, "%s", tu_tmpdir("shard"));
    test_manifest(fx->root);
    CHECK(sfx_init(30000, 7) == 0);
    fx->nd = sfx_n_docs();
    printf("workload: %zu documents\n", fx->nd);
    sfx_signature(&fx->sig);
    fx->o = opts();
    fx->ids1 = malloc(fx->nd * sizeof *fx->ids1);
    fx->idsn = malloc(fx->nd * sizeof *fx->idsn);
    CHECK(fx->ids1 && fx->idsn);
    CHECK_OK(msadb_create(path_in(fx->root, "one"), &fx->sig, &fx->o, &fx->st));
    sfx_fill_store(fx->st, 0, fx->nd, fx->ids1);
    CHECK_OK(msadb_shards_create(path_in(fx->root, "four"), NSH, &fx->sig, &fx->o, &fx->sh));
    sfx_fill_shards(fx->sh, 0, fx->nd, fx->idsn);
}

static void shard_teardown(shard_fixture *fx)
{
    msadb_close(fx->st);
    free(fx->ids1);
    free(fx->idsn);
    sfx_free();
}

/* Placement: every shard holds documents, tokens within one document's
 * length of each other; global ids are unique and name their shard. */
static void shard_placement(shard_fixture *fx)
{
    const size_t nd = fx->nd;
    msadb_stat_info s1, sn;
    CHECK_OK(msadb_stat(fx->st, &s1));
    CHECK_OK(msadb_shards_stat(fx->sh, &sn));
    CHECK(s1.n_documents == sn.n_documents && s1.n_tokens == sn.n_tokens && s1.n_blocks == sn.n_blocks);
    uint64_t lo = UINT64_MAX, hi = 0;
    for (uint32_t i = 0; i < NSH; i++) {
        msadb_store *one;
        CHECK_OK(msadb_shards_store(fx->sh, i, &one));
        msadb_stat_info si;
        CHECK_OK(msadb_stat(one, &si));
        lo = si.n_tokens < lo ? si.n_tokens : lo;
        hi = si.n_tokens > hi ? si.n_tokens : hi;
    }
    CHECK(lo > 0 && hi - lo <= 8192 /* the longest document */);
    msadb_shards_snapshot *ss;
    CHECK_OK(msadb_shards_snapshot_begin(fx->sh, &ss));
    for (size_t i = 0; i < nd; i++) {
        msadb_doc_info info;
        CHECK_OK(msadb_shards_doc_get(ss, fx->idsn[i], &info));
        CHECK(info.id == fx->idsn[i]);
        char want[64], got[96];
        snprintf(want, sizeof want, "doc-%zu", i);
        CHECK(strcmp(info.title, want) == 0);
        size_t len;
        CHECK_OK(msadb_shards_doc_text(ss, fx->idsn[i], got, sizeof got, &len));
        CHECK(len == info.text_len && memcmp(got, "text of document", 16) == 0);
        for (size_t j = 0; j < i; j++)
            CHECK(fx->idsn[j] != fx->idsn[i]);
    }
    CHECK_RC(msadb_shards_doc_get(ss, 1 * NSH + 3 + 1000000, &(msadb_doc_info){0}), MSADB_ENOTFOUND);
    size_t listed = 0;
    CHECK_OK(msadb_shards_doc_list(ss, NULL, doc_count, &listed));
    CHECK(listed == nd);
    msadb_shards_snapshot_end(ss);
}

/* Spaces on every shard; a space lost on one shard is reported. */
static void shard_spaces(shard_fixture *fx)
{
    msadb_shards *sh = fx->sh;
    CHECK_OK(msadb_shards_space_create(sh, "alpha", NULL));
    CHECK_RC(msadb_shards_space_create(sh, "alpha", NULL), MSADB_EEXIST);
    msadb_space_info spi;
    CHECK_OK(msadb_shards_space_get(sh, "default", &spi));
    CHECK(spi.n_documents == fx->nd);
    int problems = 0;
    CHECK_OK(msadb_shards_verify(sh, report_collect, &problems));
    CHECK(problems == 0);
    msadb_store *s2;
    CHECK_OK(msadb_shards_store(sh, 2, &s2));
    CHECK_OK(msadb_space_drop(s2, "alpha"));
    CHECK_RC(msadb_shards_verify(sh, report_collect, &problems), MSADB_ECORRUPT);
    CHECK(problems == 1);
    CHECK_OK(msadb_shards_space_create(sh, "alpha", NULL)); /* repairs it */
    CHECK_OK(msadb_shards_space_drop(sh, "alpha"));
    CHECK_RC(msadb_shards_space_drop(sh, "alpha"), MSADB_ENOTFOUND);
}

/* Deletion by global id: an unknown id deletes nothing.  Documents 0 and 1
 * are deleted from both stores; the shards are closed after. */
static void shard_delete(shard_fixture *fx)
{
    msadb_shards *sh = fx->sh;
    msadb_stat_info sn;
    uint64_t del[2] = {fx->idsn[0], fx->idsn[1] + 1000 * NSH};
    CHECK_RC(msadb_shards_doc_delete(sh, del, 2), MSADB_ENOTFOUND);
    CHECK_OK(msadb_shards_stat(sh, &sn));
    CHECK(sn.n_documents == fx->nd);
    del[1] = fx->idsn[1];
    CHECK_OK(msadb_shards_doc_delete(sh, del, 2));
    CHECK_OK(msadb_doc_delete(fx->st, fx->ids1, 2));
    CHECK_OK(msadb_shards_compact(sh));
    CHECK_OK(msadb_shards_stat(sh, &sn));
    CHECK(sn.n_documents == fx->nd - 2);
    CHECK_OK(msadb_shards_verify(sh, NULL, NULL));
    msadb_shards_close(sh);
    fx->sh = NULL;
}

/* Split the single store into 3 shards ("three"): they attend as the one
 * store does.  Returns the ids in "three" by document index (malloc'ed). */
static uint64_t *shard_split(shard_fixture *fx)
{
    const size_t nd = fx->nd;
    pairs p = {malloc(nd * sizeof(uint64_t)), fx->ids1, nd, 0};
    CHECK(p.map);
    CHECK_OK(msadb_shards_split(path_in(fx->root, "one"), &fx->o, path_in(fx->root, "three"), 3, &fx->o,
                                on_copy, &p));
    CHECK(p.seen == nd - 2);
    CHECK_RC(msadb_shards_split(path_in(fx->root, "one"), &fx->o, path_in(fx->root, "three"), 3, &fx->o,
                                NULL, NULL),
             MSADB_EEXIST);
    msadb_shards *sh;
    int problems = 0;
    CHECK_OK(msadb_shards_open(path_in(fx->root, "three"), &fx->sig, &fx->o, &sh));
    CHECK_OK(msadb_shards_verify(sh, report_collect, &problems));
    /* documents 0 and 1 were deleted: give them ids that match nothing */
    p.map[0] = p.map[1] = UINT64_MAX;
    fx->ids1[0] = fx->ids1[1] = UINT64_MAX - 1;
    compare_stores(fx->st, fx->ids1, sh, p.map, 1);
    msadb_shards_close(sh);
    return p.map;
}

/* Merge the 3 shards back into one store ("back"): it equals the original,
 * same titles, same exact attention; the shards still open after. */
static void shard_merge_back(shard_fixture *fx, const uint64_t *three_ids)
{
    const size_t nd = fx->nd;
    uint64_t *merged = malloc(nd * sizeof *merged);
    CHECK(merged);
    pairs p2 = {merged, three_ids, nd, 0};
    merged[0] = merged[1] = UINT64_MAX - 2;
    CHECK_OK(msadb_shards_merge(path_in(fx->root, "three"), &fx->o, path_in(fx->root, "back"), &fx->o,
                                on_copy, &p2));
    CHECK(p2.seen == nd - 2);
    msadb_store *back;
    CHECK_OK(msadb_open(path_in(fx->root, "back"), &fx->sig, &fx->o, &back));
    CHECK_OK(msadb_verify(back, NULL, NULL));
    msadb_snapshot *sa, *sb;
    CHECK_OK(msadb_snapshot_begin(fx->st, &sa));
    CHECK_OK(msadb_snapshot_begin(back, &sb));
    for (size_t i = 2; i < nd; i++) {
        msadb_doc_info ia, ib;
        CHECK_OK(msadb_doc_get(sa, fx->ids1[i], &ia));
        CHECK_OK(msadb_doc_get(sb, merged[i], &ib));
        CHECK(strcmp(ia.title, ib.title) == 0 && ia.n_tokens == ib.n_tokens && ia.text_len == ib.text_len);
    }
    for (size_t qi = 0; qi < sfx_n_queries(); qi++) {
        float q[ROWS * SFX_D], oa[ROWS * SFX_D], ob[ROWS * SFX_D], la[ROWS], lb[ROWS];
        msadb_query mq;
        exact_query(&mq, qi, q);
        CHECK_OK(msadb_attend(sa, &mq, oa, la, NULL, 0, NULL));
        CHECK_OK(msadb_attend(sb, &mq, ob, lb, NULL, 0, NULL));
        CHECK(sfx_rel_err(ob, oa, ROWS, SFX_D) <= 1e-5 && sfx_lse_err(lb, la, ROWS) <= 1e-5);
    }
    msadb_snapshot_end(sa);
    msadb_snapshot_end(sb);
    msadb_close(back);
    msadb_shards *sh;
    CHECK_OK(msadb_shards_open(path_in(fx->root, "three"), &fx->sig, &fx->o, &sh));
    msadb_shards_close(sh);
    free(merged);
}

int main(void)
{
    shard_fixture fx;
    shard_setup(&fx);
    shard_placement(&fx);
    compare_stores(fx.st, fx.ids1, fx.sh, fx.idsn, 1);
    printf("exact and sparse: 4 shards match one store\n");
    shard_spaces(&fx);
    shard_delete(&fx);
    uint64_t *three_ids = shard_split(&fx);
    shard_merge_back(&fx, three_ids);
    free(three_ids);
    shard_teardown(&fx);
    printf("ok\n");
    return 0;
}
