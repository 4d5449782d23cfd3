"""Re-record the tokenizer records (tok/detok lines) of an agreement fixture with
the llama.cpp in this Python environment, keeping every other line as it is.

The fixtures' logits were recorded with llama-cpp-python 0.3.16; llama.cpp 0.3.36
(the peer we measure against now) treats end-of-turn texts it recognizes ("</s>",
"<|im_end|>", ...) as control tokens, so with special parsing off they stay text
(Gemma 3's "</s>" was cut out as user-defined before). The tokenizer records follow
that version; the note line says which records came from where.

usage: bench/setup_venv_mtmd.sh && bench/.venv-mtmd/bin/python bench/retokenize_fixture.py --model FILE.gguf spec/fixtures/NAME.txt
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import make_fixtures as mf  # noqa: E402  (detokenize, hx, the loader with extra buffer types off)
import llama_cpp  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("fixture")
    args = ap.parse_args()
    llm = mf.load_llama(args.model, n_ctx=4096, n_threads=2, extra_bufts=False)
    lines = open(args.fixture, encoding="utf-8").read().split("\n")
    out, changed = [], 0
    note = "# tokenizer records re-recorded with llama-cpp-python %s (bench/retokenize_fixture.py)" % llama_cpp.__version__
    for line in lines:
        if line.startswith("# tokenizer records re-recorded"):
            continue
        if line.startswith("detok "):
            continue  # written again after its tok line when still lossy
        if line.startswith("tok "):
            _, special, hextext = line.split(" ", 3)[:3]
            text = bytes.fromhex(hextext) if hextext != "-" else b""
            ids = llm.tokenize(text, add_bos=False, special=special == "1")
            new = "tok %s %s %d%s" % (special, hextext, len(ids), "".join(" %d" % t for t in ids))
            changed += new != line
            out.append(new)
            back = mf.detokenize(llm, ids, special == "1")
            if back != text:
                out.append("detok %s %s %s" % (special, hextext, mf.hx(back)))
            continue
        if line.startswith("# tokenizer:"):
            out.append(note)
        out.append(line)
    open(args.fixture, "w", encoding="utf-8").write("\n".join(out))
    print("%s: %d tokenizer records changed" % (args.fixture, changed), file=sys.stderr)


if __name__ == "__main__":
    main()
