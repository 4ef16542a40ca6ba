/* ingest.c -- batches: documents are validated and encoded (quantized,
 * compressed, summarized) outside any transaction by msadb_batch_add();
 * msadb_batch_commit() then assigns ids, seals blocks when the store is
 * encrypted and writes everything in one LMDB write transaction.  A batch
 * may also commit in chunks (msadb_batch_flush(), or by itself past the
 * limits of msadb_batch_set_flush()), whole documents at a time, and skips
 * documents whose key is already stored.
 *
 * Threads (msadb_batch_set_threads): a document's blocks are encoded by up
 * to that many threads, and with more than one a chunk that add() commits by
 * itself is written by the batch's writer thread while the next chunk is
 * encoded (two chunks at most: the one being written and the one being
 * filled).  The bytes stored do not depend on the thread count: every
 * encoder writes its blocks to their own places, merged in block order, and
 * chunks end where the flush policy says, in add order. */
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/codec.h"
#include "core/crypto.h"
#include "core/kernels.h"
#include "store/index.h"
#include "store/store_impl.h"

/* ------------------------------------------------------------------------ */
/* Batches                                                                  */
/* ------------------------------------------------------------------------ */

/* A growable byte buffer. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t more)
{
    return msadb_grow(&b->p, &b->cap, b->len + more, 1, 4096);
}

static int buf_append(buf_t *b, const void *data, size_t len)
{
    int rc = buf_reserve(b, len);
    if (rc)
        return rc;
    if (len)
        memcpy(b->p + b->len, data, len);
    b->len += len;
    return 0;
}

/* One encoded document of a batch.  Offsets point into its chunk's arena. */
typedef struct {
    char space[MSADB_NAME_MAX + 1];
    uint64_t n_tokens, n_blocks;
    size_t title_off, title_len, meta_off, meta_len, text_off, text_len;
    size_t ids_off, spans_off; /* (size_t)-1 when absent */
    size_t key_off, key_len;   /* key_len 0: no key */
    size_t blocks_off;         /* n_planes * n_blocks (offset u64, length u64) pairs in the arena */
    size_t summ_off;           /* [plane][block] summary entries */
    int64_t created, expires;
} batch_doc;

/* Documents held for one commit: their records, their encoded bytes, the
 * deletions that go with them and, once written, their ids. */
typedef struct {
    batch_doc *docs;
    size_t n_docs, cap_docs;
    buf_t arena;
    uint64_t held_tokens;
    uint64_t *del; /* documents msadb_batch_delete() named, deleted at commit */
    size_t n_del, del_cap;
    uint64_t *ids;
    size_t cap_ids;
} chunk;

static int chunk_held(const chunk *c) { return c->n_docs || c->n_del; }

static void chunk_clear(chunk *c)
{
    c->n_docs = 0;
    c->arena.len = 0;
    c->held_tokens = 0;
    c->n_del = 0;
}

static void chunk_free(chunk *c)
{
    free(c->docs);
    free(c->arena.p);
    free(c->del);
    free(c->ids);
}

/* Adds ids to the chunk's deletions, each once. */
static int chunk_delete(chunk *c, const uint64_t *ids, size_t n)
{
    if (msadb_grow(&c->del, &c->del_cap, c->n_del + n + 1, sizeof *c->del, 16))
        return MSADB_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < c->n_del && c->del[j] != ids[i])
            j++;
        if (j == c->n_del) /* a repeated id is deleted once */
            c->del[c->n_del++] = ids[i];
    }
    return 0;
}

/* Encoding state of one thread: its codec and one block of scratch.  A
 * document's blocks are encoded by up to b->threads workers, each into its
 * own output buffer, merged into the arena in order afterwards. */
#define MAX_INGEST_THREADS 8
#define ENCODE_MIN_ITEMS 16 /* blocks x planes below which one thread is faster */

typedef struct {
    msadb_codec *codec;
    float *k, *v, *kdeq; /* [block_size][d] */
    buf_t out;           /* encoded blocks of this worker's items */
} encoder;

/* One worker's part in a document: it takes items (item p * n_blocks + j
 * is block j of plane p) one at a time from the shared counter *next until
 * all are taken, so a worker that the system pauses holds up at most one
 * item.  Encoded bytes go to the worker's buffer, owner[item] names the
 * worker; the directory entry (offset in that buffer, length) and the
 * summaries go straight to their reserved places in the arena. */
typedef struct {
    struct msadb_batch *b;
    const msadb_doc *doc;
    batch_doc *bd;
    encoder *e;
    uint64_t items, *next;
    uint8_t *owner;
    uint8_t idx;
    float key_max, value_max; /* largest magnitude the store holds, 0 = no limit */
    int rc;
} encode_job;

typedef struct {
    struct msadb_batch *b;
    int idx;
} helper_arg;

struct msadb_batch {
    msadb_store *st;
    chunk cur;      /* being filled by msadb_batch_add() */
    chunk fl;       /* handed to the writer thread, or left by a commit of it that failed */
    int threads;    /* msadb_batch_set_threads() */
    encoder enc[MAX_INGEST_THREADS];
    /* the encoding pool: helpers 1..n_helpers take jobs[1..pool_active] of
     * each document (generation pool_gen), the adding thread jobs[0] */
    encode_job jobs[MAX_INGEST_THREADS];
    pthread_t helpers[MAX_INGEST_THREADS];
    helper_arg helper_args[MAX_INGEST_THREADS];
    int n_helpers, pool_active, pool_pending, pool_quit;
    uint8_t *owner; /* per item of the document being encoded: its worker */
    size_t cap_owner;
    uint64_t pool_gen;
    pthread_mutex_t pool_mu;
    pthread_cond_t pool_go, pool_done;
    /* the writer thread: started by the first background commit */
    pthread_t writer;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int writer_on, quit;
    int fl_sent;         /* b->fl was handed to the writer and is not collected yet */
    int fl_busy, fl_rc;  /* under mu: the writer is at it; its result */
    /* flush policy (msadb_batch_set_flush) and counters */
    size_t max_docs, max_bytes;
    uint64_t max_tokens;
    msadb_commit_fn on_commit;
    void *user;
    uint64_t committed, commits, duplicates, last_duplicate;
};

static void encoder_free(encoder *e)
{
    msadb_codec_free(e->codec);
    free(e->k);
    free(e->v);
    free(e->kdeq);
    free(e->out.p);
    memset(e, 0, sizeof *e);
}

static int encoder_init(encoder *e, const msadb_store *st)
{
    if (e->codec)
        return 0;
    size_t n = (size_t)st->sig.block_size * st->sig.head_dim * sizeof(float);
    e->codec = msadb_codec_new(st->zstd_level);
    e->k = malloc(n);
    e->v = malloc(n);
    e->kdeq = malloc(n);
    if (e->codec && e->k && e->v && e->kdeq)
        return 0;
    encoder_free(e);
    return MSADB_ENOMEM;
}

/* Ingest threads: MSADB_INGEST_THREADS, else the online CPUs (at most 8). */
static int default_threads(void) { return msadb_env_threads("MSADB_INGEST_THREADS", MAX_INGEST_THREADS); }

int msadb_batch_begin(msadb_store *st, msadb_batch **out)
{
    if (!st || !out)
        return MSADB_EINVAL;
    *out = NULL;
    if (st->read_only)
        return MSADB_EREADONLY;
    msadb_batch *b = calloc(1, sizeof *b);
    if (!b)
        return MSADB_ENOMEM;
    b->st = st;
    b->threads = default_threads();
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    pthread_mutex_init(&b->pool_mu, NULL);
    pthread_cond_init(&b->pool_go, NULL);
    pthread_cond_init(&b->pool_done, NULL);
    if (encoder_init(&b->enc[0], st)) {
        msadb_batch_abort(b);
        return MSADB_ENOMEM;
    }
    *out = b;
    return 0;
}

int msadb_batch_set_threads(msadb_batch *b, int n)
{
    if (!b || n < 0 || n > MAX_INGEST_THREADS)
        return MSADB_EINVAL;
    b->threads = n ? n : default_threads();
    return 0;
}

int msadb_batch_threads(const msadb_batch *b) { return b ? b->threads : 0; }

size_t msadb_batch_count(const msadb_batch *b) { return b ? b->cur.n_docs + b->fl.n_docs : 0; }

int msadb_batch_delete(msadb_batch *b, const uint64_t *ids, size_t n)
{
    if (!b || (!ids && n))
        return MSADB_EINVAL;
    return chunk_delete(&b->cur, ids, n);
}
static int validate_doc(const msadb_store *st, const msadb_doc *d)
{
    if (!d || d->n_tokens < 1 || d->n_tokens > UINT32_MAX || !d->keys || !d->values)
        return MSADB_EINVAL;
    if (d->kv_dtype != MSADB_DTYPE_F32 && d->kv_dtype != MSADB_DTYPE_F16 && d->kv_dtype != MSADB_DTYPE_BF16)
        return MSADB_EDTYPE;
    if (d->space && !msadb_space_name_valid(d->space))
        return MSADB_EINVAL;
    if (d->title && strlen(d->title) > MSADB_TITLE_MAX)
        return MSADB_ELIMIT;
    if (d->title && !msadb_utf8_valid(d->title, strlen(d->title)))
        return MSADB_EINVAL;
    if (d->expires < 0 || (d->expires > 0 && d->expires <= msadb_time_now()))
        return MSADB_EINVAL;
    if ((d->meta_len && !d->meta) || (d->text_len && !d->text))
        return MSADB_EINVAL;
    if (d->key ? d->key_len < 1 || d->key_len > MSADB_DOCKEY_MAX : d->key_len != 0)
        return MSADB_EINVAL;
    if (d->token_spans) {
        if (!d->text)
            return MSADB_EINVAL;
        for (size_t i = 0; i < d->n_tokens; i++) {
            int64_t s = d->token_spans[2 * i], e = d->token_spans[2 * i + 1];
            if (s < 0 || e < s || (uint64_t)e > d->text_len)
                return MSADB_EINVAL;
        }
    }
    (void)st;
    return 0;
}

static int arena_put(buf_t *a, const void *p, size_t len, size_t *off)
{
    *off = a->len;
    return buf_append(a, p, len);
}


static void *encode_items(void *arg)
{
    encode_job *job = arg;
    msadb_store *st = job->b->st;
    const msadb_signature *sig = &st->sig;
    const uint32_t d = sig->head_dim, B = sig->block_size;
    const uint64_t T = job->bd->n_tokens, nb = job->bd->n_blocks;
    const size_t esz = job->doc->kv_dtype == MSADB_DTYPE_F32 ? 4 : 2;
    const size_t se = st->summ.entry;
    const size_t bound = msadb_block_bound((int)sig->dtype, B, d);
    encoder *e = job->e;
    e->out.len = 0;
    job->rc = 0;
    for (;;) {
        uint64_t it = __atomic_fetch_add(job->next, 1, __ATOMIC_RELAXED);
        if (it >= job->items)
            break;
        uint64_t p = it / nb, j = it % nb;
        uint32_t n = (uint32_t)(j + 1 < nb ? B : T - j * B);
        size_t src = ((size_t)p * T + (size_t)j * B) * d * esz;
        if (msadb_to_f32(job->doc->kv_dtype, (const uint8_t *)job->doc->keys + src, e->k, (size_t)n * d) ||
            msadb_to_f32(job->doc->kv_dtype, (const uint8_t *)job->doc->values + src, e->v, (size_t)n * d)) {
            job->rc = MSADB_ENONFINITE;
            break;
        }
        /* f16 holds magnitudes up to 65504: beyond, a stored key or value,
         * or a mean or bound summary, would become infinite */
        if ((job->key_max && msadb_max_abs(e->k, (size_t)n * d) > job->key_max) ||
            (job->value_max && msadb_max_abs(e->v, (size_t)n * d) > job->value_max)) {
            job->rc = MSADB_ERANGE;
            break;
        }
        size_t len = 0;
        if ((job->rc = buf_reserve(&e->out, bound)) ||
            (job->rc = msadb_block_encode(e->codec, (int)sig->dtype, e->k, e->v, n, d, e->out.p + e->out.len,
                                          bound, &len, e->kdeq, NULL)))
            break;
        job->owner[it] = job->idx;
        uint8_t *dir = job->b->cur.arena.p + job->bd->blocks_off + it * 16;
        msadb_put_le64(dir, e->out.len);
        msadb_put_le64(dir + 8, len);
        e->out.len += len;
        msadb_summarize_entry(&st->summ, e->kdeq, n, job->b->cur.arena.p + job->bd->summ_off + it * se);
    }
    if (job->rc) /* the others stop at their next item */
        __atomic_store_n(job->next, job->items, __ATOMIC_RELAXED);
    return NULL;
}

/* A helper thread of the encoding pool: waits for a document, encodes
 * its share (b->jobs[idx]) when it has one, says so, and waits again. */

static void *helper_main(void *arg)
{
    helper_arg *h = arg;
    msadb_batch *b = h->b;
    uint64_t seen = 0;
    pthread_mutex_lock(&b->pool_mu);
    for (;;) {
        while (b->pool_gen == seen && !b->pool_quit)
            pthread_cond_wait(&b->pool_go, &b->pool_mu);
        if (b->pool_quit)
            break;
        seen = b->pool_gen;
        if (h->idx > b->pool_active)
            continue;
        pthread_mutex_unlock(&b->pool_mu);
        encode_items(&b->jobs[h->idx]);
        pthread_mutex_lock(&b->pool_mu);
        if (--b->pool_pending == 0)
            pthread_cond_signal(&b->pool_done);
    }
    pthread_mutex_unlock(&b->pool_mu);
    return NULL;
}

/* Starts helper threads until there are n; an error if not all could be. */
static int pool_start(msadb_batch *b, int n)
{
    while (b->n_helpers < n) {
        int i = b->n_helpers + 1;
        b->helper_args[i] = (helper_arg){b, i};
        if (pthread_create(&b->helpers[i], NULL, helper_main, &b->helper_args[i]) != 0)
            return MSADB_ENOMEM;
        b->n_helpers++;
    }
    return 0;
}

static void pool_stop(msadb_batch *b)
{
    pthread_mutex_lock(&b->pool_mu);
    b->pool_quit = 1;
    pthread_cond_broadcast(&b->pool_go);
    pthread_mutex_unlock(&b->pool_mu);
    for (int i = 1; i <= b->n_helpers; i++)
        pthread_join(b->helpers[i], NULL);
    b->n_helpers = 0;
}

/* Encodes every block of every plane, on up to b->threads threads when
 * there is enough work, then appends the encoded bytes to the arena in item
 * order (the same bytes whatever the number of threads). */
static int encode_doc(msadb_batch *b, const msadb_doc *doc, batch_doc *bd)
{
    const uint64_t items = (uint64_t)msadb_signature_planes(&b->st->sig) * bd->n_blocks;
    int workers = items >= ENCODE_MIN_ITEMS ? b->threads : 1;
    if ((uint64_t)workers > items / (ENCODE_MIN_ITEMS / 2))
        workers = (int)(items / (ENCODE_MIN_ITEMS / 2));
    if (workers < 1)
        workers = 1;
    if (workers > 1 && pool_start(b, workers - 1))
        workers = 1 + b->n_helpers; /* as many as could be started */
    encode_job *jobs = b->jobs;
    const msadb_signature *sig = &b->st->sig;
    const float f16_max = 65504.0f;
    float value_max = sig->dtype == MSADB_DTYPE_F16 ? f16_max : 0.0f;
    float key_max = (value_max || (sig->summary_kinds & (MSADB_SUMMARY_MEAN | MSADB_SUMMARY_MINMAX))) ? f16_max : 0.0f;
    for (int w = 0; w < workers; w++)
        if (encoder_init(&b->enc[w], b->st))
            return MSADB_ENOMEM;
    if (msadb_grow(&b->owner, &b->cap_owner, items, 1, 256))
        return MSADB_ENOMEM;
    uint64_t next = 0;
    for (int w = 0; w < workers; w++)
        jobs[w] = (encode_job){b, doc, bd, &b->enc[w], items, &next, b->owner, (uint8_t)w, key_max, value_max, 0};
    /* helpers 1..workers-1 take their shares, this thread the first */
    pthread_mutex_lock(&b->pool_mu);
    b->pool_active = workers - 1;
    b->pool_pending = workers - 1;
    b->pool_gen++;
    pthread_cond_broadcast(&b->pool_go);
    pthread_mutex_unlock(&b->pool_mu);
    encode_items(&jobs[0]);
    pthread_mutex_lock(&b->pool_mu);
    while (b->pool_pending)
        pthread_cond_wait(&b->pool_done, &b->pool_mu);
    pthread_mutex_unlock(&b->pool_mu);
    for (int w = 0; w < workers; w++)
        if (jobs[w].rc)
            return jobs[w].rc;
    /* the encoded blocks into the arena in item order, whoever made them */
    size_t total = 0;
    for (int w = 0; w < workers; w++)
        total += b->enc[w].out.len;
    int rc = buf_reserve(&b->cur.arena, total);
    if (rc)
        return rc;
    for (uint64_t it = 0; it < items; it++) {
        uint8_t *dir = b->cur.arena.p + bd->blocks_off + it * 16;
        size_t off = msadb_get_le64(dir), len = msadb_get_le64(dir + 8);
        memcpy(b->cur.arena.p + b->cur.arena.len, b->enc[b->owner[it]].out.p + off, len);
        msadb_put_le64(dir, b->cur.arena.len);
        b->cur.arena.len += len;
    }
    return 0;
}

static int chunk_has_key(const chunk *c, const void *key, size_t len)
{
    for (size_t i = 0; i < c->n_docs; i++)
        if (c->docs[i].key_len == len && memcmp(c->arena.p + c->docs[i].key_off, key, len) == 0)
            return 1;
    return 0;
}

static int chunk_deletes(const chunk *c, uint64_t id)
{
    for (size_t i = 0; i < c->n_del; i++)
        if (c->del[i] == id)
            return 1;
    return 0;
}

/* Whether a key is held by the batch (*id = 0) or stored (*id = its
 * document): 0, MSADB_ENOTFOUND or an error.  The chunk being written by
 * the writer thread is still held: only read here. */
static int find_key(msadb_batch *b, const void *key, size_t len, uint64_t *id)
{
    if (chunk_has_key(&b->cur, key, len) || chunk_has_key(&b->fl, key, len)) {
        *id = 0;
        return 0;
    }
    msadb_store *st = b->st;
    int rc = msadb_dockeys_open(st);
    if (rc)
        return rc;
    MDB_txn *txn;
    if ((rc = msadb_txn_read(st, &txn)))
        return rc;
    rc = msadb_dockey_get(txn, st, key, len, id);
    msadb_txn_done(st, txn);
    /* a document the batch deletes gives its key up (the deletions come
     * first in the commit): replacing a document by the same content */
    if (rc == 0 && (chunk_deletes(&b->cur, *id) || chunk_deletes(&b->fl, *id)))
        rc = MSADB_ENOTFOUND;
    return rc;
}

int msadb_batch_skip_key(msadb_batch *b, const void *key, size_t len)
{
    uint64_t id = 0;
    int rc = find_key(b, key, len, &id);
    if (rc == MSADB_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    b->duplicates++;
    b->last_duplicate = id;
    return 1;
}

/* Whether the flush policy commits what the batch holds before adding a
 * document of T tokens. */
static int flush_due(const msadb_batch *b, uint64_t T)
{
    const chunk *c = &b->cur;
    if (!c->n_docs)
        return 0;
    return (b->max_docs && c->n_docs >= b->max_docs) || (b->max_tokens && c->held_tokens + T > b->max_tokens) ||
           (b->max_bytes && c->arena.len >= b->max_bytes);
}

static int auto_flush(msadb_batch *b);

int msadb_batch_add(msadb_batch *b, const msadb_doc *doc)
{
    if (!b)
        return MSADB_EINVAL;
    msadb_store *st = b->st;
    int rc = validate_doc(st, doc);
    if (rc)
        return rc;
    if (doc->key && (rc = msadb_batch_skip_key(b, doc->key, doc->key_len)))
        return rc < 0 ? rc : 0;
    if (flush_due(b, doc->n_tokens) && (rc = auto_flush(b)))
        return rc;
    const msadb_signature *sig = &st->sig;
    const uint32_t B = sig->block_size, planes = msadb_signature_planes(sig);
    const uint64_t T = doc->n_tokens, nb = (T + B - 1) / B;
    const size_t se = st->summ.entry;
    /* Everything appended from here on is rolled back on error. */
    size_t arena_mark = b->cur.arena.len;
    if (msadb_grow(&b->cur.docs, &b->cur.cap_docs, b->cur.n_docs + 1, sizeof *b->cur.docs, 16))
        return MSADB_ENOMEM;
    batch_doc *bd = &b->cur.docs[b->cur.n_docs];
    memset(bd, 0, sizeof *bd);
    const char *space = doc->space ? doc->space : b->st->scoped ? b->st->scope_name : "default";
    if (msadb_scope_name(b->st, space))
        return MSADB_ESCOPE;
    snprintf(bd->space, sizeof bd->space, "%s", space);
    bd->n_tokens = T;
    bd->n_blocks = nb;
    bd->created = msadb_time_now();
    bd->expires = doc->expires;
    bd->ids_off = bd->spans_off = (size_t)-1;
    bd->key_len = doc->key ? doc->key_len : 0;
    bd->title_len = doc->title ? strlen(doc->title) : 0;
    bd->meta_len = doc->meta_len;
    bd->text_len = doc->text_len;
    if ((rc = arena_put(&b->cur.arena, doc->title, bd->title_len, &bd->title_off)) ||
        (rc = arena_put(&b->cur.arena, doc->meta, bd->meta_len, &bd->meta_off)) ||
        (rc = arena_put(&b->cur.arena, doc->text, bd->text_len, &bd->text_off)) ||
        (rc = arena_put(&b->cur.arena, doc->key, bd->key_len, &bd->key_off)))
        goto fail;
    if (doc->token_ids && (rc = arena_put(&b->cur.arena, doc->token_ids, T * 4, &bd->ids_off)))
        goto fail;
    if (doc->token_spans && (rc = arena_put(&b->cur.arena, doc->token_spans, T * 16, &bd->spans_off)))
        goto fail;
    /* Block directory and summaries are fixed-size: reserve them up front
     * (the encoders write into them while the arena does not move). */
    bd->blocks_off = b->cur.arena.len;
    bd->summ_off = bd->blocks_off + (size_t)planes * nb * 16;
    if ((rc = buf_reserve(&b->cur.arena, (size_t)planes * nb * (16 + se))))
        goto fail;
    b->cur.arena.len += (size_t)planes * nb * (16 + se);
    if ((rc = encode_doc(b, doc, bd)))
        goto fail;
    b->cur.n_docs++;
    b->cur.held_tokens += T;
    return 0;
fail:
    b->cur.arena.len = arena_mark;
    return rc;
}

/* The new slot entries of one space in a commit, with a pointer to each
 * entry's summaries (plane p's summary is at summ[i] + p * stride[i]). */
typedef struct {
    char name[MSADB_NAME_MAX + 1];
    msadb_spacerec rec;
    uint64_t first_slot; /* space's slot count before this commit */
    buf_t slots;         /* new slot entries, MSADB_SLOT_BYTES each */
    buf_t refs;          /* per entry: const uint8_t *summ, size_t stride */
} space_group;

typedef struct {
    const uint8_t *summ;
    size_t stride;
} summ_ref;

/* Writes (or rewrites, for a partial last page) the slot page and the
 * per-plane summary pages covering the group's new entries. */
static int write_pages(msadb_store *st, MDB_txn *txn, const space_group *g, buf_t *page_buf)
{
    const uint32_t cap = st->page_cap, planes = msadb_signature_planes(&st->sig);
    const size_t se = st->summ.entry;
    const uint64_t n = g->slots.len / MSADB_SLOT_BYTES;
    const summ_ref *refs = (const summ_ref *)(const void *)g->refs.p;
    page_buf->len = 0;
    size_t page_max = msadb_summ_page_bytes(&st->summ, cap);
    if (page_max < (size_t)cap * MSADB_SLOT_BYTES)
        page_max = (size_t)cap * MSADB_SLOT_BYTES;
    int rc = buf_reserve(page_buf, page_max + (size_t)cap * se);
    if (rc)
        return rc;
    uint8_t *page = page_buf->p, *entry = page_buf->p + page_max;
    for (uint64_t done = 0; done < n;) {
        uint64_t slot = g->first_slot + done, pg = slot / cap;
        uint32_t have = (uint32_t)(slot % cap);
        uint32_t add = (uint32_t)((n - done) < (uint64_t)(cap - have) ? (n - done) : (cap - have));
        uint32_t tot = have + add;
        uint8_t k[16];
        MDB_val kv = {12, k}, v;
        msadb_key_slots(k, g->rec.id, pg);
        if (have) {
            if ((rc = msadb_rec_read(txn, st, st->db_slots, &kv, &v, &st->wread_buf, &st->wread_cap)))
                return rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
            if (v.mv_size != (size_t)have * MSADB_SLOT_BYTES)
                return MSADB_ECORRUPT;
            memcpy(page, v.mv_data, v.mv_size);
        }
        memcpy(page + (size_t)have * MSADB_SLOT_BYTES, g->slots.p + done * MSADB_SLOT_BYTES,
               (size_t)add * MSADB_SLOT_BYTES);
        v.mv_size = (size_t)tot * MSADB_SLOT_BYTES;
        v.mv_data = page;
        if ((rc = msadb_rec_put(txn, st, st->db_slots, &kv, &v, 0)))
            return rc;
        /* One page per plane, region by region (codec/summary.h); the old entries
         * move to their places in the larger page. */
        for (uint32_t p = 0; p < planes; p++) {
            msadb_key_summ(k, g->rec.id, p, pg);
            kv.mv_size = 16;
            size_t bytes = msadb_summ_page_bytes(&st->summ, tot);
            memset(page, 0, bytes);
            if (have) {
                if ((rc = msadb_rec_read(txn, st, st->db_summ, &kv, &v, &st->wread_buf, &st->wread_cap)))
                    return rc == MDB_NOTFOUND ? MSADB_ECORRUPT : rc;
                if (v.mv_size != msadb_summ_page_bytes(&st->summ, have))
                    return MSADB_ECORRUPT;
                for (uint32_t i = 0; i < have; i++) {
                    msadb_summ_entry_get(&st->summ, v.mv_data, have, i, entry);
                    msadb_summ_entry_put(&st->summ, page, tot, i, entry);
                }
            }
            for (uint32_t i = 0; i < add; i++) {
                const summ_ref *r = &refs[done + i];
                msadb_summ_entry_put(&st->summ, page, tot, have + i, r->summ + (size_t)p * r->stride);
            }
            v.mv_size = bytes;
            v.mv_data = page;
            if ((rc = msadb_rec_put(txn, st, st->db_summ, &kv, &v, 0)) ||
                (rc = msadb_route_put(st, txn, g->rec.id, p, pg, page, tot)))
                return rc;
        }
        done += add;
    }
    return 0;
}

static int put_docdata(msadb_store *st, MDB_txn *txn, uint64_t doc, uint32_t space, uint8_t kind,
                       const uint8_t *data, size_t len)
{
    if (!len)
        return 0;
    uint8_t k[9];
    msadb_key_docdata(k, doc, kind);
    MDB_val kv = {9, k}, v;
    if (!st->encrypted) {
        v.mv_size = len;
        v.mv_data = (void *)data;
        return msadb_rec_put(txn, st, st->db_docdata, &kv, &v, 0);
    }
    v.mv_size = len + MSADB_SEAL_OVERHEAD;
    int rc = msadb_rec_put(txn, st, st->db_docdata, &kv, &v, MDB_RESERVE);
    if (rc)
        return rc;
    uint8_t ad[26];
    msadb_docdata_ad(st, doc, kind, ad);
    msadb_seal(msadb_space_seal_key(st, space), ad, sizeof ad, data, len, v.mv_data);
    msadb_rec_seal(st, st->db_docdata, &kv, &v);
    return 0;
}

/* What one transaction writes: the documents of one or two chunks, in
 * order (a chunk whose commit failed goes before the next one), and the
 * first chunk's deletions; ids gets the documents' ids in that order. */
struct commit_args {
    chunk *c[2];
    int n;
    uint64_t *ids;
};

static space_group *find_group(space_group **groups, size_t *n, msadb_store *st, MDB_txn *txn,
                               const char *name, int *rc)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*groups)[i].name, name) == 0)
            return &(*groups)[i];
    space_group *g = realloc(*groups, (*n + 1) * sizeof *g);
    if (!g) {
        *rc = MSADB_ENOMEM;
        return NULL;
    }
    *groups = g;
    g = &g[*n];
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "%s", name);
    if ((*rc = msadb_space_get_txn(txn, st, name, &g->rec)) || (*rc = msadb_scope_id(st, g->rec.id)) ||
        (*rc = msadb_space_access(st, &g->rec)))
        return NULL;
    g->first_slot = g->rec.n_slots;
    (*n)++;
    return g;
}

/* Writes one record per block id holding all its planes (see
 * msadb_block_part), straight into the map with MDB_RESERVE; sealing, when
 * the store is encrypted, happens in place. */
static int write_doc_blocks(msadb_store *st, MDB_txn *txn, const chunk *b, const batch_doc *bd,
                            uint32_t space_id, uint64_t blk0)
{
    const uint32_t planes = msadb_signature_planes(&st->sig);
    const size_t head = 4 + 4 * ((size_t)planes + 1), extra = st->encrypted ? MSADB_SEAL_OVERHEAD : 0;
    for (uint64_t j = 0; j < bd->n_blocks; j++) {
        size_t total = head;
        for (uint32_t p = 0; p < planes; p++)
            total += msadb_get_le64(b->arena.p + bd->blocks_off + ((size_t)p * bd->n_blocks + j) * 16 + 8) + extra;
        if (total > UINT32_MAX)
            return MSADB_ELIMIT;
        uint8_t k[8];
        msadb_key_block(k, blk0 + j);
        MDB_val kv = {8, k}, v = {total, NULL};
        int rc = msadb_rec_put(txn, st, st->db_blocks, &kv, &v, MDB_APPEND | MDB_RESERVE);
        if (rc)
            return rc;
        uint8_t *rec = v.mv_data;
        size_t off = head;
        msadb_put_le32(rec, planes);
        for (uint32_t p = 0; p < planes; p++) {
            const uint8_t *dir = b->arena.p + bd->blocks_off + ((size_t)p * bd->n_blocks + j) * 16;
            const uint8_t *enc = b->arena.p + msadb_get_le64(dir);
            size_t len = msadb_get_le64(dir + 8), out_len = len;
            msadb_put_le32(rec + 4 + 4 * (size_t)p, (uint32_t)off);
            if (st->encrypted) {
                uint8_t ad[32];
                msadb_block_ad(st, space_id, p, blk0 + j, ad);
                if ((rc = msadb_block_seal(enc, len, msadb_space_seal_key(st, space_id), ad, sizeof ad, rec + off, total - off, &out_len)))
                    return rc;
                if (out_len != len + extra)
                    return MSADB_EINVAL;
            } else {
                memcpy(rec + off, enc, len);
            }
            off += out_len;
        }
        msadb_put_le32(rec + 4 + 4 * (size_t)planes, (uint32_t)off);
    }
    return 0;
}

static int write_doc_record(msadb_store *st, MDB_txn *txn, const chunk *b, const batch_doc *bd,
                            uint64_t id, const msadb_docrec *rec)
{
    int rc = msadb_docrec_put(txn, st, id, rec, MDB_APPEND);
    const uint8_t *A = b->arena.p;
    if (!rc && bd->key_len) { /* the key, in the clear: it is itself a hash (msadb_doc_key_hash) */
        uint8_t kk[9], idb[8];
        msadb_key_docdata(kk, id, DD_KEY);
        msadb_put_le64(idb, id);
        MDB_val dk = {9, kk}, dv = {bd->key_len, (void *)(A + bd->key_off)};
        MDB_val kk2 = {bd->key_len, (void *)(A + bd->key_off)}, iv = {8, idb};
        if (!(rc = msadb_rec_put(txn, st, st->db_docdata, &dk, &dv, 0)))
            rc = msadb_rec_put(txn, st, st->db_dockeys, &kk2, &iv, MDB_NOOVERWRITE);
    }
    if (rc || (rc = put_docdata(st, txn, id, rec->space_id, DD_TITLE, A + bd->title_off, bd->title_len)) ||
        (rc = put_docdata(st, txn, id, rec->space_id, DD_META, A + bd->meta_off, bd->meta_len)) ||
        (rc = put_docdata(st, txn, id, rec->space_id, DD_TEXT, A + bd->text_off, bd->text_len)))
        return rc;
    if (bd->ids_off != (size_t)-1 && (rc = put_docdata(st, txn, id, rec->space_id, DD_TOKENS, A + bd->ids_off, bd->n_tokens * 4)))
        return rc;
    if (bd->spans_off != (size_t)-1)
        rc = put_docdata(st, txn, id, rec->space_id, DD_SPANS, A + bd->spans_off, bd->n_tokens * 16);
    return rc;
}

/* Appends the document's slot entries and summary references to its group. */
static int group_add_doc(msadb_store *st, const chunk *b, const batch_doc *bd, space_group *g, uint64_t id,
                         uint64_t blk0)
{
    const size_t se = st->summ.entry;
    const uint32_t B = st->sig.block_size;
    int rc;
    if ((rc = buf_reserve(&g->slots, bd->n_blocks * MSADB_SLOT_BYTES)) ||
        (rc = buf_reserve(&g->refs, bd->n_blocks * sizeof(summ_ref))))
        return rc;
    for (uint64_t j = 0; j < bd->n_blocks; j++) {
        uint8_t *e = g->slots.p + g->slots.len;
        uint64_t left = bd->n_tokens - j * B;
        msadb_put_le64(e, blk0 + j);
        msadb_put_le64(e + 8, id);
        msadb_put_le32(e + 16, (uint32_t)(j * B));
        msadb_put_le16(e + 20, (uint16_t)(left < B ? left : B));
        msadb_put_le16(e + 22, 0);
        g->slots.len += MSADB_SLOT_BYTES;
        summ_ref r = {b->arena.p + bd->summ_off + j * se, (size_t)bd->n_blocks * se};
        memcpy(g->refs.p + g->refs.len, &r, sizeof r);
        g->refs.len += sizeof r;
    }
    g->rec.n_slots += bd->n_blocks;
    g->rec.n_docs++;
    g->rec.n_tokens += bd->n_tokens;
    return 0;
}

static int commit_fn(msadb_store *st, MDB_txn *txn, void *ud)
{
    struct commit_args *a = ud;
    uint64_t next_doc, next_block;
    int rc;
    if ((rc = msadb_meta_u64(txn, st, "next_doc", &next_doc)) ||
        (rc = msadb_meta_u64(txn, st, "next_block", &next_block)))
        return rc;
    if (next_doc == 0)
        next_doc = 1; /* document ids start at 1 */
    /* Expired documents are purged by every commit (then the deletions the
     * batch names), before anything is added. */
    if ((rc = msadb_expire_txn(st, txn, msadb_time_now(), NULL)) ||
        (rc = msadb_delete_txn(st, txn, a->c[0]->del, a->c[0]->n_del)))
        return rc;
    space_group *groups = NULL;
    size_t n_groups = 0, written = 0, keyed = 0, at = 0;
    buf_t page_buf = {0};
    for (int ci = 0; ci < a->n; ci++) {
        const chunk *b = a->c[ci];
        for (size_t i = 0; i < b->n_docs; i++, at++) {
            const batch_doc *bd = &b->docs[i];
            if (bd->key_len) {
                /* another writer may have stored the key since the add */
                uint64_t have;
                if (!st->has_dockeys) {
                    rc = MSADB_ESTATE;
                    goto out;
                }
                rc = msadb_dockey_get(txn, st, b->arena.p + bd->key_off, bd->key_len, &have);
                if (rc == 0) {
                    if (a->ids)
                        a->ids[at] = have;
                    continue;
                }
                if (rc != MSADB_ENOTFOUND)
                    goto out;
                rc = 0;
                keyed++;
            }
            space_group *g = find_group(&groups, &n_groups, st, txn, bd->space, &rc);
            if (!g)
                goto out;
            uint64_t id = next_doc + written++, blk0 = next_block;
            next_block += bd->n_blocks;
            msadb_docrec rec = {0};
            rec.space_id = g->rec.id;
            rec.n_tokens = bd->n_tokens;
            rec.n_blocks = bd->n_blocks;
            rec.first_block = blk0;
            rec.first_slot = g->rec.n_slots;
            rec.created = bd->created;
            rec.text_len = bd->text_len;
            rec.meta_len = bd->meta_len;
            rec.title_len = bd->title_len;
            rec.expires = bd->expires;
            if (bd->expires && (rc = msadb_meta_raise_format(txn, st, MSADB_FORMAT_EXPIRY)))
                goto out;
            rec.flags = (bd->text_len ? DOC_F_TEXT : 0) | (bd->meta_len ? DOC_F_META : 0) |
                        (bd->title_len ? DOC_F_TITLE : 0) | (bd->ids_off != (size_t)-1 ? DOC_F_TOKENS : 0) |
                        (bd->spans_off != (size_t)-1 ? DOC_F_SPANS : 0) | (bd->key_len ? DOC_F_KEY : 0);
            if ((rc = write_doc_blocks(st, txn, b, bd, g->rec.id, blk0)) ||
                (rc = write_doc_record(st, txn, b, bd, id, &rec)) || (rc = group_add_doc(st, b, bd, g, id, blk0)))
                goto out;
            if (a->ids)
                a->ids[at] = id;
        }
    }
    for (size_t i = 0; i < n_groups; i++)
        if ((rc = write_pages(st, txn, &groups[i], &page_buf)) ||
            (rc = msadb_space_put_txn(txn, st, groups[i].name, &groups[i].rec)))
            goto out;
    if ((rc = msadb_meta_put_u64(txn, st, "next_doc", next_doc + written)) ||
        (rc = msadb_meta_put_u64(txn, st, "next_block", next_block)))
        goto out;
    if (keyed && st->format < MSADB_FORMAT_DOCKEYS && (rc = msadb_meta_put_format(txn, st, MSADB_FORMAT_DOCKEYS)))
        goto out;
out:
    for (size_t i = 0; i < n_groups; i++) {
        free(groups[i].slots.p);
        free(groups[i].refs.p);
    }
    free(groups);
    free(page_buf.p);
    return rc;
}

/* Writes the documents of one or two chunks in one transaction, their ids
 * into c[0]->ids (sized here). */
static int write_chunks(msadb_store *st, chunk *c0, chunk *c1)
{
    struct commit_args a = {{c0, c1}, c1 ? 2 : 1, NULL};
    size_t n = c0->n_docs + (c1 ? c1->n_docs : 0);
    if (msadb_grow(&c0->ids, &c0->cap_ids, n + 1, sizeof *c0->ids, 64))
        return MSADB_ENOMEM;
    a.ids = c0->ids;
    return msadb_write(st, commit_fn, &a);
}

/* After a successful commit of n documents (ids): counts it, drops the
 * memory map's pages from resident memory and tells on_commit. */
static void committed(msadb_batch *b, const chunk *c0, const chunk *c1, const uint64_t *ids, size_t n)
{
    for (int ci = 0; ci < 2; ci++) {
        const chunk *c = ci ? c1 : c0;
        for (size_t i = 0; c && i < c->n_docs; i++)
            if (c->docs[i].key_len && b->st->format < MSADB_FORMAT_DOCKEYS)
                b->st->format = MSADB_FORMAT_DOCKEYS;
    }
    b->committed += n;
    b->commits++;
    if (b->max_docs || b->max_tokens || b->max_bytes)
        msadb_map_release(b->st);
    if (b->on_commit)
        b->on_commit(ids, n, b->user);
}

/* The writer thread: commits the chunk it is handed (b->fl) in the
 * background, while the caller's thread encodes the next one. */
static void *writer_main(void *arg)
{
    msadb_batch *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->fl_busy && !b->quit)
            pthread_cond_wait(&b->cv, &b->mu);
        if (b->quit)
            break;
        pthread_mutex_unlock(&b->mu);
        int rc = write_chunks(b->st, &b->fl, NULL);
        pthread_mutex_lock(&b->mu);
        b->fl_rc = rc;
        b->fl_busy = 0;
        pthread_cond_broadcast(&b->cv);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/* Waits for the writer thread's commit, if one is under way.  Done: the
 * chunk is counted, reported and emptied.  Failed: its error is returned
 * and the chunk stays held (the next flush writes it again). */
static int collect(msadb_batch *b)
{
    if (!b->fl_sent)
        return 0;
    pthread_mutex_lock(&b->mu);
    while (b->fl_busy)
        pthread_cond_wait(&b->cv, &b->mu);
    int rc = b->fl_rc;
    b->fl_rc = 0;
    pthread_mutex_unlock(&b->mu);
    b->fl_sent = 0;
    if (rc)
        return rc;
    committed(b, &b->fl, NULL, b->fl.ids, b->fl.n_docs);
    chunk_clear(&b->fl);
    return 0;
}

/* Hands what the batch holds to the writer thread (started on first use)
 * and keeps filling the chunk it wrote last. */
static int write_behind(msadb_batch *b)
{
    if (!b->writer_on) {
        if (pthread_create(&b->writer, NULL, writer_main, b) != 0)
            return MSADB_ENOMEM;
        b->writer_on = 1;
    }
    chunk t = b->fl;
    b->fl = b->cur;
    b->cur = t;
    b->fl_sent = 1;
    pthread_mutex_lock(&b->mu);
    b->fl_busy = 1;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    return 0;
}

/* Writes everything the batch holds in one transaction (a chunk left by a
 * failed background commit first), counts it and tells on_commit; on
 * success the batch is empty.  ids, if not NULL, gets the ids. */
static int write_held(msadb_batch *b, uint64_t *ids)
{
    int two = chunk_held(&b->fl);
    chunk *c0 = two ? &b->fl : &b->cur, *c1 = two ? &b->cur : NULL;
    if (!chunk_held(c0) && !(c1 && chunk_held(c1)))
        return 0;
    if (two && b->cur.n_del && (chunk_delete(&b->fl, b->cur.del, b->cur.n_del)))
        return MSADB_ENOMEM;
    int rc = write_chunks(b->st, c0, c1);
    if (rc)
        return rc;
    size_t n = c0->n_docs + (c1 ? c1->n_docs : 0);
    if (ids && n)
        memcpy(ids, c0->ids, n * sizeof *ids);
    committed(b, c0, c1, c0->ids, n);
    chunk_clear(&b->fl);
    chunk_clear(&b->cur);
    return 0;
}

/* A commit that msadb_batch_add() makes by itself: in the background when
 * the batch has more than one thread and the last one went well. */
static int auto_flush(msadb_batch *b)
{
    int rc = collect(b);
    if (rc)
        return rc; /* the document is not added; the failed chunk is still held */
    if (b->threads > 1 && !chunk_held(&b->fl))
        return write_behind(b);
    return write_held(b, NULL);
}

int msadb_batch_commit(msadb_batch *b, uint64_t *doc_ids)
{
    if (!b)
        return MSADB_EINVAL;
    /* a background commit that ends here goes to on_commit only */
    collect(b); /* an error: the chunk is still held, and written again below */
    int rc = write_held(b, doc_ids);
    msadb_batch_abort(b);
    return rc;
}

int msadb_batch_flush(msadb_batch *b)
{
    if (!b)
        return MSADB_EINVAL;
    collect(b); /* an error: the chunk is still held, and written again below */
    return write_held(b, NULL);
}

void msadb_batch_abort(msadb_batch *b)
{
    if (!b)
        return;
    if (b->writer_on) {
        collect(b); /* a commit under way finishes (and is reported) */
        pthread_mutex_lock(&b->mu);
        b->quit = 1;
        pthread_cond_broadcast(&b->cv);
        pthread_mutex_unlock(&b->mu);
        pthread_join(b->writer, NULL);
    }
    pool_stop(b);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->pool_mu);
    pthread_cond_destroy(&b->pool_go);
    pthread_cond_destroy(&b->pool_done);
    for (int i = 0; i < MAX_INGEST_THREADS; i++)
        encoder_free(&b->enc[i]);
    chunk_free(&b->cur);
    chunk_free(&b->fl);
    free(b->owner);
    free(b);
}

int msadb_batch_set_flush(msadb_batch *b, size_t max_docs, uint64_t max_tokens, size_t max_bytes,
                          msadb_commit_fn on_commit, void *user)
{
    if (!b)
        return MSADB_EINVAL;
    b->max_docs = max_docs;
    b->max_tokens = max_tokens;
    b->max_bytes = max_bytes;
    b->on_commit = on_commit;
    b->user = user;
    return 0;
}

int msadb_batch_status_get(const msadb_batch *b, msadb_batch_status *out)
{
    if (!b || !out)
        return MSADB_EINVAL;
    memset(out, 0, sizeof *out);
    out->held = b->cur.n_docs + b->fl.n_docs;
    out->held_tokens = b->cur.held_tokens + b->fl.held_tokens;
    out->held_bytes = b->cur.arena.len + b->fl.arena.len;
    out->committed = b->committed;
    out->commits = b->commits;
    out->duplicates = b->duplicates;
    out->last_duplicate = b->last_duplicate;
    return 0;
}

int msadb_doc_append(msadb_store *st, const msadb_doc *doc, uint64_t *doc_id)
{
    msadb_batch *b;
    int rc = msadb_batch_begin(st, &b);
    if (rc)
        return rc;
    if ((rc = msadb_batch_add(b, doc))) {
        msadb_batch_abort(b);
        return rc;
    }
    uint64_t id = 0;
    rc = msadb_batch_commit(b, &id);
    if (!rc && doc_id)
        *doc_id = id;
    return rc;
}

