"""msadb: an embedded persistent memory database that gives a transformer
long-term memory inside its attention -- the Python face of libmsadb.

    import msadb
    sig = msadb.Signature(n_layers=4, n_kv_heads=2, n_q_heads=4, head_dim=16)
    with msadb.Store.create("memory.msadb", sig) as st:
        ...

The binding is ctypes over the public C API (include/msadb.h); see
docs/python.md.  Submodules: :mod:`msadb.store` (stores, documents,
snapshots, attention), :mod:`msadb.runtime` (GGUF models: ingest text, ask),
:mod:`msadb.memory` (mem0/Chroma-shaped agent memory),
:mod:`msadb.transformers` (Hugging Face models; imported on demand).
"""
from ._lib import LIBRARY, LLM_DOC_MAX, check_mirrors, lib
from .errors import (AlreadyExists, AuthenticationFailed, Corrupt, Error, InvalidArgument,
                     IOFailure, KeyRequired, LimitExceeded, LMDBError, NonFinite, NotAStore,
                     NotFound, NotSupported, OutOfMemory, OutOfRange, ReadOnly, SignatureMismatch,
                     UnsupportedDtype, TimedOut, PeerFailed, ModelMismatch, Busy,
                     OutOfScope,
                     VersionMismatch, WrongState, strerror)
from .memory import Memory, default_model_path
from .runtime import Answer, Model, ModelInfo, Span, merge_spans
from .store import (HIT_DTYPE, Attention, Batch, Capture, DocInfo, QueryStats, Signature,
                    Snapshot, SpaceInfo, Stat, Store, lse_merge, meta_text, parse_meta, read_key_file,
                    time_now)

__version__ = lib.msadb_version().decode()
FORMAT_VERSION = lib.msadb_format_version()

__all__ = ["Busy", "OutOfScope", "ModelMismatch", "PeerFailed", "TimedOut", "AlreadyExists", "Answer", "Attention", "AuthenticationFailed", "Batch", "Capture",
           "Corrupt", "DocInfo", "Error", "FORMAT_VERSION", "HIT_DTYPE", "IOFailure",
           "InvalidArgument", "KeyRequired", "LIBRARY", "LLM_DOC_MAX", "LMDBError", "LimitExceeded",
           "Memory", "Model", "ModelInfo", "NonFinite", "NotAStore", "NotFound", "NotSupported", "OutOfMemory",
           "OutOfRange",
           "QueryStats", "ReadOnly", "Signature", "SignatureMismatch", "Snapshot", "Span",
           "SpaceInfo", "Stat", "Store", "UnsupportedDtype", "VersionMismatch", "WrongState",
           "check_mirrors", "default_model_path", "lse_merge", "merge_spans", "meta_text",
           "parse_meta", "read_key_file", "strerror", "time_now"]
