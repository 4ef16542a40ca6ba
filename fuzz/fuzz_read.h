/* fuzz_read.h -- what the store-level fuzz targets (pages, shadow) read of
 * every document and space of a possibly damaged store: callbacks for
 * msadb_doc_list() (ud: the snapshot) and msadb_space_list().  Results are
 * ignored; only crashes and sanitizer reports count.  Head dim <= 64. */
#ifndef MSADB_FUZZ_READ_H
#define MSADB_FUZZ_READ_H

#include "msadb.h"

static int fuzz_read_doc(const msadb_doc_info *info, void *ud)
{
    msadb_snapshot *snap = ud;
    char text[64];
    size_t len;
    int32_t ids[16];
    int64_t spans[32];
    static float k[16 * 64], v[16 * 64];
    msadb_doc_text(snap, info->id, text, sizeof text, &len);
    msadb_doc_meta(snap, info->id, text, sizeof text, &len);
    if (info->n_tokens <= 16) {
        msadb_doc_tokens(snap, info->id, ids, spans, 16);
        msadb_doc_kv(snap, info->id, 0, k, v);
    }
    return 0;
}

static int fuzz_read_space(const msadb_space_info *info, void *ud)
{
    (void)info;
    (void)ud;
    return 0;
}

#endif
