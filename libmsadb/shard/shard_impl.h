/* shard_impl.h -- private to libmsadb/shard/: the sharded-store handle and
 * the helpers its files share. */
#ifndef MSADB_SHARD_IMPL_H
#define MSADB_SHARD_IMPL_H

#include "msadb_shard.h"
#include "core/util.h"

struct msadb_shards {
    char *dir;
    msadb_shards_manifest m;
    uint32_t part, n_parts; /* opened: shards s with s % n_parts == part */
    uint32_t n_local;
    msadb_store **st;       /* [n_local]: shard part + i * n_parts */
};

/* Position among the opened shards of shard s, or MSADB_ENOTFOUND. */
MSADB_HIDDEN int msadb_shards_local_of(const msadb_shards *sh, uint32_t s);
/* DIR/shard-S into buf. */
MSADB_HIDDEN int msadb_shards_shard_path(const char *dir, uint32_t s, char *buf, size_t cap);
/* Create with the manifest written now (write_manifest) or later
 * (msadb_shards_write_manifest, once a split has copied everything). */
MSADB_HIDDEN int msadb_shards_create_impl(const char *dir, const msadb_shards_manifest *m,
                                          const msadb_signature *sig, const msadb_options *opt, uint32_t part,
                                          uint32_t n_parts, int write_manifest, msadb_shards **out);
MSADB_HIDDEN int msadb_shards_write_manifest(const msadb_shards *sh);

#endif
