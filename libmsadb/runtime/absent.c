/* absent.c -- the msadb_llm_* entry points of a library built without the
 * runtime (-Druntime=disabled): each says so with MSADB_ENOTSUP, so a
 * program linked against either build runs and reports why it cannot load
 * a model. */
#include <stdio.h>

#include "msadb.h"

int msadb_llm_open(const char *path, msadb_llm **out)
{
    (void)path;
    if (out)
        *out = NULL;
    return MSADB_ENOTSUP;
}

void msadb_llm_close(msadb_llm *llm) { (void)llm; }

int msadb_llm_abstain_answer(const msadb_llm *llm, const char **text)
{
    (void)llm;
    if (text)
        *text = NULL;
    return MSADB_ENOTSUP;
}

int msadb_llm_set_segment(msadb_llm *llm, int mode)
{
    (void)llm, (void)mode;
    return MSADB_ENOTSUP;
}

int msadb_llm_get_segment(const msadb_llm *llm)
{
    (void)llm;
    return MSADB_ENOTSUP;
}

int msadb_llm_is_abstain(const msadb_llm *llm, const char *answer, size_t len)
{
    (void)llm, (void)answer, (void)len;
    return MSADB_ENOTSUP;
}

const char *msadb_llm_products(const msadb_llm *llm)
{
    (void)llm;
    return NULL;
}

int msadb_llm_get_info(const msadb_llm *llm, msadb_llm_info *out)
{
    (void)llm, (void)out;
    return MSADB_ENOTSUP;
}

int msadb_llm_signature(const msadb_llm *llm, msadb_signature *sig)
{
    (void)llm, (void)sig;
    return MSADB_ENOTSUP;
}

int msadb_llm_tokenize(const msadb_llm *llm, const char *text, size_t len, int add_bos, int32_t *ids,
                       int64_t *spans, size_t cap, size_t *n)
{
    (void)llm, (void)text, (void)len, (void)add_bos, (void)ids, (void)spans, (void)cap, (void)n;
    return MSADB_ENOTSUP;
}

int msadb_llm_detokenize(const msadb_llm *llm, const int32_t *ids, size_t n, char *buf, size_t cap,
                         size_t *len)
{
    (void)llm, (void)ids, (void)n, (void)buf, (void)cap, (void)len;
    return MSADB_ENOTSUP;
}

int msadb_llm_ingest(msadb_llm *llm, msadb_store *store, const char *space, const char *title,
                     const char *text, size_t len, uint64_t *doc_id)
{
    (void)llm, (void)store, (void)space, (void)title, (void)text, (void)len, (void)doc_id;
    return MSADB_ENOTSUP;
}

int msadb_llm_ingest_batch(msadb_llm *llm, msadb_store *store, msadb_batch *batch, const char *space,
                           const char *title, const char *text, size_t len, size_t *n_docs)
{
    (void)llm, (void)store, (void)batch, (void)space, (void)title, (void)text, (void)len, (void)n_docs;
    return MSADB_ENOTSUP;
}

int msadb_llm_ingest_doc(msadb_llm *llm, msadb_store *store, msadb_batch *batch, const msadb_doc *doc,
                         size_t *n_docs)
{
    (void)llm, (void)store, (void)batch, (void)doc, (void)n_docs;
    return MSADB_ENOTSUP;
}

int msadb_llm_ask(msadb_llm *llm, msadb_store *store, const char *question, size_t qlen,
                  const msadb_ask_params *p, char *answer, size_t cap, size_t *len, msadb_hit *hits,
                  size_t hits_cap, size_t *n_hits)
{
    (void)llm, (void)store, (void)question, (void)qlen, (void)p, (void)answer, (void)cap, (void)len;
    (void)hits, (void)hits_cap, (void)n_hits;
    return MSADB_ENOTSUP;
}

int msadb_llm_available(void) { return 0; }

int msadb_llm_explain(const char *path, int err, char *buf, size_t cap)
{
    (void)err;
    if (!path || !buf || !cap)
        return MSADB_EINVAL;
    snprintf(buf, cap, "this msadb was built without the model runtime (-Druntime=disabled)");
    return 0;
}

int msadb_llm_identity(msadb_llm *llm, msadb_model_id *out)
{
    (void)llm, (void)out;
    return MSADB_ENOTSUP;
}

int msadb_llm_check_store(msadb_llm *llm, msadb_store *store, msadb_model_id *rec)
{
    (void)llm, (void)store, (void)rec;
    return MSADB_ENOTSUP;
}

int msadb_llm_search(msadb_llm *llm, msadb_store *store, const char *question, size_t qlen,
                     const msadb_ask_params *p, float min_score, msadb_span *spans, size_t cap,
                     size_t *n)
{
    (void)llm, (void)store, (void)question, (void)qlen, (void)p, (void)min_score, (void)spans,
        (void)cap;
    if (n)
        *n = 0;
    return MSADB_ENOTSUP;
}
