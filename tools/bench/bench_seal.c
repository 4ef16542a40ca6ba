/* bench_seal.c -- the cost of sealed summary pages in encrypted stores.
 *
 * Store mode (bench_seal --tokens N DIR): writes (or reuses) a plain and an
 * encrypted store of N tokens (one memory plane, head_dim 128, int8, 64-token blocks,
 * documents of 4096 tokens, every summary kind) under DIR, then for each
 * times a top-k query (routing index, the default) and an exact-routing
 * scan of every summary (--route 0 equivalent: MSADB_ROUTE_SCAN):
 *   - the first query of a fresh snapshot (encrypted: decrypts every page
 *     it reads, which is what a streaming decrypt would pay on every query);
 *   - the same query again in that snapshot (the decrypted copies);
 *   - after msadb_snapshot_renew() with no commit in between (copies kept:
 *     nonce and tag compared).
 * and prints the ratio encrypted / plain for each.
 *
 * Throughput mode (bench_seal --throughput MIB): XChaCha20-Poly1305
 * decryption of summary-page-sized values (300 KiB each) over MIB MiB, in
 * MB/s, the rate at which the first query of a snapshot pays for pages.
 *
 * Exit status 0, 1 error, 2 usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "msadb.h"
#include "machine.h"

enum { D = 128, B = 64, DOC = 4096, Q_HEADS = 4 };

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_seal: %s: %s\n", what, msadb_strerror(rc));
    exit(1);
}

static void build(const char *dir, size_t tokens, const unsigned char *key)
{
    msadb_signature sig;
    int rc = msadb_signature_init(&sig, 1, 1, Q_HEADS, D);
    if (rc)
        die("signature", rc);
    sig.block_size = B;
    sig.dtype = MSADB_DTYPE_INT8;
    msadb_options o;
    msadb_options_init(&o);
    o.key = key;
    o.no_sync = 1;
    msadb_store *st;
    if ((rc = msadb_create(dir, &sig, &o, &st)) == MSADB_EEXIST) {
        printf("  %s: reused (built by an earlier run)\n", dir);
        return;
    }
    if (rc)
        die(dir, rc);
    float *K = malloc((size_t)DOC * D * 4), *V = malloc((size_t)DOC * D * 4);
    uint64_t seed = 42;
    for (size_t done = 0; done < tokens; done += DOC) {
        size_t n = tokens - done < DOC ? tokens - done : DOC;
        for (size_t i = 0; i < n * D; i++) {
            K[i] = rng_normal(&seed);
            V[i] = rng_normal(&seed);
        }
        msadb_doc d = {0};
        d.n_tokens = n;
        d.kv_dtype = MSADB_DTYPE_F32;
        d.keys = K;
        d.values = V;
        if ((rc = msadb_doc_append(st, &d, NULL)))
            die("append", rc);
    }
    free(K);
    free(V);
    msadb_close(st);
}

/* ms of one query; route: MSADB_ROUTE_* */
static double query_ms(msadb_snapshot *snap, int route)
{
    static float q[Q_HEADS * D], out[Q_HEADS * D], lse[Q_HEADS];
    uint64_t seed = 7;
    for (int i = 0; i < Q_HEADS * D; i++)
        q[i] = rng_normal(&seed);
    msadb_query qq;
    msadb_query_init(&qq);
    qq.layer = 0;
    qq.q = q;
    qq.n_query = 1;
    qq.route = route;
    double t = machine_now_s();
    int rc = msadb_attend(snap, &qq, out, lse, NULL, 0, NULL);
    if (rc)
        die("attend", rc);
    return (machine_now_s() - t) * 1e3;
}

typedef struct {
    double first, again, renewed;
} timing;

static timing measure(const char *dir, const unsigned char *key, int route)
{
    msadb_options o;
    msadb_options_init(&o);
    o.key = key;
    o.read_only = 1;
    msadb_store *st;
    int rc = msadb_open(dir, NULL, &o, &st);
    if (rc)
        die(dir, rc);
    timing t = {0, 1e30, 1e30};
    msadb_snapshot *snap;
    /* warm the page cache of the file first: the cost measured is the
     * decryption, not the disk */
    if ((rc = msadb_snapshot_begin(st, &snap)))
        die("snapshot", rc);
    query_ms(snap, route);
    msadb_snapshot_end(snap);
    if ((rc = msadb_snapshot_begin(st, &snap)))
        die("snapshot", rc);
    t.first = query_ms(snap, route);
    for (int i = 0; i < 5; i++) {
        double a = query_ms(snap, route);
        t.again = a < t.again ? a : t.again;
    }
    for (int i = 0; i < 5; i++) {
        if ((rc = msadb_snapshot_renew(snap)))
            die("renew", rc);
        double a = query_ms(snap, route);
        t.renewed = a < t.renewed ? a : t.renewed;
    }
    msadb_snapshot_end(snap);
    msadb_stat_info si;
    if (!msadb_stat(st, &si) && route == MSADB_ROUTE_SCAN)
        printf("  %s: summary and slot pages %.1f MB\n", key ? "encrypted" : "plain", si.summary_bytes / 1e6);
    msadb_close(st);
    return t;
}

static void throughput(size_t mib)
{
    const size_t page = 300 << 10, n = (mib << 20) / page;
    unsigned char key[32], ad[48] = {0};
    randombytes_buf(key, sizeof key);
    uint8_t *plain = malloc(page), *sealed = malloc(page + 40), *out = malloc(page);
    randombytes_buf(plain, page);
    unsigned long long cl;
    randombytes_buf(sealed, 24);
    crypto_aead_xchacha20poly1305_ietf_encrypt(sealed + 24, &cl, plain, page, ad, sizeof ad, NULL, sealed, key);
    double t = machine_now_s();
    for (size_t i = 0; i < n; i++)
        if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, NULL, NULL, sealed + 24, cl, ad, sizeof ad, sealed, key))
            die("decrypt", MSADB_EAUTH);
    double s = machine_now_s() - t;
    printf("XChaCha20-Poly1305 decrypt: %zu pages of %zu KiB in %.3f s: %.0f MB/s\n", n, page >> 10, s,
           n * (double)page / s / 1e6);
    free(plain);
    free(sealed);
    free(out);
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0)
        return 1;
    char cpu[256];
    machine_cpu_model(cpu, sizeof cpu);
    if (argc == 3 && !strcmp(argv[1], "--throughput")) {
        throughput(strtoull(argv[2], NULL, 10));
        printf("machine: %s, load %.2f\n", cpu, machine_load());
        return 0;
    }
    if (argc != 4 || strcmp(argv[1], "--tokens")) {
        fprintf(stderr, "usage: bench_seal --tokens N DIR | bench_seal --throughput MIB\n");
        return 2;
    }
    size_t tokens = strtoull(argv[2], NULL, 10);
    char plain[4096], enc[4096];
    snprintf(plain, sizeof plain, "%s/plain", argv[3]);
    snprintf(enc, sizeof enc, "%s/enc", argv[3]);
    static const unsigned char key[32] = {1, 2, 3};
    double t = machine_now_s();
    build(plain, tokens, NULL);
    build(enc, tokens, key);
    printf("bench_seal: %zu tokens, 1 plane, d %d, int8: stores built in %.1f s\n", tokens, D, machine_now_s() - t);
    static const struct {
        int route;
        const char *name;
    } modes[] = {{MSADB_ROUTE_SCAN, "scan of every summary"}, {MSADB_ROUTE_INDEX, "routing index"}};
    for (int m = 0; m < 2; m++) {
        timing p = measure(plain, NULL, modes[m].route), e = measure(enc, key, modes[m].route);
        printf("%s: first query of a snapshot %.2f / %.2f ms (x%.2f), again %.2f / %.2f ms (x%.2f), "
               "after renew %.2f / %.2f ms (x%.2f)  [plain / encrypted]\n",
               modes[m].name, p.first, e.first, e.first / p.first, p.again, e.again, e.again / p.again, p.renewed,
               e.renewed, e.renewed / p.renewed);
    }
    printf("machine: %s, load %.2f\n", cpu, machine_load());
    return 0;
}
