#!/usr/bin/env python3
"""Embedding speed: lumen (model:embed, all-MiniLM-L6-v2) against llama.cpp
(llama-cpp-python 0.3.16 in bench/.venv, embedding=True, on the GGUF that
scripts/bert_to_gguf.py writes), texts/s on batches of 1, 32 and 256 short
sentences (bench/embed/sentences.txt), each in its own process, the two run
alternately, medians of the runs. llama.cpp takes at most 64 sequences a
batch (its LLAMA_MAX_SEQ): a batch of 256 is four calls of 64.

usage: bench/.venv/bin/python bench/embed/speed.py [--runs 3] [--seconds 4] [--threads 2]
           [--st-python VENV/bin/python] [--no-llama]
--st-python adds sentence-transformers (torch on the CPU, same threads) as a peer.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from batch_throughput import cpu_name  # noqa: E402  (one for the bench scripts)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("LUMEN_MODELS") or os.path.expanduser("~/.cache/lumen/models")
SENTENCES = os.path.join(ROOT, "bench", "embed", "sentences.txt")

LLAMA = r'''
import json, sys, time
import llama_cpp.llama_cpp as L
orig = L.llama_context_default_params
def params():
    p = orig(); p.n_seq_max = 64; return p
L.llama_context_default_params = params
from llama_cpp import Llama
path, file, batch, seconds, threads, nb = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
texts = open(file, encoding="utf-8").read().split("\n")[:-1]
m = Llama(model_path=path, embedding=True, verbose=False, n_ctx=nb, n_batch=nb, n_ubatch=nb,
          n_threads=threads, n_threads_batch=threads)
def run(k):
    part = [texts[(k * batch + i) % len(texts)] for i in range(batch)]
    out = []
    for i in range(0, batch, 64):
        out += m.embed(part[i:i + 64])
    return out
run(0)
n, t0, k = 0, time.perf_counter(), 1
while time.perf_counter() - t0 < seconds:
    run(k); n += batch; k += 1
print(json.dumps({"texts_per_s": n / (time.perf_counter() - t0), "texts": n}))
'''


# sentence-transformers (torch on the CPU, the same thread count), in a Python that has it
# (--st-python: torch from PyPI brings CUDA wheels, so it lives in a venv of its own)
ST = r'''
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
path, file, batch, seconds, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
from sentence_transformers import SentenceTransformer
m = SentenceTransformer(path, device="cpu")
texts = open(file, encoding="utf-8").read().split("\n")[:-1]
def run(k):
    part = [texts[(k * batch + i) % len(texts)] for i in range(batch)]
    return m.encode(part, batch_size=batch, convert_to_numpy=True)
run(0)
n, t0, k = 0, time.perf_counter(), 1
while time.perf_counter() - t0 < seconds:
    run(k); n += batch; k += 1
print(json.dumps({"texts_per_s": n / (time.perf_counter() - t0), "texts": n}))
'''


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"speed: {' '.join(cmd[:3])} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["texts_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,32,256")
    # llama.cpp's n_batch = n_ubatch = n_ctx: the tokens of one pass. Its BERT attends over the whole
    # pass with a mask, so smaller passes were faster here (batch 32: 50 texts/s at 512, 17 at 4096)
    ap.add_argument("--llama-batch", type=int, default=512)
    ap.add_argument("--st-python", help="a python with sentence-transformers: measure it too")
    ap.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    a = ap.parse_args()
    hf = os.path.join(CACHE, "all-MiniLM-L6-v2")
    gg = os.path.join(CACHE, "all-MiniLM-L6-v2.f32.gguf")
    lumen = os.path.join(ROOT, "build", "lumen")
    res = {}
    for b in map(int, a.batches.split(",")):
        r = {"lumen": [], "lumen_gguf": []}
        if not a.no_llama:
            r["llama.cpp"] = []
        if a.st_python:
            r["sentence-transformers"] = []
        for _ in range(a.runs):
            r["lumen"].append(run([lumen, "run", "bench/embed/lumen_speed.lua", hf, SENTENCES, str(b), str(a.seconds), str(a.threads)]))
            if a.st_python:
                r["sentence-transformers"].append(run([a.st_python, "-c", ST, hf, SENTENCES, str(b), str(a.seconds), str(a.threads)]))
            if not a.no_llama:
                r["llama.cpp"].append(run([sys.executable, "-c", LLAMA, gg, SENTENCES, str(b), str(a.seconds), str(a.threads), str(a.llama_batch)]))
            r["lumen_gguf"].append(run([lumen, "run", "bench/embed/lumen_speed.lua", gg, SENTENCES, str(b), str(a.seconds), str(a.threads)]))
        res[b] = {k: statistics.median(v) for k, v in r.items()}
        res[b]["runs"] = r
        peers = "".join(f", {k} {res[b][k]:8.1f} ({res[b]['lumen'] / res[b][k]:.2f}x)" for k in ("llama.cpp", "sentence-transformers") if k in r)
        print(f"batch {b:4d}: lumen {res[b]['lumen']:8.1f} texts/s (GGUF {res[b]['lumen_gguf']:8.1f}){peers}   "
              f"runs: { {k: [round(x) for x in v] for k, v in r.items()} }", flush=True)
    print(json.dumps({"cpu": cpu_name(), "threads": a.threads, "results": res}))


if __name__ == "__main__":
    main()
