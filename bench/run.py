#!/usr/bin/env python3
"""lumen against llama.cpp, side by side, on the same GGUF files, prompts and threads.

usage: bench/run.sh [--models smollm2,smollm2-q8_0,smollm2-q4_0,gemma3] [--threads 2,1]
                    [--rounds 2] [--runs 5] [--out bench/out]

For each model and thread count, `build/lumen bench` and bench/llama_speed.py run
in separate processes, alternating, `rounds` times each; every process does a
warm-up and `runs` timed runs and reports medians (prefill pp128 and pp512,
decode tg128, time to first token, peak RSS). The table keeps the median over
rounds. llama.cpp runs with its extra buffer types off (see llama_speed.py: the
AMX path gives wrong logits in this version), and once more with them on for
reference. Writes out/results.json, out/results.md (ratios lumen/llama.cpp) and
out/results.png.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, "bench", ".venv", "bin", "python")
MODELS_DIR = os.environ.get("LUMEN_MODELS", os.path.expanduser("~/.cache/lumen/models"))
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "smollm2-q8_0": "SmolLM2-135M-Instruct.Q8_0.gguf",
    "smollm2-q4_0": "SmolLM2-135M-Instruct.Q4_0.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
    # lumen quantize's, from the Q4_1 file (ffn_down only: 576-wide rows are not whole super-blocks)
    "smollm2-q2_k": "SmolLM2-135M-Instruct.Q2_K.gguf",
    "smollm2-q3_k": "SmolLM2-135M-Instruct.Q3_K.gguf",
}


def run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit("bench: %s failed:\n%s" % (" ".join(cmd), out.stderr[-2000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def lumen(path, threads, pp, gen, runs):
    return run_json([os.path.join(ROOT, "build", "lumen"), "bench", "-m", path, "-t", str(threads),
                     "--pp", str(pp), "-n", str(gen), "-r", str(runs)])


def llama(path, threads, pp, gen, runs, extra=False):
    cmd = [PY, os.path.join(ROOT, "bench", "llama_speed.py"), "--model", path, "--threads", str(threads),
           "--prompt-tokens", str(pp), "--gen", str(gen), "--runs", str(runs)]
    if extra:
        cmd.append("--extra-bufts")
    return run_json(cmd)


def ensure_model(name):
    path = os.path.join(MODELS_DIR, MODELS[name])
    if os.path.exists(path):
        return path
    if name.startswith("smollm2-"):
        src = os.path.join(MODELS_DIR, MODELS["smollm2"])
        ty = name.split("-", 1)[1]
        subprocess.run([os.path.join(ROOT, "build", "lumen"), "quantize", src, path, ty], check=True, cwd=ROOT)
        return path
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fetch_model.py"), name], check=True, cwd=ROOT)
    return path


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,smollm2-q8_0,smollm2-q4_0,gemma3")
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--no-amx", action="store_true", help="skip the llama.cpp run with extra buffer types on")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        path = ensure_model(name)
        for t in [int(x) for x in args.threads.split(",")]:
            r = {"model": name, "file": MODELS[name], "threads": t, "lumen": [], "llama": [], "llama_amx": []}
            for _ in range(args.rounds):
                for pp in (128, 512):
                    gen = 128 if pp == 128 else 0
                    r["lumen"].append((pp, lumen(path, t, pp, gen, args.runs)))
                    r["llama"].append((pp, llama(path, t, pp, gen, args.runs)))
            if not args.no_amx:
                r["llama_amx"].append((128, llama(path, t, 128, 128, args.runs, extra=True)))
            def agg(runs, key, pp):
                return med([x[key] for p, x in runs if p == pp])
            r["summary"] = {}
            for eng in ("lumen", "llama", "llama_amx"):
                r["summary"][eng] = {
                    "pp128": agg(r[eng], "prefill_tok_s", 128), "pp512": agg(r[eng], "prefill_tok_s", 512),
                    "tg128": agg(r[eng], "decode_tok_s", 128), "ttft_ms": agg(r[eng], "ttft_ms", 128),
                    "peak_rss_mib": (max([x["peak_rss_kb"] for _, x in r[eng]]) / 1024) if r[eng] else None,
                }
            rows.append(r)
            s = r["summary"]
            print("%-14s t=%d  lumen pp128 %.0f pp512 %.0f tg128 %.1f ttft %.1f ms | llama.cpp pp128 %.0f pp512 %.0f tg128 %.1f ttft %.1f ms"
                  % (name, t, s["lumen"]["pp128"], s["lumen"]["pp512"], s["lumen"]["tg128"], s["lumen"]["ttft_ms"],
                     s["llama"]["pp128"], s["llama"]["pp512"], s["llama"]["tg128"], s["llama"]["ttft_ms"]), file=sys.stderr)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["| model | threads | metric | lumen | llama.cpp | lumen / llama.cpp | llama.cpp (AMX bufts on) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        for key, label, higher in (("pp128", "prefill pp128 tok/s", True), ("pp512", "prefill pp512 tok/s", True),
                                   ("tg128", "decode tg128 tok/s", True), ("ttft_ms", "time to first token ms (128)", False),
                                   ("peak_rss_mib", "peak RSS MiB", False)):
            a, b, c = s["lumen"][key], s["llama"][key], s["llama_amx"][key]
            ratio = (a / b) if a and b else None
            lines.append("| %s | %d | %s | %s | %s | %s | %s |" % (
                r["model"], r["threads"], label, "%.1f" % a if a else "-", "%.1f" % b if b else "-",
                "%.2f" % ratio if ratio else "-", "%.1f" % c if c else "-"))
    md = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    from chart import bars
    labels = ["%s\nt=%d" % (r["model"], r["threads"]) for r in rows]
    bars(os.path.join(args.out, "results.png"), [
        (title, labels, [(name, [r["summary"][eng][key] for r in rows]) for eng, name in (("lumen", "lumen"), ("llama", "llama.cpp"))])
        for key, title in (("pp512", "prefill pp512 (tok/s)"), ("tg128", "decode tg128 (tok/s)"),
                           ("ttft_ms", "time to first token (ms)"))])


if __name__ == "__main__":
    main()
