#!/usr/bin/env python3
"""`lumen batch` beside `lumen serve`, the two measurements issue 14 asks for:

1. throughput: the same batch file (N greedy chat requests, max_tokens 64) pushed
   through `lumen serve --slots 32` by 32 concurrent clients (completion tokens /
   wall time), to put next to `lumen batch`'s rate on the same file (run
   bench/batch_throughput.py in the same session);
2. priority: the time to first token of interactive streaming chat requests on
   an idle server, and again while a /v1/batches job of the same N requests runs
   in that server (at a lower priority): p50 of each, and their ratio (target <= 2x).

usage: spec/.venv/bin/python bench/batch_serve.py [--requests 256] [--clients 32] [--probes 12]
Loopback only (127.0.0.1). Prints JSON and a markdown table; writes bench/out/batch_serve.json.
"""
import argparse
import http.client
import json
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "spec", "serve"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from serve_harness import Server  # noqa: E402
from batch_throughput import ASKS, SUBJECTS, cpu_name  # noqa: E402


def requests_file(path, n, max_tokens):
    bodies = []
    with open(path, "w") as f:
        for i in range(n):
            ask = ASKS[i % len(ASKS)].format(SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)])
            body = {"model": "smollm2", "messages": [{"role": "user", "content": "%s (%d)" % (ask, i)}],
                    "max_tokens": max_tokens, "temperature": 0}
            bodies.append(body)
            f.write(json.dumps({"custom_id": "r%d" % i, "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")
    return bodies


def post(port, path, body, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        c.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def through_serve(srv, bodies, clients):
    q = queue.Queue()
    for b in bodies:
        q.put(b)
    tokens, failed, lock = [0], [0], threading.Lock()

    def worker():
        while True:
            try:
                b = q.get_nowait()
            except queue.Empty:
                return
            st, body = post(srv.port, "/v1/chat/completions", b)
            with lock:
                if st == 200:
                    tokens[0] += json.loads(body)["usage"]["completion_tokens"]
                else:
                    failed[0] += 1
    t0 = time.monotonic()
    ts = [threading.Thread(target=worker) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.monotonic() - t0
    return {"tokens": tokens[0], "wall_s": round(wall, 2), "tokens_per_s": round(tokens[0] / wall, 1), "failed": failed[0]}


def ttft(port):
    """Time to the first content piece of a streaming chat request."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = json.dumps({"model": "smollm2", "stream": True, "max_tokens": 16, "temperature": 0,
                       "messages": [{"role": "user", "content": "Say hello to the team."}]})
    t0 = time.monotonic()
    c.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    first = None
    buf = b""
    while True:
        chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if ev.startswith(b"data: {") and first is None:
                j = json.loads(ev[6:])
                if j.get("choices") and j["choices"][0]["delta"].get("content"):
                    first = time.monotonic() - t0
    c.close()
    return first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--probes", type=int, default=12)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--priority-only", action="store_true", help="skip the 32-client throughput run")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="lumen-batch-serve-")
    inp = os.path.join(d, "in.jsonl")
    bodies = requests_file(inp, a.requests, a.max_tokens)
    res = {"cpu": cpu_name(), "cores": os.cpu_count(), "requests": a.requests, "max_tokens": a.max_tokens}

    srv = Server("-m", "smollm2", "--slots", "32", "--queue", str(a.requests), "--data-dir", os.path.join(d, "data"),
                 name="batch-serve").start()
    try:
        if not a.priority_only:
            res["serve_32_clients"] = through_serve(srv, bodies, a.clients)
        idle = [ttft(srv.port) for _ in range(a.probes)]
        # the same requests as a /v1/batches job, then the same probes while it runs
        with open(inp, "rb") as f:
            data = f.read()
        boundary = "lumenbench"
        form = (("--%s\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
                 "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
                 "Content-Type: application/jsonl\r\n\r\n") % (boundary, boundary)).encode() + data + \
            ("\r\n--%s--\r\n" % boundary).encode()
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
        c.request("POST", "/v1/files", body=form, headers={"Content-Type": "multipart/form-data; boundary=" + boundary})
        r = c.getresponse()
        fobj = json.loads(r.read())
        c.close()
        st, body = post(srv.port, "/v1/batches", {"input_file_id": fobj["id"], "endpoint": "/v1/chat/completions",
                                                 "completion_window": "24h"})
        batch = json.loads(body)
        time.sleep(2.0)  # let the batch fill the slots
        busy = [ttft(srv.port) for _ in range(a.probes)]
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        c.request("GET", "/v1/batches/" + batch["id"])
        state = json.loads(c.getresponse().read())
        c.close()
    finally:
        srv.stop()
    res["ttft_idle_ms"] = [round(x * 1000) for x in idle]
    res["ttft_during_batch_ms"] = [round(x * 1000) for x in busy]
    p50_idle, p50_busy = statistics.median(idle), statistics.median(busy)
    res["ttft_p50_idle_ms"] = round(p50_idle * 1000, 1)
    res["ttft_p50_during_batch_ms"] = round(p50_busy * 1000, 1)
    res["ttft_ratio"] = round(p50_busy / p50_idle, 2)
    res["batch_state_after_probes"] = {k: state.get(k) for k in ("status", "request_counts")}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "batch_serve.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res))
    print("| %s, %d cores | tokens | wall s | tokens/s |" % (res["cpu"], res["cores"]))
    print("|---|---|---|---|")
    s = res.get("serve_32_clients")
    if s:
        print("| lumen serve, 32 clients, %d requests | %d | %.1f | %.1f |" % (a.requests, s["tokens"], s["wall_s"], s["tokens_per_s"]))
    print("| TTFT p50 idle / during a %d-request batch | | | %.0f / %.0f ms (%.2fx) |" % (
        a.requests, res["ttft_p50_idle_ms"], res["ttft_p50_during_batch_ms"], res["ttft_ratio"]))


if __name__ == "__main__":
    main()
