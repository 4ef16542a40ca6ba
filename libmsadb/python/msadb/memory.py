"""An agent memory in the shape of mem0 and Chroma (add, search, get,
delete) over a store and a GGUF memory model, by default the bundled
msadb-mem model.

Texts are ingested through the model (their keys and values stored, with
the text), ``search`` routes the query's own attention queries through the
stored summaries (the documents the model would attend to), and ``ask``
answers from memory.  ``user_id`` names a space of the store: each user's
memories are apart.  Threading: as :class:`msadb.Model` (one call at a time
per Memory).
"""
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Union

from . import errors
from .errors import invalid
from .runtime import Answer, Model, cited_spans


def default_model_path() -> str:
    """The bundled memory model: $MSADB_MODEL, else the installed copy
    (<datadir>/msadb/msadb-mem.gguf), else models/msadb-mem.gguf of the
    source tree this package sits in."""
    env = os.environ.get("MSADB_MODEL")
    if env:
        return env
    cands = []
    try:
        from . import _config
        cands.append(os.path.join(_config.DATADIR, "msadb-mem.gguf"))
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    cands.append(os.path.join(here, "..", "..", "..", "models", "msadb-mem.gguf"))
    for c in cands:
        if os.path.exists(c):
            return os.path.normpath(c)
    raise FileNotFoundError("msadb: the bundled model msadb-mem.gguf was not found (looked in %s); "
                            "set MSADB_MODEL or pass model=" % ", ".join(cands))


def _metadata(raw: bytes) -> Dict[str, Any]:
    """A document's metadata: the JSON object Memory.add stored, or the
    bytes another writer stored, as {"bytes": raw}."""
    if not raw:
        return {}
    try:
        v = json.loads(raw)
    except ValueError:
        return {"bytes": raw}
    return v if isinstance(v, dict) else {"value": v}


class Memory:
    """``Memory(path)`` opens (or creates) the store at ``path`` for the
    model (default: the bundled msadb-mem).  ``key``/``passphrase`` encrypt
    a new store and open an encrypted one.  Use as a context manager or
    call :meth:`close`."""

    def __init__(self, path, model: Union[str, Model, None] = None, *, key: Optional[bytes] = None,
                 passphrase: Optional[str] = None, no_sync: bool = False):
        self._own_model = not isinstance(model, Model)
        self.model = model if isinstance(model, Model) else Model(model or default_model_path())
        try:
            self.store = self.model.open_store(path, key=key, passphrase=passphrase, no_sync=no_sync)
        except BaseException:
            if self._own_model:
                self.model.close()
            raise

    def close(self) -> None:
        self.store.close()
        if self._own_model:
            self.model.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _space(user_id: Optional[str]) -> str:
        return "default" if user_id is None else str(user_id)

    def add(self, messages: Union[str, Sequence[str]], *, user_id: Optional[str] = None,
            metadata: Optional[Dict[str, Any]] = None, title: Optional[str] = None) -> List[Dict[str, Any]]:
        """Stores one text or several (one transaction for all); returns
        ``[{"id", "memory"}]``, one entry per stored document (a text longer
        than 4096 tokens is stored as several).  ``metadata`` (JSON-able)
        is kept with each."""
        texts = [messages] if isinstance(messages, str) else list(messages)
        if not texts:
            raise invalid("add", "nothing to add")
        space = self._space(user_id)
        try:
            self.store.space(space)
        except errors.NotFound:
            self.store.create_space(space)
        meta = json.dumps(metadata or {}, sort_keys=True).encode()
        ids = self.model.ingest(self.store, [(title or "memory", t) for t in texts], space=space,
                                meta=meta)
        with self.store.snapshot() as s:
            return [{"id": i, "memory": s.text(i)} for i in ids]

    def _record(self, snap, info) -> Dict[str, Any]:
        return {"id": info.id, "memory": snap.text(info.id), "user_id": info.space,
                "title": info.title, "created_at": info.created, "tokens": info.n_tokens,
                "metadata": _metadata(snap.meta(info.id))}

    def get(self, memory_id: int) -> Dict[str, Any]:
        """One memory by id: ``{"id", "memory", "user_id", "title",
        "created_at", "tokens", "metadata"}`` (NotFound)."""
        with self.store.snapshot() as s:
            return self._record(s, s.document(memory_id))

    def get_all(self, *, user_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every memory of a user (all users when None), oldest first."""
        with self.store.snapshot() as s:
            try:
                docs = s.documents(None if user_id is None else self._space(user_id))
            except errors.NotFound:
                return []
            return [self._record(s, d) for d in docs]

    def search(self, query: str, *, user_id: Optional[str] = None, limit: int = 5) -> List[Dict[str, Any]]:
        """The memories the model's attention routes ``query`` to, best
        first: ``{"id", "memory" (the whole text), "cited" (the passage the
        query drew on), "score" (routing score), "user_id", "title",
        "metadata"}``, at most ``limit`` documents."""
        if limit < 1:
            raise invalid("search", "limit must be >= 1")
        space = self._space(user_id)
        try:
            self.store.space(space)
        except errors.NotFound:
            return []
        ans = self.model.ask(self.store, query, spaces=[space], top_k=limit, select="documents",
                             max_tokens=1)
        best = {}
        with self.store.snapshot() as s:
            for sp in cited_spans(s, ans.hits):
                if sp.doc not in best:
                    best[sp.doc] = sp
            out = []
            for doc, sp in sorted(best.items(), key=lambda kv: -kv[1].score)[:limit]:
                r = self._record(s, s.document(doc))
                r["score"] = sp.score
                r["cited"] = sp.text
                out.append(r)
        return out

    def delete(self, memory_id: Union[int, Sequence[int]]) -> None:
        """Deletes memories by id (NotFound: none deleted)."""
        self.store.delete(memory_id)

    def delete_all(self, *, user_id: str) -> None:
        """Deletes every memory of a user (drops the user's space)."""
        try:
            self.store.drop_space(self._space(user_id))
        except errors.NotFound:
            pass

    def ask(self, question: str, *, user_id: Optional[str] = None, **kw) -> Answer:
        """Answers from the user's memories (all users when None); keyword
        arguments as :meth:`msadb.Model.ask`."""
        spaces = None if user_id is None else [self._space(user_id)]
        return self.model.ask(self.store, question, spaces=spaces, **kw)
