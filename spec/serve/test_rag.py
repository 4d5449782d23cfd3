"""`lumen rag` end to end on real files: index a folder, search it, ask it; a
store killed with SIGKILL in the middle of indexing is consistent and the next
run finishes the job; bad files are reported and skipped.

The corpus is Debian's /usr/share/common-licenses (17 license texts, 264 kB,
on every Debian machine) plus a few files made here for the readers (HTML, a
PDF written by hand below, a binary file, a damaged PDF).

Run: spec/.venv/bin/python -m unittest -v test_rag   (in spec/serve; ctest -L serve)
"""
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import unittest

from serve_harness import BIN, ROOT

LICENSES = "/usr/share/common-licenses"


def lumen(*args, timeout=600):
    return subprocess.run([BIN] + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


def tiny_pdf(text):
    """A one-page PDF showing `text` (Helvetica), with a correct xref table."""
    stream = ("BT /F1 12 Tf 72 720 Td (%s) Tj ET" % text.replace("(", "\\(").replace(")", "\\)")).encode()
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return out


def make_corpus(d):
    shutil.copytree(LICENSES, os.path.join(d, "licenses"), symlinks=False)
    extra = os.path.join(d, "extra")
    os.makedirs(extra)
    with open(os.path.join(extra, "page.html"), "w") as f:
        f.write("<html><head><title>Kestrel notes</title><script>var hidden = 'scriptword';</script></head>"
                "<body><p>The kestrel hovers over fields hunting voles.</p><p>It nests in old crow nests.</p></body></html>")
    with open(os.path.join(extra, "report.pdf"), "wb") as f:
        f.write(tiny_pdf("The quarterly zanzibar widget output rose by seven percent."))
    with open(os.path.join(extra, "blob.txt"), "wb") as f:
        f.write(b"binary\x00\x01\x02 data")
    with open(os.path.join(extra, "broken.pdf"), "wb") as f:
        f.write(b"%PDF-1.4\nthis is not a PDF body")


def check_consistent(test, db):
    c = sqlite3.connect(db)
    try:
        test.assertEqual(c.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        test.assertEqual(c.execute("SELECT count(*) FROM chunks WHERE doc_id NOT IN (SELECT id FROM documents)").fetchone()[0], 0,
                         "orphan chunks")
        c.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")  # raises when FTS and chunks differ
        paths = [r[0] for r in c.execute("SELECT path FROM documents")]
        test.assertEqual(len(paths), len(set(paths)))
        return {p: n for p, n in c.execute(
            "SELECT d.path, count(c.id) FROM documents d LEFT JOIN chunks c ON c.doc_id = d.id GROUP BY d.id")}
    finally:
        c.close()


class TestRag(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="lumen-rag-")
        cls.corpus = os.path.join(cls.dir, "docs")
        make_corpus(cls.corpus)
        cls.db = os.path.join(cls.dir, "index.db")
        cls.first = lumen("rag", "index", cls.corpus, "--db", cls.db)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_index_reports_and_skips_bad_files(self):
        r = self.first
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("blob.txt: not a text file", r.stderr)
        self.assertIn("broken.pdf: not a readable PDF", r.stderr)
        docs = check_consistent(self, self.db)
        self.assertEqual(len(docs), len(os.listdir(LICENSES)) + 2)  # licenses + html + pdf
        self.assertTrue(all(n > 0 for n in docs.values()), docs)

    def test_rerun_changes_only_what_changed(self):
        d = tempfile.mkdtemp(prefix="lumen-rag2-", dir=self.dir)
        shutil.copytree(os.path.join(self.corpus, "extra"), os.path.join(d, "x"))
        db = os.path.join(d, "i.db")
        r = lumen("rag", "index", os.path.join(d, "x"), "--db", db)
        self.assertIn("indexed 2 of 4", r.stderr)
        with open(os.path.join(d, "x", "page.html"), "a") as f:
            f.write("<p>Kestrels can see ultraviolet light.</p>")
        os.remove(os.path.join(d, "x", "report.pdf"))
        r = lumen("rag", "index", os.path.join(d, "x"), "--db", db)
        self.assertIn("indexed 1 of 3 files (0 unchanged, 1 removed, 2 skipped)", r.stderr)
        docs = check_consistent(self, db)
        self.assertEqual(sorted(os.path.basename(p) for p in docs), ["page.html"])

    def test_search_finds_the_document(self):
        cases = [("the kestrel hunts voles", "page.html"), ("zanzibar widget output", "report.pdf"),
                 ("Incompatible With Secondary Licenses notice", "MPL-2.0")]
        for mode in ("hybrid", "vector", "bm25"):
            for query, want in cases:
                r = lumen("rag", "search", query, "--db", self.db, "-k", "3", "--json", "--mode", mode)
                self.assertEqual(r.returncode, 0, r.stderr)
                hits = [json.loads(l) for l in r.stdout.splitlines()]
                self.assertEqual(len(hits), 3)
                self.assertIn(want, hits[0]["path"], (mode, query, [h["path"] for h in hits]))
        r = lumen("rag", "search", "scriptword", "--db", self.db, "--mode", "bm25", "--json")
        self.assertEqual(r.stdout.strip(), "", "text of a <script> was indexed")

    def test_ask_answers_with_sources(self):
        r = lumen("rag", "ask", "What do kestrels hunt?", "--db", self.db, "-k", "2", "-n", "40", "--temp", "0")
        self.assertEqual(r.returncode, 0, r.stderr)
        answer, _, sources = r.stdout.partition("\n\nSources:\n")
        self.assertIn("vole", answer.lower())
        self.assertIn("page.html", sources.splitlines()[0])

    def test_bad_input(self):
        r = lumen("rag", "search", "x", "--db", os.path.join(self.dir, "missing.db"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("no index at", r.stderr)
        r = lumen("rag", "index", os.path.join(self.dir, "nope"), "--db", os.path.join(self.dir, "n.db"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("nope", r.stderr)
        notdb = os.path.join(self.dir, "not.db")
        with open(notdb, "w") as f:
            f.write("hello, not sqlite" * 100)
        r = lumen("rag", "search", "x", "--db", notdb)
        self.assertEqual(r.returncode, 2)
        self.assertIn("not.db", r.stderr)
        r = lumen("rag", "ask", "--db", self.db)
        self.assertEqual(r.returncode, 2)

    def test_killed_mid_index_is_consistent_and_resumes(self):
        rng = random.Random(7)
        d = tempfile.mkdtemp(prefix="lumen-rag3-", dir=self.dir)
        db = os.path.join(d, "i.db")
        complete = check_consistent(self, self.db)
        for attempt in range(3):
            p = subprocess.Popen([BIN, "rag", "index", self.corpus, "--db", db], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3, 2.0))
            p.send_signal(signal.SIGKILL)
            p.wait()
            if os.path.exists(db):
                partial = check_consistent(self, db)
                for path, n in partial.items():  # each file whole or absent
                    self.assertEqual(n, complete[path.replace(self.corpus, self.corpus)], path)
        r = lumen("rag", "index", self.corpus, "--db", db)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(check_consistent(self, db), complete)


if __name__ == "__main__":
    unittest.main()
