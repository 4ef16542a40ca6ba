/* test_docs.c -- documents as a user manages them: metadata filters that
 * routing honours (a filtered query never attends a non-matching
 * document), expiry times under an injected clock (MSADB_TEST_NOW), purging
 * on write and by msadb_expire(), and replacing a document in one batch. */
#include <math.h>
#include <string.h>

#include "msadb.h"
#include "store/store_impl.h"
#include "testutil.h"

enum { D = 16, BS = 4, T = 32, NQH = 4 };

static msadb_store *make_store(const char *dir)
{
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 2, 2, NQH, D)); /* mean + representatives: an index */
    sig.block_size = BS;
    sig.dtype = MSADB_DTYPE_F32;
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, NULL, &st));
    return st;
}

/* A document whose keys lean towards the all-ones direction by `pull`
 * (higher pull: higher routing scores for the all-ones query). */
static uint64_t add(msadb_store *st, const char *meta, uint64_t seed, float pull, int64_t expires)
{
    uint32_t planes = msadb_signature_planes(msadb_store_signature(st));
    size_t n = (size_t)planes * T * D;
    float *K = malloc(n * 4), *V = malloc(n * 4);
    tu_make_kv(seed, n, K, V);
    for (size_t i = 0; i < n; i++)
        K[i] = 0.1f * K[i] + pull;
    msadb_doc doc = {0};
    doc.title = "doc";
    doc.meta = meta;
    doc.meta_len = meta ? strlen(meta) : 0;
    doc.text = "text";
    doc.text_len = 4;
    doc.expires = expires;
    return tu_append_f32(st, &doc, T, K, V);
}

static float qv[NQH * D];

static void query_init(msadb_query *q, const char *const *where, size_t n_where, uint32_t top_k)
{
    for (size_t i = 0; i < NQH * D; i++)
        qv[i] = 1.0f;
    msadb_query_init(q);
    q->layer = 1;
    q->q = qv;
    q->n_query = 1;
    q->top_k = top_k;
    q->where = where;
    q->n_where = n_where;
}

/* Hits of a retrieve: count and whether every one is in doc `only` (0:
 * any). */
static size_t retrieve(msadb_snapshot *snap, const msadb_query *q, msadb_hit *hits, size_t cap)
{
    size_t n = 0;
    CHECK_OK(msadb_retrieve(snap, q, hits, cap, &n));
    CHECK(n <= cap);
    return n;
}

static int list_cb(const msadb_doc_info *info, void *ud)
{
    uint64_t *ids = ud;
    ids[++ids[0]] = info->id;
    return 0;
}

static void test_meta_terms(void)
{
    const char *ok[] = {"team=red", "a.b-c:d@e/f=", "k=v with spaces = and more"};
    for (size_t i = 0; i < 3; i++)
        CHECK_OK(msadb_meta_term_check(ok[i]));
    const char *bad[] = {"", "novalue", "=v", "sp ace=v", "k=a\nb", "k\xc3\xa9=v"};
    for (size_t i = 0; i < 6; i++)
        CHECK_RC(msadb_meta_term_check(bad[i]), MSADB_EINVAL);
    CHECK_RC(msadb_meta_term_check(NULL), MSADB_EINVAL);
    char longkey[80];
    memset(longkey, 'k', 65);
    strcpy(longkey + 65, "=v");
    CHECK_RC(msadb_meta_term_check(longkey), MSADB_EINVAL);
    const char *m = "team=red\nlang=en\n";
    const char *w1[] = {"team=red"}, *w2[] = {"team=red", "lang=en"}, *w3[] = {"team=re"},
               *w4[] = {"team=red", "lang=fr"}, *w5[] = {"lang=en\nteam=red"};
    CHECK(msadb_meta_match(m, strlen(m), w1, 1) == 1);
    CHECK(msadb_meta_match(m, strlen(m), w2, 2) == 1);
    CHECK(msadb_meta_match(m, strlen(m), w3, 1) == 0); /* whole lines only */
    CHECK(msadb_meta_match(m, strlen(m), w4, 2) == 0); /* AND */
    CHECK_RC(msadb_meta_match(m, strlen(m), w5, 1), MSADB_EINVAL);
    CHECK(msadb_meta_match(NULL, 0, w1, 1) == 0);
    CHECK(msadb_meta_match(NULL, 0, NULL, 0) == 1);
    CHECK_RC(msadb_meta_match(NULL, 0, NULL, 1), MSADB_EINVAL);
    CHECK_RC(msadb_meta_match(NULL, 3, w1, 1), MSADB_EINVAL);
    /* the last line may lack its newline */
    CHECK(msadb_meta_match("x=1\ny=2", 7, (const char *const[]){"y=2"}, 1) == 1);
}

/* A filtered query chooses its top-k among matching documents only, and
 * its attention equals attention over the matching documents' blocks. */
static void test_filtered_query(void)
{
    msadb_store *st = make_store(tu_tmpdir("docs-filter"));
    uint64_t red = add(st, "team=red\nlang=en\n", 1, 0.5f, 0);
    uint64_t blue = add(st, "team=blue\nlang=en\n", 2, 2.0f, 0); /* scores higher */
    uint64_t none = add(st, NULL, 3, 3.0f, 0);                  /* highest, no metadata */
    uint64_t red2 = add(st, "lang=fr\nteam=red", 4, 1.0f, 0);
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    msadb_hit hits[256];
    msadb_query q;

    /* unfiltered, the top 4 per kv head are the high-pull documents' */
    query_init(&q, NULL, 0, 4);
    size_t n = retrieve(snap, &q, hits, 256);
    CHECK(n == 8);
    for (size_t i = 0; i < n; i++)
        CHECK(hits[i].doc_id == none);

    /* filtered: still 4 per kv head, all from team=red documents */
    const char *w_red[] = {"team=red"};
    for (int route = MSADB_ROUTE_DEFAULT; route <= MSADB_ROUTE_SCAN; route++) {
        query_init(&q, w_red, 1, 4);
        q.route = route;
        n = retrieve(snap, &q, hits, 256);
        CHECK(n == 8);
        for (size_t i = 0; i < n; i++)
            CHECK(hits[i].doc_id == red2); /* the better of the two red ones */
    }
    /* more than the matching blocks: every block of both, nothing else */
    query_init(&q, w_red, 1, 1000);
    n = retrieve(snap, &q, hits, 256);
    CHECK(n == 2 * 2 * (T / BS));
    for (size_t i = 0; i < n; i++)
        CHECK(hits[i].doc_id == red || hits[i].doc_id == red2);
    /* documents mode and exact mode honour the filter too */
    query_init(&q, w_red, 1, 1);
    q.select = MSADB_SELECT_DOCUMENTS;
    n = retrieve(snap, &q, hits, 256);
    CHECK(n == 2 * (T / BS));
    for (size_t i = 0; i < n; i++)
        CHECK(hits[i].doc_id == red2);
    query_init(&q, w_red, 1, 16);
    q.exact = 1;
    n = retrieve(snap, &q, hits, 256);
    CHECK(n == 2 * 2 * (T / BS));
    for (size_t i = 0; i < n; i++)
        CHECK(hits[i].doc_id == red || hits[i].doc_id == red2);

    /* exact attention with the filter equals attention over the red
     * documents' blocks alone: nothing of blue or none is attended */
    float out[NQH * D], lse[NQH], out2[NQH * D], lse2[NQH];
    CHECK_OK(msadb_attend(snap, &q, out, lse, hits, 256, &n));
    CHECK_OK(msadb_attend_blocks(snap, &q, hits, n, out2, lse2));
    CHECK(memcmp(out, out2, sizeof out) == 0 && memcmp(lse, lse2, sizeof lse) == 0);
    query_init(&q, NULL, 0, 16);
    q.exact = 1;
    float out3[NQH * D], lse3[NQH];
    CHECK_OK(msadb_attend(snap, &q, out3, lse3, NULL, 0, NULL));
    CHECK(fabsf(lse3[0] - lse[0]) > 1e-3f); /* the filter changed what was attended */

    /* AND of terms; no match: nothing attended, LSE -inf */
    const char *w_and[] = {"team=red", "lang=en"}, *w_no[] = {"team=green"};
    query_init(&q, w_and, 2, 1000);
    n = retrieve(snap, &q, hits, 256);
    CHECK(n == 2 * (T / BS));
    for (size_t i = 0; i < n; i++)
        CHECK(hits[i].doc_id == red);
    query_init(&q, w_no, 1, 16);
    CHECK_OK(msadb_attend(snap, &q, out, lse, hits, 256, &n));
    CHECK(n == 0 && isinf(lse[0]) && lse[0] < 0);
    /* a malformed term, or terms without their array */
    const char *w_bad[] = {"team"};
    query_init(&q, w_bad, 1, 4);
    CHECK_RC(msadb_retrieve(snap, &q, hits, 256, &n), MSADB_EINVAL);
    query_init(&q, NULL, 1, 4);
    CHECK_RC(msadb_retrieve(snap, &q, hits, 256, &n), MSADB_EINVAL);

    /* listing */
    uint64_t ids[8] = {0};
    CHECK_OK(msadb_doc_list_where(snap, NULL, w_red, 1, list_cb, ids));
    CHECK(ids[0] == 2 && ids[1] == red && ids[2] == red2);
    memset(ids, 0, sizeof ids);
    CHECK_OK(msadb_doc_list_where(snap, "default", w_and, 2, list_cb, ids));
    CHECK(ids[0] == 1 && ids[1] == red);
    memset(ids, 0, sizeof ids);
    CHECK_OK(msadb_doc_list(snap, NULL, list_cb, ids));
    CHECK(ids[0] == 4 && ids[3] == none);
    CHECK_RC(msadb_doc_list_where(snap, NULL, w_bad, 1, list_cb, ids), MSADB_EINVAL);
    CHECK_RC(msadb_doc_list_where(snap, "nope", w_red, 1, list_cb, ids), MSADB_ENOTFOUND);
    (void)blue;
    msadb_snapshot_end(snap);
    msadb_close(st);
}

static void set_now(int64_t t)
{
    char b[32];
    snprintf(b, sizeof b, "%lld", (long long)t);
    setenv("MSADB_TEST_NOW", b, 1);
    CHECK(msadb_time_now() == t);
}

static uint32_t format_of(msadb_store *st)
{
    msadb_stat_info si;
    CHECK_OK(msadb_stat(st, &si));
    return si.format_version;
}

static void test_expiry(void)
{
    const int64_t t0 = 2000000000;
    set_now(t0);
    const char *dir = tu_tmpdir("docs-expiry");
    msadb_store *st = make_store(dir);
    uint64_t keep = add(st, NULL, 10, 1.0f, 0);
    CHECK(format_of(st) == MSADB_FORMAT_DOCKEYS); /* no expiry yet: readable by older libraries */
    uint64_t soon = add(st, "k=v", 11, 2.0f, t0 + 100);
    CHECK(format_of(st) == MSADB_FORMAT_EXPIRY);
    uint64_t later = add(st, NULL, 12, 3.0f, t0 + 200);

    msadb_doc expired = {0};
    float kv[2 * 2 * D] = {0};
    expired.n_tokens = 1;
    expired.kv_dtype = MSADB_DTYPE_F32;
    expired.keys = expired.values = kv;
    expired.expires = t0; /* not in the future */
    CHECK_RC(msadb_doc_append(st, &expired, NULL), MSADB_EINVAL);
    expired.expires = -5;
    CHECK_RC(msadb_doc_append(st, &expired, NULL), MSADB_EINVAL);

    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    msadb_doc_info info;
    CHECK_OK(msadb_doc_get(snap, soon, &info));
    CHECK(info.expires == t0 + 100);
    CHECK_OK(msadb_doc_get(snap, keep, &info));
    CHECK(info.expires == 0);
    msadb_hit hits[256], sel_soon[256];
    msadb_query q;
    query_init(&q, NULL, 0, 1);
    q.select = MSADB_SELECT_DOCUMENTS;
    size_t n = retrieve(snap, &q, hits, 256);
    CHECK(n > 0 && hits[0].doc_id == later);
    const char *w[] = {"k=v"};
    query_init(&q, w, 1, 1000);
    size_t n_soon = retrieve(snap, &q, sel_soon, 256);
    CHECK(n_soon == 2 * (T / BS));

    /* the clock passes soon's expiry: the same snapshot, without renewal,
     * no longer shows it to any read */
    set_now(t0 + 100);
    CHECK_RC(msadb_doc_get(snap, soon, &info), MSADB_ENOTFOUND);
    size_t len;
    CHECK_RC(msadb_doc_text(snap, soon, NULL, 0, &len), MSADB_ENOTFOUND);
    CHECK_RC(msadb_doc_meta(snap, soon, NULL, 0, &len), MSADB_ENOTFOUND);
    float Kb[T * D];
    CHECK_RC(msadb_doc_kv(snap, soon, 0, Kb, NULL), MSADB_ENOTFOUND);
    uint64_t ids[8] = {0};
    CHECK_OK(msadb_doc_list(snap, NULL, list_cb, ids));
    CHECK(ids[0] == 2 && ids[1] == keep && ids[2] == later);
    CHECK(retrieve(snap, &q, hits, 256) == 0); /* the filter matched soon alone */
    for (int exact = 0; exact <= 1; exact++) {
        query_init(&q, NULL, 0, 1000);
        q.exact = exact;
        n = retrieve(snap, &q, hits, 256);
        CHECK(n == 2 * 2 * (T / BS));
        for (size_t i = 0; i < n; i++)
            CHECK(hits[i].doc_id != soon);
    }
    float out[NQH * D], lse[NQH];
    CHECK_RC(msadb_attend_blocks(snap, &q, sel_soon, n_soon, out, lse), MSADB_ENOTFOUND);

    /* and back: an earlier clock shows it again (nothing was purged) */
    set_now(t0 + 99);
    CHECK_OK(msadb_doc_get(snap, soon, &info));
    msadb_snapshot_end(snap);

    /* msadb_expire purges what has expired, and only that */
    set_now(t0 + 150);
    uint64_t purged = 99;
    CHECK_OK(msadb_expire(st, &purged));
    CHECK(purged == 1);
    CHECK_OK(msadb_expire(st, &purged));
    CHECK(purged == 0);
    CHECK_RC(msadb_expire(NULL, &purged), MSADB_EINVAL);
    set_now(t0);
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    CHECK_RC(msadb_doc_get(snap, soon, &info), MSADB_ENOTFOUND); /* gone for good */
    CHECK_OK(msadb_doc_get(snap, later, &info));
    msadb_snapshot_end(snap);
    msadb_space_info si;
    CHECK_OK(msadb_space_get(st, "default", &si));
    CHECK(si.n_documents == 2);
    CHECK_OK(msadb_verify(st, NULL, NULL));

    /* a write purges on its own: appending after `later` expired */
    set_now(t0 + 300);
    uint64_t fresh = add(st, NULL, 13, 1.0f, t0 + 1000);
    set_now(t0);
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    CHECK_RC(msadb_doc_get(snap, later, &info), MSADB_ENOTFOUND);
    CHECK_OK(msadb_doc_get(snap, fresh, &info));
    CHECK_OK(msadb_doc_get(snap, keep, &info));
    msadb_snapshot_end(snap);
    CHECK_OK(msadb_space_get(st, "default", &si));
    CHECK(si.n_documents == 2);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);

    /* the records survive a reopen (record version 2, format 3) */
    CHECK_OK(msadb_open(dir, NULL, NULL, &st));
    CHECK(format_of(st) == MSADB_FORMAT_EXPIRY);
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    CHECK_OK(msadb_doc_get(snap, fresh, &info));
    CHECK(info.expires == t0 + 1000);
    msadb_snapshot_end(snap);
    msadb_close(st);
    unsetenv("MSADB_TEST_NOW");
}

/* Replacing a document: the new one added and the old one deleted in one
 * batch; a failed commit leaves the old one. */
static void test_replace(void)
{
    msadb_store *st = make_store(tu_tmpdir("docs-replace"));
    uint64_t old = add(st, "v=1", 20, 1.0f, 0);
    uint32_t planes = msadb_signature_planes(msadb_store_signature(st));
    float *K = calloc((size_t)planes * T * D, 4), *V = calloc((size_t)planes * T * D, 4);
    msadb_doc doc = {0};
    doc.meta = "v=2";
    doc.meta_len = 3;
    doc.n_tokens = T;
    doc.kv_dtype = MSADB_DTYPE_F32;
    doc.keys = K;
    doc.values = V;

    /* a missing id fails the commit: nothing is written */
    msadb_batch *b;
    CHECK_OK(msadb_batch_begin(st, &b));
    CHECK_OK(msadb_batch_add(b, &doc));
    uint64_t bad[] = {old, 12345};
    CHECK_OK(msadb_batch_delete(b, bad, 2));
    CHECK_RC(msadb_batch_commit(b, NULL), MSADB_ENOTFOUND);
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    msadb_doc_info info;
    CHECK_OK(msadb_doc_get(snap, old, &info));
    uint64_t ids[8] = {0};
    CHECK_OK(msadb_doc_list(snap, NULL, list_cb, ids));
    CHECK(ids[0] == 1);
    msadb_snapshot_end(snap);

    CHECK_OK(msadb_batch_begin(st, &b));
    CHECK_RC(msadb_batch_delete(b, NULL, 1), MSADB_EINVAL);
    CHECK_RC(msadb_batch_delete(NULL, &old, 1), MSADB_EINVAL);
    CHECK_OK(msadb_batch_add(b, &doc));
    CHECK_OK(msadb_batch_delete(b, &old, 1));
    CHECK_OK(msadb_batch_delete(b, &old, 1)); /* repeated: deleted once */
    uint64_t nid = 0;
    CHECK_OK(msadb_batch_commit(b, &nid));
    CHECK(nid != old);
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    CHECK_RC(msadb_doc_get(snap, old, &info), MSADB_ENOTFOUND);
    CHECK_OK(msadb_doc_get(snap, nid, &info));
    char meta[8];
    size_t len = 0;
    CHECK_OK(msadb_doc_meta(snap, nid, meta, sizeof meta, &len));
    CHECK(len == 3 && memcmp(meta, "v=2", 3) == 0);
    msadb_snapshot_end(snap);
    msadb_space_info si;
    /* the same content under the same key: the document the batch deletes
     * gives its key up, so the add is not a duplicate */
    doc.key = "content-1";
    doc.key_len = 9;
    uint64_t keyed = 0, again = 0, found = 0;
    CHECK_OK(msadb_doc_append(st, &doc, &keyed));
    CHECK_OK(msadb_batch_begin(st, &b));
    CHECK_OK(msadb_batch_add(b, &doc)); /* a duplicate: the key is stored */
    CHECK(msadb_batch_count(b) == 0);
    msadb_batch_abort(b);
    CHECK_OK(msadb_batch_begin(st, &b));
    CHECK_OK(msadb_batch_delete(b, &keyed, 1));
    CHECK_OK(msadb_batch_add(b, &doc));
    CHECK(msadb_batch_count(b) == 1);
    CHECK_OK(msadb_batch_commit(b, &again));
    CHECK(again != keyed);
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    CHECK_OK(msadb_doc_find_key(snap, "content-1", 9, &found));
    CHECK(found == again);
    CHECK_RC(msadb_doc_get(snap, keyed, &info), MSADB_ENOTFOUND);
    msadb_snapshot_end(snap);
    /* with a flush policy the deletions go with the first commit, once */
    doc.key = NULL;
    doc.key_len = 0;
    CHECK_OK(msadb_batch_begin(st, &b));
    CHECK_OK(msadb_batch_set_flush(b, 1, 0, 0, NULL, NULL));
    CHECK_OK(msadb_batch_delete(b, &again, 1));
    CHECK_OK(msadb_batch_add(b, &doc));
    CHECK_OK(msadb_batch_add(b, &doc)); /* flushes the first, with the deletion */
    uint64_t last = 0;
    CHECK_OK(msadb_batch_commit(b, &last));
    CHECK_OK(msadb_space_get(st, "default", &si));
    CHECK(si.n_documents == 3);
    /* a batch of deletions alone commits them */
    uint64_t all[3] = {nid, last - 1, last};
    CHECK_OK(msadb_batch_begin(st, &b));
    CHECK_OK(msadb_batch_delete(b, all, 3));
    CHECK_OK(msadb_batch_commit(b, NULL));
    CHECK_OK(msadb_space_get(st, "default", &si));
    CHECK(si.n_documents == 0);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    free(K);
    free(V);
    msadb_close(st);
}

int main(void)
{
    unsetenv("MSADB_TEST_NOW");
    test_meta_terms();
    test_filtered_query();
    test_expiry();
    test_replace();
    printf("test_docs: ok\n");
    return 0;
}
