"""`lumen serve` against malformed and hostile clients, spoken to with raw
http.client and sockets: every answer is the right status with an OpenAI-style
error body ({"error": {"message", "type", "param", "code"}}), nothing crashes or
leaks a slot, and afterwards a normal request still succeeds.

Three servers, one after the other:
- the main one: --ctx 256 (for context_length_exceeded), --slots 4, and a config
  file with timeouts.idle_s = 2 (for the slow-client cases);
- one with API keys from a key file and LUMEN_API_KEYS (401s);
- one with --slots 1 --queue 1 (429 with Retry-After).

Decisions the contract left open, taken here:
- a JSON body sent as text/plain, form-urlencoded or with no Content-Type is
  accepted;
- bytes that are not HTTP at all (garbage, a TLS hello, a header flood, a
  negative Content-Length) may be answered by the HTTP layer with any 4xx or by
  closing the connection; only a crash, a hang or a 5xx fails;
- a lone UTF-16 surrogate escape ("\\ud800") is invalid Unicode: 400;
  a NUL ("\\u0000") inside content is valid JSON: 200 or 400, not a crash.

Run: spec/.venv/bin/python -m unittest -v test_bad_input   (in spec/serve; ctest -L serve)
"""
import http.client
import json
import select
import socket
import struct
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

from serve_harness import Server, metric_sum

MODEL = "smollm2"
IDLE_S = 2
CTX = 256
MAX_BODY = 1048576
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"  # greedy continues counting for a long time

CONFIG = """\
host: 127.0.0.1
port: 0
models: [smollm2]
slots: 4
ctx: 256
queue_limit: 16
max_body_bytes: %d
timeouts:
  idle_s: %d
  request_s: 600
api_keys: []
""" % (MAX_BODY, IDLE_S)

CHAT = "/v1/chat/completions"
COMPL = "/v1/completions"


def base(**over):
    d = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    d.update(over)
    return d


def without(key, d=None):
    d = dict(d or base())
    d.pop(key)
    return d


def cbase(**over):
    d = {"model": MODEL, "prompt": "Hello", "max_tokens": 4}
    d.update(over)
    return d


def raw_json(text):
    """A body spelled by hand (not valid for json.dumps: NaN, 1e300 as written, bad bytes)."""
    return text.encode("utf-8") if isinstance(text, str) else text


# (name, path, body, expected status (int or tuple), expected error code or None, extra headers)
CASES = [
    # -- not JSON, or not a JSON object
    ("bad_json", CHAT, raw_json('{"model": smollm2}'), 400, None, None),
    ("truncated_json", CHAT, raw_json('{"messages": [{"role": "user", "content": "hi"'), 400, None, None),
    ("trailing_garbage", CHAT, raw_json(json.dumps(base()) + " xyz"), 400, None, None),
    ("single_quotes", CHAT, raw_json("{'messages': []}"), 400, None, None),
    ("top_level_array", CHAT, raw_json("[]"), 400, None, None),
    ("top_level_array_of_request", CHAT, [base()], 400, None, None),
    ("top_level_number", CHAT, raw_json("42"), 400, None, None),
    ("top_level_string", CHAT, raw_json('"hello"'), 400, None, None),
    ("top_level_null", CHAT, raw_json("null"), 400, None, None),
    ("top_level_true", CHAT, raw_json("true"), 400, None, None),
    ("empty_body", CHAT, b"", 400, None, None),
    ("whitespace_body", CHAT, b" \r\n\t ", 400, None, None),
    ("empty_object", CHAT, {}, 400, None, None),
    ("completions_empty_body", COMPL, b"", 400, None, None),
    # -- messages
    ("messages_missing", CHAT, without("messages"), 400, None, None),
    ("messages_null", CHAT, base(messages=None), 400, None, None),
    ("messages_string", CHAT, base(messages="hi"), 400, None, None),
    ("messages_object", CHAT, base(messages={"role": "user", "content": "hi"}), 400, None, None),
    ("messages_empty", CHAT, base(messages=[]), 400, None, None),
    ("message_not_object", CHAT, base(messages=["hi"]), 400, None, None),
    ("message_role_missing", CHAT, base(messages=[{"content": "hi"}]), 400, None, None),
    ("message_role_unknown", CHAT, base(messages=[{"role": "wizard", "content": "hi"}]), 400, None, None),
    ("message_role_number", CHAT, base(messages=[{"role": 1, "content": "hi"}]), 400, None, None),
    ("message_content_missing", CHAT, base(messages=[{"role": "user"}]), 400, None, None),
    ("message_content_number", CHAT, base(messages=[{"role": "user", "content": 5}]), 400, None, None),
    ("message_content_object", CHAT, base(messages=[{"role": "user", "content": {"text": "hi"}}]), 400, None, None),
    ("message_content_part_text_number", CHAT,
     base(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), 400, None, None),
    ("message_content_part_not_object", CHAT,
     base(messages=[{"role": "user", "content": ["hi"]}]), 400, None, None),
    ("message_content_lone_surrogate", CHAT,
     raw_json('{"messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 2}'), 400, None, None),
    ("message_content_nul", CHAT,
     raw_json('{"messages": [{"role": "user", "content": "a\\u0000b"}], "max_tokens": 2}'), (200, 400), None, None),
    # -- model
    ("model_number", CHAT, base(model=7), 400, None, None),
    ("model_list", CHAT, base(model=[MODEL]), 400, None, None),
    ("model_unknown", CHAT, base(model="gpt-17"), 404, "model_not_found", None),
    ("model_unknown_completions", COMPL, cbase(model="../../etc/passwd"), 404, "model_not_found", None),
    # -- max_tokens
    ("max_tokens_string", CHAT, base(max_tokens="16"), 400, None, None),
    ("max_tokens_float", CHAT, base(max_tokens=1.5), 400, None, None),
    ("max_tokens_bool", CHAT, base(max_tokens=True), 400, None, None),
    ("max_tokens_zero", CHAT, base(max_tokens=0), 400, None, None),
    ("max_tokens_negative", CHAT, base(max_tokens=-5), 400, None, None),
    ("max_tokens_1e300", CHAT, raw_json('{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1e300}'), 400, None, None),
    ("max_tokens_2_pow_64", CHAT, base(max_tokens=2 ** 64), 400, None, None),
    ("max_tokens_minus_2_pow_63_minus_1", CHAT, base(max_tokens=-(2 ** 63) - 1), 400, None, None),
    ("max_completion_tokens_negative", CHAT, base(max_completion_tokens=-1), 400, None, None),
    ("completions_max_tokens_zero", COMPL, cbase(max_tokens=0), 400, None, None),
    # -- sampling parameters
    ("temperature_string", CHAT, base(temperature="hot"), 400, None, None),
    ("temperature_negative", CHAT, base(temperature=-0.5), 400, None, None),
    ("temperature_above_2", CHAT, base(temperature=2.5), 400, None, None),
    ("temperature_nan", CHAT, raw_json('{"messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}'), 400, None, None),
    ("temperature_infinity", CHAT, raw_json('{"messages": [{"role": "user", "content": "Hi"}], "temperature": Infinity}'), 400, None, None),
    ("temperature_1e999", CHAT, raw_json('{"messages": [{"role": "user", "content": "Hi"}], "temperature": 1e999}'), 400, None, None),
    ("top_p_above_1", CHAT, base(top_p=1.5), 400, None, None),
    ("top_p_negative", CHAT, base(top_p=-0.1), 400, None, None),
    ("top_p_string", CHAT, base(top_p="0.5"), 400, None, None),
    ("n_zero", CHAT, base(n=0), 400, None, None),
    ("n_100", CHAT, base(n=100), 400, None, None),
    ("n_string", CHAT, base(n="2"), 400, None, None),
    ("n_float", CHAT, base(n=1.5), 400, None, None),
    ("logprobs_string", CHAT, base(logprobs="yes"), 400, None, None),
    ("top_logprobs_50", CHAT, base(logprobs=True, top_logprobs=50), 400, None, None),
    ("top_logprobs_negative", CHAT, base(logprobs=True, top_logprobs=-1), 400, None, None),
    ("top_logprobs_string", CHAT, base(logprobs=True, top_logprobs="5"), 400, None, None),
    ("stop_five_strings", CHAT, base(stop=["a", "b", "c", "d", "e"]), 400, None, None),
    ("stop_number", CHAT, base(stop=42), 400, None, None),
    ("stop_list_with_number", CHAT, base(stop=["a", 1]), 400, None, None),
    ("stop_object", CHAT, base(stop={"a": 1}), 400, None, None),
    ("stream_string", CHAT, base(stream="yes"), 400, None, None),
    ("stream_options_string", CHAT, base(stream=True, stream_options="yes"), 400, None, None),
    ("seed_string", CHAT, base(seed="abc"), 400, None, None),
    ("presence_penalty_string", CHAT, base(presence_penalty="x"), 400, None, None),
    ("frequency_penalty_list", CHAT, base(frequency_penalty=[1]), 400, None, None),
    # -- bytes that are not UTF-8 inside a JSON string
    ("invalid_utf8_ff", CHAT, b'{"messages": [{"role": "user", "content": "a\xff\xfeb"}], "max_tokens": 2}', 400, None, None),
    ("invalid_utf8_overlong", CHAT, b'{"messages": [{"role": "user", "content": "a\xc0\xafb"}], "max_tokens": 2}', 400, None, None),
    ("invalid_utf8_truncated", CHAT, b'{"messages": [{"role": "user", "content": "a\xe2\x82"}], "max_tokens": 2}', 400, None, None),
    ("invalid_utf8_surrogate_bytes", CHAT, b'{"messages": [{"role": "user", "content": "a\xed\xa0\x80b"}], "max_tokens": 2}', 400, None, None),
    ("invalid_utf8_in_prompt", COMPL, b'{"prompt": "x\x80y", "max_tokens": 2}', 400, None, None),
    # -- nesting
    ("deep_nesting_100000_brackets", CHAT, b"[" * 100000, 400, None, None),
    ("deep_nesting_in_messages", CHAT, b'{"messages": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, None, None),
    ("deep_nesting_objects", CHAT, b'{"a":' * 50000 + b"1" + b"}" * 50000, 400, None, None),
    # -- completions
    ("completions_echo_true", COMPL, cbase(echo=True), 400, None, None),
    ("completions_prompt_missing", COMPL, without("prompt", cbase()), 400, None, None),
    ("completions_prompt_number", COMPL, cbase(prompt=12), 400, None, None),
    ("completions_prompt_list_of_two", COMPL, cbase(prompt=["a", "b"]), 400, None, None),
    ("completions_prompt_token_ids", COMPL, cbase(prompt=[1, 2, 3]), 400, None, None),
    ("completions_messages_instead", COMPL, without("prompt", cbase(messages=[{"role": "user", "content": "x"}])), 400, None, None),
    # -- longer than the context (the server runs with --ctx 256)
    ("context_exceeded_chat", CHAT, base(messages=[{"role": "user", "content": "word " * 400}]), 400, "context_length_exceeded", None),
    ("context_exceeded_completions", COMPL, cbase(prompt="word " * 400), 400, "context_length_exceeded", None),
    ("context_exceeded_200kb", COMPL, cbase(prompt="hello world, " * 16000), 400, "context_length_exceeded", None),
    # -- paths and methods
    ("unknown_path_get", "/v1/nope", None, 404, None, {"_method": "GET"}),
    ("unknown_path_post", "/v1/chat", base(), 404, None, None),
    ("unknown_top_path", "/index.php", None, 404, None, {"_method": "GET"}),
    ("path_traversal", "/v1/../../etc/passwd", None, 404, None, {"_method": "GET"}),
    ("get_chat_completions", CHAT, None, 405, None, {"_method": "GET"}),
    ("put_completions", COMPL, cbase(), 405, None, {"_method": "PUT"}),
    ("delete_models", "/v1/models", None, 405, None, {"_method": "DELETE"}),
    ("post_models", "/v1/models", {}, 405, None, None),
    ("post_health", "/health", {}, 405, None, None),
    # -- content type tolerance: accepted
    ("content_type_text_plain", CHAT, json.dumps(base()).encode(), 200, None, {"Content-Type": "text/plain"}),
    ("content_type_missing", CHAT, json.dumps(base()).encode(), 200, None, {}),
    ("content_type_form", CHAT, json.dumps(base()).encode(), 200, None, {"Content-Type": "application/x-www-form-urlencoded"}),
    ("content_type_with_charset", CHAT, json.dumps(base()).encode(), 200, None, {"Content-Type": "application/json; charset=utf-8"}),
]


def _build(path, body, headers):
    """(method, body bytes, headers): POST with a JSON Content-Type unless the case says otherwise."""
    method = "POST"
    if headers is not None:
        headers = dict(headers)
        method = headers.pop("_method", "POST")
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode("utf-8")
    if headers is None:
        headers = {"Content-Type": "application/json"} if body is not None else {}
    return method, body, headers


def read_response(sock, timeout=30):
    """Parse one HTTP response from a socket: (status, headers, body), or None if the
    server closed (or reset) the connection without answering."""
    sock.settimeout(timeout)
    resp = http.client.HTTPResponse(sock, method="POST")
    try:
        resp.begin()
        body = resp.read()
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        return None
    except http.client.IncompleteRead as e:
        body = e.partial
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def send_raw(server, data, timeout=30):
    """Send raw bytes on a new connection and read whatever comes back (see read_response)."""
    s = server.connect(timeout)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_response(s, timeout)
    finally:
        s.close()


def send_streaming_body(server, head, chunks, timeout=60):
    """Send `head`, then the body chunks, stopping as soon as the server answers
    (or closes), then read the answer. For bodies over the size limit."""
    s = server.connect(timeout)
    try:
        s.sendall(head)
        s.setblocking(False)
        answered = False
        for chunk in chunks:
            view = memoryview(chunk)
            while view and not answered:
                r, w, _ = select.select([s], [s], [], timeout)
                if r:
                    answered = True
                    break
                if not w:
                    raise TimeoutError("server neither reads the body nor answers")
                try:
                    view = view[s.send(view):]
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    answered = True
            if answered:
                break
        s.setblocking(True)
        return read_response(s, timeout)
    finally:
        s.close()


class ErrorChecks:
    def assertOpenAIError(self, res, status, code=None, what=""):
        self.assertIsNotNone(res, "%s: the server closed the connection without an answer" % what)
        got, headers, body = res
        if isinstance(status, int):
            status = (status,)
        self.assertIn(got, status, "%s: status %d, body %r" % (what, got, body[:300]))
        if got == 200:
            return None
        self.assertTrue(headers.get("content-type", "").startswith("application/json"),
                        "%s: error content-type %r" % (what, headers.get("content-type")))
        try:
            doc = json.loads(body)
        except ValueError:
            self.fail("%s: error body is not JSON: %r" % (what, body[:300]))
        self.assertIsInstance(doc, dict, what)
        err = doc.get("error")
        self.assertIsInstance(err, dict, "%s: no error object: %r" % (what, doc))
        for key in ("message", "type", "param", "code"):
            self.assertIn(key, err, "%s: error has no %r: %r" % (what, key, err))
        self.assertIsInstance(err["message"], str)
        self.assertTrue(err["message"], "%s: empty error message" % what)
        self.assertIsInstance(err["type"], str)
        self.assertTrue(err["param"] is None or isinstance(err["param"], str), err)
        self.assertTrue(err["code"] is None or isinstance(err["code"], (str, int)), err)
        if code is not None:
            self.assertEqual(err["code"], code, "%s: %r" % (what, err))
        return err

    def assertClosedOr4xx(self, res, what="", mhd_doubles_headers=False):
        """For bytes that are not HTTP: the HTTP layer may answer 4xx or hang up.
        mhd_doubles_headers: libmicrohttpd 0.9.75 (Debian 12) writes the header block
        of its own answer to a malformed Content-Length twice before the body; the
        status is still a 4xx and the connection closes (a known defect of that
        version, noted in the README); lumen never sees such a request."""
        if res is None:
            return
        self.assertTrue(400 <= res[0] < 500, "%s: status %d, body %r" % (what, res[0], res[2][:200]))
        body = res[2]
        if mhd_doubles_headers and body.startswith(b"HTTP/1.1 %d " % res[0]):
            body = body.split(b"\r\n\r\n", 1)[-1]
        # one well-formed response: the body is not a second status line and headers
        self.assertFalse(body.startswith(b"HTTP/"), "%s: the answer's body is another HTTP header block: %r"
                         % (what, body[:200]))

    def assertServes(self, srv):
        self.assertTrue(srv.alive(), "the server process is gone\n" + srv.log_tail())
        status, _, body = srv.post_json(CHAT, base(max_tokens=4, temperature=0))
        self.assertEqual(status, 200, body)
        doc = json.loads(body)
        self.assertEqual(doc["object"], "chat.completion")
        self.assertTrue(doc["choices"][0]["message"]["content"])


def stop_server(srv):
    alive = srv.alive()
    status = srv.stop()
    if not alive:
        raise AssertionError("lumen serve died during the tests\n" + srv.log_tail())
    if status != 0:
        raise AssertionError("lumen serve did not exit 0 within 30 s of SIGTERM (status %r)\n%s"
                             % (status, srv.log_tail()))
    srv.remove()


def wait_idle(srv, timeout=20):
    """Wait until no slot is busy and nothing is queued; returns the last metrics."""
    deadline = time.monotonic() + timeout
    while True:
        m, _ = srv.metrics()
        if metric_sum(m, "lumen_slots_busy") == 0 and metric_sum(m, "lumen_queue_depth") == 0:
            return m
        if time.monotonic() > deadline:
            raise AssertionError("slots still busy %.0f s after the clients left: busy=%s queue=%s\n%s" % (
                timeout, metric_sum(m, "lumen_slots_busy"), metric_sum(m, "lumen_queue_depth"), srv.log_tail()))
        time.sleep(0.2)


def stream_request(path, body, extra=""):
    data = json.dumps(body).encode()
    return (("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             "Content-Length: %d\r\n%s\r\n") % (path, len(data), extra)).encode() + data


def read_events(sock, n, timeout=60):
    """Read from a streaming response until `n` SSE data events have arrived; returns the bytes."""
    sock.settimeout(timeout)
    buf = b""
    while buf.count(b"data: ") < n:  # (the body may be in chunked transfer encoding)
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


class TestBadRequests(unittest.TestCase, ErrorChecks):
    """One test per malformed request (see CASES); then the hostile connections."""
    srv = None

    @classmethod
    def setUpClass(cls):
        cls.srv = Server("-m", MODEL, "--ctx", str(CTX), "--slots", "4", config=CONFIG, name="bad-input").start()

    @classmethod
    def tearDownClass(cls):
        if cls.srv is None:
            return
        try:
            if cls.srv.alive():
                status, _, body = cls.srv.post_json(CHAT, base(max_tokens=4))
                if status != 200:
                    raise AssertionError("after all the bad input, a normal request answered %d: %r" % (status, body))
        finally:
            stop_server(cls.srv)

    def check_case(self, name, path, body, status, code, headers):
        method, body, hdrs = _build(path, body, headers)
        try:
            res = self.srv.request(method, path, body=body, headers=hdrs, timeout=60)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            res = None
        self.assertOpenAIError(res, status, code, what=name)
        self.assertTrue(self.srv.alive(), "%s killed the server\n%s" % (name, self.srv.log_tail()))

    # -- bodies over the limit -----------------------------------------------
    def test_body_10mb_is_413(self):
        size = 10 * 1024 * 1024
        head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: %d\r\n\r\n" % (CHAT, size)).encode()
        prefix = b'{"messages": [{"role": "user", "content": "'
        filler = (b"a" * 65536 for _ in range((size - len(prefix)) // 65536 + 1))
        res = send_streaming_body(self.srv, head, [prefix, *filler])
        self.assertOpenAIError(res, 413, what="10 MB body")

    def test_body_just_over_limit_is_413(self):
        shell = json.dumps({"messages": [{"role": "user", "content": ""}], "max_tokens": 1}).encode()
        content = "a" * (MAX_BODY + 1 - len(shell))
        body = json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 1}).encode()
        self.assertEqual(len(body), MAX_BODY + 1)
        # The server may answer 413 from Content-Length alone and close before the whole
        # body is sent, so send it the way a careful client does: stop at the answer.
        head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: %d\r\n\r\n" % (CHAT, len(body))).encode()
        res = send_streaming_body(self.srv, head, [body[i:i + 65536] for i in range(0, len(body), 65536)])
        self.assertOpenAIError(res, 413, what="limit + 1 bytes")

    def test_chunked_body_over_limit_is_413(self):
        head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n" % CHAT).encode()
        piece = b"a" * 65536
        chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
        res = send_streaming_body(self.srv, head, [b"2c\r\n" + b'{"messages": [{"role": "user", "content": "' + b"\r\n"]
                                  + [chunk] * (2 * MAX_BODY // len(piece)) + [b"0\r\n\r\n"])
        self.assertOpenAIError(res, 413, what="chunked body over the limit")

    # -- bytes that are not HTTP ---------------------------------------------
    def test_garbage_bytes(self):
        import random
        rnd = random.Random(1)
        res = send_raw(self.srv, bytes(rnd.randrange(256) for _ in range(4096)))
        self.assertClosedOr4xx(res, "random bytes")
        self.assertClosedOr4xx(send_raw(self.srv, b"\x00" * 1024 + b"\r\n\r\n"), "NULs")
        self.assertClosedOr4xx(send_raw(self.srv, b"HELLO WORLD\r\n\r\n"), "not a request line")
        # a TLS ClientHello sent to the plain-HTTP port
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\x00" * 400
        self.assertClosedOr4xx(send_raw(self.srv, hello), "TLS hello")
        self.assertServes(self.srv)

    def test_header_flood(self):
        lines = b"".join(b"X-Flood-%d: %s\r\n" % (i, b"a" * 50) for i in range(10000))
        res = send_raw(self.srv, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines + b"\r\n")
        self.assertClosedOr4xx(res, "10000 headers")
        res = send_raw(self.srv, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 200000 + b"\r\n\r\n")
        self.assertClosedOr4xx(res, "one 200 kB header")
        res = send_raw(self.srv, b"GET /v1/models?" + b"q" * 100000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertClosedOr4xx(res, "100 kB URL")
        self.assertServes(self.srv)

    def test_bad_content_length(self):
        res = send_raw(self.srv, ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n{}" % CHAT).encode())
        self.assertClosedOr4xx(res, "negative Content-Length", mhd_doubles_headers=True)
        res = send_raw(self.srv, ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999999999999\r\n\r\n{}" % CHAT).encode())
        self.assertClosedOr4xx(res, "Content-Length beyond 64 bits", mhd_doubles_headers=True)
        res = send_raw(self.srv, ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}" % CHAT).encode())
        self.assertClosedOr4xx(res, "two Content-Lengths")
        self.assertServes(self.srv)

    # -- slow and vanishing clients ------------------------------------------
    def _time_until_closed(self, sock, limit):
        sock.settimeout(limit)
        t0 = time.monotonic()
        try:
            while sock.recv(65536):
                pass  # a 408 answer is fine too; wait for the close
        except ConnectionResetError:
            pass
        except socket.timeout:
            return None
        return time.monotonic() - t0

    def test_slow_headers_are_cut_off_after_idle_timeout(self):
        s = self.srv.connect()
        try:
            s.sendall(("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl" % CHAT).encode())
            t0 = time.monotonic()
            # a stalled client does not hold up anyone else
            status, _, _ = self.srv.request("GET", "/health", timeout=10)
            self.assertEqual(status, 200)
            self.assertServes(self.srv)
            waited = self._time_until_closed(s, IDLE_S + 15)
            self.assertIsNotNone(waited, "half-sent headers: still open %d s after idle_s=%d" % (IDLE_S + 15, IDLE_S))
            total = time.monotonic() - t0 if waited is not None else None
            self.assertGreaterEqual(total, IDLE_S - 0.5, "closed before the idle timeout")
            self.assertLessEqual(total, IDLE_S + 8)
        finally:
            s.close()

    def test_slow_body_is_cut_off_after_idle_timeout(self):
        s = self.srv.connect()
        try:
            s.sendall(("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       "Content-Length: 1000\r\n\r\n{\"messages\": [" % CHAT).encode())
            waited = self._time_until_closed(s, IDLE_S + 15)
            self.assertIsNotNone(waited, "half-sent body: still open %d s after idle_s=%d" % (IDLE_S + 15, IDLE_S))
            self.assertLessEqual(waited, IDLE_S + 8)
        finally:
            s.close()

    def test_idle_keepalive_connection_is_closed(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=30)
        try:
            conn.request("GET", "/health")
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
            waited = self._time_until_closed(conn.sock, IDLE_S + 15) if conn.sock else 0
            self.assertIsNotNone(waited, "an idle keep-alive connection stays open")
            self.assertLessEqual(waited, IDLE_S + 8)
        finally:
            conn.close()

    def test_connection_flood_recovers_after_idle_timeout(self):
        # more idle half-open connections than the HTTP layer's connection limit (256)
        socks = []
        try:
            for _ in range(300):
                try:
                    s = self.srv.connect(5)
                    s.sendall(b"GET /health HTTP/1.1\r\nHo")
                    socks.append(s)
                except OSError:
                    break
            t0 = time.monotonic()
            while True:
                try:
                    status, _, _ = self.srv.request("GET", "/health", timeout=IDLE_S + 10)
                    if status == 200:
                        break
                except OSError:
                    pass
                self.assertLess(time.monotonic() - t0, IDLE_S + 20,
                                "/health unanswered %d s after %d idle connections" % (IDLE_S + 20, len(socks)))
                time.sleep(0.2)
        finally:
            for s in socks:
                s.close()
        self.assertServes(self.srv)

    def test_disconnect_mid_stream_frees_the_slot(self):
        wait_idle(self.srv)
        before, _ = self.srv.metrics()
        s = self.srv.connect()
        try:
            s.sendall(stream_request(COMPL, {"model": MODEL, "prompt": COUNTING, "max_tokens": 200,
                                             "temperature": 0, "stream": True}))
            got = read_events(s, 3)  # the first chunk and two more
            self.assertTrue(got.startswith(b"HTTP/1.1 200"), got[:200])
        finally:
            s.close()
        m = wait_idle(self.srv)
        generated = metric_sum(m, "lumen_completion_tokens_total") - metric_sum(before, "lumen_completion_tokens_total")
        self.assertLess(generated, 150, "generation went on after the client left (%d tokens)" % generated)
        self.assertServes(self.srv)

    def test_many_disconnecting_clients(self):
        wait_idle(self.srv)
        body = {"model": MODEL, "prompt": COUNTING, "max_tokens": 100, "temperature": 0, "stream": True}
        req = stream_request(COMPL, body)

        def vanish(kind):
            s = self.srv.connect()
            try:
                if kind == "connect":
                    pass
                elif kind == "half_request":
                    s.sendall(req[: len(req) // 2])
                elif kind == "full_request":
                    s.sendall(req)
                elif kind == "after_headers":
                    s.sendall(req)
                    s.settimeout(60)
                    s.recv(1)
                elif kind == "reset_mid_stream":
                    s.sendall(req)
                    read_events(s, 2)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
                elif kind == "non_stream_then_leave":
                    data = json.dumps(dict(body, stream=False)).encode()
                    s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (COMPL, len(data))).encode() + data)
                    time.sleep(0.2)
            finally:
                s.close()
            return kind

        kinds = ["connect", "half_request", "full_request", "after_headers", "reset_mid_stream",
                 "non_stream_then_leave"] * 4
        with ThreadPoolExecutor(8) as ex:
            self.assertEqual(len(list(ex.map(vanish, kinds))), len(kinds))
        wait_idle(self.srv, timeout=60)
        self.assertServes(self.srv)


def _make_case(case):
    def test(self):
        self.check_case(*case)
    test.__doc__ = "%s %s -> %s" % (case[1], case[0], case[3])
    return test


for _case in CASES:
    setattr(TestBadRequests, "test_case_" + _case[0], _make_case(_case))


class TestApiKeys(unittest.TestCase, ErrorChecks):
    """One key from a key file (one key per line, a comment), one from LUMEN_API_KEYS."""
    KEYS = ("sekrit-one", "sekrit-two")
    srv = None

    @classmethod
    def setUpClass(cls):
        import os
        import tempfile
        cls.keydir = tempfile.mkdtemp(prefix="lumen-keys-")
        cls.keyfile = os.path.join(cls.keydir, "keys")
        with open(cls.keyfile, "w") as f:
            f.write("# the team's key\n%s\n\n" % cls.KEYS[0])
        cls.srv = Server("-m", MODEL, "--slots", "2", "--api-key-file", cls.keyfile,
                         env={"LUMEN_API_KEYS": cls.KEYS[1]}, api_key=cls.KEYS[0], name="api-key").start()

    def test_key_on_command_line_refused(self):
        """A key in argv shows in `ps`: refused, with the way to do it instead."""
        import subprocess
        from serve_harness import BIN
        p = subprocess.run([BIN, "serve", "-m", MODEL, "--port", "0", "--api-key", "sekrit-cli"],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--api-key-file", p.stderr)
        self.assertIn("LUMEN_API_KEYS", p.stderr)
        self.assertNotIn("listening", p.stderr)

    def test_missing_key_file(self):
        import subprocess
        from serve_harness import BIN
        p = subprocess.run([BIN, "serve", "-m", MODEL, "--port", "0", "--api-key-file", "/nonexistent/keys"],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("/nonexistent/keys", p.stderr)
        self.assertNotIn("listening", p.stderr)

    @classmethod
    def tearDownClass(cls):
        if cls.srv is not None:
            stop_server(cls.srv)

    def post(self, auth):
        headers = {} if auth is None else {"Authorization": auth}
        return self.srv.post_json(CHAT, base(), headers=headers)

    def test_missing_key(self):
        self.assertOpenAIError(self.post(None), 401, "invalid_api_key", "no Authorization")

    def test_wrong_key(self):
        self.assertOpenAIError(self.post("Bearer nope"), 401, "invalid_api_key", "wrong key")

    def test_prefix_of_key(self):
        self.assertOpenAIError(self.post("Bearer sekrit-on"), 401, "invalid_api_key", "prefix of a key")
        self.assertOpenAIError(self.post("Bearer sekrit-one2"), 401, "invalid_api_key", "key plus a character")

    def test_empty_bearer(self):
        self.assertOpenAIError(self.post("Bearer "), 401, "invalid_api_key", "empty bearer")

    def test_basic_scheme(self):
        self.assertOpenAIError(self.post("Basic c2Vrcml0LW9uZTo="), 401, "invalid_api_key", "Basic auth")

    def test_models_needs_key(self):
        self.assertOpenAIError(self.srv.request("GET", "/v1/models"), 401, "invalid_api_key", "GET /v1/models")

    def test_right_keys(self):
        for key in self.KEYS:
            status, _, body = self.post("Bearer " + key)
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body)["object"], "chat.completion")

    def test_openai_client(self):
        import openai
        url = "http://127.0.0.1:%d/v1" % self.srv.port
        good = openai.OpenAI(base_url=url, api_key=self.KEYS[1], max_retries=0)
        self.assertIn(MODEL, [m.id for m in good.models.list().data])
        bad = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError) as cm:
            bad.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        self.assertEqual(cm.exception.code, "invalid_api_key")


class TestBackpressure(unittest.TestCase, ErrorChecks):
    """One slot, one queue place: the rest of a burst is turned away with 429 and Retry-After."""
    srv = None

    @classmethod
    def setUpClass(cls):
        cls.srv = Server("-m", MODEL, "--slots", "1", "--queue", "1", name="backpressure").start()

    @classmethod
    def tearDownClass(cls):
        if cls.srv is None:
            return
        try:
            wait_idle(cls.srv, timeout=60)
            status, _, body = cls.srv.post_json(CHAT, base(max_tokens=4))
            if status != 200:
                raise AssertionError("after the burst, a normal request answered %d: %r" % (status, body))
        finally:
            stop_server(cls.srv)

    def burst(self, n, stream):
        barrier = threading.Barrier(n)
        body = {"model": MODEL, "prompt": COUNTING, "max_tokens": 120, "temperature": 0, "stream": stream}

        def one(_):
            conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=180)
            try:
                barrier.wait(30)
                conn.request("POST", COMPL, body=json.dumps(body), headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            finally:
                conn.close()
        with ThreadPoolExecutor(n) as ex:
            return list(ex.map(one, range(n)))

    def check_burst(self, results, stream):
        statuses = sorted(r[0] for r in results)
        self.assertTrue(set(statuses) <= {200, 429}, statuses)
        self.assertEqual(statuses.count(200), 2, "one running + one queued succeed: %r" % statuses)
        for res in results:
            if res[0] == 429:
                self.assertOpenAIError(res, 429, "rate_limit_exceeded", "burst")
                ra = res[1].get("retry-after")
                self.assertIsNotNone(ra, "429 without Retry-After")
                self.assertTrue(ra.strip().isdigit() and int(ra) >= 0, "Retry-After %r" % ra)
            elif stream:
                self.assertTrue(res[2].endswith(b"data: [DONE]\n\n"), res[2][-100:])
            else:
                self.assertEqual(json.loads(res[2])["object"], "text_completion")

    def test_429_streaming_burst(self):
        wait_idle(self.srv)
        self.check_burst(self.burst(6, True), True)

    def test_429_non_streaming_burst(self):
        wait_idle(self.srv)
        self.check_burst(self.burst(5, False), False)


if __name__ == "__main__":
    unittest.main()
