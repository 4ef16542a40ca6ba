/* cmd_query.c -- `msadb query`: memory attention of one layer's query
 * vectors over the store, with the selected blocks (and the text they cite)
 * as a table or JSON, and the attention output and LSE as a safetensors
 * file.  Uses only the public API (msadb.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* ------------------------------------------------------------------------ */
/* queries file                                                             */
/* ------------------------------------------------------------------------ */

/* Reads `queries` [n,Q,D] (F32/F16/BF16) as f32. */
static int load_queries(const char *path, const msadb_signature *sig, float **q, size_t *n)
{
    tf_file f;
    char err[512], sb[200];
    if (tf_safetensors_open(path, &f, err, sizeof err) != 0)
        return cli_error("%s: %s", path, err);
    const tf_tensor *t = tf_find(&f, "queries");
    int rc = CLI_OK;
    if (!t) {
        rc = cli_error("%s: no tensor 'queries' (expected [n,Q,D] = [n,%u,%u])", path,
                       sig->n_q_heads, sig->head_dim);
    } else if (!tf_is_float(t->dtype)) {
        rc = cli_error("%s: queries: dtype %s, expected F32, F16 or BF16", path,
                       tf_dtype_name(t->dtype));
    } else if (t->ndim != 3 || t->shape[1] != sig->n_q_heads || t->shape[2] != sig->head_dim) {
        tf_shape_str(t->shape, t->ndim, sb, sizeof sb);
        if (t->ndim != 3)
            rc = cli_error("%s: queries: shape %s, expected [n,Q,D] = [n,%u,%u]", path, sb,
                           sig->n_q_heads, sig->head_dim);
        else if (t->shape[1] != sig->n_q_heads)
            rc = cli_error("%s: queries: shape %s but the store has %u q heads", path, sb,
                           sig->n_q_heads);
        else
            rc = cli_error("%s: queries: shape %s but the store has head dim %u", path, sb,
                           sig->head_dim);
    } else if (t->shape[0] == 0) {
        rc = cli_error("%s: queries: shape %s holds no query tokens", path,
                       tf_shape_str(t->shape, t->ndim, sb, sizeof sb));
    } else {
        int64_t bad = tf_first_nonfinite(t->dtype, t->data, t->nelem);
        uint64_t QD = (uint64_t)sig->n_q_heads * sig->head_dim;
        if (bad >= 0) {
            uint64_t i = (uint64_t)bad;
            rc = cli_error("%s: queries: NaN or Inf at [%llu,%llu,%llu]", path,
                           (unsigned long long)(i / QD),
                           (unsigned long long)(i % QD / sig->head_dim),
                           (unsigned long long)(i % sig->head_dim));
        } else if (!(*q = malloc((size_t)t->nelem * sizeof(float)))) {
            rc = cli_error("out of memory");
        } else {
            tf_to_f32(t->dtype, t->data, 0, t->nelem, *q);
            *n = (size_t)t->shape[0];
        }
    }
    tf_file_close(&f);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* cited text                                                               */
/* ------------------------------------------------------------------------ */

typedef struct doc_entry {
    uint64_t id;
    int used;
    char title[MSADB_TITLE_MAX + 1];
    char *text;
    size_t text_len;
    int64_t *spans; /* [n_tokens][2] or NULL */
    uint64_t n_tokens;
} doc_entry;

typedef struct doc_cache {
    cli_db *db;
    doc_entry *e;
    size_t cap; /* power of two */
    size_t n;
} doc_cache;

static void cache_free(doc_cache *c)
{
    for (size_t i = 0; i < c->cap; i++) {
        free(c->e[i].text);
        free(c->e[i].spans);
    }
    free(c->e);
}

static void load_doc(cli_db *db, doc_entry *d)
{
    msadb_doc_info info;
    if (cli_db_doc_view(db, d->id, &info, &d->text, &d->spans) != 0)
        return;
    memcpy(d->title, info.title, sizeof d->title);
    d->n_tokens = info.n_tokens;
    d->text_len = d->text ? info.text_len : 0;
}

static int cache_grow(doc_cache *c)
{
    size_t ncap = c->cap ? c->cap * 2 : 64;
    doc_entry *ne = calloc(ncap, sizeof *ne);
    if (!ne)
        return -1;
    for (size_t i = 0; i < c->cap; i++) {
        if (!c->e[i].used)
            continue;
        size_t h = (size_t)(c->e[i].id * 0x9e3779b97f4a7c15ull) & (ncap - 1);
        while (ne[h].used)
            h = (h + 1) & (ncap - 1);
        ne[h] = c->e[i];
    }
    free(c->e);
    c->e = ne;
    c->cap = ncap;
    return 0;
}

static doc_entry *cache_get(doc_cache *c, uint64_t id)
{
    if ((c->n + 1) * 2 > c->cap && cache_grow(c) != 0)
        return NULL;
    size_t h = (size_t)(id * 0x9e3779b97f4a7c15ull) & (c->cap - 1);
    while (c->e[h].used && c->e[h].id != id)
        h = (h + 1) & (c->cap - 1);
    doc_entry *d = &c->e[h];
    if (!d->used) {
        d->used = 1;
        d->id = id;
        c->n++;
        load_doc(c->db, d);
    }
    return d;
}

/* The byte range of tokens [t0,t1) of d, or 0 if unknown. */
static int cited_range(const doc_entry *d, uint32_t t0, uint32_t t1, size_t *a, size_t *b)
{
    if (!d || !d->text || t0 >= t1 || t1 > d->n_tokens)
        return 0;
    int64_t lo = INT64_MAX, hi = 0;
    for (uint32_t t = t0; t < t1; t++) {
        lo = d->spans[2 * t] < lo ? d->spans[2 * t] : lo;
        hi = d->spans[2 * t + 1] > hi ? d->spans[2 * t + 1] : hi;
    }
    if (lo < 0 || hi < lo || (uint64_t)hi > d->text_len)
        return 0;
    *a = (size_t)lo;
    *b = (size_t)hi;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* output                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct hit_ref {
    const msadb_hit *h;
    size_t idx;
} hit_ref;

static int hit_cmp(const void *x, const void *y)
{
    const hit_ref *a = x, *b = y;
    if (a->h->query != b->h->query)
        return a->h->query < b->h->query ? -1 : 1;
    if (a->h->kv_head != b->h->kv_head)
        return a->h->kv_head < b->h->kv_head ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

static json_t *block_json(doc_cache *c, const msadb_hit *h)
{
    doc_entry *d = cache_get(c, h->doc_id);
    json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:f}", "doc", (json_int_t)h->doc_id, "block",
                          (json_int_t)h->block_id, "token_start", (json_int_t)h->token_start,
                          "token_end", (json_int_t)h->token_end, "score", (double)h->score);
    size_t ba, bb;
    if (o && d)
        json_object_set_new(o, "title", cli_json_bytes(d->title, strlen(d->title)));
    if (o && cited_range(d, h->token_start, h->token_end, &ba, &bb)) {
        json_object_set_new(o, "byte_start", json_integer((json_int_t)ba));
        json_object_set_new(o, "byte_end", json_integer((json_int_t)bb));
        json_object_set_new(o, "text", cli_json_bytes(d->text + ba, bb - ba));
    }
    return o;
}

typedef struct query_run {
    const cli_args *a;
    const msadb_signature *sig;
    size_t n_query;
    msadb_hit *hits;
    size_t n_hits;
    msadb_query_stats stats;
    double total_ms;
} query_run;

static hit_ref *sorted_hits(const query_run *r)
{
    hit_ref *refs = malloc((r->n_hits + 1) * sizeof *refs);
    if (!refs)
        return NULL;
    for (size_t i = 0; i < r->n_hits; i++)
        refs[i] = (hit_ref){&r->hits[i], i};
    qsort(refs, r->n_hits, sizeof *refs, hit_cmp);
    return refs;
}

static json_t *selected_json(const query_run *r, doc_cache *c, const hit_ref *refs)
{
    json_t *sel = json_array();
    size_t k = 0;
    size_t nq = r->a->per_token ? r->n_query : 1;
    for (size_t qi = 0; qi < nq; qi++) {
        for (uint32_t h = 0; h < r->sig->n_kv_heads; h++) {
            json_t *blocks = json_array();
            while (k < r->n_hits && refs[k].h->query == qi && refs[k].h->kv_head == h)
                json_array_append_new(blocks, block_json(c, refs[k++].h));
            json_t *e = json_pack("{s:I}", "kv_head", (json_int_t)h);
            if (r->a->per_token)
                json_object_set_new(e, "query", json_integer((json_int_t)qi));
            json_object_set_new(e, "blocks", blocks);
            json_array_append_new(sel, e);
        }
    }
    return sel;
}

static int print_json(const query_run *r, doc_cache *c)
{
    hit_ref *refs = sorted_hits(r);
    if (!refs)
        return cli_error("out of memory");
    const msadb_query_stats *s = &r->stats;
    json_t *timing = json_pack("{s:f, s:f, s:f, s:f, s:f}", "scan", s->scan_ms, "select",
                               s->select_ms, "read", s->read_ms, "attend", s->attend_ms, "total",
                               r->total_ms);
    json_t *root = json_pack(
        "{s:I, s:I, s:b, s:s, s:I, s:o, s:o, s:I, s:I, s:I}", "layer", (json_int_t)r->a->layer,
        "queries", (json_int_t)r->n_query, "exact", r->a->exact, "select",
        r->a->select == MSADB_SELECT_DOCUMENTS ? "documents" : "blocks", "top_k",
        (json_int_t)r->a->top_k, "selected", selected_json(r, c, refs), "timing_ms", timing,
        "blocks_scanned", (json_int_t)s->blocks_scanned, "blocks_read",
        (json_int_t)s->blocks_read, "tokens_attended", (json_int_t)s->tokens_attended);
    if (root && r->a->out)
        json_object_set_new(root, "out", json_string(r->a->out));
    free(refs);
    return cli_json_print(root);
}

/* Text of a cited block for a table cell: one line, at most 60 chars. */
static void excerpt(const doc_entry *d, const msadb_hit *h, char *buf, size_t cap)
{
    size_t a, b, o = 0;
    buf[0] = 0;
    if (!cited_range(d, h->token_start, h->token_end, &a, &b))
        return;
    for (size_t i = a; i < b && o + 4 < cap && o < 60; i++) {
        unsigned char ch = (unsigned char)d->text[i];
        buf[o++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
    }
    while (o > 0 && ((unsigned char)buf[o - 1] & 0xc0) == 0x80) /* drop a cut sequence */
        o--;
    if (o > 0 && ((unsigned char)buf[o - 1] & 0xc0) == 0xc0)
        o--;
    buf[o] = 0;
    if (o < b - a)
        strcat(buf, "...");
}

/* A title as one table cell: tabs and newlines become spaces. */
static const char *cell(const char *s, char *buf, size_t cap)
{
    size_t i = 0;
    for (; s[i] && i + 1 < cap; i++)
        buf[i] = (s[i] == '\t' || s[i] == '\n' || s[i] == '\r') ? ' ' : s[i];
    buf[i] = 0;
    return buf;
}

static int print_table(const query_run *r, doc_cache *c)
{
    hit_ref *refs = sorted_hits(r);
    if (!refs)
        return cli_error("out of memory");
    static const char *const hdr[] = {"query", "kv_head", "doc", "block", "tokens", "score", "title", "text"};
    int pt = r->a->per_token;
    cli_table *t = cli_table_new(pt ? 8 : 7, pt ? hdr : hdr + 1);
    for (size_t k = 0; k < r->n_hits; k++) {
        const msadb_hit *h = refs[k].h;
        doc_entry *d = cache_get(c, h->doc_id);
        char ex[256], title[MSADB_TITLE_MAX + 1];
        excerpt(d, h, ex, sizeof ex);
        char q[24] = "";
        if (pt)
            snprintf(q, sizeof q, "%u\t", h->query);
        cli_table_addf(t, "%s%u\t%llu\t%llu\t%u-%u\t%.4f\t%s\t%s", q, h->kv_head,
                       (unsigned long long)h->doc_id, (unsigned long long)h->block_id,
                       h->token_start, h->token_end, (double)h->score, cell(d ? d->title : "", title, sizeof title), ex);
    }
    cli_table_print(t, stdout);
    cli_table_free(t);
    free(refs);
    if (cli_stdout_tty())
        printf("layer %u: %zu query token%s, %zu blocks selected, %llu tokens attended, %.2f ms\n",
               r->a->layer, r->n_query, r->n_query == 1 ? "" : "s", r->n_hits,
               (unsigned long long)r->stats.tokens_attended, r->total_ms);
    return CLI_OK;
}

/* ------------------------------------------------------------------------ */
/* the command                                                              */
/* ------------------------------------------------------------------------ */

static int check_query_args(const cli_args *a, cli_db *db, const msadb_signature *sig)
{
    if (msadb_signature_memory_index(sig, a->layer) < 0) {
        char layers[1024];
        cli_layers_str(sig, layers, sizeof layers);
        return cli_error("--layer %u is not a memory layer of %s (memory layers: %s)", a->layer,
                         a->db, layers);
    }
    return cli_check_memory_args(a, db);
}

/* Runs msadb_attend, growing the hit buffer until every hit fits. */
static int attend(query_run *r, cli_db *db, const msadb_query *q, float *out, float *lse,
                  int want_hits)
{
    size_t cap = 0;
    if (want_hits) {
        size_t per = r->a->exact ? 256 : (size_t)r->a->top_k * 4;
        cap = (r->a->per_token ? r->n_query : 1) * r->sig->n_kv_heads * per;
    }
    for (;;) {
        if (cap) {
            free(r->hits);
            r->hits = malloc(cap * sizeof *r->hits);
            if (!r->hits)
                return cli_error("out of memory");
        }
        size_t n = 0;
        double t0 = cli_now_ms();
        int rc = db->ops->attend(db, q, out, lse, r->hits, cap, cap ? &n : NULL);
        r->total_ms = cli_now_ms() - t0;
        if (rc != 0)
            return cli_error_rc(rc, "query %s, layer %u", r->a->db, r->a->layer);
        r->n_hits = n;
        if (n <= cap)
            return CLI_OK;
        cap = n;
    }
}

static int write_out(const query_run *r, const float *out, const float *lse)
{
    char err[512];
    tf_spec specs[2] = {
        {"out", TF_F32, 3, {r->n_query, r->sig->n_q_heads, r->sig->head_dim}},
        {"lse", TF_F32, 2, {r->n_query, r->sig->n_q_heads}},
    };
    const void *data[2] = {out, lse};
    if (tf_save(r->a->out, specs, data, 2, NULL, NULL, 0, err, sizeof err) != 0)
        return cli_error("--out %s: %s", r->a->out, err);
    return CLI_OK;
}

static int run_query(const cli_args *a, cli_db *db, const float *qv, size_t n_query)
{
    const msadb_signature *sig = db->sig;
    query_run r = {.a = a, .sig = sig, .n_query = n_query};
    msadb_query q;
    msadb_query_init(&q);
    q.layer = a->layer;
    q.q = qv;
    q.n_query = n_query;
    q.spaces = a->spaces;
    q.n_spaces = a->n_spaces;
    q.where = a->where;
    q.n_where = a->n_where;
    q.top_k = a->top_k;
    q.select = a->select;
    q.summary = a->summary;
    q.exact = a->exact;
    q.per_token = a->per_token;
    q.stats = &r.stats;
    size_t nq = n_query * sig->n_q_heads;
    float *out = malloc(nq * sig->head_dim * sizeof(float));
    float *lse = malloc(nq * sizeof(float));
    doc_cache cache = {0};
    int rc = out && lse ? CLI_OK : cli_error("out of memory");
    int want_hits = a->json || !a->quiet;
    if (rc == CLI_OK)
        rc = attend(&r, db, &q, out, lse, want_hits);
    if (rc == CLI_OK && a->out)
        rc = write_out(&r, out, lse);
    cache.db = db;
    if (rc == CLI_OK && a->json)
        rc = print_json(&r, &cache);
    else if (rc == CLI_OK && !a->quiet)
        rc = print_table(&r, &cache);
    cache_free(&cache);
    free(r.hits);
    free(out);
    free(lse);
    return rc;
}

int cmd_query(const cli_args *a)
{
    cli_db *db;
    if (cli_db_open(a, 1, &db) != CLI_OK)
        return CLI_ERROR;
    const msadb_signature *sig = db->sig;
    float *qv = NULL;
    size_t n = 0;
    int rc = check_query_args(a, db, sig);
    if (rc == CLI_OK)
        rc = load_queries(a->q_file, sig, &qv, &n);
    if (rc == CLI_OK)
        rc = run_query(a, db, qv, n);
    free(qv);
    cli_db_close(db);
    return rc;
}
