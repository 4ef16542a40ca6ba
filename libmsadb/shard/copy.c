/* copy.c -- splitting an ordinary store into a sharded one and merging a
 * sharded store back into one, document by document through the public
 * API, committed in batches of bounded size. */
#include <stdlib.h>
#include <string.h>

#include "msadb_shard.h"
#include "shard/shard_impl.h"
#include "core/util.h"

/* Documents are committed when the batch holds this many bytes of K/V. */
#define COPY_BATCH_BYTES (64u << 20)

/* Where copied documents go: a sharded store (placement rule) or one store. */
typedef struct copy_ctx {
    msadb_shards *dst_sh;
    msadb_store *dst_st;
    msadb_shards_batch *sb;
    msadb_batch *b;
    size_t batch_bytes;
    /* the documents of the open batch, for the callback at commit */
    uint64_t *old_ids;
    msadb_doc_info *infos;
    size_t n, cap;
    /* the source */
    msadb_snapshot *src;
    uint32_t src_shard, src_n; /* merge: global ids of the source (src_n 0: plain) */
    const msadb_signature *sig;
    /* one document's buffers */
    float *kv;
    size_t kv_cap;
    char *text, *meta;
    size_t text_cap, meta_cap;
    int32_t *tok;
    int64_t *spans;
    size_t tok_cap, span_cap;
    msadb_shards_copy_cb cb;
    void *ud;
} copy_ctx;

static int copy_flush(copy_ctx *c)
{
    if (c->n == 0)
        return 0;
    uint64_t *ids = malloc(c->n * sizeof *ids);
    if (!ids)
        return MSADB_ENOMEM;
    int rc;
    if (c->dst_sh) {
        rc = msadb_shards_batch_commit(c->sb, ids);
        c->sb = NULL;
    } else {
        rc = msadb_batch_commit(c->b, ids);
        c->b = NULL;
    }
    for (size_t i = 0; !rc && c->cb && i < c->n; i++) {
        c->infos[i].id = ids[i];
        c->cb(c->old_ids[i], ids[i], &c->infos[i], c->ud);
    }
    free(ids);
    c->n = 0;
    c->batch_bytes = 0;
    return rc;
}

static int copy_one(const msadb_doc_info *info, void *ud)
{
    copy_ctx *c = ud;
    const msadb_signature *sig = c->sig;
    uint32_t planes = msadb_signature_planes(sig), d = sig->head_dim;
    size_t T = info->n_tokens, plane_n = T * d;
    int rc;
    if ((rc = msadb_grow(&c->kv, &c->kv_cap, 2 * planes * plane_n, sizeof(float), 64)) ||
        (rc = msadb_grow(&c->text, &c->text_cap, info->text_len + 1, 1, 64)) ||
        (rc = msadb_grow(&c->meta, &c->meta_cap, info->meta_len + 1, 1, 64)) ||
        (rc = msadb_grow(&c->tok, &c->tok_cap, T, sizeof(int32_t), 64)) ||
        (rc = msadb_grow(&c->spans, &c->span_cap, T, 2 * sizeof(int64_t), 64)))
        return rc;
    float *K = c->kv, *V = c->kv + planes * plane_n;
    for (uint32_t p = 0; p < planes; p++)
        if ((rc = msadb_doc_kv(c->src, info->id, p, K + p * plane_n, V + p * plane_n)))
            return rc;
    size_t len = 0;
    if (info->text_len && (rc = msadb_doc_text(c->src, info->id, c->text, c->text_cap, &len)))
        return rc;
    if (info->meta_len && (rc = msadb_doc_meta(c->src, info->id, c->meta, c->meta_cap, &len)))
        return rc;
    if ((info->has_tokens || info->has_spans) &&
        (rc = msadb_doc_tokens(c->src, info->id, info->has_tokens ? c->tok : NULL,
                               info->has_spans ? c->spans : NULL, T)))
        return rc;
    msadb_doc doc = {.space = info->space,
                     .title = info->title[0] ? info->title : NULL,
                     .meta = info->meta_len ? c->meta : NULL,
                     .meta_len = info->meta_len,
                     .text = info->text_len ? c->text : NULL,
                     .text_len = info->text_len,
                     .token_ids = info->has_tokens ? c->tok : NULL,
                     .token_spans = info->has_spans ? c->spans : NULL,
                     .n_tokens = T,
                     .kv_dtype = MSADB_DTYPE_F32,
                     .keys = K,
                     .values = V};
    const msadb_array arrays[] = {{&c->old_ids, sizeof *c->old_ids}, {&c->infos, sizeof *c->infos}};
    if ((rc = msadb_grow_arrays(arrays, 2, &c->cap, c->n + 1, 64, 0)))
        return rc;
    if (c->dst_sh) {
        if (!c->sb && (rc = msadb_shards_batch_begin(c->dst_sh, &c->sb)))
            return rc;
        rc = msadb_shards_batch_add(c->sb, &doc, NULL);
    } else {
        if (!c->b && (rc = msadb_batch_begin(c->dst_st, &c->b)))
            return rc;
        rc = msadb_batch_add(c->b, &doc);
    }
    if (rc)
        return rc;
    c->old_ids[c->n] = c->src_n ? msadb_shards_id_global(info->id, c->src_shard, c->src_n) : info->id;
    c->infos[c->n++] = *info;
    c->batch_bytes += 2 * planes * plane_n * sizeof(float);
    return c->batch_bytes >= COPY_BATCH_BYTES ? copy_flush(c) : 0;
}

static void copy_free(copy_ctx *c)
{
    msadb_shards_batch_abort(c->sb);
    msadb_batch_abort(c->b);
    free(c->old_ids);
    free(c->infos);
    free(c->kv);
    free(c->text);
    free(c->meta);
    free(c->tok);
    free(c->spans);
}

typedef struct space_copy {
    msadb_shards *sh;
    msadb_store *st;
} space_copy;

static int space_copy_one(const msadb_space_info *info, void *ud)
{
    space_copy *s = ud;
    if (info->keyed) /* its key stays with its holder: the copy would be a plain space */
        return MSADB_ENOTSUP;
    int rc = s->sh ? msadb_shards_space_create(s->sh, info->name, NULL) : msadb_space_create(s->st, info->name, NULL);
    return rc == MSADB_EEXIST ? 0 : rc;
}

int msadb_shards_split(const char *src, const msadb_options *src_opt, const char *dst, uint32_t n_shards,
                       const msadb_options *dst_opt, msadb_shards_copy_cb cb, void *ud)
{
    if (!src || !dst)
        return MSADB_EINVAL;
    msadb_shards_manifest m;
    int rc = msadb_shards_manifest_new(&m, n_shards);
    if (rc)
        return rc;
    msadb_store *in;
    if ((rc = msadb_open(src, NULL, src_opt, &in)))
        return rc;
    msadb_shards *out;
    if ((rc = msadb_shards_create_impl(dst, &m, msadb_store_signature(in), dst_opt, 0, 1, 0, &out))) {
        msadb_close(in);
        return rc;
    }
    copy_ctx c = {.dst_sh = out, .sig = msadb_store_signature(in), .cb = cb, .ud = ud};
    space_copy sc = {out, NULL};
    if (!(rc = msadb_space_list(in, space_copy_one, &sc)) && !(rc = msadb_snapshot_begin(in, &c.src))) {
        if (!(rc = msadb_doc_list(c.src, NULL, copy_one, &c)))
            rc = copy_flush(&c);
        msadb_snapshot_end(c.src);
    }
    copy_free(&c);
    if (!rc)
        rc = msadb_shards_write_manifest(out);
    msadb_shards_close(out);
    msadb_close(in);
    return rc;
}

int msadb_shards_merge(const char *src, const msadb_options *src_opt, const char *dst, const msadb_options *dst_opt,
                       msadb_shards_copy_cb cb, void *ud)
{
    if (!src || !dst)
        return MSADB_EINVAL;
    msadb_shards *in;
    int rc = msadb_shards_open(src, NULL, src_opt, &in);
    if (rc)
        return rc;
    msadb_store *out;
    if ((rc = msadb_create(dst, msadb_shards_signature(in), dst_opt, &out))) {
        msadb_shards_close(in);
        return rc;
    }
    copy_ctx c = {.dst_st = out, .sig = msadb_shards_signature(in), .src_n = in->m.n_shards, .cb = cb, .ud = ud};
    space_copy sc = {NULL, out};
    rc = msadb_shards_space_list(in, space_copy_one, &sc);
    for (uint32_t i = 0; !rc && i < in->n_local; i++) {
        c.src_shard = i;
        if ((rc = msadb_snapshot_begin(in->st[i], &c.src)))
            break;
        if (!(rc = msadb_doc_list(c.src, NULL, copy_one, &c)))
            rc = copy_flush(&c);
        msadb_snapshot_end(c.src);
    }
    copy_free(&c);
    msadb_close(out);
    msadb_shards_close(in);
    return rc;
}
