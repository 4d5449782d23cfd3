#!/usr/bin/env python3
"""What an image request costs the streams already running in `lumen serve`.

One client streams text requests back to back (SmolLM2 tokens); meanwhile another sends
one chat request with an image (an image-token SmolLM2 + a projector at SmolVLM-256M's
shapes, whose encode takes seconds to a minute). Prints, per run, the image request's
latency, the stream's tokens/s before it and while it ran, and the longest gap between
two stream tokens while it ran. With several binaries the runs alternate.

  LUMEN_REGISTRY=registry.yaml bench/vision/serve_stall.py --model ALIAS --bin build/lumen [--bin other/lumen] [--runs 3]

The registry must name ALIAS with `mmproj:` (bench/vision/make_mmproj.py writes
vision-smolvlm256m-mmproj.gguf). Standard library only.
"""
import argparse
import base64
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib


def png(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\0" + bytes((x * 7 + y * 3) % 256 for x in range(3 * width)) for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def post(port, body, stream=False):
    req = urllib.request.Request("http://127.0.0.1:%d/v1/chat/completions" % port, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=600)


def run(binary, model, image):
    d = tempfile.mkdtemp(prefix="lumen-stall-")
    port_file = os.path.join(d, "port")
    proc = subprocess.Popen([binary, "serve", "-m", model, "--slots", "2", "--port", "0", "--port-file", port_file],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "wb"))
    try:
        while not os.path.exists(port_file):
            time.sleep(0.05)
        time.sleep(0.2)
        port = int(open(port_file).read())
        while True:
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        stamps, stop = [], threading.Event()

        def streamer():
            while not stop.is_set():
                body = {"model": model, "stream": True, "max_tokens": 200, "temperature": 0.8, "seed": len(stamps),
                        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}]}
                with post(port, body) as r:
                    for line in r:
                        if line.startswith(b"data: {") and b'"content"' in line:
                            stamps.append(time.monotonic())
                        if stop.is_set():
                            break

        t = threading.Thread(target=streamer)
        t.start()
        time.sleep(4)
        url = "data:image/png;base64," + base64.b64encode(image).decode()
        t0 = time.monotonic()
        with post(port, {"model": model, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]}]}) as r:
            usage = json.load(r)["usage"]
        t1 = time.monotonic()
        stop.set()
        t.join()
        before = [s for s in stamps if t0 - 3 <= s < t0]
        during = [s for s in stamps if t0 <= s <= t1]
        gaps = [b - a for a, b in zip([t0] + during, during + [t1])]
        return {"image_s": round(t1 - t0, 2), "image_positions": usage["prompt_tokens"],
                "stream_tok_s_before": round(len(before) / 3, 1),
                "stream_tok_s_during": round(len(during) / (t1 - t0), 1),
                "max_gap_s": round(max(gaps), 2)}
    finally:
        proc.terminate()
        proc.wait(60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bin", action="append", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--width", type=int, default=400)
    ap.add_argument("--height", type=int, default=40)
    a = ap.parse_args()
    image = png(a.width, a.height)
    for i in range(a.runs):
        for b in a.bin:
            print(json.dumps({"run": i, "bin": b, **run(b, a.model, image)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
