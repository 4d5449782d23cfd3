"""Start and stop a real `lumen serve` for the server tests, and talk raw HTTP to it.

Each test module starts its own server on a port the kernel picks
(`--port 0 --port-file F`), waits for GET /health to answer 200, and stops it
with SIGTERM at the end, expecting exit status 0 within 30 s.

Environment: LUMEN_BIN (the built binary, default build/lumen), LUMEN_ROOT (the
repository, default two levels above this file). ctest sets both.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

ROOT = os.environ.get("LUMEN_ROOT") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("LUMEN_BIN") or os.path.join(ROOT, "build", "lumen")

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


class ServerError(RuntimeError):
    pass


class Server:
    """One `lumen serve` subprocess. `args` are extra command-line flags;
    `config` (a string of YAML) is written to a file passed as --config."""

    def __init__(self, *args, config=None, api_key=None, name="serve", port=0, bin=None, env=None):
        self.args = list(args)
        self.env = dict(os.environ, **env) if env else None  # extra environment variables
        self.listen_port = port  # 0: the kernel picks one
        self.bin = bin or BIN
        self.config = config
        self.api_key = api_key  # sent with the readiness probe if the server wants one
        self.name = name
        self.proc = None
        self.port = None
        self.dir = tempfile.mkdtemp(prefix="lumen-%s-" % name)
        self.log_path = os.path.join(self.dir, "server.log")

    # -- life cycle ---------------------------------------------------------
    def start(self):
        port_file = os.path.join(self.dir, "port")
        cmd = [self.bin, "serve", "--port", str(self.listen_port), "--port-file", port_file]
        if self.config is not None:
            cfg = os.path.join(self.dir, "server.yaml")
            with open(cfg, "w") as f:
                f.write(self.config)
            cmd += ["--config", cfg]
        cmd += self.args
        self.cmd = cmd
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.port is None:
            self._check_alive("while starting")
            try:
                with open(port_file) as f:
                    text = f.read().strip()
                if text:
                    self.port = int(text)
            except (FileNotFoundError, ValueError):
                pass
            if self.port is None:
                if time.monotonic() > deadline:
                    self.kill()
                    raise ServerError("no port file after %d s: %s\n%s" % (
                        START_TIMEOUT_S, " ".join(cmd), self.log_tail()))
                time.sleep(0.05)
        headers = {"Authorization": "Bearer " + self.api_key} if self.api_key else {}
        while True:
            self._check_alive("before /health answered")
            try:
                status, _, _ = self.request("GET", "/health", headers=headers, timeout=5)
                if status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError("/health not 200 after %d s\n%s" % (START_TIMEOUT_S, self.log_tail()))
            time.sleep(0.1)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _check_alive(self, when):
        if not self.alive():
            raise ServerError("lumen serve exited with status %s %s: %s\n%s" % (
                self.proc.returncode, when, " ".join(self.cmd), self.log_tail()))

    def stop(self):
        """SIGTERM, then wait; returns the exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                self._log.close()
                return None
        self._log.close()
        return self.proc.returncode

    def remove(self):
        """Delete the port file, config and log (keep them when something went wrong)."""
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "---- server log (last %d lines) ----\n%s" % (n, "\n".join(lines[-n:]))

    # -- talking to it -------------------------------------------------------
    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.port

    def openai(self, api_key="x", timeout=120):
        """The official openai client against this server (no retries: a spec sees every answer)."""
        from openai import OpenAI
        return OpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=120):
        """One request on a fresh connection: (status, headers dict lower-cased, body bytes).
        `body` may be bytes, str, or any JSON-serialisable object."""
        hdrs = {}
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            hdrs["Content-Type"] = "application/json"
        if isinstance(body, str):
            body = body.encode("utf-8")
        hdrs.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def post_json(self, path, obj, headers=None, timeout=120):
        return self.request("POST", path, body=obj, headers=headers, timeout=timeout)

    def connect(self, timeout=30):
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def metrics(self):
        status, headers, body = self.request("GET", "/metrics")
        if status != 200:
            raise ServerError("/metrics answered %d: %r" % (status, body[:200]))
        return parse_prometheus(body.decode("utf-8")), headers


def parse_prometheus(text):
    """Prometheus text exposition -> {name: [(labels dict, value float)]}.
    Raises ValueError on a line that is neither a comment nor a sample."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        labels = {}
        if "{" in line:
            name, rest = line.split("{", 1)
            body, value = rest.rsplit("}", 1)
            for part in _split_labels(body):
                k, v = part.split("=", 1)
                v = v.strip()
                if not (v.startswith('"') and v.endswith('"')):
                    raise ValueError("label value not quoted: %r" % line)
                labels[k.strip()] = v[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        else:
            name, value = line.split(None, 1)
        fields = value.split()
        if not fields or len(fields) > 2:
            raise ValueError("bad sample line: %r" % line)
        out.setdefault(name.strip(), []).append((labels, float(fields[0])))
    return out


def _split_labels(body):
    parts, cur, quoted, esc = [], "", False, False
    for ch in body:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            cur += ch
            esc = True
        elif ch == '"':
            cur += ch
            quoted = not quoted
        elif ch == "," and not quoted:
            if cur.strip():
                parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def metric_sum(metrics, name, **match):
    """Sum of the samples of `name` whose labels contain `match`."""
    total = 0.0
    for labels, value in metrics.get(name, []):
        if all(labels.get(k) == v for k, v in match.items()):
            total += value
    return total


def sse_events(fp):
    """Yield the `data:` payloads (str) of a Server-Sent Events stream read from a
    binary file object, one per event, until EOF."""
    data = []
    while True:
        line = fp.readline()
        if not line:
            if data:
                yield "\n".join(data)
            return
        line = line.decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" ") if line.startswith("data: ") else line[5:])
        # comments (":...") and other fields are ignored, as a client would


def run_lumen(*args, timeout=120, env=None):
    """Run the lumen CLI; return stdout as text (raises on a non-zero exit).
    env: extra environment variables."""
    res = subprocess.run([BIN, *args], cwd=ROOT, stdin=subprocess.DEVNULL, env=dict(os.environ, **env) if env else None,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if res.returncode != 0:
        raise ServerError("lumen %s exited %d: %s" % (" ".join(args), res.returncode,
                                                      res.stderr.decode("utf-8", "replace")))
    return res.stdout.decode("utf-8")


def model_info(model, env=None):
    """Part of the model's info() on this CPU (spec/serve/model_info.lua): panels, tiled, interleaved."""
    return json.loads(run_lumen("run", os.path.join(ROOT, "spec", "serve", "model_info.lua"), model, env=env))


def greedy_generate(prompt, n, model="smollm2", env=None):
    """What `lumen generate --temp 0` continues `prompt` with (prompt and final newline removed)."""
    out = run_lumen("generate", "-m", model, "-p", prompt, "-n", str(n), "--temp", "0", "--no-stats", env=env)
    if not out.startswith(prompt) or not out.endswith("\n"):
        raise ServerError("unexpected `lumen generate` output for %r: %r" % (prompt, out))
    return out[len(prompt):-1]


def greedy_chat(message, n, model="smollm2", system=None):
    """What `lumen chat --temp 0` replies to `message` (final newline removed)."""
    args = ["chat", "-m", model, "-n", str(n), "--temp", "0", "--no-stats"]
    if system is not None:
        args += ["-s", system]
    out = run_lumen(*args, message)
    if not out.endswith("\n"):
        raise ServerError("unexpected `lumen chat` output for %r: %r" % (message, out))
    return out[:-1]
