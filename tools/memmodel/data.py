#!/usr/bin/python3
"""memmodel.data -- the data recipe of msadb's own memory model.

Runs on the development machine (Debian; numpy and python3-sentencepiece),
never on the GPU machine, which gets only the arrays this writes.

    PYTHONPATH=tools /usr/bin/python3 -m memmodel.data all --out DIR [--seed 1234]

Steps (each also a subcommand: extract, tokenizer, build):

extract   Natural English text from Debian packages installed here, one
          document per natural unit, into DIR/text/*.txt (documents
          separated by a form feed line "\\f\\n"):
            train side (public domain or free licences):
              bible-kjv-text (+ bible-kjv to read it): King James Bible, one
                  document per chapter (the text is in the public domain);
              dict-devil: Ambrose Bierce's The Devil's Dictionary, documents
                  of consecutive entries (public domain);
              fortunes: the fortune cookie files (BSD licence);
              manpages: the Linux man-pages project, sections 1, 4, 5, 7,
                  rendered with man(1) at 80 columns (free licences: GPL,
                  BSD, "Linux man-pages copyleft").
            held-out side (evaluation only; never trained on, never shipped):
              dict-gcide: The Collaborative International Dictionary of
                  English (GPL), documents of consecutive entries (~700
                  characters), the
                  haystack of the needle-in-a-haystack evaluation.
tokenizer SentencePiece BPE (python3-sentencepiece's trainer) on the train
          side: vocabulary 8192, byte_fallback, split_digits, identity
          normalization, dummy prefix, no whitespace squeezing -- the options
          msadb's C tokenizer implements (docs/tokenizer.md).  Written to
          models/msadb-mem.tokenizer.model (and DIR).
build     DIR/train_lm.u16 / val_lm.u16: the train-side documents tokenized
          (no BOS) and concatenated with a blank line between documents;
          2% of documents (by a seeded draw) go to validation.
          DIR/facts_train.npz: synthetic memory tasks on TRAIN vocabularies
          (entity nouns, person names, cities, numbers: disjoint from the
          held-out ones, see Vocab); DIR/eval_*.npz: the evaluation sets
          (held-out vocabularies, dict-gcide haystack).

Memory tasks.  A fact is one sentence ("The password of the amber lockbox
is 7314."); a question asks for its value ("What is the password of the
amber lockbox?"), the exact answer is the value.  Kinds: code (4-digit
numbers of objects), lives (person -> city), pet (person -> pet name),
room (object -> 3-digit room), roomcode (room -> 4-digit code), and the
multi-hop question joining the last two ("What is the code of the room where
the amber lockbox is kept?").  Every kind has several fact and question
templates; build --composed adds composed forms and open vocabularies, and
--written SHARE draws that share of the facts and questions from forms
written apart from all the others (tools/memmodel/forms_written.json,
loaded through the held-out rules by written_forms), --written-multihop
SHARE that share of the multi-hop questions, and --composed-multihop SHARE
that share of the others from the composed multi-hop forms
(composed_multihop_forms).
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOKENIZER_PATH = os.path.join(ROOT, "models", "msadb-mem.tokenizer.model")
VOCAB = 8192

# --------------------------------------------------------------------------
# Natural text
# --------------------------------------------------------------------------


def _write_docs(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            d = d.strip("\n")
            if d.strip():
                f.write(d.replace("\f", " ") + "\n\f\n")


def read_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d.strip("\n") for d in f.read().split("\n\f\n") if d.strip()]


def extract_bible():
    out = subprocess.run(["bible", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                         check=True, env=dict(os.environ, COLUMNS="100000")).stdout
    docs, cur = [], []
    for line in out.split("\n"):
        if re.match(r"^(\d )?[A-Z][A-Za-z ]+ \d+$", line.strip()) and not line.startswith(" "):
            if cur:
                docs.append(" ".join(cur))
            cur = [line.strip() + "."]
            continue
        m = re.match(r"^\s+\d+ (.*)$", line)
        if m:
            cur.append(m.group(1).strip())
        elif line.strip() and cur:
            cur[-1] += " " + line.strip()
    if cur:
        docs.append(" ".join(cur))
    return docs


def _dictd_entries(path):
    raw = subprocess.run(["zcat", path], capture_output=True, check=True).stdout
    text = raw.decode("utf-8", "replace")
    return text


def extract_devil():
    text = _dictd_entries("/usr/share/dictd/devil.dict.dz")
    # drop the dictd header entries (00-database-*)
    i = text.find("\nA, n.")
    if i > 0:
        text = text[i:]
    paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    return _group(paras, 1500)


def _dictd_docs(path, chars=1500):
    """A dictd dictionary's entries grouped into documents, without the
    database header and licence paragraphs."""
    paras = [p for p in re.split(r"\n\s*\n", _dictd_entries(path)) if p.strip()]
    skip = ("00-database", "original data", "Permission is granted", "Copyright ",
            "public domain", "restrictions are claimed")
    return _group([p for p in paras if not any(k in p for k in skip)], chars)


def extract_foldoc():
    return _dictd_docs("/usr/share/dictd/foldoc.dict.dz")


def extract_jargon():
    return _dictd_docs("/usr/share/dictd/jargon.dict.dz")


def _group(paras, chars):
    """Consecutive paragraphs grouped into documents of about `chars`."""
    docs, cur, n = [], [], 0
    for p in paras:
        p = p.rstrip()
        cur.append(p)
        n += len(p)
        if n >= chars:
            docs.append("\n\n".join(cur))
            cur, n = [], 0
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def extract_fortunes():
    d = "/usr/share/games/fortunes"
    docs = []
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if name.endswith((".dat", ".u8")) or os.path.islink(p) or not os.path.isfile(p):
            continue
        if name in ("art", "ascii-art"):
            continue
        with open(p, encoding="utf-8", errors="replace") as f:
            items = [x.strip("\n") for x in f.read().split("\n%\n") if x.strip()]
        docs += _group(items, 1200)
    return docs


def extract_manpages():
    files = subprocess.run(["dpkg", "-L", "manpages", "manpages-dev"], capture_output=True, text=True,
                           check=True).stdout.split()
    files = sorted(f for f in files if re.search(r"/man/man[1-7]/[^/]+\.gz$", f)
                   and os.path.isfile(f) and not os.path.islink(f))
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    docs = []
    # two at a time (the machine has two cores)
    procs = []
    for f in files + [None, None]:
        if f is not None:
            procs.append(subprocess.Popen(
                "man --nh --nj -l %s 2>/dev/null | col -bx" % f, shell=True, env=env,
                stdout=subprocess.PIPE))
        if len(procs) >= 2 or f is None:
            while procs:
                p = procs.pop(0)
                out = p.communicate()[0].decode("utf-8", "replace")
                out = re.sub(r"\n{3,}", "\n\n", out).strip()
                if len(out) > 200:
                    docs += _group([x for x in out.split("\n\n")], 2000)
    return docs


def extract_gcide():
    text = _dictd_entries("/usr/share/dictd/gcide.dict.dz")
    i = text.find("\nA\n")
    text = text[i:] if i > 0 else text
    paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    # skip the licence and header paragraphs that each letter file repeats
    paras = [p for p in paras if "GNU General Public" not in p and "* * *" not in p]
    # ~700 characters (~350 tokens: dictionary text is ~2 characters a token)
    return _group(paras, 700)


SOURCES_TRAIN = {"bible-kjv-text": extract_bible, "dict-devil": extract_devil,
                 "fortunes": extract_fortunes, "manpages": extract_manpages}
# dictionary text of another style, from run 6 on (memmodel.data build --more-text;
# the held-out haystack is a dictionary too, and never trained on)
SOURCES_MORE = {"dict-foldoc": extract_foldoc, "dict-jargon": extract_jargon}
SOURCES_HELD = {"dict-gcide": extract_gcide}


def cmd_extract(args):
    os.makedirs(os.path.join(args.out, "text"), exist_ok=True)
    stats = {}
    more = list(SOURCES_MORE.items()) if args.more_text else []
    for name, fn in list(SOURCES_TRAIN.items()) + more + list(SOURCES_HELD.items()):
        docs = fn()
        _write_docs(os.path.join(args.out, "text", name + ".txt"), docs)
        stats[name] = {"docs": len(docs), "chars": sum(len(d) for d in docs)}
        print("extract %-15s %6d docs %10d chars" % (name, len(docs), stats[name]["chars"]),
              flush=True)
    with open(os.path.join(args.out, "text", "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

def cmd_tokenizer(args):
    import sentencepiece as spm
    rng = np.random.default_rng(args.seed)
    lines = []
    for name in SOURCES_TRAIN:
        for d in read_docs(os.path.join(args.out, "text", name + ".txt")):
            lines += [x for x in d.split("\n") if x.strip()]
    # plus fact sentences so that template words get pieces (train vocab only)
    g = FactGen(args.seed + 7, "train")
    for _ in range(20000):
        ex = g.example()
        lines += ex["facts"] + [ex["question"] + " " + ex["answer"]]
    rng.shuffle(lines)
    inp = os.path.join(args.out, "spm_input.txt")
    with open(inp, "w", encoding="utf-8") as f:
        for x in lines:
            f.write(x.replace("\r", " ") + "\n")
    prefix = os.path.join(args.out, "spm")
    spm.SentencePieceTrainer.train(
        input=inp, model_prefix=prefix, model_type="bpe", vocab_size=VOCAB,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, split_by_whitespace=True,
        character_coverage=0.9995, input_sentence_size=2000000, shuffle_input_sentence=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, seed_sentencepiece_size=1000000,
        num_threads=2, minloglevel=1, max_sentence_length=8192)
    os.makedirs(os.path.dirname(TOKENIZER_PATH), exist_ok=True)
    with open(prefix + ".model", "rb") as a, open(TOKENIZER_PATH, "wb") as b:
        b.write(a.read())
    print("tokenizer ->", TOKENIZER_PATH)


def load_sp(path=TOKENIZER_PATH):
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=path)


# --------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------

def _h(s):
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little")


def _split(items, side, salt):
    """Deterministic disjoint split: ~1/4 of items are held out."""
    held = [x for x in items if _h(salt + x) % 4 == 0]
    train = [x for x in items if _h(salt + x) % 4 != 0]
    return train if side == "train" else held


ADJ = ("red green blue yellow black white orange purple brown gray pink silver golden copper "
       "bronze violet crimson scarlet navy olive amber teal indigo ivory maroon turquoise "
       "lavender beige coral magenta wooden iron steel glass stone brass marble oak pine "
       "leather granite cedar walnut tin velvet bamboo rusty dusty tiny huge old new narrow "
       "wide round square heavy hidden northern southern eastern western upper lower").split()
FIRST = ("James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William "
         "Barbara Richard Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Nancy "
         "Matthew Lisa Anthony Betty Mark Margaret Donald Sandra Steven Ashley Paul Kimberly "
         "Andrew Emily Joshua Donna Kenneth Michelle Kevin Carol Brian Amanda George Melissa "
         "Timothy Deborah Ronald Stephanie Edward Rebecca Jason Sharon Jeffrey Laura Ryan "
         "Cynthia Jacob Kathleen Gary Amy Nicholas Angela Eric Shirley Jonathan Anna Stephen "
         "Brenda Larry Pamela Justin Emma Scott Nicole Brandon Helen Benjamin Samantha Samuel "
         "Katherine Gregory Christine Frank Debra Alexander Rachel Raymond Carolyn Patrick "
         "Janet Jack Catherine Dennis Maria Jerry Heather Tyler Diane Aaron Ruth Jose Julie "
         "Adam Olivia Henry Joyce Nathan Virginia Douglas Victoria Zachary Kelly Peter Lauren "
         "Kyle Christina Ethan Joan Walter Evelyn Noah Judith Jeremy Megan Christian Andrea "
         "Keith Cheryl Roger Hannah Terry Jacqueline Gerald Martha Harold Gloria Sean Teresa "
         "Austin Ann Carl Sara Arthur Madison Lawrence Frances Dylan Kathryn Jesse Janice "
         "Jordan Jean Bryan Abigail Billy Alice Joe Julia Bruce Judy Gabriel Sophia Logan "
         "Grace Albert Denise Willie Amber Alan Doris Juan Marilyn Wayne Danielle Elijah "
         "Beverly Randy Isabella Roy Theresa Vincent Diana Ralph Natalie Eugene Brittany "
         "Russell Charlotte Bobby Marie Mason Kayla Philip Alexis Louis Lori").split()
ANIMALS = "cat dog parrot horse rabbit goldfish turtle hamster pony goat canary ferret".split()
CODE_ATTRS = ["password", "code", "combination", "PIN", "access code", "serial number",
              "lock number", "key number"]
ROOM_ATTRS = ["door code", "access code", "alarm code", "code"]


def _words():
    with open("/usr/share/dict/words", encoding="utf-8", errors="replace") as f:
        ws = [w.strip() for w in f]
    lower = sorted({w for w in ws if re.fullmatch(r"[a-z]{4,10}", w)})
    proper = sorted({w for w in ws if re.fullmatch(r"[A-Z][a-z]{3,9}", w)})
    return lower, proper


class Vocab:
    """Entity and value vocabularies of one side ("train" or "held"); the
    two sides share no noun, first name, proper noun, number or room."""

    _cache = {}

    def __init__(self, side):
        if side not in Vocab._cache:
            lower, proper = _words()
            Vocab._cache[side] = {
                "adj": ADJ,
                "noun": _split(lower, side, "noun"),
                "first": _split(FIRST, side, "first"),
                "proper": _split(proper, side, "proper"),
                "code": _split(["%04d" % n for n in range(1000, 10000)], side, "code"),
                "room": _split(["%03d" % n for n in range(100, 1000)], side, "room"),
            }
        self.__dict__.update(Vocab._cache[side])


FACT_T = {
    "code": ["The {attr} of {ent} is {val}.", "{Ent}'s {attr} is {val}.",
             "The {attr} for {ent} is {val}.", "Remember that the {attr} of {ent} is {val}.",
             "For {ent}, the {attr} is {val}.", "Note: {ent} has the {attr} {val}."],
    "lives": ["{per} lives in {val}.", "{per} has lived in {val} for years.",
              "{per} moved to {val} and lives there now.", "The home of {per} is in {val}."],
    "pet": ["{per} has a {animal} named {val}.", "{per}'s {animal} is called {val}.",
            "The {animal} of {per} is named {val}."],
    "room": ["{Ent} is kept in room {val}.", "{Ent} is stored in room {val}.",
             "You will find {ent} in room {val}."],
    "roomcode": ["The {attr} of room {room} is {val}.", "Room {room} has the {attr} {val}.",
                 "The {attr} for room {room} is {val}."],
}
QUESTION_T = {
    "code": ["What is the {attr} of {ent}?", "What is the {attr} for {ent}?",
             "Which {attr} does {ent} have?"],
    "lives": ["Where does {per} live?", "In which city does {per} live?"],
    "pet": ["What is the name of {per}'s {animal}?", "What is {per}'s {animal} called?"],
    "room": ["In which room is {ent} kept?", "Which room is {ent} kept in?"],
    "roomcode": ["What is the {attr} of room {room}?", "What is the {attr} for room {room}?"],
    "multihop": ["What is the {attr} of the room where {ent} is kept?",
                 "Which {attr} opens the room where {ent} is kept?"],
}


def _cap(s):
    return s[0].upper() + s[1:]

# --------------------------------------------------------------------------
# Held-out splits of the held-out evaluation (memmodel.heldout).  Never drawn
# by a training generator: slot vocabularies (adjectives, animals, attributes)
# disjoint from the training lists above, and fact and question forms no
# training template or composed form produces (checked by heldout_forms()).
# --------------------------------------------------------------------------

HELD_ADJ = ("mossy frosted lacquered speckled striped dented polished faded gilded enamel "
            "chrome ebony jade pearl rosewood mahogany birch maple slate cobalt saffron "
            "mustard lilac peach cream charcoal tawny russet plaid checkered dotted fuzzy "
            "shiny glossy matte cracked battered sturdy flimsy slim bulky compact folding "
            "portable antique vintage modern rustic ornate plain painted carved woven knitted "
            "padded quilted frozen misty sunny breezy humble proud quiet noisy").split()
HELD_ANIMALS = "lizard owl hedgehog gecko iguana raven donkey tortoise budgie newt".split()
HELD_CODE_ATTRS = ["security code", "entry code", "unlock code", "safe number"]
HELD_ROOM_ATTRS = ["entry code", "keypad code", "lock code"]
# facts written as ordinary sentences (the value anywhere in them)
HELD_FACT_T = {
    "code": ["Nobody had touched {ent} in weeks, and its {attr} was still {val}, scratched "
             "faintly on the side.",
             "When the inventory was taken last winter, the clerk wrote down {val} as the "
             "{attr} of {ent}.",
             "Mind that {ent} only opens with the {attr} {val}, so keep it handy.",
             "We finally learned that {val} is the {attr} protecting {ent}."],
    "lives": ["Last spring {per} finally moved to {val}, where the family still lives.",
              "These days {per} makes a home in {val}, not far from the river.",
              "If you are ever in {val}, drop by and see {per}, who has settled there for good.",
              "{per} grew up elsewhere but has long since put down roots in {val}."],
    "pet": ["Every morning {per} walks a {animal} called {val} around the block.",
            "The {animal} that {per} adopted last year answers to the name {val}.",
            "{val}, a cheerful {animal}, belongs to {per} and sleeps by the stove.",
            "Ask {per} about {val} and you will hear endless stories about that {animal}."],
    "room": ["To keep it safe, they moved {ent} into room {val} at the end of the hall.",
             "Anyone looking for {ent} should go straight to room {val}.",
             "Room {val} is where {ent} ended up after the renovation."],
    "roomcode": ["The staff punch in {val} as the {attr} whenever they need to enter room {room}.",
                 "Keep this quiet: room {room} opens with the {attr} {val}.",
                 "Since the lock was replaced, {val} has been the {attr} of room {room}."],
}
# question wordings no training form produces: other interrogatives, imperatives
HELD_QUESTION_T = {
    "code": ["Tell me the {attr} of {ent}.", "I need the {attr} for {ent}. What is it?",
             "Do you know the {attr} that goes with {ent}?", "Give the {attr} belonging to {ent}."],
    "lives": ["Which city is home to {per}?", "Tell me where {per} lives.",
              "Name the city where {per} has settled.", "What town does {per} call home?"],
    "pet": ["Tell me the name of {per}'s {animal}.", "What did {per} name the {animal}?",
            "Give me the name of the {animal} that {per} owns.",
            "What name does {per}'s {animal} answer to?"],
    "room": ["Tell me which room {ent} is kept in.", "Where is {ent} kept? Give the room number.",
             "What is the room number of {ent}?", "Name the room holding {ent}."],
    "roomcode": ["Tell me the {attr} of room {room}.", "Give me the {attr} for room {room}.",
                 "I need the {attr} for room {room}.", "Which {attr} opens room {room}?"],
    # two hops (the room of {ent}, then that room's {attr}); written after training
    # runs 1-13 and checked then: no training question form shares four words with them
    "multihop": ["Which {attr} guards the chamber that {ent} was locked away in?",
                 "Supply the {attr} belonging to whatever room stores {ent}.",
                 "{Ent} was put away somewhere. Which {attr} works on that door?",
                 "My errand is to collect {ent}; what {attr} does its room take?",
                 "Report the {attr} assigned to the room sheltering {ent}.",
                 "Which {attr} will get someone through to {ent}?"],
}
# later held-out two-hop wordings (cell mh_new of memmodel.heldout): twelve
# written on 2026-12-07 by a writer who saw no form of this file, after run
# 16's training data was built; the seven kept share no four words in a row
# with a training multi-hop form (heldout_clash checks), the five that did
# were dropped unchanged
HELD_MH_NEW = [
    "I need to grab {ent} — what {attr} do I tap in to get into wherever it's stored?",
    "Tell me the {attr} for the space that houses {ent}.",
    "Could you kindly provide the {attr} required to access the chamber containing {ent}?",
    "whats the {attr} for wherever {ent} lives",
    "To retrieve {ent}, which {attr} must be keyed in at the door?",
    "Give me the {attr} I'd need to unlock the storeroom holding {ent}.",
    "The {attr} securing whichever study {ent} resides in — what is it?",
]
# fresh held-out two-hop wordings (cell mh_fresh of memmodel.heldout): twelve
# written on 2026-12-07 (late) by a writer who saw no file of this project,
# before run 19's training data was built and without knowing how any model
# answers them; the ten kept share no four words in a row with a training
# multi-hop form (heldout_clash), the two that did were dropped unchanged.
# No training choice was made with their figures in view.
HELD_MH_FRESH = [
    "{Ent} is locked in some locker, so what's the {attr} to open it",
    "need the {attr} for the place {ent} is in pls",
    "Please provide the {attr} of the storage unit in which {ent} is held.",
    "Where's {ent} kept? And what's the {attr} on that door?",
    "{Ent}: which vault is it in, and what's the {attr} for that vault?",
    "Tell me the {attr} of the bay where {ent} is kept",
    "I'm trying to get to {ent}. What's the {attr} for the room it's in?",
    "room with {ent} in it, {attr}?",
    "Hey, quick one: that door you go through to reach {ent}, remind me of its {attr}",
    "Which compartment is {ent} kept in, and what is its {attr}",
]
# the answer to a question whose fact is not in memory
ABSTAIN = "not in memory"
# A multi-hop question asked with no first-hop document in the context is
# trained (memmodel.train --mh-followup) to answer with this prefix and the
# second hop as its own question, which the runtime then asks from memory
# (GGUF msadb.followup; msadb_ask_params.followups).  The question is the
# first training form of a room code question, so the runtime asks what
# training reads best.
FOLLOWUP = "ask:"
FOLLOWUP_Q = "What is the {attr} of room {room}?"


def followup_answer(attr, room):
    """The answer of a multi-hop question whose first hop is read from memory."""
    return FOLLOWUP + " " + FOLLOWUP_Q.format(attr=attr, room=room)
HELD_SLOTS = {"adj": HELD_ADJ, "animal": HELD_ANIMALS, "code_attr": HELD_CODE_ATTRS,
              "room_attr": HELD_ROOM_ATTRS}
TRAIN_SLOTS = {"adj": ADJ, "animal": ANIMALS, "code_attr": CODE_ATTRS, "room_attr": ROOM_ATTRS}


ONSETS = ("b c d f g h j k l m n p r s t v w z br ch cl dr fl gr kr pl pr sh st th tr "
          "").split(" ")
VOWELS = "a e i o u a e i o ai ea ou".split()
CODAS = ("", "", "", "n", "r", "l", "s", "m", "nd", "rt", "st", "x", "th")
KIND_WEIGHTS = {"code": 2, "lives": 1, "pet": 1, "room": 1, "roomcode": 1, "multihop": 2}


class FactGen:
    """Seeded generator of facts and questions for one side's vocabulary.

    synthetic: the fraction of proper nouns (surnames, cities, pet names)
    made of random syllables instead of drawn from the word list, on the
    train side only: a name never seen before cannot be recalled from the
    weights, only copied from memory, which is what the held-out evaluation
    asks.  kind_weights: relative frequency of each kind of example."""

    def __init__(self, seed, side, synthetic=0.0, kind_weights=None, slots=None,
                 fact_t=None, question_t=None):
        """slots: the adjective, animal and attribute lists (TRAIN_SLOTS, or
        HELD_SLOTS for the held-out evaluation); fact_t, question_t: the
        forms of each kind (FACT_T, QUESTION_T by default)."""
        self.rng = np.random.default_rng(seed)
        self.v = Vocab(side)
        self.slots = slots or TRAIN_SLOTS
        self.fact_t, self.question_t = fact_t or FACT_T, question_t or QUESTION_T
        if synthetic and side != "train":
            raise ValueError("synthetic names are for the train side only")
        self.synthetic = synthetic
        self.kw = kind_weights or KIND_WEIGHTS
        self._avoid = None

    def synthetic_name(self):
        """A capitalized word of 2-3 random syllables, 4-10 letters, that is
        not a word of /usr/share/dict/words (so never a held-out name)."""
        if self._avoid is None:
            lower, proper = _words()
            self._avoid = set(lower) | {w.lower() for w in proper}
        while True:
            w = "".join(self._pick(ONSETS) + self._pick(VOWELS) + self._pick(CODAS)
                        for _ in range(int(self.rng.integers(2, 4))))
            if 4 <= len(w) <= 10 and w not in self._avoid:
                return w.capitalize()

    def proper(self):
        if self.synthetic and self.rng.random() < self.synthetic:
            return self.synthetic_name()
        return self._pick(self.v.proper)

    def _pick(self, xs):
        return xs[int(self.rng.integers(len(xs)))]

    def entity(self):
        return "the %s %s" % (self._pick(self.slots["adj"]), self._pick(self.v.noun))

    def person(self):
        return "%s %s" % (self._pick(self.v.first), self.proper())

    def fact(self, kind, forms=None, **kw):
        """One fact: dict(kind, key, text, prefix (text before the value),
        val, question, answer); forms: the fact forms to draw from (the
        kind's own by default)."""
        r = self._pick
        d = dict(kw)
        if kind in ("code",):
            d.setdefault("ent", self.entity())
            d.setdefault("attr", r(self.slots["code_attr"]))
            d.setdefault("val", r(self.v.code))
            key = "code|%s|%s" % (d["ent"], d["attr"])
        elif kind == "lives":
            d.setdefault("per", self.person())
            d.setdefault("val", self.proper())
            key = "lives|" + d["per"]
        elif kind == "pet":
            d.setdefault("per", self.person())
            d.setdefault("animal", r(self.slots["animal"]))
            d.setdefault("val", self.proper())
            key = "pet|%s|%s" % (d["per"], d["animal"])
        elif kind == "room":
            d.setdefault("ent", self.entity())
            d.setdefault("val", r(self.v.room))
            key = "room|" + d["ent"]
        elif kind == "roomcode":
            d.setdefault("room", r(self.v.room))
            d.setdefault("attr", r(self.slots["room_attr"]))
            d.setdefault("val", r(self.v.code))
            key = "roomcode|%s|%s" % (d["room"], d["attr"])
        else:
            raise ValueError(kind)
        if "ent" in d:
            d["Ent"] = _cap(d["ent"])
        t = r(forms or self.fact_t[kind])
        text = t.format(**d)
        prefix = t[:t.index("{val}")].format(**d).rstrip()
        q = r(self.question_t[kind]).format(**d)
        return {"kind": kind, "key": key, "text": text, "prefix": prefix, "val": d["val"],
                "question": q, "answer": d["val"], "d": d}

    def example(self, kind=None):
        """A question with the facts it needs: dict(facts [texts], prefixes,
        vals, question, answer, keys, hops)."""
        kind = kind or self._pick([k for k, n in self.kw.items() for _ in range(n)])
        if kind == "multihop":
            a = self.fact("room")
            b = self.fact("roomcode", room=a["val"])
            self._hops = (a, b)
            q = self._pick(QUESTION_T["multihop"]).format(attr=b["d"]["attr"], ent=a["d"]["ent"])
            fs = [a, b]
            return {"facts": [f["text"] for f in fs], "prefixes": [f["prefix"] for f in fs],
                    "vals": [f["val"] for f in fs], "keys": [f["key"] for f in fs] + ["room#" + a["val"]],
                    "question": q, "answer": b["val"], "kind": "multihop",
                    "followup": followup_answer(b["d"]["attr"], a["val"])}
        f = self.fact(kind)
        keys = [f["key"]]
        if kind == "room":
            keys.append("room#" + f["val"])
        if kind == "roomcode":
            keys.append("room#" + f["d"]["room"])
        return {"facts": [f["text"]], "prefixes": [f["prefix"]], "vals": [f["val"]],
                "keys": keys, "question": f["question"], "answer": f["answer"], "kind": kind}



# --------------------------------------------------------------------------
# Composed forms (training for generalization: memmodel.data build --composed)
# --------------------------------------------------------------------------
# A fact is a lead clause + a core clause in one of several word orders + a
# trailing clause; a question one of several frames around a noun phrase or
# a kind's own question.  Open slot vocabularies: modifiers and attribute
# words from the train side of the word list, synthetic first names.  None of
# the HELD_* forms or slot words is produced (heldout_clash() checks).

LEADS = ["", "", "", "Remember that ", "Note that ", "For the record, ", "According to the notes, ",
         "As it turns out, ", "By the way, ", "It is worth knowing that ", "Everyone agrees that ",
         "The manager said that ", "Years ago it was decided that ",
         "In the old ledger it says that ", "Just so you know, ", "Oddly enough, ",
         "After a long day we found out that ", "The letter explained that ",
         "Somebody mentioned that ", "It was written on the board that "]
TRAILS = ["", "", "", ", as far as anyone knows", ", according to the records",
          ", which surprised nobody", ", and that has not changed", " since last year",
          ", or so we were told", " these days", ", at least for now", ", believe it or not",
          " according to the caretaker", ", as the notice says"]
CORES = {
    "code": ["the {attr} of {ent} is {val}", "{ent}'s {attr} is {val}",
             "the {attr} for {ent} is {val}", "{val} is the {attr} of {ent}",
             "{ent} has the {attr} {val}", "the {attr} assigned to {ent} is {val}",
             "{ent} uses the {attr} {val}", "the {attr} on {ent} was set to {val}",
             "{ent} can be opened with the {attr} {val}", "{val} is what the {attr} of {ent} is"],
    "lives": ["{per} lives in {val}", "{per} has lived in {val} for years",
              "{per} moved to {val} and lives there now", "the home of {per} is in {val}",
              "{per} resides in {val}", "{per} is living in {val}", "{val} is where {per} lives",
              "{per} settled in {val} long ago", "{per} now lives in the city of {val}",
              "{per} rents a flat in {val}"],
    "pet": ["{per} has a {animal} named {val}", "{per}'s {animal} is called {val}",
            "the {animal} of {per} is named {val}", "{per} owns a {animal} called {val}",
            "{val} is the name of {per}'s {animal}", "{per} keeps a {animal} by the name of {val}",
            "{per} takes care of a {animal} named {val}", "a {animal} named {val} lives with {per}"],
    "room": ["{ent} is kept in room {val}", "{ent} is stored in room {val}",
             "you will find {ent} in room {val}", "{ent} sits in room {val}",
             "room {val} holds {ent}", "{ent} was placed in room {val}",
             "{ent} belongs in room {val}", "{ent} is locked away in room {val}"],
    "roomcode": ["the {attr} of room {room} is {val}", "room {room} has the {attr} {val}",
                 "the {attr} for room {room} is {val}", "{val} is the {attr} of room {room}",
                 "room {room} uses the {attr} {val}", "to enter room {room}, use the {attr} {val}"],
}
# noun phrases naming the asked value, and the frames around them
PHRASES = {
    "code": ["the {attr} of {ent}", "the {attr} for {ent}", "{ent}'s {attr}",
             "the {attr} assigned to {ent}"],
    "pet": ["the name of {per}'s {animal}", "the name of the {animal} belonging to {per}"],
    "room": ["the room where {ent} is kept", "the room that holds {ent}"],
    "roomcode": ["the {attr} of room {room}", "the {attr} for room {room}"],
}
FRAMES = ["What is {X}?", "What's {X}?", "What was {X}?", "Do you remember {X}?",
          "Please recall {X}.", "Remind me of {X}.", "Look up {X}.", "I am looking for {X}.",
          "Can you find {X}?", "Could you look up {X}?", "{X}: what is it?", "Recall {X}, please."]
OWN_Q = {
    "code": ["Which {attr} does {ent} have?", "What {attr} does {ent} use?"],
    "lives": ["Where does {per} live?", "In which city does {per} live?",
              "Where is {per} living these days?", "What city does {per} live in?",
              "Where has {per} been living?", "Do you remember where {per} lives?",
              "Please recall where {per} lives.", "Remind me where {per} lives.",
              "In what city is {per}'s home?", "Look up where {per} lives."],
    "pet": ["What is {per}'s {animal} called?", "What is the {animal} of {per} called?",
            "What is the name of {per}'s {animal}?", "Remind me what {per}'s {animal} is called."],
    "room": ["In which room is {ent} kept?", "Which room is {ent} kept in?",
             "In what room is {ent} stored?", "Where is {ent} stored?",
             "Which room holds {ent}?"],
    "roomcode": ["What is the {attr} of room {room}?", "Which {attr} does room {room} have?"],
}


def composed_forms(kind):
    """(fact forms, question forms) of a kind, every combination."""
    facts = _sentences(CORES[kind], LEADS, TRAILS)
    qs = list(OWN_Q[kind]) + [fr.replace("{X}", ph) if not fr.startswith("{X}")
                              else fr.replace("{X}", _cap(ph))
                              for ph in PHRASES.get(kind, []) for fr in FRAMES]
    return sorted(set(facts)), sorted(set(qs))


# Composed multi-hop questions (memmodel.data build --composed-multihop SHARE):
# a frame x a code name's relation to a room x a room word x the way the
# entity is placed in it, with the code name and the entity at the start, in
# the middle or at the end, in one or two sentences.  Written from the
# training side only: composed_multihop_forms() leaves out a form sharing
# three consecutive plain words with a held-out mh_para wording, and
# heldout_clash() checks that no later held-out wording (HELD_MH_NEW)
# shares four with any of them.
MH_ROOMS = ["room", "office", "storeroom", "study", "workshop", "cellar", "lab", "closet",
            "hall", "annex", "suite", "ward", "pantry", "attic", "depot"]
MH_PLACED = ["where {ent} is kept", "where {ent} is stored", "where {ent} sits",
             "where {ent} can be found", "where {ent} was left", "where {ent} ended up",
             "where they keep {ent}", "where somebody left {ent}", "that holds {ent}",
             "that houses {ent}", "that contains {ent}", "that has {ent} in it",
             "with {ent} in it", "{ent} is in", "{ent} lives in", "in which {ent} lies",
             "holding {ent}", "housing {ent}", "containing {ent}", "keeping {ent}",
             "used for {ent}", "where {ent} was hidden", "where {ent} is on a shelf"]
MH_VERBS = ["opens", "unlocks", "gets me into", "lets me into", "lets you into",
            "is needed for", "is used for", "goes with", "is set on", "secures",
            "protects", "applies to", "is required for", "fits", "is on"]
MH_IMP = ["Tell me", "Give me", "Find", "Look up", "Name", "State", "Share", "Provide",
          "Show me", "Fetch", "Quote", "Recall", "Read out", "Write down", "Check"]
MH_IMP_WHICH = ["Tell me", "Find", "Look up", "Name", "State", "Check"]
MH_ASK = ["Can you tell me", "Could you find", "Do you know", "Would you look up",
          "Do you recall", "I'd like to know"]
MH_ASK_WHICH = MH_ASK + ["Any idea", "I wonder"]
MH_LEADS = ["Quick question: ", "Hi! ", "Sorry, ", "One more thing: ", "Hey, ", "Okay. ",
            "Right, ", "Please: "]
# R: the room and how the entity is placed in it; V: a verb of MH_VERBS;
# ROOM: a room word; IMP, IMPW, ASK, ASKW: an opening of the lists above
MH_FRAMES = ["What is the {attr} of R?", "What's the {attr} for R?", "The {attr} of R is what?",
             "For R, what is the {attr}?", "IMP the {attr} of R.", "ASK the {attr} of R?",
             "Which {attr} V R?", "What {attr} V R?", "CR: which {attr} V it?",
             "I need the {attr} that V R.", "IMPW which {attr} V R.", "ASKW which {attr} V R?",
             "{Ent} is stored in some ROOM. Which {attr} V that ROOM?",
             "I am after {ent}. What {attr} V the ROOM it is in?"]


# The wide frames (memmodel.data build --composed-multihop-wide, from run 18 on):
# the code name away from the room word -- tied to it by a link phrase (LINK),
# before a quantified room (WR: "whichever cellar holding {ent}"), after the
# entity's own sentence, or at the end -- so that a follow-up question copies
# the code name from wherever the question puts it.  Written from the training
# side only; a form sharing three consecutive plain words with any held-out
# multi-hop wording (mh_para's or mh_new's) is left out.
MH_LINKS = ["belonging to", "assigned to", "attached to", "linked to", "tied to", "for",
            "set for", "issued for", "that goes with", "that belongs to", "registered to"]
MH_QUANT = ["whichever", "whatever"]
# words put into a multi-hop question form before its code name (memmodel.data
# build --mh-filler, from run 19 on); none is a word of a held-out two-hop wording
MH_FILLERS = ["just", "quickly", "actually", "maybe", "again", "now", "really", "perhaps",
              "honestly", "if possible", "by any chance", "right now", "today", "also", "then",
              "exactly", "still", "truly", "soon"]
MH_FRAMES_WIDE = ["IMP the {attr} LINK R.", "IMP the {attr} LINK WR.", "ASK the {attr} LINK WR?",
                  "Which {attr} V WR?", "What is the {attr} LINK WR?", "CR uses which {attr}?",
                  "The {attr} LINK R, please.", "Which {attr} do I key in for WR?",
                  "{Ent} was stashed in some ROOM. Which {attr} does that ROOM take?",
                  "{Ent} ended up in a ROOM somewhere; what {attr} V it?",
                  "I have to pick up {ent}. What {attr} does its ROOM need?",
                  "Someone put {ent} in a ROOM. IMP the {attr} LINK that ROOM."]


def composed_multihop_forms(wide=False):
    """The composed multi-hop question forms ({attr}, {ent}, {Ent} slots), a
    list per frame of MH_FRAMES, then with wide of MH_FRAMES_WIDE
    (memmodel.data build draws a frame, then a form of it); a form sharing
    three consecutive plain words with a held-out multi-hop wording is left
    out (for the wide frames, with HELD_MH_NEW's too)."""
    held = set().union(*(_ngrams(t, 3) for t in HELD_QUESTION_T["multihop"]))
    held_new = held | set().union(*(_ngrams(t, 3) for t in HELD_MH_NEW))
    opens = {"IMPW": MH_IMP_WHICH, "IMP": MH_IMP, "ASKW": MH_ASK_WHICH, "ASK": MH_ASK}
    out = []
    for fr in MH_FRAMES + (MH_FRAMES_WIDE if wide else []):
        bad = held if fr in MH_FRAMES else held_new
        fs = [fr]
        for tok, words in opens.items():
            if re.search(r"\b%s\b" % tok, fr):
                fs = [re.sub(r"\b%s\b" % tok, w, f, count=1) for f in fs for w in words]
                break
        if "V" in fr.split():
            fs = [f.replace(" V ", " %s " % v) for f in fs for v in MH_VERBS]
        if "LINK" in fr.split():
            fs = [f.replace(" LINK ", " %s " % k) for f in fs for k in MH_LINKS]
        rooms = []
        for f in fs:
            for room in MH_ROOMS:
                g = f.replace(" ROOM", " " + room)
                if {"R", "CR", "WR"} & set(re.findall(r"\b[A-Z]+\b", g)):
                    rooms += [re.sub(r"\b[CW]?R\b", lambda m: (
                        "%s %s %s" % (q, room, pl) if m.group(0) == "WR" else
                        ("T" if m.group(0) == "CR" else "t") + "he %s %s" % (room, pl)), g, count=1)
                        for pl in MH_PLACED for q in (MH_QUANT if " WR" in g else [""])]
                else:
                    rooms.append(g)
        out.append(sorted(f for f in set(rooms) if not _ngrams(f, 3) & bad))
    return out


def heldout_clash():
    """Held-out fact and question forms that a composed, narrative (the wider
    ones too) or written training form equals, and narrative or written forms
    sharing four consecutive words with a held-out fact form (written
    questions: with a held-out question form); held-out multi-hop wordings
    sharing four consecutive words with a training multi-hop form."""
    bad = []
    held, held_q = _held_ngrams()
    wf, wq = written_forms()
    for kind in CORES:
        fs, qs = composed_forms(kind)
        ns = narrative_forms(kind, wide=True) + wf[kind]
        bad += [t for t in HELD_FACT_T[kind] if t in fs or t in ns]
        bad += [t for t in HELD_QUESTION_T[kind] if t in qs or t in wq[kind]]
        bad += [t for t in ns if _ngrams(t) & held]
        bad += [t for t in wq[kind] if _ngrams(t) & held_q]
    bad += [t for t in wq["multihop"] if _ngrams(t) & held_q]
    # held-out multi-hop wordings: no four words of a training multi-hop form
    train_mh = set().union(*(_ngrams(t) for t in QUESTION_T["multihop"] + wq["multihop"]))
    bad += [t for t in HELD_QUESTION_T["multihop"] if _ngrams(t) & train_mh]
    train_mh |= set().union(*(_ngrams(t) for f in composed_multihop_forms(wide=True) for t in f))
    bad += [t for t in HELD_MH_NEW + HELD_MH_FRESH if _ngrams(t) & train_mh]
    return bad


# Written forms (memmodel.data build --written SHARE): facts and questions
# written for training by writers who did not see the held-out forms or the
# forms above (tools/memmodel/forms_written.json: whole sentences and short
# passages, many structures and registers).  Loaded through the held-out
# rules: a form holding a held-out slot word, or sharing four consecutive
# plain words with a held-out form of its side, is left out.
WRITTEN_PATH = os.path.join(HERE, "forms_written.json")


def _held_ngrams():
    """The four-word runs of the held-out fact forms, and of the held-out
    question forms."""
    return tuple(set().union(*(_ngrams(t) for k in forms for t in forms[k]))
                 for forms in (HELD_FACT_T, HELD_QUESTION_T))


def _held_slot_words():
    """Words of the held-out slot lists that no training slot list holds."""
    held = set(HELD_ADJ) | set(HELD_ANIMALS) | {
        w for a in HELD_CODE_ATTRS + HELD_ROOM_ATTRS for w in a.split()}
    return held - {w for a in CODE_ATTRS + ROOM_ATTRS for w in a.split()}


def written_forms(path=WRITTEN_PATH):
    """({kind: fact forms}, {kind: question forms, "multihop" too}) of the written forms
    that pass the held-out rules (no held-out form, no held-out slot word,
    no four consecutive plain words shared with a held-out form of the same
    side); every fact form holds {val} once."""
    with open(path) as f:
        w = json.load(f)
    words = _held_slot_words()
    held = dict(zip(("facts", "questions"), _held_ngrams()))
    same = {t for k in HELD_FACT_T for t in HELD_FACT_T[k]} | {
        t for k in HELD_QUESTION_T for t in HELD_QUESTION_T[k]}
    out = []
    for side, kinds in (("facts", CORES), ("questions", list(CORES) + ["multihop"])):
        out.append({k: sorted(t for t in set(w[side].get(k, []))
                              if t not in same
                              and not words & set(re.findall(r"[a-z]+", t.lower()))
                              and not _ngrams(t) & held[side]
                              and (side == "questions" or t.count("{val}") == 1))
                    for k in kinds})
    return tuple(out)


# Facts written as ordinary sentences (memmodel.data build --narrative): an
# opening clause x a core clause x a closing clause, per kind, with the value
# at the start, in the middle or at the end, and facts embedded in sentences
# about something else (relative clauses, appositions).  Their wording is
# the training side's own: heldout_clash() also rejects any narrative form
# sharing four consecutive plain words with a held-out form.

N_OPEN = ["", "", "Back in the autumn, ", "After the storm, ", "Some time ago, ",
          "Once the paperwork was done, ", "On a rainy Tuesday, ", "Without telling anyone, ",
          "In the middle of the move, ", "When the auditors came, ", "Right after the holidays, ",
          "Much to everyone's relief, ", "During the big clean-up, ", "Earlier this month, "]
N_CLOSE = ["", "", " and nobody has questioned it since", ", which the neighbours confirmed",
           ", and the details are in the blue folder", " before the snow arrived",
           ", as the caretaker likes to point out", ", so there is no need to ask twice",
           " and that settled the matter", ", to the surprise of the whole street"]
N_CORE = {
    "code": ["the clerk set the {attr} of {ent} to {val}",
             "someone changed the {attr} of {ent} to {val}",
             "the {attr} of {ent} became {val}",
             "{ent} got a new {attr}, {val},",
             "the technician programmed {val} as the {attr} of {ent}",
             "{val} was chosen as the {attr} of {ent}",
             "{ent}, whose {attr} is {val}, was moved to the basement",
             "the old label on {ent} shows its {attr}: {val}",
             "we reset {ent} so that its {attr} reads {val}"],
    "lives": ["{per} packed up and relocated to {val}",
              "{per} bought a small house in {val}",
              "{per} took a job in {val} and stayed on",
              "{per} found a flat in {val}",
              "{val} became the new address of {per}",
              "{per}, who lives in {val}, sent a long letter",
              "the post for {per} now goes to {val}",
              "{per} left the coast and made {val} a permanent base",
              "it was {val} where {per} decided to settle"],
    "pet": ["{per} brought home a {animal} and named it {val}",
            "{per} adopted a {animal} that goes by {val}",
            "{per}'s new {animal}, {val}, chewed the curtains",
            "a {animal} called {val} joined the household of {per}",
            "{val} the {animal} moved in with {per}",
            "{per} named the family {animal} {val}",
            "the vet treated {val}, the {animal} that {per} looks after",
            "{per} bought a collar for a {animal} named {val}"],
    "room": ["the porters carried {ent} to room {val}",
             "{ent} was moved over to room {val}",
             "{ent} now stands in room {val}",
             "room {val} became the new place for {ent}",
             "they stored {ent}, which had been in the corridor, in room {val}",
             "{ent} ended its journey in room {val}",
             "the caretaker put {ent} away in room {val}"],
    "roomcode": ["the {attr} of room {room} was changed to {val}",
                 "the locksmith set {val} as the {attr} of room {room}",
                 "room {room} got a new {attr}, {val},",
                 "{val} became the {attr} of room {room}",
                 "the door of room {room}, whose {attr} is {val}, got a fresh coat of green",
                 "the cleaners use {val}, the {attr} of room {room}"],
}


# Wider narrative forms (memmodel.data build --narrative-wide, run 8): each
# kind's core clauses composed from subjects x predicates (the value at the
# end, in the middle, in an apposition) plus clauses that open with the value
# or with the asked noun; sentence-level openings (a sentence about something
# else before the fact) and more closings.  Same rules as the forms above:
# no held-out form, no four consecutive words shared with one, no held-out
# slot word (heldout_clash, tests/memmodel_splits.py).

W_OPEN = N_OPEN + ["Last week, ", "As the letter says, ", "To nobody's surprise, ",
                   "In the end, ", "Years later, ", "Apparently, ", "As it happens, ",
                   "Believe it or not, ", "When the year was over, ", "For a while now, ",
                   "The kettle was already boiling. ", "It rained all afternoon. ",
                   "The meeting ran late again. ", "Nobody expected the news. ",
                   "We spent the morning sorting boxes. ", "The bus was late, as usual. "]
W_CLOSE = N_CLOSE + [", as everyone in the office knows", ", or so the story goes",
                     " and that is unlikely to change", ", which made things easier",
                     ", if memory serves", " after some back and forth",
                     ", for better or worse", ", as the notes from March say"]
W_SUBJ_PER = ["{per}", "my cousin {per}", "our old friend {per}", "{per}, the new bookkeeper,",
              "{per}, a retired teacher,", "the painter {per}", "{per}, who used to sing in the choir,"]
W_PRED = {
    "lives": ["has a house in {val}", "rents an apartment in {val}", "is based in {val}",
              "calls {val} home", "has an address in {val}", "stays in {val} the whole year",
              "spends most days in {val}", "set up house in {val}", "went to live in {val}",
              "made the move to {val}", "is registered as a resident of {val}",
              "shares a flat with two students in {val}", "commutes every day from {val}",
              "owns a cottage on the edge of {val}", "has been settled in {val} since the wedding",
              "lodges with a family in {val}", "chose {val} as a place to live",
              "ended up living in {val}"],
    "pet": ["owns a {animal} named {val}", "keeps a {animal} called {val}",
            "looks after a {animal} by the name of {val}",
            "feeds a {animal} known as {val} twice a day",
            "rescued a {animal} and called it {val}", "raised a {animal} that everyone calls {val}",
            "shares the flat with a {animal} named {val}",
            "trained a {animal} called {val} to fetch the paper",
            "got a {animal} as a present and named it {val}",
            "chose the name {val} for a young {animal}",
            "is never seen without {val}, a small {animal},",
            "spoils a {animal} whose name is {val}"],
}
W_ENT_SUBJ = ["{ent}", "{ent}, the one from the attic,", "{ent}, which came from an auction,"]
W_ENT_PRED = {
    "code": ["is opened with the {attr} {val}", "takes {val} as its {attr}",
             "has {val} for its {attr}", "was given the {attr} {val}",
             "needs the {attr} {val} before it opens", "responds only to the {attr} {val}",
             "carries a label with the {attr} {val}", "was reset, and its {attr} is now {val}"],
    "room": ["is in room {val}", "was put in room {val}", "was carried up to room {val}",
             "waits in room {val}", "spends the winter in room {val}", "was left in room {val}",
             "stands in a corner of room {val}", "has been in room {val} since Monday",
             "was taken to room {val} for safekeeping", "was wheeled into room {val}"],
}
W_OTHER = {
    "lives": ["{val} is the town {per} lives in", "{val} has been the home of {per} for a decade",
              "the house that {per} rents is in {val}", "the address of {per} is in {val}",
              "letters for {per} are sent to {val}", "it is in {val} that {per} lives",
              "of all places, {per} chose {val} to live in",
              "in {val}, {per} has a small garden and a view of the hills",
              "everybody in {val} knows {per}, who lives there",
              "{per} lives in {val}, in a narrow house with a red door"],
    "pet": ["{val} is the name of the {animal} that {per} keeps",
            "the {animal} belonging to {per} is called {val}",
            "{per}'s {animal} goes by the name {val}",
            "{val}, the {animal} of {per}, slept through the storm",
            "the {animal} living with {per} is named {val}",
            "they call the {animal} of {per} {val}",
            "at home {per} has a {animal}, and its name is {val}",
            "{val} is what {per} named the {animal}"],
    "code": ["the {attr} of {ent} is {val}, written on a card in the drawer",
             "{val} is the {attr} you need for {ent}",
             "to open {ent}, type the {attr} {val}",
             "the manual gives {val} as the {attr} of {ent}",
             "a note taped to {ent} gives its {attr} as {val}",
             "whoever wants {ent} opened needs the {attr}, which is {val}",
             "the {attr} that goes with {ent} turned out to be {val}",
             "{ent} has a {attr}, and it is {val}"],
    "room": ["room {val} now holds {ent}", "if you need {ent}, look in room {val}",
             "the place for {ent} is room {val}", "in room {val} you will see {ent}",
             "the porter took {ent} to room {val} and left it there",
             "{ent} is kept on a shelf in room {val}",
             "room {val} is the one with {ent} in it",
             "we found {ent} in room {val}, behind the door"],
    "roomcode": ["room {room} opens with the {attr} {val}", "the {attr} to room {room} is {val}",
                 "to get into room {room}, type {val}, its {attr}",
                 "the {attr} of room {room} was set to {val} this morning",
                 "{val} is the {attr} that opens room {room}",
                 "room {room} has had the {attr} {val} since the spring",
                 "the door of room {room} takes the {attr} {val}",
                 "the sign beside room {room} gives the {attr} as {val}",
                 "for room {room} the {attr} is {val}, not the old one",
                 "the caretaker changed the {attr} of room {room} to {val}",
                 "room {room}, whose {attr} is {val}, is at the top of the stairs",
                 "we use {val} as the {attr} of room {room}"],
}


def wide_cores(kind):
    """The core clauses of a kind's wider narrative forms."""
    out = list(W_OTHER[kind])
    if kind in W_PRED:
        out += [s + " " + p for s in W_SUBJ_PER for p in W_PRED[kind]]
    if kind in W_ENT_PRED:
        out += [s + " " + p for s in W_ENT_SUBJ for p in W_ENT_PRED[kind]]
    return out


def narrative_forms(kind, wide=False):
    """Fact forms of a kind written as ordinary sentences, every combination
    (wide: the wider forms of run 8 as well)."""
    forms = _sentences(N_CORE[kind], N_OPEN, N_CLOSE)
    if wide:
        forms += _sentences(wide_cores(kind), W_OPEN, W_CLOSE)
    return sorted(set(forms))


def _sentences(cores, leads, trails):
    """Every lead + core + trail sentence (the core capitalized when it
    opens the sentence or follows a sentence of its own; a core's closing
    comma dropped before the trail)."""
    return [(lead + (core if lead and not lead.endswith(". ") else _cap(core))).rstrip(",")
            + trail + "." for core in cores for lead in leads for trail in trails]


def _ngrams(form, n=4):
    """Runs of n consecutive plain words of a form (slots break a run)."""
    out = set()
    for part in re.split(r"\{\w+\}", form.lower()):
        ws = re.findall(r"[a-z']+", part)
        out |= {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}
    return out


def _tune_side(form):
    """1/8 of the composed and narrative forms (by a hash) are kept for tuning
    (memmodel.data build --tune-split): training never draws them."""
    return _h("tune" + form) % 8 == 0


def _tune_word(w):
    """1/8 of the train-side slot words and numbers (by a hash) are kept for
    tuning (memmodel.data build --tune-vocab): training never draws them, so
    the tuning split sees slot words as new as the held-out ones are."""
    return _h("tunew" + w) % 8 == 0


class OpenVocab:
    """Open training vocabularies: nouns, modifiers and attribute words drawn
    from the train side of the word list, never a HELD_* word."""

    def __init__(self, v):
        held = set(HELD_ADJ) | set(HELD_ANIMALS) | {w for a in HELD_CODE_ATTRS + HELD_ROOM_ATTRS
                                                   for w in a.split()}
        self.nouns = [w for w in v.noun if w not in held]
        # first names of the open list (ComposedGen open_first): any train-side
        # proper noun but a FIRST name of either side
        self.first = [w for w in v.proper if w not in set(FIRST)]
        self.modifiers = [w for w in self.nouns if re.search(r"(y|ed|ish|ous|al|ive|ful|en|ic|ar)$", w)]
        self.attr_words = [w for w in self.nouns if len(w) <= 7]


# heads of the wide room code names of multi-hop examples (ComposedGen mh_attr):
# none a held-out slot word or a held-side noun (tests/memmodel_splits.py)
WIDE_HEADS = ["code", "number", "combination", "PIN", "passcode", "password", "key",
              "digits", "keycode"]


class ComposedGen(FactGen):
    """FactGen over composed forms and open vocabularies (train side only):
    half of the adjectives, animals and attributes come from the training
    lists, half from the open ones; a share `unans` of the examples asks for
    a fact that is not in memory (the answer ABSTAIN), most of them with a
    near miss stored instead.

    narrative: the share of facts written as ordinary sentences
    (narrative_forms; wide: the wider forms as well); near: the share of
    single-hop answerable examples that carry 2-4 near neighbours of their
    fact for the same document
    (near_facts: a room or value one digit off, the same noun with another
    adjective, the same person's other animal); split: "train" or "tune"
    draws only the forms of that side of _tune_side (None: every form);
    written: the share of facts, and independently of questions, drawn from
    the written forms (written_forms); written_mh: the share of multi-hop
    questions drawn from the written ones (a separate share, so that builds
    made before the written multi-hop forms draw the same examples);
    mh_attr: the share of multi-hop examples whose room code name is a wide
    open compound (wide_attr) instead of a training list's name half the
    time (0: builds made before it draw the same examples); composed_mh:
    the share of the multi-hop questions not drawn from the written ones
    that are composed (composed_multihop_forms, composed_mh_form);
    mh_wide_frames: draw them from MH_FRAMES_WIDE too; bare: the share of
    questions of every kind written as typed into a shell (bare_question);
    filler: the share of multi-hop forms with filler words (filler_form)."""

    def __init__(self, seed, synthetic=0.5, kind_weights=None, unans=0.12, narrative=0.0,
                 near=0.0, split=None, vocab=None, num_mix=0.0, open_first=0.0, wide=False,
                 written=0.0, written_mh=0.0, mh_attr=0.0, composed_mh=0.0, mh_wide_frames=False,
                 bare=0.0, filler=0.0):
        forms = {k: composed_forms(k) for k in CORES}
        self.bare, self.filler = bare, filler
        self.composed_mh = composed_mh
        self.cmh = composed_multihop_forms(mh_wide_frames) if composed_mh else []
        self.narr = {k: narrative_forms(k, wide) for k in CORES}
        self.written, self.written_mh = written, written_mh
        self.wf, self.wq = written_forms() if written or written_mh else ({}, {})
        if split:
            keep = (lambda t: _tune_side(t) == (split == "tune"))
            forms = {k: ([t for t in f if keep(t)], [t for t in q if keep(t)])
                     for k, (f, q) in forms.items()}
            self.narr = {k: [t for t in f if keep(t)] for k, f in self.narr.items()}
            self.wf = {k: [t for t in f if keep(t)] for k, f in self.wf.items()}
            self.wq = {k: [t for t in f if keep(t)] for k, f in self.wq.items()}
            # a small frame may have no form on one side
            self.cmh = [g for g in ([t for t in f if keep(t)] for f in self.cmh) if g]
        super().__init__(seed, "train", synthetic=synthetic, kind_weights=kind_weights,
                         fact_t={k: f for k, (f, _) in forms.items()},
                         question_t={k: q for k, (_, q) in forms.items()})
        self.open = OpenVocab(self.v)
        self.open_first = open_first
        if open_first:
            # no held-out first name in any slot of training (surnames, cities, pets)
            held_first = set(Vocab("held").first)
            self.v = types.SimpleNamespace(**dict(vars(self.v), proper=[
                w for w in self.v.proper if w not in held_first]))
        self.fixed = vocab != "tune"
        if vocab:
            self._split_vocab(vocab == "tune")
        self.unans, self.narrative, self.near, self.num_mix = unans, narrative, near, num_mix
        self.mh_attr, self._mh_wide = mh_attr, False
        self._sets = {"room": set(self.v.room), "code": set(self.v.code)}

    def _split_vocab(self, tune):
        """Keep only one side of _tune_word in every word list and number
        pool; the tuning side also leaves out the fixed training lists
        (ADJ, ANIMALS, the attributes), which earlier runs trained on."""
        side = lambda xs: [x for x in xs if _tune_word(x) == tune]
        v = self.v
        self.v = types.SimpleNamespace(adj=v.adj, noun=side(v.noun), first=side(v.first),
                                       proper=side(v.proper), code=side(v.code),
                                       room=side(v.room))
        o = self.open
        o.nouns, o.modifiers, o.attr_words = side(o.nouns), side(o.modifiers), side(o.attr_words)
        o.first = side(o.first)

    def room_number(self):
        """A room number: with probability num_mix one of another length (2
        digits, a 4-digit code as a room, 5 digits), so that numbers are
        matched digit by digit, not recognized whole."""
        if self.rng.random() >= self.num_mix:
            return self._pick(self.v.room)
        n = int(self.rng.integers(3))
        if n == 1:
            return self._pick(self.v.code)
        lo = 10 if n == 0 else 10000
        return str(int(self.rng.integers(lo, 10 * lo)))

    def entity(self):
        fixed = self.fixed and self.rng.random() < 0.5
        adj = self._pick(self.slots["adj"] if fixed else self.open.modifiers)
        return "the %s %s" % (adj, self._pick(self.open.nouns))

    def person(self):
        """A first name and a surname.  The first name comes from the open
        list (OpenVocab.first) with probability open_first; else 70% from
        the fixed list FIRST (with open_first, the tuning side takes the open
        list there too: it then draws no first name an earlier run trained
        on as one), 30% synthetic."""
        p, r = self.open_first, self.rng.random()
        if r < p:
            first = self._pick(self.open.first)
        elif r < p + (1 - p) * 0.7:
            first = self._pick(self.open.first if p and not self.fixed else self.v.first)
        else:
            first = self.synthetic_name()
        return "%s %s" % (first, self.proper())

    def wide_attr(self):
        """A wide open code name: one or two train-side words and a head of
        WIDE_HEADS ("cellar passcode", "harbor gate digits")."""
        o, words = self.open, [self._pick(self.open.attr_words)]
        if self.rng.random() < 0.3:
            words.insert(0, self._pick(o.modifiers))
        return " ".join(words + [self._pick(WIDE_HEADS)])

    def fact(self, kind, **kw):
        if kind == "roomcode" and self._mh_wide:
            kw.setdefault("attr", self.wide_attr())
        if kind == "room":
            kw.setdefault("val", self.room_number())
        elif kind == "roomcode":
            kw.setdefault("room", self.room_number())
        if self.rng.random() < 0.5 or not self.fixed:
            if kind == "pet":
                kw.setdefault("animal", self._pick(self.open.attr_words))
            elif kind in ("code", "roomcode"):
                kw.setdefault("attr", self._pick(self.open.attr_words) + " " +
                              self._pick(["code", "number", "combination", "PIN"]))
        forms = self.narr[kind] if self.narrative and self.rng.random() < self.narrative else None
        if self.written and self.rng.random() < self.written:
            forms = self.wf[kind]
        f = super().fact(kind, forms=forms, **kw)
        if self.written and self.rng.random() < self.written:
            f["question"] = self._pick(self.wq[kind]).format(**f["d"])
        self._last = f
        return f

    def example(self, kind=None):
        if self.mh_attr:
            kind = kind or self._pick([k for k, n in self.kw.items() for _ in range(n)])
            self._mh_wide = kind == "multihop" and self.rng.random() < self.mh_attr
        try:
            ex = super().example(kind)
        finally:
            self._mh_wide = False
        return self.bare_question(self._example(ex))

    def bare_question(self, ex):
        """With probability bare, the question as typed into a shell: its
        closing punctuation dropped and, half the time, its first letter in
        lower case (no draw when bare is 0, so earlier builds stay the same)."""
        if self.bare and self.rng.random() < self.bare:
            q = ex["question"].rstrip().rstrip("?.!").rstrip()
            if self.rng.random() < 0.5 and not q.startswith("I "):
                q = q[0].lower() + q[1:]
            ex["question"] = q
        return ex

    def _example(self, ex):
        if ex["kind"] == "multihop":
            if self.written_mh and self.rng.random() < self.written_mh:
                a, b = self._hops
                ex["question"] = self.filler_form(self._pick(self.wq["multihop"])).format(
                    attr=b["d"]["attr"], ent=a["d"]["ent"], Ent=a["d"]["Ent"])
            elif self.composed_mh and self.rng.random() < self.composed_mh:
                a, b = self._hops
                ex["question"] = self.filler_form(self.composed_mh_form()).format(
                    attr=b["d"]["attr"], ent=a["d"]["ent"], Ent=a["d"]["Ent"])
            return ex
        if self.rng.random() >= self.unans:
            if self.near and self.rng.random() < self.near:
                gold = self._last
                ds = self.near_facts(gold)
                ex.update({"dists": [f["text"] for f in ds],
                           "dist_prefixes": [f["prefix"] for f in ds],
                           "dist_keys": [f["key"] for f in ds]})
            return ex
        return self.unanswerable(ex["kind"])

    def filler_form(self, f):
        """With probability filler, one or two of MH_FILLERS put at a word
        boundary before the code name's slot, so that the code name is not
        found by its distance from the question's first words (no draw when
        filler is 0)."""
        if not self.filler or self.rng.random() >= self.filler or "{attr}" not in f:
            return f
        words = f.split(" ")
        at = next(i for i, w in enumerate(words) if "{attr}" in w)
        for _ in range(1 + int(self.rng.integers(2))):
            i = int(self.rng.integers(1, at + 1))
            words.insert(i, self._pick(MH_FILLERS))
            at += 1
        return " ".join(words)

    def composed_mh_form(self):
        """A composed multi-hop question form: a frame, then one of its
        forms, after an opening of MH_LEADS one time in five."""
        f = self._pick(self._pick(self.cmh))
        if self.rng.random() < 0.2:
            lead = self._pick(MH_LEADS)
            if lead.endswith(", ") and not f.startswith("I "):
                f = "{ent}" + f[5:] if f.startswith("{Ent}") else f[0].lower() + f[1:]
            f = lead + f
        return f

    def near_num(self, v, pool):
        """A number of pool ("room" or "code") one digit away from v (any
        other of the pool when none is)."""
        if v not in self._sets[pool]:  # a number of another length (num_mix)
            i = int(self.rng.integers(len(v)))
            c = self._pick([c for c in "0123456789" if c != v[i] and (i or c != "0")])
            return v[:i] + c + v[i + 1:]
        cands = [v[:i] + c + v[i + 1:] for i in range(len(v)) for c in "0123456789"
                 if c != v[i] and v[:i] + c + v[i + 1:] in self._sets[pool]]
        return self._pick(cands) if cands else self._pick(getattr(self.v, pool))

    def near_facts(self, f):
        """2-4 facts of f's kind whose keys are near f's (for the same
        document): room codes of rooms one digit away (or the same room's
        other attribute), codes of the same noun with another adjective (or
        the same object's other attribute), rooms of similar objects,
        people sharing a first name or a surname, a person's other pets;
        number values one digit away from f's."""
        rng, kind, d = self.rng, f["kind"], f["d"]
        n, out, keys = int(rng.integers(2, 5)), [], {f["key"]}
        for _ in range(4 * n):
            if len(out) >= n:
                break
            kw, other = {}, rng.random() < 0.5
            if kind == "roomcode":
                if rng.random() < 0.75:
                    kw.update(room=self.near_num(d["room"], "room"), attr=d["attr"])
                else:
                    kw["room"] = d["room"]
                kw["val"] = self.near_num(d["val"], "code")
            elif kind == "code":
                if other:
                    kw.update(ent=self.entity().rsplit(" ", 1)[0] + " " + d["ent"].split(" ")[-1],
                              attr=d["attr"])
                else:
                    kw["ent"] = d["ent"]
                kw["val"] = self.near_num(d["val"], "code")
            elif kind == "room":
                noun = d["ent"].split(" ")[-1]
                kw["ent"] = (self.entity().rsplit(" ", 1)[0] + " " + noun if other else
                             " ".join(d["ent"].split(" ")[:-1]) + " " + self._pick(self.open.nouns))
                kw["val"] = self.near_num(d["val"], "room")
            elif kind == "lives":
                first, last = d["per"].split(" ", 1)
                kw["per"] = (first + " " + self.proper() if other else
                             self.person().split(" ")[0] + " " + last)
            elif kind == "pet":
                if other:
                    kw["per"] = d["per"]
                else:
                    kw["animal"] = d["animal"]
            g = self.fact(kind, **kw)
            if g["key"] in keys or g["val"] == f["val"]:
                continue
            keys.add(g["key"])
            out.append(g)
        self._last = f
        return out

    def unanswerable(self, kind):
        """A question about a key not stored; usually a near miss is stored."""
        asked = self.fact(kind)
        d = asked["d"]
        near = None
        if self.rng.random() < 0.75:
            if kind in ("code", "room"):
                near = self.fact(kind, ent=self.entity().rsplit(" ", 1)[0] + " " +
                                 d["ent"].split(" ")[-1])
            elif kind == "pet":
                near = self.fact(kind, per=d["per"])
                if near["d"]["animal"] == d["animal"]:
                    near = None
            elif kind == "lives":
                near = self.fact(kind, per=d["per"].split(" ")[0] + " " + self.proper())
            else:
                near = self.fact(kind, attr=d["attr"])
        fs = [near] if near and near["key"] != asked["key"] else []
        return {"facts": [f["text"] for f in fs], "prefixes": [f["prefix"] for f in fs],
                "vals": [f["val"] for f in fs], "keys": [asked["key"]] + [f["key"] for f in fs],
                "question": asked["question"], "answer": ABSTAIN, "kind": kind}

# --------------------------------------------------------------------------
# Tokenized arrays
# --------------------------------------------------------------------------

KINDS = ["code", "lives", "pet", "room", "roomcode", "multihop"]


def tokenize_example(sp, ex):
    """Token arrays of one example.  facts: ids of each fact sentence (as it
    is tokenized inside a text, with the leading space piece); vstart: index
    of the value's first token in each fact; q: BOS + question; a: answer
    tokens (as they follow the question) + EOS; fu: the follow-up answer's
    tokens (data.followup_answer) + EOS for a multi-hop example, else []."""
    facts, vstart = [], []
    for text, prefix in zip(ex["facts"], ex["prefixes"]):
        ids, v = _fact_ids(sp, text, prefix)
        facts.append(ids)
        vstart.append(v)
    q = sp.encode(ex["question"])
    full = sp.encode(ex["question"] + " " + ex["answer"])
    if full[:len(q)] != q:
        raise ValueError("question tokens differ: %r" % ex["question"])
    a = full[len(q):] + [sp.eos_id()]
    fu = []
    if ex.get("followup"):
        fu = sp.encode(ex["question"] + " " + ex["followup"])[len(q):] + [sp.eos_id()]
    return facts, vstart, [sp.bos_id()] + q, a, fu


def _fact_ids(sp, text, prefix):
    """Token ids of a fact sentence and the index of its value's first token."""
    ids = sp.encode(text)
    pre = sp.encode(prefix)
    if ids[:len(pre)] != pre:
        raise ValueError("prefix tokens differ: %r" % text)
    return ids, len(pre)


def pack_examples(sp, exs):
    """Ragged arrays of many examples into one npz-able dict: the facts each
    question needs, its near neighbours for the same document (dist_*, by
    n_dist) and whether it is unanswerable."""
    F, Fo, Vs, Q, Qo, A, Ao, nf, kind, keyh = [], [0], [], [], [0], [], [0], [], [], []
    D, Do, nd, dkh, un = [], [0], [], [], []
    FU, FUo = [], [0]
    for ex in exs:
        facts, vstart, q, a, fu = tokenize_example(sp, ex)
        FU += fu
        FUo.append(len(FU))
        for f, v in zip(facts, vstart):
            F += f
            Fo.append(len(F))
            Vs.append(v)
        nf.append(len(facts))
        Q += q
        Qo.append(len(Q))
        A += a
        Ao.append(len(A))
        kind.append(KINDS.index(ex["kind"]))
        kh = [_h(k) for k in ex["keys"]] + [0] * (3 - len(ex["keys"]))
        keyh.append(kh[:3])
        dists = ex.get("dists", [])
        for text, prefix, key in zip(dists, ex.get("dist_prefixes", []), ex.get("dist_keys", [])):
            D += _fact_ids(sp, text, prefix)[0]
            Do.append(len(D))
            dkh.append(_h(key))
        nd.append(len(dists))
        un.append(ex["answer"] == ABSTAIN)
    return {"fact_tok": np.array(F, np.uint16), "fact_off": np.array(Fo, np.int64),
            "fact_vstart": np.array(Vs, np.int32), "n_facts": np.array(nf, np.int8),
            "q_tok": np.array(Q, np.uint16), "q_off": np.array(Qo, np.int64),
            "a_tok": np.array(A, np.uint16), "a_off": np.array(Ao, np.int64),
            "kind": np.array(kind, np.int8), "key_hash": np.array(keyh, np.uint32),
            "dist_tok": np.array(D, np.uint16), "dist_off": np.array(Do, np.int64),
            "n_dist": np.array(nd, np.int8), "dist_keyh": np.array(dkh, np.uint32),
            "unans": np.array(un, bool),
            "fu_tok": np.array(FU, np.uint16), "fu_off": np.array(FUo, np.int64)}


def ragged(lists):
    """Token lists as one uint16 array and int64 offsets (len(lists) + 1)."""
    flat = np.concatenate([np.array(x, np.uint16) for x in lists])
    return flat, np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)


def paragraphs(text):
    """text cut where msadb's ingest by paragraph and joined cut it: before
    each character that follows a blank line ("\\n\\n") and is neither
    "\\n" nor "\\r"; the line breaks stay with the paragraph before them
    (libmsadb/runtime/llm.c, paragraph_at)."""
    cuts = [p for p in range(2, len(text))
            if text[p - 2:p] == "\n\n" and text[p] not in "\n\r"]
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)]) if b > a]


def joined_ids(sp, text):
    """The token ids msadb stores for text with msadb.segment "joined" (or
    "paragraph"): each paragraph tokenized on its own, concatenated."""
    return [t for ids in sp.encode(paragraphs(text)) for t in ids]


def tokenize_as(sp, docs, segment):
    """Token ids of each document as msadb's ingest reads it with
    msadb.segment = segment: "document" (whole) or "joined"."""
    if segment == "joined":
        return [joined_ids(sp, d) for d in docs]
    if segment == "document":
        return sp.encode(docs)
    raise SystemExit("--segment %s: the GPU arrays hold one pass per document; use document or "
                     "joined" % segment)


def model_segment(path):
    """The GGUF file's msadb.segment ("document" when it declares none)."""
    from .gguf import GGUFReader
    return GGUFReader(path).meta.get("msadb.segment", "document")


def tokenize_docs(sp, docs):
    ids = sp.encode([d + "\n\n" for d in docs])
    return ids


def cmd_build(args):
    sp = load_sp()
    if not args.skip_lm:
        build_lm(args, sp)
    build_facts(args, sp)


def build_lm(args, sp):
    """DIR/train_lm.u16, DIR/val_lm.u16: the train-side text, tokenized."""
    rng = np.random.default_rng(args.seed)
    tr, va = [], []
    for name in list(SOURCES_TRAIN) + (list(SOURCES_MORE) if args.more_text else []):
        docs = read_docs(os.path.join(args.out, "text", name + ".txt"))
        ids = tokenize_docs(sp, docs)
        for d in ids:
            (va if rng.random() < 0.02 else tr).append(d)
        print("tokens %-15s %9d" % (name, sum(len(x) for x in ids)), flush=True)
    order = rng.permutation(len(tr))
    train = np.concatenate([np.array(tr[i], np.uint16) for i in order])
    val = np.concatenate([np.array(x, np.uint16) for x in va])
    train.tofile(os.path.join(args.out, "train_lm.u16"))
    val.tofile(os.path.join(args.out, "val_lm.u16"))
    print("train tokens %d, val tokens %d" % (len(train), len(val)), flush=True)


def build_facts(args, sp):
    """DIR/facts_train.npz: the memory tasks, tokenized."""
    kw = dict(KIND_WEIGHTS)
    for item in args.kind_weights.split(",") if args.kind_weights else []:
        k, n = item.split("=")
        if k not in kw:
            raise SystemExit("--kind-weights: unknown kind %r" % k)
        kw[k] = int(n)
    split = "train" if args.tune_split else None
    # the composed generators' options, the same for the training and tuning sides
    opts = dict(synthetic=args.synthetic_names, kind_weights=kw, narrative=args.narrative,
                near=args.near, num_mix=args.num_mix, open_first=args.open_first,
                wide=args.narrative_wide, written=args.written, written_mh=args.written_multihop,
                mh_attr=args.mh_attr, composed_mh=args.composed_multihop,
                mh_wide_frames=args.composed_multihop_wide, bare=args.bare_questions,
                filler=args.mh_filler)
    if args.composed:
        g = ComposedGen(args.seed, unans=args.unans, split=split,
                        vocab=split if args.tune_vocab else None, **opts)
    else:
        g = FactGen(args.seed, "train", synthetic=args.synthetic_names, kind_weights=kw)
    exs = [g.example() for _ in range(args.n_train_facts)]
    np.savez_compressed(os.path.join(args.out, "facts_train.npz"), **pack_examples(sp, exs))
    print("train examples", len(exs), flush=True)
    if args.tune_split:
        # the tuning split: forms training never draws, train-side slots (with
        # --tune-vocab only the slot words training never draws), a larger
        # unanswerable share (both abstention rates measured on it)
        g = ComposedGen(args.seed + 1, unans=0.25, split="tune",
                        vocab="tune" if args.tune_vocab else None, **opts)
        exs = [g.example() for _ in range(args.tune_split)]
        np.savez_compressed(os.path.join(args.out, "facts_tune.npz"), **pack_examples(sp, exs))
        print("tune examples", len(exs), flush=True)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["extract", "tokenizer", "build", "all"])
    ap.add_argument("--out", default=os.path.join(ROOT, ".train-data"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--n-train-facts", type=int, default=160000)
    ap.add_argument("--synthetic-names", type=float, default=0.0,
                    help="fraction of train-side proper nouns made of random syllables")
    ap.add_argument("--kind-weights", default="",
                    help="e.g. lives=2,pet=2 (others keep their defaults: %s)" % KIND_WEIGHTS)
    ap.add_argument("--composed", action="store_true",
                    help="composed fact and question forms, open slot vocabularies and "
                         "unanswerable questions (ComposedGen)")
    ap.add_argument("--unans", type=float, default=0.12,
                    help="with --composed: share of questions whose fact is not in memory")
    ap.add_argument("--narrative", type=float, default=0.0,
                    help="with --composed: share of facts written as ordinary sentences "
                         "(narrative_forms)")
    ap.add_argument("--narrative-wide", action="store_true",
                    help="with --narrative: draw the wider narrative forms too (wide_cores)")
    ap.add_argument("--written", type=float, default=0.0,
                    help="with --composed: the share of facts, and of questions, drawn from "
                         "the written forms (tools/memmodel/forms_written.json)")
    ap.add_argument("--written-multihop", type=float, default=0.0,
                    help="with --composed: the share of multi-hop questions drawn from the "
                         "written ones")
    ap.add_argument("--composed-multihop", type=float, default=0.0,
                    help="with --composed: the share of the multi-hop questions not drawn "
                         "from the written ones that are composed (composed_multihop_forms)")
    ap.add_argument("--composed-multihop-wide", action="store_true",
                    help="with --composed-multihop: the wide frames too (MH_FRAMES_WIDE: the code "
                         "name away from the room word)")
    ap.add_argument("--bare-questions", type=float, default=0.0,
                    help="with --composed: the share of questions (every kind) without their "
                         "closing punctuation, half of them starting in lower case")
    ap.add_argument("--mh-filler", type=float, default=0.0,
                    help="with --composed: the share of composed and written multi-hop questions "
                         "with one or two filler words before the code name (MH_FILLERS)")
    ap.add_argument("--mh-attr", type=float, default=0.0,
                    help="with --composed: the share of multi-hop examples whose room code "
                         "name is a wide open compound (ComposedGen.wide_attr)")
    ap.add_argument("--near", type=float, default=0.0,
                    help="with --composed: share of answerable single-hop examples carrying 2-4 "
                         "near neighbours of their fact for the same document")
    ap.add_argument("--tune-split", type=int, default=0,
                    help="with --composed: keep 1/8 of the forms out of training and write this "
                         "many examples of them to facts_tune.npz (abstention tuning)")
    ap.add_argument("--tune-vocab", action="store_true",
                    help="with --tune-split: also keep 1/8 of the slot words and numbers "
                         "(_tune_word) out of training, for the tuning split only")
    ap.add_argument("--num-mix", type=float, default=0.0,
                    help="with --composed: share of room numbers of another length "
                         "(2 digits, a 4-digit code, 5 digits)")
    ap.add_argument("--open-first", type=float, default=0.0,
                    help="with --composed: share of first names drawn from the open list "
                         "(any train-side proper noun but a FIRST name); also keeps the "
                         "held-out first names out of every training slot")
    ap.add_argument("--more-text", action="store_true",
                    help="extract, build: also the SOURCES_MORE texts (dict-foldoc, "
                         "dict-jargon) in the language-model and haystack text")
    ap.add_argument("--skip-lm", action="store_true",
                    help="build: keep DIR's train_lm.u16 / val_lm.u16, write the facts only")
    args = ap.parse_args(argv)
    for name, share in (("--bare-questions", args.bare_questions), ("--mh-filler", args.mh_filler)):
        if not 0.0 <= share <= 1.0:
            raise SystemExit("memmodel.data: %s %g: a share of the questions, from 0 to 1"
                             % (name, share))
    os.makedirs(args.out, exist_ok=True)
    if args.cmd in ("extract", "all"):
        cmd_extract(args)
    if args.cmd in ("tokenizer", "all"):
        cmd_tokenizer(args)
    if args.cmd in ("build", "all"):
        cmd_build(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
