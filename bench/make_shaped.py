#!/usr/bin/env python3
"""Writes GGUF files with random weights at the exact shapes of real models, for speed and
fidelity measurements at real sizes (the files go to the model cache, never committed).

usage:
  bench/.venv-embed/bin/python bench/make_shaped.py llama3-1b:Q4_0 [qwen2-7b:Q4_K_M ...] [--check]
  bench/.venv-embed/bin/python bench/make_shaped.py --list
Needs numpy only (bench/.venv-embed has it) and the SmolLM2 GGUF in the model cache
(scripts/fetch_model.py smollm2), whose tokenizer every file reuses. Output:
$LUMEN_MODELS (default ~/.cache/lumen/models)/shaped-<model>.<type>.gguf, written as
<name>.tmp and renamed when complete; a file already there with the right size is kept.
Deterministic: the same seed (--seed, default 1) gives the same bytes (sha256 printed;
KNOWN_SHA256 below is checked when the name is there, so scripts/test.sh notices a
change). Times on the loaded 2-core EPYC (Zen 4), one process: llama3-1b Q4_0 (0.77 GB)
~10 s, qwen2-7b Q4_K_M (4.7 GB) / qwen3-8b Q4_K_M (5.0 GB) ~1-2 min each.

Shapes (HF config.json of each model, as llama.cpp's convert_hf_to_gguf.py writes them):
  llama3-1b  Llama-3.2-1B(-Instruct): 16 layers, width 2048, 32 heads, 8 KV heads
             (head_dim 64), FFN 8192, vocab 128256, rope_theta 500000, rms eps 1e-5, tied
             embeddings, rope_scaling llama3 (factor 32, low_freq_factor 1, high_freq_factor 4,
             original_max_position_embeddings 8192) -> a `rope_freqs.weight` tensor of head_dim/2
             frequency factors, computed as LlamaModel.generate_extra_tensors does.
  qwen2-7b   Qwen2.5-7B(-Instruct): 28 layers, 3584, 28 heads, 4 KV heads (head_dim 128),
             FFN 18944, vocab 152064, rope_theta 1e6, eps 1e-6, q/k/v biases, untied output.
  qwen3-8b   Qwen3-8B: 36 layers, 4096, 32 heads, 8 KV heads, head_dim 128, FFN 12288,
             vocab 151936, rope_theta 1e6, eps 1e-6, q/k RMS norms, untied output.

Types (llama.cpp's llama_tensor_get_type rules in src/llama-quant.cpp):
  Q4_0    every matrix Q4_0; the output matrix (the token embeddings when tied) Q6_K.
  Q4_K_M  Q4_K; output Q6_K; attn_v and ffn_down Q6_K in the layers use_more_bits picks
          (i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2).
  Q8_0    every matrix Q8_0, the output too.
Norm weights, biases and rope_freqs are f32.

Vocabulary: SmolLM2's 49152 tokens (gpt2 BPE, its merges, chat template, special ids), padded
to the real row count with unused tokens (type 5, `<|lumen_pad_N|>`), so token_embd and the
output matrix have the real models' sizes (the output matrix is a large part of decode time:
1B: 128256 x 2048 of 1.24 B parameters). Prompts only produce ids < 49152; the model may
still predict a padding id, which both engines take back as input.

Weights: random quantized blocks written directly (no float copy of the model): uniform
random quants and block scales drawn so each matrix has element std gain/sqrt(n_in) (gain 1;
the output matrix 3/sqrt(n_in), so logits have std ~3), scales varying x0.5-1.5 between
blocks, signs symmetric. Norm weights 1 + N(0, 0.1); biases N(0, 0.5). --check runs a
float64 NumPy forward pass of a few tokens over the file and prints the residual stream's
RMS per layer and the logits' spread (slow for 7B/8B: it dequantizes layer by layer).
"""
import argparse
import hashlib
import math
import os
import struct
import sys
import time

import numpy as np

CACHE = os.environ.get("LUMEN_MODELS") or os.path.expanduser("~/.cache/lumen/models")
TOKENIZER_SOURCE = "SmolLM2-135M-Instruct.Q4_1.gguf"

MODELS = {
    "llama3-1b": dict(arch="llama", name="Llama-3.2-1B shape", layers=16, embd=2048, heads=32, kv_heads=8,
                      head_dim=64, ff=8192, vocab=128256, rope_base=500000.0, eps=1e-5, ctx=131072,
                      tied=True, bias=False, qk_norm=False,
                      llama3_rope=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original=8192)),
    "qwen2-7b": dict(arch="qwen2", name="Qwen2.5-7B shape", layers=28, embd=3584, heads=28, kv_heads=4,
                     head_dim=128, ff=18944, vocab=152064, rope_base=1000000.0, eps=1e-6, ctx=32768,
                     tied=False, bias=True, qk_norm=False, llama3_rope=None),
    "qwen3-8b": dict(arch="qwen3", name="Qwen3-8B shape", layers=36, embd=4096, heads=32, kv_heads=8,
                     head_dim=128, ff=12288, vocab=151936, rope_base=1000000.0, eps=1e-6, ctx=40960,
                     tied=False, bias=False, qk_norm=True, llama3_rope=None),
}
FTYPES = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}   # general.file_type (llama_ftype)

# sha256 of files scripts/test.sh writes (seed 1); another value means the writer changed
KNOWN_SHA256 = {
    "shaped-llama3-1b.Q4_0.gguf": "abb571269fc31fd52225d6db18273ff944a3711517a4eccbb0a0beaf383ad6f9",
}

# ---- GGML block formats: type id, elements per block, bytes per block ------------------------
F32, Q4_0, Q8_0, Q4_K, Q6_K = 0, 2, 8, 12, 14
BLOCK = {Q4_0: (32, 18), Q8_0: (32, 34), Q4_K: (256, 144), Q6_K: (256, 210)}
TYPE_NAME = {F32: "F32", Q4_0: "Q4_0", Q8_0: "Q8_0", Q4_K: "Q4_K", Q6_K: "Q6_K"}


def block_scales(rng, n, base):
    """Per-block scales base * U(0.5, 1.5); E[u^2] = 13/12 is divided out."""
    return base * rng.uniform(0.5, 1.5, n) / math.sqrt(13.0 / 12.0)


def quant_blocks(rng, qtype, nblocks, std, signed_scale=True):
    """nblocks random blocks of qtype whose dequantized elements have std `std`, mean 0."""
    if qtype == Q4_0:   # d, qs[16]: x = d * (q - 8), q in 0..15: E[(q-8)^2] = 21.5
        out = np.empty((nblocks, 18), np.uint8)
        d = block_scales(rng, nblocks, std / math.sqrt(21.5)) * rng.choice([-1.0, 1.0], nblocks)
        out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
        out[:, 2:] = np.frombuffer(rng.bytes(nblocks * 16), np.uint8).reshape(-1, 16)
        return out
    if qtype == Q8_0:   # d, qs[32] int8: E[q^2] = (128^2 * 2 + 1) / 6 ~ 5461.5
        out = np.empty((nblocks, 34), np.uint8)
        d = block_scales(rng, nblocks, std / math.sqrt(5461.5)) * rng.choice([-1.0, 1.0], nblocks)
        out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
        q = np.frombuffer(rng.bytes(nblocks * 32), np.uint8).reshape(-1, 32).copy()
        q[q == 128] = 129   # int8 -128 does not occur in llama.cpp's Q8_0
        out[:, 2:] = q
        return out
    if qtype == Q4_K:   # d, dmin, scales[12] (8 x 6-bit sc, 8 x 6-bit m), qs[128]
        # x = d * sc * q - dmin * m with m = sc and dmin = 7.5 d: x = d * sc * (q - 7.5),
        # centred sub-blocks; sc in 1..63: E[sc^2] = 1354.67, E[(q-7.5)^2] = 21.25
        out = np.empty((nblocks, 144), np.uint8)
        d = block_scales(rng, nblocks, std / math.sqrt(1354.67 * 21.25))
        out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
        out[:, 2:4] = (7.5 * d).astype(np.float16).view(np.uint8).reshape(-1, 2)
        sc = rng.integers(1, 64, (nblocks, 8), dtype=np.uint8)
        m = sc
        s = out[:, 4:16]
        s[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
        s[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
        s[:, 8:12] = (sc[:, 4:8] & 0xF) | ((m[:, 4:8] & 0xF) << 4)
        out[:, 16:] = np.frombuffer(rng.bytes(nblocks * 128), np.uint8).reshape(-1, 128)
        return out
    if qtype == Q6_K:   # ql[128], qh[64], scales[16] int8, d: x = d * sc * (q - 32), q in 0..63
        # sc = +-(1..127): E[sc^2] = 5440; E[(q-32)^2] = 341.5
        out = np.empty((nblocks, 210), np.uint8)
        out[:, 0:192] = np.frombuffer(rng.bytes(nblocks * 192), np.uint8).reshape(-1, 192)
        sc = rng.integers(1, 128, (nblocks, 16)) * rng.choice([-1, 1], (nblocks, 16))
        out[:, 192:208] = sc.astype(np.int8).view(np.uint8)
        d = block_scales(rng, nblocks, std / math.sqrt(5440.0 * 341.5))
        out[:, 208:210] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
        return out
    raise ValueError(f"no generator for type {qtype}")


# ---- GGUF ---------------------------------------------------------------------------------
GT_U8, GT_I8, GT_U16, GT_I16, GT_U32, GT_I32, GT_F32, GT_BOOL, GT_STR, GT_ARR, GT_U64, GT_I64, GT_F64 = range(13)
SCALAR = {GT_U8: "<B", GT_I8: "<b", GT_U16: "<H", GT_I16: "<h", GT_U32: "<I", GT_I32: "<i", GT_F32: "<f",
          GT_BOOL: "<?", GT_U64: "<Q", GT_I64: "<q", GT_F64: "<d"}


def read_kv(path):
    """The key/value pairs of a GGUF file: {key: (type, value)}, arrays as (GT_ARR, (elem type, list))."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("<Q")
        s = data[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def value(t):
        return string() if t == GT_STR else take(SCALAR[t])

    if data[:4] != b"GGUF":
        raise SystemExit(f"{path}: not a GGUF file")
    pos = 8
    take("<Q")
    n_kv = take("<Q")
    kv = {}
    for _ in range(n_kv):
        key = string()
        t = take("<I")
        if t == GT_ARR:
            et = take("<I")
            n = take("<Q")
            kv[key] = (GT_ARR, (et, [value(et) for _ in range(n)]))
        else:
            kv[key] = (t, value(t))
    return kv


def enc_str(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def enc_value(t, v):
    if t == GT_STR:
        return enc_str(v)
    if t == GT_ARR:
        et, items = v
        if et == GT_STR:
            body = b"".join(enc_str(x) for x in items)
        else:
            body = np.asarray(items, dtype=np.dtype(SCALAR[et])).tobytes()
        return struct.pack("<IQ", et, len(items)) + body
    return struct.pack(SCALAR[t], v)


def enc_kv(key, t, v):
    return enc_str(key) + struct.pack("<I", t) + enc_value(t, v)


# ---- the model ----------------------------------------------------------------------------
def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def llama3_rope_factors(c):
    """LlamaModel.generate_extra_tensors in llama.cpp's convert_hf_to_gguf.py."""
    r = c["llama3_rope"]
    dim = c["head_dim"]
    freqs = 1.0 / (np.float32(c["rope_base"]) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    low_wl = r["original"] / r["low_freq_factor"]
    high_wl = r["original"] / r["high_freq_factor"]
    out = []
    for freq in freqs:
        wl = 2 * math.pi / float(freq)
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(r["factor"])
        else:
            smooth = (r["original"] / wl - r["low_freq_factor"]) / (r["high_freq_factor"] - r["low_freq_factor"])
            out.append(1 / ((1 - smooth) / r["factor"] + smooth))
    return np.array(out, dtype=np.float32)


def tensor_plan(c, ftype):
    """[(name, ne (GGUF order: ne0 = columns), type, kind)], kind: (gain) for a matrix,
    'norm' / 'bias' / 'rope' for an f32 vector."""
    E, F, HD = c["embd"], c["ff"], c["head_dim"]
    QD, KVD, L = c["heads"] * HD, c["kv_heads"] * HD, c["layers"]
    base = {"Q4_0": Q4_0, "Q8_0": Q8_0, "Q4_K_M": Q4_K}[ftype]
    out_type = Q8_0 if ftype == "Q8_0" else Q6_K
    plan = [("token_embd.weight", (E, c["vocab"]), out_type if c["tied"] else base, ("embd",))]
    if c["llama3_rope"]:
        plan.append(("rope_freqs.weight", (HD // 2,), F32, "rope"))
    plan.append(("output_norm.weight", (E,), F32, "norm"))
    if not c["tied"]:
        plan.append(("output.weight", (E, c["vocab"]), out_type, ("out",)))
    for i in range(L):
        more = ftype == "Q4_K_M" and use_more_bits(i, L)
        p = f"blk.{i}."
        plan += [(p + "attn_norm.weight", (E,), F32, "norm"),
                 (p + "attn_q.weight", (E, QD), base, ("mat",)),
                 (p + "attn_k.weight", (E, KVD), base, ("mat",)),
                 (p + "attn_v.weight", (E, KVD), Q6_K if more else base, ("mat",))]
        if c["bias"]:
            plan += [(p + "attn_q.bias", (QD,), F32, "bias"), (p + "attn_k.bias", (KVD,), F32, "bias"),
                     (p + "attn_v.bias", (KVD,), F32, "bias")]
        if c["qk_norm"]:
            plan += [(p + "attn_q_norm.weight", (HD,), F32, "norm"), (p + "attn_k_norm.weight", (HD,), F32, "norm")]
        plan += [(p + "attn_output.weight", (QD, E), base, ("mat",)),
                 (p + "ffn_norm.weight", (E,), F32, "norm"),
                 (p + "ffn_gate.weight", (E, F), base, ("mat",)),
                 (p + "ffn_up.weight", (E, F), base, ("mat",)),
                 (p + "ffn_down.weight", (F, E), Q6_K if more else base, ("mat",))]
    return plan


def nbytes(ne, t):
    if t == F32:
        return 4 * int(np.prod(ne))
    per, size = BLOCK[t]
    assert ne[0] % per == 0, (ne, t)
    return ne[0] // per * size * int(np.prod(ne[1:]))


def tensor_chunks(c, idx, name, ne, t, kind, seed):
    """The tensor's bytes, in pieces of at most ~64 MB; each tensor has its own stream."""
    rng = np.random.default_rng([seed, idx])
    if t == F32:
        n = int(np.prod(ne))
        if kind == "rope":
            yield llama3_rope_factors(c).tobytes()
        elif kind == "norm":
            yield (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32).tobytes()
        else:
            yield (0.5 * rng.standard_normal(n)).astype(np.float32).tobytes()
        return
    cols, rows = ne
    gain = {"mat": 1.0, "out": 3.0, "embd": 3.0 if c["tied"] else 1.0}[kind[0]]
    std = gain / math.sqrt(cols)
    per, size = BLOCK[t]
    per_row = cols // per
    step = max(1, (64 << 20) // (per_row * size))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        yield quant_blocks(rng, t, (r1 - r0) * per_row, std).tobytes()


def write_model(key, ftype, seed, path):
    c = MODELS[key]
    arch = c["arch"]
    src = os.path.join(CACHE, TOKENIZER_SOURCE)
    if not os.path.exists(src):
        raise SystemExit(f"{src}: missing (python3 scripts/fetch_model.py smollm2)")
    kv_src = read_kv(src)
    kvs = [("general.architecture", GT_STR, arch),
           ("general.name", GT_STR, f"lumen random {c['name']} {ftype} seed {seed}"),
           ("general.file_type", GT_U32, FTYPES[ftype]),
           ("general.quantization_version", GT_U32, 2),
           (f"{arch}.block_count", GT_U32, c["layers"]),
           (f"{arch}.context_length", GT_U32, c["ctx"]),
           (f"{arch}.embedding_length", GT_U32, c["embd"]),
           (f"{arch}.feed_forward_length", GT_U32, c["ff"]),
           (f"{arch}.attention.head_count", GT_U32, c["heads"]),
           (f"{arch}.attention.head_count_kv", GT_U32, c["kv_heads"]),
           (f"{arch}.attention.key_length", GT_U32, c["head_dim"]),
           (f"{arch}.attention.value_length", GT_U32, c["head_dim"]),
           (f"{arch}.rope.dimension_count", GT_U32, c["head_dim"]),
           (f"{arch}.rope.freq_base", GT_F32, c["rope_base"]),
           (f"{arch}.attention.layer_norm_rms_epsilon", GT_F32, c["eps"]),
           (f"{arch}.vocab_size", GT_U32, c["vocab"])]
    n_real = None
    for k, (t, v) in kv_src.items():
        if not k.startswith("tokenizer."):
            continue
        if k in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
            et, items = v
            n_real = len(items)
            pad = c["vocab"] - n_real
            items = items + ([f"<|lumen_pad_{i}|>" for i in range(pad)] if et == GT_STR else [5] * pad)
            v = (et, items)
        kvs.append((k, t, v))
    plan = tensor_plan(c, ftype)
    align = 32
    head = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(plan), len(kvs)))
    for k, t, v in kvs:
        head += enc_kv(k, t, v)
    off = 0
    offsets = []
    for name, ne, t, kind in plan:
        offsets.append(off)
        head += enc_str(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
        head += struct.pack("<IQ", t, off)
        off += (nbytes(ne, t) + align - 1) // align * align
    head += b"\0" * (-len(head) % align)
    total = len(head) + off
    if os.path.exists(path) and os.path.getsize(path) == total and not args.force:
        print(f"{path}: exists ({total / 1e9:.2f} GB), kept (--force rewrites it)")
        return path
    h = hashlib.sha256()
    t0 = time.time()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(head)
        h.update(head)
        for idx, (name, ne, t, kind) in enumerate(plan):
            n = 0
            for chunk in tensor_chunks(c, idx, name, ne, t, kind, seed):
                f.write(chunk)
                h.update(chunk)
                n += len(chunk)
            pad = b"\0" * (-n % align)
            f.write(pad)
            h.update(pad)
    os.replace(tmp, path)
    digest = h.hexdigest()
    counts = {}
    for name, ne, t, kind in plan:
        counts[TYPE_NAME[t]] = counts.get(TYPE_NAME[t], 0) + 1
    print(f"{path}: {total / 1e9:.2f} GB in {time.time() - t0:.1f} s, vocab {c['vocab']} "
          f"({n_real} of {TOKENIZER_SOURCE} + padding), tensors {counts}, sha256 {digest}")
    want = KNOWN_SHA256.get(os.path.basename(path))
    if seed == 1 and want and want != digest:
        os.remove(path)
        raise SystemExit(f"{path}: sha256 {digest} != the recorded {want} (removed): the writer or numpy "
                         "changed its output; regenerate the fixture that records it")
    return path


# ---- --check: a float64 NumPy forward pass of a few tokens --------------------------------
def check(path, tokens=(1, 504, 3060, 314, 260, 1115)):
    import gguf   # dequantization only
    r = gguf.GGUFReader(path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    fv = lambda k: r.fields[f"{arch}.{k}"].parts[-1][0]
    L, E, H, KV = int(fv("block_count")), int(fv("embedding_length")), int(fv("attention.head_count")), \
        int(fv("attention.head_count_kv"))
    HD, base, eps = int(fv("attention.key_length")), float(fv("rope.freq_base")), float(fv("attention.layer_norm_rms_epsilon"))
    T = {t.name: t for t in r.tensors}

    def W(name):
        t = T.get(name)
        if t is None:
            return None
        return gguf.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(t.shape[::-1] if len(t.shape) > 1 else -1)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    n = len(tokens)
    x = W("token_embd.weight")[list(tokens)]
    ff = W("rope_freqs.weight")
    inv = base ** (-np.arange(0, HD, 2) / HD)
    if ff is not None:
        inv = inv / ff
    ang = np.arange(n)[:, None] * inv[None, :]
    cs, sn = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(q):   # q [n, heads, HD]
        if arch == "llama":
            a, b = q[..., 0::2], q[..., 1::2]
            o = np.empty_like(q)
            o[..., 0::2], o[..., 1::2] = a * cs - b * sn, a * sn + b * cs
            return o
        a, b = q[..., :HD // 2], q[..., HD // 2:]
        return np.concatenate([a * cs - b * sn, a * sn + b * cs], -1)

    print(f"{os.path.basename(path)}: residual RMS after each layer ({n} tokens: min / max over tokens)")
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(L):
        p = f"blk.{i}."
        h = rms(x, W(p + "attn_norm.weight"))
        q, k, v = h @ W(p + "attn_q.weight").T, h @ W(p + "attn_k.weight").T, h @ W(p + "attn_v.weight").T
        for nm, arr in (("attn_q.bias", q), ("attn_k.bias", k), ("attn_v.bias", v)):
            b = W(p + nm)
            if b is not None:
                arr += b
        q, k, v = q.reshape(n, H, HD), k.reshape(n, KV, HD), v.reshape(n, KV, HD)
        qn, kn = W(p + "attn_q_norm.weight"), W(p + "attn_k_norm.weight")
        if qn is not None:
            q, k = rms(q, qn), rms(k, kn)
        q, k = rope(q), rope(k)
        g = H // KV
        att = np.empty((n, H, HD))
        for hh in range(H):
            s = q[:, hh] @ k[:, hh // g].T / math.sqrt(HD) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            att[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, hh // g]
        x = x + att.reshape(n, H * HD) @ W(p + "attn_output.weight").T
        h = rms(x, W(p + "ffn_norm.weight"))
        a, u = h @ W(p + "ffn_gate.weight").T, h @ W(p + "ffn_up.weight").T
        x = x + (a / (1 + np.exp(-a)) * u) @ W(p + "ffn_down.weight").T
        r_tok = np.sqrt((x * x).mean(-1))
        print(f"  layer {i:2d}: {r_tok.min():8.3f} / {r_tok.max():8.3f}")
        if not np.isfinite(x).all():
            raise SystemExit("  non-finite activations")
    out = W("output.weight")
    if out is None:
        out = W("token_embd.weight")
    logits = rms(x, W("output_norm.weight")) @ out.T
    top = np.sort(logits, -1)[:, ::-1]
    print(f"  logits: std {logits.std(-1).mean():.3f}, top-1 minus top-2 median {np.median(top[:, 0] - top[:, 1]):.3f}, "
          f"argmax {logits.argmax(-1).tolist()}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="*", help="MODEL:TYPE, e.g. llama3-1b:Q4_0")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--force", action="store_true", help="rewrite a file that exists")
    ap.add_argument("--check", action="store_true", help="NumPy forward pass: residual RMS per layer")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list or not args.specs:
        for k in MODELS:
            print(k, " ".join(FTYPES))
        sys.exit(0)
    os.makedirs(CACHE, exist_ok=True)
    for spec in args.specs:
        key, _, ftype = spec.partition(":")
        if key not in MODELS or ftype not in FTYPES:
            raise SystemExit(f"{spec}: expected MODEL:TYPE with MODEL in {list(MODELS)} and TYPE in {list(FTYPES)}")
        path = os.path.join(CACHE, f"shaped-{key}.{ftype}.gguf")
        write_model(key, ftype, args.seed, path)
        if args.check:
            check(path)
