"""The built-in runtime: GGUF llama models that ingest text into a store
and answer questions from it (what ``msadb ingest --model`` and ``msadb
query --model`` do).

Threading: a :class:`Model` runs one call at a time (it holds a lock; its
KV cache is per model): open one Model per thread to run them in parallel.
The GIL is released during ingest and generation; ``on_text`` callbacks
take it back for each piece of text.
"""
import ctypes
import dataclasses
import os
import queue
import threading
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import errors
from ._lib import ON_FOLLOWUP, ON_TEXT, AskParams_, LlmInfo_, Signature_, lib
from .errors import check, invalid
from .store import HIT_DTYPE, Signature, Snapshot, Store, _bytes, _doc, _Handle, _routing, _where


@dataclasses.dataclass
class ModelInfo:
    """msadb_llm_info."""
    n_layers: int
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    weight_bytes: int


@dataclasses.dataclass
class Span:
    """A cited memory span: adjacent selected blocks of one document merged,
    with the best score, its title and the text its tokens cover."""
    doc: int
    token_start: int
    token_end: int
    score: float
    title: str = ""
    text: Optional[str] = None


# msadb.h's MSADB_SEGMENT_* by name (Model.segment)
SEGMENTS = {1: "document", 2: "paragraph", 3: "joined"}


@dataclasses.dataclass
class Answer:
    """What :meth:`Model.ask` returns: the answer ``text``, the cited
    ``spans`` (best first), the raw ``hits`` (HIT_DTYPE array: the blocks
    the question drew on in the last memory layer, per kv head) and
    ``abstained``: the text is the model's declared abstain answer
    (:attr:`Model.abstain_answer`, msadb_llm_is_abstain); ``followups``:
    the follow-up questions the model asked memory on the way, in order
    (msadb_ask_params.followups; the spans and hits are the last
    question's)."""
    text: str
    spans: List[Span]
    hits: np.ndarray
    abstained: bool = False
    followups: Tuple[str, ...] = ()

    def __str__(self):
        return self.text


def merge_spans(hits: np.ndarray) -> List[Tuple[int, int, int, float]]:
    """Distinct blocks of the hits (every kv head), adjacent or overlapping
    ones of a document merged into one (doc, start, end, best score), best
    first (ties by document and start)."""
    rows = sorted((int(h["doc_id"]), int(h["token_start"]), int(h["token_end"]), float(h["score"]))
                  for h in hits)
    out = []
    for doc, a, b, s in rows:
        if out and out[-1][0] == doc and a <= out[-1][2]:
            d0, a0, b0, s0 = out[-1]
            out[-1] = (d0, a0, max(b0, b), max(s0, s))
        else:
            out.append((doc, a, b, s))
    out.sort(key=lambda r: (-r[3], r[0], r[1]))
    return out


def cited_spans(snap: Snapshot, hits: np.ndarray) -> List[Span]:
    """The hits as cited :class:`Span` s, with titles and texts."""
    spans = []
    for doc, a, b, s in merge_spans(hits):
        try:
            title = snap.document(doc).title
            text = snap.cite(doc, a, b)
        except errors.NotFound:
            title, text = "", None
        spans.append(Span(doc, a, b, s, title, text))
    return spans


class Model(_Handle):
    """A GGUF model loaded by the built-in runtime (msadb_llm_open):
    llama architecture, F32/F16/BF16/Q8_0 weights, its tokenizer from the
    file.  Close with :meth:`close` or a ``with`` block."""

    _free = staticmethod(lib.msadb_llm_close)

    def __init__(self, path):
        self.path = os.fspath(path)
        h = ctypes.c_void_p()
        check(lib.msadb_llm_open(os.fsencode(self.path), ctypes.byref(h)), "model %s" % self.path)
        super().__init__(h, "model")

    @property
    def info(self) -> ModelInfo:
        i = LlmInfo_()
        check(lib.msadb_llm_get_info(self._get(), ctypes.byref(i)), "model info")
        return ModelInfo(i.n_layers, i.n_q_heads, i.n_kv_heads, i.head_dim, i.n_embd, i.n_vocab,
                         i.n_ctx_train, i.weight_bytes)

    @property
    def products(self) -> str:
        """msadb_llm_products: how the model's matrix products run here,
        "bf16-amx", "bf16-avx512" or "f32"."""
        return lib.msadb_llm_products(self._get()).decode("ascii")

    @property
    def abstain_answer(self) -> Optional[str]:
        """msadb_llm_abstain_answer: the answer the model was trained to give
        when memory does not hold what is asked (GGUF msadb.abstain), or
        None when it declares none."""
        t = ctypes.c_char_p()
        rc = lib.msadb_llm_abstain_answer(self._get(), ctypes.byref(t))
        if rc == errors.ENOTFOUND:
            return None
        check(rc, "model abstain answer")
        return t.value.decode("utf-8", "replace")

    @property
    def segment(self) -> str:
        """How :meth:`ingest` runs a document through the model:
        ``"document"`` (one pass), ``"paragraph"`` (each paragraph, up to a
        blank line, on its own) or ``"joined"`` (one pass, each paragraph
        tokenized on its own): msadb_llm_set_segment.  The model's GGUF
        key msadb.segment gives the default; setting it changes this
        handle only.  ValueError for another name."""
        rc = lib.msadb_llm_get_segment(self._get())
        if rc < 0:
            check(rc, "model segment")
        return SEGMENTS[rc]

    @segment.setter
    def segment(self, name: str) -> None:
        modes = {v: k for k, v in SEGMENTS.items()}
        if name not in modes:
            raise ValueError("segment: %r is not one of %s" % (name, ", ".join(modes)))
        check(lib.msadb_llm_set_segment(self._get(), modes[name]), "model segment")

    def signature(self) -> Signature:
        """msadb_llm_signature: the default store signature for this model."""
        s = Signature_()
        check(lib.msadb_llm_signature(self._get(), ctypes.byref(s)), "model signature")
        return Signature.from_c(s)

    def open_store(self, path, **options) -> Store:
        """Opens the store at path (its signature must be this model's) or
        creates it for the model; options as :meth:`Store.create`."""
        return Store.open_or_create(path, self.signature(), **options)

    def tokenize(self, text: Union[str, bytes], add_bos: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """msadb_llm_tokenize: (ids int32 [n], spans int64 [n, 2] byte
        offsets into the UTF-8 text)."""
        b = _bytes(text, "text")
        n = ctypes.c_size_t()
        with self._lock:
            check(lib.msadb_llm_tokenize(self._get(), b, len(b), int(add_bos), None, None, 0,
                                         ctypes.byref(n)), "tokenize")
            ids = np.empty(n.value, np.int32)
            spans = np.empty((n.value, 2), np.int64)
            check(lib.msadb_llm_tokenize(self._get(), b, len(b), int(add_bos), ids.ctypes.data,
                                         spans.ctypes.data, n.value, ctypes.byref(n)), "tokenize")
        return ids, spans

    def detokenize(self, ids) -> str:
        """msadb_llm_detokenize (invalid UTF-8 replaced)."""
        a = np.ascontiguousarray(ids, dtype=np.int32)
        n = ctypes.c_size_t()
        with self._lock:
            lib.msadb_llm_detokenize(self._get(), a.ctypes.data, a.size, None, 0, ctypes.byref(n))
            buf = ctypes.create_string_buffer(max(n.value, 1))
            check(lib.msadb_llm_detokenize(self._get(), a.ctypes.data, a.size, buf, n.value,
                                           ctypes.byref(n)), "detokenize")
        return buf.raw[:n.value].decode("utf-8", "replace")

    def ingest(self, store: Store, texts: Union[str, Sequence[Union[str, Tuple[str, str]]]], *,
               space: Optional[str] = None, title: Optional[str] = None,
               meta: Union[bytes, str, dict, None] = None, expires: int = 0) -> List[int]:
        """Ingests text(s) through the model in one batch, all or nothing
        (msadb_llm_ingest_doc per text, then one commit).  ``texts`` is a
        string, or a list of strings or (title, text) pairs; ``meta``
        (opaque bytes, or a dict stored as metadata text) and ``expires``
        (Unix seconds; 0 = never) are kept with every document.  A text longer than
        LLM_DOC_MAX tokens becomes several documents.  Returns the new
        documents' ids in order."""
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        docs = []
        for t in texts:
            tt, body = (t if isinstance(t, tuple) else (title, t))
            if not _bytes(body, "text"):
                raise invalid("ingest", "empty text (nothing to ingest)")
            docs.append(_doc(store, None, None, space=space, title=tt, text=body, meta=meta,
                             expires=expires))
        with self._lock, store.batch() as batch:
            for d, keep in docs:
                with batch._lock:
                    check(lib.msadb_llm_ingest_doc(self._get(), store._get(), batch._get(),
                                                   ctypes.byref(d), None), "ingest")
        return batch.ids

    def _params(self, spaces, top_k, select, exact, no_memory, max_tokens, temperature, top_p,
                seed, query_pos, route_each_token, interleave, summary, score, where=None,
                followups=2):
        p = AskParams_()
        lib.msadb_ask_params_init(ctypes.byref(p))
        keep = []
        _routing(p, "ask", spaces, top_k, select, summary, score, keep)
        _where(p, where, keep)
        p.exact = int(bool(exact))
        p.no_memory = int(bool(no_memory))
        p.max_tokens = max_tokens
        p.temperature = temperature
        p.top_p = top_p
        p.seed = seed
        p.query_pos = query_pos
        p.route_each_token = int(bool(route_each_token))
        p.interleave = interleave
        p.followups = followups
        return p, keep

    def ask(self, store: Optional[Store], question: str, *,
            on_text: Optional[Callable[[str], Optional[bool]]] = None,
            spaces: Union[str, Sequence[str], None] = None, top_k: int = 16,
            select: str = "blocks", exact: bool = False, no_memory: bool = False,
            max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
            query_pos: int = 0, route_each_token: bool = False, interleave: int = 0,
            summary: Optional[str] = None, score: Optional[str] = None, where=None,
            followups: int = 2) -> Answer:
        """msadb_llm_ask: answers ``question`` from memory, as ``msadb query
        --model`` does: greedy by default, memory in every memory layer,
        routed once on the question.  ``on_text(piece)`` receives the answer
        as it is generated (whole UTF-8 characters); returning True stops
        generation.  ``store`` None (or ``no_memory``) answers without
        memory.  Returns an :class:`Answer` with the cited spans."""
        q = _bytes(question, "question")
        p, keep = self._params(spaces, top_k, select, exact, no_memory, max_tokens, temperature,
                               top_p, seed, query_pos, route_each_token, interleave, summary, score,
                               where, followups)
        pieces = []
        failure = []

        def cb(ptr, n, user):
            piece = ctypes.string_at(ptr, n).decode("utf-8", "replace")
            pieces.append(piece)
            if on_text is None:
                return 0
            try:
                return 1 if on_text(piece) else 0
            except BaseException as e:  # stop generating and re-raise after the call
                failure.append(e)
                return 1
        p.on_text = ON_TEXT(cb)
        asked = []

        def fcb(ptr, n, user):
            asked.append(ctypes.string_at(ptr, n).decode("utf-8", "replace"))
            return 0
        p.on_followup = ON_FOLLOWUP(fcb)
        cap = 0
        memory = store is not None and not no_memory
        if memory:
            sig = store.signature
            nb = store.stat().n_blocks
            per = nb if (exact or select == "documents") else min(top_k, nb)
            cap = max(1, per * sig.n_kv_heads)
        hits = np.zeros(max(cap, 1), HIT_DTYPE)
        nh = ctypes.c_size_t()
        ln = ctypes.c_size_t()
        with self._lock:
            rc = lib.msadb_llm_ask(self._get(), store._get() if store is not None else None, q, len(q),
                                   ctypes.byref(p), None, 0, ctypes.byref(ln),
                                   hits.ctypes.data if memory else None, cap, ctypes.byref(nh))
        if failure:
            raise failure[0]
        check(rc, "ask")
        hits = hits[:min(nh.value, cap)] if memory else hits[:0]
        spans = []
        if memory and hits.size:
            with store.snapshot() as snap:
                spans = cited_spans(snap, hits)
        text = "".join(pieces)
        raw = text.encode("utf-8", "surrogatepass")
        ab = lib.msadb_llm_is_abstain(self._get(), raw, len(raw))
        check(ab if ab < 0 else 0, "abstain answer")
        return Answer(text, spans, hits, ab == 1, tuple(asked))

    def ask_stream(self, store: Optional[Store], question: str, **kw) -> Iterator[Union[str, Answer]]:
        """Like :meth:`ask`, as a generator: yields each piece of text as it
        is generated (the model runs in a thread, the GIL released), then the
        final :class:`Answer`.  Closing the generator early stops
        generation."""
        pieces: "queue.Queue" = queue.Queue()
        stop = threading.Event()
        result = []

        def on_text(piece):
            pieces.put(piece)
            return stop.is_set()

        def run():
            try:
                result.append(self.ask(store, question, on_text=on_text, **kw))
            except BaseException as e:
                result.append(e)
            pieces.put(None)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            while True:
                piece = pieces.get()
                if piece is None:
                    break
                yield piece
        finally:
            stop.set()
            t.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        yield result[0]
