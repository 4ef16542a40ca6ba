/* mpi.c -- a sharded store served by the ranks of an MPI job
 * (include/msadb_mpi.h).  Every exchange is a nonblocking MPI operation
 * waited on with a deadline, so a dead or stalled rank turns into
 * MSADB_ETIMEDOUT on the others instead of a hang.  Built on the public
 * shard API only. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "msadb_mpi.h"

#define TAG_DOC 11   /* ingest: one serialized document, root -> owner */
#define TAG_LIST 12  /* doc list: a chunk of msadb_doc_info, owner -> root */
#define TAG_FETCH 13 /* doc fetch: one serialized document view, owner -> root */
#define LIST_CHUNK 256
#define MSG_MAX 1024 /* bytes of an error sentence, also exchanged between ranks */
#define REPORT_MAX (64u << 10)

struct msadb_mpi {
    MPI_Comm comm;
    int rank, size, root, reduce, broken, failed;
    double timeout;
    msadb_shards *sh;
    msadb_shards_snapshot *snap; /* begun by a query, ended before writes */
    uint32_t n_shards;
    MPI_Op op;
    MPI_Datatype row_t;          /* one attention row: d outputs and the LSE */
    int have_op, have_row;
    float *res, *res2;           /* [rows][d+1] this rank's and the reduced result */
    size_t res_cap;
    msadb_hit *hits;
    size_t hits_cap;
    /* an open batch: this rank's part; at the root the placement state */
    msadb_shards_batch *batch;
    uint64_t *loads;             /* root: tokens per shard, batch included */
    uint32_t *owner;             /* root: the rank of each added document */
    size_t n_added, owner_cap;
    char err[MSG_MAX];
};

void msadb_mpi_options_init(msadb_mpi_options *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->timeout_s = 60.0;
    o->reduce = MSADB_MPI_REDUCE_OP;
}

static void set_err(msadb_mpi *m, const char *fmt, ...)
{
    char msg[sizeof m->err - 32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(m->err, sizeof m->err, "rank %d: %s", m->rank, msg);
}

/* ---- waiting with a deadline ------------------------------------------- */

static void nap(unsigned us)
{
    struct timespec ts = {0, (long)us * 1000};
    nanosleep(&ts, NULL);
}

static int mpi_fail(msadb_mpi *m, int mrc, const char *what)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(mrc, s, &len);
    m->broken = 1;
    set_err(m, "MPI error in %s: %s", what, s);
    return MSADB_EPEER;
}

/* Waits for n requests; spins briefly, then naps (ranks may share cores). */
static int wait_all(msadb_mpi *m, int n, MPI_Request *r, const char *what)
{
    double t0 = MPI_Wtime();
    unsigned nap_us = 0;
    for (long it = 0;; it++) {
        int flag = 0, mrc = MPI_Testall(n, r, &flag, MPI_STATUSES_IGNORE);
        if (mrc != MPI_SUCCESS)
            return mpi_fail(m, mrc, what);
        if (flag)
            return 0;
        if (m->timeout > 0 && MPI_Wtime() - t0 > m->timeout) {
            m->broken = 1;
            set_err(m, "timed out after %.1f s in %s: another rank failed or is stalled", m->timeout, what);
            return MSADB_ETIMEDOUT;
        }
        if (it > 64) {
            nap_us = nap_us ? (nap_us < 200 ? nap_us * 2 : 200) : 5;
            nap(nap_us);
        }
    }
}

static int wait_one(msadb_mpi *m, MPI_Request *r, const char *what) { return wait_all(m, 1, r, what); }

/* Waits for a message from src with tag; *len gets its size in bytes. */
static int probe(msadb_mpi *m, int src, int tag, int *len, const char *what)
{
    double t0 = MPI_Wtime();
    unsigned nap_us = 0;
    for (long it = 0;; it++) {
        int flag = 0;
        MPI_Status st;
        int mrc = MPI_Iprobe(src, tag, m->comm, &flag, &st);
        if (mrc != MPI_SUCCESS)
            return mpi_fail(m, mrc, what);
        if (flag) {
            MPI_Get_count(&st, MPI_BYTE, len);
            return 0;
        }
        if (m->timeout > 0 && MPI_Wtime() - t0 > m->timeout) {
            m->broken = 1;
            set_err(m, "timed out after %.1f s in %s waiting for rank %d: it failed or is stalled", m->timeout,
                    what, src);
            return MSADB_ETIMEDOUT;
        }
        if (it > 64) {
            nap_us = nap_us ? (nap_us < 200 ? nap_us * 2 : 200) : 5;
            nap(nap_us);
        }
    }
}

static int bcast(msadb_mpi *m, void *buf, size_t n, const char *what)
{
    if (n > INT32_MAX) {
        set_err(m, "%s: %zu bytes exceed one MPI message", what, n);
        return MSADB_ELIMIT;
    }
    MPI_Request r;
    int mrc = MPI_Ibcast(buf, (int)n, MPI_BYTE, m->root, m->comm, &r);
    return mrc != MPI_SUCCESS ? mpi_fail(m, mrc, what) : wait_one(m, &r, what);
}

static int send_bytes(msadb_mpi *m, const void *buf, size_t n, int dst, int tag, const char *what)
{
    if (n > INT32_MAX) {
        set_err(m, "%s: %zu bytes exceed one MPI message", what, n);
        return MSADB_ELIMIT;
    }
    MPI_Request r;
    int mrc = MPI_Isend(buf, (int)n, MPI_BYTE, dst, tag, m->comm, &r);
    return mrc != MPI_SUCCESS ? mpi_fail(m, mrc, what) : wait_one(m, &r, what);
}

/* Receives the next message from src with tag into a malloc'ed buffer. */
static int recv_bytes(msadb_mpi *m, int src, int tag, void **buf, int *len, const char *what)
{
    int rc = probe(m, src, tag, len, what);
    if (rc)
        return rc;
    *buf = malloc((size_t)*len + 1);
    if (!*buf)
        return MSADB_ENOMEM;
    MPI_Request r;
    int mrc = MPI_Irecv(*buf, *len, MPI_BYTE, src, tag, m->comm, &r);
    if (mrc != MPI_SUCCESS || (rc = wait_one(m, &r, what))) {
        free(*buf);
        *buf = NULL;
        return mrc != MPI_SUCCESS ? mpi_fail(m, mrc, what) : rc;
    }
    return 0;
}

static int begin_op(msadb_mpi *m);

int msadb_mpi_bcast(msadb_mpi *m, void *buf, size_t n)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    return n && !buf ? MSADB_EINVAL : bcast(m, buf, n, "broadcast");
}

/* ---- agreeing on a result ----------------------------------------------- */

typedef struct vote {
    int32_t rc;
    char msg[MSG_MAX];
} vote;

/* Every rank learns every rank's code: returns the lowest failing rank's
 * code (and its sentence in m->err), 0 if none failed.  votes (may be NULL)
 * gets all of them.  The codes travel first (4 bytes a rank); the
 * sentences only when one failed. */
static int agree_all(msadb_mpi *m, int rc, const char *what, vote **votes)
{
    if (m->broken)
        return rc ? rc : MSADB_ESTATE;
    int32_t mine = rc, *codes = malloc((size_t)m->size * sizeof *codes);
    vote *all = calloc((size_t)m->size, sizeof *all);
    if (!codes || !all) {
        free(codes);
        free(all);
        m->broken = 1; /* cannot take part: the others' deadline ends it */
        return MSADB_ENOMEM;
    }
    MPI_Request r;
    int mrc = MPI_Iallgather(&mine, 1, MPI_INT32_T, codes, 1, MPI_INT32_T, m->comm, &r);
    int wrc = mrc != MPI_SUCCESS ? mpi_fail(m, mrc, what) : wait_one(m, &r, what);
    int any = 0;
    for (int i = 0; !wrc && i < m->size; i++) {
        all[i].rc = codes[i];
        any |= codes[i] != 0;
    }
    free(codes);
    if (!wrc && any) { /* the sentences, for the ranks that report */
        vote v;
        memset(&v, 0, sizeof v);
        v.rc = rc;
        if (rc) {
            if (!m->err[0])
                set_err(m, "%s: %s", what, msadb_strerror(rc));
            snprintf(v.msg, sizeof v.msg, "%s", m->err);
        }
        mrc = MPI_Iallgather(&v, (int)sizeof v, MPI_BYTE, all, (int)sizeof v, MPI_BYTE, m->comm, &r);
        wrc = mrc != MPI_SUCCESS ? mpi_fail(m, mrc, what) : wait_one(m, &r, what);
    }
    if (wrc) {
        free(all);
        return wrc;
    }
    int out = 0;
    for (int i = 0; i < m->size && !out; i++)
        if (all[i].rc) {
            out = all[i].rc;
            if (i != m->rank)
                snprintf(m->err, sizeof m->err, "%s", all[i].msg);
        }
    if (votes)
        *votes = all;
    else
        free(all);
    return out;
}

static int agree(msadb_mpi *m, int rc, const char *what) { return agree_all(m, rc, what, NULL); }

static int begin_op(msadb_mpi *m)
{
    if (!m)
        return MSADB_EINVAL;
    if (m->broken || m->failed)
        return MSADB_ESTATE;
    m->err[0] = 0;
    return 0;
}

/* Writes need no open snapshot of this process (the map may have to grow). */
static void end_snapshot(msadb_mpi *m)
{
    msadb_shards_snapshot_end(m->snap);
    m->snap = NULL;
}

/* ---- open, create, close ------------------------------------------------ */

/* The user-defined reduction: inout = merge(in, inout), row by row. */
static void lse_op(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    int bytes = 0;
    MPI_Type_size(*dt, &bytes);
    size_t w = (size_t)bytes / sizeof(float), d = w - 1;
    float *a = in, *b = inout;
    for (int r = 0; r < *len; r++) {
        float *x = a + (size_t)r * w, *y = b + (size_t)r * w;
        msadb_lse_merge(1, d, x, x + d, y, y + d, y, y + d);
    }
}

static int handle_new(MPI_Comm comm, const msadb_mpi_options *mo, msadb_mpi **out)
{
    msadb_mpi_options dflt;
    if (!mo) {
        msadb_mpi_options_init(&dflt);
        mo = &dflt;
    }
    int size = 0;
    MPI_Comm_size(comm, &size);
    if (mo->root < 0 || mo->root >= size || !(mo->timeout_s >= 0) ||
        (mo->reduce != MSADB_MPI_REDUCE_OP && mo->reduce != MSADB_MPI_REDUCE_GATHER))
        return MSADB_EINVAL;
    msadb_mpi *m = calloc(1, sizeof *m);
    if (!m)
        return MSADB_ENOMEM;
    if (MPI_Comm_dup(comm, &m->comm) != MPI_SUCCESS) {
        free(m);
        return MSADB_EPEER;
    }
    MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(m->comm, &m->rank);
    m->size = size;
    m->root = mo->root;
    m->timeout = mo->timeout_s;
    m->reduce = mo->reduce;
    *out = m;
    return 0;
}

/* A failed open or create: the handle stays, for msadb_mpi_error() and
 * msadb_mpi_close() only. */
static int open_failed(msadb_mpi *m, int rc, msadb_mpi **out)
{
    msadb_shards_close(m->sh);
    m->sh = NULL;
    m->failed = 1;
    *out = m;
    return rc;
}

/* After the shards are open (or failed to): everyone agrees, checks that
 * every rank has the root's signature and manifest, sets up the reduction. */
static int finish_open(msadb_mpi *m, int rc, const char *dir, msadb_mpi **out)
{
    if (rc && !m->err[0])
        set_err(m, "cannot open %s (shards %d, %d+%d, ...): %s", dir, m->rank, m->rank, m->size, msadb_strerror(rc));
    if ((rc = agree(m, rc, "open")))
        return open_failed(m, rc, out);
    struct {
        msadb_signature sig;
        msadb_shards_manifest man;
    } root_view, mine;
    memset(&mine, 0, sizeof mine);
    mine.sig = *msadb_shards_signature(m->sh);
    mine.man = *msadb_shards_get_manifest(m->sh);
    root_view = mine;
    rc = bcast(m, &root_view, sizeof root_view, "open: signature exchange");
    if (!rc && memcmp(&root_view.man, &mine.man, sizeof mine.man) != 0)
        rc = MSADB_ECORRUPT, set_err(m, "%s: this node's manifest differs from rank %d's", dir, m->root);
    else if (!rc && memcmp(&root_view.sig, &mine.sig, sizeof mine.sig) != 0)
        rc = MSADB_ESIGNATURE, set_err(m, "%s: this rank's shards have another signature than rank %d's", dir, m->root);
    if ((rc = agree(m, rc, "open")))
        return open_failed(m, rc, out);
    m->n_shards = mine.man.n_shards;
    if (MPI_Op_create(lse_op, 1, &m->op) == MPI_SUCCESS)
        m->have_op = 1;
    if (MPI_Type_contiguous((int)mine.sig.head_dim + 1, MPI_FLOAT, &m->row_t) == MPI_SUCCESS &&
        MPI_Type_commit(&m->row_t) == MPI_SUCCESS)
        m->have_row = 1;
    if (!m->have_op || !m->have_row) {
        set_err(m, "cannot create the MPI reduction");
        return open_failed(m, MSADB_EPEER, out);
    }
    *out = m;
    return 0;
}

int msadb_mpi_open(MPI_Comm comm, const char *dir, const msadb_signature *expect, const msadb_options *opt,
                   const msadb_mpi_options *mo, msadb_mpi **out)
{
    if (!dir || !out)
        return MSADB_EINVAL;
    msadb_mpi *m;
    int rc = handle_new(comm, mo, &m);
    if (rc)
        return rc;
    rc = msadb_shards_open_part(dir, expect, opt, (uint32_t)m->rank, (uint32_t)m->size, &m->sh);
    if (rc == MSADB_EINVAL) {
        msadb_shards_manifest man;
        if (msadb_shards_manifest_read(dir, &man) == 0 && (uint32_t)m->size > man.n_shards)
            set_err(m, "%s has %u shards: run at most that many ranks (here %d)", dir, man.n_shards, m->size);
    }
    return finish_open(m, rc, dir, out);
}

int msadb_mpi_create(MPI_Comm comm, const char *dir, uint32_t n_shards, const msadb_signature *sig,
                     const msadb_options *opt, const msadb_mpi_options *mo, msadb_mpi **out)
{
    if (!dir || !out)
        return MSADB_EINVAL;
    msadb_mpi *m;
    int rc = handle_new(comm, mo, &m);
    if (rc)
        return rc;
    struct {
        int32_t rc;
        msadb_signature sig;
        msadb_shards_manifest man;
    } c;
    memset(&c, 0, sizeof c);
    if (m->rank == m->root) {
        c.rc = sig ? msadb_signature_validate(sig) : MSADB_EINVAL;
        if (!c.rc)
            c.sig = *sig;
        if (!c.rc)
            c.rc = msadb_shards_manifest_new(&c.man, n_shards);
        if (!c.rc && (uint32_t)m->size > n_shards)
            c.rc = MSADB_EINVAL, set_err(m, "%u shards for %d ranks: give each rank at least one shard",
                                          n_shards, m->size);
    }
    if ((rc = bcast(m, &c, sizeof c, "create: manifest exchange")))
        return open_failed(m, rc, out);
    rc = c.rc ? c.rc
              : msadb_shards_create_part(dir, &c.man, &c.sig, opt, (uint32_t)m->rank, (uint32_t)m->size, &m->sh);
    if (rc && !m->err[0])
        set_err(m, "cannot create %s: %s", dir, msadb_strerror(rc));
    return finish_open(m, rc, dir, out);
}

void msadb_mpi_close(msadb_mpi *m)
{
    if (!m)
        return;
    end_snapshot(m);
    msadb_mpi_batch_abort(m);
    msadb_shards_close(m->sh);
    if (m->have_op)
        MPI_Op_free(&m->op);
    if (m->have_row)
        MPI_Type_free(&m->row_t);
    /* a broken communicator may still have operations in flight */
    if (!m->broken)
        MPI_Comm_free(&m->comm);
    free(m->res);
    free(m->hits);
    free(m);
}

msadb_shards *msadb_mpi_shards(msadb_mpi *m) { return m ? m->sh : NULL; }
int msadb_mpi_rank(const msadb_mpi *m) { return m ? m->rank : MSADB_EINVAL; }
int msadb_mpi_size(const msadb_mpi *m) { return m ? m->size : MSADB_EINVAL; }
const char *msadb_mpi_error(const msadb_mpi *m) { return m ? m->err : ""; }

/* ---- statistics --------------------------------------------------------- */

int msadb_mpi_stat(msadb_mpi *m, msadb_stat_info *out)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    msadb_stat_info si;
    memset(&si, 0, sizeof si);
    rc = msadb_shards_stat(m->sh, &si);
    if ((rc = agree(m, rc, "stat")))
        return rc;
    uint64_t v[7] = {si.n_documents, si.n_tokens, si.n_blocks, si.block_bytes, si.summary_bytes, si.map_size,
                     si.map_used},
             sum[7] = {0};
    MPI_Request r;
    int mrc = MPI_Ireduce(v, sum, 7, MPI_UINT64_T, MPI_SUM, m->root, m->comm, &r);
    if (mrc != MPI_SUCCESS)
        return mpi_fail(m, mrc, "stat");
    if ((rc = wait_one(m, &r, "stat")))
        return rc;
    if (m->rank == m->root && out) {
        *out = si;
        out->n_documents = sum[0];
        out->n_tokens = sum[1];
        out->n_blocks = sum[2];
        out->block_bytes = sum[3];
        out->summary_bytes = sum[4];
        out->map_size = sum[5];
        out->map_used = sum[6];
    }
    return 0;
}

/* ---- attention ---------------------------------------------------------- */

typedef struct qhdr {
    int32_t rc;           /* the root's validation of its input */
    uint32_t layer, n_query, n_spaces, top_k, summary;
    int32_t select, score, exact, per_token, want_hits, want_stats;
    float scale;
    uint64_t hits_cap, names_bytes;
} qhdr;

/* (msadb_mpi links libmsadb's public API only, so not core's msadb_grow) */
static int grow_to(void *pp, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    void *p = realloc(*(void **)pp, need * size);
    if (!p)
        return MSADB_ENOMEM;
    *(void **)pp = p;
    *cap = need;
    return 0;
}

/* The root's query as bytes: the header, then q, then the space names
 * (each NUL-terminated). */
static int query_pack(msadb_mpi *m, const msadb_query *q, int want_hits, size_t hits_cap, qhdr *h, char **payload,
                      size_t *len)
{
    memset(h, 0, sizeof *h);
    const msadb_signature *sig = msadb_shards_signature(m->sh);
    if (!q || !q->q || q->n_query == 0 || q->n_query > UINT32_MAX || (q->n_spaces && !q->spaces))
        return h->rc = MSADB_EINVAL;
    if (q->n_where) /* metadata filters are not sent to the ranks */
        return h->rc = MSADB_ENOTSUP;
    size_t names = 0;
    for (size_t i = 0; i < q->n_spaces; i++) {
        if (!q->spaces[i])
            return h->rc = MSADB_EINVAL;
        names += strlen(q->spaces[i]) + 1;
    }
    size_t qbytes = q->n_query * sig->n_q_heads * sig->head_dim * sizeof(float);
    *payload = malloc(qbytes + names + 1);
    if (!*payload)
        return h->rc = MSADB_ENOMEM;
    memcpy(*payload, q->q, qbytes);
    size_t o = qbytes;
    for (size_t i = 0; i < q->n_spaces; i++) {
        size_t l = strlen(q->spaces[i]) + 1;
        memcpy(*payload + o, q->spaces[i], l);
        o += l;
    }
    *len = o;
    h->layer = q->layer;
    h->n_query = (uint32_t)q->n_query;
    h->n_spaces = (uint32_t)q->n_spaces;
    h->top_k = q->top_k;
    h->summary = q->summary;
    h->select = q->select;
    h->score = q->score;
    h->exact = q->exact;
    h->per_token = q->per_token;
    h->want_hits = want_hits;
    h->want_stats = q->stats != NULL;
    h->scale = q->scale;
    h->hits_cap = hits_cap;
    h->names_bytes = names;
    return 0;
}

/* The reduced result at the root: rows of [d outputs, LSE]. */
static int reduce_rows(msadb_mpi *m, size_t rows, size_t d)
{
    int rc;
    if (rows > INT32_MAX / (d + 1))
        return MSADB_ELIMIT;
    MPI_Request r;
    int mrc;
    if (m->reduce == MSADB_MPI_REDUCE_OP) {
        mrc = MPI_Ireduce(m->res, m->res2, (int)rows, m->row_t, m->op, m->root, m->comm, &r);
        return mrc != MPI_SUCCESS ? mpi_fail(m, mrc, "query reduction") : wait_one(m, &r, "query reduction");
    }
    float *all = NULL;
    size_t w = rows * (d + 1);
    if (m->rank == m->root && !(all = malloc((size_t)m->size * w * sizeof *all)))
        return MSADB_ENOMEM;
    mrc = MPI_Igather(m->res, (int)rows, m->row_t, all, (int)rows, m->row_t, m->root, m->comm, &r);
    rc = mrc != MPI_SUCCESS ? mpi_fail(m, mrc, "query gather") : wait_one(m, &r, "query gather");
    if (!rc && all) {
        memcpy(m->res2, all, w * sizeof *all);
        for (int k = 1; k < m->size; k++) {
            int len = (int)rows;
            lse_op(all + (size_t)k * w, m->res2, &len, &m->row_t);
        }
    }
    free(all);
    return rc;
}

/* The query statistics at the root: counts summed, times of the slowest
 * rank (as msadb_shards_attend does for its shards). */
static int reduce_stats(msadb_mpi *m, const msadb_query_stats *mine, msadb_query_stats *out)
{
    uint64_t c[3] = {mine->blocks_scanned, mine->blocks_read, mine->tokens_attended}, cs[3] = {0};
    double t[4] = {mine->scan_ms, mine->select_ms, mine->read_ms, mine->attend_ms}, ts[4] = {0};
    MPI_Request r[2];
    int mrc = MPI_Ireduce(c, cs, 3, MPI_UINT64_T, MPI_SUM, m->root, m->comm, &r[0]);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Ireduce(t, ts, 4, MPI_DOUBLE, MPI_MAX, m->root, m->comm, &r[1]);
    int rc = mrc != MPI_SUCCESS ? mpi_fail(m, mrc, "query statistics") : wait_all(m, 2, r, "query statistics");
    if (!rc && out) {
        out->blocks_scanned = cs[0];
        out->blocks_read = cs[1];
        out->tokens_attended = cs[2];
        out->scan_ms = ts[0];
        out->select_ms = ts[1];
        out->read_ms = ts[2];
        out->attend_ms = ts[3];
    }
    return rc;
}

/* Gathers every rank's hits at the root and merges them. */
static int gather_hits(msadb_mpi *m, const msadb_query *q, size_t n_local, size_t total_local, msadb_hit *out,
                       size_t cap, size_t *n_out, uint64_t *bytes)
{
    uint64_t mine[2] = {n_local, total_local}, *counts = NULL;
    int is_root = m->rank == m->root;
    if (is_root && !(counts = malloc((size_t)m->size * 2 * sizeof *counts)))
        return MSADB_ENOMEM;
    MPI_Request r;
    int mrc = MPI_Igather(mine, 2, MPI_UINT64_T, counts, 2, MPI_UINT64_T, m->root, m->comm, &r);
    int rc = mrc != MPI_SUCCESS ? mpi_fail(m, mrc, "hits count") : wait_one(m, &r, "hits count");
    if (rc) {
        free(counts);
        return rc;
    }
    *bytes += sizeof mine + n_local * sizeof(msadb_hit);
    int *rcounts = NULL, *displs = NULL;
    msadb_hit *all = NULL;
    size_t total = 0, all_n = 0;
    if (is_root) {
        rcounts = malloc((size_t)m->size * sizeof *rcounts);
        displs = malloc((size_t)m->size * sizeof *displs);
        for (int i = 0; i < m->size; i++)
            all_n += counts[2 * i];
        all = malloc((all_n + 1) * sizeof *all);
        if (!rcounts || !displs || !all || all_n * sizeof(msadb_hit) > INT32_MAX)
            rc = MSADB_ENOMEM;
        size_t o = 0;
        for (int i = 0; !rc && i < m->size; i++) {
            rcounts[i] = (int)(counts[2 * i] * sizeof(msadb_hit));
            displs[i] = (int)(o * sizeof(msadb_hit));
            o += counts[2 * i];
            total += counts[2 * i + 1];
        }
    }
    /* the root must take part even when it cannot hold the hits */
    if (rc && is_root) {
        free(rcounts);
        free(displs);
        free(all);
        free(counts);
        m->broken = 1;
        set_err(m, "out of memory gathering %zu hits", all_n);
        return rc;
    }
    mrc = MPI_Igatherv(m->hits, (int)(n_local * sizeof(msadb_hit)), MPI_BYTE, all, rcounts, displs, MPI_BYTE,
                       m->root, m->comm, &r);
    rc = mrc != MPI_SUCCESS ? mpi_fail(m, mrc, "hits gather") : wait_one(m, &r, "hits gather");
    if (!rc && is_root) {
        const msadb_hit **parts = malloc((size_t)m->size * sizeof *parts);
        size_t *cnt = malloc((size_t)m->size * sizeof *cnt);
        if (!parts || !cnt)
            rc = MSADB_ENOMEM;
        for (int i = 0; !rc && i < m->size; i++) {
            parts[i] = all + displs[i] / (int)sizeof(msadb_hit);
            cnt[i] = counts[2 * i];
        }
        if (!rc)
            rc = msadb_shards_hits_merge(q, msadb_shards_signature(m->sh)->n_kv_heads, parts, cnt,
                                         (size_t)m->size, out, cap, n_out);
        if (!rc && q->exact)
            *n_out = total;
        free(parts);
        free(cnt);
    }
    free(rcounts);
    free(displs);
    free(all);
    free(counts);
    return rc;
}

int msadb_mpi_attend(msadb_mpi *m, const msadb_query *q, float *out, float *lse, msadb_hit *hits, size_t hits_cap,
                     size_t *n_hits, uint64_t *bytes)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    const msadb_signature *sig = msadb_shards_signature(m->sh);
    int is_root = m->rank == m->root;
    qhdr h;
    char *payload = NULL;
    size_t plen = 0;
    uint64_t moved = 0;
    memset(&h, 0, sizeof h);
    if (is_root && !query_pack(m, q, hits || n_hits, hits ? hits_cap : 0, &h, &payload, &plen) && (!out || !lse))
        h.rc = MSADB_EINVAL;
    if ((rc = bcast(m, &h, sizeof h, "query broadcast"))) {
        free(payload);
        return rc;
    }
    if (h.rc) {
        free(payload);
        if (!m->err[0])
            set_err(m, "query: %s", msadb_strerror(h.rc));
        return h.rc;
    }
    size_t rows = (size_t)h.n_query * sig->n_q_heads, d = sig->head_dim;
    size_t qbytes = rows * d * sizeof(float);
    plen = qbytes + h.names_bytes;
    if (!is_root && !(payload = malloc(plen + 1)))
        rc = MSADB_ENOMEM; /* cannot take part: the deadline of the others ends it */
    if (rc || (rc = bcast(m, payload, plen, "query broadcast"))) {
        free(payload);
        m->broken = 1;
        return rc;
    }
    moved += sizeof h + plen;
    /* the query, rebuilt from the bytes */
    const char **names = h.n_spaces ? malloc(h.n_spaces * sizeof *names) : NULL;
    if (h.n_spaces && !names) {
        free(payload);
        m->broken = 1;
        return MSADB_ENOMEM;
    }
    size_t o = qbytes;
    for (uint32_t i = 0; i < h.n_spaces; i++) {
        names[i] = payload + o;
        o += strlen(payload + o) + 1;
    }
    msadb_query lq;
    msadb_query_init(&lq);
    lq.layer = h.layer;
    lq.q = (const float *)payload;
    lq.n_query = h.n_query;
    lq.spaces = names;
    lq.n_spaces = h.n_spaces;
    lq.top_k = h.top_k;
    lq.select = h.select;
    lq.summary = h.summary;
    lq.score = h.score;
    lq.scale = h.scale;
    lq.exact = h.exact;
    lq.per_token = h.per_token;
    msadb_query_stats st;
    memset(&st, 0, sizeof st);
    lq.stats = &st;
    /* local attention over this rank's shards */
    size_t n_local = 0, total_local = 0;
    size_t room = h.exact ? (size_t)h.hits_cap
                          : (size_t)h.top_k * sig->n_kv_heads * (h.per_token ? h.n_query : 1) *
                                (h.select == MSADB_SELECT_DOCUMENTS ? 4 : 1);
    if ((rc = grow_to(&m->res, &m->res_cap, 2 * rows * (d + 1), sizeof(float))) ||
        (h.want_hits && (rc = grow_to(&m->hits, &m->hits_cap, room + 1, sizeof(msadb_hit)))))
        goto done;
    m->res2 = m->res + rows * (d + 1);
    float *lo = m->res2, *ll = m->res2 + rows * d; /* scratch: separate arrays, then rows */
    if (!m->snap)
        rc = msadb_shards_snapshot_begin(m->sh, &m->snap);
    else
        rc = msadb_shards_snapshot_renew(m->snap);
    if (!rc)
        rc = msadb_shards_attend(m->snap, &lq, lo, ll, h.want_hits ? m->hits : NULL, h.want_hits ? room : 0,
                                 &total_local);
    if (!rc && h.want_hits && !h.exact && total_local > room) {
        /* more than the room: take the whole selection */
        if (!(rc = grow_to(&m->hits, &m->hits_cap, total_local + 1, sizeof(msadb_hit))))
            rc = msadb_shards_retrieve(m->snap, &lq, m->hits, total_local, &total_local);
        room = total_local;
    }
    n_local = total_local < room ? total_local : room;
    if (!rc)
        for (size_t r = 0; r < rows; r++) {
            memcpy(m->res + r * (d + 1), lo + r * d, d * sizeof(float));
            m->res[r * (d + 1) + d] = ll[r];
        }
    if (rc)
        set_err(m, "query on shards %d, %d+%d, ...: %s", m->rank, m->rank, m->size, msadb_strerror(rc));
done:
    free(names);
    if ((rc = agree(m, rc, "query"))) {
        free(payload);
        return rc;
    }
    moved += sizeof(int32_t) + rows * (d + 1) * sizeof(float);
    if ((rc = reduce_rows(m, rows, d)) ||
        (h.want_hits && (rc = gather_hits(m, &lq, n_local, total_local, hits, hits_cap, n_hits, &moved)))) {
        free(payload);
        return rc;
    }
    if (h.want_stats && (rc = reduce_stats(m, &st, is_root ? q->stats : NULL))) {
        free(payload);
        return rc;
    }
    if (is_root)
        for (size_t r = 0; r < rows; r++) {
            memcpy(out + r * d, m->res2 + r * (d + 1), d * sizeof(float));
            lse[r] = m->res2[r * (d + 1) + d];
        }
    free(payload);
    if (bytes)
        *bytes = moved;
    return 0;
}

/* ---- ingest ------------------------------------------------------------- */

/* A document as bytes: a header of u64 fields, then space, title, meta,
 * text, token ids, spans, keys, values. */
enum { DH_SPACE, DH_TITLE, DH_META, DH_TEXT, DH_IDS, DH_SPANS, DH_KV, DH_NTOK, DH_DTYPE, DH_EXPIRES, DH_N };

static size_t dtype_bytes(int t) { return t == MSADB_DTYPE_F32 ? 4 : t == MSADB_DTYPE_F16 || t == MSADB_DTYPE_BF16 ? 2 : 0; }

static int doc_pack(const msadb_signature *sig, const msadb_doc *doc, char **buf, size_t *len)
{
    uint64_t h[DH_N] = {0};
    size_t es = dtype_bytes(doc->kv_dtype);
    if (!es || !doc->keys || !doc->values || doc->n_tokens == 0)
        return MSADB_EINVAL;
    h[DH_SPACE] = doc->space ? strlen(doc->space) : 0;
    h[DH_TITLE] = doc->title ? strlen(doc->title) : 0;
    h[DH_META] = doc->meta ? doc->meta_len : 0;
    h[DH_TEXT] = doc->text ? doc->text_len : 0;
    h[DH_IDS] = doc->token_ids ? doc->n_tokens * sizeof(int32_t) : 0;
    h[DH_SPANS] = doc->token_spans ? doc->n_tokens * 2 * sizeof(int64_t) : 0;
    h[DH_KV] = (uint64_t)msadb_signature_planes(sig) * doc->n_tokens * sig->head_dim * es;
    h[DH_NTOK] = doc->n_tokens;
    h[DH_DTYPE] = (uint64_t)doc->kv_dtype;
    h[DH_EXPIRES] = (uint64_t)doc->expires;
    size_t n = sizeof h;
    for (int i = DH_SPACE; i <= DH_SPANS; i++)
        n += h[i];
    n += 2 * h[DH_KV];
    if (n > INT32_MAX)
        return MSADB_ELIMIT;
    char *b = malloc(n);
    if (!b)
        return MSADB_ENOMEM;
    memcpy(b, h, sizeof h);
    size_t o = sizeof h;
    const void *src[] = {doc->space, doc->title, doc->meta, doc->text, doc->token_ids, doc->token_spans};
    for (int i = DH_SPACE; i <= DH_SPANS; i++) {
        if (h[i])
            memcpy(b + o, src[i], h[i]);
        o += h[i];
    }
    memcpy(b + o, doc->keys, h[DH_KV]);
    memcpy(b + o + h[DH_KV], doc->values, h[DH_KV]);
    *buf = b;
    *len = n;
    return 0;
}

/* A view of a packed document; the strings are copied into names. */
static int doc_unpack(const char *b, size_t n, msadb_doc *doc, char space[MSADB_NAME_MAX + 1],
                      char title[MSADB_TITLE_MAX + 1])
{
    uint64_t h[DH_N];
    if (n < sizeof h)
        return MSADB_ECORRUPT;
    memcpy(h, b, sizeof h);
    size_t need = sizeof h;
    for (int i = DH_SPACE; i <= DH_SPANS; i++)
        need += h[i];
    need += 2 * h[DH_KV];
    if (need != n || h[DH_SPACE] > MSADB_NAME_MAX || h[DH_TITLE] > MSADB_TITLE_MAX)
        return MSADB_ECORRUPT;
    memset(doc, 0, sizeof *doc);
    size_t o = sizeof h;
    memcpy(space, b + o, h[DH_SPACE]);
    space[h[DH_SPACE]] = 0;
    o += h[DH_SPACE];
    memcpy(title, b + o, h[DH_TITLE]);
    title[h[DH_TITLE]] = 0;
    o += h[DH_TITLE];
    doc->space = h[DH_SPACE] ? space : NULL;
    doc->title = h[DH_TITLE] ? title : NULL;
    doc->meta = h[DH_META] ? b + o : NULL;
    doc->meta_len = h[DH_META];
    o += h[DH_META];
    doc->text = h[DH_TEXT] ? b + o : NULL;
    doc->text_len = h[DH_TEXT];
    o += h[DH_TEXT];
    doc->token_ids = h[DH_IDS] ? (const int32_t *)(const void *)(b + o) : NULL;
    o += h[DH_IDS];
    doc->token_spans = h[DH_SPANS] ? (const int64_t *)(const void *)(b + o) : NULL;
    o += h[DH_SPANS];
    doc->n_tokens = h[DH_NTOK];
    doc->kv_dtype = (int)h[DH_DTYPE];
    doc->expires = (int64_t)h[DH_EXPIRES];
    doc->keys = b + o;
    doc->values = b + o + h[DH_KV];
    return 0;
}

void msadb_mpi_batch_abort(msadb_mpi *m)
{
    if (!m)
        return;
    msadb_shards_batch_abort(m->batch);
    m->batch = NULL;
    free(m->loads);
    m->loads = NULL;
    free(m->owner);
    m->owner = NULL;
    m->n_added = m->owner_cap = 0;
}

int msadb_mpi_batch_begin(msadb_mpi *m)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    if (m->batch)
        return MSADB_ESTATE; /* the same answer on every rank: no exchange */
    end_snapshot(m);
    int is_root = m->rank == m->root;
    uint32_t N = m->n_shards, P = (uint32_t)m->size, per = (N + P - 1) / P;
    /* every shard's tokens at the root, for placement */
    uint64_t *mine = calloc(per, sizeof *mine), *all = NULL;
    if (is_root) {
        all = calloc((size_t)per * P, sizeof *all);
        m->loads = calloc(N, sizeof *m->loads);
    }
    if (!mine || (is_root && (!all || !m->loads)))
        rc = MSADB_ENOMEM;
    for (uint32_t i = 0; !rc && i < msadb_shards_local_count(m->sh); i++) {
        msadb_store *st;
        msadb_stat_info si;
        if (!(rc = msadb_shards_store(m->sh, (uint32_t)msadb_shards_local_index(m->sh, i), &st)) &&
            !(rc = msadb_stat(st, &si)))
            mine[i] = si.n_tokens;
    }
    if (!rc)
        rc = msadb_shards_batch_begin(m->sh, &m->batch);
    if (!(rc = agree(m, rc, "batch begin"))) {
        MPI_Request r;
        int mrc = MPI_Igather(mine, (int)per, MPI_UINT64_T, all, (int)per, MPI_UINT64_T, m->root, m->comm, &r);
        rc = mrc != MPI_SUCCESS ? mpi_fail(m, mrc, "batch begin") : wait_one(m, &r, "batch placement");
    }
    if (!rc && is_root)
        for (uint32_t s = 0; s < N; s++)
            m->loads[s] = all[(size_t)(s % P) * per + s / P];
    free(mine);
    free(all);
    if (rc)
        msadb_mpi_batch_abort(m);
    return rc;
}

int msadb_mpi_batch_add(msadb_mpi *m, const msadb_doc *doc)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    int is_root = m->rank == m->root;
    uint32_t P = (uint32_t)m->size;
    /* the root places the document: {shard, its own error} to everyone */
    int32_t h[2] = {0, 0};
    char *buf = NULL;
    size_t len = 0;
    if (is_root) {
        if (!m->batch)
            h[1] = MSADB_ESTATE;
        else if (!doc)
            h[1] = MSADB_EINVAL;
        else if (grow_to(&m->owner, &m->owner_cap, m->n_added + 1, sizeof *m->owner))
            h[1] = MSADB_ENOMEM;
        if (!h[1]) {
            h[0] = (int32_t)msadb_shards_pick(m->loads, m->n_shards);
            if ((int)((uint32_t)h[0] % P) != m->rank)
                h[1] = doc_pack(msadb_shards_signature(m->sh), doc, &buf, &len);
        }
        if (h[1])
            set_err(m, "document %zu: %s", m->n_added, msadb_strerror(h[1]));
    }
    if ((rc = bcast(m, h, sizeof h, "batch add"))) {
        free(buf);
        return rc;
    }
    if (h[1]) {
        free(buf);
        return h[1];
    }
    int owner = (int)((uint32_t)h[0] % P);
    int add_rc = 0;
    if (owner == m->rank && is_root) {
        add_rc = msadb_shards_batch_add_to(m->batch, (uint32_t)h[0], doc);
    } else if (is_root) {
        rc = send_bytes(m, buf, len, owner, TAG_DOC, "batch add");
    } else if (owner == m->rank) {
        void *in;
        int n;
        if (!(rc = recv_bytes(m, m->root, TAG_DOC, &in, &n, "batch add"))) {
            msadb_doc d;
            char space[MSADB_NAME_MAX + 1], title[MSADB_TITLE_MAX + 1];
            if (!m->batch)
                add_rc = MSADB_ESTATE;
            else if (!(add_rc = doc_unpack(in, (size_t)n, &d, space, title)))
                add_rc = msadb_shards_batch_add_to(m->batch, (uint32_t)h[0], &d);
            free(in);
        }
    }
    free(buf);
    if (rc)
        return rc;
    if (add_rc)
        set_err(m, "document %zu on shard-%d: %s", m->n_added, h[0], msadb_strerror(add_rc));
    if ((rc = agree(m, add_rc, "batch add")))
        return rc; /* the batch is unchanged and may still be committed */
    if (is_root) {
        m->loads[h[0]] += doc->n_tokens;
        m->owner[m->n_added] = (uint32_t)owner;
    }
    m->n_added++;
    return 0;
}

int msadb_mpi_batch_commit(msadb_mpi *m, uint64_t *ids)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    if (!m->batch)
        return MSADB_ESTATE;
    int is_root = m->rank == m->root;
    uint32_t P = (uint32_t)m->size;
    size_t mine_n = msadb_shards_batch_count(m->batch), nd = m->n_added;
    uint64_t *got = malloc((mine_n + 1) * sizeof *got);
    rc = got ? msadb_shards_batch_commit(m->batch, got) : MSADB_ENOMEM;
    m->batch = NULL;
    if (rc)
        set_err(m, "commit: %s", msadb_strerror(rc));
    if ((rc = agree(m, rc, "batch commit"))) {
        free(got);
        msadb_mpi_batch_abort(m);
        return rc;
    }
    /* the ids back to the root, rank by rank, in each rank's order */
    int *cnt = NULL, *disp = NULL;
    uint64_t *gids = NULL;
    if (is_root) {
        cnt = calloc(P, sizeof *cnt);
        disp = calloc(P, sizeof *disp);
        gids = malloc((nd + 1) * sizeof *gids);
        if (!cnt || !disp || !gids)
            rc = MSADB_ENOMEM;
        for (size_t i = 0; !rc && i < nd; i++)
            cnt[m->owner[i]]++;
        for (uint32_t k = 1; !rc && k < P; k++)
            disp[k] = disp[k - 1] + cnt[k - 1];
    }
    if (!rc) {
        MPI_Request r;
        int mrc = MPI_Igatherv(got, (int)mine_n, MPI_UINT64_T, gids, cnt, disp, MPI_UINT64_T, m->root, m->comm, &r);
        rc = mrc != MPI_SUCCESS ? mpi_fail(m, mrc, "batch ids") : wait_one(m, &r, "batch ids");
    } else {
        m->broken = 1; /* the others wait in the gather: their deadline ends it */
        set_err(m, "out of memory gathering %zu ids", nd);
    }
    if (!rc && is_root && ids) {
        memset(cnt, 0, P * sizeof *cnt);
        for (size_t i = 0; i < nd; i++) {
            uint32_t k = m->owner[i];
            ids[i] = gids[disp[k] + cnt[k]++];
        }
    }
    free(cnt);
    free(disp);
    free(gids);
    free(got);
    msadb_mpi_batch_abort(m);
    return rc;
}

int msadb_mpi_ingest(msadb_mpi *m, const msadb_doc *docs, size_t n_docs, uint64_t *ids)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    int is_root = m->rank == m->root;
    uint64_t hdr[2] = {is_root ? n_docs : 0, is_root && n_docs && !docs};
    if ((rc = bcast(m, hdr, sizeof hdr, "ingest")))
        return rc;
    if (hdr[1])
        return MSADB_EINVAL;
    if ((rc = msadb_mpi_batch_begin(m)))
        return rc;
    for (size_t i = 0; i < hdr[0]; i++)
        if ((rc = msadb_mpi_batch_add(m, is_root ? &docs[i] : NULL))) {
            msadb_mpi_batch_abort(m);
            return rc;
        }
    return msadb_mpi_batch_commit(m, ids);
}

/* ---- deletion, spaces --------------------------------------------------- */

int msadb_mpi_delete(msadb_mpi *m, const uint64_t *ids, size_t n)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    end_snapshot(m);
    int is_root = m->rank == m->root;
    uint64_t hdr[2] = {is_root ? n : 0, is_root && n && !ids};
    if ((rc = bcast(m, hdr, sizeof hdr, "delete")))
        return rc;
    if (hdr[1])
        return MSADB_EINVAL;
    size_t nn = hdr[0];
    uint64_t *all = malloc((nn + 1) * sizeof *all), *mine = malloc((nn + 1) * sizeof *mine);
    if (!all || !mine) {
        free(all);
        free(mine);
        m->broken = 1;
        return MSADB_ENOMEM;
    }
    if (is_root && nn)
        memcpy(all, ids, nn * sizeof *all);
    if ((rc = bcast(m, all, nn * sizeof *all, "delete"))) {
        free(all);
        free(mine);
        return rc;
    }
    size_t k = 0;
    msadb_shards_snapshot *s = NULL;
    rc = msadb_shards_snapshot_begin(m->sh, &s);
    for (size_t i = 0; !rc && i < nn; i++) {
        if (msadb_shards_id_shard(all[i], m->n_shards) % (uint32_t)m->size != (uint32_t)m->rank)
            continue;
        msadb_doc_info info;
        if ((rc = msadb_shards_doc_get(s, all[i], &info)))
            set_err(m, "document %llu: %s", (unsigned long long)all[i], msadb_strerror(rc));
        mine[k++] = all[i];
    }
    msadb_shards_snapshot_end(s);
    if (!(rc = agree(m, rc, "delete"))) {
        rc = k ? msadb_shards_doc_delete(m->sh, mine, k) : 0;
        rc = agree(m, rc, "delete");
    }
    free(all);
    free(mine);
    return rc;
}

int msadb_mpi_compact(msadb_mpi *m)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    end_snapshot(m);
    rc = msadb_shards_compact(m->sh);
    if (rc)
        set_err(m, "compact: %s", msadb_strerror(rc));
    return agree(m, rc, "compact");
}

/* Broadcasts the root's name; returns every rank's code of `fn` on it. */
static int space_op(msadb_mpi *m, const char *name, int creating)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    end_snapshot(m);
    char nm[MSADB_NAME_MAX + 2] = {0};
    if (m->rank == m->root) {
        if (!name || strlen(name) > MSADB_NAME_MAX)
            nm[MSADB_NAME_MAX + 1] = 1; /* invalid: everyone returns EINVAL */
        else
            snprintf(nm, MSADB_NAME_MAX + 1, "%s", name);
    }
    if ((rc = bcast(m, nm, sizeof nm, creating ? "space create" : "space drop")))
        return rc;
    if (nm[MSADB_NAME_MAX + 1])
        return MSADB_EINVAL;
    rc = creating ? msadb_shards_space_create(m->sh, nm, NULL) : msadb_shards_space_drop(m->sh, nm);
    int benign = creating ? MSADB_EEXIST : MSADB_ENOTFOUND;
    vote *v = NULL;
    /* EEXIST / ENOTFOUND only where every rank says so */
    int arc = agree_all(m, rc == benign ? 0 : rc, creating ? "space create" : "space drop", &v);
    if (arc || !v) {
        free(v);
        return arc;
    }
    MPI_Request r;
    int local_benign = rc == benign, all_benign = 0;
    int mrc = MPI_Iallreduce(&local_benign, &all_benign, 1, MPI_INT, MPI_LAND, m->comm, &r);
    free(v);
    if ((rc = mrc != MPI_SUCCESS ? mpi_fail(m, mrc, "space") : wait_one(m, &r, "space")))
        return rc;
    return all_benign ? benign : 0;
}

int msadb_mpi_space_create(msadb_mpi *m, const char *name) { return space_op(m, name, 1); }
int msadb_mpi_space_drop(msadb_mpi *m, const char *name) { return space_op(m, name, 0); }

typedef struct info_vec {
    void *v;
    size_t n, cap, size;
} info_vec;

static int vec_push(info_vec *a, const void *x)
{
    if (a->n == a->cap && grow_to(&a->v, &a->cap, a->cap ? 2 * a->cap : 16, a->size))
        return MSADB_ENOMEM;
    memcpy((char *)a->v + a->n++ * a->size, x, a->size);
    return 0;
}

static int space_push(const msadb_space_info *info, void *ud) { return vec_push(ud, info); }

/* Gathers every rank's bytes at the root (counts then data). */
static int gather_var(msadb_mpi *m, const void *buf, size_t len, char **all, int **lens, int **displs,
                      const char *what)
{
    int mine = (int)len, rc;
    *all = NULL;
    *lens = *displs = NULL;
    if (len > INT32_MAX)
        return MSADB_ELIMIT;
    int is_root = m->rank == m->root;
    if (is_root && (!(*lens = calloc((size_t)m->size, sizeof **lens)) ||
                    !(*displs = calloc((size_t)m->size, sizeof **displs))))
        return MSADB_ENOMEM;
    MPI_Request r;
    int mrc = MPI_Igather(&mine, 1, MPI_INT, *lens, 1, MPI_INT, m->root, m->comm, &r);
    if ((rc = mrc != MPI_SUCCESS ? mpi_fail(m, mrc, what) : wait_one(m, &r, what)))
        return rc;
    size_t total = 0;
    if (is_root) {
        for (int i = 0; i < m->size; i++) {
            (*displs)[i] = (int)total;
            total += (size_t)(*lens)[i];
        }
        if (total > INT32_MAX || !(*all = malloc(total + 1))) {
            m->broken = 1;
            return MSADB_ENOMEM;
        }
    }
    mrc = MPI_Igatherv(buf, mine, MPI_BYTE, *all, *lens, *displs, MPI_BYTE, m->root, m->comm, &r);
    return mrc != MPI_SUCCESS ? mpi_fail(m, mrc, what) : wait_one(m, &r, what);
}

static int space_name_cmp(const void *x, const void *y)
{
    return strcmp(((const msadb_space_info *)x)->name, ((const msadb_space_info *)y)->name);
}

int msadb_mpi_space_list(msadb_mpi *m, int (*cb)(const msadb_space_info *, void *), void *ud)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    info_vec a = {NULL, 0, 0, sizeof(msadb_space_info)};
    rc = msadb_shards_space_list(m->sh, space_push, &a);
    if ((rc = agree(m, rc, "space list"))) {
        free(a.v);
        return rc;
    }
    char *all;
    int *lens, *displs;
    rc = gather_var(m, a.v, a.n * a.size, &all, &lens, &displs, "space list");
    if (!rc && m->rank == m->root) {
        size_t n = 0, total = (size_t)displs[m->size - 1] + (size_t)lens[m->size - 1];
        msadb_space_info *v = (msadb_space_info *)(void *)all;
        size_t cnt = total / sizeof *v;
        /* the ranks' entries of a name summed, in rank order: the id is
         * rank 0's (its lowest shard's, as msadb_shards_space_list) */
        for (size_t i = 0; i < cnt; i++) {
            size_t j = 0;
            while (j < n && strcmp(v[j].name, v[i].name) != 0)
                j++;
            if (j < n) {
                v[j].n_documents += v[i].n_documents;
                v[j].n_tokens += v[i].n_tokens;
            } else {
                v[n++] = v[i];
            }
        }
        qsort(v, n, sizeof *v, space_name_cmp);
        for (size_t i = 0; i < n && !rc && cb; i++)
            rc = cb(&v[i], ud);
    }
    free(all);
    free(lens);
    free(displs);
    free(a.v);
    return rc;
}

/* ---- listing and fetching documents ------------------------------------- */

/* The end of a walk that fed the root's callback: a broken exchange (rc),
 * else every rank's own result agreed, else the callback's return. */
static int root_walk_end(msadb_mpi *m, int rc, int local_rc, int cb_rc, const char *what)
{
    if (rc || (rc = agree(m, local_rc, what)))
        return rc;
    return m->rank == m->root ? cb_rc : 0;
}

typedef struct list_send {
    msadb_mpi *m;
    msadb_doc_info buf[LIST_CHUNK];
    size_t n;
    uint32_t shard;
    int (*cb)(const msadb_doc_info *, void *); /* on the root: the caller's */
    void *ud;
    int cb_rc;
} list_send;

static int list_flush(list_send *l)
{
    int rc = send_bytes(l->m, l->buf, l->n * sizeof l->buf[0], l->m->root, TAG_LIST, "doc list");
    l->n = 0;
    return rc;
}

static int list_one(const msadb_doc_info *info, void *ud)
{
    list_send *l = ud;
    msadb_doc_info g = *info;
    g.id = msadb_shards_id_global(g.id, l->shard, l->m->n_shards);
    g.first_block = msadb_shards_id_global(g.first_block, l->shard, l->m->n_shards);
    if (l->m->rank == l->m->root) {
        if (!l->cb_rc)
            l->cb_rc = l->cb(&g, l->ud);
        return 0;
    }
    l->buf[l->n++] = g;
    return l->n == LIST_CHUNK ? list_flush(l) : 0;
}

int msadb_mpi_doc_list(msadb_mpi *m, const char *space, int (*cb)(const msadb_doc_info *, void *), void *ud)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    char sp[MSADB_NAME_MAX + 2] = {0};
    int is_root = m->rank == m->root;
    if (is_root && space)
        snprintf(sp + 1, MSADB_NAME_MAX + 1, "%s", space), sp[0] = 1;
    if (is_root && !cb)
        sp[0] = 2;
    if ((rc = bcast(m, sp, sizeof sp, "doc list")))
        return rc;
    if (sp[0] == 2)
        return MSADB_EINVAL;
    const char *want = sp[0] ? sp + 1 : NULL;
    /* a space unknown anywhere fails on every rank before any listing */
    msadb_space_info si;
    rc = want ? msadb_shards_space_get(m->sh, want, &si) : 0;
    if ((rc = agree(m, rc, "doc list")))
        return rc;
    list_send *l = calloc(1, sizeof *l);
    if (!l) {
        m->broken = 1;
        return MSADB_ENOMEM;
    }
    l->m = m;
    l->cb = cb;
    l->ud = ud;
    int local_rc = 0;
    for (uint32_t s = 0; s < m->n_shards && !rc; s++) {
        int owner = (int)(s % (uint32_t)m->size);
        if (owner == m->rank) {
            msadb_store *st;
            msadb_snapshot *snap;
            l->shard = s;
            if (!local_rc && !(local_rc = msadb_shards_store(m->sh, s, &st)) &&
                !(local_rc = msadb_snapshot_begin(st, &snap))) {
                local_rc = msadb_doc_list(snap, want, list_one, l);
                msadb_snapshot_end(snap);
            }
            if (m->broken)
                rc = local_rc;
            else if (!is_root && (!l->n || !(rc = list_flush(l))))
                rc = list_flush(l); /* an empty chunk: the end of this shard */
        } else if (is_root) {
            for (;;) {
                void *buf;
                int len;
                if ((rc = recv_bytes(m, owner, TAG_LIST, &buf, &len, "doc list")))
                    break;
                size_t cnt = (size_t)len / sizeof(msadb_doc_info);
                const msadb_doc_info *v = buf;
                for (size_t i = 0; i < cnt; i++)
                    if (!l->cb_rc)
                        l->cb_rc = cb(&v[i], ud);
                free(buf);
                if (cnt == 0)
                    break;
            }
        }
    }
    int cb_rc = l->cb_rc;
    free(l);
    return root_walk_end(m, rc, local_rc, cb_rc, "doc list");
}

/* A fetched document: rc, info, text length, spans count, then the bytes. */
typedef struct fetch_hdr {
    int32_t rc;
    msadb_doc_info info;
    uint64_t text_len, n_spans;
} fetch_hdr;

static int fetch_pack(msadb_shards_snapshot *s, uint64_t id, char **buf, size_t *len)
{
    fetch_hdr h;
    memset(&h, 0, sizeof h);
    h.rc = msadb_shards_doc_get(s, id, &h.info);
    if (!h.rc) {
        h.text_len = h.info.text_len;
        h.n_spans = h.info.has_spans ? h.info.n_tokens : 0;
    }
    size_t n = sizeof h + h.text_len + h.n_spans * 2 * sizeof(int64_t);
    char *b = malloc(n + 1);
    if (!b)
        return MSADB_ENOMEM;
    size_t got;
    if (!h.rc && h.text_len && (h.rc = msadb_shards_doc_text(s, id, b + sizeof h, h.text_len + 1, &got)))
        h.text_len = h.n_spans = 0;
    if (!h.rc && h.n_spans &&
        (h.rc = msadb_shards_doc_tokens(s, id, NULL, (int64_t *)(void *)(b + sizeof h + h.text_len), h.n_spans)))
        h.text_len = h.n_spans = 0;
    memcpy(b, &h, sizeof h);
    *buf = b;
    *len = sizeof h + h.text_len + h.n_spans * 2 * sizeof(int64_t);
    return 0;
}

static int fetch_deliver(const char *b, size_t n, uint64_t id, msadb_mpi_doc_cb cb, void *ud)
{
    fetch_hdr h;
    if (n < sizeof h)
        return MSADB_ECORRUPT;
    memcpy(&h, b, sizeof h);
    if (n != sizeof h + h.text_len + h.n_spans * 2 * sizeof(int64_t))
        return MSADB_ECORRUPT;
    char *text = NULL;
    int64_t *spans = NULL;
    if (h.text_len && !(text = malloc(h.text_len + 1)))
        return MSADB_ENOMEM;
    if (text) {
        memcpy(text, b + sizeof h, h.text_len);
        text[h.text_len] = 0;
    }
    if (h.n_spans && !(spans = malloc(h.n_spans * 2 * sizeof *spans))) {
        free(text);
        return MSADB_ENOMEM;
    }
    if (spans)
        memcpy(spans, b + sizeof h + h.text_len, h.n_spans * 2 * sizeof *spans);
    int rc = cb(id, h.rc, h.rc ? NULL : &h.info, text, spans, ud);
    free(text);
    free(spans);
    return rc;
}

int msadb_mpi_doc_fetch(msadb_mpi *m, const uint64_t *ids, size_t n, msadb_mpi_doc_cb cb, void *ud)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    int is_root = m->rank == m->root;
    uint64_t hdr[2] = {is_root ? n : 0, is_root && ((n && !ids) || !cb)};
    if ((rc = bcast(m, hdr, sizeof hdr, "doc fetch")))
        return rc;
    if (hdr[1])
        return MSADB_EINVAL;
    size_t nn = hdr[0];
    uint64_t *all = malloc((nn + 1) * sizeof *all);
    if (!all) {
        m->broken = 1;
        return MSADB_ENOMEM;
    }
    if (is_root && nn)
        memcpy(all, ids, nn * sizeof *all);
    if ((rc = bcast(m, all, nn * sizeof *all, "doc fetch"))) {
        free(all);
        return rc;
    }
    int local_rc = m->snap ? msadb_shards_snapshot_renew(m->snap) : msadb_shards_snapshot_begin(m->sh, &m->snap);
    int cb_rc = 0;
    for (size_t i = 0; i < nn && !rc; i++) {
        int owner = (int)(msadb_shards_id_shard(all[i], m->n_shards) % (uint32_t)m->size);
        if (owner != m->rank && !is_root)
            continue;
        char *buf = NULL;
        int len = 0;
        size_t slen = 0;
        if (owner == m->rank) {
            if (local_rc || (local_rc = fetch_pack(m->snap, all[i], &buf, &slen))) {
                fetch_hdr h; /* still answer, with the error */
                memset(&h, 0, sizeof h);
                h.rc = local_rc;
                buf = malloc(sizeof h);
                if (!buf) {
                    m->broken = 1;
                    rc = MSADB_ENOMEM;
                    break;
                }
                memcpy(buf, &h, sizeof h);
                slen = sizeof h;
            }
            if (!is_root)
                rc = send_bytes(m, buf, slen, m->root, TAG_FETCH, "doc fetch");
            len = (int)slen;
        } else {
            void *vb;
            rc = recv_bytes(m, owner, TAG_FETCH, &vb, &len, "doc fetch");
            buf = vb;
        }
        if (!rc && is_root && !cb_rc)
            cb_rc = fetch_deliver(buf, (size_t)len, all[i], cb, ud);
        free(buf);
    }
    free(all);
    return root_walk_end(m, rc, local_rc, cb_rc, "doc fetch");
}

/* ---- verify ------------------------------------------------------------- */

typedef struct report_buf {
    char *b;
    size_t n, cap;
    size_t dropped;
} report_buf;

static void report_keep(const char *problem, void *ud)
{
    report_buf *r = ud;
    size_t l = strlen(problem) + 1;
    if (r->n + l > REPORT_MAX) {
        r->dropped++;
        return;
    }
    if (grow_to(&r->b, &r->cap, r->n + l, 1)) {
        r->dropped++;
        return;
    }
    memcpy(r->b + r->n, problem, l);
    r->n += l;
}

int msadb_mpi_verify(msadb_mpi *m, void (*report)(const char *, void *), void *ud)
{
    int rc = begin_op(m);
    if (rc)
        return rc;
    report_buf rb = {0};
    int vrc = msadb_shards_verify(m->sh, report_keep, &rb);
    if (rb.dropped) {
        char line[96];
        snprintf(line, sizeof line, "... and %zu more problems", rb.dropped);
        rb.dropped = 0;
        report_keep(line, &rb);
    }
    vote *v = NULL;
    /* ECORRUPT is an answer, not a failure of the check */
    rc = agree_all(m, vrc == MSADB_ECORRUPT ? 0 : vrc, "verify", &v);
    int corrupt = 0;
    char *all = NULL;
    int *lens = NULL, *displs = NULL;
    if (!rc) {
        int local_bad = vrc == MSADB_ECORRUPT;
        MPI_Request r;
        int mrc = MPI_Iallreduce(&local_bad, &corrupt, 1, MPI_INT, MPI_LOR, m->comm, &r);
        rc = mrc != MPI_SUCCESS ? mpi_fail(m, mrc, "verify") : wait_one(m, &r, "verify");
    }
    if (!rc)
        rc = gather_var(m, rb.b, rb.n, &all, &lens, &displs, "verify");
    if (!rc && m->rank == m->root && report)
        for (int k = 0; k < m->size; k++)
            for (int o = 0; o < lens[k];) {
                const char *line = all + displs[k] + o;
                char msg[1400];
                snprintf(msg, sizeof msg, "rank %d: %s", k, line);
                report(msg, ud);
                o += (int)strlen(line) + 1;
            }
    free(v);
    free(all);
    free(lens);
    free(displs);
    free(rb.b);
    return rc ? rc : corrupt ? MSADB_ECORRUPT : 0;
}
