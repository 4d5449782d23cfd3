#!/usr/bin/env python3
"""Measure llama.cpp speed (through llama-cpp-python) on one GGUF model.

usage: bench/.venv/bin/python bench/llama_speed.py --model PATH [--threads 2]
           [--prompt-tokens 128] [--gen 128] [--runs 5] [--extra-bufts] [--flash-attn]
           [--kv-type f16|q8_0] [--ctx N]

Per run, in a context reset with llm.reset():
  prefill  eval of a prompt of exactly --prompt-tokens tokens in one batch
           (prefill_tok_s = prompt_tokens / time of that eval)
  ttft     prefill + argmax of its logits = time until the first generated id is known
  decode   --gen single-token evals, each followed by a raw argmax over the logits
           (greedy, no sampler), decode_tok_s = gen / their total time
One untimed warm-up run precedes the --runs timed runs.  Prints one JSON object
on stdout with the medians (and the per-run values).

By default llama.cpp's extra buffer types are OFF, as in bench/make_fixtures.py:
on AMX CPUs they send Q4_0/Q4_1 batches of >= 32 rows through AMX kernels that
produce wrong logits in this llama.cpp version.  --extra-bufts turns them back
on (llama.cpp's own default) to time that path anyway.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np

import llama_cpp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import load_llama, sha256  # noqa: E402

# deterministic filler text the prompt is cut from (repeated as needed)
FILLER = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk, "
    "counting the one hundred and twelve steps as his father had done before him. "
    "From the lamp room he could see the fishing boats returning to the harbor, "
    "their lights scattered across the dark water like fallen stars. "
    "He wrote the weather in a leather notebook: wind from the north-east, "
    "pressure falling, a thin rain expected before midnight. "
)


def prompt_ids(llm, n):
    ids = []
    while len(ids) < n:
        ids += llm.tokenize(FILLER.encode(), add_bos=False, special=False)
    return ids[:n]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--extra-bufts", action="store_true",
                    help="keep llama.cpp's extra buffer types (AMX/repacked weights)")
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--kv-type", choices=("f16", "q8_0"), default="f16",
                    help="type_k/type_v of the KV cache (q8_0 needs, and turns on, flash attention)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    ap.add_argument("--ctx", type=int, default=0, help="context size (default: prompt + gen + 16, at least 512)")
    args = ap.parse_args()
    if args.prompt_tokens < 1 or args.gen < 0 or args.runs < 1 or args.threads < 1:
        ap.error("--prompt-tokens, --runs and --threads must be >= 1, --gen >= 0")

    n_ctx = args.ctx or max(512, args.prompt_tokens + args.gen + 16)
    n_batch = max(512, args.prompt_tokens)
    if args.kv_type == "q8_0":
        args.flash_attn = True
    kv = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}[args.kv_type]
    llm = load_llama(args.model, n_ctx=n_ctx, n_threads=args.threads, extra_bufts=args.extra_bufts,
                     flash_attn=args.flash_attn, seed=1234, logits_all=False,
                     n_batch=n_batch, n_ubatch=n_batch, type_k=kv, type_v=kv)
    n_vocab = llm.n_vocab()
    ids = prompt_ids(llm, args.prompt_tokens)

    def last_argmax():
        # with logits_all=False only the last token of a batch has logits: row 0
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
        return int(logits.argmax())

    def one_run():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        tok = last_argmax()
        t2 = time.perf_counter()
        for _ in range(args.gen):
            llm.eval([tok])
            tok = last_argmax()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t0, t3 - t2

    for _ in range(args.warmup):
        one_run()
    prefill, ttft, decode = [], [], []
    for _ in range(args.runs):
        p, f, d = one_run()
        prefill.append(args.prompt_tokens / p)
        ttft.append(f * 1000.0)
        if args.gen:
            decode.append(args.gen / d)

    out = {
        "engine": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "model": os.path.basename(args.model),
        "model_sha256": sha256(args.model),
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen,
        "runs": args.runs,
        "extra_bufts": args.extra_bufts,
        "flash_attn": args.flash_attn,
        "kv_type": args.kv_type,
        "prefill_tok_s": round(statistics.median(prefill), 2),
        "decode_tok_s": round(statistics.median(decode), 2) if decode else None,
        "ttft_ms": round(statistics.median(ttft), 3),
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "model_file_bytes": os.path.getsize(args.model),
        "per_run": {
            "prefill_tok_s": [round(x, 2) for x in prefill],
            "decode_tok_s": [round(x, 2) for x in decode],
            "ttft_ms": [round(x, 3) for x in ttft],
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
