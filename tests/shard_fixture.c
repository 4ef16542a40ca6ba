/* shard_fixture.c -- see shard_fixture.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tools/bench/workload.h"
#include "shard_fixture.h"
#include "testutil.h"

static wl_model wm;
static float *kbuf, *vbuf, *k1, *v1;
static char title[64], text[96];

int sfx_init(uint64_t n_tokens, uint64_t seed)
{
    wl_config c;
    wl_config_default(&c);
    c.seed = seed;
    c.n_tokens = n_tokens;
    c.d = SFX_D;
    c.G = SFX_G;
    c.block = SFX_BLOCK;
    c.doc_len_mean = 600.0f;
    c.n_per_size = 4;
    c.n_plain = 2;
    if (wl_init(&wm, &c) || wl_calibrate(&wm, NULL))
        return -1;
    size_t n = (size_t)WL_MAX_DOC * SFX_D;
    kbuf = malloc(n * SFX_NKV * sizeof(float));
    vbuf = malloc(n * SFX_NKV * sizeof(float));
    k1 = malloc(n * sizeof(float));
    v1 = malloc(n * sizeof(float));
    return kbuf && vbuf && k1 && v1 ? 0 : -1;
}

void sfx_free(void)
{
    wl_free(&wm);
    free(kbuf);
    free(vbuf);
    free(k1);
    free(v1);
}

size_t sfx_n_docs(void) { return wm.n_docs; }
size_t sfx_n_queries(void) { return wm.n_q; }

const sfx_query *sfx_query_info(size_t qi)
{
    static sfx_query q;
    q.needle_len = wm.qs[qi].needle_len;
    q.doc = wm.qs[qi].doc;
    q.tok = wm.qs[qi].tok;
    return &q;
}

void sfx_query_vec(size_t qi, float *q)
{
    memcpy(q, wm.qs[qi].q, sizeof(float) * SFX_G * SFX_D);
    wl_mirror(wm.qs[qi].q, q + SFX_G * SFX_D, SFX_G, SFX_D);
}

void sfx_signature(msadb_signature *sig)
{
    CHECK_OK(msadb_signature_init(sig, 2, SFX_NKV, SFX_NQH, SFX_D));
    sig->block_size = SFX_BLOCK;
}

void sfx_doc(size_t di, msadb_doc *doc)
{
    uint32_t L = wm.docs[di].len;
    wl_doc_kv(&wm, di, k1, v1);
    wl_plant(&wm, di, k1);
    memcpy(kbuf, k1, sizeof(float) * L * SFX_D);
    memcpy(vbuf, v1, sizeof(float) * L * SFX_D);
    wl_mirror(k1, kbuf + (size_t)L * SFX_D, L, SFX_D);
    wl_mirror(v1, vbuf + (size_t)L * SFX_D, L, SFX_D);
    snprintf(title, sizeof title, "doc-%zu", di);
    int tl = snprintf(text, sizeof text, "text of document %zu", di);
    memset(doc, 0, sizeof *doc);
    doc->title = title;
    doc->text = text;
    doc->text_len = (size_t)tl;
    doc->n_tokens = L;
    doc->kv_dtype = MSADB_DTYPE_F32;
    doc->keys = kbuf;
    doc->values = vbuf;
}

/* Documents [first, first+n) in batches of 8 through a store's or a
 * sharded store's batch functions. */
typedef struct filler {
    int (*begin)(void *h, void **b);
    int (*add)(void *b, const msadb_doc *doc);
    int (*commit)(void *b, uint64_t *ids);
} filler;

static void fill(const filler *f, void *h, size_t first, size_t n, uint64_t *ids)
{
    for (size_t i = first; i < first + n;) {
        void *b;
        CHECK_OK(f->begin(h, &b));
        size_t j = i;
        for (; j < first + n && j < i + 8; j++) {
            msadb_doc doc;
            sfx_doc(j, &doc);
            CHECK_OK(f->add(b, &doc));
        }
        CHECK_OK(f->commit(b, ids + i));
        i = j;
    }
}

static int st_begin(void *h, void **b) { return msadb_batch_begin(h, (msadb_batch **)b); }
static int st_add(void *b, const msadb_doc *doc) { return msadb_batch_add(b, doc); }
static int st_commit(void *b, uint64_t *ids) { return msadb_batch_commit(b, ids); }
static int sh_begin(void *h, void **b) { return msadb_shards_batch_begin(h, (msadb_shards_batch **)b); }
static int sh_add(void *b, const msadb_doc *doc) { return msadb_shards_batch_add(b, doc, NULL); }
static int sh_commit(void *b, uint64_t *ids) { return msadb_shards_batch_commit(b, ids); }

void sfx_fill_store(msadb_store *st, size_t first, size_t n, uint64_t *ids)
{
    static const filler f = {st_begin, st_add, st_commit};
    fill(&f, st, first, n, ids);
}

void sfx_fill_shards(msadb_shards *sh, size_t first, size_t n, uint64_t *ids)
{
    static const filler f = {sh_begin, sh_add, sh_commit};
    fill(&f, sh, first, n, ids);
}

int sfx_hits_needle(const msadb_hit *hits, size_t n, size_t qi, const uint64_t *ids, uint32_t kh)
{
    const wl_query *q = &wm.qs[qi];
    for (size_t i = 0; i < n; i++)
        if (hits[i].kv_head == kh && hits[i].doc_id == ids[q->doc] && hits[i].token_start <= q->tok &&
            q->tok < hits[i].token_end)
            return 1;
    return 0;
}

double sfx_rel_err(const float *a, const float *b, size_t rows, size_t d)
{
    double worst = 0;
    for (size_t r = 0; r < rows; r++) {
        double num = 0, den = 0;
        for (size_t i = 0; i < d; i++) {
            double x = (double)a[r * d + i] - b[r * d + i];
            num += x * x;
            den += (double)b[r * d + i] * b[r * d + i];
        }
        double e = den > 0 ? sqrt(num / den) : sqrt(num);
        if (e > worst)
            worst = e;
    }
    return worst;
}

double sfx_lse_err(const float *a, const float *b, size_t rows)
{
    double worst = 0;
    for (size_t r = 0; r < rows; r++) {
        if (isinf(a[r]) && isinf(b[r]) && a[r] == b[r])
            continue;
        double e = fabs((double)a[r] - b[r]);
        if (!(e <= worst))
            worst = e;
    }
    return worst;
}
