/* vacuum.c -- giving a store's free pages back to the file system: LMDB's
 * compacting copy (mdb_env_copy2 with MDB_CP_COMPACT) into a directory
 * beside the store, synced, then swapped with the store's directory in one
 * rename.  See msadb_vacuum() in msadb.h and docs/cli.md. */
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store_impl.h"

/* Whether another process has the environment open: every process that
 * opens an LMDB environment holds a shared lock on the first byte of its
 * lock file for as long as it keeps it open. */
static int held_elsewhere(const char *path)
{
    char lock[4200];
    snprintf(lock, sizeof lock, "%s/lock.mdb", path);
    int fd = open(lock, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : errno;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    int rc = fcntl(fd, F_GETLK, &fl) != 0 ? errno : fl.l_type != F_UNLCK ? MSADB_EBUSY : 0;
    close(fd);
    return rc;
}

static int file_size(const char *dir, uint64_t *out)
{
    char f[4200];
    snprintf(f, sizeof f, "%s/data.mdb", dir);
    struct stat sb;
    if (stat(f, &sb) != 0)
        return errno;
    *out = (uint64_t)sb.st_size;
    return 0;
}

static int sync_path(const char *p, int dir)
{
    int fd = open(p, (dir ? O_RDONLY | O_DIRECTORY : O_RDWR) | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int rc = fsync(fd) != 0 ? errno : 0;
    close(fd);
    return rc;
}

/* Removes a directory holding only LMDB's files. */
static void remove_store_dir(const char *dir)
{
    static const char *const files[] = {"data.mdb", "lock.mdb"};
    char f[4200];
    for (size_t i = 0; i < 2; i++) {
        snprintf(f, sizeof f, "%s/%s", dir, files[i]);
        unlink(f);
    }
    rmdir(dir);
}

/* Puts the directory `fresh` at `path` and the old store at `fresh`'s name:
 * one atomic exchange where the file system supports it, else two renames
 * through PATH.old-XXXXXX. */
static int swap_dirs(const char *path, const char *fresh, char *old, size_t cap)
{
#ifdef RENAME_EXCHANGE
    if (renameat2(AT_FDCWD, fresh, AT_FDCWD, path, RENAME_EXCHANGE) == 0) {
        snprintf(old, cap, "%s", fresh);
        return 0;
    }
    if (errno != EINVAL && errno != ENOSYS)
        return errno;
#endif
    snprintf(old, cap, "%s.old-XXXXXX", path);
    if (!mkdtemp(old))
        return errno;
    rmdir(old);
    if (rename(path, old) != 0)
        return errno;
    if (rename(fresh, path) != 0) {
        int e = errno;
        rename(old, path);
        return e;
    }
    return 0;
}

int msadb_vacuum(const char *path, const msadb_options *opt, uint64_t *before, uint64_t *after)
{
    if (!path || !*path || strlen(path) > 4000)
        return MSADB_EINVAL;
    int rc = held_elsewhere(path);
    if (rc)
        return rc;
    msadb_options o;
    if (opt)
        o = *opt;
    else
        msadb_options_init(&o);
    o.read_only = 1;
    msadb_store *st;
    if ((rc = msadb_open(path, NULL, &o, &st)))
        return rc;
    uint64_t b = 0, a = 0;
    char tmp[4096 + 32], old[4096 + 32];
    snprintf(tmp, sizeof tmp, "%s.vacuum-XXXXXX", path);
    if ((rc = file_size(path, &b)) || !mkdtemp(tmp)) {
        rc = rc ? rc : errno;
        msadb_close(st);
        return rc;
    }
    char data[4096 + 48];
    snprintf(data, sizeof data, "%s/data.mdb", tmp);
    rc = mdb_env_copy2(msadb_store_env(st), tmp, MDB_CP_COMPACT);
    msadb_close(st);
    if (!rc)
        rc = sync_path(data, 0);
    if (!rc)
        rc = sync_path(tmp, 1);
    if (!rc)
        rc = file_size(tmp, &a);
    /* checked again: a process may have opened the store meanwhile */
    if (!rc)
        rc = held_elsewhere(path);
    if (!rc)
        rc = swap_dirs(path, tmp, old, sizeof old);
    if (rc) {
        remove_store_dir(tmp);
        return rc;
    }
    /* the parent directory records the exchange */
    char parent[4096 + 32];
    snprintf(parent, sizeof parent, "%s", path);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent)
        *slash = 0;
    else
        snprintf(parent, sizeof parent, "%s", slash ? "/" : ".");
    sync_path(parent, 1);
    remove_store_dir(old);
    if (before)
        *before = b;
    if (after)
        *after = a;
    return 0;
}
