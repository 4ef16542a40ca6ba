"""clib.py -- the C library for the evaluations (memmodel.evaluate cpu,
memmodel.heldout cpu), through the project's Python package msadb
(libmsadb/python): a model, stores created for it, ingest and ask with the
evaluations' defaults.  The package comes from the source tree unless it is
installed; the library is the one at the path given (MSADB_LIBRARY)."""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_msadb(lib):
    """The msadb package bound to the library at path lib."""
    os.environ["MSADB_LIBRARY"] = os.path.abspath(lib)
    src = os.path.join(ROOT, "libmsadb", "python")
    if src not in sys.path:
        sys.path.insert(0, src)
    import msadb
    if os.path.realpath(msadb.LIBRARY) != os.path.realpath(lib):
        raise SystemExit("memmodel.clib: msadb was loaded with %s, not %s" % (msadb.LIBRARY, lib))
    return msadb


class Msadb:
    """One model through msadb.Model.  summary: how ask() routes (None: the
    model's declared routing, else a name of msadb's summaries: mean, minmax,
    reps); score: how a query meets the mean summary (None: the model's
    declared score, else cosine, dot or dot-centred); top_k: blocks per kv
    head (msadb_ask_params' default 16)."""

    def __init__(self, lib):
        self.msadb = load_msadb(lib)
        self.model = None
        self.summary, self.score, self.top_k = None, None, 16

    def open_model(self, path, segment=None):
        """segment: how ingest reads a document ("document", "paragraph", "joined";
        None: the model's own, msadb.Model.segment)."""
        self.model = self.msadb.Model(path)
        if segment:
            self.model.segment = segment

    def create_store(self, path):
        return self.model.open_store(path, no_sync=True)

    def close_store(self, st):
        st.close()

    def ingest(self, st, title, text):
        self.model.ingest(st, [(title, text)], space="default")

    def doc_ids(self, st):
        """{title given to ingest(): the store ids of its document}: a text
        longer than the model's window (MSADB_LLM_DOC_MAX tokens) is stored
        in parts titled "TITLE [k/n]", each of them the document."""
        ids = {}
        with st.snapshot() as snap:
            for d in snap.documents():
                ids.setdefault(re.sub(r" \[\d+/\d+\]$", "", d.title), []).append(d.id)
        return ids

    def ask(self, st, question, **kw):
        """The answer's text (greedy)."""
        return self.answer(st, question, **kw).text

    def answer(self, st, question, no_memory=False, interleave=0, top_k=None, max_tokens=12,
               exact=False, route_each_token=False, followups=2):
        """The whole msadb.Answer (greedy): text, cited spans, routed hits,
        follow-up questions asked (followups: as msadb query's default, which
        only a model declaring msadb.followup uses)."""
        return self.model.ask(st, question, no_memory=no_memory, interleave=interleave,
                              top_k=self.top_k if top_k is None else top_k,
                              max_tokens=max_tokens, exact=exact,
                              route_each_token=route_each_token, summary=self.summary, score=self.score,
                              followups=followups)

    def tokenize_len(self, text):
        return len(self.model.tokenize(text)[0])
