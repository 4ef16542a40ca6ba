#!/usr/bin/env python3
"""gguf.py -- msadb's own GGUF version 3 writer and reader (numpy only).

GGUF is llama.cpp's model file: a little-endian header ("GGUF", version,
tensor count, metadata count), metadata entries (key, type, value), a tensor
table (name, dims with ne[0] innermost, ggml type, offset into the data
section), padding to the alignment, then the tensor data, each tensor at an
offset that is a multiple of the alignment (general.alignment, default 32).

Writer:
    w = GGUFWriter()
    w.add_uint32("llama.block_count", 6)
    w.add_string("general.architecture", "llama")
    w.add_array("tokenizer.ggml.tokens", ["a", "b"], T_STRING)
    w.add_tensor("token_embd.weight", np_array, GGML_Q8_0)  # numpy shape (ne1, ne0)
    w.write("model.gguf")

Reader (for tests and tools):
    f = GGUFReader("model.gguf")
    f.meta["llama.block_count"]      -> python value (lists for arrays)
    f.meta_types[key]                -> (type, elem_type or None)
    f.tensors[name]                  -> Tensor(ggml_type, ne, offset, raw bytes)
    f.tensor_f32(name)               -> float32 numpy array, shape (..., ne1, ne0)

Command line:
    gguf.py dump FILE                -- print metadata and the tensor table
    gguf.py sample FILE              -- write the fixed sample used by test_gguf.c
    gguf.py edit IN OUT [set KEY TYPE VALUE | del KEY | deltensor NAME]...
                                     -- copy a file with metadata set/removed
                                        and tensors removed (TYPE: uint32, ...)

Quantization follows ggml's reference code: Q8_0 blocks of 32 values hold an
f16 scale d = max|x| / 127 and q = round(x / d) (rounding half away from
zero) as int8; BF16 is the top half of the f32 rounded to nearest even.
"""
import struct
import sys

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32

# metadata value types
(T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL,
 T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64) = range(13)
TYPE_NAMES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
              "bool", "string", "array", "uint64", "int64", "float64"]
_SCALAR = {T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h",
           T_UINT32: "<I", T_INT32: "<i", T_FLOAT32: "<f", T_BOOL: "<?",
           T_UINT64: "<Q", T_INT64: "<q", T_FLOAT64: "<d"}
_NP = {T_UINT8: "<u1", T_INT8: "<i1", T_UINT16: "<u2", T_INT16: "<i2",
       T_UINT32: "<u4", T_INT32: "<i4", T_FLOAT32: "<f4", T_BOOL: "<u1",
       T_UINT64: "<u8", T_INT64: "<i8", T_FLOAT64: "<f8"}

# ggml tensor types this tool writes and reads
GGML_F32, GGML_F16, GGML_Q8_0, GGML_BF16 = 0, 1, 8, 30
GGML_NAMES = {GGML_F32: "f32", GGML_F16: "f16", GGML_Q8_0: "q8_0", GGML_BF16: "bf16"}
GGML_BY_NAME = {v: k for k, v in GGML_NAMES.items()}
# (values per block, bytes per block)
GGML_LAYOUT = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q8_0: (32, 34), GGML_BF16: (1, 2)}
QK8_0 = 32


# --------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------

def f32_to_bf16_bits(x):
    """float32 array -> uint16 bf16 bits, round to nearest even (NaN kept NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    r = np.where(nan, (u >> 16) | 0x40, r)
    return r.astype(np.uint16)


def bf16_bits_to_f32(b):
    return (np.asarray(b, dtype=np.uint32) << 16).view(np.float32)


def quantize_q8_0(x):
    """float32 array with last dim a multiple of 32 -> raw Q8_0 bytes."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK8_0)
    amax = np.abs(x).max(axis=1)
    d = amax / 127.0
    with np.errstate(divide="ignore"):
        inv = np.where(d > 0, 1.0 / d, 0.0).astype(np.float32)
    v = x * inv[:, None]
    q = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8)  # roundf()
    out = np.empty((x.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).reshape(-1, 1).view(np.uint8)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def dequantize_q8_0(raw, n):
    b = np.frombuffer(raw, dtype=np.uint8, count=n // QK8_0 * 34).reshape(-1, 34)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    q = b[:, 2:].copy().view(np.int8).astype(np.float32)
    return (q * d).reshape(-1)


def encode_tensor(arr, ggml_type):
    """numpy array -> raw bytes in ggml_type (row-major, last dim = ne[0])."""
    a = np.ascontiguousarray(arr, dtype=np.float32)
    if ggml_type == GGML_F32:
        return a.astype("<f4").tobytes()
    if ggml_type == GGML_F16:
        return a.astype("<f2").tobytes()
    if ggml_type == GGML_BF16:
        return f32_to_bf16_bits(a).astype("<u2").tobytes()
    if ggml_type == GGML_Q8_0:
        if a.shape[-1] % QK8_0:
            raise ValueError("q8_0 needs ne[0] to be a multiple of 32, got %d" % a.shape[-1])
        return quantize_q8_0(a)
    raise ValueError("unsupported ggml type %r" % ggml_type)


def decode_tensor(raw, ggml_type, ne):
    """raw bytes -> float32 numpy array of shape reversed(ne)."""
    n = int(np.prod(ne, dtype=np.uint64)) if ne else 1
    shape = tuple(reversed(ne))
    if ggml_type == GGML_F32:
        v = np.frombuffer(raw, dtype="<f4", count=n)
    elif ggml_type == GGML_F16:
        v = np.frombuffer(raw, dtype="<f2", count=n).astype(np.float32)
    elif ggml_type == GGML_BF16:
        v = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2", count=n))
    elif ggml_type == GGML_Q8_0:
        v = dequantize_q8_0(raw, n)
    else:
        raise ValueError("unsupported ggml type %r" % ggml_type)
    return np.array(v, dtype=np.float32).reshape(shape)


def tensor_nbytes(ggml_type, ne):
    blk, size = GGML_LAYOUT[ggml_type]
    n = 1
    for d in ne:
        n *= d
    return n // blk * size


# --------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------

def _pack_string(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _pack_scalar(t, v):
    if t == T_STRING:
        return _pack_string(v)
    if t not in _SCALAR:
        raise ValueError("bad scalar type %r" % t)
    return struct.pack(_SCALAR[t], v)


class GGUFWriter:
    """Collects metadata and tensors, then writes one GGUF v3 file."""

    def __init__(self, alignment=DEFAULT_ALIGNMENT):
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError("alignment must be a power of two")
        self.alignment = alignment
        self.kv = []          # (key, type, elem_type, value)
        self.tensors = []     # (name, ne, ggml_type, raw bytes)
        self._keys = set()
        if alignment != DEFAULT_ALIGNMENT:
            self.add_uint32("general.alignment", alignment)

    def add(self, key, vtype, value, elem_type=None):
        if key in self._keys:
            raise ValueError("duplicate key %s" % key)
        if vtype == T_ARRAY and elem_type is None:
            raise ValueError("arrays need an element type")
        self._keys.add(key)
        self.kv.append((key, vtype, elem_type, value))

    def add_uint8(self, k, v): self.add(k, T_UINT8, v)
    def add_int8(self, k, v): self.add(k, T_INT8, v)
    def add_uint16(self, k, v): self.add(k, T_UINT16, v)
    def add_int16(self, k, v): self.add(k, T_INT16, v)
    def add_uint32(self, k, v): self.add(k, T_UINT32, v)
    def add_int32(self, k, v): self.add(k, T_INT32, v)
    def add_uint64(self, k, v): self.add(k, T_UINT64, v)
    def add_int64(self, k, v): self.add(k, T_INT64, v)
    def add_float32(self, k, v): self.add(k, T_FLOAT32, v)
    def add_float64(self, k, v): self.add(k, T_FLOAT64, v)
    def add_bool(self, k, v): self.add(k, T_BOOL, bool(v))
    def add_string(self, k, v): self.add(k, T_STRING, v)

    def add_array(self, key, values, elem_type):
        if elem_type == T_ARRAY:
            raise ValueError("nested arrays are not supported")
        self.add(key, T_ARRAY, list(values), elem_type)

    def add_tensor(self, name, arr, ggml_type=GGML_F32):
        """arr: numpy array, shape (..., ne1, ne0); stored as ggml_type."""
        if any(t[0] == name for t in self.tensors):
            raise ValueError("duplicate tensor %s" % name)
        arr = np.asarray(arr)
        if not 1 <= arr.ndim <= 4:
            raise ValueError("tensors have 1..4 dims")
        ne = list(reversed(arr.shape))
        self.tensors.append((name, ne, ggml_type, encode_tensor(arr, ggml_type)))

    def add_raw_tensor(self, name, ne, ggml_type, raw):
        """A tensor given as raw bytes (tests use it for exact control)."""
        self.tensors.append((name, list(ne), ggml_type, bytes(raw)))

    def _pad(self, n):
        return (-n) % self.alignment

    def tobytes(self):
        out = bytearray()
        out += GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.kv))
        for key, t, et, v in self.kv:
            out += _pack_string(key) + struct.pack("<I", t)
            if t == T_ARRAY:
                out += struct.pack("<IQ", et, len(v))
                if et == T_STRING:
                    for s in v:
                        out += _pack_string(s)
                else:
                    out += np.asarray(v, dtype=_NP[et]).tobytes() if v else b""
            else:
                out += _pack_scalar(t, v)
        offset = 0
        offsets = []
        for name, ne, gt, raw in self.tensors:
            offsets.append(offset)
            offset += len(raw) + self._pad(len(raw))
        for (name, ne, gt, raw), off in zip(self.tensors, offsets):
            out += _pack_string(name) + struct.pack("<I", len(ne))
            out += struct.pack("<%dQ" % len(ne), *ne)
            out += struct.pack("<IQ", gt, off)
        out += b"\0" * self._pad(len(out))
        for name, ne, gt, raw in self.tensors:
            out += raw + b"\0" * self._pad(len(raw))
        return bytes(out)

    def write(self, path):
        with open(path, "wb") as f:
            f.write(self.tobytes())


# --------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------

def add_spm_tokenizer(w, pieces, scores, types, add_space_prefix=None):
    """Writes a SentencePiece-style ("llama") tokenizer's tokenizer.ggml.*
    keys: <unk>=0, <s>=1, </s>=2, BOS added, EOS not."""
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_string("tokenizer.ggml.pre", "default")
    w.add_array("tokenizer.ggml.tokens", pieces, T_STRING)
    w.add_array("tokenizer.ggml.scores", scores, T_FLOAT32)
    w.add_array("tokenizer.ggml.token_type", types, T_INT32)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_uint32("tokenizer.ggml.unknown_token_id", 0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_eos_token", False)
    if add_space_prefix is not None:
        w.add_bool("tokenizer.ggml.add_space_prefix", add_space_prefix)


class Tensor:
    def __init__(self, name, ggml_type, ne, offset, raw):
        self.name, self.ggml_type, self.ne, self.offset, self.raw = name, ggml_type, ne, offset, raw

    @property
    def shape(self):
        return tuple(reversed(self.ne))


class GGUFReader:
    """Reads a GGUF v3 file written by GGUFWriter (or llama.cpp)."""

    def __init__(self, path_or_bytes):
        if isinstance(path_or_bytes, (bytes, bytearray)):
            self.buf = bytes(path_or_bytes)
        else:
            with open(path_or_bytes, "rb") as f:
                self.buf = f.read()
        self.pos = 0
        if self._take(4) != GGUF_MAGIC:
            raise ValueError("not a GGUF file")
        version, n_tensors, n_kv = struct.unpack("<IQQ", self._take(20))
        if version != GGUF_VERSION:
            raise ValueError("GGUF version %d" % version)
        self.meta, self.meta_types = {}, {}
        for _ in range(n_kv):
            key = self._string().decode("utf-8")
            (t,) = struct.unpack("<I", self._take(4))
            if t == T_ARRAY:
                et, n = struct.unpack("<IQ", self._take(12))
                if et == T_STRING:
                    v = [self._string().decode("utf-8", "surrogateescape") for _ in range(n)]
                else:
                    size = np.dtype(_NP[et]).itemsize
                    v = np.frombuffer(self._take(size * n), dtype=_NP[et]).tolist()
                    if et == T_BOOL:
                        v = [bool(x) for x in v]
                self.meta_types[key] = (t, et)
            else:
                v = self._scalar(t)
                self.meta_types[key] = (t, None)
            self.meta[key] = v
        self.alignment = self.meta.get("general.alignment", DEFAULT_ALIGNMENT)
        infos = []
        for _ in range(n_tensors):
            name = self._string().decode("utf-8")
            (nd,) = struct.unpack("<I", self._take(4))
            ne = list(struct.unpack("<%dQ" % nd, self._take(8 * nd)))
            gt, off = struct.unpack("<IQ", self._take(12))
            infos.append((name, ne, gt, off))
        self.data_offset = self.pos + (-self.pos) % self.alignment
        self.tensors = {}
        for name, ne, gt, off in infos:
            start = self.data_offset + off
            raw = self.buf[start:start + tensor_nbytes(gt, ne)]
            self.tensors[name] = Tensor(name, gt, ne, off, raw)

    def _take(self, n):
        if self.pos + n > len(self.buf):
            raise ValueError("truncated GGUF file")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def _string(self):
        (n,) = struct.unpack("<Q", self._take(8))
        return self._take(n)

    def _scalar(self, t):
        if t == T_STRING:
            return self._string().decode("utf-8", "surrogateescape")
        fmt = _SCALAR[t]
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def tensor_f32(self, name):
        t = self.tensors[name]
        return decode_tensor(t.raw, t.ggml_type, t.ne)


# --------------------------------------------------------------------------
# The fixed sample file checked by tests/test_gguf.c
# --------------------------------------------------------------------------

def sample_values():
    """Values of the sample: f16/bf16 tensors hold values exact in those types,
    and every converted tensor has an F32 twin named NAME.expect holding what
    the reader must produce."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((3, 64)).astype(np.float32)
    return {
        "f32": base,
        "f16": base.astype(np.float16).astype(np.float32),
        "bf16": bf16_bits_to_f32(f32_to_bf16_bits(base)),
        "q8_0": decode_tensor(quantize_q8_0(base), GGML_Q8_0, [64, 3]),
        "base": base,
    }


def write_sample(path, alignment=64):
    w = GGUFWriter(alignment=alignment)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_uint64("t.u64", 18000000000000000000)
    w.add_int64("t.i64", -9000000000000000000)
    w.add_float32("t.f32", 1.5)
    w.add_float64("t.f64", -2.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_string("t.empty", "")
    w.add_array("t.arr_i32", [1, -2, 3], T_INT32)
    w.add_array("t.arr_f32", [0.5, -1.0], T_FLOAT32)
    w.add_array("t.arr_str", ["a", "", "<0x0A>", "▁the"], T_STRING)
    w.add_array("t.arr_bool", [True, False], T_BOOL)
    w.add_array("t.arr_empty", [], T_UINT8)
    v = sample_values()
    for name, gt in (("f32", GGML_F32), ("f16", GGML_F16), ("bf16", GGML_BF16),
                     ("q8_0", GGML_Q8_0)):
        w.add_tensor("w." + name, v["base"], gt)
        w.add_tensor("w." + name + ".expect", v[name], GGML_F32)
    w.add_tensor("w.3d", np.arange(24, dtype=np.float32).reshape(2, 3, 4), GGML_F32)
    w.write(path)


def edit(src, dst, set_kv=(), del_keys=(), del_tensors=()):
    """Rewrites a GGUF file with metadata entries set or removed and tensors
    removed (tensor bytes and types are kept as they are).  set_kv: iterable of
    (key, type, value[, elem_type])."""
    r = GGUFReader(src)
    w = GGUFWriter(alignment=r.alignment)
    setd = {e[0]: e for e in set_kv}
    for k, v in r.meta.items():
        if k in del_keys or k in setd or k == "general.alignment":
            continue
        t, et = r.meta_types[k]
        w.add(k, t, v, et)
    for e in set_kv:
        w.add(e[0], e[1], e[2], e[3] if len(e) > 3 else None)
    for name, t in r.tensors.items():
        if name not in del_tensors:
            w.add_raw_tensor(name, t.ne, t.ggml_type, t.raw)
    w.write(dst)


def _parse_value(t, text):
    if t in (T_FLOAT32, T_FLOAT64):
        return float(text)
    if t == T_BOOL:
        return text.lower() in ("1", "true", "yes")
    if t == T_STRING:
        return text
    return int(text, 0)


def _dump(path):
    r = GGUFReader(path)
    print("alignment %d, data at %d" % (r.alignment, r.data_offset))
    for k, v in r.meta.items():
        t, et = r.meta_types[k]
        tn = TYPE_NAMES[t] + ("[%s]" % TYPE_NAMES[et] if et is not None else "")
        if isinstance(v, list) and len(v) > 8:
            v = "%s ... (%d)" % (v[:8], len(v))
        print("%-40s %-16s %s" % (k, tn, v))
    for name, t in r.tensors.items():
        print("%-40s %-6s %s @%d" % (name, GGML_NAMES.get(t.ggml_type, t.ggml_type), t.ne, t.offset))


def main(argv):
    if len(argv) == 3 and argv[1] == "dump":
        _dump(argv[2])
        return 0
    if len(argv) == 3 and argv[1] == "sample":
        write_sample(argv[2])
        return 0
    if len(argv) >= 4 and argv[1] == "edit":
        # gguf.py edit IN OUT [set KEY TYPE VALUE | del KEY | deltensor NAME]...
        sets, dels, dts, i = [], [], [], 4
        while i < len(argv):
            op = argv[i]
            if op == "set" and i + 3 < len(argv):
                t = TYPE_NAMES.index(argv[i + 2])
                sets.append((argv[i + 1], t, _parse_value(t, argv[i + 3])))
                i += 4
            elif op == "del" and i + 1 < len(argv):
                dels.append(argv[i + 1])
                i += 2
            elif op == "deltensor" and i + 1 < len(argv):
                dts.append(argv[i + 1])
                i += 2
            else:
                sys.stderr.write("gguf.py edit: bad operation at %r\n" % op)
                return 2
        edit(argv[2], argv[3], sets, dels, dts)
        return 0
    sys.stderr.write("usage: gguf.py dump FILE | gguf.py sample FILE |\n"
                     "       gguf.py edit IN OUT [set KEY TYPE VALUE | del KEY | deltensor NAME]...\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
