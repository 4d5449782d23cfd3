"""`lumen serve` through the official openai client: the OpenAI shapes of
/v1/models, /v1/chat/completions and /v1/completions (streaming or not), the
sampling parameters, and greedy output identical to `lumen generate` /
`lumen chat` whether requests run one at a time or eight at once.

Run: spec/.venv/bin/python -m unittest -v test_openai   (in spec/serve; ctest -L serve)
"""
import json
import math
import threading
import unittest
from concurrent.futures import ThreadPoolExecutor

import openai

from serve_harness import Server, greedy_chat, greedy_generate, metric_sum, model_info, sse_events

MODEL = "smollm2"
GREEDY_N = 24
SLOTS = 8

# Prompts for the greedy comparison with `lumen generate` (completions endpoint)...
GEN_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at",
    "import numpy as np\n",
    "Le chat est",
    "1, 2, 3, 4, 5,",
]
# ... and with `lumen chat` (chat endpoint, the model's chat template).
CHAT_MESSAGES = [
    "What is 2+2?",
    "Name a fruit that is yellow.",
    "Write a haiku about the sea.",
    "What is the boiling point of water?",
    "Give me a synonym for happy.",
    "Who wrote Hamlet?",
    "Translate 'good morning' to Spanish.",
    "What color is the sky?",
]
SYSTEM = "Answer in one short sentence."

server = None
refs = {}


def setUpModule():
    global server
    # references first, while the machine is otherwise idle
    refs["generate"] = {p: greedy_generate(p, GREEDY_N) for p in GEN_PROMPTS}
    refs["chat"] = {m: greedy_chat(m, GREEDY_N) for m in CHAT_MESSAGES}
    refs["chat_system"] = greedy_chat(CHAT_MESSAGES[0], GREEDY_N, system=SYSTEM)
    server = Server("-m", MODEL, "--slots", str(SLOTS), name="openai").start()


def tearDownModule():
    if server is None:
        return
    alive = server.alive()
    status = server.stop()
    if not alive:
        raise AssertionError("lumen serve died during the tests\n" + server.log_tail())
    if status != 0:
        raise AssertionError("lumen serve did not exit 0 within 30 s of SIGTERM (status %r)\n%s"
                             % (status, server.log_tail()))
    server.remove()


def client():
    return server.openai(timeout=180)


def chat_text(c, message, **kw):
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": message}], **kw)
    return r.choices[0].message.content, r


class ChunkChecks:
    def check_chunks(self, chunks, n=1):
        """Common checks of a chat stream: returns (text per choice, finish per choice, usage chunk)."""
        self.assertGreater(len(chunks), 1)
        ids = {ch.id for ch in chunks}
        self.assertEqual(len(ids), 1, "every chunk of one completion has the same id")
        self.assertTrue(chunks[0].id.startswith("chatcmpl-"), chunks[0].id)
        texts, finish, first_seen = [""] * n, [None] * n, [False] * n
        usage_chunks = []
        for ch in chunks:
            self.assertEqual(ch.object, "chat.completion.chunk")
            self.assertEqual(ch.model, MODEL)
            self.assertIsInstance(ch.created, int)
            if not ch.choices:
                usage_chunks.append(ch)
                continue
            self.assertEqual(usage_chunks, [], "no choice chunk after the usage chunk")
            for choice in ch.choices:
                i = choice.index
                self.assertIn(i, range(n))
                self.assertIsNone(finish[i], "no delta after the finish_reason of choice %d" % i)
                if not first_seen[i]:
                    self.assertEqual(choice.delta.role, "assistant", "the first delta names the role")
                    self.assertEqual(choice.delta.content or "", "")
                    first_seen[i] = True
                if choice.delta.content:
                    texts[i] += choice.delta.content
                if choice.finish_reason is not None:
                    self.assertIn(choice.finish_reason, ("stop", "length"))
                    finish[i] = choice.finish_reason
        self.assertEqual(finish.count(None), 0, "every choice ends with a finish_reason: %r" % finish)
        self.assertLessEqual(len(usage_chunks), 1)
        return texts, finish, (usage_chunks[0] if usage_chunks else None)


class TestModelsAndHealth(unittest.TestCase):
    def test_models_list(self):
        models = client().models.list()
        ids = [m.id for m in models.data]
        self.assertIn(MODEL, ids)
        for m in models.data:
            self.assertEqual(m.object, "model")
            self.assertEqual(m.owned_by, "lumen")
            self.assertIsInstance(m.created, int)

    def test_models_raw_shape(self):
        status, headers, body = server.request("GET", "/v1/models")
        self.assertEqual(status, 200)
        self.assertTrue(headers.get("content-type", "").startswith("application/json"), headers)
        doc = json.loads(body)
        self.assertEqual(doc["object"], "list")
        self.assertIsInstance(doc["data"], list)

    def test_health(self):
        status, headers, body = server.request("GET", "/health")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["status"], "ok")

    def test_metrics_parse_and_counters_increase(self):
        names = ["lumen_requests_total", "lumen_prompt_tokens_total", "lumen_completion_tokens_total",
                 "lumen_decode_tokens_per_second", "lumen_time_to_first_token_seconds_bucket",
                 "lumen_time_to_first_token_seconds_sum", "lumen_time_to_first_token_seconds_count",
                 "lumen_queue_depth", "lumen_slots_busy", "lumen_kv_cache_used_tokens",
                 "lumen_kv_cache_capacity_tokens", "lumen_prompt_tokens_cached_total"]
        before, headers = server.metrics()
        self.assertTrue(headers.get("content-type", "").startswith("text/plain"), headers)
        for name in names:
            self.assertIn(name, before, "metric %s missing" % name)
        c = client()
        _, r = chat_text(c, "Say hello.", max_tokens=8, temperature=0)
        c.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0)
        after, _ = server.metrics()

        self.assertGreaterEqual(metric_sum(after, "lumen_requests_total") - metric_sum(before, "lumen_requests_total"), 2)
        ok_chat = [v for labels, v in after["lumen_requests_total"]
                   if "chat" in labels.get("endpoint", "") and labels.get("status") == "200"]
        self.assertTrue(ok_chat and ok_chat[0] >= 1,
                        "a lumen_requests_total sample for chat with status 200: %r" % after["lumen_requests_total"])
        for labels, _ in after["lumen_requests_total"]:
            self.assertIn("endpoint", labels)
            self.assertIn("status", labels)
        self.assertGreaterEqual(metric_sum(after, "lumen_prompt_tokens_total") - metric_sum(before, "lumen_prompt_tokens_total"),
                                r.usage.prompt_tokens + 1)
        self.assertGreaterEqual(metric_sum(after, "lumen_completion_tokens_total") - metric_sum(before, "lumen_completion_tokens_total"),
                                r.usage.completion_tokens + 1)
        ttft = "lumen_time_to_first_token_seconds"
        self.assertGreaterEqual(metric_sum(after, ttft + "_count") - metric_sum(before, ttft + "_count"), 2)
        self.assertGreater(metric_sum(after, ttft + "_sum"), metric_sum(before, ttft + "_sum"))
        buckets = sorted(((float(l["le"]), v) for l, v in after[ttft + "_bucket"]), key=lambda b: b[0])
        self.assertTrue(math.isinf(buckets[-1][0]), "a +Inf bucket")
        self.assertEqual(buckets[-1][1], metric_sum(after, ttft + "_count"))
        self.assertEqual([v for _, v in buckets], sorted(v for _, v in buckets), "buckets are cumulative")
        self.assertGreaterEqual(metric_sum(after, "lumen_kv_cache_capacity_tokens"), 256)
        self.assertGreaterEqual(metric_sum(after, "lumen_kv_cache_used_tokens"), 0)
        self.assertLessEqual(metric_sum(after, "lumen_kv_cache_used_tokens"), metric_sum(after, "lumen_kv_cache_capacity_tokens"))
        self.assertTrue(0 <= metric_sum(after, "lumen_slots_busy") <= SLOTS)
        self.assertGreaterEqual(metric_sum(after, "lumen_queue_depth"), 0)
        self.assertGreaterEqual(metric_sum(after, "lumen_decode_tokens_per_second"), 0)


class TestChat(unittest.TestCase, ChunkChecks):
    def test_stream_explain_quantization(self):
        c = client()
        stream = c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Explain quantization in one paragraph."}], stream=True)
        chunks = list(stream)
        texts, finish, usage = self.check_chunks(chunks)
        self.assertTrue(texts[0].strip(), "non-empty text")
        self.assertIsNone(usage, "no usage chunk unless include_usage")

    def test_non_streaming_with_usage(self):
        c = client()
        r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me about the moon."}],
                                      max_tokens=16, temperature=0)
        self.assertTrue(r.id.startswith("chatcmpl-"), r.id)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.model, MODEL)
        self.assertIsInstance(r.created, int)
        self.assertEqual(len(r.choices), 1)
        ch = r.choices[0]
        self.assertEqual(ch.index, 0)
        self.assertEqual(ch.message.role, "assistant")
        self.assertTrue(ch.message.content)
        self.assertIn(ch.finish_reason, ("stop", "length"))
        self.assertIsNone(ch.logprobs)
        u = r.usage
        self.assertGreater(u.prompt_tokens, 5)
        self.assertTrue(1 <= u.completion_tokens <= 16, u)
        self.assertEqual(u.total_tokens, u.prompt_tokens + u.completion_tokens)
        if ch.finish_reason == "length":
            self.assertEqual(u.completion_tokens, 16)

    def test_max_completion_tokens(self):
        r = client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count from 1 to 100."}],
                                             max_completion_tokens=5, temperature=0)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 5)

    def test_model_omitted_uses_default(self):
        status, _, body = server.post_json("/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["model"], MODEL)

    def test_content_parts_equal_string_content(self):
        msg = CHAT_MESSAGES[1]
        half = len(msg) // 2
        r = client().chat.completions.create(model=MODEL, max_tokens=GREEDY_N, temperature=0, messages=[
            {"role": "user", "content": [{"type": "text", "text": msg[:half]}, {"type": "text", "text": msg[half:]}]}])
        self.assertEqual(r.choices[0].message.content, refs["chat"][msg])

    def test_system_prompt_matches_lumen_chat(self):
        r = client().chat.completions.create(model=MODEL, max_tokens=GREEDY_N, temperature=0, messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": CHAT_MESSAGES[0]}])
        self.assertEqual(r.choices[0].message.content, refs["chat_system"])

    def test_multi_turn(self):
        r = client().chat.completions.create(model=MODEL, max_tokens=12, temperature=0, messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Nice to meet you, Ada."},
            {"role": "user", "content": "What is my name?"}])
        self.assertTrue(r.choices[0].message.content)
        self.assertGreater(r.usage.prompt_tokens, 20)

    def test_n2_with_seed(self):
        kw = dict(model=MODEL, messages=[{"role": "user", "content": "Invent a name for a pet dragon."}],
                  n=2, seed=7, temperature=1.0, top_p=1.0, max_tokens=24)
        c = client()
        r1 = c.chat.completions.create(**kw)
        self.assertEqual(sorted(ch.index for ch in r1.choices), [0, 1])
        a = [ch.message.content for ch in sorted(r1.choices, key=lambda ch: ch.index)]
        for t in a:
            self.assertTrue(t)
        self.assertNotEqual(a[0], a[1], "the n choices are different samples")
        self.assertGreaterEqual(r1.usage.completion_tokens, 2)
        r2 = c.chat.completions.create(**kw)
        b = [ch.message.content for ch in sorted(r2.choices, key=lambda ch: ch.index)]
        self.assertEqual(a, b, "same seed, same n samples")

    def test_n2_streaming(self):
        chunks = list(client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Name a color."}],
            n=2, seed=3, temperature=0.9, max_tokens=12, stream=True))
        texts, finish, _ = self.check_chunks(chunks, n=2)
        self.assertTrue(all(texts), texts)

    def test_logprobs_top_logprobs(self):
        r = client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is the capital of Italy?"}],
                                             max_tokens=10, temperature=0, logprobs=True, top_logprobs=5)
        ch = r.choices[0]
        self.assertIsNotNone(ch.logprobs)
        content = ch.logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        raw = b""
        for tok in content:
            self.assertIsInstance(tok.token, str)
            self.assertLessEqual(tok.logprob, 1e-6)
            self.assertIsInstance(tok.bytes, list)
            self.assertTrue(all(isinstance(b, int) and 0 <= b <= 255 for b in tok.bytes))
            raw += bytes(tok.bytes)
            tops = tok.top_logprobs
            self.assertEqual(len(tops), 5)
            lps = [t.logprob for t in tops]
            self.assertTrue(all(lp <= 1e-6 for lp in lps), lps)
            self.assertEqual(lps, sorted(lps, reverse=True), "top_logprobs sorted, most likely first")
            self.assertLessEqual(sum(math.exp(lp) for lp in lps), 1.0 + 1e-3)
            # greedy: the chosen token is the most likely one
            self.assertEqual(tops[0].token, tok.token)
            self.assertAlmostEqual(tops[0].logprob, tok.logprob, places=3)
        self.assertEqual(raw.decode("utf-8"), ch.message.content, "the tokens' bytes spell the content")

    def test_logprobs_without_top(self):
        r = client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=4, temperature=0, logprobs=True, top_logprobs=0)
        for tok in r.choices[0].logprobs.content:
            self.assertEqual(tok.top_logprobs, [])
            self.assertLessEqual(tok.logprob, 1e-6)

    def test_stream_include_usage(self):
        chunks = list(client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Describe a cat."}], max_tokens=16, temperature=0,
            stream=True, stream_options={"include_usage": True}))
        texts, finish, usage = self.check_chunks(chunks)
        self.assertIsNotNone(usage, "a final chunk with usage and no choices")
        self.assertIs(chunks[-1], usage, "the usage chunk is the last one")
        u = usage.usage
        self.assertTrue(1 <= u.completion_tokens <= 16, u)
        self.assertGreater(u.prompt_tokens, 0)
        self.assertEqual(u.total_tokens, u.prompt_tokens + u.completion_tokens)
        for ch in chunks[:-1]:
            self.assertIsNone(ch.usage)
        # the same request, not streamed, says the same
        text, r = chat_text(client(), "Describe a cat.", max_tokens=16, temperature=0)
        self.assertEqual(texts[0], text)
        self.assertEqual(u.completion_tokens, r.usage.completion_tokens)
        self.assertEqual(finish[0], r.choices[0].finish_reason)

    def test_raw_sse_format(self):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        try:
            conn.request("POST", "/v1/chat/completions", body=json.dumps({
                "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
                "stream": True, "stream_options": {"include_usage": True}}),
                headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200)
            self.assertTrue(resp.getheader("Content-Type", "").startswith("text/event-stream"))
            raw = resp.read()
        finally:
            conn.close()
        self.assertTrue(raw.endswith(b"data: [DONE]\n\n"), raw[-60:])
        events = [e for e in raw.split(b"\n\n") if e]
        for e in events:
            self.assertTrue(e.startswith(b"data: "), e[:80])
        docs = [json.loads(e[6:]) for e in events[:-1]]
        self.assertEqual(docs[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        self.assertEqual(docs[-1]["choices"], [])
        self.assertIn("usage", docs[-1])
        self.assertIsNotNone(docs[-2]["choices"][0]["finish_reason"])

    def test_stop_string(self):
        c = client()
        prompt = "List the days of the week."
        full, r = chat_text(c, prompt, max_tokens=GREEDY_N, temperature=0)
        words = full.split()
        self.assertGreaterEqual(len(words), 4, full)
        stop = words[2]
        cut = full[:full.index(stop)]
        text, r = chat_text(c, prompt, max_tokens=GREEDY_N, temperature=0, stop=stop)
        self.assertNotIn(stop, text)
        self.assertEqual(text, cut)
        self.assertEqual(r.choices[0].finish_reason, "stop")
        # as a list, with strings that never occur
        text, _ = chat_text(c, prompt, max_tokens=GREEDY_N, temperature=0, stop=["@@@@", stop, "%%%%"])
        self.assertEqual(text, cut)
        # streamed: no delta leaks the stop string, even split over tokens
        chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=GREEDY_N, temperature=0, stop=[stop], stream=True))
        texts, finish, _ = self.check_chunks(chunks)
        self.assertEqual(texts[0], cut)
        self.assertEqual(finish[0], "stop")

    def test_stop_string_spanning_tokens(self):
        c = client()
        prompt = CHAT_MESSAGES[2]
        full = refs["chat"][prompt]
        # a stop string that starts inside one token and ends inside another
        i = len(full) // 2
        stop = full[i:i + 5]
        self.assertEqual(len(stop), 5)
        cut = full[:full.index(stop)]
        text, r = chat_text(c, prompt, max_tokens=GREEDY_N, temperature=0, stop=stop)
        self.assertEqual(text, cut)
        self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_same_seed_same_text(self):
        c = client()
        kw = dict(temperature=0.8, seed=1234, max_tokens=24)
        a, _ = chat_text(c, "Write a sentence about autumn.", **kw)
        b, _ = chat_text(c, "Write a sentence about autumn.", **kw)
        self.assertTrue(a)
        self.assertEqual(a, b)
        p = dict(model=MODEL, prompt="In the forest there", temperature=0.8, seed=99, max_tokens=24)
        self.assertEqual(c.completions.create(**p).choices[0].text, c.completions.create(**p).choices[0].text)

    def test_penalties_accepted(self):
        text, r = chat_text(client(), "Repeat the word 'hello' many times.", max_tokens=16, temperature=0,
                            presence_penalty=1.5, frequency_penalty=1.0)
        self.assertTrue(text)

    def test_unknown_model(self):
        with self.assertRaises(openai.NotFoundError) as cm:
            client().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=4)
        self.assertEqual(cm.exception.code, "model_not_found")


class TestCompletions(unittest.TestCase):
    def test_completion_shape(self):
        r = client().completions.create(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=0)
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(r.model, MODEL)
        self.assertIsInstance(r.created, int)
        self.assertTrue(r.id)
        self.assertEqual(len(r.choices), 1)
        ch = r.choices[0]
        self.assertEqual(ch.index, 0)
        self.assertTrue(ch.text)
        self.assertIn(ch.finish_reason, ("stop", "length"))
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        self.assertTrue(1 <= r.usage.completion_tokens <= 16)

    def test_logit_bias(self):
        c = client()
        plain = c.completions.create(model=MODEL, prompt="The sun is", max_tokens=3, temperature=0)
        # a +100 bias on one token makes greedy pick it every time
        forced = c.completions.create(model=MODEL, prompt="The sun is", max_tokens=3, temperature=0,
                                      logit_bias={"1000": 100})
        self.assertEqual(forced.usage.completion_tokens, 3)
        piece = forced.choices[0].text[:len(forced.choices[0].text) // 3]
        self.assertTrue(piece)
        self.assertEqual(forced.choices[0].text, piece * 3)
        self.assertNotEqual(forced.choices[0].text, plain.choices[0].text)
        with self.assertRaises(openai.BadRequestError):
            c.completions.create(model=MODEL, prompt="The sun is", max_tokens=3, logit_bias={"99999999": 5})

    def test_byte_tokens_reach_json_as_utf8(self):
        # byte-level BPE has a token per byte; forced with logit_bias, a lone
        # continuation byte (0x8e) and a lead byte whose character never comes
        # (0xe2) must reach the client as U+FFFD, never as invalid UTF-8
        import os
        import tempfile
        from serve_harness import run_lumen
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write('local m = require("lumen").model.load(arg[1])\n'
                    'for id = 0, m:info().n_vocab - 1 do local p = m:piece(id)\n'
                    '  if p == "\\x8e" or p == "\\xe2" then io.write(p:byte(), " ", id, "\\n") end end\n')
        try:
            ids = dict(map(int, line.split()) for line in run_lumen("run", f.name, MODEL).split("\n") if line)
        finally:
            os.unlink(f.name)
        self.assertEqual(sorted(ids), [0x8e, 0xe2])
        c = client()
        chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=3, temperature=0, stream=True, logprobs=True,
                                                logit_bias={str(ids[0x8e]): 100}))
        self.assertEqual("".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), "\ufffd" * 3)
        lp = [t for ch in chunks if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
        self.assertEqual([(t.token, t.bytes) for t in lp], [("\ufffd", [0x8e])] * 3)
        r = c.completions.create(model=MODEL, prompt="The sun is", max_tokens=2, temperature=0,
                                 logit_bias={str(ids[0xe2]): 100})
        self.assertEqual(r.choices[0].text, "\ufffd\ufffd")
        self.assertEqual(r.usage.completion_tokens, 2)

    def test_prompt_as_list_of_one(self):
        c = client()
        a = c.completions.create(model=MODEL, prompt="The sun is", max_tokens=12, temperature=0).choices[0].text
        b = c.completions.create(model=MODEL, prompt=["The sun is"], max_tokens=12, temperature=0).choices[0].text
        self.assertEqual(a, b)

    def test_streaming_completion(self):
        chunks = list(client().completions.create(model=MODEL, prompt=GEN_PROMPTS[0], max_tokens=GREEDY_N,
                                                  temperature=0, stream=True, stream_options={"include_usage": True}))
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        self.assertEqual(text, refs["generate"][GEN_PROMPTS[0]])
        finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        self.assertEqual(len(finishes), 1)
        self.assertEqual(chunks[-1].choices, [])
        self.assertIsNotNone(chunks[-1].usage)
        for ch in chunks:
            self.assertEqual(ch.object, "text_completion")

    def test_stop_on_completions(self):
        p = GEN_PROMPTS[2]
        full = refs["generate"][p]
        stop = full.split()[3]
        r = client().completions.create(model=MODEL, prompt=p, max_tokens=GREEDY_N, temperature=0, stop=[stop])
        self.assertEqual(r.choices[0].text, full[:full.index(stop)])
        self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_logprobs_on_completions_rejected_or_ok(self):
        # legacy completions take logprobs as an integer; either serve it or refuse it cleanly
        status, _, body = server.post_json("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "logprobs": 2})
        self.assertIn(status, (200, 400), body)
        json.loads(body)


class TestGreedyEquality(unittest.TestCase):
    """temperature 0 must give exactly what the CLI gives, alone or with 7 other requests in flight."""

    def complete(self, prompt, c=None):
        r = (c or client()).completions.create(model=MODEL, prompt=prompt, max_tokens=GREEDY_N, temperature=0)
        return r.choices[0].text

    def chat(self, message, c=None):
        return chat_text(c or client(), message, max_tokens=GREEDY_N, temperature=0)[0]

    def test_completions_sequential(self):
        c = client()
        for p in GEN_PROMPTS:
            with self.subTest(prompt=p):
                self.assertEqual(self.complete(p, c), refs["generate"][p])

    def test_chat_sequential(self):
        c = client()
        for m in CHAT_MESSAGES:
            with self.subTest(message=m):
                self.assertEqual(self.chat(m, c), refs["chat"][m])

    def _concurrently(self, fn, items):
        barrier = threading.Barrier(len(items))

        def one(item):
            c = client()
            barrier.wait(30)
            return fn(item, c)
        with ThreadPoolExecutor(len(items)) as ex:
            return list(ex.map(one, items))

    def test_completions_8_concurrent(self):
        outs = self._concurrently(self.complete, GEN_PROMPTS)
        for p, out in zip(GEN_PROMPTS, outs):
            with self.subTest(prompt=p):
                self.assertEqual(out, refs["generate"][p])

    def test_chat_8_concurrent(self):
        outs = self._concurrently(self.chat, CHAT_MESSAGES)
        for m, out in zip(CHAT_MESSAGES, outs):
            with self.subTest(message=m):
                self.assertEqual(out, refs["chat"][m])

    def test_prompts_arriving_while_others_run(self):
        # the first request is decoding when the others arrive, so their prompts
        # ride along in its decode steps instead of being evaluated alone
        c = client()
        first = c.completions.create(model=MODEL, prompt=GEN_PROMPTS[0], max_tokens=GREEDY_N, temperature=0,
                                     stream=True)
        it = iter(first)
        head = [next(it)]  # decoding has started
        rest = GEN_PROMPTS[1:]
        with ThreadPoolExecutor(len(rest)) as ex:
            outs = list(ex.map(lambda p: self.complete(p), rest))
        text = "".join(ch.choices[0].text for ch in head + list(it) if ch.choices)
        self.assertEqual(text, refs["generate"][GEN_PROMPTS[0]])
        for p, out in zip(rest, outs):
            with self.subTest(prompt=p):
                self.assertEqual(out, refs["generate"][p])

    def test_prompt_cache(self):
        # a slot keeps its last request's KV cache: the same prompt again (or one
        # starting the same way: every chat starts with the template and system
        # prompt) skips what it holds, and greedy text stays the CLI's
        c = client()
        m = CHAT_MESSAGES[2]
        before = metric_sum(server.metrics()[0], "lumen_prompt_tokens_cached_total")
        text1, r1 = chat_text(c, m, max_tokens=GREEDY_N, temperature=0)
        text2, r2 = chat_text(c, m, max_tokens=GREEDY_N, temperature=0)
        self.assertEqual(text1, refs["chat"][m])
        self.assertEqual(text2, refs["chat"][m])
        n = r2.usage.prompt_tokens
        self.assertEqual(r1.usage.prompt_tokens, n)
        # all but the last prompt token, whose logits the first token needs
        self.assertEqual(r2.usage.prompt_tokens_details.cached_tokens, n - 1)
        text3, r3 = chat_text(c, CHAT_MESSAGES[5], max_tokens=GREEDY_N, temperature=0)
        self.assertEqual(text3, refs["chat"][CHAT_MESSAGES[5]])
        self.assertGreater(r3.usage.prompt_tokens_details.cached_tokens, 10)  # the template's system turn
        self.assertLess(r3.usage.prompt_tokens_details.cached_tokens, r3.usage.prompt_tokens - 1)
        after = metric_sum(server.metrics()[0], "lumen_prompt_tokens_cached_total")
        self.assertGreaterEqual(after - before, n - 1 + r3.usage.prompt_tokens_details.cached_tokens)

    def test_mixed_8_concurrent_streaming(self):
        items = [("gen", p) for p in GEN_PROMPTS[:4]] + [("chat", m) for m in CHAT_MESSAGES[:4]]

        def one(item, c):
            kind, text = item
            if kind == "gen":
                s = c.completions.create(model=MODEL, prompt=text, max_tokens=GREEDY_N, temperature=0, stream=True)
                return "".join(ch.choices[0].text for ch in s if ch.choices)
            s = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                          max_tokens=GREEDY_N, temperature=0, stream=True)
            return "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
        outs = self._concurrently(one, items)
        for (kind, text), out in zip(items, outs):
            with self.subTest(kind=kind, text=text):
                self.assertEqual(out, refs["generate" if kind == "gen" else "chat"][text])


if __name__ == "__main__":
    unittest.main()


class GemmaWhileRunning:
    """Gemma 3 (Q5_0, Q8_0, Q4_K and Q6_K weights) with prompts arriving while
    another request decodes. With the VNNI tiles its prompts ride along in the
    decode steps; capped at AVX2 (no tiles for these types there) a prompt is
    evaluated alone between the steps. Greedy text must be the CLI's either way,
    the CLI run with the same ISA."""
    PROMPTS = ["The capital of France is", "Water boils at", "The three primary colors are", "1, 2, 3, 4, 5,"]
    N = 12
    ENV = None

    @classmethod
    def setUpClass(cls):
        cls.refs = {p: greedy_generate(p, cls.N, model="gemma3", env=cls.ENV) for p in cls.PROMPTS}
        cls.srv = Server("-m", "gemma3", "--slots", "4", name="gemma", env=cls.ENV).start()

    @classmethod
    def tearDownClass(cls):
        status = cls.srv.stop()
        cls.srv.remove()
        if status != 0:
            raise AssertionError("lumen serve (gemma3) did not exit 0 (status %r)" % (status,))

    def test_greedy_while_others_run(self):
        def make():
            return self.srv.openai(timeout=180)

        def complete(p):
            return make().completions.create(model="gemma3", prompt=p, max_tokens=self.N, temperature=0).choices[0].text
        first = make().completions.create(model="gemma3", prompt=self.PROMPTS[0], max_tokens=self.N,
                                          temperature=0, stream=True)
        it = iter(first)
        head = [next(it)]
        with ThreadPoolExecutor(3) as ex:
            outs = list(ex.map(complete, self.PROMPTS[1:]))
        self.assertEqual("".join(ch.choices[0].text for ch in head + list(it) if ch.choices), self.refs[self.PROMPTS[0]])
        for p, out in zip(self.PROMPTS[1:], outs):
            with self.subTest(prompt=p):
                self.assertEqual(out, self.refs[p])

    def test_prompt_cache_only_where_the_bits_allow(self):
        # where decode tokens do not take the panels (capped at AVX2), a cached prefix
        # could hold other bits than a prompt evaluated whole: the cache stays off;
        # with AVX-512 VNNI every token of these weights goes through the panels (the
        # K-quants' interleaved from the first token, info.panels) and a repeated
        # prompt reuses the slot's cache. Greedy text is the CLI's either way.
        panels = model_info("gemma3", env=self.ENV)["panels"]
        c = self.srv.openai(timeout=180)
        cached = []
        for _ in range(2):
            r = c.completions.create(model="gemma3", prompt=self.PROMPTS[1], max_tokens=self.N, temperature=0)
            self.assertEqual(r.choices[0].text, self.refs[self.PROMPTS[1]])
            cached.append(r.usage.prompt_tokens_details.cached_tokens)
        if panels:
            self.assertGreater(cached[1], 0)
        else:
            self.assertEqual(cached, [0, 0])


class TestGemmaRiding(GemmaWhileRunning, unittest.TestCase):
    pass


class TestGemmaAlone(GemmaWhileRunning, unittest.TestCase):
    ENV = {"LUMEN_ISA": "avx2"}
