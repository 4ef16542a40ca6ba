"""Minimal safetensors reading and writing with numpy, for msadb's tools
and tests (the CLI itself parses safetensors in C, cli/input/tensorfile.c).

st_write(path, {name: array}) writes F32/F16/F64/I64/I32/U8 arrays and BF16
(wrap uint16 bit patterns in BF16, or use to_bf16); st_read(path) returns a
dict of arrays (BF16 is not decoded by st_read)."""
import json
import struct

import numpy as np

DT = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int64"): "I64",
      np.dtype("int32"): "I32", np.dtype("uint8"): "U8", np.dtype("float64"): "F64"}


class BF16:
    """A bf16 tensor, held as its uint16 bit patterns."""

    def __init__(self, bits):
        self.bits = bits


def to_bf16(x):
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    return BF16(r)


def from_bf16(t):
    return (t.bits.astype(np.uint32) << 16).view(np.float32)


def st_bytes(tensors, meta=None):
    hdr, blobs, off = {}, [], 0
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, arr in tensors.items():
        if isinstance(arr, BF16):
            dt, data, shape = "BF16", arr.bits.astype("<u2").tobytes(), arr.bits.shape
        else:
            a = np.ascontiguousarray(arr)
            dt, data, shape = DT[a.dtype], a.astype(a.dtype.newbyteorder("<")).tobytes(), a.shape
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def st_write(path, tensors, meta=None):
    with open(path, "wb") as f:
        f.write(st_bytes(tensors, meta))
    return path


def st_read(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    rev = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1"}
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            out[k] = v
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=rev[v["dtype"]]).reshape(v["shape"])
    return out
