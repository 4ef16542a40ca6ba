/* test_tamper.c -- every record of an encrypted store is authenticated.
 *
 * A small encrypted store (two spaces, documents with titles, text and
 * metadata, a deleted document, the routing index) is edited with LMDB
 * itself: every byte of every value of every database but `blocks` (which
 * test_crypto_store covers) is flipped, one at a time, and every record is
 * moved under another record's key.  After each edit the store must either
 * refuse to open, or `verify` must fail naming the database and key of the
 * record, or every answer (document list, titles, text, metadata, K/V,
 * spaces, exact and routed queries in each space and over all) must be
 * identical to the unedited store's and a later write must verify; and an
 * answer that differs is never accepted: it must be an error.
 *
 * Also: an edited document id in a slot page does not let an exact query
 * credit another document, and a store written before record MACs opens,
 * verifies, and gains them with msadb_upgrade().
 *
 * Values of up to 256 bytes get every byte flipped; longer ones (summary
 * and routing pages) their first and last 32 bytes and every 64th byte in
 * between, so that the test stays within seconds; MSADB_TAMPER_STRIDE=1
 * flips every byte of every value (docs/reliability.md gives that run).
 * Under AddressSanitizer the default takes every 7th byte of small values. */
#include <lmdb.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "msadb.h"
#include "testutil.h"

enum { D = 8, B = 8, T = 20, NQ = 2, MAX_HITS = 64 };
static const unsigned char key[MSADB_KEY_BYTES] = {9, 8, 7, 6, 5, 4, 3, 2, 1};

static void opts(msadb_options *o)
{
    msadb_options_init(o);
    o->no_sync = 1;
    o->key = key;
}

static uint64_t add(msadb_store *st, uint64_t seed, const char *space, const char *title, const char *text,
                    const char *meta)
{
    uint32_t planes = msadb_signature_planes(msadb_store_signature(st));
    float *K = malloc(planes * T * D * 4), *V = malloc(planes * T * D * 4);
    tu_make_kv(seed, planes * T * D, K, V);
    msadb_doc d = {0};
    d.space = space;
    d.title = title;
    d.text = text;
    d.text_len = text ? strlen(text) : 0;
    d.meta = meta;
    d.meta_len = meta ? strlen(meta) : 0;
    return tu_append_f32(st, &d, T, K, V);
}

/* The small store every edit starts from (plain: the same content
 * without a key). */
static void make_store_as(const char *dir, int plain)
{
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 2, 1, NQ, D));
    sig.block_size = B;
    sig.dtype = MSADB_DTYPE_F16;
    msadb_options o;
    opts(&o);
    if (plain)
        o.key = NULL;
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, &o, &st));
    CHECK_OK(msadb_space_create(st, "tenant-b", NULL));
    add(st, 1, NULL, "first", "alpha text", "{\"a\":1}");
    uint64_t gone = add(st, 2, NULL, "second", "beta", NULL);
    add(st, 3, NULL, "third", NULL, "m");
    add(st, 4, "tenant-b", "other", "gamma text", NULL);
    CHECK_OK(msadb_doc_delete(st, &gone, 1));
    msadb_close(st);
}

static void make_store(const char *dir) { make_store_as(dir, 0); }

/* ---- answers -------------------------------------------------------- */

typedef struct {
    crypto_generichash_state h;
    msadb_store *st;
    msadb_snapshot *snap;
} fp;

static void mix(fp *f, const void *p, size_t n) { crypto_generichash_update(&f->h, p, n); }

static int doc_cb(const msadb_doc_info *info, void *ud)
{
    fp *f = ud;
    mix(f, info, sizeof *info);
    char buf[256];
    size_t len = 0;
    int rc = msadb_doc_text(f->snap, info->id, buf, sizeof buf, &len);
    if (!rc) {
        mix(f, buf, len);
        rc = msadb_doc_meta(f->snap, info->id, buf, sizeof buf, &len);
    }
    if (!rc)
        mix(f, buf, len);
    uint32_t planes = msadb_signature_planes(msadb_store_signature(f->st));
    float *kv = malloc(info->n_tokens * D * 4);
    for (uint32_t p = 0; !rc && p < planes; p++) {
        if (!(rc = msadb_doc_kv(f->snap, info->id, p, kv, NULL)))
            mix(f, kv, info->n_tokens * D * 4);
    }
    free(kv);
    return rc;
}

static int space_cb(const msadb_space_info *info, void *ud)
{
    mix(ud, info, sizeof *info);
    return 0;
}

static int query(fp *f, const char *space, int exact, int select)
{
    const msadb_signature *sig = msadb_store_signature(f->st);
    float q[NQ * D], out[NQ * D], lse[NQ];
    for (int i = 0; i < NQ * D; i++)
        q[i] = (float)((i * 7) % 5) - 2.0f;
    msadb_query qq;
    msadb_query_init(&qq);
    qq.layer = sig->memory_layers[0];
    qq.q = q;
    qq.n_query = 1;
    qq.spaces = space ? &space : NULL;
    qq.n_spaces = space ? 1 : 0;
    qq.exact = exact;
    qq.top_k = 2;
    qq.select = select;
    msadb_hit hits[MAX_HITS];
    size_t n_hits = 0;
    memset(hits, 0, sizeof hits);
    int rc = msadb_attend(f->snap, &qq, out, lse, hits, MAX_HITS, &n_hits);
    if (rc)
        return rc;
    mix(f, out, sizeof out);
    mix(f, lse, sizeof lse);
    mix(f, &n_hits, sizeof n_hits);
    mix(f, hits, (n_hits < MAX_HITS ? n_hits : MAX_HITS) * sizeof *hits);
    return 0;
}

/* Every answer of an open store, hashed into out; 0 or the first error. */
static int answers(msadb_store *st, uint8_t out[32])
{
    fp f;
    f.st = st;
    crypto_generichash_init(&f.h, NULL, 0, 32);
    int rc = msadb_snapshot_begin(st, &f.snap);
    if (rc)
        return rc;
    static const char *const spaces[] = {NULL, "default", "tenant-b"};
    if (!(rc = msadb_doc_list(f.snap, NULL, doc_cb, &f)))
        rc = msadb_space_list(st, space_cb, &f);
    for (size_t s = 0; !rc && s < 3; s++)
        if (!(rc = query(&f, spaces[s], 1, MSADB_SELECT_BLOCKS)) &&
            !(rc = query(&f, spaces[s], 0, MSADB_SELECT_BLOCKS)))
            rc = query(&f, spaces[s], 0, MSADB_SELECT_DOCUMENTS);
    msadb_stat_info si;
    if (!rc && !(rc = msadb_stat(st, &si))) {
        uint64_t c[4] = {si.n_spaces, si.n_documents, si.n_tokens, si.n_blocks};
        mix(&f, c, sizeof c);
    }
    msadb_snapshot_end(f.snap);
    crypto_generichash_final(&f.h, out, 32);
    return rc;
}

/* ---- raw edits ------------------------------------------------------ */

typedef struct {
    char db[64];
    uint8_t k[512];
    size_t klen;
    uint8_t *v;
    size_t vlen;
} record;

static record *recs;
static size_t n_recs;

/* LMDB itself on the closed store: a transaction (read-only or not) in
 * which database `db` (NULL: the main one) is open. */
static MDB_env *raw_begin(const char *dir, int rdonly, const char *db, MDB_txn **txn, MDB_dbi *dbi)
{
    MDB_env *env;
    CHECK_OK(mdb_env_create(&env));
    CHECK_OK(mdb_env_set_maxdbs(env, 16));
    CHECK_OK(mdb_env_open(env, dir, rdonly ? MDB_RDONLY : MDB_NOSYNC, 0600));
    CHECK_OK(mdb_txn_begin(env, NULL, rdonly ? MDB_RDONLY : 0, txn));
    CHECK_OK(mdb_dbi_open(*txn, db, 0, dbi));
    return env;
}

/* Every record of every database but blocks, from the closed store. */
static void load_records(const char *dir)
{
    MDB_txn *txn;
    MDB_dbi main_db;
    MDB_env *env = raw_begin(dir, 1, NULL, &txn, &main_db);
    MDB_cursor *mc, *cur;
    MDB_val dk, dv, k, v;
    CHECK_OK(mdb_cursor_open(txn, main_db, &mc));
    for (int rc = mdb_cursor_get(mc, &dk, &dv, MDB_FIRST); rc == 0; rc = mdb_cursor_get(mc, &dk, &dv, MDB_NEXT)) {
        char name[64];
        CHECK(dk.mv_size < sizeof name);
        memcpy(name, dk.mv_data, dk.mv_size);
        name[dk.mv_size] = 0;
        if (!strcmp(name, "blocks"))
            continue;
        MDB_dbi dbi;
        CHECK_OK(mdb_dbi_open(txn, name, 0, &dbi));
        CHECK_OK(mdb_cursor_open(txn, dbi, &cur));
        for (int r2 = mdb_cursor_get(cur, &k, &v, MDB_FIRST); r2 == 0; r2 = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            recs = realloc(recs, (n_recs + 1) * sizeof *recs);
            CHECK(recs != NULL && k.mv_size <= sizeof recs->k);
            record *r = &recs[n_recs++];
            snprintf(r->db, sizeof r->db, "%s", name);
            memcpy(r->k, k.mv_data, k.mv_size);
            r->klen = k.mv_size;
            r->v = malloc(v.mv_size + 1);
            memcpy(r->v, v.mv_data, v.mv_size);
            r->vlen = v.mv_size;
        }
        mdb_cursor_close(cur);
    }
    mdb_cursor_close(mc);
    mdb_txn_abort(txn);
    mdb_env_close(env);
}

static void free_records(void)
{
    for (size_t i = 0; i < n_recs; i++)
        free(recs[i].v);
    free(recs);
    recs = NULL;
    n_recs = 0;
}

/* Puts (key, value) into database db of the closed store; with del_key,
 * deletes that key first (a record moved). */
static void raw_put(const char *dir, const char *db, const uint8_t *del_key, size_t del_len, const uint8_t *k,
                    size_t klen, const uint8_t *v, size_t vlen)
{
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_env *env = raw_begin(dir, 0, db, &txn, &dbi);
    if (del_key) {
        MDB_val dk = {del_len, (void *)del_key};
        CHECK_OK(mdb_del(txn, dbi, &dk, NULL));
    }
    MDB_val kk = {klen, (void *)k}, vv = {vlen, (void *)v};
    CHECK_OK(mdb_put(txn, dbi, &kk, &vv, 0));
    CHECK_OK(mdb_txn_commit(txn));
    mdb_env_close(env);
}

/* ---- outcomes ------------------------------------------------------- */

typedef struct {
    size_t edits, refused_open, verify_named, harmless;
} tally;

static char reports[8192];
static void collect(const char *line, void *ud)
{
    (void)ud;
    size_t n = strlen(reports);
    snprintf(reports + n, sizeof reports - n, "%s\n", line);
}

/* The text verify uses to name a record: database, then the key in hex. */
static void record_name(const char *db, const uint8_t *k, size_t klen, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "%s record ", db);
    for (size_t i = 0; i < klen && i < 64 && n + 3 < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%02x", k[i]);
}

/* Checks the store in dir after one edit (of record `name` in database
 * db; for meta edits only refusal at open or identical answers pass). */
static msadb_store *open_store(const char *dir)
{
    msadb_options o;
    opts(&o);
    msadb_store *st;
    CHECK_OK(msadb_open(dir, NULL, &o, &st));
    return st;
}

static void check_edit(const char *dir, const char *db, const char *name, const uint8_t want[32], tally *t,
                       const char *what)
{
    t->edits++;
    msadb_options o;
    opts(&o);
    msadb_store *st = NULL;
    int rc = msadb_open(dir, NULL, &o, &st);
    if (rc) {
        if (rc != MSADB_EAUTH && rc != MSADB_ECORRUPT && rc != MSADB_EKEY && rc != MSADB_EVERSION) {
            fprintf(stderr, "%s: open failed with an unexpected error: %s\n", what, msadb_strerror(rc));
            exit(1);
        }
        t->refused_open++;
        return;
    }
    reports[0] = 0;
    int vrc = msadb_verify(st, collect, NULL);
    uint8_t got[32];
    int arc = answers(st, got);
    if (arc == 0 && memcmp(got, want, 32) != 0) {
        fprintf(stderr, "%s: an answer changed (verify: %s)\n%s", what, msadb_strerror(vrc), reports);
        exit(1);
    }
    if (arc && arc != MSADB_EAUTH && arc != MSADB_ECORRUPT) {
        fprintf(stderr, "%s: an operation failed with an unexpected error: %s\n", what, msadb_strerror(arc));
        exit(1);
    }
    if (vrc) {
        if (strcmp(db, "meta") != 0 && !strstr(reports, name)) {
            fprintf(stderr, "%s: verify fails (%s) without naming \"%s\":\n%s", what, msadb_strerror(vrc), name,
                    reports);
            exit(1);
        }
        t->verify_named++;
    } else {
        /* verify passes: the edit must be harmless, later writes too */
        if (arc) {
            fprintf(stderr, "%s: verify passes but an operation fails: %s\n", what, msadb_strerror(arc));
            exit(1);
        }
        add(st, 9, "tenant-b", "later", "later text", NULL);
        CHECK_OK(msadb_verify(st, NULL, NULL));
        t->harmless++;
    }
    msadb_close(st);
}

static void test_every_byte(void)
{
    const char *dir = tu_tmpdir("tamper");
    make_store(dir);
    char data[600], pristine[700], lock[600];
    snprintf(data, sizeof data, "%s/data.mdb", dir);
    snprintf(pristine, sizeof pristine, "%s.pristine", data);
    snprintf(lock, sizeof lock, "%s/lock.mdb", dir);
    tu_copy_file(data, pristine);
    uint8_t want[32];
    {
        msadb_store *st = open_store(dir);
        CHECK_OK(msadb_verify(st, NULL, NULL));
        CHECK_OK(answers(st, want));
        msadb_close(st);
    }
    load_records(dir);
    const char *s = getenv("MSADB_TAMPER_STRIDE");
    size_t stride = s && atoi(s) > 0 ? (size_t)atoi(s) : 64, small_stride = 1;
#if defined(__SANITIZE_ADDRESS__)
    /* under the sanitizers each edit costs ~20x: every 7th byte of small
     * values (the memory checks are what this build adds) */
    if (!s)
        small_stride = 7;
#endif
    tally flips = {0}, moves = {0};
    size_t bytes = 0;
    char dbs[512] = "";
    for (size_t i = 0; i < n_recs; i++) {
        record *r = &recs[i];
        char name[256], what[600];
        record_name(r->db, r->k, r->klen, name, sizeof name);
        if (!strstr(dbs, r->db)) {
            strncat(dbs, r->db, sizeof dbs - strlen(dbs) - 2);
            strcat(dbs, " ");
        }
        uint8_t *mod = malloc(r->vlen + 1);
        for (size_t b = 0; b < r->vlen; b += r->vlen <= 256 || b < 32 || b + 32 >= r->vlen ? small_stride : stride) {
            memcpy(mod, r->v, r->vlen);
            mod[b] ^= 0xff;
            raw_put(dir, r->db, NULL, 0, r->k, r->klen, mod, r->vlen);
            snprintf(what, sizeof what, "%s byte %zu", name, b);
            check_edit(dir, r->db, name, want, &flips, what);
            tu_copy_file(pristine, data);
            bytes++;
        }
        free(mod);
        /* moved under the key of the next record of the same database */
        record *o = i + 1 < n_recs && !strcmp(recs[i + 1].db, r->db) ? &recs[i + 1] : NULL;
        if (o) {
            char oname[256];
            record_name(o->db, o->k, o->klen, oname, sizeof oname);
            raw_put(dir, r->db, o->k, o->klen, o->k, o->klen, r->v, r->vlen);
            snprintf(what, sizeof what, "%s moved to %s", name, oname);
            check_edit(dir, r->db, oname, want, &moves, what);
            tu_copy_file(pristine, data);
        }
    }
    unlink(pristine);
    printf("test_tamper: %zu records (%s), %zu byte flips: %zu refused at open, %zu named by verify, %zu harmless; "
           "%zu moves: %zu refused at open, %zu named by verify, %zu harmless\n",
           n_recs, dbs, bytes, flips.refused_open, flips.verify_named, flips.harmless, moves.edits,
           moves.refused_open, moves.verify_named, moves.harmless);
    CHECK(flips.harmless == 0 && moves.harmless == 0);
    free_records();
}

/* A slot page whose entry names another document: an exact query must not
 * credit the block to it. */
static void test_slot_doc_id(void)
{
    const char *dir = tu_tmpdir("slotid");
    make_store(dir);
    load_records(dir);
    record *slot = NULL;
    for (size_t i = 0; i < n_recs && !slot; i++)
        if (!strcmp(recs[i].db, "slots"))
            slot = &recs[i];
    CHECK(slot != NULL && slot->vlen >= 24 + 16);
    uint8_t *mod = malloc(slot->vlen);
    memcpy(mod, slot->v, slot->vlen);
    mod[8] ^= 0x02; /* document id 1 -> 3: a live document of the same space */
    raw_put(dir, "slots", NULL, 0, slot->k, slot->klen, mod, slot->vlen);
    free(mod);
    msadb_store *st = open_store(dir);
    fp f;
    f.st = st;
    crypto_generichash_init(&f.h, NULL, 0, 32);
    CHECK_OK(msadb_snapshot_begin(st, &f.snap));
    CHECK_RC(query(&f, "default", 1, MSADB_SELECT_BLOCKS), MSADB_EAUTH);
    msadb_snapshot_end(f.snap);
    reports[0] = 0;
    CHECK_RC(msadb_verify(st, collect, NULL), MSADB_ECORRUPT);
    if (!strstr(reports, "slots record 000000000000000000000000"))
        fprintf(stderr, "%s", reports);
    CHECK(strstr(reports, "slots record 000000000000000000000000") != NULL);
    msadb_close(st);
    free_records();
}

/* A store from before record MACs: opens and answers the same; upgraded,
 * its edited records are named by verify. */
static void test_upgrade(void)
{
    const char *dir = tu_tmpdir("tamper-legacy");
    make_store(dir);
    uint8_t want[32], got[32];
    msadb_options o;
    opts(&o);
    msadb_store *st;
    CHECK_OK(msadb_open(dir, NULL, &o, &st));
    CHECK_OK(answers(st, want));
    msadb_close(st);
    tu_make_legacy_store(dir, key);
    CHECK_OK(msadb_open(dir, NULL, &o, &st));
    CHECK_OK(msadb_verify(st, NULL, NULL));
    CHECK_OK(answers(st, got));
    CHECK(memcmp(got, want, 32) == 0);
    CHECK_OK(msadb_upgrade(st));
    CHECK_OK(msadb_verify(st, NULL, NULL));
    CHECK_OK(answers(st, got));
    CHECK(memcmp(got, want, 32) == 0);
    msadb_close(st);
    /* every record now carries its MAC: a document record edited is named */
    load_records(dir);
    record *doc = NULL;
    for (size_t i = 0; i < n_recs && !doc; i++)
        if (!strcmp(recs[i].db, "docs"))
            doc = &recs[i];
    CHECK(doc != NULL);
    doc->v[8] ^= 1; /* token count */
    raw_put(dir, "docs", NULL, 0, doc->k, doc->klen, doc->v, doc->vlen);
    CHECK_OK(msadb_open(dir, NULL, &o, &st));
    reports[0] = 0;
    CHECK_RC(msadb_verify(st, collect, NULL), MSADB_ECORRUPT);
    CHECK(strstr(reports, "docs record 0000000000000001") != NULL);
    CHECK_RC(answers(st, got), MSADB_EAUTH);
    msadb_close(st);
    free_records();
}

/* The summary and routing pages of a plain store with the same content
 * appear nowhere in the encrypted store's file: no 16-byte run of their
 * non-zero bytes. */
static void test_summaries_sealed(void)
{
    char enc[600], data[700];
    snprintf(enc, sizeof enc, "%s", tu_tmpdir("sealed-enc"));
    make_store(enc);
    const char *plain = tu_tmpdir("sealed-plain");
    make_store_as(plain, 1);
    load_records(plain);
    snprintf(data, sizeof data, "%s/data.mdb", enc);
    FILE *f = fopen(data, "rb");
    CHECK(f != NULL);
    static uint8_t file[1 << 22];
    size_t flen = fread(file, 1, sizeof file, f);
    fclose(f);
    size_t runs = 0;
    for (size_t i = 0; i < n_recs; i++) {
        record *r = &recs[i];
        if (strcmp(r->db, "summ") && strcmp(r->db, "route"))
            continue;
        for (size_t b = 0; b + 16 <= r->vlen; b += 16) {
            int zeros = 0;
            for (int j = 0; j < 16; j++)
                zeros += r->v[b + j] == 0;
            if (zeros > 8)
                continue; /* padding and small values are not evidence */
            runs++;
            if (memmem(file, flen, r->v + b, 16)) {
                fprintf(stderr, "%s page bytes %zu.. are in the encrypted file\n", r->db, b);
                exit(1);
            }
        }
    }
    CHECK(runs >= 20);
    printf("test_tamper: %zu 16-byte runs of plaintext summary/routing pages, none in the encrypted file\n", runs);
    free_records();
}

int main(int argc, char **argv)
{
    (void)argc;
    /* Thousands of tiny opens and queries: BLAS threads only wait on each
     * other (on a loaded machine, most of the run; OpenBLAS reads this at
     * load time), and meson's MALLOC_PERTURB_ fills every LMDB environment's
     * megabytes of buffers at each of them (2.5 times the run time; the
     * sanitizer build checks this test's memory instead). */
    if (!getenv("MSADB_TAMPER_EXEC")) {
        setenv("MSADB_TAMPER_EXEC", "1", 1);
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        setenv("MALLOC_PERTURB_", "0", 1);
        execv("/proc/self/exe", argv);
    }
    CHECK(sodium_init() >= 0);
    test_summaries_sealed();
    test_slot_doc_id();
    test_upgrade();
    test_every_byte();
    printf("test_tamper: ok\n");
    return 0;
}
