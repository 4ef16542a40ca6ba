/* test_crash.c -- a writer process is killed with SIGKILL at random moments
 * during ingest, many times.  After each kill the store must verify clean,
 * every document whose commit was reported must be intact, and every
 * document present must be whole (no partial document is ever visible).
 * Then the same for a streaming ingest of a fixed set of keyed documents
 * committed in chunks (msadb_batch_set_flush): each rerun of the same
 * input resumes, and the last one completes the set without duplicates. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "msadb.h"
#include "store/store.h"
#include "testutil.h"

enum { D = 16, B = 16, MAX_T = 700, ROUNDS = 30 };

static size_t doc_tokens(uint64_t seed) { return 1 + (size_t)(seed * 2654435761u % MAX_T); }

static void fill_doc(uint64_t seed, uint32_t planes, float *K, float *V)
{
    tu_make_kv(seed, planes * doc_tokens(seed) * D, K, V);
}

/* Document `seed`: its K/V in K and V, titled with its seed (in title). */
static msadb_doc seed_doc(uint64_t seed, uint32_t planes, float *K, float *V, char title[32])
{
    fill_doc(seed, planes, K, V);
    snprintf(title, 32, "%llu", (unsigned long long)seed);
    msadb_doc doc = tu_doc_f32(doc_tokens(seed), K, V);
    doc.title = title;
    return doc;
}

/* Child: ingest batches of 1-3 documents forever, reporting (id, seed)
 * pairs on fd after each commit returns. */
static void writer(const char *dir, int fd, uint64_t seed0)
{
    msadb_store *st;
    if (msadb_open(dir, NULL, NULL, &st))
        _exit(3);
    uint32_t planes = msadb_signature_planes(msadb_store_signature(st));
    float *K = malloc(planes * MAX_T * D * 4), *V = malloc(planes * MAX_T * D * 4);
    for (uint64_t seed = seed0;;) {
        msadb_batch *b;
        if (msadb_batch_begin(st, &b))
            _exit(4);
        uint64_t seeds[3], ids[3];
        int n = 1 + (int)(seed % 3);
        for (int i = 0; i < n; i++, seed++) {
            seeds[i] = seed;
            char title[32];
            msadb_doc doc = seed_doc(seed, planes, K, V, title);
            if (msadb_batch_add(b, &doc))
                _exit(5);
        }
        if (msadb_batch_commit(b, ids))
            _exit(6);
        for (int i = 0; i < n; i++) {
            uint64_t rec[2] = {ids[i], seeds[i]};
            if (write(fd, rec, sizeof rec) != sizeof rec)
                _exit(7);
        }
    }
}

typedef struct {
    uint64_t id, seed;
} pair;

static int check_doc_cb(const msadb_doc_info *info, void *ud)
{
    msadb_snapshot *snap = ud;
    uint64_t seed = strtoull(info->title, NULL, 10);
    uint32_t planes = msadb_signature_planes(msadb_snap_signature(snap));
    size_t T = doc_tokens(seed);
    CHECK(info->n_tokens == T);
    float *K = malloc(planes * T * D * 4), *V = malloc(planes * T * D * 4);
    float *Kb = malloc(T * D * 4), *Vb = malloc(T * D * 4);
    fill_doc(seed, planes, K, V);
    for (uint32_t p = 0; p < planes; p++) {
        CHECK_OK(msadb_doc_kv(snap, info->id, p, Kb, Vb));
        CHECK(memcmp(Kb, K + p * T * D, T * D * 4) == 0 && memcmp(Vb, V + p * T * D, T * D * 4) == 0);
    }
    free(K);
    free(V);
    free(Kb);
    free(Vb);
    return 0;
}

static void report(const char *problem, void *ud)
{
    (void)ud;
    fprintf(stderr, "verify: %s\n", problem);
}

/* ------------------------------------------------------------------------ */
/* Streaming: the same keyed set, committed in chunks, killed and rerun      */
/* ------------------------------------------------------------------------ */

enum { SET = 80, SET_SEED = 7000000, CHUNK = 3 };

static void report_commit(const uint64_t *ids, size_t n, void *ud)
{
    (void)ids;
    int fd = *(int *)ud;
    uint64_t count = n;
    if (write(fd, &count, sizeof count) != sizeof count)
        _exit(7);
}

/* Child: adds the whole set (keys = the seeds), committing every CHUNK
 * documents; reports each commit's size; exits 0 when the set is in. */
static void stream_writer(const char *dir, int fd)
{
    msadb_store *st;
    if (msadb_open(dir, NULL, NULL, &st))
        _exit(3);
    uint32_t planes = msadb_signature_planes(msadb_store_signature(st));
    float *K = malloc(planes * MAX_T * D * 4), *V = malloc(planes * MAX_T * D * 4);
    msadb_batch *b;
    if (!K || !V || msadb_batch_begin(st, &b) || msadb_batch_set_flush(b, CHUNK, 0, 0, report_commit, &fd))
        _exit(4);
    for (uint64_t seed = SET_SEED; seed < SET_SEED + SET; seed++) {
        char title[32];
        msadb_doc doc = seed_doc(seed, planes, K, V, title);
        doc.key = &seed;
        doc.key_len = sizeof seed;
        if (msadb_batch_add(b, &doc))
            _exit(5);
    }
    if (msadb_batch_commit(b, NULL))
        _exit(6);
    msadb_close(st);
    _exit(0);
}

static int count_cb(const msadb_doc_info *info, void *ud)
{
    unsigned char *seen = ud;
    uint64_t seed = strtoull(info->title, NULL, 10);
    CHECK(seed >= SET_SEED && seed < SET_SEED + SET);
    CHECK(seen[seed - SET_SEED] == 0); /* never twice */
    seen[seed - SET_SEED] = 1;
    return 0;
}

/* Verifies the store, checks that every document is whole and present at
 * most once; returns how many of the set are in. */
static size_t check_set(const char *dir, const msadb_signature *sig)
{
    msadb_store *st;
    CHECK_OK(msadb_open(dir, sig, NULL, &st));
    CHECK_OK(msadb_verify(st, report, NULL));
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    CHECK_OK(msadb_doc_list(snap, NULL, check_doc_cb, snap));
    unsigned char seen[SET] = {0};
    CHECK_OK(msadb_doc_list(snap, NULL, count_cb, seen));
    size_t n = 0;
    for (size_t i = 0; i < SET; i++) {
        uint64_t seed = SET_SEED + i, id;
        int rc = msadb_doc_find_key(snap, &seed, sizeof seed, &id);
        CHECK(rc == (seen[i] ? 0 : MSADB_ENOTFOUND));
        n += seen[i];
    }
    msadb_snapshot_end(snap);
    msadb_close(st);
    return n;
}

static void crash_stream(const msadb_signature *sig, uint64_t *rng)
{
    const char *dir = tu_tmpdir("crash-stream");
    msadb_store *st;
    CHECK_OK(msadb_create(dir, sig, NULL, &st));
    msadb_close(st);
    size_t have = 0, kills = 0;
    uint64_t reported = 0;
    for (int round = 0;; round++) {
        int fd;
        pid_t pid = tu_fork_pipe(&fd);
        if (pid == 0)
            stream_writer(dir, fd);
        int last = round >= ROUNDS; /* the last run is left to finish */
        uint64_t n;
        ssize_t got = read(fd, &n, sizeof n); /* the run's first commit (EOF: nothing to do) */
        if (got == (ssize_t)sizeof n)
            reported += n;
        if (!last) {
            struct timespec ts = {0, (long)(tu_rand(rng) % 30) * 1000000L};
            nanosleep(&ts, NULL);
            kill(pid, SIGKILL);
        }
        int status;
        CHECK(waitpid(pid, &status, 0) == pid);
        while (read(fd, &n, sizeof n) == (ssize_t)sizeof n)
            reported += n; /* committed in this run (skipped documents are not in a commit) */
        close(fd);
        if (WIFSIGNALED(status))
            kills++;
        else
            CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        size_t now = check_set(dir, sig);
        CHECK(now >= have);      /* nothing committed is lost */
        CHECK(reported <= now);  /* every reported commit is in (a kill may beat a report) */
        have = now;
        if (last) {
            CHECK(have == SET); /* the rerun completed the set */
            break;
        }
    }
    printf("test_crash: streaming: %zu kills, set of %d complete, %llu documents committed in all\n", kills, SET,
           (unsigned long long)reported);
}

int main(void)
{
    const char *dir = tu_tmpdir("crash");
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 2, 2, 2, D));
    sig.block_size = B;
    sig.dtype = MSADB_DTYPE_F32;
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, NULL, &st));
    msadb_close(st);

    pair *reported = NULL;
    size_t n_rep = 0, cap_rep = 0;
    uint64_t rng = (uint64_t)time(NULL);
    printf("seed %llu\n", (unsigned long long)rng);
    for (int round = 0; round < ROUNDS; round++) {
        int fd;
        pid_t pid = tu_fork_pipe(&fd);
        if (pid == 0)
            writer(dir, fd, (uint64_t)round * 100000 + 1);
        /* the kill lands at a random moment after the first commit (on a
         * loaded machine the first one can take longer than any fixed delay) */
        pair p;
        ssize_t got = read(fd, &p, sizeof p);
        CHECK(got == (ssize_t)sizeof p);
        struct timespec ts = {0, (long)(1 + tu_rand(&rng) % 80) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL); /* it never failed by itself */
        for (; got == (ssize_t)sizeof p; got = read(fd, &p, sizeof p)) {
            if (n_rep == cap_rep) {
                cap_rep = cap_rep ? 2 * cap_rep : 256;
                reported = realloc(reported, cap_rep * sizeof *reported);
            }
            reported[n_rep++] = p;
        }
        close(fd);

        CHECK_OK(msadb_open(dir, &sig, NULL, &st));
        CHECK_OK(msadb_verify(st, report, NULL));
        msadb_snapshot *snap;
        CHECK_OK(msadb_snapshot_begin(st, &snap));
        for (size_t i = 0; i < n_rep; i++) { /* every reported commit is there */
            msadb_doc_info info;
            CHECK_OK(msadb_doc_get(snap, reported[i].id, &info));
            CHECK(strtoull(info.title, NULL, 10) == reported[i].seed);
        }
        CHECK_OK(msadb_doc_list(snap, NULL, check_doc_cb, snap)); /* and whole */
        msadb_snapshot_end(snap);
        msadb_close(st);
    }
    CHECK(n_rep > 0);
    printf("test_crash: ok (%d kills, %zu reported documents)\n", ROUNDS, n_rep);
    free(reported);
    crash_stream(&sig, &rng);
    return 0;
}
