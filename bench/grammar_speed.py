#!/usr/bin/env python3
"""Decode speed with a JSON-schema constraint against unconstrained decode, for
lumen and for llama.cpp (llama-cpp-python 0.3.16 in bench/.venv), on the same
GGUF, prompt, schema and threads: rounds alternate between the four
configurations, each a fresh process; medians are reported.

usage: bench/.venv/bin/python bench/grammar_speed.py [rounds] [schema] [threads]
       bench/.venv/bin/python bench/grammar_speed.py --llama MODE SCHEMA THREADS MAX_TOKENS SEED   (one run)
"""
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def llama_once(mode, name, threads, max_tokens, seed):
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar
    entry = next(e for e in json.load(open(os.path.join(ROOT, "spec", "fixtures", "json_schemas.json"))) if e["name"] == name)
    llm = llama_cpp.Llama(MODEL, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False, seed=seed)
    t0 = time.perf_counter()
    grammar = LlamaGrammar.from_json_schema(json.dumps(entry["schema"]), verbose=False) if mode == "grammar" else None
    compile_ms = (time.perf_counter() - t0) * 1000
    prompt = llm.tokenizer_.encode  # noqa: F841 (the chat template comes from the GGUF, as lumen's)
    messages = [{"role": "user", "content": "Give " + entry["prompt"] + " as JSON."}]
    times = []
    for _ in llm.create_chat_completion(messages, grammar=grammar, max_tokens=max_tokens, temperature=1.0, top_k=40,
                                        top_p=1.0, min_p=0.0, repeat_penalty=1.0, stream=True, seed=seed):
        times.append(time.perf_counter())
    # the first chunk carries the role only; then one chunk per token
    n = len(times) - 1
    rate = (n - 1) / (times[-1] - times[1]) if n > 1 else 0.0
    print(json.dumps({"impl": "llama.cpp", "mode": mode, "tokens": n, "tok_s": rate, "compile_ms": compile_ms}))


def run(cmd):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    if sys.argv[1:2] == ["--llama"]:
        mode, name, threads, max_tokens, seed = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
        return llama_once(mode, name, threads, max_tokens, seed)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    name = sys.argv[2] if len(sys.argv) > 2 else "recipe"
    threads = sys.argv[3] if len(sys.argv) > 3 else "2"
    res = {}
    for r in range(rounds):
        for impl, mode in (("lumen", "free"), ("lumen", "grammar"), ("llama.cpp", "grammar"), ("llama.cpp", "free")):
            seed = str(100 + r)
            if impl == "lumen":
                cmd = [os.path.join(ROOT, "build", "lumen"), "run", "bench/grammar_speed.lua", mode, name, threads, "200", seed]
            else:
                cmd = [sys.executable, "bench/grammar_speed.py", "--llama", mode, name, threads, "200", seed]
            o = run(cmd)
            res.setdefault((impl, mode), []).append(o)
            print(f"round {r + 1} {impl:9s} {mode:7s} {o['tokens']:4d} tokens {o['tok_s']:7.1f} tok/s", file=sys.stderr)
    med = {k: statistics.median(o["tok_s"] for o in v) for k, v in res.items()}
    toks = {k: statistics.median(o["tokens"] for o in v) for k, v in res.items()}
    lines = [f"schema {name}, {threads} threads, {rounds} alternating rounds, medians:"]
    for k in res:
        lines.append(f"  {k[0]:9s} {k[1]:7s} {med[k]:7.1f} tok/s ({toks[k]:.0f} tokens)")
    lines.append(f"  lumen constrained / unconstrained: {med[('lumen', 'grammar')] / med[('lumen', 'free')]:.3f}")
    lines.append(f"  lumen constrained / llama.cpp constrained: {med[('lumen', 'grammar')] / med[('llama.cpp', 'grammar')]:.2f}")
    lines.append(f"  llama.cpp constrained / unconstrained: {med[('llama.cpp', 'grammar')] / med[('llama.cpp', 'free')]:.3f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
