#!/usr/bin/env python3
"""Prefill (ppN) of lumen against llama.cpp on the same GGUF files, threads and prompt,
alternating process by process, medians over rounds; also prefill FLOP/s
(2 x parameters in the layers' matrices x tokens/s) to set beside
build/lumen_prefill_gemm's oneDNN figures.

usage: bench/prefill_e2e.py --models PATH[,PATH...] [--threads 2] [--pp 512] [--rounds 3]
                            [--python /tmp/lcp36/bin/python] [--extra-bufts]

Each round runs `build/lumen bench --pp N -n 1 -r 1` and bench/llama_speed.py
(--prompt-tokens N --gen 1 --runs 1) in separate processes, each with its own warm-up
run; the order within a round alternates. llama.cpp's extra buffer types are off unless
--extra-bufts (llama_speed.py says why; on Zen 4 they repack Q4_0 for AVX-512).
Prints one line per run and a JSON summary on the last line.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit("prefill_e2e: %s failed:\n%s" % (" ".join(cmd), out.stderr[-2000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def matrix_params(path):
    """Parameters in the layers' matrices (blk.*, 2-D), read from the GGUF header."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import gguf  # bench/.venv-embed has it
    except ImportError:
        return None
    r = gguf.GGUFReader(path)
    n = 0
    for t in r.tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            n += int(t.shape[0]) * int(t.shape[1])
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--python", default="/tmp/lcp36/bin/python")
    ap.add_argument("--extra-bufts", action="store_true")
    a = ap.parse_args()
    summary = []
    for path in a.models.split(","):
        lumen = [os.path.join(ROOT, "build", "lumen"), "bench", "-m", path, "--pp", str(a.pp), "-n", "1", "-r", "1",
                 "-t", str(a.threads)]
        llama = [a.python, os.path.join(ROOT, "bench", "llama_speed.py"), "--model", path, "--threads",
                 str(a.threads), "--prompt-tokens", str(a.pp), "--gen", "1", "--runs", "1"]
        if a.extra_bufts:
            llama.append("--extra-bufts")
        got = {"lumen": [], "llama.cpp": []}
        for r in range(a.rounds):
            order = [("lumen", lumen), ("llama.cpp", llama)]
            if r % 2:
                order.reverse()
            for name, cmd in order:
                j = run_json(cmd)
                v = j.get("prefill_tok_s")
                if isinstance(v, list):
                    v = statistics.median(v)
                got[name].append(v)
                print("%s round %d %s: pp%d %.1f tok/s (load %.1f)" % (os.path.basename(path), r, name, a.pp, v,
                                                                         os.getloadavg()[0]), flush=True)
        params = matrix_params(path)
        row = {"model": os.path.basename(path), "threads": a.threads, "pp": a.pp, "rounds": a.rounds,
               "extra_bufts": a.extra_bufts, "lumen_tok_s": got["lumen"], "llama_tok_s": got["llama.cpp"],
               "lumen_median": statistics.median(got["lumen"]), "llama_median": statistics.median(got["llama.cpp"])}
        row["ratio"] = row["lumen_median"] / row["llama_median"]
        if params:
            row["matrix_params"] = params
            row["lumen_gflops"] = 2 * params * row["lumen_median"] * 1e-9
        print("%s: lumen %.1f, llama.cpp %.1f tok/s, %.2fx%s" % (
            row["model"], row["lumen_median"], row["llama_median"], row["ratio"],
            ", lumen %.1f GFLOP/s in the layers' matrices" % row["lumen_gflops"] if params else ""), flush=True)
        summary.append(row)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
