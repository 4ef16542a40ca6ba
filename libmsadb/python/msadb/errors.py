"""msadb's errors as Python exceptions.

Every failure of the library raises a subclass of :class:`Error` carrying
the C return code (``code``) and ``msadb_strerror(code)`` (``reason``).
Arguments the binding itself refuses (a wrong shape, dtype or type) raise
:class:`InvalidArgument` with code ``EINVAL``, as the library would.
"""
from typing import Optional

from ._lib import lib

EINVAL = -31000
ENOMEM = -30999
ECORRUPT = -30998
EVERSION = -30997
ESIGNATURE = -30996
EKEY = -30995
EAUTH = -30994
ENOTFOUND = -30993
EEXIST = -30992
EREADONLY = -30991
ENONFINITE = -30990
ESTATE = -30989
EDTYPE = -30988
ENOTSTORE = -30987
ELIMIT = -30986
EIO = -30985
ENOTSUP = -30984
ETIMEDOUT = -30983
EPEER = -30982
ERANGE = -30981
EMODEL = -30980
EBUSY = -30979
ESCOPE = -30978


def strerror(code: int) -> str:
    """msadb_strerror(): the text for any code of msadb, LMDB or errno."""
    return lib.msadb_strerror(int(code)).decode("utf-8", "replace")


class Error(Exception):
    """Base of every msadb error: ``code`` (the C return code), ``reason``
    (msadb_strerror's text) and ``context`` (what was being done)."""

    def __init__(self, code: int, context: str = "", detail: Optional[str] = None):
        self.code = int(code)
        self.reason = strerror(self.code)
        self.context = context
        self.detail = detail
        msg = self.reason if detail is None else "%s (%s)" % (detail, self.reason)
        super().__init__("%s: %s" % (context, msg) if context else msg)


class InvalidArgument(Error, ValueError):
    """MSADB_EINVAL: an argument is invalid (shape, range, name, state)."""


class OutOfMemory(Error, MemoryError):
    """MSADB_ENOMEM."""


class Corrupt(Error):
    """MSADB_ECORRUPT: stored bytes fail a checksum or structure check."""


class VersionMismatch(Error):
    """MSADB_EVERSION: the store's format is newer than this library."""


class SignatureMismatch(Error):
    """MSADB_ESIGNATURE: the store was made for another model signature."""


class KeyRequired(Error):
    """MSADB_EKEY: the store is encrypted and no key, or a wrong key, was given."""


class AuthenticationFailed(Error):
    """MSADB_EAUTH: an encrypted record failed authentication."""


class NotFound(Error, LookupError):
    """MSADB_ENOTFOUND: no such document, space or record."""


class AlreadyExists(Error):
    """MSADB_EEXIST: the space or store already exists."""


class ReadOnly(Error):
    """MSADB_EREADONLY: a write on a store opened read-only."""


class NonFinite(Error, ValueError):
    """MSADB_ENONFINITE: NaN or Inf in keys, values or queries."""


class WrongState(Error):
    """MSADB_ESTATE, or a handle used after it was closed."""


class UnsupportedDtype(Error, TypeError):
    """MSADB_EDTYPE: a dtype this operation does not take."""


class NotAStore(Error):
    """MSADB_ENOTSTORE: the directory is not an msadb store."""


class LimitExceeded(Error):
    """MSADB_ELIMIT: a size exceeds a documented limit."""


class IOFailure(Error, OSError):
    """MSADB_EIO or an errno value (positive codes) from the system."""

    def __init__(self, code: int, context: str = "", detail: Optional[str] = None):
        Error.__init__(self, code, context, detail)
        if self.code > 0:
            self.errno = self.code
            self.strerror = self.reason


class NotSupported(Error):
    """MSADB_ENOTSUP: a part this libmsadb was built without (e.g. the
    runtime, with meson's -Druntime=disabled)."""


class OutOfRange(Error):
    """MSADB_ERANGE: a key or value too large for the store's f16 storage or
    f16 summaries (magnitude above 65504)."""


class TimedOut(Error):
    """MSADB_ETIMEDOUT: a rank of a distributed (MPI) store did not answer in time."""


class PeerFailed(Error):
    """MSADB_EPEER: a distributed operation failed on another rank."""


class ModelMismatch(Error):
    """MSADB_EMODEL: the store was made with another model of the same shape."""


class Busy(Error):
    """MSADB_EBUSY: another process has the store open (vacuum)."""


class OutOfScope(Error):
    """MSADB_ESCOPE: a document or space outside the space the handle is
    limited to (:meth:`Store.scope`)."""


class LMDBError(Error):
    """An LMDB code (-30800..-30780), e.g. MDB_MAP_FULL or MDB_READERS_FULL."""


_BY_CODE = {EINVAL: InvalidArgument, ENOMEM: OutOfMemory, ECORRUPT: Corrupt,
            EVERSION: VersionMismatch, ESIGNATURE: SignatureMismatch, EKEY: KeyRequired,
            EAUTH: AuthenticationFailed, ENOTFOUND: NotFound, EEXIST: AlreadyExists,
            EREADONLY: ReadOnly, ENONFINITE: NonFinite, ESTATE: WrongState,
            EDTYPE: UnsupportedDtype, ENOTSTORE: NotAStore, ELIMIT: LimitExceeded, EIO: IOFailure,
            ENOTSUP: NotSupported, ERANGE: OutOfRange, ETIMEDOUT: TimedOut,
            EPEER: PeerFailed, EMODEL: ModelMismatch, EBUSY: Busy,
            ESCOPE: OutOfScope}


def error_class(code: int) -> type:
    """The exception class for a return code."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if -30800 <= code <= -30780:
        return LMDBError
    if code > 0:
        return IOFailure
    return Error


def check(rc: int, context: str = "") -> None:
    """Raises the matching :class:`Error` subclass if rc is not 0."""
    if rc != 0:
        raise error_class(rc)(rc, context)


def invalid(context: str, detail: str) -> InvalidArgument:
    """An InvalidArgument made by the binding (code EINVAL)."""
    return InvalidArgument(EINVAL, context, detail)
