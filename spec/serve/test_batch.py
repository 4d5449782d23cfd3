"""`lumen batch`: crash safety (SIGKILL at random points, then resume) and bad input.

Environment as serve_harness: LUMEN_BIN (default build/lumen), LUMEN_ROOT.
"""
import json
import os
import random
import resource
import signal
import sqlite3
import subprocess
import tempfile
import time
import unittest

from serve_harness import BIN, ROOT

N_REQUESTS = 120
MAX_TOKENS = 6
RUN_TIMEOUT_S = 600

SUBJECTS = ["the ocean", "a lighthouse", "bread", "the moon", "bicycles", "volcanoes", "honey bees",
            "jazz", "penguins", "rain", "a clock", "maps"]


def requests(n=N_REQUESTS):
    out = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)]
        if i % 5 == 4:
            out.append({"custom_id": "req-%03d" % i, "method": "POST", "url": "/v1/completions",
                        "body": {"prompt": "A fact about %s (%d):" % (subject, i), "max_tokens": 2 + i % MAX_TOKENS,
                                 "temperature": 0}})
        else:
            out.append({"custom_id": "req-%03d" % i, "method": "POST", "url": "/v1/chat/completions",
                        "body": {"messages": [{"role": "user", "content": "Say something about %s, #%d." % (subject, i)}],
                                 "max_tokens": 2 + i % MAX_TOKENS, "temperature": 0}})
    return out


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def run_batch(inp, out, *extra, check=True):
    p = subprocess.run([BIN, "batch", inp, "-o", out, "--progress", "json", *extra], cwd=ROOT,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=RUN_TIMEOUT_S)
    if check and p.returncode != 0:
        raise AssertionError("lumen batch exited %d:\n%s" % (p.returncode, p.stderr.decode(errors="replace")[-3000:]))
    return p


def read_output(path):
    """Every line parses as JSON (no torn line); returns the entries."""
    with open(path, "rb") as f:
        data = f.read()
    assert data == b"" or data.endswith(b"\n"), "the output ends in a torn line"
    return [json.loads(line) for line in data.decode().splitlines()]


def journal_rows(path):
    """custom_id -> output line committed in the journal (read while it may be written)."""
    if not os.path.exists(path):
        return {}
    for _ in range(50):
        try:
            db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=5)
            try:
                return {cid: out for cid, out in db.execute("SELECT custom_id, output FROM items WHERE custom_id IS NOT NULL")}
            finally:
                db.close()
        except sqlite3.OperationalError:
            time.sleep(0.05)  # the tables do not exist yet
    return {}


class TestCrashSafety(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="lumen-batch-")
        cls.inp = os.path.join(cls.dir, "in.jsonl")
        cls.rows = requests()
        write_jsonl(cls.inp, cls.rows)
        cls.ref_out = os.path.join(cls.dir, "ref.jsonl")
        t = time.monotonic()
        run_batch(cls.inp, cls.ref_out)
        cls.ref_s = time.monotonic() - t
        cls.ref = {e["custom_id"]: e for e in read_output(cls.ref_out)}

    def test_reference_run_answers_every_request(self):
        self.assertEqual(sorted(self.ref), sorted(r["custom_id"] for r in self.rows))
        for e in self.ref.values():
            self.assertIsNone(e["error"])
            self.assertEqual(e["response"]["status_code"], 200)
            self.assertTrue(e["id"].startswith("batch_req_"))

    def test_killed_three_times_resumes_without_loss_duplicates_or_recomputation(self):
        rng = random.Random(int(os.environ.get("LUMEN_SPEC_SEED", time.time())))
        out = os.path.join(self.dir, "crash.jsonl")
        journal = out + ".journal"
        committed = {}  # custom_id -> its output line as committed before a kill
        kills = []
        for k in range(3):
            # a random point of the job: a fraction of the requests committed
            # (the k-th kill lands after more of them), then a random delay
            target = len(committed) + rng.randint(1, max(1, (N_REQUESTS - len(committed)) // 2))
            delay = rng.uniform(0, 0.3)
            proc = subprocess.Popen([BIN, "batch", self.inp, "-o", out, "--progress", "none"], cwd=ROOT,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while proc.poll() is None and len(journal_rows(journal)) < target and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(delay)
            finished_first = proc.poll() is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
            now = journal_rows(journal)
            # what was committed before stays committed, byte for byte
            for cid, line in committed.items():
                self.assertEqual(now.get(cid), line, "%s changed after kill %d" % (cid, k + 1))
            committed = now
            kills.append((target, len(now), finished_first))
            # the output appears only whole, once every request is committed (the job may
            # finish between the last look and the kill: then it is all there)
            self.assertFalse(os.path.exists(out) and len(now) < N_REQUESTS,
                             "the output appeared before the job finished (%d of %d committed)" % (len(now), N_REQUESTS))
        p = run_batch(self.inp, out)
        summary = json.loads(p.stderr.decode().strip().splitlines()[-1])["summary"]
        self.assertEqual(summary["resumed"], len(committed), "the resumed run recomputed committed requests")
        entries = read_output(out)
        ids = [e["custom_id"] for e in entries]
        self.assertEqual(len(ids), len(set(ids)), "a custom_id appears twice")
        self.assertEqual(sorted(ids), sorted(self.ref))
        by_id = {e["custom_id"]: e for e in entries}
        for cid, e in by_id.items():
            # the generated text, finish reason and index of each choice; ids,
            # request ids and timestamps differ between runs
            self.assertEqual(e["response"]["body"]["choices"], self.ref[cid]["response"]["body"]["choices"], cid)
            self.assertEqual(e["response"]["body"]["usage"]["completion_tokens"],
                             self.ref[cid]["response"]["body"]["usage"]["completion_tokens"], cid)
        with open(out) as f:
            lines = {json.loads(line)["custom_id"]: line.rstrip("\n") for line in f}
        for cid, line in committed.items():
            # completed before a kill: the very line committed then (not recomputed)
            self.assertEqual(lines[cid], line, cid)
        print("\nkills (target committed, committed at kill, had finished): %s; reference run %.1f s"
              % (kills, self.ref_s))

    def test_greedy_completions_equal_lumen_generate(self):
        for r in [x for x in self.rows if x["url"] == "/v1/completions"][:2]:
            b = r["body"]
            p = subprocess.run([BIN, "generate", "-p", b["prompt"], "-n", str(b["max_tokens"]), "--temp", "0",
                                "--no-stats"], cwd=ROOT, capture_output=True, timeout=120, check=True)
            text = self.ref[r["custom_id"]]["response"]["body"]["choices"][0]["text"]
            self.assertEqual(p.stdout.decode(), b["prompt"] + text + "\n", r["custom_id"])

    def test_changed_input_is_refused_unless_restart(self):
        d = tempfile.mkdtemp(prefix="lumen-batch-")
        inp, out = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl")
        write_jsonl(inp, self.rows[:3])
        run_batch(inp, out)
        write_jsonl(inp, self.rows[:4])
        p = run_batch(inp, out, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"--restart", p.stderr)
        self.assertEqual(len(read_output(out)), 3)  # the old output is left alone
        run_batch(inp, out, "--restart")
        self.assertEqual(len(read_output(out)), 4)

    def test_rerunning_a_finished_job_recomputes_nothing(self):
        d = tempfile.mkdtemp(prefix="lumen-batch-")
        inp, out = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl")
        write_jsonl(inp, self.rows[:3])
        run_batch(inp, out)
        with open(out) as f:
            first = f.read()
        p = run_batch(inp, out)
        summary = json.loads(p.stderr.decode().strip().splitlines()[-1])["summary"]
        self.assertEqual(summary["tokens_this_run"], 0)
        with open(out) as f:
            self.assertEqual(f.read(), first)


class TestStructuredOutput(unittest.TestCase):
    """response_format and tools hold in a batch as in the server: extraction jobs
    get JSON that parses and validates every time, tool calls come back as tool_calls."""

    def test_json_schema_tools_and_bad_schemas(self):
        d = tempfile.mkdtemp(prefix="lumen-batch-structured-")
        schema = {"type": "object", "additionalProperties": False, "required": ["name", "year"],
                  "properties": {"name": {"type": "string", "maxLength": 40},
                                 "year": {"type": "integer", "minimum": 1000, "maximum": 2100}}}
        weather = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                   "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                                  "properties": {"city": {"type": "string", "maxLength": 40}}}}}
        rows = []
        for i, subject in enumerate(SUBJECTS[:6]):
            rows.append({"custom_id": "json-%d" % i, "method": "POST", "url": "/v1/chat/completions",
                         "body": {"messages": [{"role": "user", "content": "A famous person linked to %s, with a year." % subject}],
                                  "max_tokens": 120, "temperature": 1.0, "seed": i,
                                  "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}})
        rows.append({"custom_id": "tool", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"messages": [{"role": "user", "content": "What's the weather in Oslo?"}], "max_tokens": 200,
                              "temperature": 0, "tools": [weather], "tool_choice": "required", "parallel_tool_calls": False}})
        rows.append({"custom_id": "bad-schema", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "hostname"}}}}})
        inp, out = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl")
        write_jsonl(inp, rows)
        run_batch(inp, out)
        got = {e["custom_id"]: e for e in read_output(out)}
        self.assertEqual(sorted(got), sorted(r["custom_id"] for r in rows))
        for i in range(6):
            e = got["json-%d" % i]
            self.assertIsNone(e["error"])
            choice = e["response"]["body"]["choices"][0]
            self.assertEqual(choice["finish_reason"], "stop", choice)  # 120 tokens hold the bounded object
            v = json.loads(choice["message"]["content"])
            self.assertEqual(set(v), {"name", "year"})
            self.assertIsInstance(v["name"], str)
            self.assertTrue(1000 <= v["year"] <= 2100)
        choice = got["tool"]["response"]["body"]["choices"][0]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertEqual(len(choice["message"]["tool_calls"]), 1)
        call = choice["message"]["tool_calls"][0]
        self.assertEqual(call["function"]["name"], "get_weather")
        self.assertIsInstance(json.loads(call["function"]["arguments"])["city"], str)
        bad = got["bad-schema"]["response"]
        self.assertEqual(bad["status_code"], 400)
        self.assertIn("format", json.dumps(bad["body"]))


class TestBadInput(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="lumen-batch-bad-")
        self.inp = os.path.join(self.dir, "in.jsonl")
        self.out = os.path.join(self.dir, "out.jsonl")

    def good(self, cid, i=0):
        return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": "Hi %d" % i}], "max_tokens": 3, "temperature": 0}}

    def test_each_bad_line_gets_its_own_error_entry(self):
        rows = [
            self.good("ok-1", 1),
            "this is not json",
            "[1, 2, 3]",
            '{"custom_id": "trunc", "method": "POST", ',
            {"method": "POST", "url": "/v1/chat/completions", "body": {}},                  # no custom_id
            {"custom_id": 7, "method": "POST", "url": "/v1/chat/completions", "body": {}},  # not a string
            self.good("ok-1", 2),                                                            # duplicate
            {"custom_id": "get", "method": "GET", "url": "/v1/chat/completions", "body": {}},
            {"custom_id": "nourl", "method": "POST", "url": "/v1/nothing", "body": {}},
            {"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
            {"custom_id": "empty-msgs", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}},
            {"custom_id": "bad-temp", "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}},
            {"custom_id": "body-array", "method": "POST", "url": "/v1/completions", "body": [1]},
            {"custom_id": "other-model", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "model": "gpt-9"}},
            {"custom_id": "stream", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "stream": True}},
            {"custom_id": "too-long", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "max_tokens": 10 ** 7}},
            "",
            self.good("ok-2", 3),
        ]
        write_jsonl(self.inp, rows)
        with open(self.inp, "ab") as f:
            f.write(b'\xff\xfe not utf-8\n')
            f.write(b'{"custom_id": "bytes", "method": "POST", "url": "/v1/completions", "body": {"prompt": "\xff"}}\n')
        p = run_batch(self.inp, self.out)
        entries = read_output(self.out)
        self.assertEqual(len(entries), len(rows) - 1 + 2)  # one per non-empty line
        by_line = {}
        for e in entries:
            if e["error"]:
                by_line[e["error"]["line"]] = e
        ids = [e["custom_id"] for e in entries if e["custom_id"] is not None]
        self.assertEqual(len(ids), len(set(ids)))

        def err(line):
            return by_line[line]["error"]["code"]
        self.assertEqual(err(2), "invalid_json")
        self.assertEqual(err(3), "invalid_json")
        self.assertEqual(err(4), "invalid_json")
        self.assertEqual(err(5), "missing_custom_id")
        self.assertEqual(err(6), "missing_custom_id")
        self.assertEqual(err(7), "duplicate_custom_id")
        self.assertIn("line 1", by_line[7]["error"]["message"])
        self.assertIsNone(by_line[7]["custom_id"])
        self.assertEqual(err(8), "invalid_method")
        self.assertEqual(err(9), "invalid_url")
        self.assertEqual(err(10), "unsupported_url")
        self.assertIn("embeddings", by_line[10]["error"]["message"])
        resp = {e["custom_id"]: e for e in entries if e["custom_id"]}
        for cid, status in [("empty-msgs", 400), ("bad-temp", 400), ("body-array", 400), ("other-model", 404),
                            ("stream", 400), ("too-long", 400)]:
            e = resp[cid]
            self.assertIsNone(e["error"], cid)
            self.assertEqual(e["response"]["status_code"], status, cid)
            self.assertIn("message", e["response"]["body"]["error"], cid)
        self.assertEqual(resp["ok-1"]["response"]["status_code"], 200)
        self.assertEqual(resp["ok-2"]["response"]["status_code"], 200)
        self.assertEqual(err(19), "invalid_json")  # not UTF-8
        self.assertEqual(err(20), "invalid_json")
        self.assertIn(b'"summary"', p.stderr)

    def test_a_1gb_line_becomes_an_error_without_being_read_whole(self):
        with open(self.inp, "wb") as f:
            f.write(json.dumps(self.good("before")).encode() + b"\n")
            f.write(b'{"custom_id": "huge", "method": "POST", "url": "/v1/completions", "body": {"prompt": "')
            f.seek(1 << 30)  # sparse: a gigabyte of zero bytes, never on disk
            f.write(b'"}}\n')
            f.write(json.dumps(self.good("after")).encode() + b"\n")
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        run_batch(self.inp, self.out)
        rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        entries = read_output(self.out)
        self.assertEqual(len(entries), 3)
        self.assertEqual(entries[1]["error"]["code"], "line_too_long")
        self.assertEqual(entries[0]["response"]["status_code"], 200)
        self.assertEqual(entries[2]["response"]["status_code"], 200)
        if rss_kb > before:  # the largest child so far is this one
            self.assertLess(rss_kb, 512 * 1024, "the runner held the long line in memory")

    def test_an_empty_file_is_refused(self):
        open(self.inp, "w").close()
        p = run_batch(self.inp, self.out, check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"no requests", p.stderr)
        self.assertFalse(os.path.exists(self.out))

    def test_a_missing_input_is_refused(self):
        p = run_batch(os.path.join(self.dir, "nope.jsonl"), self.out, check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"nope.jsonl", p.stderr)
        self.assertNotIn(b"traceback", p.stderr.lower())

    def test_an_unwritable_output_is_refused(self):
        write_jsonl(self.inp, [self.good("x")])
        for out in [os.path.join(self.dir, "no-such-dir", "out.jsonl"), self.dir]:
            p = run_batch(self.inp, out, check=False)
            self.assertEqual(p.returncode, 2, out)
            self.assertIn(b"lumen: error:", p.stderr)
            self.assertNotIn(b"traceback", p.stderr.lower())

    def test_bad_options_are_usage_errors(self):
        for args in [["batch"], ["batch", self.inp], ["batch", self.inp, "-o", self.inp],
                     ["batch", self.inp, "-o", self.out, "--slots", "0"]]:
            p = subprocess.run([BIN, *args], cwd=ROOT, capture_output=True, timeout=60)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn(b"lumen: error:", p.stderr)


PIPELINE = """
return {
  url = "/v1/completions",
  request = function(doc)
    if doc.name == "bad.txt" then error("this pipeline refuses bad.txt") end
    return { prompt = "Title: " .. doc.name .. "\\n" .. doc.text, max_tokens = 4, temperature = 0 }
  end,
}
"""


class TestDocumentPipeline(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="lumen-batch-docs-")
        self.docs = os.path.join(self.dir, "docs")
        os.mkdir(self.docs)
        os.mkdir(os.path.join(self.docs, "subfolder"))
        for name, text in [("a.txt", "The moon is bright."), ("b.md", "# Bread\nFlour and water."),
                           ("bad.txt", "x"), (".hidden", "not a document")]:
            with open(os.path.join(self.docs, name), "w") as f:
                f.write(text)
        self.script = os.path.join(self.dir, "pipe.lua")
        with open(self.script, "w") as f:
            f.write(PIPELINE)
        self.out = os.path.join(self.dir, "out.jsonl")

    def run_pipe(self, *extra, check=True):
        p = subprocess.run([BIN, "batch", self.docs, "--pipeline", self.script, "-o", self.out,
                            "--progress", "none", *extra], cwd=ROOT, capture_output=True, timeout=RUN_TIMEOUT_S)
        if check and p.returncode != 0:
            raise AssertionError(p.stderr.decode(errors="replace")[-3000:])
        return p

    def test_each_document_is_one_request_named_by_its_file(self):
        self.run_pipe()
        entries = read_output(self.out)
        self.assertEqual([e["custom_id"] for e in entries], ["a.txt", "b.md", "bad.txt"])
        self.assertEqual(entries[0]["response"]["status_code"], 200)
        self.assertEqual(entries[0]["response"]["body"]["object"], "text_completion")
        self.assertEqual(entries[2]["error"]["code"], "pipeline_error")
        self.assertIn("refuses bad.txt", entries[2]["error"]["message"])
        # resumable as a file job: a rerun recomputes nothing, a changed document is refused
        p = self.run_pipe()
        self.assertEqual(json.loads(p.stderr.decode().strip().splitlines()[-1])["summary"]["tokens_this_run"], 0)
        with open(os.path.join(self.docs, "a.txt"), "a") as f:
            f.write(" And round.")
        p = self.run_pipe(check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"--restart", p.stderr)
        self.run_pipe("--restart")

    def test_a_folder_without_a_pipeline_or_a_broken_pipeline_is_refused(self):
        p = subprocess.run([BIN, "batch", self.docs, "-o", self.out], cwd=ROOT, capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"--pipeline", p.stderr)
        with open(self.script, "w") as f:
            f.write("return 42")
        p = self.run_pipe(check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"request = function(doc)", p.stderr)


if __name__ == "__main__":
    unittest.main()
