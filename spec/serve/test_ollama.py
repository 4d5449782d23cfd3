"""Ollama's API through the official `ollama` Python client against a real
`lumen serve` (a chat model and an embedding model): chat and generate,
streaming (NDJSON) and not, options, tags, show, embed, version; errors as
Ollama's {"error": ...}; the same greedy text as the OpenAI endpoint.

Run: spec/.venv/bin/python -m unittest -v test_ollama   (in spec/serve; ctest -L serve)
"""
import json
import unittest

from serve_harness import Server
from test_bad_input import stop_server

srv = None


def setUpModule():
    global srv
    srv = Server("-m", "smollm2", "-m", "minilm", "--slots", "2", name="ollama").start()


def tearDownModule():
    if srv is not None:
        stop_server(srv)


def client():
    import ollama
    return ollama.Client(host="http://127.0.0.1:%d" % srv.port, timeout=120)


GREEDY = {"temperature": 0, "num_predict": 16}
MSG = [{"role": "user", "content": "Name three colors."}]


class TestOllama(unittest.TestCase):
    def test_chat(self):
        r = client().chat(model="smollm2", messages=MSG, options=GREEDY)
        self.assertTrue(r.done)
        self.assertEqual(r.message.role, "assistant")
        self.assertTrue(r.message.content)
        self.assertGreater(r.prompt_eval_count, 10)
        self.assertGreater(r.total_duration, 0)
        # the same text, token count and end as the OpenAI endpoint, greedy
        st, _, body = srv.post_json("/v1/chat/completions", {"model": "smollm2", "messages": MSG, "temperature": 0,
                                                             "max_tokens": 16})
        o = json.loads(body)
        self.assertEqual(o["choices"][0]["message"]["content"], r.message.content)
        self.assertEqual(o["usage"]["completion_tokens"], r.eval_count)
        self.assertEqual(o["usage"]["prompt_tokens"], r.prompt_eval_count)
        self.assertEqual(o["choices"][0]["finish_reason"], r.done_reason)

    def test_chat_stream(self):
        parts = list(client().chat(model="smollm2:latest", messages=MSG, options=GREEDY, stream=True))
        self.assertTrue(parts[-1].done)
        self.assertTrue(all(not p.done for p in parts[:-1]))
        text = "".join(p.message.content for p in parts)
        whole = client().chat(model="smollm2", messages=MSG, options=GREEDY).message.content
        self.assertEqual(text, whole)
        self.assertEqual(parts[-1].eval_count, client().chat(model="smollm2", messages=MSG, options=GREEDY).eval_count)
        r = client().chat(model="smollm2", messages=[{"role": "user", "content": "Count from 1 to 100."}],
                          options={"temperature": 0, "num_predict": 5})
        self.assertEqual((r.eval_count, r.done_reason), (5, "length"))

    def test_generate(self):
        raw = client().generate(model="smollm2", prompt="The capital of France is", raw=True,
                                options={"temperature": 0, "num_predict": 4})
        self.assertIn("Paris", raw.response)
        st, _, body = srv.post_json("/v1/completions", {"model": "smollm2", "prompt": "The capital of France is",
                                                        "temperature": 0, "max_tokens": 4})
        self.assertEqual(json.loads(body)["choices"][0]["text"], raw.response)
        # without raw: the model's template, with the system prompt
        t = client().generate(model="smollm2", prompt="Say hi.", system="Answer in one word.", options=GREEDY)
        self.assertTrue(t.response)
        parts = list(client().generate(model="smollm2", prompt="Say hi.", options=GREEDY, stream=True))
        self.assertTrue(parts[-1].done)

    def test_options(self):
        c = client()
        a = c.generate(model="smollm2", prompt="Once upon a time", raw=True, options={"temperature": 1, "seed": 11, "num_predict": 12})
        b = c.generate(model="smollm2", prompt="Once upon a time", raw=True, options={"temperature": 1, "seed": 11, "num_predict": 12})
        self.assertEqual(a.response, b.response)
        s = c.generate(model="smollm2", prompt="1, 2, 3, 4,", raw=True, options={"temperature": 0, "stop": [" 7"], "num_predict": 30})
        self.assertNotIn(" 7", s.response)
        self.assertEqual(s.done_reason, "stop")

    def test_tags_show_version(self):
        c = client()
        names = [m.model for m in c.list().models]
        self.assertIn("smollm2:latest", names)
        self.assertIn("minilm:latest", names)
        show = c.show("smollm2")
        self.assertEqual(show.details.format, "gguf")
        self.assertIn("llama", show.details.family)
        st, _, body = srv.request("GET", "/api/version")
        self.assertEqual(st, 200)
        self.assertIn("version", json.loads(body))

    def test_embed(self):
        r = client().embed(model="minilm", input=["hello world", "goodbye"])
        self.assertEqual(len(r.embeddings), 2)
        self.assertEqual(len(r.embeddings[0]), 384)
        st, _, body = srv.post_json("/v1/embeddings", {"model": "minilm", "input": "hello world"})
        e = json.loads(body)["data"][0]["embedding"]
        self.assertEqual(r.embeddings[0], e)

    def test_errors(self):
        import ollama
        c = client()
        with self.assertRaises(ollama.ResponseError) as cm:
            c.chat(model="nope", messages=MSG)
        self.assertEqual(cm.exception.status_code, 404)
        self.assertIn("nope", cm.exception.error)
        with self.assertRaises(ollama.ResponseError) as cm:
            c.chat(model="smollm2", messages=MSG, options={"no_such_option": 1})
        self.assertEqual(cm.exception.status_code, 400)
        st, _, body = srv.request("POST", "/api/chat", body="{not json")
        self.assertEqual(st, 400)
        self.assertIn("error", json.loads(body))


if __name__ == "__main__":
    unittest.main()
