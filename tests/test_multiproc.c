/* test_multiproc.c -- several processes on one store: a reader's snapshot
 * stays fixed and never blocks a writer in another process; a map grown by
 * another process is adopted. */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "msadb.h"
#include "testutil.h"

enum { D = 16, T = 100 };

static void add_docs(const char *dir, uint64_t seed0, int n)
{
    msadb_store *st;
    CHECK_OK(msadb_open(dir, NULL, NULL, &st));
    uint32_t planes = msadb_signature_planes(msadb_store_signature(st));
    float *K = malloc(planes * T * D * 4), *V = malloc(planes * T * D * 4);
    for (int i = 0; i < n; i++) {
        tu_make_kv(seed0 + (uint64_t)i, planes * T * D, K, V);
        msadb_doc doc = {0};
        doc.n_tokens = T;
        doc.kv_dtype = MSADB_DTYPE_F32;
        doc.keys = K;
        doc.values = V;
        CHECK_OK(msadb_doc_append(st, &doc, NULL));
    }
    free(K);
    free(V);
    msadb_close(st);
}

static uint64_t count_docs(msadb_snapshot *snap)
{
    msadb_stat_info si;
    (void)si;
    uint64_t n = 0;
    msadb_doc_info info;
    for (uint64_t id = 1; id < 10000; id++)
        if (msadb_doc_get(snap, id, &info) == 0)
            n++;
    return n;
}

static pid_t spawn_writer(const char *dir, uint64_t seed0, int n)
{
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        add_docs(dir, seed0, n);
        _exit(0);
    }
    return pid;
}

static void wait_ok(pid_t pid)
{
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int main(void)
{
    const char *dir = tu_tmpdir("mproc");
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 2, 2, 2, D));
    sig.block_size = 16;
    sig.dtype = MSADB_DTYPE_F32;
    msadb_options opt;
    msadb_options_init(&opt);
    opt.map_size = 1 << 20; /* small: the writer process must grow it */
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, &opt, &st));
    msadb_close(st);
    add_docs(dir, 0, 3);

    /* A reader holds a snapshot while another process writes 40 documents
     * (several MB, so that process grows the map). */
    CHECK_OK(msadb_open(dir, &sig, &opt, &st));
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    CHECK(count_docs(snap) == 3);
    pid_t w = spawn_writer(dir, 100, 40);
    wait_ok(w); /* the writer finished although our snapshot is open */
    CHECK(count_docs(snap) == 3);
    float Kb[T * D];
    CHECK_OK(msadb_doc_kv(snap, 2, 0, Kb, NULL));
    msadb_snapshot_end(snap);

    /* A new snapshot adopts the grown map and sees everything. */
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    CHECK(count_docs(snap) == 43);
    uint32_t planes = msadb_signature_planes(&sig);
    float *K = malloc(planes * T * D * 4), *V = malloc(planes * T * D * 4);
    tu_make_kv(100 + 39, planes * T * D, K, V);
    CHECK_OK(msadb_doc_kv(snap, 43, 1, Kb, NULL));
    CHECK(memcmp(Kb, K + T * D, sizeof Kb) == 0);
    msadb_snapshot_end(snap);

    /* Two writer processes at once: both complete, nothing interleaves
     * badly. */
    pid_t a = spawn_writer(dir, 1000, 10), b = spawn_writer(dir, 2000, 10);
    wait_ok(a);
    wait_ok(b);
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    CHECK(count_docs(snap) == 63);
    msadb_snapshot_end(snap);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
    free(K);
    free(V);
    printf("test_multiproc: ok\n");
    return 0;
}
