/* adapter.c -- the engine-neutral model adapter: open-or-create for a
 * model signature, capturing a document's K/V layer by layer as a model
 * produces them, and merging memory attention into a layer's local
 * attention. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <errno.h>

#include "core/util.h"
#include "store/store.h"

int msadb_open_or_create(const char *path, const msadb_signature *sig, const msadb_options *opt,
                         msadb_store **out)
{
    if (!path || !sig || !out)
        return MSADB_EINVAL;
    int rc = msadb_open(path, sig, opt, out);
    if (rc == MSADB_ENOTSTORE || rc == ENOENT) /* an empty directory, or none */
        rc = msadb_create(path, sig, opt, out);
    return rc;
}

/* Per plane, a growing [tokens][head_dim] matrix of keys and one of values. */
typedef struct {
    float *k, *v;
    uint64_t n;  /* tokens held */
    size_t cap;  /* tokens of room */
} plane_buf;

struct msadb_capture {
    msadb_store *st;
    plane_buf *planes; /* [n_memory_layers * n_kv_heads] */
};

int msadb_capture_begin(msadb_store *st, msadb_capture **out)
{
    if (!st || !out)
        return MSADB_EINVAL;
    *out = NULL;
    if (msadb_store_read_only(st))
        return MSADB_EREADONLY;
    msadb_capture *c = calloc(1, sizeof *c);
    if (!c)
        return MSADB_ENOMEM;
    c->st = st;
    c->planes = calloc(msadb_signature_planes(msadb_store_signature(st)), sizeof *c->planes);
    if (!c->planes) {
        free(c);
        return MSADB_ENOMEM;
    }
    *out = c;
    return 0;
}

void msadb_capture_abort(msadb_capture *c)
{
    if (!c)
        return;
    for (uint32_t p = 0; p < msadb_signature_planes(msadb_store_signature(c->st)); p++) {
        free(c->planes[p].k);
        free(c->planes[p].v);
    }
    free(c->planes);
    free(c);
}

static int plane_grow(plane_buf *pb, uint64_t need, size_t d)
{
    msadb_array a[] = {{&pb->k, d * sizeof(float)}, {&pb->v, d * sizeof(float)}};
    return need > SIZE_MAX ? MSADB_ENOMEM : msadb_grow_arrays(a, 2, &pb->cap, (size_t)need, 256, 0);
}

int msadb_capture_kv(msadb_capture *c, uint32_t layer, uint64_t first, uint64_t n, const float *k,
                     const float *v)
{
    if (!c || !k || !v || n == 0)
        return MSADB_EINVAL;
    const msadb_signature *sig = msadb_store_signature(c->st);
    if (layer >= sig->n_layers)
        return MSADB_EINVAL;
    int mi = msadb_signature_memory_index(sig, layer);
    if (mi < 0)
        return 0; /* not a memory layer: nothing to keep */
    const size_t d = sig->head_dim, H = sig->n_kv_heads;
    if (first + n > UINT32_MAX)
        return MSADB_ELIMIT;
    for (size_t i = 0; i < H * n * d; i++)
        if (!isfinite(k[i]) || !isfinite(v[i]))
            return MSADB_ENONFINITE;
    for (size_t h = 0; h < H; h++) {
        plane_buf *pb = &c->planes[(size_t)mi * H + h];
        if (first != pb->n)
            return MSADB_EINVAL; /* out of order or a gap */
        int rc = plane_grow(pb, pb->n + n, d);
        if (rc)
            return rc;
    }
    for (size_t h = 0; h < H; h++) {
        plane_buf *pb = &c->planes[(size_t)mi * H + h];
        memcpy(pb->k + pb->n * d, k + h * n * d, n * d * sizeof(float));
        memcpy(pb->v + pb->n * d, v + h * n * d, n * d * sizeof(float));
        pb->n += n;
    }
    return 0;
}

/* Stores the captured document through msadb_doc_append() (batch NULL) or
 * msadb_batch_add(), and frees the capture whatever the result. */
static int capture_finish(msadb_capture *c, msadb_batch *batch, const msadb_doc *meta, uint64_t *doc_id)
{
    if (!c)
        return MSADB_EINVAL;
    int rc = 0;
    const msadb_signature *sig = msadb_store_signature(c->st);
    const uint32_t planes = msadb_signature_planes(sig);
    const size_t d = sig->head_dim;
    float *K = NULL, *V = NULL;
    if (!meta || meta->n_tokens == 0) {
        rc = MSADB_EINVAL;
        goto out;
    }
    for (uint32_t p = 0; p < planes; p++)
        if (c->planes[p].n != meta->n_tokens) {
            rc = MSADB_EINVAL; /* a memory layer is missing tokens */
            goto out;
        }
    /* msadb_doc wants [planes][T][d] contiguous. */
    size_t T = meta->n_tokens;
    K = malloc((size_t)planes * T * d * sizeof(float));
    V = malloc((size_t)planes * T * d * sizeof(float));
    if (!K || !V) {
        rc = MSADB_ENOMEM;
        goto out;
    }
    for (uint32_t p = 0; p < planes; p++) {
        memcpy(K + (size_t)p * T * d, c->planes[p].k, T * d * sizeof(float));
        memcpy(V + (size_t)p * T * d, c->planes[p].v, T * d * sizeof(float));
    }
    msadb_doc doc = *meta;
    doc.kv_dtype = MSADB_DTYPE_F32;
    doc.keys = K;
    doc.values = V;
    rc = batch ? msadb_batch_add(batch, &doc) : msadb_doc_append(c->st, &doc, doc_id);
out:
    free(K);
    free(V);
    msadb_capture_abort(c);
    return rc;
}

int msadb_capture_commit(msadb_capture *c, const msadb_doc *meta, uint64_t *doc_id)
{
    return capture_finish(c, NULL, meta, doc_id);
}

int msadb_capture_add(msadb_capture *c, msadb_batch *batch, const msadb_doc *meta)
{
    if (!batch) {
        msadb_capture_abort(c);
        return MSADB_EINVAL;
    }
    return capture_finish(c, batch, meta, NULL);
}

int msadb_attend_merge(msadb_snapshot *snap, const msadb_query *q, float *out, float *lse, msadb_hit *hits,
                       size_t hits_cap, size_t *n_hits)
{
    if (!snap || !q || !out || !lse)
        return MSADB_EINVAL;
    const msadb_signature *sig = msadb_snap_signature(snap);
    size_t rows = q->n_query * sig->n_q_heads, d = sig->head_dim;
    if (q->n_query == 0 || rows > SIZE_MAX / (d + 1) / sizeof(float))
        return MSADB_EINVAL;
    float *mem_out = msadb_snap_floats(snap, rows * (d + 1));
    if (!mem_out)
        return MSADB_ENOMEM;
    float *mem_lse = mem_out + rows * d;
    int rc = msadb_attend(snap, q, mem_out, mem_lse, hits, hits_cap, n_hits);
    if (rc)
        return rc;
    msadb_lse_merge(rows, d, out, lse, mem_out, mem_lse, out, lse);
    return 0;
}
