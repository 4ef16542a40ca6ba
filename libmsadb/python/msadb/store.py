"""Stores, spaces, documents, snapshots and memory attention.

Threading: a :class:`Store` may be shared by threads; writes (batches,
deletes, space changes) are serialized by the library and readers never wait
for them.  A :class:`Snapshot`, :class:`Batch` or :class:`Capture` is used by
one thread at a time: each holds a lock, so concurrent calls on one of them
wait for each other instead of corrupting it.  Give each reading thread its
own snapshot.  The GIL is released during every library call.
"""
import ctypes
import os
import dataclasses
import threading
import weakref
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import errors
from ._lib import (DOC_CB, KEY_BYTES, MAX_LAYERS, REPORT_CB, SPACE_CB, Doc_, DocInfo_, Hit_,
                   Options_, Query_, QueryStats_, Signature_, SpaceInfo_, StatInfo_, lib)
from .errors import check, invalid

DTYPES = {"f32": 0, "f16": 1, "bf16": 2, "int8": 3, "q4": 4}
SUMMARIES = {"mean": 1, "minmax": 2, "reps": 4}
SCORES = {None: 0, "cosine": 1, "dot": 2, "dot-centred": 3}
SELECT = {"blocks": 0, "documents": 1}

#: numpy mirror of msadb_hit: an array of hits is passed to the library
#: as is (msadb_attend_blocks) and filled by it without copies.
HIT_DTYPE = np.dtype({"names": [f for f, _ in Hit_._fields_],
                      "formats": ["<u4", "<u4", "<u8", "<u8", "<u4", "<u4", "<f4"],
                      "offsets": [getattr(Hit_, f).offset for f, _ in Hit_._fields_],
                      "itemsize": ctypes.sizeof(Hit_)})

PathLike = Union[str, bytes, "os.PathLike[str]"]


def _path(p) -> bytes:
    return os.fsencode(p)


def _name(s: Optional[str], what: str) -> Optional[bytes]:
    if s is None:
        return None
    if not isinstance(s, str):
        raise invalid(what, "expected a str, got %s" % type(s).__name__)
    return s.encode("utf-8")


def _bytes(x, what: str) -> Optional[bytes]:
    if x is None:
        return None
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    raise invalid(what, "expected str or bytes, got %s" % type(x).__name__)


def _f32(a, what: str, shape_tail: Optional[Tuple[int, ...]] = None) -> np.ndarray:
    """a as a C-contiguous float32 array: the same memory when it already is
    one (no copy), else a converted copy."""
    arr = np.ascontiguousarray(a, dtype=np.float32)
    if shape_tail is not None and arr.shape[-len(shape_tail):] != shape_tail:
        raise invalid(what, "shape %s, expected [..., %s]" % (arr.shape, ", ".join(map(str, shape_tail))))
    return arr


def _ptr(a: Optional[np.ndarray]):
    return None if a is None else a.ctypes.data


@dataclasses.dataclass
class Signature:
    """The model shape a store is made for (msadb_signature).

    ``memory_layers`` defaults to the latter half of the layers, ``dtype``
    is the storage dtype (f32, f16, bf16, int8, q4), ``summaries`` the
    routing summaries kept per block (mean, minmax, reps)."""
    n_layers: int
    n_kv_heads: int
    n_q_heads: int
    head_dim: int
    memory_layers: Optional[Sequence[int]] = None
    block_size: int = 64
    dtype: str = "f16"
    summaries: Optional[Sequence[str]] = None
    position_scheme: int = 0

    def to_c(self) -> Signature_:
        s = Signature_()
        check(lib.msadb_signature_init(ctypes.byref(s), self.n_layers, self.n_kv_heads,
                                       self.n_q_heads, self.head_dim), "signature")
        if self.memory_layers is not None:
            ml = list(self.memory_layers)
            if not 1 <= len(ml) <= MAX_LAYERS:
                raise invalid("signature", "memory_layers must hold 1..%d layers" % MAX_LAYERS)
            s.n_memory_layers = len(ml)
            ctypes.memset(ctypes.addressof(s.memory_layers), 0, ctypes.sizeof(s.memory_layers))
            for i, layer in enumerate(ml):
                s.memory_layers[i] = int(layer)
        s.block_size = self.block_size
        if self.dtype not in DTYPES:
            raise invalid("signature", "dtype %r: one of %s" % (self.dtype, ", ".join(DTYPES)))
        s.dtype = DTYPES[self.dtype]
        if self.summaries is not None:
            bad = [k for k in self.summaries if k not in SUMMARIES]
            if bad:
                raise invalid("signature", "summaries %s: known are %s" % (bad, ", ".join(SUMMARIES)))
            s.summary_kinds = sum(SUMMARIES[k] for k in set(self.summaries))
        s.position_scheme = self.position_scheme
        check(lib.msadb_signature_validate(ctypes.byref(s)), "signature")
        return s

    @classmethod
    def from_c(cls, s: Signature_) -> "Signature":
        names = {v: k for k, v in DTYPES.items()}
        return cls(s.n_layers, s.n_kv_heads, s.n_q_heads, s.head_dim,
                   [s.memory_layers[i] for i in range(s.n_memory_layers)], s.block_size,
                   names.get(s.dtype, str(s.dtype)),
                   [k for k, v in SUMMARIES.items() if s.summary_kinds & v], s.position_scheme)

    @property
    def planes(self) -> int:
        """Memory planes: memory layers x kv heads."""
        return len(self.resolved().memory_layers) * self.n_kv_heads

    def resolved(self) -> "Signature":
        """The signature with every default filled in, as the store records it."""
        return Signature.from_c(self.to_c())


@dataclasses.dataclass
class Stat:
    """msadb_stat_info: counts and sizes of a store."""
    format_version: int
    n_spaces: int
    n_documents: int
    n_tokens: int
    n_blocks: int
    block_bytes: int
    summary_bytes: int
    map_size: int
    map_used: int
    encrypted: bool
    readers: int            # open snapshots, all processes
    oldest_reader_lag: int  # commits the oldest snapshot is behind
    live_bytes: int         # bytes the newest state uses of map_used


@dataclasses.dataclass
class SpaceInfo:
    """msadb_space_info."""
    id: int
    name: str
    n_documents: int
    n_tokens: int
    keyed: bool = False
    locked: bool = False


@dataclasses.dataclass
class DocInfo:
    """msadb_doc_info: one document's record."""
    id: int
    space_id: int
    space: str
    title: str
    n_tokens: int
    n_blocks: int
    first_block: int
    created: int
    text_len: int
    meta_len: int
    has_tokens: bool
    has_spans: bool
    expires: int = 0  # Unix seconds after which reads ignore it; 0: never


def _docinfo(d: DocInfo_) -> DocInfo:
    return DocInfo(d.id, d.space_id, d.space.decode("utf-8", "replace"),
                   d.title.decode("utf-8", "replace"), d.n_tokens, d.n_blocks, d.first_block,
                   d.created, d.text_len, d.meta_len, bool(d.has_tokens), bool(d.has_spans),
                   d.expires)


def meta_text(meta: Dict[str, str]) -> bytes:
    """Metadata text (one "KEY=VALUE\\n" line per item, msadb.h) from a dict,
    each line checked with msadb_meta_term_check (Invalid otherwise)."""
    out = b""
    for k, v in meta.items():
        term = ("%s=%s" % (k, v)).encode("utf-8")
        if lib.msadb_meta_term_check(term) != 0:
            raise invalid("meta", "%r=%r: KEY is 1..64 letters, digits and ._-:@/, VALUE up to 1024 "
                          "bytes without a newline" % (k, v))
        out += term + b"\n"
    return out


def parse_meta(meta: bytes) -> Optional[Dict[str, str]]:
    """The dict of metadata text, or None when the bytes are not such text."""
    if not meta:
        return {}
    out = {}
    for line in meta.decode("utf-8", "replace").rstrip("\n").split("\n"):
        if lib.msadb_meta_term_check(line.encode("utf-8")) != 0:
            return None
        k, _, v = line.partition("=")
        out[k] = v
    return out


def _where(st, where, keep) -> None:
    """Sets st.where/n_where (msadb_query, msadb_ask_params) from a dict or
    a list of "KEY=VALUE" terms."""
    if not where:
        return
    terms = ["%s=%s" % kv for kv in where.items()] if isinstance(where, dict) else list(where)
    arr = (ctypes.c_char_p * len(terms))(*[t.encode("utf-8") for t in terms])
    keep.append(arr)
    st.where = ctypes.cast(arr, ctypes.c_void_p)
    st.n_where = len(terms)


@dataclasses.dataclass
class QueryStats:
    """msadb_query_stats: where the time of one attention call went."""
    scan_ms: float = 0.0
    select_ms: float = 0.0
    read_ms: float = 0.0
    attend_ms: float = 0.0
    blocks_scanned: int = 0
    blocks_read: int = 0
    tokens_attended: int = 0


def _options(read_only=False, map_size=0, max_readers=0, zstd_level=1, no_sync=False,
             key=None, passphrase=None):
    o = Options_()
    lib.msadb_options_init(ctypes.byref(o))
    o.read_only = int(bool(read_only))
    o.map_size = int(map_size)
    o.max_readers = int(max_readers)
    o.zstd_level = int(zstd_level)
    o.no_sync = int(bool(no_sync))
    keep = []
    if key is not None and passphrase is not None:
        raise invalid("options", "give a key or a passphrase, not both")
    if key is not None:
        kb = bytes(key)
        if len(kb) != KEY_BYTES:
            raise invalid("options", "key must be %d bytes, got %d" % (KEY_BYTES, len(kb)))
        kbuf = ctypes.create_string_buffer(kb, KEY_BYTES)
        keep.append(kbuf)
        o.key = ctypes.cast(kbuf, ctypes.c_void_p)
    if passphrase is not None:
        pb = _bytes(passphrase, "passphrase")
        keep.append(pb)
        o.passphrase = pb
    return o, keep


def read_key_file(path) -> bytes:
    """msadb_key_file_read: 32 raw bytes or 64 hex characters."""
    buf = ctypes.create_string_buffer(KEY_BYTES)
    check(lib.msadb_key_file_read(_path(path), buf), str(path))
    return buf.raw


class _Handle:
    """An owned C handle with a lock; closed once."""

    def __init__(self, ptr: ctypes.c_void_p, what: str):
        self._h = ptr
        self._what = what
        self._lock = threading.RLock()

    def _get(self):
        if not self._h:
            raise errors.WrongState(errors.ESTATE, self._what, "already closed")
        return self._h

    @property
    def closed(self) -> bool:
        return not self._h

    def close(self) -> None:
        """Frees the handle (ends, aborts) unless already done.  Idempotent."""
        with self._lock:
            if self._h:
                type(self)._free(self._h)
                self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Store(_Handle):
    """An open store (msadb_store).  Use :meth:`create`, :meth:`open` or
    :meth:`open_or_create`; close with :meth:`close` or a ``with`` block,
    which also ends the snapshots and aborts the batches still open on it."""

    _free = staticmethod(lib.msadb_close)

    def __init__(self, ptr, path):
        super().__init__(ptr, "store %s" % path)
        self.path = path
        self._children = weakref.WeakSet()

    @classmethod
    def _make(cls, fn, what, path, sig, **opts) -> "Store":
        o, keep = _options(**opts)
        h = ctypes.c_void_p()
        s = sig.to_c() if sig is not None else None
        rc = fn(_path(path), None if s is None else ctypes.byref(s), ctypes.byref(o), ctypes.byref(h))
        del keep
        check(rc, "%s %s" % (what, path))
        return cls(h, path)

    @classmethod
    def create(cls, path, signature: Signature, *, key: Optional[bytes] = None,
               passphrase: Optional[str] = None, map_size: int = 0, max_readers: int = 0,
               zstd_level: int = 1, no_sync: bool = False) -> "Store":
        """msadb_create: a new store in directory ``path`` (AlreadyExists if
        one is there).  A key (32 bytes) or passphrase makes it encrypted."""
        return cls._make(lib.msadb_create, "create", path, signature, key=key,
                         passphrase=passphrase, map_size=map_size, max_readers=max_readers,
                         zstd_level=zstd_level, no_sync=no_sync)

    @classmethod
    def open(cls, path, signature: Optional[Signature] = None, *, read_only: bool = False,
             key: Optional[bytes] = None, passphrase: Optional[str] = None, map_size: int = 0,
             max_readers: int = 0, zstd_level: int = 1, no_sync: bool = False) -> "Store":
        """msadb_open: an existing store; with ``signature`` it must match
        (SignatureMismatch).  NotAStore, VersionMismatch, KeyRequired."""
        return cls._make(lib.msadb_open, "open", path, signature, read_only=read_only, key=key,
                         passphrase=passphrase, map_size=map_size, max_readers=max_readers,
                         zstd_level=zstd_level, no_sync=no_sync)

    @classmethod
    def open_or_create(cls, path, signature: Signature, *, key: Optional[bytes] = None,
                       passphrase: Optional[str] = None, map_size: int = 0,
                       max_readers: int = 0, zstd_level: int = 1,
                       no_sync: bool = False) -> "Store":
        """msadb_open_or_create: opens the store if present (same signature)
        or creates it."""
        return cls._make(lib.msadb_open_or_create, "open", path, signature, key=key,
                         passphrase=passphrase, map_size=map_size, max_readers=max_readers,
                         zstd_level=zstd_level, no_sync=no_sync)

    def close(self) -> None:
        """Ends this store's open snapshots, aborts its batches and captures,
        and closes it.  Idempotent."""
        with self._lock:
            for c in list(self._children):
                c.close()
            super().close()

    def _own(self, child):
        self._children.add(child)
        return child

    @property
    def signature(self) -> Signature:
        """The store's signature."""
        return Signature.from_c(lib.msadb_store_signature(self._get()).contents)

    def scope(self, space: str) -> None:
        """msadb_store_scope: limits this handle to one space for the rest
        of its life (documents and spaces outside it raise OutOfScope)."""
        check(lib.msadb_store_scope(self._get(), _name(space, "space")), "scope %r" % space)

    @property
    def encrypted(self) -> bool:
        rc = lib.msadb_store_encrypted(self._get())
        if rc < 0:
            check(rc, "encrypted")
        return bool(rc)

    def stat(self) -> Stat:
        """msadb_stat."""
        s = StatInfo_()
        check(lib.msadb_stat(self._get(), ctypes.byref(s)), "stat")
        return Stat(s.format_version, s.n_spaces, s.n_documents, s.n_tokens, s.n_blocks,
                    s.block_bytes, s.summary_bytes, s.map_size, s.map_used, bool(s.encrypted),
                    s.readers, s.oldest_reader_lag, s.live_bytes)

    # spaces
    def create_space(self, name: str) -> int:
        """msadb_space_create; returns the space id (AlreadyExists, InvalidArgument)."""
        sid = ctypes.c_uint32()
        check(lib.msadb_space_create(self._get(), _name(name, "space"), ctypes.byref(sid)),
              "create space %r" % name)
        return sid.value

    @staticmethod
    def _space_key(key, passphrase):
        """The key buffer and passphrase bytes of a keyed space's call."""
        if (key is None) == (passphrase is None):
            raise invalid("space key", "give a key or a passphrase (one of them)")
        if key is not None:
            kb = bytes(key)
            if len(kb) != KEY_BYTES:
                raise invalid("space key", "key must be %d bytes, got %d" % (KEY_BYTES, len(kb)))
            return ctypes.create_string_buffer(kb, KEY_BYTES), None
        return None, _bytes(passphrase, "passphrase")

    def create_space_keyed(self, name: str, key: Optional[bytes] = None,
                           passphrase: Optional[str] = None) -> int:
        """msadb_space_create_keyed: a space with its own key (a 32-byte key
        or a passphrase), independent of the store's; this handle holds it.
        Returns the space id (InvalidArgument in a store that is not
        encrypted, AlreadyExists)."""
        kb, pb = self._space_key(key, passphrase)
        sid = ctypes.c_uint32()
        check(lib.msadb_space_create_keyed(self._get(), _name(name, "space"), kb, pb, ctypes.byref(sid)),
              "create keyed space %r" % name)
        return sid.value

    def unlock_space(self, name: str, key: Optional[bytes] = None,
                     passphrase: Optional[str] = None) -> None:
        """msadb_space_unlock: gives this handle a keyed space's key
        (KeyRequired when it is wrong)."""
        kb, pb = self._space_key(key, passphrase)
        check(lib.msadb_space_unlock(self._get(), _name(name, "space"), kb, pb), "unlock space %r" % name)

    def drop_space(self, name: str) -> None:
        """msadb_space_drop: the space and all its documents, in one transaction."""
        check(lib.msadb_space_drop(self._get(), _name(name, "space")), "drop space %r" % name)

    def space(self, name: str) -> SpaceInfo:
        """msadb_space_get (NotFound)."""
        s = SpaceInfo_()
        check(lib.msadb_space_get(self._get(), _name(name, "space"), ctypes.byref(s)),
              "space %r" % name)
        return SpaceInfo(s.id, s.name.decode(), s.n_documents, s.n_tokens, bool(s.keyed), bool(s.locked))

    def spaces(self) -> List[SpaceInfo]:
        """msadb_space_list: every space, in name order."""
        out = []

        def cb(p, ud):
            s = p.contents
            out.append(SpaceInfo(s.id, s.name.decode(), s.n_documents, s.n_tokens, bool(s.keyed),
                                 bool(s.locked)))
            return 0
        check(lib.msadb_space_list(self._get(), SPACE_CB(cb), None), "list spaces")
        return out

    # writing
    def batch(self) -> "Batch":
        """A batch of documents written in one transaction (all or nothing):
        ``with store.batch() as b: b.add(...)`` commits at the end of the
        block, or aborts if it raised."""
        h = ctypes.c_void_p()
        check(lib.msadb_batch_begin(self._get(), ctypes.byref(h)), "batch")
        return self._own(Batch(h, self))

    def add(self, keys, values, **meta) -> int:
        """msadb_doc_append: one document in its own transaction (see
        :meth:`Batch.add` for the arguments); returns its id."""
        doc, keep = _doc(self, keys, values, **meta)
        did = ctypes.c_uint64()
        check(lib.msadb_doc_append(self._get(), ctypes.byref(doc), ctypes.byref(did)), "add")
        del keep
        return did.value

    def delete(self, doc_ids: Union[int, Iterable[int]]) -> None:
        """msadb_doc_delete: the documents, in one transaction (NotFound: none deleted)."""
        ids = np.atleast_1d(np.asarray(doc_ids, dtype=np.uint64))
        if ids.size == 0:
            raise invalid("delete", "no document ids given")
        ids = np.ascontiguousarray(ids)
        check(lib.msadb_doc_delete(self._get(), ids.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64)),
                                   ids.size), "delete")

    def expire(self) -> int:
        """msadb_expire: deletes the documents whose expiry time has passed
        (reads ignore them already); returns how many."""
        n = ctypes.c_uint64()
        check(lib.msadb_expire(self._get(), ctypes.byref(n)), "expire")
        return n.value

    def compact(self) -> None:
        """msadb_compact: summary pages rewritten without deleted documents."""
        check(lib.msadb_compact(self._get()), "compact")

    def verify(self) -> List[str]:
        """msadb_verify: the problems found (empty list: the store is sound).
        Errors of the check itself raise."""
        problems = []

        def cb(line, ud):
            problems.append(line.decode("utf-8", "replace"))
        rc = lib.msadb_verify(self._get(), REPORT_CB(cb), None)
        if rc == errors.ECORRUPT and problems:
            return problems
        check(rc, "verify")
        return problems

    def capture(self) -> "Capture":
        """msadb_capture_begin: a document captured layer by layer from a
        model's forward pass (see :class:`Capture`)."""
        h = ctypes.c_void_p()
        check(lib.msadb_capture_begin(self._get(), ctypes.byref(h)), "capture")
        return self._own(Capture(h, self))

    # reading
    def snapshot(self) -> "Snapshot":
        """A consistent read view (msadb_snapshot_begin); end it with
        :meth:`Snapshot.close` or a ``with`` block."""
        h = ctypes.c_void_p()
        check(lib.msadb_snapshot_begin(self._get(), ctypes.byref(h)), "snapshot")
        return self._own(Snapshot(h, self))


_KV_DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}


def _doc(store: Store, keys, values, *, space: Optional[str] = None, title: Optional[str] = None,
         text: Union[str, bytes, None] = None, token_ids=None, spans=None,
         meta: Union[bytes, str, Dict[str, str], None] = None, n_tokens: Optional[int] = None,
         expires: int = 0):
    """A msadb_doc for keys/values [memory layers][kv heads][T][head dim]
    (float32 or float16, used in place when C-contiguous) and its metadata."""
    keep = []
    d = Doc_()
    d.space = _name(space, "space")
    d.title = _name(title, "title")
    keep += [d.space, d.title]
    if keys is not None or values is not None:
        sig = store.signature
        k, v = np.asarray(keys), np.asarray(values)
        if k.dtype not in _KV_DTYPES:
            k = k.astype(np.float32)
        if v.dtype != k.dtype:
            v = v.astype(k.dtype)
        k, v = np.ascontiguousarray(k), np.ascontiguousarray(v)
        want = (len(sig.memory_layers), sig.n_kv_heads)
        if k.ndim != 4 or k.shape[:2] != want or k.shape[3] != sig.head_dim or k.shape != v.shape:
            raise invalid("document", "keys %s and values %s: expected [%d memory layers, %d kv heads, "
                          "T, %d] each" % (k.shape, v.shape, want[0], want[1], sig.head_dim))
        d.n_tokens = k.shape[2]
        d.kv_dtype = _KV_DTYPES[k.dtype]
        d.keys, d.values = k.ctypes.data, v.ctypes.data
        keep += [k, v]
    elif n_tokens is not None:
        d.n_tokens = int(n_tokens)
    b = _bytes(text, "text")
    if b is not None:
        d.text, d.text_len = b, len(b)
        keep.append(b)
    d.expires = int(expires or 0)
    m = _bytes(meta_text(meta) if isinstance(meta, dict) else meta, "meta")
    if m is not None:
        mb = ctypes.create_string_buffer(m, len(m))
        d.meta, d.meta_len = ctypes.cast(mb, ctypes.c_void_p), len(m)
        keep.append(mb)
    if token_ids is not None:
        ids = np.ascontiguousarray(token_ids, dtype=np.int32)
        if ids.shape != (d.n_tokens,):
            raise invalid("document", "token_ids shape %s, expected [%d]" % (ids.shape, d.n_tokens))
        d.token_ids = ids.ctypes.data
        keep.append(ids)
    if spans is not None:
        sp = np.ascontiguousarray(spans, dtype=np.int64)
        if sp.shape != (d.n_tokens, 2):
            raise invalid("document", "spans shape %s, expected [%d, 2]" % (sp.shape, d.n_tokens))
        d.token_spans = sp.ctypes.data
        keep.append(sp)
    return d, keep


class Batch(_Handle):
    """Documents written in one transaction (msadb_batch_*).  Nothing is
    visible before :meth:`commit`; a ``with`` block commits on success and
    aborts on an exception.  After commit, :attr:`ids` holds the new
    documents' ids in add order."""

    _free = staticmethod(lib.msadb_batch_abort)

    def __init__(self, h, store: Store):
        super().__init__(h, "batch")
        self.store = store
        self.ids: List[int] = []

    def add(self, keys, values, *, space: Optional[str] = None, title: Optional[str] = None,
            text: Union[str, bytes, None] = None, token_ids=None, spans=None,
            meta: Union[bytes, str, Dict[str, str], None] = None, expires: int = 0) -> None:
        """msadb_batch_add: keys and values [memory layers][kv heads][T][head
        dim] (float32 or float16: read in place when C-contiguous, other
        dtypes converted), post-RoPE at document-wise positions; ``text``
        with ``spans`` [T, 2] (byte [start, end) of each token in the
        UTF-8 text) lets hits cite their text; ``meta`` is opaque bytes, or
        a dict stored as metadata text (what ``where`` filters read);
        ``expires`` (Unix seconds, :func:`time_now`'s clock; 0 = never) is
        when every read starts ignoring the document."""
        with self._lock:
            doc, keep = _doc(self.store, keys, values, space=space, title=title, text=text,
                             token_ids=token_ids, spans=spans, meta=meta, expires=expires)
            check(lib.msadb_batch_add(self._get(), ctypes.byref(doc)), "batch add")
            del keep

    def delete(self, doc_ids: Union[int, Iterable[int]]) -> None:
        """msadb_batch_delete: the documents are deleted in the commit's
        transaction, before the batch's documents are written (replacing a
        document: add the new one and delete the old one in one batch; a
        missing id fails the commit with NotFound and nothing is written)."""
        ids = np.ascontiguousarray(np.atleast_1d(np.asarray(doc_ids, dtype=np.uint64)))
        with self._lock:
            check(lib.msadb_batch_delete(self._get(), ids.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64)),
                                         ids.size), "batch delete")

    def __len__(self) -> int:
        return int(lib.msadb_batch_count(self._get())) if self._h else 0

    def commit(self) -> List[int]:
        """msadb_batch_commit: all or nothing; returns the ids.  The batch
        is finished whatever the result."""
        with self._lock:
            h = self._get()
            n = lib.msadb_batch_count(h)
            ids = (ctypes.c_uint64 * max(n, 1))()
            self._h = None
            check(lib.msadb_batch_commit(h, ids), "batch commit")
            self.ids = list(ids[:n])
            return self.ids


    abort = _Handle.close

    def __exit__(self, et, ev, tb):
        if et is None and self._h:
            self.commit()
        else:
            self.close()


class Capture(_Handle):
    """One document captured from a model's forward pass
    (msadb_capture_*): :meth:`kv` per layer and chunk, then :meth:`commit`
    or :meth:`add_to` a batch."""

    _free = staticmethod(lib.msadb_capture_abort)

    def __init__(self, h, store: Store):
        super().__init__(h, "capture")
        self.store = store

    def kv(self, layer: int, first: int, keys, values) -> None:
        """msadb_capture_kv: keys and values [kv heads][n][head dim] of model
        layer ``layer`` for tokens [first, first + n) (float32; head-major;
        keys after RoPE).  Layers without memory are accepted and ignored."""
        k = _f32(keys, "capture keys")
        v = _f32(values, "capture values")
        if k.ndim != 3 or k.shape != v.shape:
            raise invalid("capture", "keys %s and values %s: expected [kv heads, n, head dim]"
                          % (k.shape, v.shape))
        with self._lock:
            check(lib.msadb_capture_kv(self._get(), layer, first, k.shape[1], k.ctypes.data,
                                       v.ctypes.data), "capture layer %d" % layer)

    def _meta(self, n_tokens, **meta):
        return _doc(self.store, None, None, n_tokens=n_tokens, **meta)

    def commit(self, n_tokens: int, **meta) -> int:
        """msadb_capture_commit with the document's metadata (space, title,
        text, token_ids, spans, meta); returns its id.  The capture is
        finished whatever the result."""
        with self._lock:
            h = self._get()
            doc, keep = self._meta(n_tokens, **meta)
            did = ctypes.c_uint64()
            self._h = None
            check(lib.msadb_capture_commit(h, ctypes.byref(doc), ctypes.byref(did)), "capture commit")
            return did.value

    def add_to(self, batch: Batch, n_tokens: int, **meta) -> None:
        """msadb_capture_add: the document joins ``batch`` (committed with it)."""
        with self._lock:
            h = self._get()
            doc, keep = self._meta(n_tokens, **meta)
            self._h = None
            check(lib.msadb_capture_add(h, batch._get(), ctypes.byref(doc)), "capture add")


    abort = _Handle.close


@dataclasses.dataclass
class Attention:
    """The result of a memory attention call: ``out`` [n, q heads, head dim]
    and ``lse`` [n, q heads] (natural log; -inf where nothing was
    attended), ``hits`` (a HIT_DTYPE array: kv_head, query, doc_id,
    block_id, token_start, token_end, score) and ``stats``."""
    out: np.ndarray
    lse: np.ndarray
    hits: np.ndarray
    stats: QueryStats


class Snapshot(_Handle):
    """A consistent read view of a store (msadb_snapshot_*): documents,
    their text and K/V, and memory attention."""

    _free = staticmethod(lib.msadb_snapshot_end)

    def __init__(self, h, store: Store):
        super().__init__(h, "snapshot")
        self.store = store
        self._sig = store.signature


    def renew(self) -> None:
        """msadb_snapshot_renew: move to the newest commit, keeping scratch memory."""
        with self._lock:
            check(lib.msadb_snapshot_renew(self._get()), "renew")

    def document(self, doc_id: int) -> DocInfo:
        """msadb_doc_get (NotFound)."""
        d = DocInfo_()
        with self._lock:
            check(lib.msadb_doc_get(self._get(), doc_id, ctypes.byref(d)), "document %d" % doc_id)
        return _docinfo(d)

    def documents(self, space: Optional[str] = None, *, where=None) -> List[DocInfo]:
        """msadb_doc_list_where: the documents of ``space`` (None: all) whose
        metadata holds every term of ``where`` (a dict, or "KEY=VALUE"
        strings; None: all), id order.  Expired documents are not listed."""
        out = []
        keep: list = []

        class _W(ctypes.Structure):
            _fields_ = [("where", ctypes.c_void_p), ("n_where", ctypes.c_size_t)]
        w = _W()
        _where(w, where, keep)

        def cb(p, ud):
            out.append(_docinfo(p.contents))
            return 0
        with self._lock:
            check(lib.msadb_doc_list_where(self._get(), _name(space, "space"), w.where, w.n_where,
                                           DOC_CB(cb), None), "list documents")
        return out

    def _blob(self, fn, doc_id, what) -> bytes:
        n = ctypes.c_size_t()
        with self._lock:
            check(fn(self._get(), doc_id, None, 0, ctypes.byref(n)), "%s of %d" % (what, doc_id))
            buf = ctypes.create_string_buffer(max(n.value, 1))
            check(fn(self._get(), doc_id, buf, n.value, ctypes.byref(n)), "%s of %d" % (what, doc_id))
        return buf.raw[:n.value]

    def text(self, doc_id: int) -> str:
        """The document's text (msadb_doc_text), decoded as UTF-8 (invalid
        bytes replaced); :meth:`text_bytes` for the bytes."""
        return self.text_bytes(doc_id).decode("utf-8", "replace")

    def text_bytes(self, doc_id: int) -> bytes:
        return self._blob(lib.msadb_doc_text, doc_id, "text")

    def meta(self, doc_id: int) -> bytes:
        """msadb_doc_meta: the metadata bytes."""
        return self._blob(lib.msadb_doc_meta, doc_id, "meta")

    def tokens(self, doc_id: int) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """msadb_doc_tokens: (token ids int32 [T] or None, spans int64 [T, 2]
        or None); NotFound if the document has neither."""
        info = self.document(doc_id)
        n = info.n_tokens
        ids = np.empty(n, np.int32) if info.has_tokens else None
        sp = np.empty((n, 2), np.int64) if info.has_spans else None
        with self._lock:
            check(lib.msadb_doc_tokens(self._get(), doc_id, _ptr(ids), _ptr(sp), n),
                  "tokens of %d" % doc_id)
        return ids, sp

    def kv(self, doc_id: int, plane: int) -> Tuple[np.ndarray, np.ndarray]:
        """msadb_doc_kv: the stored (dequantized) keys and values of one plane
        (memory layer index x kv heads + kv head), float32 [T, head dim]."""
        info = self.document(doc_id)
        k = np.empty((info.n_tokens, self._sig.head_dim), np.float32)
        v = np.empty_like(k)
        with self._lock:
            check(lib.msadb_doc_kv(self._get(), doc_id, plane, k.ctypes.data, v.ctypes.data),
                  "kv of %d plane %d" % (doc_id, plane))
        return k, v

    def cite(self, doc_id: int, token_start: int, token_end: int) -> Optional[str]:
        """The text tokens [token_start, token_end) of a document cover (from
        its stored text and spans), or None when it has none."""
        info = self.document(doc_id)
        if not info.text_len or not info.has_spans or token_end > info.n_tokens or token_start >= token_end:
            return None
        _, sp = self.tokens(doc_id)
        text = self.text_bytes(doc_id)
        a, b = int(sp[token_start, 0]), int(sp[token_end - 1, 1])
        if not 0 <= a <= b <= len(text):
            return None
        return text[a:b].decode("utf-8", "replace")

    # memory attention
    def _query(self, layer, q, spaces, top_k, select, summary, score, scale, exact, per_token,
               where=None):
        sig = self._sig
        q = _f32(q, "query", (sig.n_q_heads, sig.head_dim))
        if q.ndim == 2:
            q = q[None]
        if q.ndim != 3 or q.shape[0] < 1:
            raise invalid("query", "q shape %s, expected [n, %d, %d]" % (q.shape, sig.n_q_heads, sig.head_dim))
        mq = Query_()
        lib.msadb_query_init(ctypes.byref(mq))
        mq.layer = layer
        mq.q = q.ctypes.data
        mq.n_query = q.shape[0]
        keep = [q]
        _routing(mq, "query", spaces, top_k, select, summary, score, keep)
        _where(mq, where, keep)
        mq.scale = scale or 0.0
        mq.exact = int(bool(exact))
        mq.per_token = int(bool(per_token))
        st = QueryStats_()
        mq.stats = ctypes.cast(ctypes.byref(st), ctypes.c_void_p)
        keep.append(st)
        return mq, q, st, keep

    def _hit_cap(self, top_k, exact, select, per_token, n_query):
        sig = self._sig
        if exact or select == "documents":
            per = self.store.stat().n_blocks
        else:
            per = top_k
        return max(1, per * sig.n_kv_heads * (n_query if per_token else 1))

    def _attend(self, fn, layer, q, out, lse, spaces, top_k, select, summary, score, scale,
                exact, per_token, hits_cap, where=None):
        mq, q, st, keep = self._query(layer, q, spaces, top_k, select, summary, score, scale,
                                      exact, per_token, where)
        n, H, D = q.shape
        cap = hits_cap if hits_cap is not None else self._hit_cap(top_k, exact, select, per_token, n)
        hits = np.zeros(cap, HIT_DTYPE)
        nh = ctypes.c_size_t()
        with self._lock:
            check(fn(self._get(), ctypes.byref(mq), out.ctypes.data, lse.ctypes.data,
                     hits.ctypes.data, cap, ctypes.byref(nh)), "attend layer %d" % layer)
        del keep
        return Attention(out, lse, hits[:min(nh.value, cap)], _stats(st))

    def attend(self, layer: int, q, *, spaces: Union[str, Sequence[str], None] = None,
               top_k: int = 16, select: str = "blocks", summary: Optional[str] = None,
               score: Optional[str] = None, scale: Optional[float] = None, exact: bool = False,
               per_token: bool = False, hits_cap: Optional[int] = None, where=None) -> Attention:
        """msadb_attend: memory attention of model layer ``layer`` for
        queries ``q`` [n, q heads, head dim] (float32 C-contiguous is read
        in place; [q heads, head dim] is one query).  ``exact`` attends every
        block (dense attention over the stored K/V).  ``where`` (a dict or
        "KEY=VALUE" strings) routes among the documents whose metadata
        holds every term, and attends nothing else.  Returns
        :class:`Attention`; hits beyond ``hits_cap`` (default: all that can
        be selected) are counted by the library but not returned."""
        sig = self._sig
        qa = np.asarray(q)
        n = qa.shape[0] if qa.ndim == 3 else 1
        out = np.empty((n, sig.n_q_heads, sig.head_dim), np.float32)
        lse = np.empty((n, sig.n_q_heads), np.float32)
        return self._attend(lib.msadb_attend, layer, q, out, lse, spaces, top_k, select, summary,
                            score, scale, exact, per_token, hits_cap, where)

    def attend_merge(self, layer: int, q, out: np.ndarray, lse: np.ndarray, **kw) -> Attention:
        """msadb_attend_merge: memory attention merged, in place, into the
        local attention ``out`` [n, q heads, head dim] and ``lse`` [n, q heads]
        (float32 C-contiguous arrays, modified in place; -inf lse = empty
        local context).  Keyword arguments as :meth:`attend`."""
        sig = self._sig
        qa = np.asarray(q)
        n = qa.shape[0] if qa.ndim == 3 else 1
        _inplace(out, (n, sig.n_q_heads, sig.head_dim), "out")
        _inplace(lse, (n, sig.n_q_heads), "lse")
        return self._attend(lib.msadb_attend_merge, layer, q, out, lse, **_attend_kw(kw))

    def retrieve(self, layer: int, q, *, spaces=None, top_k: int = 16, select: str = "blocks",
                 summary: Optional[str] = None, score: Optional[str] = None, exact: bool = False,
                 per_token: bool = False, hits_cap: Optional[int] = None, where=None) -> np.ndarray:
        """msadb_retrieve: the blocks :meth:`attend` would read (HIT_DTYPE
        array, best first per kv head), without attending."""
        mq, qq, st, keep = self._query(layer, q, spaces, top_k, select, summary, score, None,
                                       exact, per_token, where)
        cap = hits_cap if hits_cap is not None else self._hit_cap(top_k, exact, select, per_token,
                                                                  qq.shape[0])
        hits = np.zeros(cap, HIT_DTYPE)
        nh = ctypes.c_size_t()
        with self._lock:
            check(lib.msadb_retrieve(self._get(), ctypes.byref(mq), hits.ctypes.data, cap,
                                     ctypes.byref(nh)), "retrieve layer %d" % layer)
        del keep
        return hits[:min(nh.value, cap)]

    def attend_blocks(self, layer: int, q, hits: np.ndarray, *,
                      scale: Optional[float] = None) -> Attention:
        """msadb_attend_blocks: exact attention over the given blocks only (a
        selection from :meth:`attend` or :meth:`retrieve`), no routing."""
        h = np.ascontiguousarray(hits, dtype=HIT_DTYPE)
        mq, qq, st, keep = self._query(layer, q, None, 16, "blocks", None, None, scale, False, False)
        n, H, D = qq.shape
        out = np.empty((n, H, D), np.float32)
        lse = np.empty((n, H), np.float32)
        with self._lock:
            check(lib.msadb_attend_blocks(self._get(), ctypes.byref(mq), h.ctypes.data, h.size,
                                          out.ctypes.data, lse.ctypes.data), "attend blocks")
        del keep
        return Attention(out, lse, h, _stats(st))


def _routing(st, what, spaces, top_k, select, summary, score, keep) -> None:
    """Sets the routing fields msadb_query and msadb_ask_params share
    (spaces, top_k, select, summary, score); ``keep`` holds what must live
    as long as the struct."""
    if spaces:
        if isinstance(spaces, str):
            spaces = [spaces]
        arr = (ctypes.c_char_p * len(spaces))(*[_name(s, "space") for s in spaces])
        keep.append(arr)
        st.spaces = ctypes.cast(arr, ctypes.c_void_p)
        st.n_spaces = len(spaces)
    st.top_k = top_k
    if select not in SELECT:
        raise invalid(what, "select %r: blocks or documents" % (select,))
    st.select = SELECT[select]
    if summary is not None and summary not in SUMMARIES:
        raise invalid(what, "summary %r: one of %s" % (summary, ", ".join(SUMMARIES)))
    st.summary = SUMMARIES.get(summary, 0)
    if score not in SCORES:
        raise invalid(what, "score %r: cosine, dot or dot-centred" % (score,))
    st.score = SCORES[score]


def _attend_kw(kw):
    d = dict(spaces=None, top_k=16, select="blocks", summary=None, score=None, scale=None,
             exact=False, per_token=False, hits_cap=None, where=None)
    bad = set(kw) - set(d)
    if bad:
        raise TypeError("unexpected keyword arguments %s" % sorted(bad))
    d.update(kw)
    return d


def _inplace(a, shape, what):
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous \
            or not a.flags.writeable or a.shape != shape:
        raise invalid("attend_merge", "%s must be a writable C-contiguous float32 array of shape %s"
                      % (what, shape))


def _stats(st: QueryStats_) -> QueryStats:
    return QueryStats(st.scan_ms, st.select_ms, st.read_ms, st.attend_ms, st.blocks_scanned,
                      st.blocks_read, st.tokens_attended)


def lse_merge(o1, l1, o2, l2, out: Optional[np.ndarray] = None,
              lse_out: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """msadb_lse_merge: two attention results over disjoint key sets merged
    exactly as one softmax over their union.  o1, o2 [..., d] and l1, l2
    [...] float32; ``out``/``lse_out`` may be o1/l1 (in place).  Returns
    (out, lse)."""
    o1, o2 = _f32(o1, "o1"), _f32(o2, "o2")
    l1, l2 = _f32(l1, "l1"), _f32(l2, "l2")
    if o1.shape != o2.shape or l1.shape != l2.shape or o1.shape[:-1] != l1.shape:
        raise invalid("lse_merge", "shapes o1 %s l1 %s o2 %s l2 %s: expected o [..., d], l [...]"
                      % (o1.shape, l1.shape, o2.shape, l2.shape))
    if out is None:
        out = np.empty_like(o1)
    if lse_out is None:
        lse_out = np.empty_like(l1)
    _inplace(out, o1.shape, "out")
    _inplace(lse_out, l1.shape, "lse_out")
    lib.msadb_lse_merge(l1.size, o1.shape[-1], o1.ctypes.data, l1.ctypes.data, o2.ctypes.data,
                        l2.ctypes.data, out.ctypes.data, lse_out.ctypes.data)
    return out, lse_out


def time_now() -> int:
    """msadb_time_now: the clock of expiry times (Unix seconds; the
    environment variable MSADB_TEST_NOW replaces it, for tests only)."""
    return int(lib.msadb_time_now())
