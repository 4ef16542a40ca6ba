/* errors.c -- error strings and version information. */
#include <errno.h>
#include <lmdb.h>
#include <string.h>

#include "msadb.h"

const char *msadb_version(void) { return MSADB_VERSION_STRING; }

int msadb_format_version(void) { return MSADB_FORMAT_VERSION; }

const char *msadb_strerror(int err)
{
    switch (err) {
    case MSADB_OK: return "success";
    case MSADB_EINVAL: return "invalid argument";
    case MSADB_ENOMEM: return "out of memory";
    case MSADB_ECORRUPT: return "stored data is corrupt (checksum or structure check failed)";
    case MSADB_EVERSION: return "store format is newer than this library";
    case MSADB_ESIGNATURE: return "store signature does not match the expected model signature";
    case MSADB_EKEY:
        return "missing or wrong encryption key (or a key given for an unencrypted store; or a space with "
               "its own key, not given)";
    case MSADB_EAUTH: return "encrypted record failed authentication (tampered, moved or wrong key)";
    case MSADB_ENOTFOUND: return "not found";
    case MSADB_EEXIST: return "already exists";
    case MSADB_EREADONLY: return "store is opened read-only";
    case MSADB_ENONFINITE: return "input contains NaN or infinity";
    case MSADB_ESTATE: return "handle used in the wrong state";
    case MSADB_EDTYPE: return "unsupported dtype for this operation";
    case MSADB_ENOTSTORE: return "not an msadb store";
    case MSADB_ELIMIT: return "size exceeds a limit or the buffer given";
    case MSADB_EIO: return "I/O error";
    case MSADB_ENOTSUP: return "not built into this library (rebuild msadb with that part enabled)";
    case MSADB_ETIMEDOUT: return "a rank of the distributed store did not answer in time (failed or stalled)";
    case MSADB_EPEER: return "the operation failed on another rank of the distributed store";
    case MSADB_ERANGE:
        return "a key or value is too large for the store (f16 storage or f16 summaries hold "
               "magnitudes up to 65504)";
    case MSADB_EMODEL: return "the store was made with another model of the same shape";
    case MSADB_EBUSY: return "another process has the store open";
    case MSADB_ESCOPE: return "the document or space is outside the space this handle is limited to";
    default: break;
    }
    if (err >= MDB_KEYEXIST && err <= MDB_LAST_ERRCODE)
        return mdb_strerror(err);
    if (err == EFBIG) /* strerror's "File too large" hides that it is a limit */
        return "File size limit exceeded (the process's file size limit, ulimit -f, or the "
               "filesystem's largest file)";
    if (err > 0) {
        const char *s = strerror(err);
        return s ? s : "system error";
    }
    return "unknown error code";
}
