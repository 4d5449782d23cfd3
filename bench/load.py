#!/usr/bin/env python3
"""Load benchmark of `lumen serve`: many streaming chat clients against one server.

usage: scripts/test_venv.sh && spec/.venv/bin/python bench/load.py
           [--clients 32] [--duration 60] [--model smollm2] [--port 0] [--slots 32]
           [--max-tokens 64] [--ctx N] [--threads N] [--out bench/out] [--strict]

Starts `build/lumen serve` on 127.0.0.1 (loopback only), then:
1. one streaming client, a few requests one after the other, before the load
   and again after it: its decode speed (tokens after the first / time after
   the first; the median of all those runs) and time to first token;
2. `--clients` streaming clients at once for `--duration` seconds, each looping
   over chat completions of varied prompts (max_tokens 64, stream_options
   include_usage). A request started before the deadline is let finish.
   Aggregate decode tokens/s = completion tokens (from the usage chunks) / wall
   time of the phase; time to first token p50/p95; failures.
Prints a markdown table and writes out/load.json and out/load.md. Targets:
aggregate/single >= 4x, 0 failures (--strict exits 1 when one is missed).
The server's log goes to out/load_server.log.
"""
import argparse
import json
import os
import random
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, "spec", ".venv", "bin", "python")

try:
    import openai
except ImportError:  # run from the venv scripts/test_venv.sh makes
    if os.path.exists(VENV_PY) and os.path.realpath(sys.executable) != os.path.realpath(VENV_PY):
        os.execv(VENV_PY, [VENV_PY, *sys.argv])
    raise SystemExit("load: the openai package is missing; run scripts/test_venv.sh first")

sys.path.insert(0, os.path.join(ROOT, "spec", "serve"))
from serve_harness import Server, metric_sum  # noqa: E402

TARGET_RATIO = 4.0
REQUEST_TIMEOUT_S = 180
SUBJECTS = ["the ocean", "a lighthouse", "quantum computers", "bread baking", "the moon", "bicycles",
            "volcanoes", "a chess opening", "honey bees", "the Roman empire", "rainforests", "jazz",
            "black holes", "gardening", "the printing press", "penguins"]
ASKS = ["Write a short story about {}.", "Explain {} to a child.", "List five facts about {}.",
        "Write a poem about {}.", "Describe {} in detail.", "What is interesting about {}?"]


def percentile(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(client, model, prompt, max_tokens, seed):
    """One streaming chat completion: dict with ttft, decode time, tokens; raises on failure."""
    t0 = time.monotonic()
    t_first = t_last = None
    usage = None
    finish = None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
        temperature=0.7, seed=seed, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                t_last = time.monotonic()
                t_first = t_first or t_last
            if choice.finish_reason:
                finish = choice.finish_reason
    t_end = time.monotonic()
    if usage is None:
        raise RuntimeError("no usage chunk")
    if finish is None:
        raise RuntimeError("no finish_reason")
    return {"ttft_s": (t_first or t_end) - t0, "total_s": t_end - t0,
            "decode_s": (t_last - t_first) if t_first else 0.0,
            "completion_tokens": usage.completion_tokens, "prompt_tokens": usage.prompt_tokens,
            "finish_reason": finish}


def single_phase(url, model, max_tokens, runs, seed0=0):
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=REQUEST_TIMEOUT_S)
    one_request(client, model, "Hello!", 8, 0)  # warm-up
    results = []
    for i in range(runs):
        r = one_request(client, model, "Write a long story about a dragon who learns to cook.", max_tokens, seed0 + i)
        results.append(r)
    return summary(results)


def summary(results):
    speeds = [(r["completion_tokens"] - 1) / r["decode_s"] for r in results if r["decode_s"] > 0]
    return {"runs": results,
            "decode_tokens_per_s": statistics.median(speeds) if speeds else None,
            "ttft_s": statistics.median(r["ttft_s"] for r in results)}


def cpu_seconds(pid=None):
    """CPU time (user + system) of this process, or of process `pid` from /proc."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_phase(url, model, clients, duration, max_tokens, server_pid):
    lock = threading.Lock()
    results, failures = [], []
    barrier = threading.Barrier(clients + 1)
    state = {}

    def worker(idx):
        rnd = random.Random(idx)
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=REQUEST_TIMEOUT_S)
        barrier.wait()
        while time.monotonic() < state["deadline"]:
            prompt = rnd.choice(ASKS).format(rnd.choice(SUBJECTS))
            try:
                r = one_request(client, model, prompt, max_tokens, rnd.randrange(1 << 30))
                with lock:
                    results.append(r)
            except Exception as e:  # every failure counts; the loop goes on
                with lock:
                    failures.append("%s: %s" % (type(e).__name__, str(e)[:200]))
                time.sleep(0.1)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    cpu0 = (cpu_seconds(), cpu_seconds(server_pid))
    state["deadline"] = t0 + duration
    barrier.wait()
    hard_stop = t0 + duration + REQUEST_TIMEOUT_S + 10
    for t in threads:
        t.join(max(0.0, hard_stop - time.monotonic()))
    wall = time.monotonic() - t0
    cpu_clients, cpu_server = cpu_seconds() - cpu0[0], cpu_seconds(server_pid) - cpu0[1]
    stuck = sum(t.is_alive() for t in threads)
    with lock:
        results, failures = list(results), list(failures) + ["client still running at the hard stop"] * stuck
    tokens = sum(r["completion_tokens"] for r in results)
    ttfts = [r["ttft_s"] for r in results]
    return {"clients": clients, "duration_s": duration, "wall_s": wall, "requests_ok": len(results),
            "failures": len(failures), "failure_samples": failures[:10],
            "completion_tokens": tokens, "prompt_tokens": sum(r["prompt_tokens"] for r in results),
            "aggregate_decode_tokens_per_s": tokens / wall if wall > 0 else 0.0,
            "ttft_p50_s": percentile(ttfts, 0.50), "ttft_p95_s": percentile(ttfts, 0.95),
            "finish_length": sum(r["finish_reason"] == "length" for r in results),
            # the clients share the machine's cores with the server: how much each took
            "cpu_s_clients": cpu_clients, "cpu_s_server": cpu_server}


def fmt(x, spec="%.1f"):
    return "-" if x is None else spec % x


def markdown(res):
    s, l = res["single"], res["load"]
    ratio = res["ratio"]
    rows = [
        ("single client: decode tokens/s (median of %d runs: before / after the load)" % len(s["runs"]),
         "%s (%s / %s)" % (fmt(s["decode_tokens_per_s"]), fmt(s["before"]["decode_tokens_per_s"]),
                           fmt(s["after"]["decode_tokens_per_s"])), ""),
        ("single client: time to first token", fmt(s["ttft_s"] * 1000, "%.0f ms"), ""),
        ("%d clients: aggregate decode tokens/s" % l["clients"], fmt(l["aggregate_decode_tokens_per_s"]), ""),
        ("aggregate / single", fmt(ratio, "%.2fx"), ">= %.0fx %s" % (TARGET_RATIO, "ok" if ratio and ratio >= TARGET_RATIO else "MISSED")),
        ("time to first token p50", fmt(l["ttft_p50_s"] and l["ttft_p50_s"] * 1000, "%.0f ms"), ""),
        ("time to first token p95", fmt(l["ttft_p95_s"] and l["ttft_p95_s"] * 1000, "%.0f ms"), ""),
        ("requests completed", str(l["requests_ok"]), ""),
        ("failures", str(l["failures"]), "0 %s" % ("ok" if l["failures"] == 0 else "MISSED")),
        ("completion tokens (wall time)", "%d (%.1f s)" % (l["completion_tokens"], l["wall_s"]), ""),
        ("CPU time: server / clients", "%.0f s / %.0f s" % (l["cpu_s_server"], l["cpu_s_clients"]), ""),
    ]
    head = ("`lumen serve` load: model %s, %d slots, %d streaming clients for %d s, max_tokens %d "
            "(%d CPUs, load average %.1f before, %.1f after)\n\n"
            % (res["model"], res["slots"], l["clients"], l["duration_s"], res["max_tokens"], res["cpus"],
               res["loadavg_before"][0], res["loadavg_after"][0]))
    table = "| metric | value | target |\n| --- | --- | --- |\n" + "".join("| %s | %s | %s |\n" % r for r in rows)
    return head + table


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--port", type=int, default=0, help="port for the server (0: any free one)")
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--single-runs", type=int, default=5, help="single-client requests before and again after the load")
    ap.add_argument("--ctx", type=int, help="context per slot (server default if unset)")
    ap.add_argument("--threads", type=int, help="server compute threads (server default if unset)")
    ap.add_argument("--bin", default=os.environ.get("LUMEN_BIN", os.path.join(ROOT, "build", "lumen")))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    args = ["--host", "127.0.0.1", "-m", a.model, "--slots", str(a.slots)]
    if a.ctx:
        args += ["--ctx", str(a.ctx)]
    if a.threads:
        args += ["-t", str(a.threads)]
    load_before = os.getloadavg()  # other processes on the machine skew both phases
    srv = Server(*args, name="load", port=a.port, bin=a.bin)
    srv.start()
    try:
        url = srv.base_url + "/v1"
        print("load: server on %s (log %s)" % (srv.base_url, srv.log_path), file=sys.stderr)
        # the single stream before and after the load: this machine's speed
        # drifts, and one short phase can land on a fast or a slow stretch
        before = single_phase(url, a.model, a.max_tokens, a.single_runs)
        print("load: single client %.1f decode tokens/s" % (before["decode_tokens_per_s"] or 0), file=sys.stderr)
        load = load_phase(url, a.model, a.clients, a.duration, a.max_tokens, srv.proc.pid)
        after = single_phase(url, a.model, a.max_tokens, a.single_runs, seed0=a.single_runs)
        single = summary(before["runs"] + after["runs"])
        single["before"] = {k: before[k] for k in ("decode_tokens_per_s", "ttft_s")}
        single["after"] = {k: after[k] for k in ("decode_tokens_per_s", "ttft_s")}
        metrics, _ = srv.metrics()
        alive = srv.alive()
    finally:
        status = srv.stop()
        with open(srv.log_path, "rb") as f, open(os.path.join(a.out, "load_server.log"), "wb") as g:
            g.write(f.read())
        srv.remove()
    ratio = (load["aggregate_decode_tokens_per_s"] / single["decode_tokens_per_s"]
             if single["decode_tokens_per_s"] else None)
    res = {"model": a.model, "slots": a.slots, "max_tokens": a.max_tokens, "single": single, "load": load,
           "ratio": ratio, "target_ratio": TARGET_RATIO, "cpus": os.cpu_count(),
           "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
           "server": {"alive_at_end": alive, "exit_status": status,
                      "decode_tokens_per_second": metric_sum(metrics, "lumen_decode_tokens_per_second"),
                      "requests_total": metric_sum(metrics, "lumen_requests_total"),
                      "completion_tokens_total": metric_sum(metrics, "lumen_completion_tokens_total")}}
    with open(os.path.join(a.out, "load.json"), "w") as f:
        json.dump(res, f, indent=2)
    md = markdown(res)
    with open(os.path.join(a.out, "load.md"), "w") as f:
        f.write(md)
    print(md)
    if load["failure_samples"]:
        print("failures (first %d):\n  %s" % (len(load["failure_samples"]), "\n  ".join(load["failure_samples"])))
    missed = load["failures"] > 0 or ratio is None or ratio < TARGET_RATIO or status != 0
    return 1 if a.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
