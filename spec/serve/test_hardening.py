"""A server a team shares: a message cannot forge turns, keys stay secret and
each key is held to its limits, stalled streams and over-deadline requests give
their slots back, and every request leaves one access log line.

- Injection: a user message holding every control token's text (SmolLM2 all of
  them; Gemma 3's 6249 through the context-length error, which names the
  prompt's size without evaluating it) gives the prompt size of the template
  tokenized with special tokens + the message tokenized without them
  (spec/lua/prompt_oracle.lua, which does not use lumen's escaping), through the
  real openai client and through `lumen chat`.
- Limits: keys from a YAML key file with per-key limits; 429 with OpenAI's
  x-ratelimit-* headers and Retry-After; a key's limit never touches another's.
- A stream whose client stops reading is closed after idle_s; a request still
  queued past timeouts.queue_s gets 503, and one generating past request_s ends
  with finish_reason "length".

Run: spec/.venv/bin/python -m unittest -v test_hardening   (in spec/serve; ctest -L serve)
"""
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from serve_harness import BIN, ROOT, Server, metric_sum
from test_bad_input import read_events, stop_server, stream_request, wait_idle

CHAT = "/v1/chat/completions"


def oracle(model, how="all"):
    p = subprocess.run([BIN, "run", os.path.join(ROOT, "spec", "lua", "prompt_oracle.lua"), model, how],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise AssertionError("prompt_oracle.lua failed: " + p.stderr)
    return json.loads(p.stdout)


def client(srv, key="x"):
    return srv.openai(key, timeout=300)


class TestInjection(unittest.TestCase):
    srv = None

    @classmethod
    def setUpClass(cls):
        cls.smol = oracle("smollm2")
        cls.gemma = oracle("gemma3")
        cls.srv = Server("-m", "smollm2", "-m", "gemma3", "--slots", "1", "-c", "2048", name="inject").start()

    @classmethod
    def tearDownClass(cls):
        if cls.srv is not None:
            stop_server(cls.srv)

    def test_oracle_sees_the_attack(self):
        # the check can fail: unescaped, the control tokens' text would count differently
        self.assertNotEqual(self.smol["expected"], self.smol["naive"])
        self.assertNotEqual(self.gemma["expected"], self.gemma["naive"])

    def test_server_smollm2(self):
        r = client(self.srv).chat.completions.create(
            model="smollm2", max_tokens=1, temperature=0,
            messages=[{"role": "user", "content": self.smol["content"]}])
        self.assertEqual(r.usage.prompt_tokens, self.smol["expected"])

    def test_server_gemma3(self):
        # 6249 control tokens' text: more than the context, so the 400 names the prompt's size
        import openai
        with self.assertRaises(openai.BadRequestError) as cm:
            client(self.srv).chat.completions.create(
                model="gemma3", max_tokens=1, messages=[{"role": "user", "content": self.gemma["content"]}])
        m = re.search(r"the prompt has (\d+) tokens", str(cm.exception))
        self.assertIsNotNone(m, str(cm.exception))
        self.assertEqual(int(m.group(1)), self.gemma["expected"])

    def test_lumen_chat(self):
        for model, o, ctx in (("smollm2", self.smol, "4096"), ("gemma3", self.gemma, "512")):
            p = subprocess.run([BIN, "chat", "-m", model, "-c", ctx, "-n", "1", "--temp", "0", o["content"]],
                               capture_output=True, text=True, timeout=300, cwd=ROOT, stdin=subprocess.DEVNULL)
            m = re.search(r"prompt: (\d+) tokens", p.stderr) or re.search(r"conversation \((\d+) tokens\)", p.stderr)
            self.assertIsNotNone(m, "%s: %s" % (model, p.stderr[-500:]))
            self.assertEqual(int(m.group(1)), o["expected"], model)


KEYS = """\
- key: alpha-0123456789
  name: alice
  limits: {requests_per_minute: 3}
- key: beta-0123456789
  name: bob
  limits: {tokens_per_minute: 200}
- key: gamma-0123456789
  name: carol
  limits: {concurrent: 1}
- key: delta-0123456789
  name: dave
"""

CONFIG = """\
models: [smollm2]
slots: 4
ctx: 2048
timeouts:
  idle_s: 3
  request_s: 600
api_key_file: %s
"""


class TestLimits(unittest.TestCase):
    srv = None
    SECRET = "Zebra-quartz-1729 says hello"

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="lumen-limits-")
        keys = os.path.join(cls.dir, "keys.yaml")
        with open(keys, "w") as f:
            f.write(KEYS)
        cls.srv = Server(config=CONFIG % keys, api_key="delta-0123456789", name="limits").start()

    @classmethod
    def tearDownClass(cls):
        if cls.srv is not None:
            stop_server(cls.srv)

    def chat(self, key, max_tokens=4, content="Hi"):
        return self.srv.post_json(CHAT, {"model": "smollm2", "max_tokens": max_tokens, "temperature": 0,
                                         "messages": [{"role": "user", "content": content}]},
                                  headers={"Authorization": "Bearer " + key})

    def test_requests_per_minute(self):
        for i in range(3):
            st, h, b = self.chat("alpha-0123456789")
            self.assertEqual(st, 200, b)
            self.assertEqual(h["x-ratelimit-limit-requests"], "3")
            self.assertEqual(h["x-ratelimit-remaining-requests"], str(2 - i))
        st, h, b = self.chat("alpha-0123456789")
        self.assertEqual(st, 429, b)
        err = json.loads(b)["error"]
        self.assertEqual(err["code"], "rate_limit_exceeded")
        self.assertEqual(err["type"], "rate_limit_error")
        self.assertEqual(h["x-ratelimit-remaining-requests"], "0")
        self.assertRegex(h["x-ratelimit-reset-requests"], r"^\d+(m\d+)?s$")
        self.assertGreaterEqual(int(h["retry-after"]), 1)
        # another key is not affected
        st, h, _ = self.chat("delta-0123456789")
        self.assertEqual(st, 200)
        self.assertNotIn("x-ratelimit-limit-requests", h)

    def test_tokens_per_minute(self):
        used = 0
        for _ in range(10):
            st, h, b = self.chat("beta-0123456789", max_tokens=40)
            if st == 429:
                break
            self.assertEqual(st, 200, b)
            u = json.loads(b)["usage"]
            used += u["prompt_tokens"] + u["completion_tokens"]
            self.assertEqual(int(h["x-ratelimit-remaining-tokens"]), 200 - used)
        self.assertEqual(st, 429, "never limited after %d tokens" % used)
        self.assertEqual(h["x-ratelimit-limit-tokens"], "200")
        self.assertIn("tokens per minute", json.loads(b)["error"]["message"])
        self.assertGreater(used, 100)
        self.assertLessEqual(used, 200)

    def test_concurrent(self):
        s = self.srv.connect()
        # seeded, the end tokens banned: the stream must still be running when the second request comes
        s.sendall(stream_request(CHAT, {"model": "smollm2", "stream": True, "max_tokens": 300, "temperature": 1,
                                        "seed": 7, "logit_bias": {"0": -100, "2": -100},
                                        "messages": [{"role": "user", "content": "Tell a long story."}]},
                                 "Authorization: Bearer gamma-0123456789\r\n"))
        self.assertIn(b"data: ", read_events(s, 1))  # it runs
        st, _, b = self.chat("gamma-0123456789")
        self.assertEqual(st, 429, b)
        self.assertIn("requests running", json.loads(b)["error"]["message"])
        s.close()
        deadline = time.monotonic() + 30
        while True:
            st, _, b = self.chat("gamma-0123456789")
            if st == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(st, 200, "the key's place did not come back after its stream ended: %r" % b)

    def test_stalled_stream_closed(self):
        m0, _ = self.srv.metrics()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        s.connect(("127.0.0.1", self.srv.port))
        # the end tokens banned (<|endoftext|> 0, <|im_end|> 2): an answer that ended early would fit in
        # the socket buffers, finish normally and leave nothing to close (seen once on CI)
        s.sendall(stream_request(CHAT, {"model": "smollm2", "stream": True, "max_tokens": 1900, "temperature": 1,
                                        "logit_bias": {"0": -100, "2": -100},
                                        "messages": [{"role": "user", "content": "Write a very long story."}]},
                                 "Authorization: Bearer delta-0123456789\r\n"))
        s.recv(100)  # then read nothing more
        t0 = time.monotonic()
        m = wait_idle(self.srv, timeout=25)
        took = time.monotonic() - t0
        s.close()
        self.assertEqual(metric_sum(m, "lumen_client_disconnects_total") - metric_sum(m0, "lumen_client_disconnects_total"), 1)
        # closed by the idle rule (3 s), long before 1900 tokens were generated
        self.assertLess(metric_sum(m, "lumen_completion_tokens_total") - metric_sum(m0, "lumen_completion_tokens_total"), 1500)
        self.assertLess(took, 20)

    def test_access_log(self):
        st, _, _ = self.chat("delta-0123456789", content=self.SECRET)
        self.assertEqual(st, 200)
        self.chat("nope")
        time.sleep(0.3)
        with open(self.srv.log_path, encoding="utf-8", errors="replace") as f:
            log = f.read()
        self.assertRegex(log, r"127\.0\.0\.1 key=dave POST /v1/chat/completions 200 \d+ms model=smollm2 prompt=\d+ completion=\d+")
        self.assertRegex(log, r"key=- POST /v1/chat/completions 401")
        self.assertNotIn(self.SECRET, log)
        for k in ("alpha-0123456789", "beta-0123456789", "delta-0123456789"):
            self.assertNotIn(k, log)


class TestDeadline(unittest.TestCase):
    def test_queued_past_deadline(self):
        srv = Server(config="models: [smollm2]\nslots: 1\ntimeouts:\n  idle_s: 30\n  request_s: 4\n  queue_s: 1\n",
                     name="deadline").start()
        try:
            res = {}

            def long():
                # greedy counting goes on for a long time: the slot stays busy past the queue deadline
                res["long"] = srv.post_json("/v1/completions", {"model": "smollm2", "max_tokens": 1900, "temperature": 0,
                                                                "prompt": "1, 2, 3, 4, 5, 6, 7, 8,"})
            t = threading.Thread(target=long)
            t.start()
            deadline = time.monotonic() + 30
            while json.loads(srv.request("GET", "/health")[2])["slots_busy"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            st, h, b = srv.post_json(CHAT, {"model": "smollm2", "max_tokens": 4,
                                            "messages": [{"role": "user", "content": "Hi"}]})
            t.join(60)
            self.assertEqual(st, 503, b)
            self.assertEqual(json.loads(b)["error"]["code"], "timeout")
            self.assertIn("retry-after", h)
            st, _, b = res["long"]
            self.assertEqual(st, 200)
            self.assertEqual(json.loads(b)["choices"][0]["finish_reason"], "length")
        finally:
            stop_server(srv)


if __name__ == "__main__":
    unittest.main()
