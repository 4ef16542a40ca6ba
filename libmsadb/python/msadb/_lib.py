"""The ctypes binding of libmsadb: the library located and loaded, mirrors
of the public structs of include/msadb.h, and the prototype of every public
function.  Everything else in the package is built on this module.

Loading order: the environment variable MSADB_LIBRARY (a path to
libmsadb.so), else the library directory meson configured at install
(_config.LIBDIR), else ctypes.util.find_library("msadb").

ctypes releases the GIL for the whole of every foreign call, so ingest,
attention and generation run in parallel with other Python threads.
"""
import ctypes
import ctypes.util
import os
import re

c_float_p = ctypes.POINTER(ctypes.c_float)

MAX_LAYERS = 256
NAME_MAX = 63
TITLE_MAX = 255
KEY_BYTES = 32
LLM_DOC_MAX = 4096


class Signature_(ctypes.Structure):
    _fields_ = [("n_layers", ctypes.c_uint32), ("n_kv_heads", ctypes.c_uint32),
                ("n_q_heads", ctypes.c_uint32), ("head_dim", ctypes.c_uint32),
                ("n_memory_layers", ctypes.c_uint32),
                ("memory_layers", ctypes.c_uint16 * MAX_LAYERS),
                ("block_size", ctypes.c_uint32), ("dtype", ctypes.c_uint32),
                ("summary_kinds", ctypes.c_uint32), ("position_scheme", ctypes.c_uint32)]


class Options_(ctypes.Structure):
    _fields_ = [("read_only", ctypes.c_int), ("map_size", ctypes.c_uint64),
                ("max_readers", ctypes.c_uint), ("zstd_level", ctypes.c_int),
                ("no_sync", ctypes.c_int), ("key", ctypes.c_void_p),
                ("passphrase", ctypes.c_char_p)]


class StatInfo_(ctypes.Structure):
    _fields_ = [("format_version", ctypes.c_uint32), ("n_spaces", ctypes.c_uint64),
                ("n_documents", ctypes.c_uint64), ("n_tokens", ctypes.c_uint64),
                ("n_blocks", ctypes.c_uint64), ("block_bytes", ctypes.c_uint64),
                ("summary_bytes", ctypes.c_uint64), ("map_size", ctypes.c_uint64),
                ("map_used", ctypes.c_uint64), ("encrypted", ctypes.c_int),
                ("readers", ctypes.c_uint32), ("oldest_reader_lag", ctypes.c_uint64),
                ("live_bytes", ctypes.c_uint64)]


class SpaceInfo_(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("name", ctypes.c_char * (NAME_MAX + 1)),
                ("n_documents", ctypes.c_uint64), ("n_tokens", ctypes.c_uint64),
                ("keyed", ctypes.c_int), ("locked", ctypes.c_int)]


class Doc_(ctypes.Structure):
    _fields_ = [("space", ctypes.c_char_p), ("title", ctypes.c_char_p),
                ("meta", ctypes.c_void_p), ("meta_len", ctypes.c_size_t),
                ("text", ctypes.c_char_p), ("text_len", ctypes.c_size_t),
                ("token_ids", ctypes.c_void_p), ("token_spans", ctypes.c_void_p),
                ("n_tokens", ctypes.c_size_t), ("kv_dtype", ctypes.c_int),
                ("keys", ctypes.c_void_p), ("values", ctypes.c_void_p),
                ("key", ctypes.c_void_p), ("key_len", ctypes.c_size_t),
                ("expires", ctypes.c_int64)]


class BatchStatus_(ctypes.Structure):
    _fields_ = [("held", ctypes.c_size_t), ("held_tokens", ctypes.c_uint64),
                ("held_bytes", ctypes.c_size_t), ("committed", ctypes.c_uint64),
                ("commits", ctypes.c_uint64), ("duplicates", ctypes.c_uint64),
                ("last_duplicate", ctypes.c_uint64)]


class DocInfo_(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("space_id", ctypes.c_uint32),
                ("space", ctypes.c_char * (NAME_MAX + 1)),
                ("title", ctypes.c_char * (TITLE_MAX + 1)),
                ("n_tokens", ctypes.c_uint64), ("n_blocks", ctypes.c_uint64),
                ("first_block", ctypes.c_uint64), ("created", ctypes.c_int64),
                ("text_len", ctypes.c_size_t), ("meta_len", ctypes.c_size_t),
                ("has_tokens", ctypes.c_int), ("has_spans", ctypes.c_int),
                ("expires", ctypes.c_int64)]


class QueryStats_(ctypes.Structure):
    _fields_ = [("scan_ms", ctypes.c_double), ("select_ms", ctypes.c_double),
                ("read_ms", ctypes.c_double), ("attend_ms", ctypes.c_double),
                ("blocks_scanned", ctypes.c_uint64), ("blocks_read", ctypes.c_uint64),
                ("tokens_attended", ctypes.c_uint64), ("coarse_scanned", ctypes.c_uint64)]


class Query_(ctypes.Structure):
    _fields_ = [("layer", ctypes.c_uint32), ("q", ctypes.c_void_p),
                ("n_query", ctypes.c_size_t), ("spaces", ctypes.c_void_p),
                ("n_spaces", ctypes.c_size_t), ("top_k", ctypes.c_uint32),
                ("select", ctypes.c_int), ("summary", ctypes.c_uint32),
                ("score", ctypes.c_int), ("scale", ctypes.c_float), ("exact", ctypes.c_int),
                ("per_token", ctypes.c_int), ("stats", ctypes.c_void_p),
                ("route", ctypes.c_int), ("route_candidates", ctypes.c_uint32),
                ("share", ctypes.c_int), ("route_head", ctypes.c_uint32),
                ("where", ctypes.c_void_p), ("n_where", ctypes.c_size_t)]


class Hit_(ctypes.Structure):
    _fields_ = [("kv_head", ctypes.c_uint32), ("query", ctypes.c_uint32),
                ("doc_id", ctypes.c_uint64), ("block_id", ctypes.c_uint64),
                ("token_start", ctypes.c_uint32), ("token_end", ctypes.c_uint32),
                ("score", ctypes.c_float)]


class LlmInfo_(ctypes.Structure):
    _fields_ = [("n_layers", ctypes.c_uint32), ("n_q_heads", ctypes.c_uint32),
                ("n_kv_heads", ctypes.c_uint32), ("head_dim", ctypes.c_uint32),
                ("n_embd", ctypes.c_uint32), ("n_vocab", ctypes.c_uint32),
                ("n_ctx_train", ctypes.c_uint32), ("weight_bytes", ctypes.c_size_t)]


ON_TEXT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p)
# the question's bytes are not NUL-terminated: taken by address and length
ON_FOLLOWUP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
SPACE_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(SpaceInfo_), ctypes.c_void_p)
DOC_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(DocInfo_), ctypes.c_void_p)
REPORT_CB = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)


class AskParams_(ctypes.Structure):
    _fields_ = [("spaces", ctypes.c_void_p), ("n_spaces", ctypes.c_size_t),
                ("top_k", ctypes.c_uint32), ("select", ctypes.c_int), ("exact", ctypes.c_int),
                ("no_memory", ctypes.c_int), ("max_tokens", ctypes.c_uint32),
                ("temperature", ctypes.c_float), ("top_p", ctypes.c_float),
                ("seed", ctypes.c_uint64), ("query_pos", ctypes.c_int32),
                ("route_each_token", ctypes.c_int), ("interleave", ctypes.c_uint32),
                ("summary", ctypes.c_uint32), ("score", ctypes.c_int),
                ("on_text", ON_TEXT), ("user", ctypes.c_void_p),
                ("where", ctypes.c_void_p), ("n_where", ctypes.c_size_t),
                ("followups", ctypes.c_uint32), ("on_followup", ON_FOLLOWUP)]


# Every public struct of include/msadb.h and its mirror (checked by
# check_mirrors() and by the tests against the compiler's layout).
MIRRORS = {"msadb_signature": Signature_, "msadb_options": Options_,
           "msadb_stat_info": StatInfo_, "msadb_space_info": SpaceInfo_, "msadb_doc": Doc_,
           "msadb_doc_info": DocInfo_, "msadb_query_stats": QueryStats_, "msadb_query": Query_,
           "msadb_hit": Hit_, "msadb_llm_info": LlmInfo_, "msadb_ask_params": AskParams_,
           "msadb_batch_status": BatchStatus_}

_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_I = ctypes.c_int
_U32 = ctypes.c_uint32
_U64 = ctypes.c_uint64
_SZ = ctypes.c_size_t
_S = ctypes.c_char_p
_U64P = ctypes.POINTER(ctypes.c_uint64)
_SZP = ctypes.POINTER(ctypes.c_size_t)

# name: (restype, argtypes)
PROTOTYPES = {
    "msadb_version": (_S, []),
    "msadb_format_version": (_I, []),
    "msadb_strerror": (_S, [_I]),
    "msadb_dtype_name": (_S, [_I]),
    "msadb_dtype_parse": (_I, [_S]),
    "msadb_signature_init": (_I, [_P, _U32, _U32, _U32, _U32]),
    "msadb_signature_validate": (_I, [_P]),
    "msadb_signature_planes": (_U32, [_P]),
    "msadb_signature_memory_index": (_I, [_P, _U32]),
    "msadb_options_init": (None, [_P]),
    "msadb_key_file_read": (_I, [_S, _P]),
    "msadb_create": (_I, [_S, _P, _P, _PP]),
    "msadb_open": (_I, [_S, _P, _P, _PP]),
    "msadb_open_or_create": (_I, [_S, _P, _P, _PP]),
    "msadb_close": (None, [_P]),
    "msadb_store_signature": (ctypes.POINTER(Signature_), [_P]),
    "msadb_store_encrypted": (_I, [_P]),
    "msadb_store_scope": (_I, [_P, _S]),
    "msadb_space_create_keyed": (_I, [_P, _S, _P, _S, ctypes.POINTER(ctypes.c_uint32)]),
    "msadb_space_unlock": (_I, [_P, _S, _P, _S]),
    "msadb_stat": (_I, [_P, _P]),
    "msadb_space_create": (_I, [_P, _S, ctypes.POINTER(_U32)]),
    "msadb_space_drop": (_I, [_P, _S]),
    "msadb_space_list": (_I, [_P, SPACE_CB, _P]),
    "msadb_space_get": (_I, [_P, _S, _P]),
    "msadb_batch_begin": (_I, [_P, _PP]),
    "msadb_batch_add": (_I, [_P, _P]),
    "msadb_batch_count": (_SZ, [_P]),
    "msadb_batch_commit": (_I, [_P, _U64P]),
    "msadb_batch_abort": (None, [_P]),
    "msadb_doc_append": (_I, [_P, _P, _U64P]),
    "msadb_doc_delete": (_I, [_P, _U64P, _SZ]),
    "msadb_batch_delete": (_I, [_P, _U64P, _SZ]),
    "msadb_expire": (_I, [_P, _U64P]),
    "msadb_meta_term_check": (_I, [_S]),
    "msadb_meta_match": (_I, [_P, _SZ, _P, _SZ]),
    "msadb_time_now": (ctypes.c_int64, []),
    "msadb_doc_list_where": (_I, [_P, _S, _P, _SZ, DOC_CB, _P]),
    "msadb_compact": (_I, [_P]),
    "msadb_snapshot_begin": (_I, [_P, _PP]),
    "msadb_snapshot_end": (None, [_P]),
    "msadb_snapshot_renew": (_I, [_P]),
    "msadb_doc_get": (_I, [_P, _U64, _P]),
    "msadb_doc_list": (_I, [_P, _S, DOC_CB, _P]),
    "msadb_doc_text": (_I, [_P, _U64, _P, _SZ, _SZP]),
    "msadb_doc_meta": (_I, [_P, _U64, _P, _SZ, _SZP]),
    "msadb_doc_tokens": (_I, [_P, _U64, _P, _P, _SZ]),
    "msadb_doc_kv": (_I, [_P, _U64, _U32, _P, _P]),
    "msadb_verify": (_I, [_P, REPORT_CB, _P]),
    "msadb_query_init": (None, [_P]),
    "msadb_attend": (_I, [_P, _P, _P, _P, _P, _SZ, _SZP]),
    "msadb_attend_blocks": (_I, [_P, _P, _P, _SZ, _P, _P]),
    "msadb_retrieve": (_I, [_P, _P, _P, _SZ, _SZP]),
    "msadb_lse_merge": (None, [_SZ, _SZ, _P, _P, _P, _P, _P, _P]),
    "msadb_capture_begin": (_I, [_P, _PP]),
    "msadb_capture_kv": (_I, [_P, _U32, _U64, _U64, _P, _P]),
    "msadb_capture_commit": (_I, [_P, _P, _U64P]),
    "msadb_capture_add": (_I, [_P, _P, _P]),
    "msadb_capture_abort": (None, [_P]),
    "msadb_attend_merge": (_I, [_P, _P, _P, _P, _P, _SZ, _SZP]),
    "msadb_llm_open": (_I, [_S, _PP]),
    "msadb_llm_close": (None, [_P]),
    "msadb_llm_get_info": (_I, [_P, _P]),
    "msadb_llm_products": (ctypes.c_char_p, [_P]),
    "msadb_llm_abstain_answer": (_I, [_P, _P]),
    "msadb_llm_is_abstain": (_I, [_P, ctypes.c_char_p, ctypes.c_size_t]),
    "msadb_llm_set_segment": (_I, [_P, _I]),
    "msadb_llm_get_segment": (_I, [_P]),
    "msadb_llm_signature": (_I, [_P, _P]),
    "msadb_llm_tokenize": (_I, [_P, _P, _SZ, _I, _P, _P, _SZ, _SZP]),
    "msadb_llm_detokenize": (_I, [_P, _P, _SZ, _P, _SZ, _SZP]),
    "msadb_llm_ingest": (_I, [_P, _P, _S, _S, _P, _SZ, _U64P]),
    "msadb_llm_ingest_batch": (_I, [_P, _P, _P, _S, _S, _P, _SZ, _SZP]),
    "msadb_llm_ingest_doc": (_I, [_P, _P, _P, _P, _SZP]),
    "msadb_ask_params_init": (None, [_P]),
    "msadb_llm_ask": (_I, [_P, _P, _P, _SZ, _P, _P, _SZ, _SZP, _P, _SZ, _SZP]),
}


def library_path():
    """The path of the libmsadb.so this package loads (see the module doc)."""
    env = os.environ.get("MSADB_LIBRARY")
    if env:
        return env
    try:
        from . import _config
        cand = os.path.join(_config.LIBDIR, "libmsadb.so")
        if os.path.exists(cand):
            return cand
    except ImportError:  # running from the source tree: no configured paths
        pass
    found = ctypes.util.find_library("msadb")
    if found:
        return found
    raise OSError("msadb: libmsadb.so not found; set MSADB_LIBRARY to its path "
                  "(e.g. build/libmsadb/libmsadb.so) or install the library (ninja install)")


def _load():
    path = library_path()
    lib = ctypes.CDLL(path)
    for name, (res, args) in PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib, path


lib, LIBRARY = _load()


def header_fields(header_text, struct):
    """Field names of `typedef struct NAME {...} NAME;` in a header, in order."""
    m = re.search(r"typedef struct %s \{(.*?)\} %s;" % (struct, struct), header_text, re.S)
    if not m:
        return None
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    names = []
    for decl in body.split(";"):
        decl = decl.strip()
        if not decl:
            continue
        fp = re.search(r"\(\s*\*\s*(\w+)\s*\)", decl)
        if fp:
            names.append(fp.group(1))
            continue
        # "uint32_t a, b, c" declares several fields
        head = re.match(r"((?:const\s+)?[\w\s\*]+?)\s*(\w+\s*(?:\[[^\]]*\])?\s*(?:,\s*\**\s*\w+\s*(?:\[[^\]]*\])?\s*)*)$", decl)
        parts = head.group(2).split(",") if head else [decl]
        for p in parts:
            names.append(re.match(r"\s*\**\s*(\w+)", p).group(1))
    return names


def _init_defaults():
    """(mirror, init function, expected non-zero fields) for the structs the
    library initializes."""
    def sig_init(p):
        return lib.msadb_signature_init(p, 4, 2, 4, 16)
    return [
        (Options_, lib.msadb_options_init, {"zstd_level": 1}),
        (Query_, lib.msadb_query_init, {"top_k": 16}),
        (AskParams_, lib.msadb_ask_params_init, {"top_k": 16, "max_tokens": 64, "top_p": 1.0,
                                                       "followups": 2}),
        (Signature_, sig_init, {"n_layers": 4, "n_kv_heads": 2, "n_q_heads": 4, "head_dim": 16,
                                "n_memory_layers": 2, "block_size": 64, "dtype": 1,
                                "summary_kinds": None, "memory_layers": [2, 3]}),
    ]


def check_mirrors(header_text=None):
    """Problems of the ctypes mirrors against the loaded library (and the
    header's field names when its text is given): each *_init() function
    fills a sentinel-filled buffer, and its defaults must land in the right
    fields with nothing written past the mirror's size.  Returns a list of
    problem strings (empty when the mirrors agree)."""
    problems = []
    if header_text is not None:
        for name, cls in MIRRORS.items():
            want = header_fields(header_text, name)
            have = [f[0] for f in cls._fields_]
            if want != have:
                problems.append("%s: mirror fields %s, header %s" % (name, have, want))
    for cls, init, defaults in _init_defaults():
        n = ctypes.sizeof(cls)
        buf = (ctypes.c_ubyte * (n + 64))(*([0xAB] * (n + 64)))
        init(ctypes.byref(buf))
        if any(b != 0xAB for b in buf[n:]):
            problems.append("%s: the library writes past the mirror's %d bytes" % (cls.__name__, n))
        st = cls.from_buffer(buf)
        for f, t in cls._fields_:
            v = getattr(st, f)
            exp = defaults.get(f, 0)
            if f == "memory_layers":
                v = list(v)[:len(exp)]
            elif f == "on_text":
                v = ctypes.cast(v, ctypes.c_void_p).value
            if exp is None:
                if not v:
                    problems.append("%s.%s is 0 after init" % (cls.__name__, f))
            elif (v or 0) != exp:
                problems.append("%s.%s reads %r after init, expected %r" % (cls.__name__, f, v, exp))
    return problems
