/* test_adapter.c -- the model adapter's correctness proof with the built-in
 * runtime and a small random llama model:
 *
 * 1. dense vs memory: running [document ; question] with ordinary attention
 *    gives the same question logits as ingesting the document into a store
 *    (every layer a memory layer) and running the question alone with
 *    memory attention in exact mode -- to 1e-4 with the model's f32
 *    products (MSADB_MODEL_F32); with bf16 products (model.h) the dense run
 *    rounds keys and probabilities that memory attention keeps in f32, so
 *    there the two agree to 2e-2;
 * 2. capture round trip: the K/V read back from the store equal what the
 *    model produced;
 * 3. sparse mode over a longer memory: how far the logits move from exact
 *    mode is measured and printed (and must stay finite). */
#include <ctype.h>
#include <math.h>
#include <string.h>

#include "runtime/model.h"
#include "msadb.h"
#include "testutil.h"

static const char doc_text[] =
    "The lighthouse keeper wrote in his log that the storm began at dusk, that the "
    "supply boat was late by two days, and that the lamp oil would last until Sunday.";
static const char question[] = "When does the oil run out?";

typedef struct {
    msadb_snapshot *snap;
    const msadb_signature *sig;
    int exact;
    uint32_t top_k;
} merge_ctx;

static int merge_hook(uint32_t layer, uint32_t first, uint32_t n, const float *q, float *out, float *lse,
                      void *user)
{
    merge_ctx *m = user;
    if (msadb_signature_memory_index(m->sig, layer) < 0)
        return 0; /* no memory in this layer */
    msadb_query mq;
    msadb_query_init(&mq);
    mq.layer = layer;
    mq.q = q;
    mq.n_query = n;
    mq.exact = m->exact;
    mq.top_k = m->top_k;
    (void)first;
    return msadb_attend_merge(m->snap, &mq, out, lse, NULL, 0, NULL);
}

typedef struct {
    float *k, *v; /* [layers][kv][T][d] */
    uint32_t kv, T, d;
} kv_sink;

static int capture_hook(uint32_t layer, uint32_t first, uint32_t n, const float *k, const float *v, void *user)
{
    kv_sink *s = user;
    for (uint32_t h = 0; h < s->kv; h++) {
        size_t dst = (((size_t)layer * s->kv + h) * s->T + first) * s->d;
        memcpy(s->k + dst, k + (size_t)h * n * s->d, (size_t)n * s->d * 4);
        memcpy(s->v + dst, v + (size_t)h * n * s->d, (size_t)n * s->d * 4);
    }
    return 0;
}

static int32_t *tokens(msadb_llm *llm, const char *text, size_t *n)
{
    size_t cap = strlen(text) + 8;
    int32_t *ids = malloc(cap * sizeof *ids);
    CHECK_OK(msadb_llm_tokenize(llm, text, strlen(text), 0, ids, NULL, cap, n));
    return ids;
}

/* Question logits [nq][vocab] with memory attention from `st`. */
static void memory_logits(msadb_model *m, msadb_store *st, const int32_t *q, size_t nq, int32_t pos0, int exact,
                          uint32_t top_k, float *logits)
{
    msadb_model_ctx *ctx;
    CHECK_OK(msadb_model_ctx_new(m, (uint32_t)nq, &ctx));
    merge_ctx mc = {NULL, msadb_store_signature(st), exact, top_k};
    CHECK_OK(msadb_snapshot_begin(st, &mc.snap));
    msadb_model_hooks hooks = {NULL, merge_hook, &mc};
    int32_t pos[64];
    for (size_t i = 0; i < nq; i++)
        pos[i] = pos0 + (int32_t)i;
    CHECK_OK(msadb_model_forward(ctx, q, (uint32_t)nq, pos, logits, 1, &hooks));
    msadb_snapshot_end(mc.snap);
    msadb_model_ctx_free(ctx);
}

static double max_diff(const float *a, const float *b, size_t n, double *scale)
{
    double m = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(isfinite(a[i]) && isfinite(b[i]));
        m = fmax(m, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)a[i]));
    }
    if (scale)
        *scale = s;
    return m;
}

static void test_dense_vs_memory(const char *path, const char *dir, int32_t query_pos_mode,
                                 int f32)
{
    if (f32)
        CHECK(setenv("MSADB_MODEL_F32", "1", 1) == 0);
    else
        CHECK(unsetenv("MSADB_MODEL_F32") == 0);
    msadb_llm *llm;
    CHECK_OK(msadb_llm_open(path, &llm));
    msadb_model *m;
    CHECK_OK(msadb_model_open(path, &m));
    const msadb_model_config *cfg = msadb_model_get_config(m);
    size_t T, nq;
    int32_t *doc = tokens(llm, doc_text, &T), *q = tokens(llm, question, &nq);
    CHECK(T > 40 && nq > 3 && nq < 64);
    int32_t pos0 = query_pos_mode ? (int32_t)T : 0;

    /* dense: document then question in one sequence */
    msadb_model_ctx *ctx;
    CHECK_OK(msadb_model_ctx_new(m, (uint32_t)(T + nq), &ctx));
    int32_t *pos = malloc((T + nq) * sizeof *pos);
    for (size_t i = 0; i < T; i++)
        pos[i] = (int32_t)i;
    for (size_t i = 0; i < nq; i++)
        pos[T + i] = pos0 + (int32_t)i;
    kv_sink sink = {malloc((size_t)cfg->n_layers * cfg->n_kv_heads * T * cfg->head_dim * 4),
                    malloc((size_t)cfg->n_layers * cfg->n_kv_heads * T * cfg->head_dim * 4), cfg->n_kv_heads,
                    (uint32_t)T, cfg->head_dim};
    msadb_model_hooks cap = {capture_hook, NULL, &sink};
    CHECK_OK(msadb_model_forward(ctx, doc, (uint32_t)T, pos, NULL, 0, &cap));
    size_t V = cfg->n_vocab;
    float *dense = malloc(nq * V * 4), *mem = malloc(nq * V * 4);
    CHECK_OK(msadb_model_forward(ctx, q, (uint32_t)nq, pos + T, dense, 1, NULL));
    msadb_model_ctx_free(ctx);

    /* memory: every layer reads memory; f32 storage; small blocks */
    msadb_signature sig;
    CHECK_OK(msadb_llm_signature(llm, &sig));
    sig.n_memory_layers = cfg->n_layers;
    for (uint32_t l = 0; l < cfg->n_layers; l++)
        sig.memory_layers[l] = (uint16_t)l;
    sig.dtype = MSADB_DTYPE_F32;
    sig.block_size = 16;
    char db[1200];
    snprintf(db, sizeof db, "%s/dense-%d-%d", dir, query_pos_mode, f32);
    msadb_store *st;
    CHECK_OK(msadb_create(db, &sig, NULL, &st));
    uint64_t id;
    CHECK_OK(msadb_llm_ingest(llm, st, NULL, "log", doc_text, strlen(doc_text), &id));
    memory_logits(m, st, q, nq, pos0, 1, 0, mem);
    double scale, diff = max_diff(dense, mem, nq * V, &scale);
    const char *mode = msadb_model_matmul(m);
    printf("dense vs memory (exact, question at %d, %s products): max |logit diff| %.3g (logits up "
           "to %.3g)\n", pos0, mode, diff, scale);
    CHECK(!f32 || !strcmp(mode, "f32"));
    CHECK(diff <= (strcmp(mode, "f32") ? 2e-2 : 1e-4) * fmax(1.0, scale));

    /* capture round trip: what the store holds is what the model made */
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    msadb_doc_info info;
    CHECK_OK(msadb_doc_get(snap, id, &info));
    CHECK(info.n_tokens == T && info.has_tokens && info.has_spans);
    float *kb = malloc(T * cfg->head_dim * 4), *vb = malloc(T * cfg->head_dim * 4);
    for (uint32_t p = 0; p < msadb_signature_planes(&sig); p++) {
        CHECK_OK(msadb_doc_kv(snap, id, p, kb, vb));
        size_t off = (size_t)p * T * cfg->head_dim; /* plane p = layer p / kv, head p % kv */
        CHECK(memcmp(kb, sink.k + off, T * cfg->head_dim * 4) == 0);
        CHECK(memcmp(vb, sink.v + off, T * cfg->head_dim * 4) == 0);
    }
    int32_t *ids_back = malloc(T * 4);
    CHECK_OK(msadb_doc_tokens(snap, id, ids_back, NULL, T));
    CHECK(memcmp(ids_back, doc, T * 4) == 0);
    msadb_snapshot_end(snap);
    msadb_close(st);

    /* the same capture in f16 storage stays within f16's bound */
    sig.dtype = MSADB_DTYPE_F16;
    snprintf(db, sizeof db, "%s/f16-%d-%d", dir, query_pos_mode, f32);
    CHECK_OK(msadb_create(db, &sig, NULL, &st));
    CHECK_OK(msadb_llm_ingest(llm, st, NULL, "log", doc_text, strlen(doc_text), &id));
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    for (uint32_t p = 0; p < msadb_signature_planes(&sig); p++) {
        CHECK_OK(msadb_doc_kv(snap, id, p, kb, NULL));
        for (size_t i = 0; i < T * cfg->head_dim; i++) {
            float x = sink.k[(size_t)p * T * cfg->head_dim + i];
            CHECK(fabsf(kb[i] - x) <= 1e-3f * fmaxf(1.0f, fabsf(x)));
        }
    }
    msadb_snapshot_end(snap);
    msadb_close(st);

    free(kb);
    free(vb);
    free(ids_back);
    free(sink.k);
    free(sink.v);
    free(pos);
    free(dense);
    free(mem);
    free(doc);
    free(q);
    msadb_model_free(m);
    msadb_llm_close(llm);
}

/* Sparse mode on a longer memory: measure how far the logits move. */
static void test_sparse_shift(const char *path, const char *dir)
{
    msadb_llm *llm;
    CHECK_OK(msadb_llm_open(path, &llm));
    msadb_model *m;
    CHECK_OK(msadb_model_open(path, &m));
    msadb_signature sig;
    CHECK_OK(msadb_llm_signature(llm, &sig)); /* latter half of the layers */
    sig.block_size = 16;
    char db[1200];
    snprintf(db, sizeof db, "%s/sparse", dir);
    msadb_store *st;
    CHECK_OK(msadb_create(db, &sig, NULL, &st));
    uint64_t rng = 99;
    char text[600];
    for (int d = 0; d < 40; d++) {
        size_t n = 0;
        while (n < 400) {
            static const char *words[] = {"storm", "boat", "oil", "lamp", "keeper", "dusk", "sea", "rock",
                                          "gull", "tide", "rope", "bell", "fog", "north", "log", "late"};
            n += (size_t)snprintf(text + n, sizeof text - n, "%s ", words[tu_rand(&rng) % 16]);
        }
        CHECK_OK(msadb_llm_ingest(llm, st, NULL, NULL, text, n, NULL));
    }
    CHECK_OK(msadb_llm_ingest(llm, st, NULL, "log", doc_text, strlen(doc_text), NULL));
    size_t nq;
    int32_t *q = tokens(llm, question, &nq);
    size_t V = msadb_model_get_config(m)->n_vocab;
    float *exact = malloc(nq * V * 4), *sparse = malloc(nq * V * 4);
    memory_logits(m, st, q, nq, 0, 1, 0, exact);
    msadb_stat_info si;
    CHECK_OK(msadb_stat(st, &si));
    uint32_t ks[] = {2, 8, 32};
    for (int i = 0; i < 3; i++) {
        memory_logits(m, st, q, nq, 0, 0, ks[i], sparse);
        double scale, diff = max_diff(exact, sparse, nq * V, &scale);
        size_t agree = 0;
        for (size_t t = 0; t < nq; t++) {
            size_t a = 0, b = 0;
            for (size_t j = 1; j < V; j++) {
                a = exact[t * V + j] > exact[t * V + a] ? j : a;
                b = sparse[t * V + j] > sparse[t * V + b] ? j : b;
            }
            agree += a == b;
        }
        printf("sparse top-%u blocks of %llu per plane: max |logit diff| %.3g (logits up to %.3g), argmax agrees "
               "on %zu/%zu tokens\n",
               ks[i], (unsigned long long)si.n_blocks, diff, scale, agree, nq);
    }
    free(exact);
    free(sparse);
    free(q);
    msadb_close(st);
    msadb_model_free(m);
    msadb_llm_close(llm);
}

/* A store of 16-token blocks for llm's signature (summary kinds: 0 = the
 * signature's default) holding doc_text and the question as documents. */
static msadb_store *ask_store(msadb_llm *llm, const char *dir, const char *name, uint32_t kinds,
                              msadb_signature *sig)
{
    CHECK_OK(msadb_llm_signature(llm, sig));
    sig->block_size = 16;
    if (kinds)
        sig->summary_kinds = kinds;
    char db[1200];
    snprintf(db, sizeof db, "%s/%s", dir, name);
    msadb_store *st;
    CHECK_OK(msadb_create(db, sig, NULL, &st));
    CHECK_OK(msadb_llm_ingest(llm, st, NULL, "log", doc_text, strlen(doc_text), NULL));
    CHECK_OK(msadb_llm_ingest(llm, st, NULL, "other", question, strlen(question), NULL));
    return st;
}

/* Generation: routing once on the question (the default) or again for every
 * generated token attend the same memory in exact mode, so the greedy
 * answers agree; in sparse mode both run and cite the document. */
static void test_ask_routing(const char *path, const char *dir)
{
    msadb_llm *llm;
    CHECK_OK(msadb_llm_open(path, &llm));
    msadb_signature sig;
    msadb_store *st = ask_store(llm, dir, "ask", 0, &sig);
    char a1[256], a2[256];
    size_t l1, l2, nh;
    msadb_hit hits[64];
    msadb_ask_params p;
    msadb_ask_params_init(&p);
    p.max_tokens = 12;
    p.exact = 1;
    CHECK_OK(msadb_llm_ask(llm, st, question, strlen(question), &p, a1, sizeof a1, &l1, hits, 64, &nh));
    p.route_each_token = 1;
    CHECK_OK(msadb_llm_ask(llm, st, question, strlen(question), &p, a2, sizeof a2, &l2, hits, 64, &nh));
    CHECK(l1 == l2 && memcmp(a1, a2, l1) == 0);
    p.exact = 0;
    p.top_k = 2;
    for (int each = 0; each < 2; each++) {
        p.route_each_token = each;
        CHECK_OK(msadb_llm_ask(llm, st, question, strlen(question), &p, a1, sizeof a1, &l1, hits, 64, &nh));
        CHECK(nh == 2 * sig.n_kv_heads);
    }
    msadb_close(st);
    msadb_llm_close(llm);
}

/* The hits of one msadb_llm_ask with the given routing choice. */
static void ask_hits(msadb_llm *llm, msadb_store *st, uint32_t summary, int score, msadb_hit *hits,
                     size_t *nh)
{
    msadb_ask_params p;
    msadb_ask_params_init(&p);
    p.max_tokens = 4;
    p.top_k = 3;
    p.summary = summary;
    p.score = score;
    char a[256];
    size_t l;
    CHECK_OK(msadb_llm_ask(llm, st, question, strlen(question), &p, a, sizeof a, &l, hits, 64, nh));
    CHECK(*nh > 0 && *nh <= 64);
}

static int same_hits(const msadb_hit *a, size_t na, const msadb_hit *b, size_t nb)
{
    if (na != nb)
        return 0;
    for (size_t i = 0; i < na; i++)
        if (a[i].block_id != b[i].block_id || a[i].kv_head != b[i].kv_head || a[i].score != b[i].score)
            return 0;
    return 1;
}

/* Routing choice in msadb_llm_ask: a model that declares dot-product mean
 * routing (GGUF msadb.routing.*) routes exactly as an undeclared model asked
 * explicitly for (MEAN, DOT), and differently from the engine's default and
 * from cosine; one declaring "dot-centred" as one asked for (MEAN,
 * DOT_CENTRED); bad choices and bad declarations are refused. */
static void test_declared_routing(const char *plain, const char *dir)
{
    const char *shape = "--layers 4 --heads 4 --kv-heads 2 --head-dim 16 --ffn 64";
    char opts[256];
    snprintf(opts, sizeof opts, "%s --routing mean:dot", shape);
    const char *p = tu_make_model(dir, "declared", opts);
    char declared[1200];
    snprintf(declared, sizeof declared, "%s", p);
    msadb_llm *l0, *l1;
    CHECK_OK(msadb_llm_open(plain, &l0));
    CHECK_OK(msadb_llm_open(declared, &l1));
    msadb_signature sig;
    msadb_store *st = ask_store(l0, dir, "routing", 0, &sig);
    msadb_hit h_decl[64], h_dot[64], h_cos[64], h_def[64];
    size_t n_decl, n_dot, n_cos, n_def;
    ask_hits(l1, st, 0, 0, h_decl, &n_decl);
    ask_hits(l0, st, MSADB_SUMMARY_MEAN, MSADB_SCORE_DOT, h_dot, &n_dot);
    ask_hits(l0, st, MSADB_SUMMARY_MEAN, MSADB_SCORE_COSINE, h_cos, &n_cos);
    ask_hits(l0, st, 0, 0, h_def, &n_def);
    CHECK(same_hits(h_decl, n_decl, h_dot, n_dot));
    CHECK(!same_hits(h_decl, n_decl, h_cos, n_cos)); /* cosine scores are scale-free */
    CHECK(!same_hits(h_decl, n_decl, h_def, n_def)); /* the default routes with reps */
    /* an explicit choice overrides the model's */
    ask_hits(l1, st, MSADB_SUMMARY_MEAN, MSADB_SCORE_COSINE, h_def, &n_def);
    CHECK(same_hits(h_def, n_def, h_cos, n_cos));
    /* refused: a summary the store lacks, unknown values */
    msadb_ask_params ap;
    msadb_ask_params_init(&ap);
    char a[64];
    size_t l;
    ap.summary = MSADB_SUMMARY_MINMAX;
    CHECK_RC(msadb_llm_ask(l1, st, question, strlen(question), &ap, a, sizeof a, &l, NULL, 0, NULL),
             MSADB_EINVAL);
    ap.summary = 3;
    CHECK_RC(msadb_llm_ask(l1, st, question, strlen(question), &ap, a, sizeof a, &l, NULL, 0, NULL),
             MSADB_EINVAL);
    ap.summary = 0;
    ap.score = 7;
    CHECK_RC(msadb_llm_ask(l1, st, question, strlen(question), &ap, a, sizeof a, &l, NULL, 0, NULL),
             MSADB_EINVAL);
    /* a model declaring position-centred dot routing routes as an explicit
     * (MEAN, DOT_CENTRED), not as plain dot */
    snprintf(opts, sizeof opts, "%s --routing mean:dot-centred", shape);
    msadb_llm *l2;
    CHECK_OK(msadb_llm_open(tu_make_model(dir, "declared-centred", opts), &l2));
    msadb_hit h_cen[64], h_cen2[64];
    size_t n_cen, n_cen2;
    ask_hits(l2, st, 0, 0, h_cen, &n_cen);
    ask_hits(l0, st, MSADB_SUMMARY_MEAN, MSADB_SCORE_DOT_CENTRED, h_cen2, &n_cen2);
    CHECK(same_hits(h_cen, n_cen, h_cen2, n_cen2));
    CHECK(!same_hits(h_cen, n_cen, h_dot, n_dot)); /* centred scores differ */
    msadb_llm_close(l2);
    msadb_close(st);
    /* a store without the declared summary: the engine's default applies */
    st = ask_store(l0, dir, "routing-reps", MSADB_SUMMARY_REPS, &sig);
    ask_hits(l1, st, 0, 0, h_decl, &n_decl);
    ask_hits(l0, st, 0, 0, h_def, &n_def);
    CHECK(same_hits(h_decl, n_decl, h_def, n_def));
    msadb_close(st);
    msadb_llm_close(l0);
    msadb_llm_close(l1);
    /* bad declarations */
    const char *bad[] = {"--routing mean:l2", "--routing median", "--routing reps:dotdotdotdotdotdotdot"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(opts, sizeof opts, "%s %s", shape, bad[i]);
        msadb_llm *lb = NULL;
        CHECK_RC(msadb_llm_open(tu_make_model(dir, "bad-routing", opts), &lb), MSADB_EINVAL);
        CHECK(lb == NULL);
    }
}

/* A small model with the metadata options `keys` (make_test_model's), opened. */
static msadb_llm *open_keyed(const char *dir, const char *name, const char *keys)
{
    char opts[512];
    snprintf(opts, sizeof opts, "--layers 2 --heads 4 --kv-heads 2 --head-dim 16 --ffn 64 %s", keys);
    msadb_llm *l = NULL;
    CHECK_OK(msadb_llm_open(tu_make_model(dir, name, opts), &l));
    return l;
}

/* A small model with the metadata options `keys` is refused at load
 * (MSADB_EINVAL), and msadb_llm_explain names `key`. */
static void check_refused(const char *dir, const char *keys, const char *key)
{
    char opts[512];
    snprintf(opts, sizeof opts, "--layers 2 --heads 4 --kv-heads 2 --head-dim 16 --ffn 64 %s", keys);
    const char *p = tu_make_model(dir, "refused", opts);
    msadb_llm *lb = NULL;
    CHECK_RC(msadb_llm_open(p, &lb), MSADB_EINVAL);
    CHECK(lb == NULL);
    char why[256];
    CHECK_OK(msadb_llm_explain(p, MSADB_EINVAL, why, sizeof why));
    CHECK(strstr(why, key) != NULL);
}

/* A short string key (make_test_model option `opt`, GGUF `key`) of at most
 * max bytes is refused at load when empty or one byte longer. */
static void check_refused_str(const char *dir, const char *opt, const char *key, size_t max)
{
    char longer[300], keys[340];
    CHECK(max + 1 < sizeof longer);
    memset(longer, 'a', max + 1);
    longer[max + 1] = 0;
    const char *bad[] = {"''", longer};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(keys, sizeof keys, "%s %s", opt, bad[i]);
        check_refused(dir, keys, key);
    }
}

/* A model's declared abstain answer (GGUF msadb.abstain): read at load,
 * matched without case, surrounding white space and one closing full stop;
 * absent, it matches nothing; bad values are refused at load with an
 * explanation naming the key. */
static void test_abstain(const char *plain, const char *dir)
{
    msadb_llm *l0, *l1 = open_keyed(dir, "abstain", "--abstain 'not in memory'");
    CHECK_OK(msadb_llm_open(plain, &l0));
    const char *t = "x";
    CHECK_RC(msadb_llm_abstain_answer(l0, &t), MSADB_ENOTFOUND);
    CHECK(t == NULL);
    CHECK_OK(msadb_llm_abstain_answer(l1, &t));
    CHECK(t && !strcmp(t, "not in memory"));
    static const struct {
        const char *answer;
        int is;
    } cases[] = {{"not in memory", 1},  {" Not in memory.\n", 1}, {"NOT IN MEMORY", 1},
                 {"not in memory..", 0}, {"not in memor", 0},      {"not in memory yet", 0},
                 {"", 0},                {"Dublin", 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *s = cases[i].answer;
        CHECK_RC(msadb_llm_is_abstain(l1, s, strlen(s)), cases[i].is);
        CHECK_RC(msadb_llm_is_abstain(l0, s, strlen(s)), 0);
    }
    CHECK_RC(msadb_llm_is_abstain(l1, NULL, 0), 0);
    CHECK_RC(msadb_llm_is_abstain(l1, NULL, 3), MSADB_EINVAL);
    CHECK_RC(msadb_llm_is_abstain(NULL, "x", 1), MSADB_EINVAL);
    CHECK_RC(msadb_llm_abstain_answer(NULL, &t), MSADB_EINVAL);
    CHECK_RC(msadb_llm_abstain_answer(l1, NULL), MSADB_EINVAL);
    msadb_llm_close(l0);
    msadb_llm_close(l1);
    check_refused_str(dir, "--abstain", "msadb.abstain", 256);
}

/* What a follow-up test collects from on_text and on_followup. */
typedef struct {
    char text[2048], fu[4][1024];
    size_t n_text, n_fu;
    int stop_at_followup;
} fu_log;

static int fu_on_text(const char *t, size_t n, void *user)
{
    fu_log *g = user;
    if (g->n_text + n < sizeof g->text) {
        memcpy(g->text + g->n_text, t, n);
        g->n_text += n;
        g->text[g->n_text] = 0;
    }
    return 0;
}

static int fu_on_followup(const char *q, size_t n, void *user)
{
    fu_log *g = user;
    if (g->n_fu < 4 && n < sizeof g->fu[0]) {
        memcpy(g->fu[g->n_fu], q, n);
        g->fu[g->n_fu][n] = 0;
    }
    g->n_fu++;
    return g->stop_at_followup;
}

/* Asks q with max_tokens and `followups`, logging streamed text and
 * follow-ups; the answer into a (2048 bytes) and the hits into h (64). */
static int fu_ask(msadb_llm *l, msadb_store *st, const char *q, uint32_t max_tokens, uint32_t followups,
                  int stop, fu_log *g, char *a, msadb_hit *h, size_t *nh)
{
    msadb_ask_params p;
    msadb_ask_params_init(&p);
    p.max_tokens = max_tokens;
    p.top_k = 3;
    p.followups = followups;
    p.on_text = fu_on_text;
    p.on_followup = fu_on_followup;
    memset(g, 0, sizeof *g);
    g->stop_at_followup = stop;
    p.user = g;
    size_t len = 0;
    return msadb_llm_ask(l, st, q, strlen(q), &p, a, 2048, &len, h, 64, nh);
}

/* Follow-up questions (GGUF msadb.followup): an answer that begins with the
 * declared prefix is asked again, the text after the prefix (generated up
 * to 64 tokens whatever max_tokens says) as the question, and the answer is
 * that question's (its text alone streamed, its hits returned); with
 * followups 0 or a model without the key, the answer is the first one;
 * on_followup may stop; bad declarations are refused.  The prefix is taken
 * from the random model's own answer, so the follow-up path runs without a
 * trained model. */
static void test_followup(const char *dir)
{
    msadb_llm *l0 = open_keyed(dir, "fu0", "");
    msadb_signature sig;
    msadb_store *st = ask_store(l0, dir, "followup", 0, &sig);
    static char a0[2048], a64[2048], a1[2048], want[2048], fqs[2048];
    msadb_hit h0[64], h1[64], hw[64];
    size_t n0, n1, nw;
    static fu_log g;
    CHECK_OK(fu_ask(l0, st, question, 8, 2, 0, &g, a0, h0, &n0));
    CHECK(g.n_fu == 0 && !strcmp(g.text, a0)); /* no key: no follow-up */
    CHECK_OK(fu_ask(l0, st, question, 64, 0, 0, &g, a64, h1, &n1));
    /* the prefix: the answer's first character, if the shell can quote it */
    const char *s = a64;
    while (*s == ' ')
        s++;
    CHECK(*s && *s != '\'' && s[1]);
    char keys[128], prefix[2] = {s[0], 0};
    snprintf(keys, sizeof keys, "--followup '%s'", prefix);
    msadb_llm *l1 = open_keyed(dir, "fu1", keys);
    /* followups 0: the first answer, streamed whole */
    CHECK_OK(fu_ask(l1, st, question, 8, 0, 0, &g, a1, h1, &n1));
    CHECK(!strcmp(a1, a0) && !strcmp(g.text, a0) && g.n_fu == 0 && same_hits(h1, n1, h0, n0));
    /* followups 1: the rest of the 64-token answer is asked; its answer
     * (8 tokens) is the answer */
    const char *fq = s + 1;
    while (isspace((unsigned char)*fq))
        fq++;
    size_t fl = strlen(fq);
    while (fl && isspace((unsigned char)fq[fl - 1]))
        fl--;
    CHECK(fl > 0);
    snprintf(fqs, sizeof fqs, "%.*s", (int)fl, fq);
    CHECK_OK(fu_ask(l0, st, fqs, 8, 0, 0, &g, want, hw, &nw));
    CHECK_OK(fu_ask(l1, st, question, 8, 1, 0, &g, a1, h1, &n1));
    CHECK(g.n_fu == 1 && !strcmp(g.fu[0], fqs));
    CHECK(!strcmp(a1, want) && !strcmp(g.text, want) && same_hits(h1, n1, hw, nw));
    /* on_followup stops: the answer is the follow-up as written, nothing streamed */
    CHECK_OK(fu_ask(l1, st, question, 8, 2, 1, &g, a1, h1, &n1));
    CHECK(g.n_fu == 1 && !strcmp(a1, a64) && g.n_text == 0);
    /* more follow-ups than 8 are refused */
    CHECK_RC(fu_ask(l1, st, question, 8, 9, 0, &g, a1, h1, &n1), MSADB_EINVAL);
    msadb_close(st);
    msadb_llm_close(l0);
    msadb_llm_close(l1);
    check_refused_str(dir, "--followup", "msadb.followup", 64);
}

/* The stored keys/values of a document, plane 0, [n_tokens][head_dim]
 * (malloc'd; *n gets the token count). */
static float *doc_keys(msadb_store *st, uint64_t id, uint32_t head_dim, uint64_t *n)
{
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    msadb_doc_info info;
    CHECK_OK(msadb_doc_get(snap, id, &info));
    *n = info.n_tokens;
    float *k = malloc(*n * head_dim * sizeof *k), *v = malloc(*n * head_dim * sizeof *v);
    CHECK(k && v);
    CHECK_OK(msadb_doc_kv(snap, id, 0, k, v));
    msadb_snapshot_end(snap);
    free(v);
    return k;
}

/* A document's token ids (malloc'd, n_tokens of them; *n gets the count). */
static int32_t *doc_ids(msadb_store *st, uint64_t id, uint64_t *n)
{
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    msadb_doc_info info;
    CHECK_OK(msadb_doc_get(snap, id, &info));
    *n = info.n_tokens;
    int32_t *t = malloc(*n * sizeof *t);
    CHECK(t != NULL);
    CHECK_OK(msadb_doc_tokens(snap, id, t, NULL, *n));
    msadb_snapshot_end(snap);
    return t;
}

/* MSADB_SEGMENT_JOINED: one pass over the text tokenized paragraph by
 * paragraph.  Its tokens are the paragraphs' own (ingested one by one,
 * `ids` in sb), not the whole text's (idd in sa); its first paragraph's keys
 * are that paragraph's alone (a token attends only what precedes it); later
 * ones differ from the per-paragraph reading (ka, na tokens): they attend
 * the paragraphs before them. */
static void check_joined(msadb_llm *l, msadb_store *sa, msadb_store *sb, const char *whole, uint64_t idd,
                         const uint64_t ids[4], const float *ka, uint64_t na, uint32_t hd)
{
    uint64_t idj, nj, nd, n, at = 0;
    CHECK_OK(msadb_llm_set_segment(l, MSADB_SEGMENT_JOINED));
    CHECK_RC(msadb_llm_get_segment(l), MSADB_SEGMENT_JOINED);
    CHECK_OK(msadb_llm_ingest(l, sa, NULL, "whole", whole, strlen(whole), &idj));
    CHECK(idj != idd);
    int32_t *tj = doc_ids(sa, idj, &nj), *td = doc_ids(sa, idd, &nd);
    CHECK(nj != nd || memcmp(tj, td, nj * sizeof *tj)); /* the text tokenizes otherwise whole */
    int same = 1;
    for (size_t i = 0; i < 4; i++) {
        int32_t *tp = doc_ids(sb, ids[i], &n);
        CHECK(at + n <= nj);
        if (at + n <= nj)
            same &= !memcmp(tj + at, tp, n * sizeof *tp);
        at += n;
        free(tp);
    }
    CHECK(at == nj && same);
    float *kj = doc_keys(sa, idj, hd, &nj), *k0 = doc_keys(sb, ids[0], hd, &n);
    CHECK(nj == na && n < nj);
    double scale, diff = max_diff(kj, k0, n * hd, &scale); /* one pass over more rows: GEMM may round otherwise */
    CHECK(diff <= 1e-4 * fmax(1.0, scale));
    diff = max_diff(kj + n * hd, ka + n * hd, (nj - n) * hd, &scale); /* later paragraphs see the earlier ones */
    CHECK(diff > 1e-2 * scale);
    free(kj);
    free(k0);
    free(tj);
    free(td);
    CHECK_OK(msadb_llm_set_segment(l, MSADB_SEGMENT_DOCUMENT));
}

/* The question's answer and hit scores with one interleave round over a
 * store holding only `whole`: the pulled text is read as the segment mode
 * reads a document (whole, or joined paragraph by paragraph), so the two
 * modes put other tokens before the question and route otherwise; the same
 * mode twice gives the same. */
static void ask_interleaved(msadb_llm *l, msadb_store *st, int segment, float *scores, size_t *n_hits)
{
    static const char q[] = "What is the PIN of the lamp?";
    msadb_ask_params p;
    msadb_ask_params_init(&p);
    p.interleave = 1;
    p.max_tokens = 4;
    msadb_hit hits[64];
    char a[256];
    size_t al;
    CHECK_OK(msadb_llm_set_segment(l, segment));
    CHECK_OK(msadb_llm_ask(l, st, q, strlen(q), &p, a, sizeof a, &al, hits, 64, n_hits));
    CHECK(*n_hits > 0 && *n_hits <= 64);
    for (size_t i = 0; i < *n_hits && i < 64; i++)
        scores[i] = hits[i].score;
    CHECK_OK(msadb_llm_set_segment(l, MSADB_SEGMENT_DOCUMENT));
}

static void check_interleave_segment(msadb_llm *l, const msadb_signature *sig, const char *dir,
                                     const char *whole)
{
    char db[1200];
    msadb_store *st;
    uint64_t id;
    snprintf(db, sizeof db, "%s/seg-interleave", dir);
    CHECK_OK(msadb_create(db, sig, NULL, &st));
    CHECK_OK(msadb_llm_ingest(l, st, NULL, "whole", whole, strlen(whole), &id));
    float sd[64], sj[64], sj2[64];
    size_t nd, nj, nj2;
    ask_interleaved(l, st, MSADB_SEGMENT_DOCUMENT, sd, &nd);
    ask_interleaved(l, st, MSADB_SEGMENT_JOINED, sj, &nj);
    ask_interleaved(l, st, MSADB_SEGMENT_JOINED, sj2, &nj2);
    CHECK(nj == nj2 && !memcmp(sj, sj2, nj * sizeof *sj));
    CHECK(nd != nj || memcmp(sd, sj, nd * sizeof *sd)); /* the pulled text read otherwise */
    msadb_close(st);
}

/* MSADB_SEGMENT_PARAGRAPH: a text read per paragraph stores exactly what its
 * paragraphs ingested one by one as documents store (each tokenized and run
 * on its own, positions from 0), and the model's key declares the mode.
 * MSADB_SEGMENT_JOINED: check_joined. */
static void test_segment(const char *plain, const char *dir)
{
    msadb_llm *l0, *l1 = open_keyed(dir, "segment", "--segment paragraph");
    CHECK_OK(msadb_llm_open(plain, &l0));
    CHECK_RC(msadb_llm_get_segment(l0), MSADB_SEGMENT_DOCUMENT);
    CHECK_RC(msadb_llm_get_segment(l1), MSADB_SEGMENT_PARAGRAPH);
    CHECK_RC(msadb_llm_get_segment(NULL), MSADB_EINVAL);
    CHECK_RC(msadb_llm_set_segment(NULL, MSADB_SEGMENT_DOCUMENT), MSADB_EINVAL);
    CHECK_RC(msadb_llm_set_segment(l0, 0), MSADB_EINVAL);
    CHECK_RC(msadb_llm_set_segment(l0, 4), MSADB_EINVAL);
    CHECK_RC(msadb_llm_get_segment(l0), MSADB_SEGMENT_DOCUMENT);
    msadb_llm_close(l1);
    l1 = open_keyed(dir, "joined", "--segment joined");
    CHECK_RC(msadb_llm_get_segment(l1), MSADB_SEGMENT_JOINED);
    msadb_llm_close(l1);

    static const char *const paras[] = {"Notes of the day.\n\n", "The PIN of the lamp is 1234.\n\n\n",
                                        "  An indented line.\nA second line.\n\n", "End."};
    char whole[256] = "";
    for (size_t i = 0; i < 4; i++)
        strcat(whole, paras[i]);
    msadb_signature sig;
    CHECK_OK(msadb_llm_signature(l0, &sig));
    sig.dtype = MSADB_DTYPE_F32;
    char db[1200];
    msadb_store *sa, *sb;
    snprintf(db, sizeof db, "%s/seg-a", dir);
    CHECK_OK(msadb_create(db, &sig, NULL, &sa));
    snprintf(db, sizeof db, "%s/seg-b", dir);
    CHECK_OK(msadb_create(db, &sig, NULL, &sb));
    uint64_t ida, idd, ids[4];
    CHECK_OK(msadb_llm_ingest(l0, sa, NULL, "whole", whole, strlen(whole), &idd));
    CHECK_OK(msadb_llm_set_segment(l0, MSADB_SEGMENT_PARAGRAPH));
    CHECK_OK(msadb_llm_ingest(l0, sa, NULL, "whole", whole, strlen(whole), &ida));
    CHECK(ida != idd); /* the other mode's keys/values: not taken for a duplicate */
    CHECK_OK(msadb_llm_set_segment(l0, MSADB_SEGMENT_DOCUMENT));
    for (size_t i = 0; i < 4; i++)
        CHECK_OK(msadb_llm_ingest(l0, sb, NULL, "part", paras[i], strlen(paras[i]), &ids[i]));
    uint64_t na, nd, n;
    float *ka = doc_keys(sa, ida, sig.head_dim, &na), *kd = doc_keys(sa, idd, sig.head_dim, &nd);
    uint64_t at = 0;
    int same = 1, differs = 0;
    for (size_t i = 0; i < 4; i++) {
        float *kp = doc_keys(sb, ids[i], sig.head_dim, &n);
        CHECK(at + n <= na);
        if (at + n <= na)
            same &= !memcmp(ka + at * sig.head_dim, kp, n * sig.head_dim * sizeof *kp);
        at += n;
        free(kp);
    }
    CHECK(at == na && same);
    for (uint64_t i = 0; i < na * sig.head_dim && i < nd * sig.head_dim; i++)
        differs |= ka[i] != kd[i];
    CHECK(differs); /* whole-document reading is another thing */
    check_joined(l0, sa, sb, whole, idd, ids, ka, na, sig.head_dim);
    check_interleave_segment(l0, &sig, dir, whole);
    /* the paragraph document keeps the whole text */
    char text[256];
    size_t tl = 0;
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(sa, &snap));
    CHECK_OK(msadb_doc_text(snap, ida, text, sizeof text, &tl));
    msadb_snapshot_end(snap);
    CHECK(tl == strlen(whole) && !memcmp(text, whole, tl));
    free(ka);
    free(kd);
    msadb_close(sa);
    msadb_close(sb);
    msadb_llm_close(l0);

    check_refused(dir, "--segment sentence", "msadb.segment");
}

int main(void)
{
    const char *dir = tu_tmpdir("adapter");
    const char *made = tu_make_model(dir, "m", "--layers 4 --heads 4 --kv-heads 2 --head-dim 16 --ffn 64");
    if (!made) {
        fprintf(stderr, "skipping: needs MSADB_SOURCE_ROOT and python3 with numpy\n");
        return 77;
    }
    char path[1200]; /* tu_make_model reuses its buffer: the cases get a copy */
    snprintf(path, sizeof path, "%s", made);
    test_segment(path, dir);
    test_dense_vs_memory(path, dir, 1, 1);
    test_dense_vs_memory(path, dir, 0, 1);
    test_dense_vs_memory(path, dir, 1, 0); /* the default products: bf16 where the CPU has them */
    test_sparse_shift(path, dir);
    test_ask_routing(path, dir);
    test_declared_routing(path, dir);
    test_abstain(path, dir);
    test_followup(dir);
    printf("test_adapter: ok\n");
    return 0;
}
