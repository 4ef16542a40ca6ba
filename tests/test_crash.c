/* test_crash.c -- a writer process is killed with SIGKILL at random moments
 * during ingest, many times.  After each kill the store must verify clean,
 * every document whose commit was reported must be intact, and every
 * document present must be whole (no partial document is ever visible). */
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
            fill_doc(seed, planes, K, V);
            char title[32];
            snprintf(title, sizeof title, "%llu", (unsigned long long)seed);
            msadb_doc doc = {0};
            doc.title = title;
            doc.n_tokens = doc_tokens(seed);
            doc.kv_dtype = MSADB_DTYPE_F32;
            doc.keys = K;
            doc.values = V;
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
        int fds[2];
        CHECK(pipe(fds) == 0);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            writer(dir, fds[1], (uint64_t)round * 100000 + 1);
        }
        close(fds[1]);
        struct timespec ts = {0, (long)(1 + tu_rand(&rng) % 80) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL); /* it never failed by itself */
        pair p;
        ssize_t got;
        while ((got = read(fds[0], &p, sizeof p)) == (ssize_t)sizeof p) {
            if (n_rep == cap_rep) {
                cap_rep = cap_rep ? 2 * cap_rep : 256;
                reported = realloc(reported, cap_rep * sizeof *reported);
            }
            reported[n_rep++] = p;
        }
        close(fds[0]);

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
    return 0;
}
