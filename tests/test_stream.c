/* test_stream.c -- streaming ingest: batches that commit in bounded chunks
 * (msadb_batch_set_flush, msadb_batch_flush), document keys (dedup,
 * msadb_doc_find_key, deletion, verify, keyed hashes of encrypted stores),
 * a version-1 store gaining keys, and peak resident memory that stays
 * bounded with chunking and grows without it. */
#include <lmdb.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "msadb.h"
#include "store/store_impl.h"
#include "testutil.h"

enum { D = 16, B = 16, MAX_T = 64 };

static msadb_store *make_store(const char *dir, const unsigned char *key)
{
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 2, 2, 2, D));
    return tu_create(dir, 2, D, B, sig.dtype, key);
}

static float K[4 * MAX_T * D], V[4 * MAX_T * D];

/* Document `seed` of T tokens, keyed by "k<seed>" when keyed. */
static msadb_doc doc_of(uint64_t seed, size_t T, int keyed, char *keybuf)
{
    tu_make_kv(seed, 4 * T * D, K, V);
    msadb_doc doc = tu_doc_f32(T, K, V);
    if (keyed) {
        snprintf(keybuf, 32, "k%llu", (unsigned long long)seed);
        doc.key = keybuf;
        doc.key_len = strlen(keybuf);
    }
    return doc;
}

typedef struct {
    uint64_t ids[64];
    size_t n, calls;
} commits;

static void on_commit(const uint64_t *ids, size_t n, void *ud)
{
    commits *c = ud;
    for (size_t i = 0; i < n && c->n < 64; i++)
        c->ids[c->n++] = ids[i];
    c->calls++;
}

static uint64_t n_docs(msadb_store *st)
{
    msadb_stat_info si;
    CHECK_OK(msadb_stat(st, &si));
    return si.n_documents;
}

static void test_flush_policy(void)
{
    msadb_store *st = make_store(tu_tmpdir("stream-policy"), NULL);
    char kb[32];
    /* by documents: the batch commits before the 4th, 7th and 10th add */
    msadb_batch *b;
    commits c = {0};
    CHECK_OK(msadb_batch_begin(st, &b));
    CHECK_OK(msadb_batch_set_threads(b, 1)); /* every commit in the adding thread */
    CHECK_OK(msadb_batch_set_flush(b, 3, 0, 0, on_commit, &c));
    for (uint64_t i = 0; i < 10; i++) {
        msadb_doc d = doc_of(i, 20, 0, kb);
        CHECK_OK(msadb_batch_add(b, &d));
    }
    msadb_batch_status s;
    CHECK_OK(msadb_batch_status_get(b, &s));
    CHECK(s.held == 1 && s.held_tokens == 20 && s.committed == 9 && s.commits == 3 && s.held_bytes > 0);
    CHECK(n_docs(st) == 9 && c.calls == 3);
    uint64_t last;
    CHECK_OK(msadb_batch_commit(b, &last));
    CHECK(c.calls == 4 && c.n == 10 && c.ids[9] == last);
    for (size_t i = 1; i < 10; i++)
        CHECK(c.ids[i] == c.ids[i - 1] + 1);
    /* by tokens: 40-token documents, at most 100 tokens held */
    memset(&c, 0, sizeof c);
    CHECK_OK(msadb_batch_begin(st, &b));
    CHECK_OK(msadb_batch_set_threads(b, 1));
    CHECK_OK(msadb_batch_set_flush(b, 0, 100, 0, on_commit, &c));
    for (uint64_t i = 0; i < 5; i++) {
        msadb_doc d = doc_of(100 + i, 40, 0, kb);
        CHECK_OK(msadb_batch_add(b, &d));
    }
    CHECK(c.calls == 2 && c.n == 4 && msadb_batch_count(b) == 1);
    /* by bytes: every add after the first commits what is held */
    CHECK_OK(msadb_batch_set_flush(b, 0, 0, 1, on_commit, &c));
    msadb_doc d = doc_of(200, 8, 0, kb);
    CHECK_OK(msadb_batch_add(b, &d));
    CHECK(c.calls == 3 && msadb_batch_count(b) == 1);
    /* an explicit flush, then one with nothing held (no transaction) */
    CHECK_OK(msadb_batch_flush(b));
    CHECK_OK(msadb_batch_flush(b));
    CHECK(c.calls == 4 && msadb_batch_count(b) == 0 && n_docs(st) == 10 + 6);
    /* a failed flush writes nothing and the batch keeps its documents */
    d = doc_of(300, 8, 0, kb);
    d.space = "nope";
    CHECK_OK(msadb_batch_add(b, &d));
    CHECK_RC(msadb_batch_flush(b), MSADB_ENOTFOUND);
    CHECK(msadb_batch_count(b) == 1 && n_docs(st) == 16);
    msadb_doc d2 = doc_of(301, 8, 0, kb);
    CHECK_RC(msadb_batch_add(b, &d2), MSADB_ENOTFOUND); /* its flush fails first: not added */
    CHECK(msadb_batch_count(b) == 1);
    msadb_batch_abort(b);
    CHECK_RC(msadb_batch_set_flush(NULL, 1, 0, 0, NULL, NULL), MSADB_EINVAL);
    CHECK_RC(msadb_batch_flush(NULL), MSADB_EINVAL);
    CHECK_RC(msadb_batch_status_get(NULL, &s), MSADB_EINVAL);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
}

static uint64_t find(msadb_store *st, const char *key)
{
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    uint64_t id = 0;
    int rc = msadb_doc_find_key(snap, key, strlen(key), &id);
    msadb_snapshot_end(snap);
    return rc == 0 ? id : 0;
}

static void report(const char *problem, void *ud)
{
    (*(int *)ud)++;
    fprintf(stderr, "verify (expected): %s\n", problem);
}

static void test_keys(void)
{
    msadb_store *st = make_store(tu_tmpdir("stream-keys"), NULL);
    char kb[32];
    msadb_doc a = doc_of(1, 30, 1, kb);
    uint64_t ida;
    CHECK_OK(msadb_doc_append(st, &a, &ida));
    CHECK(find(st, "k1") == ida && find(st, "k2") == 0);
    /* the same key again: a no-op that says so */
    msadb_batch *b;
    msadb_batch_status s;
    CHECK_OK(msadb_batch_begin(st, &b));
    a = doc_of(1, 30, 1, kb);
    CHECK_OK(msadb_batch_add(b, &a));
    CHECK_OK(msadb_batch_status_get(b, &s));
    CHECK(s.held == 0 && s.duplicates == 1 && s.last_duplicate == ida);
    /* twice in one batch: the second is the no-op (its document is held) */
    char kb2[32];
    msadb_doc bd = doc_of(2, 10, 1, kb2);
    CHECK_OK(msadb_batch_add(b, &bd));
    CHECK_OK(msadb_batch_add(b, &bd));
    CHECK_OK(msadb_batch_status_get(b, &s));
    CHECK(s.held == 1 && s.duplicates == 2 && s.last_duplicate == 0);
    uint64_t idb;
    CHECK_OK(msadb_batch_commit(b, &idb));
    CHECK(find(st, "k2") == idb && n_docs(st) == 2);
    /* bad keys */
    msadb_doc bad = doc_of(3, 10, 1, kb);
    bad.key_len = 0;
    CHECK_RC(msadb_doc_append(st, &bad, NULL), MSADB_EINVAL);
    bad.key_len = MSADB_DOCKEY_MAX + 1;
    CHECK_RC(msadb_doc_append(st, &bad, NULL), MSADB_EINVAL);
    bad.key = NULL;
    bad.key_len = 3;
    CHECK_RC(msadb_doc_append(st, &bad, NULL), MSADB_EINVAL);
    msadb_snapshot *snap;
    uint64_t id;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    CHECK_RC(msadb_doc_find_key(snap, "k1", 0, &id), MSADB_EINVAL);
    CHECK_RC(msadb_doc_find_key(snap, NULL, 2, &id), MSADB_EINVAL);
    CHECK_RC(msadb_doc_find_key(NULL, "k1", 2, &id), MSADB_EINVAL);
    msadb_snapshot_end(snap);
    /* another writer stores the key between add and commit: the commit
     * skips it and names the stored document */
    msadb_batch *b1, *b2;
    char kc[32];
    msadb_doc c = doc_of(4, 12, 1, kc);
    CHECK_OK(msadb_batch_begin(st, &b1));
    CHECK_OK(msadb_batch_begin(st, &b2));
    CHECK_OK(msadb_batch_add(b1, &c));
    CHECK_OK(msadb_batch_add(b2, &c));
    uint64_t id1, id2;
    CHECK_OK(msadb_batch_commit(b1, &id1));
    CHECK_OK(msadb_batch_commit(b2, &id2));
    CHECK(id1 == id2 && n_docs(st) == 3);
    /* deleting a document frees its key */
    CHECK_OK(msadb_doc_delete(st, &ida, 1));
    CHECK(find(st, "k1") == 0);
    a = doc_of(1, 30, 1, kb);
    uint64_t ida2;
    CHECK_OK(msadb_doc_append(st, &a, &ida2));
    CHECK(ida2 > ida && find(st, "k1") == ida2);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
}

/* Damage: an index entry removed and one pointing elsewhere. */
static void test_verify_keys(void)
{
    const char *dir = tu_tmpdir("stream-verify");
    msadb_store *st = make_store(dir, NULL);
    char kb[32], kb2[32];
    msadb_doc a = doc_of(1, 20, 1, kb), b = doc_of(2, 20, 1, kb2);
    uint64_t ida, idb;
    CHECK_OK(msadb_doc_append(st, &a, &ida));
    CHECK_OK(msadb_doc_append(st, &b, &idb));
    CHECK_OK(msadb_verify(st, NULL, NULL));
    MDB_txn *txn;
    CHECK_OK(mdb_txn_begin(st->env, NULL, 0, &txn));
    MDB_val k1 = {2, "k1"}, k2 = {2, "k2"}, v;
    uint8_t other[8];
    msadb_put_le64(other, ida);
    v.mv_size = 8;
    v.mv_data = other;
    CHECK_OK(mdb_del(txn, st->db_dockeys, &k1, NULL));
    CHECK_OK(mdb_put(txn, st->db_dockeys, &k2, &v, 0));
    CHECK_OK(mdb_txn_commit(txn));
    int problems = 0;
    CHECK_RC(msadb_verify(st, report, &problems), MSADB_ECORRUPT);
    CHECK(problems == 3); /* k1 missing, k2 names document 1, one entry short */
    msadb_close(st);
}

static void test_key_hash(void)
{
    unsigned char key1[MSADB_KEY_BYTES], key2[MSADB_KEY_BYTES];
    memset(key1, 7, sizeof key1);
    memset(key2, 8, sizeof key2);
    msadb_store *p1 = make_store(tu_tmpdir("stream-h1"), NULL);
    msadb_store *p2 = make_store(tu_tmpdir("stream-h2"), NULL);
    msadb_store *e1 = make_store(tu_tmpdir("stream-h3"), key1);
    msadb_store *e2 = make_store(tu_tmpdir("stream-h4"), key2);
    const void *parts[] = {"ab", "c"}, *parts2[] = {"a", "bc"};
    size_t lens[] = {2, 1}, lens2[] = {1, 2};
    unsigned char h[4][MSADB_DOCKEY_HASH], x[MSADB_DOCKEY_HASH];
    msadb_store *sts[] = {p1, p2, e1, e2};
    for (int i = 0; i < 4; i++)
        CHECK_OK(msadb_doc_key_hash(sts[i], parts, lens, 2, h[i]));
    CHECK(memcmp(h[0], h[1], MSADB_DOCKEY_HASH) == 0);    /* unkeyed: the same everywhere */
    CHECK(memcmp(h[0], h[2], MSADB_DOCKEY_HASH) != 0);    /* keyed per store */
    CHECK(memcmp(h[2], h[3], MSADB_DOCKEY_HASH) != 0);
    CHECK_OK(msadb_doc_key_hash(p1, parts2, lens2, 2, x)); /* boundaries count */
    CHECK(memcmp(h[0], x, MSADB_DOCKEY_HASH) != 0);
    CHECK_OK(msadb_doc_key_hash(e1, parts, lens, 2, x));   /* deterministic */
    CHECK(memcmp(h[2], x, MSADB_DOCKEY_HASH) == 0);
    const void *nullpart[] = {NULL};
    size_t one = 1;
    CHECK_RC(msadb_doc_key_hash(p1, nullpart, &one, 1, x), MSADB_EINVAL);
    CHECK_RC(msadb_doc_key_hash(NULL, parts, lens, 2, x), MSADB_EINVAL);
    for (int i = 0; i < 4; i++)
        msadb_close(sts[i]);
}

/* A store as a version-1 library wrote it (no dockeys database, format 1)
 * opens read-only without keys and gains them at the first keyed write;
 * a reader that opened it before sees the keys afterwards. */
static void test_format1(void)
{
    const char *dir = tu_tmpdir("stream-v1");
    msadb_store *st = make_store(dir, NULL);
    char kb[32];
    msadb_doc plain = doc_of(5, 20, 0, kb);
    CHECK_OK(msadb_doc_append(st, &plain, NULL));
    msadb_close(st);
    tu_store_as_format(dir, 1);

    msadb_options ro;
    msadb_options_init(&ro);
    ro.read_only = 1;
    msadb_store *reader;
    CHECK_OK(msadb_open(dir, NULL, &ro, &reader));
    msadb_stat_info si;
    CHECK_OK(msadb_stat(reader, &si));
    CHECK(si.format_version == 1 && si.n_documents == 1);
    CHECK(find(reader, "k6") == 0);
    CHECK_OK(msadb_verify(reader, NULL, NULL));

    CHECK_OK(msadb_open(dir, NULL, NULL, &st));
    CHECK_OK(msadb_stat(st, &si));
    CHECK(si.format_version == 1); /* the format changes with the first key */
    msadb_doc keyed = doc_of(6, 20, 1, kb);
    uint64_t id;
    CHECK_OK(msadb_doc_append(st, &keyed, &id));
    CHECK_OK(msadb_stat(st, &si));
    CHECK(si.format_version == 3 && si.n_documents == 2);
    CHECK(find(st, "k6") == id && find(reader, "k6") == id);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    CHECK_OK(msadb_verify(reader, NULL, NULL));
    msadb_close(reader);
    msadb_close(st);
}

/* Peak resident memory of a child that ingests n_docs documents of T
 * tokens (2 planes, head dim 64, f16) with the given flush limit, in KiB. */
static long ingest_maxrss(const char *dir, size_t n_docs, size_t flush_bytes)
{
    int fd;
    pid_t pid = tu_fork_pipe(&fd);
    if (pid == 0) {
        enum { T = 256, DD = 64, P = 2 };
        msadb_signature sig;
        if (msadb_signature_init(&sig, 2, 1, 1, DD))
            _exit(2);
        sig.n_memory_layers = 2;
        sig.memory_layers[0] = 0;
        sig.memory_layers[1] = 1;
        msadb_options opt;
        msadb_options_init(&opt);
        opt.no_sync = 1;
        msadb_store *st;
        float *k = malloc(sizeof(float) * P * T * DD), *v = malloc(sizeof(float) * P * T * DD);
        msadb_batch *b;
        if (!k || !v || msadb_create(dir, &sig, &opt, &st) || msadb_batch_begin(st, &b) ||
            msadb_batch_set_flush(b, 0, 0, flush_bytes, NULL, NULL))
            _exit(3);
        for (size_t i = 0; i < n_docs; i++) {
            tu_make_kv(i + 1, (size_t)P * T * DD, k, v);
            msadb_doc d = tu_doc_f32(T, k, v);
            if (msadb_batch_add(b, &d))
                _exit(4);
        }
        if (msadb_batch_commit(b, NULL))
            _exit(5);
        msadb_close(st);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        long kib = ru.ru_maxrss;
        if (write(fd, &kib, sizeof kib) != sizeof kib)
            _exit(6);
        _exit(0);
    }
    long kib = -1;
    CHECK(read(fd, &kib, sizeof kib) == sizeof kib);
    close(fd);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    tu_rmtree(dir);
    return kib;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_ASAN 1 /* or TSan: shadow memory inflates RSS too */
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static void test_bounded_memory(void)
{
    /* 700 documents of 256 tokens: ~95 MB encoded.  Held whole, the batch
     * and LMDB's dirty pages take about 180 MB; committed every 4 MiB,
     * the process stays far under 96 MB. */
    const size_t n = 700, bound_kib = 96 * 1024;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/rss", tu_tmpdir("stream-rss"));
    long chunked = ingest_maxrss(dir, n, 4u << 20);
    long whole = ingest_maxrss(dir, n, 0);
    printf("peak RSS: %ld KiB committing every 4 MiB, %ld KiB in one commit\n", chunked, whole);
#ifdef UNDER_ASAN
    printf("(sanitizer build: the allocator's quarantine inflates RSS; bound not checked)\n");
#else
    CHECK((size_t)chunked < bound_kib);
    CHECK((size_t)whole > bound_kib); /* the bound would catch a batch that never commits */
#endif
}

/* ------------------------------------------------------------------------ */
/* Threads: background commits, and the same bytes whatever the count        */
/* ------------------------------------------------------------------------ */

/* With two threads a commit that add() makes runs in the background: it is
 * reported (on_commit, counters) by a later call, a key it holds is still
 * a duplicate, and its failure is returned later with its documents held. */
static void test_background_commits(void)
{
    msadb_store *st = make_store(tu_tmpdir("stream-threads"), NULL);
    char kb[32];
    msadb_batch *b;
    commits c = {0};
    CHECK_OK(msadb_batch_begin(st, &b));
    CHECK_RC(msadb_batch_set_threads(b, -1), MSADB_EINVAL);
    CHECK_RC(msadb_batch_set_threads(b, 9), MSADB_EINVAL);
    CHECK_RC(msadb_batch_set_threads(NULL, 2), MSADB_EINVAL);
    CHECK_OK(msadb_batch_set_threads(b, 2));
    CHECK(msadb_batch_threads(b) == 2 && msadb_batch_threads(NULL) == 0);
    CHECK_OK(msadb_batch_set_flush(b, 3, 0, 0, on_commit, &c));
    for (uint64_t i = 0; i < 10; i++) {
        msadb_doc d = doc_of(400 + i, 20, 1, kb);
        CHECK_OK(msadb_batch_add(b, &d));
    }
    msadb_batch_status s;
    CHECK_OK(msadb_batch_status_get(b, &s));
    /* the third commit (documents 6-8) may still be under way: held */
    CHECK(s.held + s.committed == 10 && s.held >= 1 && s.held <= 4 && s.commits == c.calls);
    CHECK(s.committed >= 6 && c.n == s.committed);
    msadb_doc again = doc_of(407, 20, 1, kb); /* in the chunk being written, or stored */
    CHECK_OK(msadb_batch_add(b, &again));
    CHECK_OK(msadb_batch_status_get(b, &s));
    CHECK(s.duplicates == 1 && msadb_batch_count(b) + s.committed == 10);
    uint64_t last = 0;
    CHECK_OK(msadb_batch_commit(b, &last));
    CHECK(c.calls == 4 && c.n == 10 && c.ids[9] == last && n_docs(st) == 10);
    for (size_t i = 1; i < 10; i++)
        CHECK(c.ids[i] == c.ids[i - 1] + 1);
    /* a background commit that fails: the next add that reaches the limit
     * returns its error and adds nothing; flushing writes it again */
    memset(&c, 0, sizeof c);
    CHECK_OK(msadb_batch_begin(st, &b));
    CHECK_OK(msadb_batch_set_threads(b, 2));
    CHECK_OK(msadb_batch_set_flush(b, 1, 0, 0, on_commit, &c));
    msadb_doc d = doc_of(500, 8, 0, kb);
    d.space = "later";
    CHECK_OK(msadb_batch_add(b, &d));
    msadb_doc d2 = doc_of(501, 8, 0, kb);
    CHECK_OK(msadb_batch_add(b, &d2)); /* hands the first to the writer thread */
    msadb_doc d3 = doc_of(502, 8, 0, kb);
    CHECK_RC(msadb_batch_add(b, &d3), MSADB_ENOTFOUND); /* no space "later" */
    CHECK(msadb_batch_count(b) == 2 && c.calls == 0 && n_docs(st) == 10);
    CHECK_RC(msadb_batch_flush(b), MSADB_ENOTFOUND);
    CHECK(msadb_batch_count(b) == 2 && n_docs(st) == 10);
    CHECK_OK(msadb_space_create(st, "later", NULL));
    CHECK_OK(msadb_batch_flush(b)); /* both, in add order, in one commit */
    CHECK(c.calls == 1 && c.n == 2 && c.ids[1] == c.ids[0] + 1 && msadb_batch_count(b) == 0);
    msadb_batch_abort(b);
    CHECK(n_docs(st) == 12);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
}

/* Adds the same documents (sizes, keys, text, token ids, deletions, two
 * spaces) to the store at dir with the given thread count, committing
 * every 3 documents or 40 KB. */
static void ingest_set(const char *dir, int threads, uint64_t deleted)
{
    msadb_store *st;
    CHECK_OK(msadb_open(dir, NULL, NULL, &st));
    msadb_batch *b;
    CHECK_OK(msadb_batch_begin(st, &b));
    CHECK_OK(msadb_batch_set_threads(b, threads));
    CHECK_OK(msadb_batch_set_flush(b, 3, 0, 40000, NULL, NULL));
    CHECK_OK(msadb_batch_delete(b, &deleted, 1));
    static int32_t tok[MAX_T];
    for (uint64_t i = 0; i < 24; i++) {
        char kb[32], title[32];
        size_t T = 1 + (size_t)(i * 2654435761u % MAX_T); /* up to 8 blocks x 2 planes */
        msadb_doc d = doc_of(600 + i, T, i % 3 != 0, kb);
        snprintf(title, sizeof title, "doc %llu", (unsigned long long)i);
        d.title = title;
        d.text = "some text";
        d.text_len = 9;
        d.space = i % 4 == 1 ? "other" : NULL;
        for (size_t t = 0; t < T; t++)
            tok[t] = (int32_t)(i * 7 + t);
        d.token_ids = tok;
        CHECK_OK(msadb_batch_add(b, &d));
        if (i == 10) /* a key seen again, maybe while its chunk is written */
            CHECK_OK(msadb_batch_add(b, &d));
    }
    CHECK_OK(msadb_batch_commit(b, NULL));
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
}

/* Every record of every database of two stores, compared (the main
 * database's values, which hold page numbers, excepted). */
static void compare_stores(const char *a, const char *b)
{
    const char *dir[2] = {a, b};
    MDB_env *env[2];
    MDB_txn *txn[2];
    for (int i = 0; i < 2; i++) {
        CHECK(mdb_env_create(&env[i]) == 0);
        mdb_env_set_maxdbs(env[i], 32);
        mdb_env_set_mapsize(env[i], 1u << 30);
        CHECK(mdb_env_open(env[i], dir[i], MDB_RDONLY, 0600) == 0);
        CHECK(mdb_txn_begin(env[i], NULL, MDB_RDONLY, &txn[i]) == 0);
    }
    MDB_dbi main_db[2];
    MDB_cursor *names[2];
    for (int i = 0; i < 2; i++) {
        CHECK(mdb_dbi_open(txn[i], NULL, 0, &main_db[i]) == 0);
        CHECK(mdb_cursor_open(txn[i], main_db[i], &names[i]) == 0);
    }
    size_t n_dbs = 0, n_records = 0;
    MDB_val k[2], v[2];
    for (;;) {
        int r0 = mdb_cursor_get(names[0], &k[0], &v[0], MDB_NEXT), r1 = mdb_cursor_get(names[1], &k[1], &v[1], MDB_NEXT);
        CHECK(r0 == r1);
        if (r0)
            break;
        CHECK(k[0].mv_size == k[1].mv_size && memcmp(k[0].mv_data, k[1].mv_data, k[0].mv_size) == 0);
        char name[64];
        CHECK(k[0].mv_size < sizeof name);
        memcpy(name, k[0].mv_data, k[0].mv_size);
        name[k[0].mv_size] = 0;
        MDB_dbi dbi[2];
        MDB_cursor *cur[2];
        for (int i = 0; i < 2; i++) {
            CHECK(mdb_dbi_open(txn[i], name, 0, &dbi[i]) == 0);
            CHECK(mdb_cursor_open(txn[i], dbi[i], &cur[i]) == 0);
        }
        MDB_val rk[2], rv[2];
        for (;;) {
            int s0 = mdb_cursor_get(cur[0], &rk[0], &rv[0], MDB_NEXT), s1 = mdb_cursor_get(cur[1], &rk[1], &rv[1], MDB_NEXT);
            CHECK(s0 == s1);
            if (s0)
                break;
            CHECK(rk[0].mv_size == rk[1].mv_size && memcmp(rk[0].mv_data, rk[1].mv_data, rk[0].mv_size) == 0);
            if (rv[0].mv_size != rv[1].mv_size || memcmp(rv[0].mv_data, rv[1].mv_data, rv[0].mv_size) != 0) {
                fprintf(stderr, "database %s: a record differs between %s and %s\n", name, a, b);
                CHECK(0);
            }
            n_records++;
        }
        mdb_cursor_close(cur[0]);
        mdb_cursor_close(cur[1]);
        n_dbs++;
    }
    for (int i = 0; i < 2; i++) {
        mdb_cursor_close(names[i]);
        mdb_txn_abort(txn[i]);
        mdb_env_close(env[i]);
    }
    CHECK(n_dbs >= 6 && n_records > 100);
}

/* The same input with 1, 2 and 4 threads gives the same records: copies of
 * one store (the same identity), a fixed clock, a flush policy so that
 * chunks are written in the background. */
static void test_threads_identical(void)
{
    const char *base = tu_tmpdir("stream-same");
    char dirs[3][1024], from[1200], to[1200];
    setenv("MSADB_TEST_NOW", "1800000000", 1);
    msadb_store *st;
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 2, 2, 2, D));
    sig.block_size = B;
    snprintf(dirs[0], sizeof dirs[0], "%s/t1", base);
    CHECK_OK(msadb_create(dirs[0], &sig, NULL, &st));
    CHECK_OK(msadb_space_create(st, "other", NULL));
    uint64_t first;
    msadb_doc d0 = doc_of(599, 40, 0, (char[32]){0});
    CHECK_OK(msadb_doc_append(st, &d0, &first));
    msadb_close(st);
    const int threads[3] = {1, 2, 4};
    for (int i = 1; i < 3; i++) {
        snprintf(dirs[i], sizeof dirs[i], "%s/t%d", base, threads[i]);
        CHECK(mkdir(dirs[i], 0700) == 0);
        snprintf(from, sizeof from, "%s/data.mdb", dirs[0]);
        snprintf(to, sizeof to, "%s/data.mdb", dirs[i]);
        tu_copy_file(from, to);
    }
    for (int i = 0; i < 3; i++)
        ingest_set(dirs[i], threads[i], first);
    compare_stores(dirs[0], dirs[1]);
    compare_stores(dirs[0], dirs[2]);
    unsetenv("MSADB_TEST_NOW");
}

int main(void)
{
    test_flush_policy();
    test_background_commits();
    test_threads_identical();
    test_keys();
    test_verify_keys();
    test_key_hash();
    test_format1();
    test_bounded_memory();
    printf("test_stream: ok\n");
    return 0;
}
