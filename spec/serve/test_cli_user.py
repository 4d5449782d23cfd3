"""The command line as a new user meets it: one spec per rough edge found by
trying lumen with only the README and --help (issue: meet users where they are).

Run: spec/.venv/bin/python -m unittest -v test_cli_user   (in spec/serve; ctest -L serve)
"""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import json

from serve_harness import BIN, ROOT, Server

GEMMA_FILE = os.path.expanduser("~/.cache/lumen/models/gemma-3-270m-q4_k_m.gguf")


def lumen(*args, stdin=None, timeout=300, env=None):
    return subprocess.run([BIN] + list(args), input=stdin, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=dict(os.environ, **env) if env else None,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


class TestCli(unittest.TestCase):
    def test_every_subcommand_has_help(self):
        for cmd in ("chat", "generate", "bench", "quantize", "models", "pull", "run", "serve", "embed", "rag", "version"):
            r = lumen(cmd, "--help")
            self.assertEqual(r.returncode, 0, "%s --help: %s" % (cmd, r.stderr))
            self.assertIn("usage: lumen " + cmd, r.stdout)
        r = lumen("--help")
        self.assertIn("/reset", r.stdout)  # the REPL's commands are listed
        for script in ("scripts/setup.sh", "scripts/test.sh"):
            p = subprocess.run([os.path.join(ROOT, script), "--help"], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 0)
            self.assertIn("usage: " + script, p.stdout)

    def test_chat_without_template_is_refused(self):
        # the Gemma 3 file has no chat template: by path (no registry entry) it is refused, not given ChatML
        r = lumen("chat", "-m", GEMMA_FILE, "-n", "4", "Hi")
        self.assertEqual(r.returncode, 2)
        self.assertIn("no chat template", r.stderr)
        self.assertIn("lumen generate", r.stderr)
        # by alias it gets the template configs/models.yaml names: no foreign <|im_start|> turns
        r = lumen("chat", "-m", "gemma3", "-n", "12", "--temp", "0", "Hi")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("im_start", r.stdout)

    def test_repl_commands_and_full_context(self):
        r = lumen("chat", "-c", "160", "-n", "30", "--temp", "0",
                  stdin="/help\n/nonsense\nTell me about cats.\nTell me about dogs.\nTell me about birds.\nTell me about fish.\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("/reset", r.stderr)                       # /help answered
        self.assertIn("unknown command /nonsense", r.stderr)    # not sent to the model
        self.assertIn("dropped its", r.stderr)                  # the oldest turns went, with a notice
        self.assertNotIn("error", r.stderr)                     # and every turn was answered
        self.assertEqual(r.stdout.count("> "), 7)

    def test_errors_without_source_positions(self):
        r = lumen("generate", "-m", "nope", "-p", "x")
        self.assertEqual(r.returncode, 2)
        self.assertNotRegex(r.stderr, r"\.lua:\d+:")
        d = tempfile.mkdtemp()
        try:
            script = os.path.join(d, "s.lua")
            with open(script, "w") as f:
                f.write('require("lumen").model.load("nope")\n')
            r = lumen("run", script)
            self.assertEqual(r.returncode, 1)
            self.assertNotIn("stack traceback", r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 2, r.stderr)
            r = lumen("--debug", "run", script)
            self.assertIn("stack traceback", r.stderr)
        finally:
            shutil.rmtree(d)

    def test_models_states(self):
        d = tempfile.mkdtemp()
        try:
            # a model cache (searched first) where SmolLM2 is damaged
            shutil.copy(os.path.expanduser("~/.cache/lumen/models/SmolLM2-135M-Instruct.Q4_1.gguf"), d)
            with open(os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf"), "r+b") as f:
                f.seek(1000)
                f.write(b"\x00\x01\x02\x03")
            r = lumen("models", env={"LUMEN_MODELS": d, "HOME": d})
            self.assertEqual(r.returncode, 0, r.stderr)
            out = r.stdout
            self.assertRegex(out, r"smollm2 .*\n.*CORRUPT.*scripts/fetch_model.py smollm2")
            r = lumen("generate", "-p", "x", "-n", "2", env={"LUMEN_MODELS": d, "HOME": d})
            self.assertEqual(r.returncode, 2)
            self.assertIn("fetch it again", r.stderr)
        finally:
            shutil.rmtree(d)
        r = lumen("models")
        self.assertRegex(r.stdout, r"smollm2 .*\n.*: verified")

    def test_options_are_consistent(self):
        r = lumen("generate", "-p", "-", "-n", "4", "--temp", "0", "--no-stats", stdin="The capital of France is")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("The capital of France is"))
        r = lumen("generate", "-p", "x", "-n", "2", "-t", "0", "--no-stats")  # 0 = all cores, as in server.yaml
        self.assertEqual(r.returncode, 0, r.stderr)
        r = lumen("generate", "-p", "x", "-n", "0")
        self.assertEqual(r.returncode, 2)
        self.assertIn("at least 1", r.stderr)
        r = lumen("generate", "-p", "x", "-s", "be brief")
        self.assertEqual(r.returncode, 2)
        self.assertIn("-s is for chat", r.stderr)

    def test_kv_type(self):
        # the q8_0 KV cache from the command line and the server config; a bad value is one line, status 2
        r = lumen("generate", "-p", "The capital of France is", "-n", "4", "--temp", "0", "--no-stats", "--kv-type", "q8_0")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("The capital of France is"))
        r = lumen("generate", "-p", "x", "--kv-type", "q4_0")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--kv-type takes f16 or q8_0, got 'q4_0'", r.stderr)
        srv = Server(config="kv_type: q8_0\nslots: 2\nctx: 256\n", name="kv").start()
        try:
            status, _, body = srv.post_json("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4,
                                                                "temperature": 0})
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body)["usage"]["completion_tokens"], 4)
        finally:
            srv.stop()
            srv.remove()
        bad = Server(config="kv_type: q4\n", name="kvbad")
        with self.assertRaises(Exception) as e:
            bad.start()
        bad.remove()
        self.assertIn("'kv_type' must be f16 or q8_0", str(e.exception))

    def test_default_seed_differs_between_runs(self):
        outs = {lumen("generate", "-p", "Once upon a time", "-n", "16", "--temp", "1", "--no-stats").stdout
                for _ in range(4)}
        self.assertGreater(len(outs), 1)
        same = {lumen("generate", "-p", "Once upon a time", "-n", "16", "--temp", "1", "--seed", "7", "--no-stats").stdout
                for _ in range(2)}
        self.assertEqual(len(same), 1)


if __name__ == "__main__":
    unittest.main()
