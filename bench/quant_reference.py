#!/usr/bin/env python3
"""`lumen quantize` against llama.cpp's reference quantizers, byte for byte.

For every tensor `lumen quantize` requantized, the source rows are dequantized
with ggml's own dequantize_row_<src> and quantized with ggml's
quantize_row_<dst>_ref (what llama-quantize runs without an importance matrix),
both called through ctypes in the libggml-base of a llama-cpp-python install;
the bytes must equal the tensor in lumen's file. Then ggml's dequantize_row_<dst>
of lumen's bytes must equal lumen's own to_float (through `lumen run`).

usage: bench/.venv-embed/bin/python bench/quant_reference.py --ggml PATH/libggml-base.so
           [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] [--types q2_k,q3_k] [--lumen build/lumen]

Needs numpy and gguf (bench/.venv-embed has both; bench/setup_embed_venv.sh).
"""
import argparse
import ctypes
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DUMP_LUA = r"""
local lumen = require "lumen"
local m = lumen.model.load(arg[1])
local t = m:weight(arg[2]):float()
local ffi = require "ffi"
local f = assert(io.open(arg[3], "wb"))
f:write(ffi.string(t:data(), t:numel() * 4))
f:close()
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ggml", required=True, help="libggml-base.so of llama-cpp-python (llama_cpp/lib/)")
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--types", default="q2_k,q3_k")
    ap.add_argument("--lumen", default=os.path.join(ROOT, "build/lumen"))
    ap.add_argument("--dequant-tensors", type=int, default=3, help="tensors whose dequantization is compared too")
    a = ap.parse_args()

    ggml = ctypes.CDLL(a.ggml)
    src = GGUFReader(a.model)
    failures = 0
    for ty in a.types.split(","):
        out = os.path.join(tempfile.gettempdir(), f"quant_reference.{ty}.gguf")
        subprocess.run([a.lumen, "quantize", a.model, out, ty, "-t", "2"], check=True)
        dst = GGUFReader(out)
        sym = ty.replace("_k", "_K")  # ggml's spelling
        quant = getattr(ggml, f"quantize_row_{sym}_ref")
        deq_dst = getattr(ggml, f"dequantize_row_{sym}")
        by_name = {t.name: t for t in src.tensors}
        n_same = n_tensors = n_rows = 0
        compared = 0
        for t in dst.tensors:
            s = by_name[t.name]
            if t.tensor_type == s.tensor_type:
                continue
            n = int(t.shape[0])
            rows = int(np.prod(t.shape[1:]))
            sname = s.tensor_type.name.lower()
            f32 = np.empty(n * rows, dtype=np.float32)
            raw = np.ascontiguousarray(s.data).view(np.uint8)
            if sname == "f32":
                f32[:] = raw.view(np.float32)
            else:
                getattr(ggml, f"dequantize_row_{sname.replace('_k', '_K')}")(raw.ctypes.data_as(ctypes.c_void_p),
                                                         f32.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(n * rows))
            got = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)
            want = np.empty_like(got)
            quant(f32.ctypes.data_as(ctypes.c_void_p), want.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(n * rows))
            n_tensors += 1
            n_rows += rows
            if np.array_equal(got, want):
                n_same += 1
            else:
                bad = np.nonzero(got != want)[0]
                print(f"  {ty} {t.name}: {len(bad)} of {len(got)} bytes differ (first at {bad[0]})")
            if compared < a.dequant_tensors:
                compared += 1
                ref = np.empty(n * rows, dtype=np.float32)
                deq_dst(got.ctypes.data_as(ctypes.c_void_p), ref.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(n * rows))
                with tempfile.TemporaryDirectory() as d:
                    script, dump = os.path.join(d, "dump.lua"), os.path.join(d, "w.f32")
                    with open(script, "w") as f:
                        f.write(DUMP_LUA)
                    subprocess.run([a.lumen, "run", script, out, t.name, dump], check=True)
                    mine = np.fromfile(dump, dtype=np.float32)
                same = np.array_equal(mine.view(np.uint32), ref.view(np.uint32))
                print(f"  {ty} {t.name}: lumen's to_float {'equals' if same else 'DIFFERS FROM'} ggml's dequantize_row_{ty}"
                      f" ({n * rows} values)")
                failures += not same
        print(f"{ty}: {n_same} of {n_tensors} tensors ({n_rows} rows) byte-identical to ggml's quantize_row_{ty}_ref")
        failures += n_tensors - n_same
        os.remove(out)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
