#!/usr/bin/env python3
"""spm_model.py -- reads a SentencePiece model file (protobuf) without the
sentencepiece package: the pieces, scores and types, the special ids and the
normalizer settings that msadb's tokenizer (and llama.cpp's converter) use.
Used by tools/memmodel/export_gguf.py and tests/tokenizer_reference.py."""
import struct


def _varint(b, i):
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def _fields(b):
    """Yields (field number, wire type, value) of a protobuf message."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError("unsupported protobuf wire type %d" % wt)
        yield num, wt, v


def read_spm_model(path):
    """Pieces, scores, types and the settings llama.cpp's converter reads
    (sentencepiece_model.proto: ModelProto.pieces = 1, trainer_spec = 2,
    normalizer_spec = 3)."""
    with open(path, "rb") as f:
        data = f.read()
    pieces, scores, types = [], [], []
    trainer = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
    norm = {"name": "", "add_dummy_prefix": True, "remove_extra_whitespaces": True,
            "escape_whitespaces": True}
    for num, wt, v in _fields(data):
        if num == 1 and wt == 2:
            piece, score, typ = b"", 0.0, 1
            for n2, w2, v2 in _fields(v):
                if n2 == 1:
                    piece = v2
                elif n2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif n2 == 3:
                    typ = v2
            pieces.append(piece)
            scores.append(score)
            types.append(typ)
        elif num == 2 and wt == 2:
            ids = {40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}
            for n2, w2, v2 in _fields(v):
                if n2 in ids and w2 == 0:
                    trainer[ids[n2]] = v2 - (1 << 64) if v2 >= 1 << 63 else v2
        elif num == 3 and wt == 2:
            for n2, w2, v2 in _fields(v):
                if n2 == 1:
                    norm["name"] = v2.decode()
                elif n2 == 3:
                    norm["add_dummy_prefix"] = bool(v2)
                elif n2 == 4:
                    norm["remove_extra_whitespaces"] = bool(v2)
                elif n2 == 5:
                    norm["escape_whitespaces"] = bool(v2)
    return pieces, scores, types, trainer, norm
