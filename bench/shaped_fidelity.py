#!/usr/bin/env python3
"""Fidelity at real shapes: lumen's logits against llama.cpp's and against the exact (float64)
logits, on the random-weight files of bench/make_shaped.py (Llama-3.2-1B, Qwen2.5-7B and
Qwen3-8B shapes), measured the way spec/c/test_agreement.c measures the committed fixtures.

usage: python3 bench/shaped_fidelity.py [MODEL:TYPE ...] [--prompts N] [--gen N] [--no-ref]
  default: qwen2-7b:Q4_0 qwen3-8b:Q4_0 qwen2-7b:Q4_K_M qwen3-8b:Q4_K_M
For each file: bench/make_shaped.py writes it if missing (bench/.venv-embed); bench/make_fixtures.py
records llama.cpp's greedy tokens and top-20 logits (llama-cpp-python 0.3.36: bench/.venv-mtmd
from bench/setup_venv_mtmd.sh, or --llama-python), extra buffer types off, 1 thread; make_shaped.py
--ref appends the float64 logits of the same positions (slow: the 8B is dequantized layer by
layer in float64); then build/test_agreement FIXTURE MODEL compares lumen. Writes
bench/out/shaped_fidelity.json and .md (--name; fixtures in bench/out/shaped/).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("LUMEN_MODELS") or os.path.expanduser("~/.cache/lumen/models")
OUT = os.path.join(ROOT, "bench", "out")


def run(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, text=True, **kw)


def parse(text):
    """The summary lines test_agreement prints."""
    r = {}
    m = re.search(r"top-1 vs llama.cpp .*?at (\d+) positions: lumen\s+([\d.]+)%, llama.cpp prompt 1 by 1\s+([\d.]+)%", text)
    if m:
        r.update(positions=int(m[1]), top1_lumen=float(m[2]), top1_llama_self=float(m[3]))
        m = re.search(r"lumen:\s+median ([\d.]+), max ([\d.]+)\n\s+llama.cpp \(batched\):\s+median ([\d.]+), max ([\d.]+)", text)
        r.update(exact_lumen_median=float(m[1]), exact_lumen_max=float(m[2]),
                 exact_llama_median=float(m[3]), exact_llama_max=float(m[4]))
    else:
        m = re.search(r"at (\d+) positions:\n\s+lumen:\s+top-1 equal\s+([\d.]+)%, \|diff\| median ([\d.]+), max ([\d.]+)\n"
                      r"\s+llama.cpp, prompt 1 by 1: top-1 equal\s+([\d.]+)%, \|diff\| median ([\d.]+), max ([\d.]+)", text)
        if m:
            r.update(positions=int(m[1]), top1_lumen=float(m[2]), vs_llama_median=float(m[3]), vs_llama_max=float(m[4]),
                     top1_llama_self=float(m[5]), llama_self_median=float(m[6]), llama_self_max=float(m[7]))
    m = re.search(r"greedy: (\d+)/(\d+) continuations of (\d+) tokens identical; (\d+) more fork at a near-tie", text)
    if m:
        r.update(greedy_identical=int(m[1]), greedy_of=int(m[2]), greedy_tokens=int(m[3]), greedy_near_ties=int(m[4]))
    m = re.search(r"agreement: (\d+) passed, (\d+) failed", text)
    r["checks_failed"] = int(m[2]) if m else None
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="*", default=["qwen2-7b:Q4_0", "qwen3-8b:Q4_0", "qwen2-7b:Q4_K_M", "qwen3-8b:Q4_K_M"])
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--no-ref", action="store_true", help="skip the float64 reference (compare with llama.cpp only)")
    ap.add_argument("--llama-python", default=os.path.join(ROOT, "bench", ".venv-mtmd", "bin", "python"))
    ap.add_argument("--numpy-python", default=os.path.join(ROOT, "bench", ".venv-embed", "bin", "python"))
    ap.add_argument("--reuse", action="store_true", help="keep a fixture already recorded from the same file")
    ap.add_argument("--name", default="shaped_fidelity", help="output name: bench/out/NAME.json and .md")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    args = ap.parse_args()
    os.makedirs(os.path.join(OUT, "shaped"), exist_ok=True)
    rows = []
    for spec in args.specs:
        key, _, ftype = spec.partition(":")
        model = os.path.join(CACHE, f"shaped-{key}.{ftype}.gguf")
        fixture = os.path.join(OUT, "shaped", f"{key}.{ftype}.txt")
        t0 = time.time()
        run([args.numpy_python, os.path.join(ROOT, "bench", "make_shaped.py"), spec])
        reuse = args.reuse and os.path.exists(fixture) and os.path.getmtime(fixture) > os.path.getmtime(model)
        if not reuse:
            run([args.llama_python, os.path.join(ROOT, "bench", "make_fixtures.py"), "--model", model, "--out", fixture,
                 "--corpus", "none", "--prompts", str(args.prompts), "--gen", str(args.gen), "--threads", "1"])
        if not args.no_ref and not (reuse and "\nref " in open(fixture).read()):
            run([args.numpy_python, os.path.join(ROOT, "bench", "make_shaped.py"), spec, "--ref", fixture])
        p = subprocess.run([os.path.join(args.build, "test_agreement"), fixture, model, str(args.prompts),
                            str(args.prompts)], text=True, capture_output=True)
        print(p.stdout, p.stderr, file=sys.stderr)
        row = dict(model=key, type=ftype, file=os.path.basename(model), prompts=args.prompts, gen=args.gen,
                   seconds=round(time.time() - t0), **parse(p.stdout))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        write(rows, args.name)   # after each file: the 8B takes long


def write(rows, name):
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(rows, f, indent=1)
    md = ["| file | positions | top-1 = llama.cpp (lumen / llama.cpp 1-by-1) | lumen - llama.cpp: median / max "
          "| llama.cpp 1-by-1 - batched | lumen - exact | llama.cpp - exact | greedy identical | failed checks |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['file']} | {r.get('positions', '-')} | {r.get('top1_lumen', '-')}% / {r.get('top1_llama_self', '-')}% "
                  f"| {r.get('vs_llama_median', '-')} / {r.get('vs_llama_max', '-')} "
                  f"| {r.get('llama_self_median', '-')} / {r.get('llama_self_max', '-')} "
                  f"| {r.get('exact_lumen_median', '-')} / {r.get('exact_lumen_max', '-')} "
                  f"| {r.get('exact_llama_median', '-')} / {r.get('exact_llama_max', '-')} "
                  f"| {r.get('greedy_identical', '-')}/{r.get('greedy_of', '-')} (+{r.get('greedy_near_ties', '-')} near-tie) "
                  f"| {r.get('checks_failed')} |")
    with open(os.path.join(OUT, name + ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
