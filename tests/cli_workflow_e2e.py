#!/usr/bin/python3
"""End-to-end test of the everyday commands with the bundled model
(models/msadb-mem.gguf): usage /usr/bin/python3 cli_workflow_e2e.py PATH_TO_msadb

A store bound to its model (init --model records it; ingest, query and
search then need no --model; MSADB_MODEL; a different model of the same
shape refused unless --force-model), search (spans, JSON, table, the same
spans query cites), abstaining (--min-score: exit 3, "not in memory"),
show, vacuum (the data file shrinks after rm), doctor, the flags -m, -n,
--temp, --blocks, and every error message of these paths, verbatim.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

MSADB = os.path.abspath(sys.argv[1])
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.realpath(os.path.join(ROOT, "models", "msadb-mem.gguf"))
DEMO = os.path.join(ROOT, "tools", "scripts", "demo", "memory")
TMP = tempfile.mkdtemp(prefix="msadb-workflow-")


def p(*parts):
    return os.path.join(TMP, *parts)


def run(*args, expect=0, err=None, env=None):
    e = dict(os.environ)
    e.pop("MSADB_MODEL", None)
    e.update(env or {})
    r = subprocess.run([MSADB, *args], capture_output=True, text=True, timeout=300, cwd=TMP, env=e)
    if r.returncode != expect:
        raise AssertionError(f"msadb {' '.join(args)}: exit {r.returncode}, expected {expect}\n"
                             f"stdout: {r.stdout[-1500:]}\nstderr: {r.stderr[-1500:]}")
    if err is not None and r.stderr != err + "\n":
        raise AssertionError(f"msadb {' '.join(args)}: stderr\n  {r.stderr!r}\nexpected\n  {err + chr(10)!r}")
    return r


def jrun(*args, **kw):
    return json.loads(run(*args, "--json", **kw).stdout)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Fixture:
    """The store "notes" bound to the bundled model (init -m) holding the
    demo documents, and what the cases compare against: the init report,
    the ids, one answered question and its search."""

    def __init__(self):
        self.docs = sorted(os.path.join(DEMO, f) for f in os.listdir(DEMO)
                           if f.endswith(".txt") and f != "questions.txt")
        self.db = "notes"
        self.init = jrun("init", self.db, "-m", MODEL)
        self.ids = [d["id"] for d in jrun("ingest", self.db, *self.docs)["documents"]]  # no --model
        self.q = "What is the alarm code of room 568?"
        self.ans = jrun("query", self.db, "-n", "16", "--blocks", "4", self.q)
        self.search = jrun("search", self.db, "--blocks", "4", self.q)


def test_bound_model(fx):
    """init --model records the model; ingest and query use it; the short,
    llama.cpp and long spellings agree; a copy of the model is the model."""
    db, q, j = fx.db, fx.q, fx.init
    check(j["model"]["path"] == MODEL and j["model"]["file_size"] == os.path.getsize(MODEL), f"init: {j}")
    check(j["model"]["blake2b"] == hashlib.blake2b(open(MODEL, "rb").read(), digest_size=32).hexdigest(),
          "the recorded hash is BLAKE2b-256 of the file")
    check(len(fx.ids) == len(fx.docs), "ingest through the store's model")
    ans = fx.ans
    check("2100" in ans["answer"], f"answer with the store's model: {ans['answer']!r}")
    # the same with llama.cpp's spellings and the long ones
    ans2 = jrun("query", db, "--max-tokens", "16", "--top-k", "4", "--temperature", "0", q)
    ans3 = jrun("query", db, "-n", "16", "--blocks", "4", "--temp", "0", q)
    check(ans["answer"] == ans2["answer"] == ans3["answer"], "-n/--blocks/--temp are aliases")
    # a copy of the model elsewhere with the same bytes is the same model
    shutil.copy(MODEL, p("copy.gguf"))
    run("query", db, "-m", "copy.gguf", "-n", "4", q)


def test_other_model(fx):
    """Another model of the same shape: refused unless --force-model."""
    db, q = fx.db, fx.q
    with open(p("other.gguf"), "wb") as f:
        f.write(open(MODEL, "rb").read() + b"\0")
    h_store = fx.init["model"]["blake2b"][:16]
    h_other = hashlib.blake2b(open(p("other.gguf"), "rb").read(), digest_size=32).hexdigest()[:16]
    refusal = (f"msadb: notes: the store was made with model {MODEL} (blake2b {h_store}...), not "
               f"other.gguf (blake2b {h_other}...): same shape, other weights, so its memory would "
               f"not match; use that model, or --force-model")
    run("query", db, "-m", "other.gguf", q, expect=1, err=refusal)
    run("search", db, "-m", "other.gguf", q, expect=1, err=refusal)
    run("ingest", db, "-m", "other.gguf", fx.docs[0], expect=1,
        err=refusal)
    run("query", db, "-m", "other.gguf", "--force-model", "-n", "2", q)


def test_model_env(fx):
    """MSADB_MODEL for a store that records no model."""
    q = fx.q
    run("init", "bare", "--layers", "8", "--kv-heads", "3", "--q-heads", "6", "--head-dim", "64")
    run("query", "bare", q, expect=1,
        err="msadb: bare: no model: the store records none (it was made with --layers ... or by "
            "an older msadb); give -m M.gguf or set MSADB_MODEL")
    run("ingest", "bare", fx.docs[0], expect=1,
        err="msadb: bare: no model: the store records none (it was made with --layers ... or by "
            "an older msadb); give -m M.gguf or set MSADB_MODEL")
    run("ingest", "bare", fx.docs[0], env={"MSADB_MODEL": MODEL})


def test_search(fx):
    """search: best first, the fact cited, the spans query cites; the table."""
    db, q, s = fx.db, fx.q, fx.search
    check(s["question"] == q and s["spans"], f"search: {s}")
    top = s["spans"][0]
    check(top["title"] == "music-room.txt" and "2100" in top["text"], f"search cites the fact: {top}")
    check(all(a["score"] >= b["score"] for a, b in zip(s["spans"], s["spans"][1:])), "best first")
    check(s["spans"] == fx.ans["spans"], "search returns the spans query cites")
    table = run("search", db, "--blocks", "4", q).stdout.splitlines()
    check(table[0].split("\t") == ["doc", "tokens", "score", "title", "text"] and
          len(table) == 1 + len(s["spans"]) and "music-room.txt" in table[1], f"search table {table}")


def test_abstain(fx):
    """--min-score between an unanswerable and an answerable question: exit 3
    and "not in memory" for the one, an answer for the other."""
    db, q = fx.db, fx.q
    top = fx.search["spans"][0]
    unanswerable = "What is the name of Susan Clark's parrot?"
    best_un = jrun("search", db, unanswerable)["spans"][0]["score"]
    check(best_un < top["score"], "an unanswerable question scores below an answerable one")
    t = (best_un + top["score"]) / 2
    r = run("query", db, "--min-score", "%.3f" % t, unanswerable, expect=3)
    check(r.stdout == "not in memory\n", f"abstain stdout {r.stdout!r}")
    check(r.stderr.startswith(f"msadb: nothing in notes scores --min-score {float('%.3f' % t):.4g} "
                              "for this question (best "), f"abstain stderr {r.stderr!r}")
    j = json.loads(run("query", db, "--min-score", "%.3f" % t, "--json", unanswerable, expect=3).stdout)
    check(j["answer"] is None and j["abstained"] and abs(j["best_score"] - best_un) < 1e-3, f"{j}")
    r = run("query", db, "--min-score", "%.3f" % t, "-n", "16", "--blocks", "4", "--quiet", q)
    check("2100" in r.stdout, "an answerable question above the threshold is answered")
    r = run("search", db, "--min-score", "%.3f" % t, unanswerable, expect=3,
            err="msadb: nothing in notes scores --min-score for this question")
    check(r.stdout == "", "search prints nothing when nothing scores")
    check(all(x["score"] >= t for x in jrun("search", db, "--min-score", "%.3f" % t, q)["spans"]),
          "search --min-score keeps the spans above it")


def test_rm_space(fx):
    """rm --space deletes that space's documents only."""
    db, docs, ids = fx.db, fx.docs, fx.ids
    run("space", db, "create", "scratch")
    scratch = [d["id"] for d in jrun("ingest", db, "--space", "scratch", docs[0], docs[1])["documents"]]
    check(jrun("rm", db, "--space", "scratch")["deleted"] == scratch, "rm --space deletes the space's documents")
    check(jrun("ls", db, "--space", "scratch")["documents"] == [] and
          [d["id"] for d in jrun("ls", db)["documents"]] == ids, "rm --space leaves the others")
    check(jrun("rm", db, "--space", "scratch")["deleted"] == [], "an empty space: nothing to delete")
    run("rm", db, "--space", "nope", expect=1,
        err="msadb: notes: no space 'nope' (create it with: msadb space notes create nope)")
    run("rm", db, "--space", "scratch", str(ids[0]), expect=1,
        err=f"msadb: notes: document {ids[0]} is not in space 'scratch' (--space limits 'msadb rm' to that "
            "space); nothing was deleted")
    check([d["id"] for d in jrun("ls", db)["documents"]] == ids, "a refused rm --space DOC deletes nothing")
    run("rm", db, "--where", "a=b", "3", expect=2,
        err="msadb: rm: give DOC ids or a filter (--where K=V), not both\n"
            "usage: msadb rm ... (run 'msadb help rm')")


def test_show(fx):
    """show: metadata, blocks and text of one document."""
    db, docs, ids = fx.db, fx.docs, fx.ids
    sh = jrun("show", db, str(ids[1]))
    check(sh["title"] == os.path.basename(docs[1]) and sh["text"] == open(docs[1]).read() and
          sh["block_count"] == len(sh["blocks"]) and sh["blocks"][-1]["token_end"] == sh["tokens"],
          f"show: {sh}")
    out = run("show", db, str(ids[1])).stdout
    check(out.startswith(f"id       {ids[1]}\n") and open(docs[1]).read() in out, "show text")
    run("show", db, "999", expect=1, err="msadb: notes: no document 999 (msadb ls notes lists them)")
    run("show", db, "x", expect=2)


def test_vacuum(fx):
    """vacuum: the data file shrinks after rm; documents and answers kept."""
    db, docs, ids, q = fx.db, fx.docs, fx.ids, fx.q
    for i in range(6):  # the same texts in another space are new documents
        run("space", db, "create", f"bulk{i}")
        run("ingest", db, "--space", f"bulk{i}", *docs)
    every = [d["id"] for d in jrun("ls", db)["documents"]]
    run("rm", db, *[str(i) for i in every if i not in ids])
    jrun("compact", db)
    v = jrun("vacuum", db)
    check(v["bytes_after"] < v["bytes_before"] and
          v["bytes_after"] == os.path.getsize(p(db, "data.mdb")), f"vacuum {v}")
    check(not [f for f in os.listdir(TMP) if ".vacuum-" in f or ".old-" in f], "no leftovers")
    run("verify", db)
    check([d["id"] for d in jrun("ls", db)["documents"]] == ids, "vacuum keeps the documents")
    check("2100" in jrun("query", db, "-n", "16", "--blocks", "4", q)["answer"], "answers after vacuum")
    run("vacuum", "nowhere", expect=1,
        err="msadb: nowhere: no such file or directory (create a store with 'msadb init nowhere "
            "--model M.gguf')")


def test_messages(fx):
    """Messages naming the cause: a missing store, a file that is not GGUF, a
    missing model, flags that do not fit, an unimplemented pre-tokenizer."""
    db, q = fx.db, fx.q
    run("query", "nowhere", q, expect=1,
        err="msadb: nowhere: no such file or directory (create a store with 'msadb init nowhere "
            "--model M.gguf')")
    open(p("picture.png"), "wb").write(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    run("query", db, "-m", "picture.png", q, expect=1,
        err="msadb: --model picture.png: not a GGUF file (it does not begin with 'GGUF'); give a "
            "llama-architecture .gguf model")
    run("query", db, "-m", "absent.gguf", q, expect=1,
        err="msadb: --model absent.gguf: no such file or directory")
    run("query", db, "-q", expect=2)
    run("query", db, "--q", "x.st", "--layer", "4", "-n", "3", expect=2,
        err="msadb: query: --max-tokens applies to a question, not to query vectors (--q)\n"
            "usage: msadb query ... (run 'msadb help query')")


def test_pre_tokenizer():
    """A llama GGUF whose only problem is its pre-tokenizer."""
    # (a small llama model whose tokenizer names GPT-2 BPE with llama-bpe's
    # pre-tokenizer: everything else about it loads)
    maker = ("import sys; sys.path.insert(0, sys.argv[1]); from memmodel import gguf, make_test_model as m\n"
             "def bpe(w, pieces, scores, types, add_space_prefix=None):\n"
             "    w.add_string('tokenizer.ggml.model', 'gpt2')\n"
             "    w.add_string('tokenizer.ggml.pre', 'llama-bpe')\n"
             "    w.add_array('tokenizer.ggml.tokens', pieces, gguf.T_STRING)\n"
             "    w.add_array('tokenizer.ggml.token_type', types, gguf.T_INT32)\n"
             "    w.add_array('tokenizer.ggml.merges', [], gguf.T_STRING)\n"
             "gguf.add_spm_tokenizer = bpe\n"
             "sys.exit(m.main(sys.argv[2:]))\n")
    r = subprocess.run(["/usr/bin/python3", "-c", maker, os.path.join(ROOT, "tools"), p("bpe.gguf"),
                        "--layers", "2", "--heads", "2", "--kv-heads", "1", "--head-dim", "8",
                        "--ffn", "16"], capture_output=True, text=True)
    check(r.returncode == 0, f"writing bpe.gguf: {r.stderr}")
    run("init", "bpe", "-m", "bpe.gguf", expect=1,
        err="msadb: --model bpe.gguf: its pre-tokenizer 'llama-bpe' (tokenizer.ggml.pre) is not "
            "implemented: only GPT-2's ('default', 'gpt-2') is; the rest of the model is supported")


def test_doctor():
    """doctor: what is installed; a bad MSADB_MODEL is reported."""
    d = jrun("doctor", "-m", MODEL)
    check(d["model"]["loads"] and d["model"]["shape"]["layers"] > 0 and d["runtime"] and
          d["format_version"] >= 1 and d["blas_threads"] >= 1 and os.path.exists(d["library"]),
          f"doctor: {d}")
    # the products path, against the CPU flags the kernel reports (/proc/cpuinfo): AMX
    # tiles where it has AMX-BF16 and AMX-TILE, else the AVX512-BF16 kernel, else f32;
    # MSADB_MODEL_AMX=0 and MSADB_MODEL_F32=1 step down
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    bf16 = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"} <= flags
    amx = bf16 and {"amx_bf16", "amx_tile"} <= flags
    for env, want in (({}, "bf16-amx" if amx else "bf16-avx512" if bf16 else "f32"),
                      ({"MSADB_MODEL_AMX": "0"}, "bf16-avx512" if bf16 else "f32"),
                      ({"MSADB_MODEL_F32": "1"}, "f32")):
        got = jrun("doctor", "-m", MODEL, env=env)["model"].get("products")
        check(got == want, f"doctor with {env}: products {got}, the CPU flags say {want}")
    out = run("doctor", "-m", MODEL, env={"MSADB_MODEL_F32": "1"}).stdout
    check(any(l.split()[:3] == ["model", "products", "f32"] for l in out.splitlines()),
          f"doctor's table names the products path: {out}")
    open(p("doctor.png"), "wb").write(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    d = jrun("doctor", expect=1, env={"MSADB_MODEL": p("doctor.png")})
    check(not d["model"]["loads"] and d["model"]["from"] == "MSADB_MODEL" and
          "not a GGUF file" in d["model"]["error"], f"doctor with a bad model: {d}")


def main():
    fx = Fixture()
    for case in (test_bound_model, test_other_model, test_model_env, test_search, test_abstain,
                 test_rm_space, test_show, test_vacuum, test_messages):
        case(fx)
    test_pre_tokenizer()
    test_doctor()
    print("cli_workflow_e2e: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e}")
        sys.exit(1)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
