/* test_diskfull.c -- a commit cut short by the process's file size limit
 * or by a full filesystem.  The library and the msadb program must name the
 * cause ("File size limit exceeded", "No space left on device", not
 * "Input/output error"); the store must be unchanged, open, verify, and
 * take the same write once there is room.
 *
 * Usage: test_diskfull fsize|enospc [MSADB]
 *   fsize   RLIMIT_FSIZE set with setrlimit in a child process that ignores
 *           SIGXFSZ (as the msadb program does).
 *   enospc  a 2 MiB tmpfs mounted in a private mount namespace (needs root
 *           or CAP_SYS_ADMIN); where that is not permitted the test says why
 *           and exits 77, which meson reports as skipped.
 *   MSADB   the msadb program: the same failure through `msadb ingest`. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* unshare, CLONE_NEWNS */
#endif
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

enum { L_MEM = 2, H = 2, D = 16, SMALL_T = 40, BIG_T = 16384 };

static const char *msadb_cli; /* argv[2], or NULL */

static void sig_init(msadb_signature *sig)
{
    CHECK_OK(msadb_signature_init(sig, 2 * L_MEM, H, H, D));
    sig->block_size = 16;
}

/* What a failed commit must leave as it was. */
typedef struct {
    msadb_stat_info st;
    uint64_t kv_hash; /* FNV-1a of document 1's K/V, every plane */
} store_state;

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 0x100000001b3ull;
    return h;
}

static store_state state_of(msadb_store *st)
{
    store_state s;
    memset(&s, 0, sizeof s);
    CHECK_OK(msadb_stat(st, &s.st));
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    float *K = malloc((size_t)SMALL_T * D * 4), *V = malloc((size_t)SMALL_T * D * 4);
    CHECK(K && V);
    s.kv_hash = 0xcbf29ce484222325ull;
    for (uint32_t p = 0; p < L_MEM * H; p++) {
        CHECK_OK(msadb_doc_kv(snap, 1, p, K, V));
        s.kv_hash = fnv(fnv(s.kv_hash, K, (size_t)SMALL_T * D * 4), V, (size_t)SMALL_T * D * 4);
    }
    msadb_snapshot_end(snap);
    free(K);
    free(V);
    return s;
}

static void check_same(const store_state *a, const store_state *b)
{
    CHECK(a->st.n_spaces == b->st.n_spaces && a->st.n_documents == b->st.n_documents);
    CHECK(a->st.n_tokens == b->st.n_tokens && a->st.n_blocks == b->st.n_blocks);
    CHECK(a->st.block_bytes == b->st.block_bytes && a->st.summary_bytes == b->st.summary_bytes);
    CHECK(a->kv_hash == b->kv_hash);
}

static void report(const char *problem, void *ud)
{
    (void)ud;
    fprintf(stderr, "verify: %s\n", problem);
}

/* Appends a document of T tokens of random (incompressible) keys and
 * values; returns the library's code. */
static int append(msadb_store *st, size_t T, uint64_t seed)
{
    size_t n = (size_t)L_MEM * H * T * D;
    float *K = malloc(n * 4), *V = malloc(n * 4);
    CHECK(K && V);
    tu_fill_randn(&seed, K, n, 1.0f);
    tu_fill_randn(&seed, V, n, 1.0f);
    msadb_doc doc = {0};
    doc.n_tokens = T;
    doc.kv_dtype = MSADB_DTYPE_F32;
    doc.keys = K;
    doc.values = V;
    int rc = msadb_doc_append(st, &doc, NULL);
    free(K);
    free(V);
    return rc;
}

/* A store at dir holding document 1 (SMALL_T tokens); returns its state. */
static store_state make_store(const char *dir)
{
    msadb_signature sig;
    sig_init(&sig);
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, NULL, &st));
    CHECK_OK(append(st, SMALL_T, 1));
    store_state s = state_of(st);
    msadb_close(st);
    return s;
}

/* Opens dir, checks it verifies clean and is in state *want. */
static msadb_store *reopen_unchanged(const char *dir, const store_state *want)
{
    msadb_store *st;
    CHECK_OK(msadb_open(dir, NULL, NULL, &st));
    CHECK_OK(msadb_verify(st, report, NULL));
    store_state now = state_of(st);
    check_same(&now, want);
    return st;
}

/* The big document the failing writes try to add, as a safetensors file
 * for `msadb ingest` (keys and values [L_mem, H, T, D], F32). */
static const char *big_input(void)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/big.safetensors", tu_tmpdir("diskfull-input"));
    size_t n = (size_t)L_MEM * H * BIG_T * D, bytes = n * 4;
    char hdr[512];
    int len = snprintf(hdr, sizeof hdr,
                       "{\"keys\":{\"dtype\":\"F32\",\"shape\":[%d,%d,%d,%d],\"data_offsets\":[0,%zu]},"
                       "\"values\":{\"dtype\":\"F32\",\"shape\":[%d,%d,%d,%d],\"data_offsets\":[%zu,%zu]}}",
                       L_MEM, H, BIG_T, D, bytes, L_MEM, H, BIG_T, D, bytes, 2 * bytes);
    while (len % 8)
        hdr[len++] = ' ';
    float *x = malloc(2 * bytes);
    CHECK(x);
    uint64_t seed = 2;
    tu_fill_randn(&seed, x, 2 * n, 1.0f);
    FILE *f = fopen(path, "wb");
    CHECK(f);
    unsigned char n8[8];
    for (int i = 0; i < 8; i++)
        n8[i] = (unsigned char)((uint64_t)len >> (8 * i));
    CHECK(fwrite(n8, 1, 8, f) == 8 && fwrite(hdr, 1, (size_t)len, f) == (size_t)len);
    CHECK(fwrite(x, 1, 2 * bytes, f) == 2 * bytes);
    CHECK(fclose(f) == 0);
    free(x);
    return path;
}

/* Runs `msadb ingest dir input` and checks it fails (exit 1) with `want`
 * in its error message. */
static void cli_ingest_fails(const char *dir, const char *input, const char *want)
{
    char errpath[4096];
    snprintf(errpath, sizeof errpath, "%s/stderr", tu_tmpdir("diskfull-cli"));
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || dup2(fd, 2) < 0)
            _exit(126);
        execl(msadb_cli, msadb_cli, "ingest", dir, input, (char *)NULL);
        _exit(127);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    char msg[4096] = {0};
    FILE *f = fopen(errpath, "r");
    CHECK(f);
    size_t got = fread(msg, 1, sizeof msg - 1, f);
    fclose(f);
    msg[got] = 0;
    fprintf(stderr, "msadb ingest said: %s", msg);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    CHECK(strstr(msg, want) != NULL);
    CHECK(strstr(msg, "Input/output error") == NULL);
}

/* The library's code and message for the failed write. */
static void check_error(int rc, int want_rc, const char *want_msg)
{
    fprintf(stderr, "append returned %d: %s\n", rc, msadb_strerror(rc));
    CHECK(rc == want_rc);
    CHECK(strncmp(msadb_strerror(rc), want_msg, strlen(want_msg)) == 0);
}

static void test_fsize(void)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir("diskfull-fsize"));
    store_state before = make_store(dir);
    const char *input = msadb_cli ? big_input() : NULL;
    char mdb[600];
    snprintf(mdb, sizeof mdb, "%s/data.mdb", dir);
    struct stat sb;
    CHECK(stat(mdb, &sb) == 0);
    rlim_t limit = (rlim_t)sb.st_size + 256 * 1024;

    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) { /* the limited process: CHECK failures exit 1 */
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {limit, limit};
        CHECK(setrlimit(RLIMIT_FSIZE, &rl) == 0);
        msadb_store *st;
        CHECK_OK(msadb_open(dir, NULL, NULL, &st));
        check_error(append(st, BIG_T, 3), EFBIG, "File size limit exceeded");
        store_state now = state_of(st); /* the open handle sees no change */
        check_same(&now, &before);
        msadb_close(st);
        if (input) /* the program, under the same limit */
            cli_ingest_fails(dir, input, "File size limit exceeded");
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* without the limit: unchanged, and the same write now succeeds */
    msadb_store *st = reopen_unchanged(dir, &before);
    CHECK_OK(append(st, BIG_T, 3));
    CHECK_OK(msadb_verify(st, report, NULL));
    store_state after = state_of(st);
    CHECK(after.st.n_documents == before.st.n_documents + 1);
    msadb_close(st);
}

/* A private mount namespace with a tmpfs of `size` at dir, or exit 77. */
static void mount_small_tmpfs(const char *dir, const char *size)
{
    char opts[64];
    snprintf(opts, sizeof opts, "size=%s,mode=0700", size);
    if (unshare(CLONE_NEWNS) != 0) {
        printf("SKIP: cannot make a private mount namespace (unshare: %s); the ENOSPC test needs "
               "root or CAP_SYS_ADMIN\n", strerror(errno));
        exit(77);
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, opts) != 0) {
        printf("SKIP: cannot mount a %s tmpfs at %s (%s); the ENOSPC test needs permission to "
               "mount\n", size, dir, strerror(errno));
        exit(77);
    }
}

static void test_enospc(void)
{
    /* the input lives outside the small filesystem */
    const char *input = msadb_cli ? big_input() : NULL;
    char mnt[512], dir[520];
    snprintf(mnt, sizeof mnt, "%s", tu_tmpdir("diskfull-enospc"));
    mount_small_tmpfs(mnt, "2m");
    snprintf(dir, sizeof dir, "%s/db", mnt);
    CHECK(mkdir(dir, 0700) == 0);
    store_state before = make_store(dir);

    msadb_store *st;
    CHECK_OK(msadb_open(dir, NULL, NULL, &st));
    check_error(append(st, BIG_T, 3), ENOSPC, "No space left on device");
    store_state now = state_of(st);
    check_same(&now, &before);
    msadb_close(st);

    st = reopen_unchanged(dir, &before);
    msadb_close(st);
    if (input) {
        cli_ingest_fails(dir, input, "No space left on device");
        st = reopen_unchanged(dir, &before);
        msadb_close(st);
    }

    /* room made (the filesystem grown): the same write succeeds */
    CHECK(mount(NULL, mnt, NULL, MS_REMOUNT | MS_NOSUID | MS_NODEV, "size=32m,mode=0700") == 0);
    st = reopen_unchanged(dir, &before);
    CHECK_OK(append(st, BIG_T, 3));
    CHECK_OK(msadb_verify(st, report, NULL));
    store_state after = state_of(st);
    CHECK(after.st.n_documents == before.st.n_documents + 1);
    msadb_close(st);
    tu_rmtree(dir);
    CHECK(umount2(mnt, MNT_DETACH) == 0);
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3 || (strcmp(argv[1], "fsize") != 0 && strcmp(argv[1], "enospc") != 0)) {
        fprintf(stderr, "usage: test_diskfull fsize|enospc [MSADB]\n");
        return 2;
    }
    msadb_cli = argc == 3 ? argv[2] : NULL;
    if (strcmp(argv[1], "fsize") == 0)
        test_fsize();
    else
        test_enospc();
    printf("test_diskfull %s: ok\n", argv[1]);
    return 0;
}
