"""clib.py -- the few public functions of libmsadb the evaluation needs,
through ctypes, with a check that the struct mirrors match include/msadb.h.
The one module to swap for the msadb Python package."""
import ctypes
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def header_fields(struct):
    """Field names of a struct of include/msadb.h, in order."""
    import re
    src = open(os.path.join(ROOT, "include", "msadb.h")).read()
    body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (struct, struct), src, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = []
    for decl in body.split(";"):
        decl = decl.strip()
        if not decl:
            continue
        m = re.search(r"\(\s*\*\s*(\w+)\s*\)", decl) or re.search(r"(\w+)\s*(\[[^\]]*\])?$", decl)
        names.append(m.group(1))
    return names


def mirror_problems(lib):
    """check_mirrors() on the library at path lib."""
    return check_mirrors(ctypes.CDLL(lib))


def check_mirrors(L):
    """Problems of the ctypes mirrors (AskParams, Options) against the
    header and the library: field names and order as declared, and a layout
    check: the library's *_init() fills a sentinel-filled buffer; its defaults
    must land in the right fields and nothing may be written past the
    mirror's size."""
    problems = []
    for cls, name, init, defaults in (
            (AskParams, "msadb_ask_params", "msadb_ask_params_init",
             {"top_k": 16, "max_tokens": 64, "top_p": 1.0}),
            (Options, "msadb_options", "msadb_options_init", {"zstd_level": 1})):
        want = header_fields(name)
        have = [f[0] for f in cls._fields_]
        if want != have:
            problems.append("%s fields %s, header %s" % (cls.__name__, have, want))
            continue
        n = ctypes.sizeof(cls)
        buf = (ctypes.c_ubyte * (n + 64))(*([0xAB] * (n + 64)))
        getattr(L, init)(ctypes.byref(buf))
        if any(b != 0xAB for b in buf[n:]):
            problems.append("%s: the library's struct is larger than the mirror (%d bytes)"
                            % (name, n))
        st = cls.from_buffer(buf)
        for f, _ in cls._fields_:
            v = getattr(st, f)
            exp = defaults.get(f, 0)
            if (v or 0) != exp:
                problems.append("%s.%s reads %r after %s(), expected %r" % (name, f, v, init, exp))
    return problems


class AskParams(ctypes.Structure):
    _fields_ = [("spaces", ctypes.c_void_p), ("n_spaces", ctypes.c_size_t),
                ("top_k", ctypes.c_uint32), ("select", ctypes.c_int), ("exact", ctypes.c_int),
                ("no_memory", ctypes.c_int), ("max_tokens", ctypes.c_uint32),
                ("temperature", ctypes.c_float), ("top_p", ctypes.c_float),
                ("seed", ctypes.c_uint64), ("query_pos", ctypes.c_int32),
                ("route_each_token", ctypes.c_int), ("interleave", ctypes.c_uint32),
                ("summary", ctypes.c_uint32), ("score", ctypes.c_int), ("on_text", ctypes.c_void_p),
                ("user", ctypes.c_void_p)]


class Options(ctypes.Structure):
    _fields_ = [("read_only", ctypes.c_int), ("map_size", ctypes.c_uint64),
                ("max_readers", ctypes.c_uint), ("zstd_level", ctypes.c_int),
                ("no_sync", ctypes.c_int), ("key", ctypes.c_void_p), ("passphrase", ctypes.c_char_p)]


class Msadb:
    """The few public functions the evaluation needs, through ctypes."""

    def __init__(self, lib):
        self.L = L = ctypes.CDLL(lib)
        problems = check_mirrors(L)
        if problems:
            raise SystemExit("memmodel.clib: ctypes mirrors out of date with include/msadb.h:\n  "
                             + "\n  ".join(problems))
        L.msadb_strerror.restype = ctypes.c_char_p
        self.llm = ctypes.c_void_p()
        # how ask() routes: summary MSADB_SUMMARY_* (0: the model's declared routing),
        # top_k blocks per kv head (msadb_ask_params' default 16)
        self.summary, self.top_k = 0, 16

    def check(self, rc, what):
        if rc:
            raise RuntimeError("%s: %s" % (what, self.L.msadb_strerror(rc).decode()))

    def open_model(self, path):
        self.check(self.L.msadb_llm_open(path.encode(), ctypes.byref(self.llm)), "llm_open")

    def create_store(self, path, dtype=None):
        sig = ctypes.create_string_buffer(4096)
        self.check(self.L.msadb_llm_signature(self.llm, sig), "signature")
        opt = Options()
        self.L.msadb_options_init(ctypes.byref(opt))
        opt.no_sync = 1
        st = ctypes.c_void_p()
        self.check(self.L.msadb_open_or_create(path.encode(), sig, ctypes.byref(opt),
                                               ctypes.byref(st)), "open_or_create")
        return st

    def close_store(self, st):
        self.L.msadb_close(st)

    def ingest(self, st, title, text):
        b = text.encode()
        did = ctypes.c_uint64()
        self.check(self.L.msadb_llm_ingest(self.llm, st, b"default", title.encode(), b,
                                           ctypes.c_size_t(len(b)), ctypes.byref(did)), "ingest")

    def ask(self, st, question, no_memory=False, interleave=0, top_k=None, max_tokens=12,
            exact=False, route_each_token=False):
        p = AskParams()
        self.L.msadb_ask_params_init(ctypes.byref(p))
        p.summary = self.summary
        p.no_memory = int(no_memory)
        p.exact = int(exact)
        p.interleave = interleave
        p.route_each_token = int(route_each_token)
        p.top_k = self.top_k if top_k is None else top_k
        p.max_tokens = max_tokens
        buf = ctypes.create_string_buffer(4096)
        n = ctypes.c_size_t()
        b = question.encode()
        self.check(self.L.msadb_llm_ask(self.llm, st, b, ctypes.c_size_t(len(b)), ctypes.byref(p), buf,
                                        ctypes.c_size_t(4096), ctypes.byref(n), None, ctypes.c_size_t(0),
                                        None), "ask")
        return buf.value.decode("utf-8", "replace")

    def tokenize_len(self, text):
        n = ctypes.c_size_t()
        b = text.encode()
        self.L.msadb_llm_tokenize(self.llm, b, ctypes.c_size_t(len(b)), 0, None, None,
                                  ctypes.c_size_t(0), ctypes.byref(n))
        return n.value
