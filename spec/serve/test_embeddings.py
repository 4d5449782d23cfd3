"""/v1/embeddings through the official openai client against a real server that
serves a chat model and an embedding model side by side: single and batched
inputs, token arrays, base64, the limits (too long, dimensions, the wrong kind of
model) as 400s, and the same vectors as `lumen embed`.

Run: spec/.venv/bin/python -m unittest -v test_embeddings   (in spec/serve; ctest -L serve)
"""
import base64
import json
import math
import struct
import subprocess
import unittest

from serve_harness import BIN, ROOT, Server
from test_bad_input import stop_server

srv = None


def setUpModule():
    global srv
    srv = Server("-m", "smollm2", "-m", "minilm", "--slots", "2", name="embeddings").start()


def tearDownModule():
    if srv is not None:
        stop_server(srv)


def client():
    return srv.openai()


def f32(xs):
    """As float32 values: the client may decode base64 (exact floats) where the CLI prints
    the shortest round-trip decimal; both are the same float32s."""
    return list(struct.unpack("<%df" % len(xs), struct.pack("<%df" % len(xs), *xs)))


def cli_embedding(text):
    p = subprocess.run([BIN, "embed", "-m", "minilm", "-p", text], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["embedding"]


class TestEmbeddings(unittest.TestCase):
    def test_single(self):
        r = client().embeddings.create(model="minilm", input="The kestrel hovers over the field.")
        self.assertEqual(r.object, "list")
        self.assertEqual(len(r.data), 1)
        e = r.data[0].embedding
        self.assertEqual(len(e), 384)
        self.assertAlmostEqual(math.sqrt(sum(x * x for x in e)), 1.0, places=5)
        self.assertGreater(r.usage.prompt_tokens, 5)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens)
        self.assertEqual(f32(e), f32(cli_embedding("The kestrel hovers over the field.")))

    def test_batch_in_order(self):
        texts = ["first text", "a second, longer text about birds", "日本語のテキスト", "emoji 🚀"]
        r = client().embeddings.create(model="minilm", input=texts)
        self.assertEqual([d.index for d in r.data], [0, 1, 2, 3])
        for t, d in zip(texts, r.data):
            one = client().embeddings.create(model="minilm", input=t).data[0].embedding
            # a batch's matrix products take other shapes than one text's: float rounding only
            cos = sum(a * b for a, b in zip(d.embedding, one))
            self.assertGreater(cos, 0.99999, t)

    def test_base64_is_the_same_floats(self):
        c = client()
        f = c.embeddings.create(model="minilm", input="hello world").data[0].embedding
        b = c.embeddings.create(model="minilm", input="hello world", encoding_format="base64").data[0].embedding
        raw = base64.b64decode(b)
        self.assertEqual(len(raw), 384 * 4)
        floats = struct.unpack("<384f", raw)
        self.assertEqual(list(floats), f32(f))

    def test_token_arrays(self):
        c = client()
        ids = [101, 7592, 2088, 102]  # [CLS] hello world [SEP] in MiniLM's vocabulary
        by_ids = c.embeddings.create(model="minilm", input=ids).data[0].embedding
        by_text = c.embeddings.create(model="minilm", input="hello world").data[0].embedding
        self.assertEqual(f32(by_ids), f32(by_text))
        two = c.embeddings.create(model="minilm", input=[ids, ids])
        self.assertEqual(len(two.data), 2)

    def test_refusals(self):
        import openai
        c = client()
        cases = [
            (dict(input="word " * 600), "256"),                          # too long: names the limit
            (dict(input="x", dimensions=128), "384"),                    # cannot shorten
            (dict(input=""), "empty"),
            (dict(input=[]), "input"),
            (dict(input=["a", [1, 2]]), "mixes"),
            (dict(input=[1.5]), "token"),
            (dict(input="x", encoding_format="int8"), "encoding_format"),
        ]
        for kw, want in cases:
            with self.assertRaises(openai.BadRequestError, msg=str(kw)[:80]) as cm:
                c.embeddings.create(model="minilm", **kw)
            self.assertIn(want, str(cm.exception))
        with self.assertRaises(openai.BadRequestError) as cm:
            c.embeddings.create(model="smollm2", input="x")
        self.assertIn("embedding model", str(cm.exception))
        with self.assertRaises(openai.BadRequestError) as cm:
            c.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        self.assertIn("/v1/embeddings", str(cm.exception))
        # and the server still answers
        self.assertEqual(len(c.embeddings.create(model="minilm", input="still here").data), 1)

    def test_default_models(self):
        """Without 'model': embeddings go to the embedding model, chat to the chat model."""
        st, _, body = srv.post_json("/v1/embeddings", {"input": "x"})
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["model"], "minilm")
        st, _, body = srv.post_json("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["model"], "smollm2")

if __name__ == "__main__":
    unittest.main()
