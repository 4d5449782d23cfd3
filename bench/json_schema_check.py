#!/usr/bin/env python3
"""Validates the samples of bench/json_schema_run.lua with Python's jsonschema
(format checks on) and compares which schemas lumen's converter and
llama.cpp's (LlamaGrammar.from_json_schema, llama-cpp-python in bench/.venv)
refuse. Writes bench/out/json_schema_report.md.

usage: bench/.venv/bin/python bench/json_schema_check.py [samples.jsonl] [corpus.json]
(bench/.venv needs jsonschema: bench/.venv/bin/pip install jsonschema)
"""
import contextlib
import importlib.metadata
import io
import json
import os
import sys

import jsonschema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def llama_refuses(schema):
    """None when llama.cpp's converter and grammar parser take the schema, else the reason."""
    from llama_cpp.llama_grammar import LlamaGrammar
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as e:  # noqa: BLE001 - any refusal counts
        return (str(e) or type(e).__name__).splitlines()[0][:160]
    return None


def main():
    samples_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "bench", "out", "json_schema_lumen.jsonl")
    corpus_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "spec", "fixtures", "json_schemas.json")
    corpus = {e["name"]: e for e in json.load(open(corpus_path))}
    rows = [json.loads(line) for line in open(samples_path) if line.strip()]
    valid, total, failures, lumen_refused = 0, 0, [], {}
    per_schema = {}
    for r in rows:
        if "refused" in r:
            lumen_refused[r["name"]] = r["refused"]
            continue
        schema = corpus[r["name"]]["schema"]
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        total += 1
        try:
            value = json.loads(r["text"])
            cls(schema, format_checker=cls.FORMAT_CHECKER).validate(value)
            valid += 1
            per_schema.setdefault(r["name"], []).append(True)
        except (ValueError, jsonschema.ValidationError) as e:
            failures.append((r["name"], r.get("seed"), r.get("reason"), str(e).splitlines()[0][:200], r["text"][:200]))
            per_schema.setdefault(r["name"], []).append(False)
    llama_refused = {name: why for name, e in corpus.items() if (why := llama_refuses(e["schema"]))}
    out = ["# JSON Schema validity", "",
           f"{valid} of {total} samples valid ({100.0 * valid / max(total, 1):.1f}%), "
           f"{len(per_schema)} schemas x {total // max(len(per_schema), 1)} seeds, temperature 1.0, "
           "checked with jsonschema " + importlib.metadata.version("jsonschema") + " (format checks on).", ""]
    for f in failures:
        out.append("- invalid: %s seed %s (%s): %s -- %r" % f)
    out += ["", "## Refused schemas", "", "| schema | lumen | llama.cpp (llama-cpp-python LlamaGrammar.from_json_schema) |", "|---|---|---|"]
    for name in corpus:
        a, b = lumen_refused.get(name), llama_refused.get(name)
        if a or b:
            out.append(f"| {name} | {a or 'accepted'} | {b or 'accepted'} |")
    text = "\n".join(out) + "\n"
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "out", "json_schema_report.md"), "w") as f:
        f.write(text)
    print(text)
    return 0 if valid == total else 1


if __name__ == "__main__":
    sys.exit(main())
