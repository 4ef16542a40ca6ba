#!/usr/bin/python3
"""End-to-end test of the msadb program's --model forms (built-in runtime):
usage /usr/bin/python3 cli_model_e2e.py PATH_TO_msadb

With small random llama models written by tools/memmodel/make_test_model.py (the
answers are gibberish, but every code path runs): init --model (the store's
signature is the model's, options override), ingest of text files (several
files, --split into paragraphs under Markdown headings, spaces, titles, text
longer than one document), ls, query (streamed answer, cited spans from the
right documents and spaces, --exact, --top-k, --select documents,
--no-memory, --interleave, sampling determinism, the question on stdin), and
the errors: a missing or invalid model file, a model whose signature differs
from the store's, empty files and files without text (nothing written, all
or nothing across files), unknown spaces, and usage errors (exit 2).

Exits 77 (skipped) when the test models cannot be written (no numpy).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

MSADB = os.path.abspath(sys.argv[1])
HERE = os.path.dirname(os.path.abspath(__file__))
TMP = tempfile.mkdtemp(prefix="msadb-cli-model-")


def p(*parts):
    return os.path.join(TMP, *parts)


def run(*args, expect=0, msg=None, stdin=None):
    r = subprocess.run([MSADB, *args], capture_output=True, text=True, errors="replace", timeout=300,
                       input=stdin)
    where = "msadb " + " ".join(os.path.basename(a) if a.startswith(TMP) else a for a in args)
    if r.returncode != expect:
        raise AssertionError(f"{where}: exit {r.returncode}, expected {expect}\n"
                             f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}")
    if msg is not None and msg not in r.stderr:
        raise AssertionError(f"{where}: stderr lacks {msg!r}:\n{r.stderr}")
    # exit 3 (abstained) is an answer, not an error: its cases check stderr themselves
    if expect not in (0, 3) and not r.stderr.startswith("msadb: "):
        raise AssertionError(f"{where}: error message not prefixed 'msadb: ': {r.stderr!r}")
    if expect == 0 and "--json" not in args and r.stderr:
        raise AssertionError(f"{where}: unexpected stderr (progress must be TTY-only): {r.stderr!r}")
    return r


def jrun(*args, **kw):
    return json.loads(run(*args, "--json", **kw).stdout)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def state(db):
    ls = jrun("ls", db)
    st = jrun("stat", db)
    for k in ("map_size", "map_used"):
        st.pop(k, None)
    return json.dumps([ls, st], sort_keys=True)


def make_model(name, *extra):
    path = p(name)
    r = subprocess.run(["/usr/bin/python3", "-m", "memmodel.make_test_model", path, "--layers", "4",
                        "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--ffn", "64", *extra],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"skipping: cannot write a test model: {r.stderr.strip()[-300:]}")
        sys.exit(77)
    return path


def write(name, text):
    with open(p(name), "w", encoding="utf-8") as f:
        f.write(text)
    return p(name)


LIGHTHOUSE = ("The lighthouse keeper wrote in his log that the storm began at dusk, that the "
              "supply boat was late by two days, and that the lamp oil would last until Sunday.\n")
GARDEN = "Tomatoes need six hours of sun; water them at the roots, never on the leaves.\n"
NOTES_MD = """Intro paragraph before any heading,
spread over two lines.

# Tides

High tide was at 06:12 and low tide at 12:40 on the first of May.

The harbour master closes the gate two hours before low tide.

## Birds ##
Gulls nest on the north rock from April.
```
fenced code

# not a heading inside a fence
```

#nospace is a paragraph, not a heading
"""
# (paragraph text, expected title) in order
NOTES_PARAS = [
    ("Intro paragraph before any heading,\nspread over two lines.", "notes.md"),
    ("High tide was at 06:12 and low tide at 12:40 on the first of May.", "Tides #1"),
    ("The harbour master closes the gate two hours before low tide.", "Tides #2"),
    ("Gulls nest on the north rock from April.\n```\nfenced code\n\n# not a heading inside a fence\n```",
     "Birds #1"),
    ("#nospace is a paragraph, not a heading", "Birds #2"),
]
CHARTER_MD = "# Charter\n\nThe club meets on the last Friday of each month.\n"


class Fixture:
    """Two models (m.gguf, and other.gguf of another head dim), the store path
    and what the cases learn as they fill it: each document's text and
    space, and the files, ids and titles that later cases check against."""

    question = "When does the lamp oil run out?"

    def __init__(self):
        self.model = make_model("m.gguf")
        self.other = make_model("other.gguf", "--head-dim", "8")  # another signature
        self.db = p("db")
        self.doc_text = {}   # id -> text the document must hold
        self.doc_space = {}  # id -> space

    def ask(self, *extra, q=None):
        return jrun("query", self.db, "--model", self.model, *extra, q or self.question)

    def check_spans(self, j, spaces=None, what=""):
        """Every span of the answer j names a known document and its title, a
        token range, and text that the document holds (from `spaces`)."""
        doc_text, doc_space, titles = self.doc_text, self.doc_space, self.titles
        check(isinstance(j["answer"], str) and isinstance(j["spans"], list), f"{what}: structure {j}")
        check(set(j["timing_ms"]) == {"load", "first_text", "ask"}, f"{what}: timing {j['timing_ms']}")
        check(j["spans_total"] >= len(j["spans"]), f"{what}: spans_total")
        for s in j["spans"]:
            check(set(s) == {"doc", "title", "token_start", "token_end", "score", "text"},
                  f"{what}: span keys {s}")
            check(s["doc"] in doc_text or s["title"].startswith("long.txt"), f"{what}: unknown doc {s}")
            check(s["title"] == titles[s["doc"]], f"{what}: title of {s}")
            check(0 <= s["token_start"] < s["token_end"], f"{what}: token range {s}")
            if s["doc"] in doc_text:
                check(s["text"] and s["text"] in doc_text[s["doc"]],
                      f"{what}: span text {s['text']!r} not in document {s['doc']}")
                if spaces:
                    check(doc_space[s["doc"]] in spaces, f"{what}: span from space "
                          f"{doc_space[s['doc']]}, asked {spaces}")
            else:
                check(s["text"] in self.long_text, f"{what}: long-text span")



def test_init(fx):
    """init --model: the signature from the model, options overriding it,
    and init's refusals (nothing left behind)."""
    model, db = fx.model, fx.db
    j = jrun("init", db, "--model", model, "--block", "16")
    sig = j["signature"]
    check(j["model"]["path"] == os.path.realpath(model) and len(j["model"]["blake2b"]) == 64
          and j["model"]["file_size"] == os.path.getsize(model) and not j["encrypted"],
          f"init --json: {j}")
    expect = {"layers": 4, "kv_heads": 2, "q_heads": 4, "head_dim": 16, "memory_layers": [2, 3],
              "block": 16, "dtype": "f16", "summary": ["mean", "reps"], "positions": "document"}
    check(sig == expect, f"init --model signature {sig} != {expect}")
    st = jrun("stat", db)
    check(st["signature"] == expect, f"stat signature {st['signature']}")
    # options override the model's defaults
    j = jrun("init", p("db8"), "--model", model, "--dtype", "int8", "--memory-layers", "1,3",
             "--summary", "mean")
    check(j["signature"]["dtype"] == "int8" and j["signature"]["memory_layers"] == [1, 3]
          and j["signature"]["summary"] == ["mean"] and j["signature"]["block"] == 64,
          f"init overrides: {j['signature']}")
    run("init", db, "--model", model, expect=1, msg="already exists")
    run("init", p("x"), "--model", model, "--layers", "4", expect=2, msg="cannot be combined with --model")
    run("init", p("x"), "--model", model, "--memory-layers", "2-4", expect=2, msg="out of range")
    run("init", p("x"), "--model", p("nope.gguf"), expect=1, msg="no such file")
    check(not os.path.exists(p("x")), "a failed init left a directory")


def test_ingest_files(fx):
    """Text files into spaces: titles from file names, --split into
    paragraphs titled by headings, --title."""
    model, db, doc_text, doc_space = fx.model, fx.db, fx.doc_text, fx.doc_space
    run("space", db, "create", "alpha")
    run("space", db, "create", "beta")
    f_light = write("lighthouse.txt", LIGHTHOUSE)
    f_garden = write("garden.txt", GARDEN)
    j = jrun("ingest", db, "--model", model, f_light, f_garden)
    docs = j["documents"]
    check([d["title"] for d in docs] == ["lighthouse.txt", "garden.txt"], f"titles {docs}")
    check(all(d["space"] == "default" and d["tokens"] > 10 for d in docs), f"docs {docs}")
    check(docs[1]["id"] > docs[0]["id"], "ids ascend in ingest order")
    check([d["file"] for d in docs] == [f_light, f_garden], "file fields")
    light_id, garden_id = docs[0]["id"], docs[1]["id"]
    doc_text[light_id], doc_text[garden_id] = LIGHTHOUSE, GARDEN
    doc_space[light_id] = doc_space[garden_id] = "default"

    f_notes = write("notes.md", NOTES_MD)
    j = jrun("ingest", db, "--model", model, "--split", "--space", "alpha", f_notes)
    docs = j["documents"]
    check([d["title"] for d in docs] == [t for _, t in NOTES_PARAS],
          f"--split titles {[d['title'] for d in docs]}")
    for d, (text, _) in zip(docs, NOTES_PARAS):
        doc_text[d["id"]] = text
        doc_space[d["id"]] = "alpha"
        check(d["space"] == "alpha", "space alpha")
    notes_ids = [d["id"] for d in docs]

    f_charter = write("charter.md", CHARTER_MD)
    j = jrun("ingest", db, "--model", model, "--split", "--space", "beta", "--title", "club", f_charter)
    check([d["title"] for d in j["documents"]] == ["Charter"], f"heading wins over --title: {j}")
    charter_id = j["documents"][0]["id"]
    doc_text[charter_id] = "The club meets on the last Friday of each month."
    doc_space[charter_id] = "beta"
    f_plain = write("plain.md", "A note without headings.\n\nSecond paragraph.\n")
    j = jrun("ingest", db, "--model", model, "--split", "--space", "beta", "--title", "memo", f_plain)
    check([d["title"] for d in j["documents"]] == ["memo #1", "memo #2"], f"--title: {j}")
    doc_text[j["documents"][0]["id"]] = "A note without headings."
    doc_text[j["documents"][1]["id"]] = "Second paragraph."
    for d in j["documents"]:
        doc_space[d["id"]] = "beta"
    fx.f_light, fx.f_garden, fx.light_id, fx.garden_id = f_light, f_garden, light_id, garden_id
    fx.notes_ids = notes_ids


def test_ingest_long_text(fx):
    """Text longer than one document (4096 tokens): consecutive parts whose
    texts tile the file."""
    model, db = fx.model, fx.db
    words = ["storm", "boat", "oil", "lamp", "keeper", "dusk", "sea", "rock", "gull", "tide"]
    long_text = " ".join(words[(i * 7 + i // 3) % 10] for i in range(1900)) + "\n"
    f_long = write("long.txt", long_text)
    j = jrun("ingest", db, "--model", model, f_long)
    parts = j["documents"]
    check(len(parts) >= 2 and all(d["title"] == f"long.txt [{i + 1}/{len(parts)}]"
                                  for i, d in enumerate(parts)), f"long text parts: {parts}")
    check(all(d["tokens"] <= 4096 for d in parts), "parts of at most 4096 tokens")
    ls = {d["id"]: d for d in jrun("ls", db)["documents"]}
    check(sum(ls[d["id"]]["text_bytes"] for d in parts) == len(long_text.encode()),
          "the parts' texts tile the file")
    check(all(ls[d["id"]]["has_spans"] and ls[d["id"]]["has_tokens"] for d in parts), "spans kept")
    fx.long_text, fx.f_long, fx.parts = long_text, f_long, parts


def test_ingest_again(fx):
    """The same text again is a no-op that says so (content hash, per
    space); --commit-every with text commits every paragraph."""
    model, db, doc_text, doc_space = fx.model, fx.db, fx.doc_text, fx.doc_space
    f_light, light_id, f_long, parts = fx.f_light, fx.light_id, fx.f_long, fx.parts
    n_before = jrun("stat", db)["documents"]
    j = jrun("ingest", db, "--model", model, f_light, f_long)
    check(j["added"] == 0 and j["already_in_memory"] == 2, f"again: {j}")
    check(j["documents"][0]["id"] == light_id and j["documents"][0]["status"] == "already in memory"
          and j["documents"][0]["title"] == "lighthouse.txt", f"already: {j['documents'][0]}")
    check(j["documents"][1]["id"] == parts[-1]["id"], "a long text names its last part")
    rows = run("ingest", db, "--model", model, f_light).stdout.splitlines()
    check(rows[0].split("\t") == ["id", "space", "tokens", "title", "status"]
          and rows[1].split("\t")[4] == "already in memory", f"table: {rows}")
    check(jrun("stat", db)["documents"] == n_before, "nothing added")
    run("space", db, "create", "gamma")
    j = jrun("ingest", db, "--model", model, "--space", "gamma", f_light)  # another space: a new document
    check(j["added"] == 1 and j["documents"][0]["status"] == "added", f"other space: {j}")
    doc_text[j["documents"][0]["id"]] = LIGHTHOUSE
    doc_space[j["documents"][0]["id"]] = "gamma"
    same = write("same.txt", LIGHTHOUSE)  # another file, the same text
    j = jrun("ingest", db, "--model", model, same, "--commit-every", "1d")
    check(j["added"] == 0 and j["documents"][0]["id"] == light_id, f"same text, other file: {j}")
    # --commit-every with text: every paragraph its own commit, all there
    f_paras = write("paras.md", "".join(f"Paragraph number {i} about the harbour.\n\n" for i in range(6)))
    j = jrun("ingest", db, "--model", model, "--split", "--space", "gamma", "--commit-every", "2d", f_paras)
    check(j["added"] == 6 and len({d["id"] for d in j["documents"]}) == 6, f"--commit-every 2d: {j}")
    for i, d in enumerate(j["documents"]):
        doc_text[d["id"]] = f"Paragraph number {i} about the harbour."
        doc_space[d["id"]] = "gamma"
    run("verify", db)


def test_ls(fx):
    """ls shows titles and tokens."""
    db, light_id, notes_ids = fx.db, fx.light_id, fx.notes_ids
    ls = jrun("ls", db)["documents"]
    titles = {d["id"]: d["title"] for d in ls}
    check(titles[light_id] == "lighthouse.txt" and titles[notes_ids[1]] == "Tides #1", "ls titles")
    table = run("ls", db, "--space", "alpha").stdout.splitlines()
    check(table[0].split("\t") == ["id", "space", "tokens", "blocks", "created", "expires", "meta", "title"]
          and len(table) == 1 + len(NOTES_PARAS) and "Birds #1" in table[4], f"ls table {table}")
    fx.titles = titles


def test_ingest_refused(fx):
    """What cannot be ingested or asked is refused with a message naming
    the cause, and the store is unchanged."""
    model, other, db, f_light = fx.model, fx.other, fx.db, fx.f_light
    f_garden = fx.f_garden
    before = state(db)
    empty = write("empty.txt", "")
    headings = write("headings.md", "# One\n\n## Two\n\n")
    run("ingest", db, "--model", model, f_light, empty, expect=1, msg="empty.txt: empty file")
    # what is not text is refused (nothing written, even after a good file)
    png = p("picture.png")
    with open(png, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    r = run("ingest", db, "--model", model, f_garden, png, expect=1)
    check(r.stderr.startswith(f"msadb: {png}: does not look like text (a NUL byte at offset 8); give "
                              "--binary-ok to ingest it anyway\n"), f"binary message: {r.stderr!r}")
    latin = p("latin.txt")
    with open(latin, "wb") as f:
        f.write("Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u00e0 la carte.\n".encode("latin-1") * 3)
    r = run("ingest", db, "--model", model, latin, expect=1)
    check(r.stderr.startswith(f"msadb: {latin}: does not look like text (15 of 90 bytes are not valid UTF-8, "
                              "the first at offset 3); give --binary-ok to ingest it anyway\n"),
          f"UTF-8 message: {r.stderr!r}")
    run("ingest", db, "--model", model, "--split", headings, expect=1, msg="headings.md: no text")
    run("ingest", db, "--model", model, f_light, p("missing.txt"), expect=1, msg="missing.txt: cannot open")
    run("ingest", db, "--model", model, TMP, expect=1, msg="is a directory")
    run("ingest", db, "--model", model, "--space", "nope", f_light, expect=1, msg="no space 'nope'")
    run("ingest", db, "--model", p("nope.gguf"), f_light, expect=1, msg="nope.gguf: no such file")
    run("ingest", db, "--model", f_light, f_light, expect=1, msg="not a GGUF")
    r = run("ingest", db, "--model", other, f_light, expect=1, msg="made for another model")
    check("head dim 16" in r.stderr and "head dim 8" in r.stderr, f"names both shapes: {r.stderr}")
    run("query", db, "--model", other, "hello", expect=1, msg="made for another model")
    run("query", db, "--model", model, "--space", "nope", "hello", expect=1, msg="--space nope")
    run("query", db, "--model", p("nope.gguf"), "hello", expect=1, msg="no such file")
    run("query", p("nostore"), "--model", model, "hello", expect=1, msg="nostore")
    check(not os.path.exists(p("nostore")), "query created a directory")
    check(state(db) == before, "a failed command changed the store")
    fx.latin = latin


def test_usage_errors(fx):
    """Usage errors: exit 2."""
    model, db = fx.model, fx.db
    run("ingest", db, "--model", model, expect=2, msg="missing FILE")
    run("query", db, "--model", model, expect=2, msg="missing QUESTION")
    run("query", db, "--model", model, "a", "b", expect=2, msg="unexpected argument")
    run("query", db, "--model", model, "--layer", "2", "q", expect=2,
        msg="query: --model applies to a question, not to query vectors (--q)")
    run("query", db, "--q", "f", "--layer", "2", "--max-tokens", "3", expect=2,
        msg="query: --max-tokens applies to a question, not to query vectors (--q)")
    run("query", db, "--model", model, "--top-p", "0", "q", expect=2, msg="--top-p")
    run("query", db, "--model", model, "--temperature", "x", "q", expect=2, msg="--temperature")
    run("query", db, "--model", model, "--interleave", "9", "q", expect=2, msg="--interleave")
    run("query", db, "--model", model, "--max-tokens", "0", "q", expect=2, msg="--max-tokens")
    run("query", db, "--model", model, "--seed", "-1", "q", expect=2)
    run("init", p("x"), "--split", expect=2, msg="does not apply")


def test_binary_ok(fx):
    """--binary-ok overrides the text check."""
    model, db, latin = fx.model, fx.db, fx.latin
    n_before = jrun("stat", db)["documents"]
    j = jrun("ingest", db, "--model", model, "--binary-ok", latin)
    check(j["added"] == 1, f"--binary-ok: {j}")
    run("rm", db, str(j["documents"][0]["id"]))
    check(jrun("stat", db)["documents"] == n_before, "removed again")


def test_segment(fx):
    """--segment: the same text read another way is other memory (a new
    document, not "already in memory"); the same way again is a no-op; a
    bad mode, a tensor file or a query is a usage error."""
    db = p("segdb")
    run("init", db, "--model", fx.model)
    f = write("seg.txt", "Notes of the day.\n\nThe lamp oil runs out in May.\n\nEnd of the notes.\n")
    ids = {}
    for mode in (None, "joined", "paragraph", "document"):
        j = jrun("ingest", db, "--model", fx.model, *(["--segment", mode] if mode else []), f)
        ids[mode] = (j["documents"][0]["id"], j["documents"][0]["status"])
    check(ids[None][1] == "added" and ids["document"] == (ids[None][0], "already in memory"),
          f"document is the model's own mode: {ids}")
    check(ids["joined"][1] == ids["paragraph"][1] == "added"
          and len({ids[m][0] for m in (None, "joined", "paragraph")}) == 3, f"three readings: {ids}")
    j = jrun("ingest", db, "--model", fx.model, "--segment", "joined", f)
    check(j["documents"][0]["id"] == ids["joined"][0] and j["already_in_memory"] == 1, f"joined again: {j}")
    run("ingest", db, "--model", fx.model, "--segment", "words", f, expect=2,
        msg="--segment: expected document, paragraph or joined, got 'words'")
    run("query", db, "--model", fx.model, "--segment", "joined", "q", expect=2, msg="does not apply")
    run("verify", db)


def test_query_answers(fx):
    """A memory answer cites spans; greedy answers and seeded sampling are
    deterministic."""
    ask, check_spans = fx.ask, fx.check_spans
    j = ask("--max-tokens", "8")
    check(j["memory"] and j["spans"], f"memory answer cites spans: {j}")
    check_spans(j, what="default")
    # the same greedy question twice: the same answer and spans
    j2 = ask("--max-tokens", "8")
    check(j2["answer"] == j["answer"] and j2["spans"] == j["spans"], "greedy answers are deterministic")
    # sampling: the same seed gives the same answer
    s1 = ask("--max-tokens", "12", "--temperature", "1.5", "--top-p", "0.95", "--seed", "7")
    s2 = ask("--max-tokens", "12", "--temperature", "1.5", "--top-p", "0.95", "--seed", "7")
    check(s1["answer"] == s2["answer"], "sampling with one seed is deterministic")


def test_query_spaces(fx):
    """Spans are only cited from the spaces asked."""
    doc_space, ask, check_spans = fx.doc_space, fx.ask, fx.check_spans
    j = ask("--space", "alpha", "--max-tokens", "4")
    check(j["spans"], "alpha spans")
    check_spans(j, spaces={"alpha"}, what="--space alpha")
    j = ask("--space", "alpha", "--space", "beta", "--max-tokens", "4")
    check_spans(j, spaces={"alpha", "beta"}, what="--space alpha --space beta")
    check({doc_space.get(s["doc"]) for s in j["spans"]} <= {"alpha", "beta"}, "two spaces")


def test_query_selection(fx):
    """--top-k, --exact and --select documents choose what is attended."""
    notes_ids, ask, check_spans = fx.notes_ids, fx.ask, fx.check_spans
    # top-k: at most K blocks per kv head
    j = ask("--top-k", "1", "--max-tokens", "4")
    check_spans(j, what="--top-k 1")
    check(1 <= j["spans_total"] <= 2, f"--top-k 1 with 2 kv heads: {j['spans_total']} spans")
    check(all(s["token_end"] - s["token_start"] <= 16 for s in j["spans"]), "one block per span")
    # exact: every document of the space is drawn on
    j = ask("--exact", "--space", "alpha", "--max-tokens", "4")
    check_spans(j, spaces={"alpha"}, what="--exact")
    check({s["doc"] for s in j["spans"]} == set(notes_ids), f"--exact cites every document: {j['spans']}")
    j = ask("--select", "documents", "--top-k", "2", "--space", "alpha", "--max-tokens", "4")
    check_spans(j, spaces={"alpha"}, what="--select documents")
    check(1 <= len({s["doc"] for s in j["spans"]}) <= 4, "documents mode")


def test_query_modes(fx):
    """--no-memory, --interleave, --query-pos, --summary."""
    model, db, question, ask = fx.model, fx.db, fx.question, fx.ask
    check_spans = fx.check_spans
    # no memory: no spans, and the answer may differ
    j = ask("--no-memory", "--max-tokens", "4")
    check(not j["memory"] and j["spans"] == [] and j["spans_total"] == 0, f"--no-memory: {j}")
    # interleave pulls documents in and queries again
    j = ask("--interleave", "2", "--max-tokens", "4")
    check_spans(j, what="--interleave 2")
    check(j["interleave"] == 2 and j["spans"], "interleave answer")
    j = ask("--query-pos", "100", "--max-tokens", "4")
    check_spans(j, what="--query-pos")
    # --summary picks the routing summary; one the store lacks is refused
    j = ask("--summary", "reps", "--max-tokens", "4")
    check_spans(j, what="--summary reps")
    run("query", db, "--model", model, "--summary", "minmax", question, expect=1,
        msg="does not store minmax summaries")


def test_query_output(fx):
    """The streaming form (the answer first, then the spans), --quiet, the
    question on stdin, and the tensor form still running on this store."""
    model, db, question, ask = fx.model, fx.db, fx.question, fx.ask
    r = run("query", db, "--model", model, "--max-tokens", "8", question)
    jj = ask("--max-tokens", "8")
    check(r.stdout.startswith(jj["answer"]), f"streamed answer {r.stdout[:80]!r} != {jj['answer']!r}")
    rest = r.stdout[len(jj["answer"]):].split("\n")
    check(rest[0] == "" and rest[1] == "" and rest[2].split("\t") == ["doc", "tokens", "score", "title", "text"],
          f"span table after the answer: {rest[:3]}")
    check(len([x for x in rest[3:] if x]) == min(len(jj["spans"]), 64), "one row per span")
    r = run("query", db, "--model", model, "--max-tokens", "8", "--quiet", question)
    check(r.stdout == jj["answer"] + ("" if jj["answer"].endswith("\n") else "\n"), "--quiet: answer only")
    r = run("query", db, "--model", model, "--max-tokens", "8", "--no-memory", question)
    check(r.stdout.count("\n") <= 1 + jj["answer"].count("\n"), "--no-memory prints no span table")
    # the question on stdin
    j = jrun("query", db, "--model", model, "--max-tokens", "8", "-", stdin=question + "\n")
    check(j["question"] == question and j["answer"] == jj["answer"], "question from stdin")

    # the tensor form of query still runs on this store
    run("query", db, "--layer", "2", expect=2, msg="missing --q")


def test_query_abstain(fx):
    """A model that declares its abstain answer (GGUF msadb.abstain): query
    exits 3 when the model gives that answer, says so in the JSON and on
    stderr; other answers exit 0.  A bad msadb.abstain is refused with the
    key named.  The random model's own answer is declared as its abstain
    answer: the same weights answer the same question the same way."""
    base = fx.ask("--max-tokens", "4")
    check(base["abstained"] is False, f"no msadb.abstain: not abstained {base}")
    shorter = fx.ask("--max-tokens", "1")["answer"]
    declared = base["answer"].strip()
    check(declared and shorter.strip() != declared, f"answers {base['answer']!r} / {shorter!r}")
    m2 = make_model("abstain.gguf", "--abstain", declared)
    db2 = p("abstain-db")
    run("init", db2, "--model", m2, "--block", "16", "--quiet")
    run("ingest", db2, "--model", m2, "--quiet", write("abstain-doc.txt", LIGHTHOUSE))
    j = jrun("query", db2, "--model", m2, "--max-tokens", "4", fx.question, expect=3)
    check(j["abstained"] is True and j["answer"] == base["answer"], f"abstained: {j}")
    r = run("query", db2, "--model", m2, "--max-tokens", "4", fx.question, expect=3)
    check(r.stdout.startswith(base["answer"]) and
          "the model's answer is its declared abstain answer" in r.stderr, f"abstain: {r.stderr!r}")
    r = run("query", db2, "--model", m2, "--max-tokens", "4", "--quiet", fx.question, expect=3)
    check(r.stderr == "", f"--quiet abstain: {r.stderr!r}")
    j = jrun("query", db2, "--model", m2, "--max-tokens", "1", fx.question)
    check(j["abstained"] is False and j["answer"] == shorter, f"another answer: {j}")
    # refused values: not a string, empty
    for t, v in (("uint32", "7"), ("string", "")):
        bad = p("abstain-bad.gguf")
        r = subprocess.run(["/usr/bin/python3", "-m", "memmodel.gguf", "edit", m2, bad, "set",
                            "msadb.abstain", t, v], capture_output=True, text=True)
        check(r.returncode == 0, f"gguf edit: {r.stderr}")
        run("query", db2, "--model", bad, "q", expect=1, msg="msadb.abstain")


def test_query_followups(fx):
    """A model that declares a follow-up prefix (GGUF msadb.followup): an
    answer beginning with it is asked again as a question and that answer is
    printed; --json lists the follow-up (stderr names it on a terminal); --followups 0
    prints the first answer as it is; out of range is refused.  The random
    model's own first character is declared as the prefix: the same weights
    answer the same question the same way, so the follow-up is known."""
    base = fx.ask("--max-tokens", "64")
    check(base["followups"] == [], f"no msadb.followup: no follow-up {base}")
    text = base["answer"].lstrip()
    check(len(text) > 1 and text[0] not in "'\"", f"answer {text!r}")
    question = text[1:].strip()
    m2 = make_model("followup.gguf", "--followup", text[0])
    want = jrun("query", fx.db, "--model", fx.model, "--max-tokens", "4", "--force-model", question)
    j = jrun("query", fx.db, "--model", m2, "--max-tokens", "4", "--force-model", "--followups", "1",
             fx.question)
    check(j["followups"] == [question] and j["answer"] == want["answer"], f"followed up: {j} {want}")
    # not a terminal: the answer alone (run() checks stderr is empty)
    r = run("query", fx.db, "--model", m2, "--max-tokens", "4", "--force-model", "--followups", "1",
            fx.question)
    check(r.stdout.startswith(want["answer"]), f"stdout: {r.stdout!r}")
    j = jrun("query", fx.db, "--model", m2, "--max-tokens", "4", "--force-model", "--followups", "0",
             fx.question)
    short = fx.ask("--max-tokens", "4")
    check(j["followups"] == [] and j["answer"] == short["answer"], f"--followups 0: {j}")
    # with the default (2) the random model follows its follow-up's own '?' again
    j = jrun("query", fx.db, "--model", m2, "--max-tokens", "4", "--force-model", fx.question)
    check(len(j["followups"]) == 2 and j["followups"][0] == question, f"two follow-ups: {j}")
    run("query", fx.db, "--model", m2, "--followups", "9", fx.question, expect=2, msg="followups")


def main():
    fx = Fixture()
    for case in (test_init, test_ingest_files, test_ingest_long_text, test_ingest_again, test_ls,
                 test_ingest_refused, test_usage_errors, test_binary_ok, test_segment, test_query_answers,
                 test_query_spaces, test_query_selection, test_query_modes, test_query_output,
                 test_query_abstain, test_query_followups):
        case(fx)
    # the store is sound
    run("verify", fx.db)
    test_documents(fx.model)
    print("cli_model_e2e: ok")


def test_documents(model):
    """Text documents with --meta and --ttl (test clock MSADB_TEST_NOW):
    search and query routed among matching documents only, update --text,
    expiry."""
    db = p("docs")
    run("init", db, "--model", model, "--block", "16")
    t0 = 2000000000
    env = dict(os.environ, MSADB_TEST_NOW=str(t0))

    def at(t, *args, expect=0, msg=None):
        r = subprocess.run([MSADB, *args], capture_output=True, text=True, errors="replace", timeout=300,
                           env=dict(env, MSADB_TEST_NOW=str(t)))
        check(r.returncode == expect, f"msadb {' '.join(args[:2])}: exit {r.returncode}: {r.stderr}")
        if msg is not None:
            check(msg in r.stderr, f"stderr lacks {msg!r}: {r.stderr}")
        return json.loads(r.stdout) if "--json" in args and expect == 0 else r

    a = write("d_a.txt", LIGHTHOUSE)
    b = write("d_b.txt", GARDEN)
    ida = at(t0, "ingest", db, a, "--meta", "topic=sea", "--json")["documents"][0]["id"]
    idb = at(t0, "ingest", db, b, "--meta", "topic=garden", "--ttl", "90s", "--json")["documents"][0]["id"]
    sh = at(t0, "show", db, str(idb), "--json")
    check(sh["metadata"] == {"topic": "garden"} and sh["expires"] == t0 + 90, f"show {sh}")

    question = "When does the lamp oil run out?"
    for topic, doc in (("topic=sea", ida), ("topic=garden", idb)):
        for cmd in (["search"], ["query", "--max-tokens", "2"]):
            j = at(t0, *cmd, db, "--where", topic, "--top-k", "64", "--min-score", "-1000", question, "--json")
            check(j["spans"] and {x["doc"] for x in j["spans"]} == {doc},
                  f"{cmd[0]} --where {topic}: spans {j['spans']}")
    j = at(t0, "search", db, "--where", "topic=none", question, "--json", expect=3)
    # past the garden note's expiry, search no longer finds it, before any purge
    j = at(t0 + 90, "search", db, "--top-k", "64", "--min-score", "-1000", question, "--json")
    check({x["doc"] for x in j["spans"]} == {ida}, f"expired document searched: {j['spans']}")
    check(at(t0 + 90, "expire", db, "--json") == {"purged": 1}, "expire")

    # update --text: a new id, the old one deleted, metadata kept
    u = at(t0, "update", db, str(ida), "--text", "The lamp oil lasts until Monday.", "--json")
    new = u["documents"][0]
    check(u["replaced"] == ida and new != ida, f"update {u}")
    sh = at(t0, "show", db, str(new), "--json")
    check(sh["text"] == "The lamp oil lasts until Monday." and sh["metadata"] == {"topic": "sea"}
          and sh["title"] == "d_a.txt", f"updated document {sh}")
    at(t0, "show", db, str(ida), expect=1, msg="no document")
    # the same content again: the old document gives its key up, so the
    # update is not taken for a duplicate
    u = at(t0, "update", db, str(new), "--text", "The lamp oil lasts until Monday.", "--json")
    check(u["replaced"] == new and u["documents"][0] != new, f"update with the same text {u}")
    new = u["documents"][0]
    # content another document holds already: nothing changes
    other = at(t0, "ingest", db, write("d_c.txt", GARDEN), "--json")["documents"][0]["id"]
    at(t0, "update", db, str(new), "--text", GARDEN, expect=1,
       msg=f"msadb: {db}: update: the new content is already in the store as document {other}; "
           f"document {new} was kept (nothing was changed)")
    check(at(t0, "show", db, str(new), "--json")["text"] == "The lamp oil lasts until Monday.",
          "a refused update keeps the document")
    r = at(t0, "update", db, "77", "--text", "x", expect=1,
           msg=f"msadb: {db}: no document 77 (msadb ls {db} lists them); nothing was changed")
    run("verify", db)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e}")
        sys.exit(1)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
