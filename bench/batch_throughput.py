#!/usr/bin/env python3
"""`lumen batch` against single-stream decode: aggregate tokens/s.

usage: python3 bench/batch_throughput.py [--requests 256] [--max-tokens 64] [--slots 32]
                                         [--single 32] [--threads N] [--out bench/out]

Writes N chat requests (varied prompts, greedy) as an OpenAI batch file, runs
`build/lumen batch` on it (tokens / wall time of the run, the model load
excluded, from its summary line), then the first --single of the same
requests one at a time through one session as `lumen generate` decodes
(bench/single_stream.lua; tokens / wall time, prompts included on both sides).
A subset is enough for the single stream's rate. Prints a markdown table; the
target is batch >= 4x single.
"""
import argparse
import json
import os
import platform
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBJECTS = ["the ocean", "a lighthouse", "quantum computers", "bread baking", "the moon", "bicycles",
            "volcanoes", "a chess opening", "honey bees", "the Roman empire", "rainforests", "jazz",
            "black holes", "gardening", "the printing press", "penguins"]
ASKS = ["Write a short story about {}.", "Explain {} to a child.", "List five facts about {}.",
        "Write a poem about {}.", "Describe {} in detail.", "What is interesting about {}?"]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--single", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bin", default=os.environ.get("LUMEN_BIN", os.path.join(ROOT, "build", "lumen")))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="lumen-batch-bench-")
    inp, out = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl")
    with open(inp, "w") as f:
        for i in range(a.requests):
            ask = ASKS[i % len(ASKS)].format(SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)])
            f.write(json.dumps({"custom_id": "r%d" % i, "method": "POST", "url": "/v1/chat/completions",
                                "body": {"messages": [{"role": "user", "content": "%s (%d)" % (ask, i)}],
                                         "max_tokens": a.max_tokens, "temperature": 0}}) + "\n")
    threads = ["-t", str(a.threads)] if a.threads else []
    p = subprocess.run([a.bin, "batch", inp, "-o", out, "--slots", str(a.slots), "--progress", "none", *threads],
                       cwd=ROOT, capture_output=True, check=True)
    summary = json.loads(p.stderr.decode().strip().splitlines()[-1])["summary"]
    batch_rate = summary["tokens_this_run"] / summary["wall_s"]
    p = subprocess.run([a.bin, "run", os.path.join(ROOT, "bench", "single_stream.lua"), inp, str(a.single),
                        str(a.threads)], cwd=ROOT, capture_output=True, check=True)
    single = json.loads(p.stdout.decode().strip().splitlines()[-1])
    single_rate = single["tokens"] / single["seconds"]
    res = {"cpu": cpu_name(), "cores": os.cpu_count(), "requests": a.requests, "max_tokens": a.max_tokens,
           "slots": a.slots, "batch": {"tokens": summary["tokens_this_run"], "wall_s": summary["wall_s"],
                                       "tokens_per_s": round(batch_rate, 1)},
           "single": {"requests": single["requests"], "tokens": single["tokens"],
                      "wall_s": round(single["seconds"], 2), "tokens_per_s": round(single_rate, 1)},
           "ratio": round(batch_rate / single_rate, 2)}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "batch_throughput.json"), "w") as f:
        json.dump(res, f, indent=1)
    print("| %s, %d cores | requests | tokens | wall s | tokens/s |" % (res["cpu"], res["cores"]))
    print("|---|---|---|---|---|")
    print("| lumen batch, %d slots | %d | %d | %.1f | %.1f |" % (a.slots, a.requests, summary["tokens_this_run"],
                                                              summary["wall_s"], batch_rate))
    print("| one at a time (single stream) | %d | %d | %.1f | %.1f |" % (single["requests"], single["tokens"],
                                                                      single["seconds"], single_rate))
    print("| ratio | | | | %.2fx |" % res["ratio"])


if __name__ == "__main__":
    main()
