"""`lumen serve --data-dir`: /v1/files and /v1/batches through the official openai client.

A batch runs in the server's scheduler below live requests, gives the same
greedy answers as `lumen batch`, can be cancelled, and resumes when the server
is stopped and started again with the same data folder.
"""
import json
import os
import sqlite3
import subprocess
import tempfile
import time
import unittest

from serve_harness import BIN, ROOT, Server


def rows(n, prefix="q", max_tokens=6):
    return [{"custom_id": "%s-%03d" % (prefix, i), "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user", "content": "Tell me about the number %d." % i}],
                      "max_tokens": max_tokens, "temperature": 0}} for i in range(n)]


def jsonl(rs):
    return ("\n".join(json.dumps(r) for r in rs) + "\n").encode()


def client(srv):
    return srv.openai()


def wait_for(c, batch_id, statuses, timeout=240):
    deadline = time.monotonic() + timeout
    while True:
        b = c.batches.retrieve(batch_id)
        if b.status in statuses or time.monotonic() > deadline:
            return b
        time.sleep(0.2)


class TestBatchesApi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = tempfile.mkdtemp(prefix="lumen-data-")
        cls.srv = Server("--slots", "8", "--data-dir", cls.data, name="batches").start()
        cls.c = client(cls.srv)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def test_a_batch_gives_what_lumen_batch_gives(self):
        rs = rows(12)
        f = self.c.files.create(file=("in.jsonl", jsonl(rs)), purpose="batch")
        self.assertEqual(f.purpose, "batch")
        self.assertEqual(self.c.files.retrieve(f.id).bytes, len(jsonl(rs)))
        b = self.c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        self.assertEqual(b.status, "in_progress")
        self.assertEqual(b.request_counts.total, 12)
        # a live request is answered while the batch runs
        live = self.c.chat.completions.create(model="smollm2", max_tokens=4, temperature=0,
                                              messages=[{"role": "user", "content": "Hi"}])
        self.assertTrue(live.choices[0].message.content is not None)
        b = wait_for(self.c, b.id, {"completed", "failed"})
        self.assertEqual(b.status, "completed", b)
        self.assertEqual(b.request_counts.completed, 12)
        out = [json.loads(line) for line in self.c.files.content(b.output_file_id).content.decode().splitlines()]
        d = tempfile.mkdtemp(prefix="lumen-batch-ref-")
        with open(os.path.join(d, "in.jsonl"), "wb") as fh:
            fh.write(jsonl(rs))
        subprocess.run([BIN, "batch", os.path.join(d, "in.jsonl"), "-o", os.path.join(d, "out.jsonl"),
                        "--progress", "none"], cwd=ROOT, check=True, capture_output=True, timeout=300)
        with open(os.path.join(d, "out.jsonl")) as fh:
            ref = {e["custom_id"]: e for e in map(json.loads, fh)}
        self.assertEqual(sorted(e["custom_id"] for e in out), sorted(ref))
        for e in out:
            self.assertEqual(e["response"]["body"]["choices"], ref[e["custom_id"]]["response"]["body"]["choices"])
        self.assertIn(b.id, [x.id for x in self.c.batches.list().data])
        self.assertIn(f.id, [x.id for x in self.c.files.list().data])

    def test_bad_batches_are_refused(self):
        f = self.c.files.create(file=("in.jsonl", jsonl(rows(1))), purpose="batch")
        st, _, body = self.srv.post_json("/v1/batches", {"input_file_id": f.id, "endpoint": "/v1/embeddings",
                                                         "completion_window": "24h"})
        self.assertEqual(st, 400, body)
        st, _, body = self.srv.post_json("/v1/batches", {"input_file_id": "file-nope", "endpoint": "/v1/completions",
                                                         "completion_window": "24h"})
        self.assertEqual(st, 404, body)
        empty = self.c.files.create(file=("empty.jsonl", b""), purpose="batch")
        st, _, body = self.srv.post_json("/v1/batches", {"input_file_id": empty.id, "endpoint": "/v1/completions",
                                                         "completion_window": "24h"})
        self.assertEqual(st, 400, body)
        st, _, body = self.srv.request("POST", "/v1/files", b"not multipart", {"Content-Type": "text/plain"})
        self.assertEqual(st, 400, body)
        st, _, _ = self.srv.request("GET", "/v1/batches/batch_nope")
        self.assertEqual(st, 404)

    def test_a_cancelled_batch_keeps_what_finished(self):
        f = self.c.files.create(file=("in.jsonl", jsonl(rows(60, "c", 24))), purpose="batch")
        b = self.c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        time.sleep(0.5)
        b = self.c.batches.cancel(b.id)
        self.assertIn(b.status, ("cancelling", "completed"))
        b = wait_for(self.c, b.id, {"cancelled", "completed"})
        self.assertIn(b.status, ("cancelled", "completed"))
        out = self.c.files.content(b.output_file_id).content.decode().splitlines()
        self.assertEqual(len(out), b.request_counts.completed + b.request_counts.failed)
        self.assertLess(len(out), 60 + 1)


class TestBatchResumesAfterRestart(unittest.TestCase):
    def test_stopped_server_resumes_its_batch(self):
        self.resume(kill=False)

    def test_killed_server_resumes_its_batch(self):
        self.resume(kill=True)

    def resume(self, kill):
        data = tempfile.mkdtemp(prefix="lumen-data-")
        srv = Server("--slots", "8", "--data-dir", data, name="resume").start()
        c = client(srv)
        f = c.files.create(file=("in.jsonl", jsonl(rows(40, "r", 16))), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        time.sleep(1.0)
        if kill:
            srv.kill()  # SIGKILL at some point of the batch
        else:
            self.assertEqual(srv.stop(), 0)  # SIGTERM: the batch stays in progress
        db = sqlite3.connect(os.path.join(data, "store.db"))
        status = json.loads(db.execute("SELECT object FROM batches WHERE id = ?", (b.id,)).fetchone()[0])["status"]
        db.close()
        self.assertEqual(status, "in_progress", "the batch finished before the stop; nothing was resumed")
        journal = sqlite3.connect(os.path.join(data, "batches", b.id + ".jsonl.journal"))
        done_before = journal.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        journal.close()
        srv2 = Server("--slots", "8", "--data-dir", data, name="resume2").start()
        try:
            c2 = client(srv2)
            b = wait_for(c2, b.id, {"completed", "failed"})
            self.assertEqual(b.status, "completed", b)
            ids = [json.loads(line)["custom_id"] for line in c2.files.content(b.output_file_id).content.decode().splitlines()]
            self.assertEqual(sorted(ids), ["r-%03d" % i for i in range(40)])
            with open(srv2.log_path) as fh:
                self.assertIn("resumed (%d of 40 requests done)" % done_before, fh.read())
        finally:
            self.assertEqual(srv2.stop(), 0)

    def test_without_a_data_dir_the_routes_are_absent(self):
        srv = Server("--slots", "2", name="nodata").start()
        try:
            st, _, body = srv.request("GET", "/v1/files")
            self.assertEqual(st, 404)
            self.assertIn(b"--data-dir", body)
        finally:
            srv.stop()


if __name__ == "__main__":
    unittest.main()
