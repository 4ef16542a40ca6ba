/* mpi.c -- msadb-mpi: the msadb program as an MPI job (msadb_mpi.h).
 *
 * Every rank runs the same command line.  Rank 0 runs the command itself;
 * when it opens a sharded store, every other rank opens its own shards and
 * then serves: rank 0 broadcasts each operation (an opcode), and all ranks
 * make the matching collective call, until rank 0 closes the store.  So the
 * commands' code, and their output, are those of msadb, printed by rank 0
 * alone.  Every wait has a deadline (MSADB_MPI_TIMEOUT seconds, default
 * 60): a rank that dies or stalls makes the others report it and exit 1
 * instead of hanging.  Public API only. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "msadb_mpi.h"

enum {
    OP_CLOSE = 1, OP_STAT, OP_SPACE_LIST, OP_SPACE_CREATE, OP_SPACE_DROP, OP_DOC_LIST, OP_DOC_GET,
    OP_DELETE, OP_VERIFY, OP_COMPACT, OP_BATCH_BEGIN, OP_BATCH_ADD, OP_BATCH_COMMIT, OP_BATCH_ABORT,
    OP_ATTEND
};

static int g_rank, g_size, g_broken;

void cli_mpi_init(int *argc, char ***argv)
{
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
}

int cli_mpi_finish(int rc)
{
    fflush(stdout);
    fflush(stderr);
    if (g_broken)
        _exit(rc ? rc : CLI_ERROR); /* a peer may be gone: MPI_Finalize could wait for ever */
    MPI_Finalize();
    return rc;
}

void cli_mpi_leave(void) { exit(cli_mpi_finish(CLI_OK)); }
int cli_mpi_active(void) { return 1; }
int cli_mpi_rank(void) { return g_rank; }

static msadb_mpi_options mpi_options(void)
{
    msadb_mpi_options mo;
    msadb_mpi_options_init(&mo);
    const char *t = getenv("MSADB_MPI_TIMEOUT"), *r = getenv("MSADB_MPI_REDUCE");
    if (t && *t)
        mo.timeout_s = atof(t);
    if (r && strcmp(r, "gather") == 0)
        mo.reduce = MSADB_MPI_REDUCE_GATHER;
    return mo;
}

/* After a failed collective: the library's sentence (which rank, where). */
static int note(msadb_mpi *m, int rc)
{
    if (rc == MSADB_ETIMEDOUT || rc == MSADB_EPEER || rc == MSADB_ESTATE)
        g_broken = 1;
    if (rc && msadb_mpi_error(m)[0] && (g_rank == 0 || g_broken))
        fprintf(stderr, "msadb: %s\n", msadb_mpi_error(m));
    return rc;
}

/* A rank that cannot go on (its peers are gone or out of step). */
static void give_up(msadb_mpi *m, int rc)
{
    note(m, rc);
    g_broken = 1;
    exit(cli_mpi_finish(CLI_ERROR));
}

/* ---- rank 0: each operation is an opcode, then the collective ----------- */

typedef struct mpi_db {
    msadb_mpi *m;
    msadb_doc_info info; /* the last doc_get, with its text and spans */
    char *text;
    int64_t *spans;
    int have;
} mpi_db;

static msadb_mpi *m_of(cli_db *db) { return ((mpi_db *)db->h)->m; }

static int op(cli_db *db, int32_t code)
{
    return note(m_of(db), msadb_mpi_bcast(m_of(db), &code, sizeof code));
}

#define OP_THEN(db, code, call)                                                                                  \
    do {                                                                                                         \
        int rc_ = op(db, code);                                                                                  \
        return rc_ ? rc_ : note(m_of(db), (call));                                                               \
    } while (0)

static void doc_forget(mpi_db *d)
{
    free(d->text);
    free(d->spans);
    d->text = NULL;
    d->spans = NULL;
    d->have = 0;
}

static void m_close(cli_db *db)
{
    mpi_db *d = db->h;
    if (!g_broken)
        op(db, OP_CLOSE);
    doc_forget(d);
    msadb_mpi_close(d->m);
    free(d);
}

static int m_stat(cli_db *db, msadb_stat_info *s) { OP_THEN(db, OP_STAT, msadb_mpi_stat(m_of(db), s)); }

typedef struct space_find {
    const char *name;
    msadb_space_info *out;
    int found;
} space_find;

static int space_match(const msadb_space_info *info, void *ud)
{
    space_find *f = ud;
    if (strcmp(info->name, f->name) == 0) {
        *f->out = *info;
        f->found = 1;
    }
    return 0;
}

static int m_space_get(cli_db *db, const char *name, msadb_space_info *out)
{
    space_find f = {name, out, 0};
    int rc = op(db, OP_SPACE_LIST);
    if (!rc)
        rc = note(m_of(db), msadb_mpi_space_list(m_of(db), space_match, &f));
    return rc ? rc : f.found ? 0 : MSADB_ENOTFOUND;
}

static int m_space_list(cli_db *db, int (*cb)(const msadb_space_info *, void *), void *ud)
{
    OP_THEN(db, OP_SPACE_LIST, msadb_mpi_space_list(m_of(db), cb, ud));
}

static int m_space_create(cli_db *db, const char *name, uint32_t *id)
{
    int rc = op(db, OP_SPACE_CREATE);
    if (!rc)
        rc = note(m_of(db), msadb_mpi_space_create(m_of(db), name));
    msadb_space_info info;
    *id = 0;
    if (!rc && m_space_get(db, name, &info) == 0)
        *id = info.id; /* that of shard 0, as msadb_shards_space_create */
    return rc;
}

static int m_space_drop(cli_db *db, const char *name)
{
    OP_THEN(db, OP_SPACE_DROP, msadb_mpi_space_drop(m_of(db), name));
}

static int m_doc_list(cli_db *db, const char *space, int (*cb)(const msadb_doc_info *, void *), void *ud)
{
    OP_THEN(db, OP_DOC_LIST, msadb_mpi_doc_list(m_of(db), space, cb, ud));
}

static int keep_doc(uint64_t id, int rc, const msadb_doc_info *info, const char *text, const int64_t *spans,
                    void *ud)
{
    mpi_db *d = ud;
    (void)id;
    if (rc)
        return rc;
    d->info = *info;
    if (text && !(d->text = strdup(text)))
        return MSADB_ENOMEM;
    size_t n = spans ? (size_t)info->n_tokens * 2 : 0;
    if (n && !(d->spans = malloc(n * sizeof *d->spans)))
        return MSADB_ENOMEM;
    if (n)
        memcpy(d->spans, spans, n * sizeof *d->spans);
    d->have = 1;
    return 0;
}

static int m_doc_get(cli_db *db, uint64_t id, msadb_doc_info *info)
{
    mpi_db *d = db->h;
    doc_forget(d);
    int rc = op(db, OP_DOC_GET);
    if (!rc)
        rc = note(d->m, msadb_mpi_doc_fetch(d->m, &id, 1, keep_doc, d));
    if (!rc)
        *info = d->info;
    return rc;
}

static int m_doc_text(cli_db *db, uint64_t id, char *buf, size_t cap, size_t *len)
{
    mpi_db *d = db->h;
    if (!d->have || d->info.id != id || !d->text)
        return MSADB_ENOTFOUND;
    *len = d->info.text_len;
    if (cap < *len + 1)
        return MSADB_ELIMIT;
    memcpy(buf, d->text, *len + 1);
    return 0;
}

static int m_doc_spans(cli_db *db, uint64_t id, int64_t *spans, size_t n)
{
    mpi_db *d = db->h;
    if (!d->have || d->info.id != id || !d->spans)
        return MSADB_ENOTFOUND;
    if (n < d->info.n_tokens)
        return MSADB_ELIMIT;
    memcpy(spans, d->spans, (size_t)d->info.n_tokens * 2 * sizeof *spans);
    return 0;
}

/* Metadata is not sent between the ranks: ls shows none. */
static int m_doc_meta(cli_db *db, uint64_t id, void *buf, size_t cap, size_t *len)
{
    (void)db, (void)id, (void)buf, (void)cap, (void)len;
    return MSADB_ENOTSUP;
}

static int m_delete(cli_db *db, const uint64_t *ids, size_t n)
{
    OP_THEN(db, OP_DELETE, msadb_mpi_delete(m_of(db), ids, n));
}

static int m_verify(cli_db *db, void (*report)(const char *, void *), void *ud)
{
    int rc = op(db, OP_VERIFY);
    return rc ? rc : msadb_mpi_verify(m_of(db), report, ud); /* ECORRUPT is the answer */
}

static int m_compact(cli_db *db) { OP_THEN(db, OP_COMPACT, msadb_mpi_compact(m_of(db))); }
static int m_batch_begin(cli_db *db) { OP_THEN(db, OP_BATCH_BEGIN, msadb_mpi_batch_begin(m_of(db))); }
static int m_batch_add(cli_db *db, const msadb_doc *doc) { OP_THEN(db, OP_BATCH_ADD, msadb_mpi_batch_add(m_of(db), doc)); }
static int m_batch_commit(cli_db *db, uint64_t *ids)
{
    OP_THEN(db, OP_BATCH_COMMIT, msadb_mpi_batch_commit(m_of(db), ids));
}

static void m_batch_abort(cli_db *db)
{
    if (!g_broken && op(db, OP_BATCH_ABORT) == 0)
        msadb_mpi_batch_abort(m_of(db));
}

static int m_attend(cli_db *db, const msadb_query *q, float *out, float *lse, msadb_hit *hits, size_t cap,
                    size_t *n)
{
    OP_THEN(db, OP_ATTEND, msadb_mpi_attend(m_of(db), q, out, lse, hits, cap, n, NULL));
}

static const cli_db_ops mpi_ops = {
    m_close, m_stat, m_space_get, m_space_list, m_space_create, m_space_drop, m_doc_list,
    m_doc_get, m_doc_text, m_doc_spans, m_doc_meta, m_delete, m_verify, m_compact, m_batch_begin, m_batch_add,
    m_batch_commit, m_batch_abort, m_attend,
};

/* ---- the other ranks: the same collectives, on rank 0's word ------------ */

static int no_space(const msadb_space_info *i, void *ud) { (void)i, (void)ud; return 0; }
static int no_doc(const msadb_doc_info *i, void *ud) { (void)i, (void)ud; return 0; }
static int no_fetch(uint64_t id, int rc, const msadb_doc_info *i, const char *t, const int64_t *s, void *ud)
{
    (void)id, (void)rc, (void)i, (void)t, (void)s, (void)ud;
    return 0;
}

static void serve(msadb_mpi *m)
{
    for (;;) {
        int32_t code = 0;
        int rc = msadb_mpi_bcast(m, &code, sizeof code);
        if (rc)
            give_up(m, rc);
        switch (code) {
        case OP_CLOSE:
            msadb_mpi_close(m);
            exit(cli_mpi_finish(CLI_OK));
        case OP_STAT: rc = msadb_mpi_stat(m, NULL); break;
        case OP_SPACE_LIST: rc = msadb_mpi_space_list(m, no_space, NULL); break;
        case OP_SPACE_CREATE: rc = msadb_mpi_space_create(m, NULL); break;
        case OP_SPACE_DROP: rc = msadb_mpi_space_drop(m, NULL); break;
        case OP_DOC_LIST: rc = msadb_mpi_doc_list(m, NULL, no_doc, NULL); break;
        case OP_DOC_GET: rc = msadb_mpi_doc_fetch(m, NULL, 0, no_fetch, NULL); break;
        case OP_DELETE: rc = msadb_mpi_delete(m, NULL, 0); break;
        case OP_VERIFY: rc = msadb_mpi_verify(m, NULL, NULL); break;
        case OP_COMPACT: rc = msadb_mpi_compact(m); break;
        case OP_BATCH_BEGIN: rc = msadb_mpi_batch_begin(m); break;
        case OP_BATCH_ADD: rc = msadb_mpi_batch_add(m, NULL); break;
        case OP_BATCH_COMMIT: rc = msadb_mpi_batch_commit(m, NULL); break;
        case OP_BATCH_ABORT: msadb_mpi_batch_abort(m); break;
        case OP_ATTEND: rc = msadb_mpi_attend(m, NULL, NULL, NULL, NULL, 0, NULL, NULL); break;
        default:
            fprintf(stderr, "msadb: rank %d: unknown operation %d from rank 0\n", g_rank, code);
            g_broken = 1;
            exit(cli_mpi_finish(CLI_ERROR));
        }
        /* an answer (not found, exists, corrupt) is rank 0's to report;
         * a broken exchange ends this rank */
        if (rc == MSADB_ETIMEDOUT || rc == MSADB_EPEER || rc == MSADB_ESTATE)
            give_up(m, rc);
    }
}

/* ---- opening and creating ----------------------------------------------- */

static int opened(const cli_args *a, msadb_mpi *m, int rc, cli_db **out)
{
    if (rc) {
        if (rc == MSADB_ETIMEDOUT || rc == MSADB_EPEER)
            g_broken = 1;
        if (g_rank == 0) {
            if (m)
                note(m, rc);
            return cli_open_error(a->db, rc, 0);
        }
        exit(cli_mpi_finish(CLI_ERROR)); /* rank 0 reports it */
    }
    if (g_rank != 0)
        serve(m);
    mpi_db *d = calloc(1, sizeof *d);
    if (!d) {
        msadb_mpi_close(m);
        return cli_error("out of memory");
    }
    d->m = m;
    if (cli_db_wrap(&mpi_ops, d, msadb_shards_signature(msadb_mpi_shards(m)), a->db, out) != CLI_OK) {
        g_broken = 1; /* the others serve: leave without them */
        free(d);
        return CLI_ERROR;
    }
    return CLI_OK;
}

int cli_mpi_open(const cli_args *a, int read_only, cli_db **out)
{
    msadb_options opt;
    unsigned char key[MSADB_KEY_BYTES];
    int krc = cli_key_options(a, &opt, key);
    opt.read_only = read_only;
    msadb_mpi_options mo = mpi_options();
    msadb_mpi *m = NULL;
    /* a rank with bad key options still takes part, with an invalid path */
    int rc = msadb_mpi_open(MPI_COMM_WORLD, krc == CLI_OK ? a->db : "", NULL, &opt, &mo, &m);
    explicit_bzero(key, sizeof key);
    return opened(a, m, rc, out);
}

int cli_mpi_create(const cli_args *a, const msadb_signature *sig, const msadb_options *opt, int *encrypted)
{
    msadb_mpi_options mo = mpi_options();
    msadb_mpi *m = NULL;
    int rc = msadb_mpi_create(MPI_COMM_WORLD, a->db, a->shards, sig, opt, &mo, &m);
    if (rc) {
        if (rc == MSADB_ETIMEDOUT || rc == MSADB_EPEER)
            g_broken = 1;
        if (g_rank != 0)
            exit(cli_mpi_finish(CLI_ERROR));
        if (m)
            note(m, rc);
        return cli_open_error(a->db, rc, 1);
    }
    msadb_stat_info s;
    rc = msadb_mpi_stat(m, &s);
    *encrypted = rc == 0 && s.encrypted;
    msadb_mpi_close(m);
    if (g_rank != 0)
        exit(cli_mpi_finish(rc ? CLI_ERROR : CLI_OK));
    return rc ? cli_error_rc(rc, "%s", a->db) : CLI_OK;
}
