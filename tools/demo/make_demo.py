#!/usr/bin/python3
"""Writes the demo memory and question for tools/demo.sh.

Until the project's own model is bundled, keys and values come from a
stand-in "model": every word has a fixed random key direction (seeded by
the word), rotated by its position inside the document (document-wise,
RoPE-like) so that identical words at different places differ slightly.
A question's query vector points toward the words it asks about, so memory
attention finds the blocks that hold them and the store cites their text.

usage: make_demo.py CORPUS OUT_DIR QUESTION
"""
import hashlib
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from safetensors_io import st_write  # noqa: E402

D = 64  # head dim; the store is created with 1 memory layer and 1 kv head


def word_vec(word):
    seed = int.from_bytes(hashlib.sha256(word.lower().encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(D)
    return v / np.linalg.norm(v)


def rotate(v, pos):
    half = np.arange(D // 2)
    ang = pos * (0.001 ** (2 * half / D)) * 0.05
    c, s = np.cos(ang), np.sin(ang)
    out = v.copy()
    out[0::2] = v[0::2] * c - v[1::2] * s
    out[1::2] = v[0::2] * s + v[1::2] * c
    return out


def documents(corpus):
    docs, title, lines = [], None, []
    for line in open(corpus, encoding="utf-8"):
        if line.startswith("# "):
            if title:
                docs.append((title, " ".join(lines).strip()))
            title, lines = line[2:].strip(), []
        elif line.strip():
            lines.append(line.strip())
    if title:
        docs.append((title, " ".join(lines).strip()))
    return docs


def main():
    corpus, out, question = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(out, exist_ok=True)
    keys, values, lengths, texts, spans = [], [], [], [], []
    text_off = 0
    for i, (title, text) in enumerate(documents(corpus)):
        words = list(re.finditer(r"\S+", text))
        for pos, m in enumerate(words):
            w = re.sub(r"\W", "", m.group())
            keys.append(rotate(word_vec(w) * 4.0, pos))
            values.append(word_vec("value:" + w))
            spans.append([m.start(), m.end()])
        lengths.append(len(words))
        texts.append(text.encode())
        text_off += len(texts[-1])
        st_write(os.path.join(out, f"doc{i}.safetensors"), {
            "keys": np.array(keys[-len(words):], np.float32)[None, None],
            "values": np.array(values[-len(words):], np.float32)[None, None],
            "text": np.frombuffer(texts[-1], np.uint8),
            "token_spans": np.array(spans[-len(words):], np.int64),
        }, meta={"title": title})
        with open(os.path.join(out, f"doc{i}.title"), "w") as f:
            f.write(title)
    # The question's query: the mean direction of its content words, for the
    # two q heads of the kv head.
    words = [w for w in re.findall(r"\w+", question.lower()) if len(w) > 3]
    q = sum(word_vec(w) for w in words)
    q = q / np.linalg.norm(q) * 8.0
    st_write(os.path.join(out, "question.safetensors"),
             {"queries": np.stack([q, q]).astype(np.float32)[None]})


if __name__ == "__main__":
    main()
