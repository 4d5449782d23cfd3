"""Images in chat through a real `lumen serve` with the official `openai` and `ollama`
clients: image_url parts as base64 data: URLs reach the model's vision projector
(the smolvlm-test alias: SmolLM2 with SmolVLM's image tokens + a tiny random-weight
idefics3 mmproj, both written into the model cache by bench/vision/make_mmproj.py,
which scripts/test.sh runs). Greedy answers equal `lumen caption`'s for the same
image and prompt (the same engine on the same machine); usage counts the image's
positions; prefix reuse never crosses images; bad images are 400s that say why, and
the server keeps serving.

Run: spec/.venv/bin/python -m unittest -v test_vision   (in spec/serve; ctest -L serve)
"""
import base64
import json
import os
import socket
import struct
import subprocess
import unittest
import zlib

from serve_harness import BIN, ROOT, Server, metric_sum
from test_bad_input import stop_server

MODELS = os.environ.get("LUMEN_MODELS") or os.path.expanduser("~/.cache/lumen/models")
NEEDED = [os.path.join(MODELS, f) for f in ("SmolLM2-135M-vision.Q4_1.gguf", "vision-tiny-mmproj.gguf")]
FIXTURES = os.path.join(ROOT, "spec", "fixtures", "vision")
PROMPT = "What is in the picture?"
N = 24

srv = None


def setUpModule():
    global srv
    missing = [p for p in NEEDED if not os.path.exists(p)]
    if missing:
        raise AssertionError("missing %s: run bench/.venv-embed/bin/python bench/vision/make_mmproj.py "
                             "(scripts/test.sh does)" % ", ".join(missing))
    # two slots (n = 2 needs them); smollm2 has no projector
    srv = Server("-m", "smolvlm-test", "-m", "smollm2", "--slots", "2", name="vision").start()


def tearDownModule():
    if srv is not None:
        stop_server(srv)


def client():
    return srv.openai()


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def data_url(data, mime="image/png"):
    return "data:%s;base64,%s" % (mime, base64.b64encode(data).decode())


def image_message(url, text=PROMPT):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def ask(url, text=PROMPT, model="smolvlm-test", **kw):
    return client().chat.completions.create(model=model, messages=image_message(url, text), temperature=0,
                                            max_tokens=N, **kw)


def caption(name, text=PROMPT):
    """What `lumen caption` writes for the image (greedy), whitespace trimmed as it trims."""
    out = subprocess.check_output([BIN, "caption", os.path.join(FIXTURES, name), "-m", "smolvlm-test",
                                   "-n", str(N), "-p", text, "--json"], cwd=ROOT, timeout=300)
    return json.loads(out)["caption"]


def png(width, height, idat_rows=1):
    """A PNG header claiming width x height (8-bit RGB) and the first rows of zero pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = (b"\0" * (1 + 3 * width)) * idat_rows
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def error_message(e):
    b = e.body
    if isinstance(b, dict):
        b = b.get("error", b)
        if isinstance(b, dict) and "message" in b:
            return b["message"]
    return str(e)


class TestCaptions(unittest.TestCase):
    def test_caption_equals_lumen_caption(self):
        # the three formats lumen decodes, through the real client; the data URL's type
        # does not matter (the format is told by the first bytes)
        for name in ("chelsea_40x27.jpg", "chelsea_40x27_gray.png", "chelsea_120x80.webp"):
            r = ask(data_url(fixture(name)))
            text = r.choices[0].message.content
            self.assertEqual(text.strip(), caption(name), name)
            self.assertTrue(text.strip(), name + ": an empty caption proves little: pick another prompt")

    def test_stream_equals_whole_and_usage_counts_image_positions(self):
        url = data_url(fixture("chelsea_40x27_rgba.png"))
        whole = ask(url)
        chunks = list(ask(url, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        usage = chunks[-1].usage
        self.assertEqual(usage.prompt_tokens, whole.usage.prompt_tokens)
        self.assertEqual(usage.completion_tokens, whole.usage.completion_tokens)
        # the same text without the image: the image's positions are counted too (a 40x27
        # image is resized to 192 px on its long side, 3x3 tiles of 64 px plus the
        # overview, 16 rows each after pixel shuffle, and two layout tokens a tile)
        plain = client().chat.completions.create(model="smolvlm-test", temperature=0, max_tokens=1,
                                                 messages=[{"role": "user", "content": PROMPT}])
        self.assertGreaterEqual(whole.usage.prompt_tokens - plain.usage.prompt_tokens, 10 * 16)

    def test_n_choices(self):
        # the second choice forks the first's KV cache, image rows included
        r = client().chat.completions.create(model="smolvlm-test", messages=image_message(data_url(fixture("chelsea_40x27.jpg"))),
                                             temperature=0, max_tokens=N, n=1)
        two = client().chat.completions.create(model="smolvlm-test", messages=image_message(data_url(fixture("chelsea_40x27.jpg"))),
                                               temperature=0, max_tokens=N, n=2)
        self.assertEqual([c.message.content for c in two.choices], [r.choices[0].message.content] * 2)

    def test_prefix_reuse_never_crosses_images(self):
        # b: an image no other test sends before this one, so no slot can hold it yet
        a, b = data_url(fixture("chelsea_40x27.jpg")), data_url(fixture("chelsea_40x27_rgba.png"))
        ask(a)
        again = ask(a)
        # the same image and text again: everything but the last position is reused
        self.assertEqual(again.usage.prompt_tokens_details.cached_tokens, again.usage.prompt_tokens - 1)
        other = ask(b)
        # another image of the same size, the same text: the positions are as many, but only the
        # template's text before the image is reused, none of the image's 160 rows
        self.assertEqual(other.usage.prompt_tokens, again.usage.prompt_tokens)
        self.assertLessEqual(other.usage.prompt_tokens_details.cached_tokens, other.usage.prompt_tokens - 10 * 16)
        self.assertGreater(other.usage.prompt_tokens_details.cached_tokens, 0)
        # and the answer is that image's, not the one whose rows the slot held
        self.assertEqual(other.choices[0].message.content.strip(), caption("chelsea_40x27_rgba.png"))
        back = ask(a)
        self.assertEqual(back.choices[0].message.content, again.choices[0].message.content)

    def test_ollama_images(self):
        import ollama
        data = fixture("chelsea_40x27.jpg")
        c = ollama.Client(host="http://127.0.0.1:%d" % srv.port, timeout=120)
        r = c.chat(model="smolvlm-test", options={"temperature": 0, "num_predict": N},
                   messages=[{"role": "user", "content": PROMPT, "images": [data]}])
        self.assertEqual(r.message.content, ask(data_url(data)).choices[0].message.content)
        self.assertEqual(r.prompt_eval_count, ask(data_url(data)).usage.prompt_tokens)


class TestBadImages(unittest.TestCase):
    def refused(self, url, *words, model="smolvlm-test"):
        import openai
        with self.assertRaises(openai.BadRequestError) as cm:
            ask(url, model=model)
        msg = error_message(cm.exception)
        for w in words:
            self.assertIn(w, msg)
        self.assertIn("messages[0].content[0]", msg)
        # the server keeps serving: a good request right after succeeds
        ok = ask(data_url(fixture("chelsea_40x27.jpg")))
        self.assertEqual(ok.choices[0].finish_reason in ("stop", "length"), True)
        return msg

    def test_truncated_jpeg(self):
        # cut halfway through the compressed data after the start-of-scan marker (libjpeg
        # alone would fill the rest with gray and say nothing)
        data = fixture("chelsea_40x27.jpg")
        sos = data.index(b"\xff\xda")
        self.refused(data_url(data[: sos + (len(data) - sos) // 2], "image/jpeg"), "truncated")

    def test_png_decompression_bomb(self):
        # 300 bytes claiming 16000 x 6600 pixels (105.6 Mpixel): refused from the header,
        # before any pixel memory exists
        bomb = png(16000, 6600, idat_rows=4)
        self.assertLess(len(bomb), 1000)
        self.refused(data_url(bomb), "16000x6600", "at most")

    def test_zero_size_png(self):
        self.refused(data_url(png(0, 0, idat_rows=0)), "0x0")

    def test_text_file_sent_as_png(self):
        self.refused(data_url(b"just some text, not a picture\n"), "not an image lumen reads")

    def test_remote_url_is_not_fetched(self):
        self.refused("https://example.com/cat.png", "remote image URLs are not fetched", "data:")
        self.refused("http://127.0.0.1:%d/health" % srv.port, "not fetched")

    def test_malformed_base64(self):
        self.refused("data:image/png;base64,iVBORw0KGgo*AAAA", "'*' at offset 11")
        self.refused("data:image/png;base64,iVBORw0KGgoAA", "not a whole number of bytes")
        self.refused("data:image/png," + "x" * 8, "must be base64")
        self.refused("data:text/plain;base64,aGVsbG8=", "not an image")

    def test_model_without_projector(self):
        msg = self.refused(data_url(fixture("chelsea_40x27.jpg")), "smollm2", "no vision projector", model="smollm2")
        self.assertIn("model 'smollm2'", msg)

    def test_image_outside_a_user_message(self):
        import openai
        msgs = [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": data_url(fixture("chelsea_40x27.jpg"))}}]},
                {"role": "user", "content": PROMPT}]
        with self.assertRaises(openai.BadRequestError) as cm:
            client().chat.completions.create(model="smolvlm-test", messages=msgs, max_tokens=2)
        self.assertIn("images go in user messages", error_message(cm.exception))

    def test_placeholder_in_text_is_not_an_image(self):
        # the bytes lumen marks an image's place with, sent as text: refused, never taken for an image
        import openai
        with self.assertRaises(openai.BadRequestError) as cm:
            ask(data_url(fixture("chelsea_40x27.jpg")), text="\x01lumen-image\x01 and more")
        self.assertIn("image places", error_message(cm.exception))


class TestBusy(unittest.TestCase):
    def test_burst_refused_before_encoding(self):
        """One slot and no queue, five image requests at once: those refused with 429 were never
        encoded (a burst of image requests is not each given an encoding thread to be refused
        afterwards): every encode the server started belongs to a request it answered 200."""
        busy = Server("-m", "smolvlm-test", "--slots", "1", "--queue", "0", name="vision-busy").start()
        try:
            m0, _ = busy.metrics()
            socks = []
            for k in range(5):  # distinct images: the projector keeps the last few images' rows
                body = {"model": "smolvlm-test", "max_tokens": 4, "temperature": 0,
                        "messages": image_message(data_url(png(24 + k, 20, idat_rows=20)))}
                data = json.dumps(body).encode()
                s = busy.connect()
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
                socks.append(s)
            statuses = []
            for s in socks:
                buf = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                s.close()
                statuses.append(int(buf.split(b" ", 2)[1]))
            m1, _ = busy.metrics()
            encodes = metric_sum(m1, "lumen_image_encodes_total") - metric_sum(m0, "lumen_image_encodes_total")
            self.assertEqual(sorted(set(statuses) - {200, 429}), [], statuses)
            self.assertGreaterEqual(statuses.count(200), 1, statuses)
            self.assertGreaterEqual(statuses.count(429), 1, statuses)
            self.assertEqual(encodes, statuses.count(200), statuses)
        finally:
            stop_server(busy)


if __name__ == "__main__":
    unittest.main()
