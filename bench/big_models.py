#!/usr/bin/env python3
"""Decode at the memory-bandwidth limit, long context, the q8_0 KV cache and cold start:
lumen against llama.cpp (llama-cpp-python 0.3.36) on the same real-shaped GGUF files.

usage: python3 bench/big_models.py [--parts bandwidth,decode,long,kv,coldstart,agree]
           [--models llama3-1b:Q4_0,qwen3-8b:Q4_0] [--threads 1,2] [--rounds 2] [--gen 64]
           [--long-model llama3-1b:Q4_0] [--depth 8192] [--out bench/out/big]

Files: bench/make_shaped.py writes shaped-<model>.<type>.gguf into $LUMEN_MODELS
(~/.cache/lumen/models). llama.cpp runs in $LUMEN_LLAMA_PY (default bench/.venv-mtmd/bin/python,
else /tmp/lcp36/bin/python: llama-cpp-python 0.3.36) through bench/llama_speed.py with its
extra buffer types OFF: on the AMX Xeons these machines also are, the repacked (AMX) path
segfaults or gives wrong logits in this version. Both engines read the same bytes per token
either way (lumen's interleaved layer matrices, core/model.c, are the file's bytes reordered;
`lumen bench` times decode once they are in place, lm_model_wait_layout).

Parts (each engine in its own processes, the two alternating, `rounds` times; medians):
  bandwidth  build/lumen_stream_read: read GB/s with 1 and 2 threads (the roofline's denominator)
  decode     tg (--gen) after a 16-token prompt, per model and thread count; the roofline is
             read GB/s / weight bytes per token (every matrix once; token_embd one row when
             the output matrix is separate), the read GB/s the median of the bandwidth part's
             and one more reading after each round (read_gbs)
  long       --long-model at --depth: TTFT of a prompt of --depth tokens and decode at that
             depth, f16 KV cache (one untimed run skipped: an 8k prefill takes minutes)
  kv         the same depth with the q8_0 KV cache on both sides (llama.cpp: type_k/type_v
             q8_0, which needs its flash attention, so its f16 row runs with flash attention too)
  coldstart  process start to the first generated token (`lumen generate -n 1`, page cache
             warm: dropping it would hit the other users of the machine) and peak RSS against
             file + KV + 64 MiB; llama.cpp's (a python process: interpreter start included) for
             reference
  agree      (not by default) logits along a 64-token prompt + 64 greedy tokens, per position:
             lumen and llama.cpp, each with f16 and q8_0 KV caches (llama.cpp with flash
             attention, which its q8_0 V needs), on --agree-models (real weights: SmolLM2, Gemma 3)
Writes OUT/results.json, OUT/results.md and OUT/results.png (bench/chart.py: matplotlib, when
the python running this has it).
"""
import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.environ.get("LUMEN_MODELS", os.path.expanduser("~/.cache/lumen/models"))
LUMEN = os.path.join(ROOT, "build", "lumen")


def llama_python():
    p = os.environ.get("LUMEN_LLAMA_PY")
    for c in (p, os.path.join(ROOT, "bench", ".venv-mtmd", "bin", "python"), "/tmp/lcp36/bin/python"):
        if c and os.path.exists(c):
            return c
    raise SystemExit("big_models: no python with llama-cpp-python 0.3.36 (bench/setup_venv_mtmd.sh, or LUMEN_LLAMA_PY)")


def model_path(spec):
    name, typ = spec.split(":")
    p = os.path.join(MODELS_DIR, "shaped-%s.%s.gguf" % (name, typ))
    if not os.path.exists(p):
        raise SystemExit("big_models: %s is missing: bench/.venv-embed/bin/python bench/make_shaped.py %s" % (p, spec))
    return p


# ---- GGUF: the tensor sizes and the few keys the roofline and the KV size need ----------------
# (type id: (block elements, block bytes)), ggml's
BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
          10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
          30: (1, 2)}
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_info(path):
    with open(path, "rb") as f:
        def rd(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def rstr():
            return f.read(rd("Q")).decode("utf-8", "replace")

        def rval(t):
            if t == 8:
                return rstr()
            if t == 9:
                et, n = rd("I"), rd("Q")
                if et in SCALARS:
                    f.seek(n * struct.calcsize(SCALARS[et]), 1)
                else:
                    for _ in range(n):
                        rval(et)
                return None
            return rd(SCALARS[t])

        if f.read(4) != b"GGUF":
            raise SystemExit("big_models: %s is not a GGUF file" % path)
        rd("I")
        n_t, n_kv = rd("Q"), rd("Q")
        kv = {}
        for _ in range(n_kv):
            k = rstr()
            kv[k] = rval(rd("I"))
        tensors = {}
        for _ in range(n_t):
            name = rstr()
            dims = [rd("Q") for _ in range(rd("I"))]
            t = rd("I")
            rd("Q")
            n = 1
            for d in dims:
                n *= d
            be, bb = BLOCKS[t]
            tensors[name] = (n // be * bb, dims)
    arch = kv["general.architecture"]
    total = sum(b for b, _ in tensors.values())
    per_token = total
    if "output.weight" in tensors:  # a separate output matrix: decode reads one embedding row
        b, dims = tensors["token_embd.weight"]
        per_token -= b - b // dims[1]
    n_head = kv["%s.attention.head_count" % arch]
    n_kv = kv.get("%s.attention.head_count_kv" % arch, n_head)
    hd = kv.get("%s.attention.key_length" % arch, kv["%s.embedding_length" % arch] // n_head)
    return {"arch": arch, "weight_bytes": total, "bytes_per_token": per_token,
            "n_layer": kv["%s.block_count" % arch], "kv_dim": n_kv * hd}


# ---- runs ---------------------------------------------------------------------------------------
def run_json(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise SystemExit("big_models: %s failed:\n%s" % (" ".join(cmd), out.stderr[-2000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def lumen_bench(path, threads, pp, gen, runs, warmup=1, kv="f16", ctx=None):
    cmd = [LUMEN, "bench", "-m", path, "-t", str(threads), "--pp", str(pp), "-n", str(gen), "-r", str(runs),
           "--warmup", str(warmup), "--kv-type", kv]
    if ctx:
        cmd += ["-c", str(ctx)]
    return run_json(cmd)


def llama_bench(py, path, threads, pp, gen, runs, warmup=1, kv="f16", ctx=None, flash=False):
    cmd = [py, "bench/llama_speed.py", "--model", path, "--threads", str(threads), "--prompt-tokens", str(pp),
           "--gen", str(gen), "--runs", str(runs), "--warmup", str(warmup), "--kv-type", kv]
    if ctx:
        cmd += ["--ctx", str(ctx)]
    if flash:
        cmd += ["--flash-attn"]
    return run_json(cmd)


def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def bandwidth(reps=9, threads="1,2"):
    out = subprocess.run([os.path.join(ROOT, "build", "lumen_stream_read"), "1024", str(reps), threads],
                         capture_output=True, text=True, check=True)
    return {str(d["threads"]): d for d in (json.loads(l) for l in out.stdout.splitlines())}


def decode(py, models, threads, rounds, gen, bw):
    rows = []
    for spec in models:
        path = model_path(spec)
        info = gguf_info(path)
        for t in threads:
            lu, ll = [], []
            # the read bandwidth again between the rounds (a shared host's
            # load moves it): the roofline takes the median of all readings
            reads = [bw[str(t)]["read_gbs_median"]] if bw else []
            for _ in range(rounds):
                lu += lumen_bench(path, t, 16, gen, 2)["per_run"]["decode_tok_s"]
                ll += llama_bench(py, path, t, 16, gen, 2)["per_run"]["decode_tok_s"]
                if bw:
                    reads.append(bandwidth(3, str(t))[str(t)]["read_gbs_median"])
            roof = med(reads) * 1e9 / info["bytes_per_token"] if bw else None
            r = {"model": spec, "threads": t, "gen": gen, "bytes_per_token": info["bytes_per_token"],
                 "lumen_tok_s": med(lu), "llama_tok_s": med(ll), "lumen_runs": lu, "llama_runs": ll,
                 "read_gbs": reads, "roofline_tok_s": round(roof, 3) if roof else None}
            r["ratio"] = round(r["lumen_tok_s"] / r["llama_tok_s"], 3)
            r["lumen_of_roofline"] = round(r["lumen_tok_s"] / roof, 3) if roof else None
            r["llama_of_roofline"] = round(r["llama_tok_s"] / roof, 3) if roof else None
            print(json.dumps(r), flush=True)
            rows.append(r)
    return rows


def long_context(py, spec, threads, depth, gen, kvs, rounds):
    path = model_path(spec)
    ctx = depth + gen + 64
    rows = []
    for kv in kvs:
        lu, ll = [], []
        for _ in range(rounds):
            lu.append(lumen_bench(path, threads, depth, gen, 1, warmup=0, kv=kv, ctx=ctx))
            ll.append(llama_bench(py, path, threads, depth, gen, 1, warmup=0, kv=kv, ctx=ctx, flash=kv == "q8_0"))
        r = {"model": spec, "threads": threads, "depth": depth, "gen": gen, "kv_type": kv,
             "llama_flash_attn": kv == "q8_0",
             "lumen_ttft_ms": med([x["ttft_ms"] for x in lu]), "llama_ttft_ms": med([x["ttft_ms"] for x in ll]),
             "lumen_decode_tok_s": med([x["decode_tok_s"] for x in lu]),
             "llama_decode_tok_s": med([x["decode_tok_s"] for x in ll]),
             "lumen_peak_rss_kb": max(x["peak_rss_kb"] for x in lu), "llama_peak_rss_kb": max(x["peak_rss_kb"] for x in ll)}
        r["ttft_ratio"] = round(r["llama_ttft_ms"] / r["lumen_ttft_ms"], 3)
        r["decode_ratio"] = round(r["lumen_decode_tok_s"] / r["llama_decode_tok_s"], 3)
        print(json.dumps(r), flush=True)
        rows.append(r)
    return rows


LLAMA_COLD = """
import sys, numpy as np
sys.path.insert(0, "bench")
from make_fixtures import load_llama
llm = load_llama(sys.argv[1], n_ctx=512, n_threads=int(sys.argv[2]), logits_all=False)
llm.eval(llm.tokenize(b"Hello", add_bos=False, special=False))
np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).argmax()
"""


def timed_rss(cmd):
    t0 = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True, cwd=ROOT)
    t = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit("big_models: %s failed:\n%s" % (" ".join(cmd), out.stderr[-2000:]))
    return t, int(out.stderr.strip().splitlines()[-1])


def coldstart(py, specs, threads, rounds):
    rows = []
    for spec in specs:
        path = model_path(spec)
        info = gguf_info(path)
        ctx = 512
        kv = 2 * info["n_layer"] * ctx * info["kv_dim"] * 2
        lt, lr, pt, pr = [], [], [], []
        for _ in range(rounds):
            t, rss = timed_rss([LUMEN, "generate", "-m", path, "-p", "Hello", "-n", "1", "--temp", "0", "--no-stats",
                                "-c", str(ctx), "-t", str(threads)])
            lt.append(t), lr.append(rss)
            t, rss = timed_rss([py, "-c", LLAMA_COLD, path, str(threads)])
            pt.append(t), pr.append(rss)
        size = os.path.getsize(path)
        r = {"model": spec, "threads": threads, "ctx": ctx, "file_bytes": size, "kv_bytes": kv,
             "lumen_first_token_s": med(lt), "llama_first_token_s": med(pt),
             "lumen_peak_rss_kb": max(lr), "llama_peak_rss_kb": max(pr),
             "rss_bound_kb": (size + kv + 64 * 2**20) // 1024}
        r["lumen_rss_within_bound"] = r["lumen_peak_rss_kb"] <= r["rss_bound_kb"]
        print(json.dumps(r), flush=True)
        rows.append(r)
    return rows


def agree_worker(path, P, N):
    """(in the llama.cpp python) logits along one token sequence: llama.cpp with f16 and q8_0 KV
    caches (flash attention for both: q8_0 V needs it), lumen's (bench/kv_logits.lua) with both;
    the sequence is a P-token filler prompt and N greedy tokens of llama.cpp's f16 run."""
    import tempfile
    import numpy as np
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from make_fixtures import load_llama
    from llama_speed import prompt_ids
    import llama_cpp

    def llama_rows(kv, ids=None):
        t = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}[kv]
        n = P + N + 16
        llm = load_llama(path, n_ctx=n, n_threads=2, logits_all=True, n_batch=n, n_ubatch=n, flash_attn=True,
                         type_k=t, type_v=t)
        if ids is None:
            ids = prompt_ids(llm, P)
            llm.eval(ids)
            for _ in range(N):
                ids.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                llm.eval([ids[-1]])
            llm.reset()
        llm.eval(ids)
        return ids, np.array(llm.scores[P - 1:len(ids)], dtype=np.float32)

    ids, ref = llama_rows("f16")
    rows = {("llama", "f16"): ref, ("llama", "q8_0"): llama_rows("q8_0", ids)[1]}
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "ids"), "w") as f:
            f.write(" ".join(map(str, ids)))
        for kv in ("f16", "q8_0"):
            out = os.path.join(d, kv)
            subprocess.run([LUMEN, "run", "bench/kv_logits.lua", path, kv, os.path.join(d, "ids"), out, str(P)],
                           check=True, cwd=ROOT)
            rows[("lumen", kv)] = np.fromfile(out, dtype=np.float32).reshape(-1, ref.shape[1])

    def cmp(a, b):
        cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        return {"top1": round(float(np.mean(a.argmax(1) == b.argmax(1))), 4), "cos_min": round(float(cos.min()), 6),
                "cos_median": round(float(np.median(cos)), 6), "max_abs": round(float(np.abs(a - b).max()), 4)}

    pairs = [("lumen f16", "llama f16"), ("lumen q8_0", "llama q8_0"), ("lumen q8_0", "lumen f16"),
             ("llama q8_0", "llama f16"), ("lumen q8_0", "llama f16")]
    res = {"model": os.path.basename(path), "prompt": P, "decoded": N, "positions": len(ids) - P + 1}
    for a, b in pairs:
        res["%s vs %s" % (a, b)] = cmp(rows[tuple(a.split())], rows[tuple(b.split())])
    print(json.dumps(res))


def agreement(py, files, P, N):
    rows = []
    for name in files:
        path = name if os.path.exists(name) else os.path.join(MODELS_DIR, name)
        r = run_json([py, os.path.abspath(__file__), "--agree-worker", path, str(P), str(N)])
        print(json.dumps(r), flush=True)
        rows.append(r)
    return rows


def markdown(res):
    L = ["# lumen vs llama.cpp at real shapes", "",
         "CPU: %s; llama-cpp-python %s with extra buffer types off. %s" % (
             res["cpu"], res["llama_cpp_python"], res.get("note", "")), ""]
    if res.get("bandwidth"):
        L += ["Read bandwidth (bench/stream_read.c, 1 GiB, medians): " + ", ".join(
            "%s thread%s %.1f GB/s" % (k, "" if k == "1" else "s", v["read_gbs_median"]) for k, v in res["bandwidth"].items()), ""]
    if res.get("decode"):
        L += ["| model | threads | MB/token | lumen tok/s | llama.cpp tok/s | lumen/llama | read GB/s (readings) | roofline tok/s | lumen/roofline | llama/roofline |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["decode"]:
            reads = r.get("read_gbs") or []
            L.append("| %s | %d | %.0f | %.2f | %.2f | **%.2fx** | %s | %s | %s | %s |" % (
                r["model"], r["threads"], r["bytes_per_token"] / 1e6, r["lumen_tok_s"], r["llama_tok_s"], r["ratio"],
                "%.1f (%s)" % (med(reads), ", ".join("%.1f" % x for x in reads)) if reads else "",
                r["roofline_tok_s"], r["lumen_of_roofline"], r["llama_of_roofline"]))
        L.append("")
    if res.get("long"):
        L += ["| model | depth | KV | lumen TTFT ms | llama.cpp TTFT ms | TTFT ratio | lumen decode | llama.cpp decode | decode ratio |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in res["long"]:
            L.append("| %s | %d | %s%s | %.0f | %.0f | %.2fx | %.2f | %.2f | %.2fx |" % (
                r["model"], r["depth"], r["kv_type"], " (llama.cpp FA)" if r["llama_flash_attn"] else "",
                r["lumen_ttft_ms"], r["llama_ttft_ms"], r["ttft_ratio"], r["lumen_decode_tok_s"],
                r["llama_decode_tok_s"], r["decode_ratio"]))
        L.append("")
    if res.get("coldstart"):
        L += ["| model | lumen start to first token s | llama.cpp (python) s | lumen peak RSS MiB | bound (file + KV + 64 MiB) | llama.cpp peak RSS MiB |",
              "|---|---|---|---|---|---|"]
        for r in res["coldstart"]:
            L.append("| %s | %.2f | %.2f | %.0f | %.0f (%s) | %.0f |" % (
                r["model"], r["lumen_first_token_s"], r["llama_first_token_s"], r["lumen_peak_rss_kb"] / 1024,
                r["rss_bound_kb"] / 1024, "within" if r["lumen_rss_within_bound"] else "OVER", r["llama_peak_rss_kb"] / 1024))
        L.append("")
    if res.get("agreement"):
        L += ["| model | pair | top-1 agreement | cosine min | cosine median | max abs |", "|---|---|---|---|---|---|"]
        for r in res["agreement"]:
            for k, v in r.items():
                if isinstance(v, dict):
                    L.append("| %s | %s | %.3f | %.5f | %.6f | %.3f |" % (r["model"], k, v["top1"], v["cos_min"],
                                                                        v["cos_median"], v["max_abs"]))
        L.append("")
    return "\n".join(L)


def write_chart(res, path):
    from chart import bars
    panels = []
    if res.get("decode"):
        d = res["decode"]
        labels = ["%s\nt=%d" % (r["model"], r["threads"]) for r in d]
        panels.append(("decode tok/s (tg%d)" % d[0]["gen"], labels, [
            ("lumen", [r["lumen_tok_s"] for r in d]), ("llama.cpp", [r["llama_tok_s"] for r in d]),
            ("bandwidth roofline", [r["roofline_tok_s"] for r in d])]))
    if res.get("long"):
        g = res["long"]
        labels = ["%s KV\ndepth %d" % (r["kv_type"], r["depth"]) for r in g]
        panels.append(("time to first token at depth (s)", labels, [
            ("lumen", [r["lumen_ttft_ms"] / 1e3 for r in g]), ("llama.cpp", [r["llama_ttft_ms"] / 1e3 for r in g])]))
        panels.append(("decode tok/s at depth", labels, [
            ("lumen", [r["lumen_decode_tok_s"] for r in g]), ("llama.cpp", [r["llama_decode_tok_s"] for r in g])]))
    if panels:
        bars(path, panels, "%s, llama-cpp-python %s" % (res["cpu"], res["llama_cpp_python"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="bandwidth,decode,long,kv,coldstart")
    ap.add_argument("--models", default="llama3-1b:Q4_0,qwen3-8b:Q4_0")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--long-model", default="llama3-1b:Q4_0")
    ap.add_argument("--long-threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=8192)
    ap.add_argument("--note", default="", help="a sentence for the report (e.g. the machine's load)")
    ap.add_argument("--agree-models", default="SmolLM2-135M-Instruct.Q4_1.gguf,gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--agree-worker", nargs=3, metavar=("MODEL", "P", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "big"))
    a = ap.parse_args()
    if a.agree_worker:
        agree_worker(a.agree_worker[0], int(a.agree_worker[1]), int(a.agree_worker[2]))
        return
    parts = set(a.parts.split(","))
    unknown = parts - {"bandwidth", "decode", "long", "kv", "coldstart", "agree"}
    if unknown:
        ap.error("unknown part(s): %s" % ", ".join(sorted(unknown)))
    py = llama_python()
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from batch_throughput import cpu_name
    ver = subprocess.run([py, "-c", "import llama_cpp; print(llama_cpp.__version__)"], capture_output=True,
                         text=True).stdout.strip()
    res = {"cpu": cpu_name(), "llama_cpp_python": ver, "note": a.note, "load_avg_start": os.getloadavg()}
    models = [m for m in a.models.split(",") if m]
    threads = [int(t) for t in a.threads.split(",")]
    bw = bandwidth() if "bandwidth" in parts or "decode" in parts else None
    res["bandwidth"] = bw
    if "decode" in parts:
        res["decode"] = decode(py, models, threads, a.rounds, a.gen, bw)
    kvs = [k for k, p in (("f16", "long"), ("q8_0", "kv")) if p in parts]
    if kvs:
        res["long"] = long_context(py, a.long_model, a.long_threads, a.depth, 32, kvs, 1)
    if "agree" in parts:
        res["agreement"] = agreement(py, [m for m in a.agree_models.split(",") if m], 64, 64)
    if "coldstart" in parts:
        res["coldstart"] = coldstart(py, models, a.long_threads, a.rounds)
    res["load_avg_end"] = os.getloadavg()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md + "\n")
    write_chart(res, os.path.join(a.out, "results.png"))
    print(md)


if __name__ == "__main__":
    main()
