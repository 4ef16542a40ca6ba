/* spans.c -- the selection a query made (msadb_hit, one per block and kv
 * head) as spans of documents a person can read: adjacent or overlapping
 * blocks of one document merged, best score first, with the bytes of the
 * document's text they cover (msadb_hits_to_spans in msadb.h). */
#include <stdlib.h>
#include <string.h>

#include "msadb.h"

static int span_by_doc(const void *x, const void *y)
{
    const msadb_span *a = x, *b = y;
    if (a->doc_id != b->doc_id)
        return a->doc_id < b->doc_id ? -1 : 1;
    return a->token_start < b->token_start ? -1 : a->token_start > b->token_start;
}

static int span_by_score(const void *x, const void *y)
{
    const msadb_span *a = x, *b = y;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return span_by_doc(x, y);
}

/* Byte range of the document's text under tokens [start, end), from its
 * stored token spans; an empty range when it has no text or spans. */
static int text_range(msadb_snapshot *snap, msadb_span *s)
{
    msadb_doc_info info;
    int rc = msadb_doc_get(snap, s->doc_id, &info);
    s->text_start = s->text_end = 0;
    if (rc || !info.text_len || !info.has_spans || s->token_end > info.n_tokens ||
        s->token_start >= s->token_end)
        return rc;
    int64_t *sp = malloc((size_t)info.n_tokens * 2 * sizeof *sp);
    if (!sp)
        return MSADB_ENOMEM;
    rc = msadb_doc_tokens(snap, s->doc_id, NULL, sp, (size_t)info.n_tokens);
    int64_t a = sp[2 * s->token_start], b = sp[2 * (s->token_end - 1) + 1];
    if (!rc && a >= 0 && a <= b && (uint64_t)b <= info.text_len) {
        s->text_start = (uint64_t)a;
        s->text_end = (uint64_t)b;
    }
    free(sp);
    return rc;
}

int msadb_hits_to_spans(msadb_snapshot *snap, const msadb_hit *hits, size_t n_hits, msadb_span *spans,
                        size_t cap, size_t *n)
{
    if (n)
        *n = 0;
    if (!snap || (!hits && n_hits) || (!spans && cap) || !n)
        return MSADB_EINVAL;
    msadb_span *all = malloc((n_hits + 1) * sizeof *all);
    if (!all)
        return MSADB_ENOMEM;
    for (size_t i = 0; i < n_hits; i++)
        all[i] = (msadb_span){hits[i].doc_id, hits[i].token_start, hits[i].token_end, hits[i].score, 0, 0};
    qsort(all, n_hits, sizeof *all, span_by_doc);
    size_t m = 0;
    for (size_t i = 0; i < n_hits; i++) {
        msadb_span *last = m ? &all[m - 1] : NULL;
        if (last && last->doc_id == all[i].doc_id && all[i].token_start <= last->token_end) {
            if (all[i].token_end > last->token_end)
                last->token_end = all[i].token_end;
            if (all[i].score > last->score)
                last->score = all[i].score;
        } else {
            all[m++] = all[i];
        }
    }
    qsort(all, m, sizeof *all, span_by_score);
    int rc = 0;
    size_t out = m < cap ? m : cap;
    for (size_t i = 0; i < out && !rc; i++)
        rc = text_range(snap, &all[i]);
    if (!rc) {
        memcpy(spans, all, out * sizeof *spans);
        *n = m;
    }
    free(all);
    return rc;
}
