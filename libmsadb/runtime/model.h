/* model.h -- the built-in transformer runtime: the llama architecture
 * (RMSNorm, RoPE, grouped-query attention, SwiGLU) read from a GGUF file and
 * run on the CPU with OpenBLAS, with hooks through which the store captures
 * keys/values during ingest and merges memory attention during inference.
 *
 * Weights.  Matrices are dequantized to f32 once at load (F16, BF16, Q8_0)
 * or, for F32 tensors whose bytes are suitably aligned in the file, used in
 * place from the memory map.  Every weight is checked to be finite at load.
 *
 * Matrix products.  Where the CPU has AVX512-BF16 (runtime/matmul.h), the
 * projections (q, k, v, output, FFN, the output head) round their inputs
 * and weights to bf16 and accumulate in f32, on weights packed at load (the
 * f32 copies are then not kept); elsewhere, or with the environment
 * variable MSADB_MODEL_F32 set (not "" or "0") when the model is loaded,
 * they are OpenBLAS f32 products, the reference path.  Attention follows
 * the model: in bf16 mode the KV cache itself is bf16 (keys and values
 * rounded once, when cached) and both attention products (scaled q times
 * the keys, probabilities times the values) run on the same kernel; the
 * softmax, its log-sum-exp and everything the hooks see stay f32 (capture
 * receives the f32 keys and values before rounding).  A bf16 model differs
 * from the f32 one by the rounding of those inputs (logits agree to about
 * 1e-2; tests/model_reference.py checks both against a reference that
 * rounds alike).
 *
 * RoPE convention (GGUF-native, llama.cpp's "normal" mode).  For a head
 * vector x and position p, the consecutive pairs (x[2i], x[2i+1]) with
 * 2i < n_rot are rotated by the angle p * freq_scale * theta^(-2i / n_rot);
 * dims from n_rot on are left alone.  The q/k weights are used exactly as
 * stored: a Hugging Face checkpoint (which rotates the halves (x[i],
 * x[i + d/2])) must have its q/k rows permuted when converted to GGUF, as
 * llama.cpp's converter does.  freq_scale is 1 / llama.rope.scaling.factor
 * for "linear" scaling and 1 without scaling.
 *
 * Positions are given by the caller for every token (document-wise positions
 * for ingest); the causal mask follows the order of tokens in the KV cache,
 * not their positions: every token attends to every cached token before it
 * and to itself.
 *
 * Threads.  A model is read-only after load and may be shared by contexts
 * used from different threads; a context is used by one thread at a time.
 * f32 products and attention use OpenBLAS (and its threads); bf16 products
 * use the context's own threads: MSADB_MODEL_THREADS, else the online CPUs
 * (at most 8), parked between products.
 */
#ifndef MSADB_MODEL_H
#define MSADB_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/gguf.h"
#include "core/util.h"

/* Tokens processed per internal step of msadb_model_forward: longer inputs
 * are run in consecutive chunks of this many tokens (the hooks are called
 * once per chunk and layer). */
#define MSADB_MODEL_UBATCH 512
/* Most tokens a context may hold. */
#define MSADB_MODEL_MAX_CTX (1u << 24)

typedef struct msadb_model_config {
    uint32_t n_layers;    /* llama.block_count */
    uint32_t n_embd;      /* llama.embedding_length */
    uint32_t n_heads;     /* llama.attention.head_count (query heads) */
    uint32_t n_kv_heads;  /* llama.attention.head_count_kv (default n_heads) */
    uint32_t head_dim;    /* llama.attention.key_length (default n_embd / n_heads) */
    uint32_t n_ff;        /* llama.feed_forward_length */
    uint32_t n_vocab;     /* rows of token_embd.weight */
    uint32_t n_ctx_train; /* llama.context_length (informational) */
    uint32_t n_rot;       /* llama.rope.dimension_count (default head_dim) */
    float rope_theta;     /* llama.rope.freq_base (default 10000) */
    float rope_freq_scale; /* 1 / llama.rope.scaling.factor ("linear"), else 1 */
    float norm_eps;       /* llama.attention.layer_norm_rms_epsilon (default 1e-5) */
    int tied_output;      /* 1 when output.weight is absent (token_embd is reused) */
    uint32_t weight_type; /* ggml type of blk.0.attn_q.weight as stored */
    int32_t bos_token;    /* tokenizer.ggml.bos_token_id, or -1 */
    int32_t eos_token;    /* tokenizer.ggml.eos_token_id, or -1 */
} msadb_model_config;

typedef struct msadb_model msadb_model;
typedef struct msadb_model_ctx msadb_model_ctx;

/* Loads a llama model from an open GGUF file.  The model may keep pointers
 * into the file (F32 weights are used in place), so `g` must stay open until
 * msadb_model_free().  Errors: MSADB_EINVAL (not general.architecture
 * "llama", or a feature the runtime lacks: rope scaling other than linear,
 * rope_freqs.weight, key_length != value_length, odd n_rot),
 * MSADB_ENOTFOUND (a required key or tensor is missing), MSADB_ECORRUPT
 * (inconsistent sizes or shapes, out-of-range values: layers and heads
 * above MSADB_MAX_LAYERS / MSADB_MAX_HEADS, head dim above
 * MSADB_MAX_HEAD_DIM, eps outside (0, 1)), MSADB_EDTYPE (a weight type
 * other than F32/F16/BF16/Q8_0), MSADB_ENONFINITE (a weight is NaN or
 * infinite), MSADB_ENOMEM; and the GGUF reader's errors for
 * msadb_model_open. */
MSADB_HIDDEN int msadb_model_load(const msadb_gguf *g, msadb_model **out);
/* Opens a GGUF file and loads it; the model owns the file handle. */
MSADB_HIDDEN int msadb_model_open(const char *path, msadb_model **out);
/* Frees a model (and the file handle it owns); NULL allowed.  Every context
 * of the model must have been freed. */
MSADB_HIDDEN void msadb_model_free(msadb_model *m);
/* Configuration read from the file; valid until msadb_model_free(). */
MSADB_HIDDEN const msadb_model_config *msadb_model_get_config(const msadb_model *m);
/* The GGUF file the model was loaded from (for the tokenizer's metadata). */
MSADB_HIDDEN const msadb_gguf *msadb_model_gguf(const msadb_model *m);
/* Bytes of weights the model allocated (dequantized or packed copies);
 * weights used in place from the memory map are not counted. */
MSADB_HIDDEN size_t msadb_model_weight_bytes(const msadb_model *m);
/* "bf16" or "f32": how the model's products run (above); a static string. */
MSADB_HIDDEN const char *msadb_model_matmul(const msadb_model *m);

/* Hooks into the forward pass.  Both are optional (NULL).  A non-zero return
 * stops the forward pass, which then returns that value and leaves the KV
 * cache as it was before the call.  Pointers passed to a hook are valid
 * during the call only.  Inputs longer than MSADB_MODEL_UBATCH are run in
 * chunks; the hooks see each chunk (for every layer, in layer order, chunk
 * after chunk), with `first` the index of the chunk's first token in the
 * tokens given to msadb_model_forward() and `n` its length.
 *
 * capture: called for every layer once the layer's keys and values are
 *   computed.  k and v are [n_kv_heads][n][head_dim] f32, head-major (one
 *   contiguous [n][head_dim] matrix per kv head, the layout of msadb_doc for
 *   one layer); keys are after RoPE at the caller's positions.
 *
 * attend: called for every layer after local attention and before the output
 *   projection.  q is [n][n_heads][head_dim] f32 (token-major, the layout of
 *   msadb_query.q), after RoPE.  out is the local attention result
 *   [n][n_heads][head_dim] and lse its log-sum-exp [n][n_heads]: lse =
 *   log(sum_t exp(s_t)) (natural log) over the scaled scores
 *   s_t = q . k_t / sqrt(head_dim) of the cached keys the token sees.  The
 *   hook may rewrite out (and lse) in place, e.g. with msadb_lse_merge(n *
 *   n_heads, head_dim, out, lse, mem_out, mem_lse, out, lse); the model
 *   reads only out afterwards.  Merging attention over extra keys this way
 *   is exactly attention over the cached keys and the extra keys under one
 *   softmax. */
typedef struct msadb_model_hooks {
    int (*capture)(uint32_t layer, uint32_t first, uint32_t n, const float *k, const float *v,
                   void *user);
    int (*attend)(uint32_t layer, uint32_t first, uint32_t n, const float *q, float *out,
                  float *lse, void *user);
    void *user;
} msadb_model_hooks;

/* A context: the KV cache for up to `capacity` tokens (1..MSADB_MODEL_MAX_CTX)
 * and scratch memory.  Cache memory: 2 * 4 * n_layers * n_kv_heads * head_dim
 * * capacity bytes with f32 products, half that with bf16 ones (capacity
 * and head_dim rounded up to multiples of 64).  Errors: MSADB_EINVAL,
 * MSADB_ELIMIT, MSADB_ENOMEM. */
MSADB_HIDDEN int msadb_model_ctx_new(const msadb_model *m, uint32_t capacity,
                                     msadb_model_ctx **out);
MSADB_HIDDEN void msadb_model_ctx_free(msadb_model_ctx *ctx);
/* Tokens in the cache, and its capacity. */
MSADB_HIDDEN uint32_t msadb_model_ctx_len(const msadb_model_ctx *ctx);
MSADB_HIDDEN uint32_t msadb_model_ctx_capacity(const msadb_model_ctx *ctx);
/* Position the next token gets when msadb_model_forward() is given no
 * positions: the last cached token's position + 1 (0 when empty). */
MSADB_HIDDEN int32_t msadb_model_ctx_next_pos(const msadb_model_ctx *ctx);
/* Empties the cache. */
MSADB_HIDDEN void msadb_model_ctx_reset(msadb_model_ctx *ctx);
/* Keeps the first n cached tokens (MSADB_EINVAL if n > length). */
MSADB_HIDDEN int msadb_model_ctx_truncate(msadb_model_ctx *ctx, uint32_t n);

/* Runs n >= 1 tokens through the model, appending them to the KV cache.
 * positions: [n] values >= 0, or NULL for next_pos, next_pos + 1, ...
 * logits: NULL (none computed), or [n_vocab] f32 for the last token, or with
 * logits_all [n][n_vocab] for every token.  Tokens whose logits are not
 * wanted and that no attend hook reads (an ingest) stop in the last layer
 * once its keys and values are cached and captured: its queries, attention
 * and feed-forward would feed only those logits.  Errors: MSADB_EINVAL (token out
 * of range, negative position, n == 0), MSADB_ELIMIT (the cache would
 * exceed its capacity; nothing is run), a hook's non-zero return. */
MSADB_HIDDEN int msadb_model_forward(msadb_model_ctx *ctx, const int32_t *tokens, uint32_t n,
                                     const int32_t *positions, float *logits, int logits_all,
                                     const msadb_model_hooks *hooks);

/* ------------------------------------------------------------------------ */
/* Sampling and generation                                                  */
/* ------------------------------------------------------------------------ */

/* temperature <= 0 picks the most likely token (greedy; ties: lowest id).
 * Otherwise tokens are drawn from softmax(logits / temperature) restricted
 * to the top_k most likely (0 = no limit) and then to the smallest set of
 * most likely tokens whose probability reaches top_p (1 = no limit), with a
 * splitmix64 generator seeded by `seed`: the same seed and logits give the
 * same tokens on every machine. */
typedef struct msadb_sampler {
    float temperature;
    float top_p;
    uint32_t top_k;
    uint64_t state; /* RNG state; the sampler owns no memory */
} msadb_sampler;

MSADB_HIDDEN void msadb_sampler_init(msadb_sampler *s, float temperature, float top_p,
                                     uint32_t top_k, uint64_t seed);
/* Draws one token from logits [n_vocab] (non-greedy draws allocate a
 * temporary n_vocab * 8 bytes).  Errors: MSADB_EINVAL, MSADB_ENONFINITE (NaN
 * logits), MSADB_ENOMEM. */
MSADB_HIDDEN int msadb_sample(msadb_sampler *s, const float *logits, uint32_t n_vocab,
                              int32_t *token);

/* Why msadb_model_generate() stopped. */
enum {
    MSADB_GEN_MAX_TOKENS = 0, /* max_tokens were emitted */
    MSADB_GEN_STOP_TOKEN = 1, /* a stop token was drawn (not emitted) */
    MSADB_GEN_CALLBACK = 2,   /* on_token returned a positive value */
    MSADB_GEN_CONTEXT_FULL = 3 /* the KV cache is full */
};

typedef struct msadb_generate_params {
    uint32_t max_tokens;          /* tokens to emit at most (>= 1) */
    const int32_t *stop_tokens;   /* tokens that end generation, or NULL */
    size_t n_stop;
    msadb_sampler *sampler;       /* NULL = greedy */
    const msadb_model_hooks *hooks; /* passed to every forward pass, or NULL */
    /* Streaming: called with each emitted token.  0 continues, a positive
     * value stops generation (success), a negative value stops it and is
     * returned. */
    int (*on_token)(int32_t token, void *user);
    void *user;
} msadb_generate_params;

/* Runs the prompt (n_prompt >= 1 tokens at `positions`, or NULL to continue
 * from next_pos) and then emits tokens one at a time, each at the next
 * position, until a stop condition.  Emitted tokens go to out (capacity cap;
 * NULL allowed) and *n_out (may exceed cap only if out is NULL or short: the
 * extra tokens are streamed but not stored).  On return the cache holds the
 * prompt and every emitted token except the last one (which was never run
 * through the model).  *why, if not NULL, gets an MSADB_GEN_* reason. */
MSADB_HIDDEN int msadb_model_generate(msadb_model_ctx *ctx, const int32_t *prompt,
                                      uint32_t n_prompt, const int32_t *positions,
                                      const msadb_generate_params *p, int32_t *out, size_t cap,
                                      size_t *n_out, int *why);

#endif
