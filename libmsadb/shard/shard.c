/* shard.c -- sharded stores: the manifest and shard labels, create and
 * open, statistics, spaces, ingest with placement, deletion and verify.
 * Built on the public store API only (plus CRC-32C from the core). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "msadb_shard.h"
#include "shard/shard_impl.h"
#include "core/util.h"

#define MANIFEST_NAME "msadb-shards"
#define LABEL_NAME "msadb-shard"
#define REC_BYTES 64
#define NO_INDEX 0xFFFFFFFFu
static const char rec_magic[8] = {'M', 'S', 'A', 'D', 'B', 'S', 'H', 'D'};

/* ---- manifest and labels: one 64-byte record (docs/format.md) ---------- */

static void rec_encode(const msadb_shards_manifest *m, uint32_t index, uint8_t out[REC_BYTES])
{
    memset(out, 0, REC_BYTES);
    memcpy(out, rec_magic, 8);
    msadb_put_le32(out + 8, m->format_version);
    msadb_put_le32(out + 12, m->n_shards);
    msadb_put_le32(out + 16, m->placement);
    msadb_put_le32(out + 20, index);
    memcpy(out + 24, m->store_id, 16);
    msadb_put_le32(out + 60, msadb_crc32c(0, out, 60));
}

static int rec_decode(const uint8_t *p, size_t n, msadb_shards_manifest *m, uint32_t *index)
{
    if (n != REC_BYTES || memcmp(p, rec_magic, 8) != 0 || msadb_get_le32(p + 60) != msadb_crc32c(0, p, 60))
        return MSADB_ECORRUPT;
    for (int i = 40; i < 60; i++)
        if (p[i])
            return MSADB_ECORRUPT;
    m->format_version = msadb_get_le32(p + 8);
    if (m->format_version == 0)
        return MSADB_ECORRUPT;
    if (m->format_version > MSADB_SHARDS_FORMAT_VERSION)
        return MSADB_EVERSION;
    m->n_shards = msadb_get_le32(p + 12);
    m->placement = msadb_get_le32(p + 16);
    *index = msadb_get_le32(p + 20);
    memcpy(m->store_id, p + 24, 16);
    if (m->n_shards == 0 || m->n_shards > MSADB_SHARDS_MAX || m->placement != MSADB_PLACE_FEWEST_TOKENS ||
        (*index != NO_INDEX && *index >= m->n_shards))
        return MSADB_ECORRUPT;
    return 0;
}

static int rec_read(const char *path, msadb_shards_manifest *m, uint32_t *index)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? MSADB_ENOTSTORE : errno;
    uint8_t buf[REC_BYTES + 1];
    ssize_t n = read(fd, buf, sizeof buf);
    int e = errno;
    close(fd);
    if (n < 0)
        return e;
    return rec_decode(buf, (size_t)n, m, index);
}

/* Writes the record atomically: a temporary file in the same directory,
 * synced, renamed over the name, then the directory synced. */
static int rec_write(const char *dir, const char *name, const msadb_shards_manifest *m, uint32_t index)
{
    char tmp[4200], path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s/.%s.%ld.tmp", dir, name, (long)getpid());
    uint8_t buf[REC_BYTES];
    rec_encode(m, index, buf);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0664);
    if (fd < 0)
        return errno;
    int rc = write(fd, buf, REC_BYTES) == REC_BYTES && fsync(fd) == 0 ? 0 : (errno ? errno : MSADB_EIO);
    if (close(fd) != 0 && !rc)
        rc = errno;
    if (!rc && rename(tmp, path) != 0)
        rc = errno;
    if (rc) {
        unlink(tmp);
        return rc;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

int msadb_shards_manifest_read(const char *dir, msadb_shards_manifest *out)
{
    if (!dir || !out)
        return MSADB_EINVAL;
    char path[4200];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, MANIFEST_NAME) >= sizeof path)
        return MSADB_EINVAL;
    uint32_t index;
    int rc = rec_read(path, out, &index);
    if (!rc && index != NO_INDEX)
        rc = MSADB_ECORRUPT; /* a shard's label, not a manifest */
    return rc;
}

int msadb_shards_probe(const char *dir)
{
    msadb_shards_manifest m;
    int rc = msadb_shards_manifest_read(dir, &m);
    return rc == 0 ? 1 : rc == MSADB_ENOTSTORE ? 0 : rc;
}

int msadb_shards_manifest_new(msadb_shards_manifest *m, uint32_t n_shards)
{
    if (!m || n_shards == 0 || n_shards > MSADB_SHARDS_MAX)
        return MSADB_EINVAL;
    memset(m, 0, sizeof *m);
    m->format_version = MSADB_SHARDS_FORMAT_VERSION;
    m->n_shards = n_shards;
    m->placement = MSADB_PLACE_FEWEST_TOKENS;
    if (sodium_init() < 0)
        return MSADB_EIO;
    randombytes_buf(m->store_id, sizeof m->store_id);
    return 0;
}

/* ---- ids and placement -------------------------------------------------- */

uint32_t msadb_shards_id_shard(uint64_t id, uint32_t n_shards) { return n_shards ? (uint32_t)(id % n_shards) : 0; }
uint64_t msadb_shards_id_local(uint64_t id, uint32_t n_shards) { return n_shards ? id / n_shards : 0; }
uint64_t msadb_shards_id_global(uint64_t local, uint32_t shard, uint32_t n_shards)
{
    return local * n_shards + shard;
}

uint32_t msadb_shards_pick(const uint64_t *tokens, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; tokens && i < n; i++)
        if (tokens[i] < tokens[best])
            best = i;
    return best;
}

/* ---- create and open ---------------------------------------------------- */

int msadb_shards_shard_path(const char *dir, uint32_t s, char *buf, size_t cap)
{
    return (size_t)snprintf(buf, cap, "%s/shard-%u", dir, s) >= cap ? MSADB_EINVAL : 0;
}

static int owns(const msadb_shards *sh, uint32_t s) { return s % sh->n_parts == sh->part; }

int msadb_shards_local_of(const msadb_shards *sh, uint32_t s)
{
    if (s >= sh->m.n_shards || !owns(sh, s))
        return MSADB_ENOTFOUND;
    return (int)(s / sh->n_parts);
}

static int handle_new(const char *dir, const msadb_shards_manifest *m, uint32_t part, uint32_t n_parts,
                      msadb_shards **out)
{
    msadb_shards *sh = calloc(1, sizeof *sh);
    if (!sh)
        return MSADB_ENOMEM;
    sh->m = *m;
    sh->part = part;
    sh->n_parts = n_parts;
    sh->n_local = (m->n_shards - part + n_parts - 1) / n_parts;
    sh->dir = strdup(dir);
    sh->st = calloc(sh->n_local, sizeof *sh->st);
    if (!sh->dir || !sh->st) {
        msadb_shards_close(sh);
        return MSADB_ENOMEM;
    }
    *out = sh;
    return 0;
}

static int check_parts(const msadb_shards_manifest *m, uint32_t part, uint32_t n_parts)
{
    return n_parts == 0 || part >= n_parts || n_parts > m->n_shards ? MSADB_EINVAL : 0;
}

/* Removes a shard directory this call created (on a failed create). */
static void shard_remove(const char *path)
{
    static const char *const names[] = {"data.mdb", "lock.mdb", LABEL_NAME};
    char f[4300];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(f, sizeof f, "%s/%s", path, names[i]);
        unlink(f);
    }
    rmdir(path);
}

int msadb_shards_create_impl(const char *dir, const msadb_shards_manifest *m, const msadb_signature *sig,
                             const msadb_options *opt, uint32_t part, uint32_t n_parts, int write_manifest,
                             msadb_shards **out)
{
    if (!dir || !m || !sig || !out || m->format_version != MSADB_SHARDS_FORMAT_VERSION ||
        m->placement != MSADB_PLACE_FEWEST_TOKENS || m->n_shards == 0 || m->n_shards > MSADB_SHARDS_MAX)
        return MSADB_EINVAL;
    int rc;
    if ((rc = check_parts(m, part, n_parts)) || (rc = msadb_signature_validate(sig)))
        return rc;
    if (strlen(dir) > 4000)
        return MSADB_EINVAL;
    if (mkdir(dir, 0775) != 0 && errno != EEXIST)
        return errno;
    /* a manifest already there: another part's (same bytes) or a store */
    msadb_shards_manifest old;
    rc = msadb_shards_manifest_read(dir, &old);
    if (rc == 0 && memcmp(&old, m, sizeof old) != 0)
        return MSADB_EEXIST;
    if (rc && rc != MSADB_ENOTSTORE)
        return rc;
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/data.mdb", dir);
    if (access(probe, F_OK) == 0)
        return MSADB_EEXIST; /* an ordinary store */
    msadb_shards *sh;
    if ((rc = handle_new(dir, m, part, n_parts, &sh)))
        return rc;
    uint32_t made = 0;
    for (uint32_t i = 0; i < sh->n_local && !rc; i++, made++) {
        uint32_t s = part + i * n_parts;
        char path[4200];
        msadb_shards_shard_path(dir, s, path, sizeof path);
        if ((rc = msadb_create(path, sig, opt, &sh->st[i])))
            break;
        rc = rec_write(path, LABEL_NAME, m, s);
    }
    if (!rc && write_manifest)
        rc = rec_write(dir, MANIFEST_NAME, m, NO_INDEX);
    if (rc) {
        uint32_t n = made < sh->n_local ? made + (sh->st[made] != NULL) : made;
        for (uint32_t i = 0; i < n; i++) {
            char path[4200];
            msadb_close(sh->st[i]);
            sh->st[i] = NULL;
            msadb_shards_shard_path(dir, part + i * n_parts, path, sizeof path);
            shard_remove(path);
        }
        msadb_shards_close(sh);
        return rc;
    }
    *out = sh;
    return 0;
}

int msadb_shards_write_manifest(const msadb_shards *sh) { return rec_write(sh->dir, MANIFEST_NAME, &sh->m, NO_INDEX); }

int msadb_shards_create_part(const char *dir, const msadb_shards_manifest *m, const msadb_signature *sig,
                             const msadb_options *opt, uint32_t part, uint32_t n_parts, msadb_shards **out)
{
    return msadb_shards_create_impl(dir, m, sig, opt, part, n_parts, 1, out);
}

int msadb_shards_create(const char *dir, uint32_t n_shards, const msadb_signature *sig, const msadb_options *opt,
                        msadb_shards **out)
{
    msadb_shards_manifest m;
    int rc = msadb_shards_manifest_new(&m, n_shards);
    return rc ? rc : msadb_shards_create_impl(dir, &m, sig, opt, 0, 1, 1, out);
}

/* Checks shard s's label against the manifest. */
static int label_check(const char *shard_path, const msadb_shards_manifest *m, uint32_t s)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", shard_path, LABEL_NAME);
    msadb_shards_manifest lm;
    uint32_t index;
    int rc = rec_read(path, &lm, &index);
    if (rc == MSADB_ENOTSTORE)
        return MSADB_ECORRUPT;
    if (rc)
        return rc;
    return index == s && memcmp(&lm, m, sizeof lm) == 0 ? 0 : MSADB_ECORRUPT;
}

int msadb_shards_open_part(const char *dir, const msadb_signature *expect, const msadb_options *opt, uint32_t part,
                           uint32_t n_parts, msadb_shards **out)
{
    if (!dir || !out)
        return MSADB_EINVAL;
    msadb_shards_manifest m;
    int rc = msadb_shards_manifest_read(dir, &m);
    if (rc || (rc = check_parts(&m, part, n_parts)))
        return rc;
    msadb_shards *sh;
    if ((rc = handle_new(dir, &m, part, n_parts, &sh)))
        return rc;
    for (uint32_t i = 0; i < sh->n_local && !rc; i++) {
        uint32_t s = part + i * n_parts;
        char path[4200];
        msadb_shards_shard_path(dir, s, path, sizeof path);
        const msadb_signature *want = i ? msadb_store_signature(sh->st[0]) : expect;
        if (!(rc = msadb_open(path, want, opt, &sh->st[i])))
            rc = label_check(path, &m, s);
    }
    if (rc) {
        msadb_shards_close(sh);
        return rc;
    }
    *out = sh;
    return 0;
}

int msadb_shards_open(const char *dir, const msadb_signature *expect, const msadb_options *opt, msadb_shards **out)
{
    return msadb_shards_open_part(dir, expect, opt, 0, 1, out);
}

void msadb_shards_close(msadb_shards *sh)
{
    if (!sh)
        return;
    for (uint32_t i = 0; sh->st && i < sh->n_local; i++)
        msadb_close(sh->st[i]);
    free(sh->st);
    free(sh->dir);
    free(sh);
}

const msadb_shards_manifest *msadb_shards_get_manifest(const msadb_shards *sh) { return sh ? &sh->m : NULL; }
const msadb_signature *msadb_shards_signature(const msadb_shards *sh)
{
    return sh ? msadb_store_signature(sh->st[0]) : NULL;
}
uint32_t msadb_shards_local_count(const msadb_shards *sh) { return sh ? sh->n_local : 0; }
int msadb_shards_local_index(const msadb_shards *sh, uint32_t i)
{
    return sh && i < sh->n_local ? (int)(sh->part + i * sh->n_parts) : MSADB_EINVAL;
}

int msadb_shards_store(msadb_shards *sh, uint32_t shard, msadb_store **out)
{
    if (!sh || !out)
        return MSADB_EINVAL;
    int i = msadb_shards_local_of(sh, shard);
    if (i < 0)
        return i;
    *out = sh->st[i];
    return 0;
}

int msadb_shards_stat(msadb_shards *sh, msadb_stat_info *out)
{
    if (!sh || !out)
        return MSADB_EINVAL;
    memset(out, 0, sizeof *out);
    for (uint32_t i = 0; i < sh->n_local; i++) {
        msadb_stat_info si;
        int rc = msadb_stat(sh->st[i], &si);
        if (rc)
            return rc;
        if (i == 0) {
            out->format_version = si.format_version;
            out->n_spaces = si.n_spaces;
            out->encrypted = si.encrypted;
        }
        out->n_documents += si.n_documents;
        out->n_tokens += si.n_tokens;
        out->n_blocks += si.n_blocks;
        out->block_bytes += si.block_bytes;
        out->summary_bytes += si.summary_bytes;
        out->map_size += si.map_size;
        out->map_used += si.map_used;
    }
    return 0;
}

/* ---- spaces ------------------------------------------------------------- */

int msadb_shards_space_create(msadb_shards *sh, const char *name, uint32_t *id_out)
{
    if (!sh || !name)
        return MSADB_EINVAL;
    uint32_t n_new = 0;
    for (uint32_t i = 0; i < sh->n_local; i++) {
        uint32_t id = 0;
        int rc = msadb_space_create(sh->st[i], name, &id);
        if (rc == MSADB_EEXIST) {
            msadb_space_info si;
            if ((rc = msadb_space_get(sh->st[i], name, &si)))
                return rc;
            id = si.id;
        } else if (rc) {
            return rc;
        } else {
            n_new++;
        }
        if (i == 0 && id_out)
            *id_out = id;
    }
    return n_new ? 0 : MSADB_EEXIST;
}

int msadb_shards_space_drop(msadb_shards *sh, const char *name)
{
    if (!sh || !name)
        return MSADB_EINVAL;
    uint32_t n_dropped = 0;
    for (uint32_t i = 0; i < sh->n_local; i++) {
        int rc = msadb_space_drop(sh->st[i], name);
        if (rc == 0)
            n_dropped++;
        else if (rc != MSADB_ENOTFOUND)
            return rc;
    }
    return n_dropped ? 0 : MSADB_ENOTFOUND;
}

typedef struct space_acc {
    msadb_space_info *v;
    size_t n, cap;
    uint32_t *seen; /* shards that list each space */
} space_acc;

static int space_add(const msadb_space_info *info, void *ud)
{
    space_acc *a = ud;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i].name, info->name) == 0) {
            a->v[i].n_documents += info->n_documents;
            a->v[i].n_tokens += info->n_tokens;
            a->seen[i]++;
            return 0;
        }
    const msadb_array arrays[] = {{&a->v, sizeof *a->v}, {&a->seen, sizeof *a->seen}};
    if (msadb_grow_arrays(arrays, 2, &a->cap, a->n + 1, 16, 0))
        return MSADB_ENOMEM;
    a->v[a->n] = *info;
    a->seen[a->n++] = 1;
    return 0;
}

static int space_cmp(const void *x, const void *y)
{
    return strcmp(((const msadb_space_info *)x)->name, ((const msadb_space_info *)y)->name);
}

/* Every space of the opened shards, summed, sorted by name; seen[i] = the
 * number of opened shards holding space i.  Free a->v and a->seen. */
static int spaces_collect(msadb_shards *sh, space_acc *a)
{
    memset(a, 0, sizeof *a);
    for (uint32_t i = 0; i < sh->n_local; i++) {
        int rc = msadb_space_list(sh->st[i], space_add, a);
        if (rc)
            return rc;
    }
    /* insertion sort by name (spaces are few), seen[] moving along */
    for (size_t i = 1; i < a->n; i++)
        for (size_t j = i; j > 0 && space_cmp(&a->v[j - 1], &a->v[j]) > 0; j--) {
            msadb_space_info t = a->v[j];
            a->v[j] = a->v[j - 1];
            a->v[j - 1] = t;
            uint32_t u = a->seen[j];
            a->seen[j] = a->seen[j - 1];
            a->seen[j - 1] = u;
        }
    return 0;
}

int msadb_shards_space_list(msadb_shards *sh, int (*cb)(const msadb_space_info *, void *), void *ud)
{
    if (!sh || !cb)
        return MSADB_EINVAL;
    space_acc a;
    int rc = spaces_collect(sh, &a);
    for (size_t i = 0; !rc && i < a.n; i++)
        rc = cb(&a.v[i], ud);
    free(a.v);
    free(a.seen);
    return rc;
}

int msadb_shards_space_get(msadb_shards *sh, const char *name, msadb_space_info *out)
{
    if (!sh || !name || !out)
        return MSADB_EINVAL;
    int found = 0;
    for (uint32_t i = 0; i < sh->n_local; i++) {
        msadb_space_info si;
        int rc = msadb_space_get(sh->st[i], name, &si);
        if (rc == MSADB_ENOTFOUND)
            continue;
        if (rc)
            return rc;
        if (!found) {
            *out = si;
            found = 1;
        } else {
            out->n_documents += si.n_documents;
            out->n_tokens += si.n_tokens;
        }
    }
    return found ? 0 : MSADB_ENOTFOUND;
}

/* ---- batches ------------------------------------------------------------ */

struct msadb_shards_batch {
    msadb_shards *sh;
    msadb_batch **b;    /* per opened shard, begun when first needed */
    uint64_t *tokens;   /* per opened shard: stored + added tokens */
    uint32_t *where;    /* per added document: its opened-shard position */
    size_t n, cap;
};

int msadb_shards_batch_begin(msadb_shards *sh, msadb_shards_batch **out)
{
    if (!sh || !out)
        return MSADB_EINVAL;
    msadb_shards_batch *b = calloc(1, sizeof *b);
    if (!b)
        return MSADB_ENOMEM;
    b->sh = sh;
    b->b = calloc(sh->n_local, sizeof *b->b);
    b->tokens = calloc(sh->n_local, sizeof *b->tokens);
    if (!b->b || !b->tokens) {
        msadb_shards_batch_abort(b);
        return MSADB_ENOMEM;
    }
    for (uint32_t i = 0; i < sh->n_local; i++) {
        msadb_stat_info si;
        int rc = msadb_stat(sh->st[i], &si);
        if (rc) {
            msadb_shards_batch_abort(b);
            return rc;
        }
        b->tokens[i] = si.n_tokens;
    }
    *out = b;
    return 0;
}

static int batch_add_local(msadb_shards_batch *b, uint32_t i, const msadb_doc *doc)
{
    int rc;
    if ((rc = msadb_grow(&b->where, &b->cap, b->n + 1, sizeof *b->where, 64)))
        return rc;
    if (!b->b[i] && (rc = msadb_batch_begin(b->sh->st[i], &b->b[i])))
        return rc;
    if ((rc = msadb_batch_add(b->b[i], doc)))
        return rc;
    b->where[b->n++] = i;
    b->tokens[i] += doc->n_tokens;
    return 0;
}

int msadb_shards_batch_add(msadb_shards_batch *b, const msadb_doc *doc, uint32_t *shard)
{
    if (!b || !doc)
        return MSADB_EINVAL;
    uint32_t i = msadb_shards_pick(b->tokens, b->sh->n_local);
    int rc = batch_add_local(b, i, doc);
    if (!rc && shard)
        *shard = b->sh->part + i * b->sh->n_parts;
    return rc;
}

int msadb_shards_batch_add_to(msadb_shards_batch *b, uint32_t shard, const msadb_doc *doc)
{
    if (!b || !doc)
        return MSADB_EINVAL;
    int i = msadb_shards_local_of(b->sh, shard);
    return i < 0 ? i : batch_add_local(b, (uint32_t)i, doc);
}

size_t msadb_shards_batch_count(const msadb_shards_batch *b) { return b ? b->n : 0; }

int msadb_shards_batch_commit(msadb_shards_batch *b, uint64_t *doc_ids)
{
    if (!b)
        return MSADB_EINVAL;
    msadb_shards *sh = b->sh;
    int rc = 0;
    if (doc_ids)
        memset(doc_ids, 0, b->n * sizeof *doc_ids);
    uint64_t *ids = malloc((b->n + 1) * sizeof *ids);
    if (!ids) {
        msadb_shards_batch_abort(b);
        return MSADB_ENOMEM;
    }
    for (uint32_t i = 0; i < sh->n_local; i++) {
        if (!b->b[i])
            continue;
        msadb_batch *one = b->b[i];
        b->b[i] = NULL;
        if (rc) {
            msadb_batch_abort(one);
            continue;
        }
        if ((rc = msadb_batch_commit(one, ids)))
            continue;
        uint32_t s = sh->part + i * sh->n_parts;
        size_t k = 0;
        for (size_t j = 0; j < b->n; j++)
            if (b->where[j] == i && doc_ids)
                doc_ids[j] = msadb_shards_id_global(ids[k++], s, sh->m.n_shards);
    }
    free(ids);
    msadb_shards_batch_abort(b);
    return rc;
}

void msadb_shards_batch_abort(msadb_shards_batch *b)
{
    if (!b)
        return;
    for (uint32_t i = 0; b->b && i < b->sh->n_local; i++)
        msadb_batch_abort(b->b[i]);
    free(b->b);
    free(b->tokens);
    free(b->where);
    free(b);
}

int msadb_shards_doc_append(msadb_shards *sh, const msadb_doc *doc, uint64_t *doc_id)
{
    msadb_shards_batch *b;
    int rc = msadb_shards_batch_begin(sh, &b);
    if (rc)
        return rc;
    if ((rc = msadb_shards_batch_add(b, doc, NULL))) {
        msadb_shards_batch_abort(b);
        return rc;
    }
    uint64_t id = 0;
    rc = msadb_shards_batch_commit(b, &id);
    if (!rc && doc_id)
        *doc_id = id;
    return rc;
}

/* ---- deletion ----------------------------------------------------------- */

int msadb_shards_doc_delete(msadb_shards *sh, const uint64_t *doc_ids, size_t n)
{
    if (!sh || (!doc_ids && n))
        return MSADB_EINVAL;
    uint64_t *local = malloc((n + 1) * sizeof *local);
    if (!local)
        return MSADB_ENOMEM;
    int rc = 0;
    /* check every id first, so that an unknown one deletes nothing */
    for (uint32_t i = 0; i < sh->n_local && !rc; i++) {
        msadb_snapshot *snap;
        if ((rc = msadb_snapshot_begin(sh->st[i], &snap)))
            break;
        for (size_t j = 0; j < n && !rc; j++) {
            int li = msadb_shards_local_of(sh, msadb_shards_id_shard(doc_ids[j], sh->m.n_shards));
            if (li < 0 || msadb_shards_id_local(doc_ids[j], sh->m.n_shards) == 0)
                rc = MSADB_ENOTFOUND;
            else if ((uint32_t)li == i) {
                msadb_doc_info info;
                rc = msadb_doc_get(snap, msadb_shards_id_local(doc_ids[j], sh->m.n_shards), &info);
            }
        }
        msadb_snapshot_end(snap);
    }
    for (uint32_t i = 0; i < sh->n_local && !rc; i++) {
        size_t k = 0;
        for (size_t j = 0; j < n; j++)
            if ((uint32_t)msadb_shards_local_of(sh, msadb_shards_id_shard(doc_ids[j], sh->m.n_shards)) == i)
                local[k++] = msadb_shards_id_local(doc_ids[j], sh->m.n_shards);
        if (k)
            rc = msadb_doc_delete(sh->st[i], local, k);
    }
    free(local);
    return rc;
}

int msadb_shards_compact(msadb_shards *sh)
{
    if (!sh)
        return MSADB_EINVAL;
    for (uint32_t i = 0; i < sh->n_local; i++) {
        int rc = msadb_compact(sh->st[i]);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- verify ------------------------------------------------------------- */

typedef struct prefixed {
    void (*report)(const char *, void *);
    void *ud;
    uint32_t shard;
} prefixed;

static void report_prefixed(const char *problem, void *ud)
{
    prefixed *p = ud;
    char line[1200];
    snprintf(line, sizeof line, "shard-%u: %s", p->shard, problem);
    if (p->report)
        p->report(line, p->ud);
}

int msadb_shards_verify(msadb_shards *sh, void (*report)(const char *, void *), void *ud)
{
    if (!sh)
        return MSADB_EINVAL;
    int bad = 0, rc;
    char line[1200];
    msadb_shards_manifest m;
    if ((rc = msadb_shards_manifest_read(sh->dir, &m)) || memcmp(&m, &sh->m, sizeof m) != 0) {
        if (report)
            report("manifest: unreadable or changed since open", ud);
        bad = 1;
    }
    for (uint32_t i = 0; i < sh->n_local; i++) {
        prefixed p = {report, ud, sh->part + i * sh->n_parts};
        char path[4200];
        msadb_shards_shard_path(sh->dir, p.shard, path, sizeof path);
        if (label_check(path, &sh->m, p.shard)) {
            report_prefixed("label (msadb-shard) missing or naming another store or position", &p);
            bad = 1;
        }
        rc = msadb_verify(sh->st[i], report_prefixed, &p);
        if (rc == MSADB_ECORRUPT)
            bad = 1;
        else if (rc)
            return rc;
    }
    space_acc a;
    if ((rc = spaces_collect(sh, &a))) {
        free(a.v);
        free(a.seen);
        return rc;
    }
    for (size_t i = 0; i < a.n; i++)
        if (a.seen[i] != sh->n_local) {
            snprintf(line, sizeof line, "space '%s' exists on %u of %u shards", a.v[i].name, a.seen[i],
                     sh->n_local);
            if (report)
                report(line, ud);
            bad = 1;
        }
    free(a.v);
    free(a.seen);
    return bad ? MSADB_ECORRUPT : 0;
}
