#!/usr/bin/env python3
"""Record llama.cpp's reference outputs (tokenizer, detokenizer, greedy decoding,
top-k logits) for a GGUF model as a line-based text fixture.

usage: bench/.venv/bin/python bench/make_fixtures.py --model PATH --out spec/fixtures/NAME
                                                     [--corpus FILE|none] [--prompts N] [--gen N]
                                                     [--made-by "HOW THE MODEL FILE WAS MADE"]

Needs the venv made by bench/setup_venv.sh (llama-cpp-python, which bundles
llama.cpp, and numpy).  The file format is described in FORMAT below; the same
text is written at the top of every fixture and in spec/fixtures/README.md.
"""
import argparse
import ctypes
import datetime
import hashlib
import os
import sys

import numpy as np

import llama_cpp
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

N_CTX = 1024
N_THREADS = 2
SEED = 1234
N_GEN = 32
TOP_K = 20

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(user):
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n")


# (text, special): special=1 means the prompt is tokenized with special=True
# (control tokens such as <|im_start|> are parsed), 0 means plain text.
PROMPTS = [
    ("My favorite thing about autumn is", 0),                                   # plain English
    ('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n', 0),     # code
    ("Here is a list of five fruits:\n1.", 0),                                  # list
    ("Pi is approximately 3.14159, and e is approximately", 0),                 # numbers
    ("Érase una vez, en un pequeño pueblo,", 0),                                # non-English
    (chatml("What is 15 multiplied by 4?"), 1),                                 # ChatML
    (chatml("Hi!"), 1),                                                         # ChatML
    (chatml("What are the benefits of regular exercise?"), 1),                  # ChatML
]

FORMAT = """\
Format (one record per line, fields separated by single spaces; lines starting
with '#' are comments; all text is given as lowercase hex of its UTF-8 bytes so
no unescaping is needed; ids are decimal token ids):

  tok <special> <hex text> <n> <id_1> ... <id_n>
      llama_tokenize(text, add_special=false (no BOS), parse_special=<special>)
      <special> is 0 or 1.  Inputs: each distinct non-empty line of the corpus
      (split on '\\n' only, so a trailing '\\r' stays part of the line), then each
      blank-line-separated block of the corpus, then the whole corpus file.
  detok <special> <hex text> <hex detok>
      only present when llama.cpp's detokenization of the ids of the preceding
      tok record with the same <special> is NOT byte-identical to the input:
      llama_detokenize(ids, remove_special=false, unparse_special=<special>)
      (the C API, i.e. token_to_piece concatenated; not the Python wrapper's
      Llama.detokenize, which truncates pieces longer than 32 bytes).
      An empty <hex detok> is written as '-'.
  prompt <i> <hex text> <special> <n> <id_1> ... <id_n>
      prompt i tokenized with add_special=true (BOS where the model asks for it,
      so none for SmolLM2) and parse_special=<special> (1 for ChatML prompts).
  greedy <i> <n_gen> <id_1> ... <id_n_gen>
      exact greedy continuation: eval the prompt in one batch, take the raw
      argmax of the last logits (lowest id wins a tie), eval that single token,
      argmax again, ... n_gen times.  End-of-generation tokens do not stop it.
  top <i> <pos> <id>:<logit> ... (k pairs)
      the top-k logits (k=20) at generation step pos (0 = the logits after the
      prompt, 1 = after prompt + first generated token, ...), sorted by logit
      descending then id ascending, logits printed with %.6f.  The first id of
      'top <i> <pos>' is token pos+1 of 'greedy <i>'.
  alt <i> <pos> <top1 id> <logit> ... (k logits)
      llama.cpp again on the same token sequence, but with the prompt fed one
      token at a time instead of in one batch: its own top-1 id at that step and
      the logits it gives the k ids of 'top <i> <pos>', in that order. The
      difference between 'top' and 'alt' is llama.cpp's own numerical noise on
      this model (Q8 activations make it chaotic at float-rounding level), the
      yardstick the agreement test measures lumen's distance against.
"""


def load_llama(model, n_ctx=N_CTX, n_threads=N_THREADS, extra_bufts=False, **kw):
    """Llama() with control over llama_model_params.use_extra_bufts.

    Extra buffer types (weight repacking) are on by default in llama.cpp.  On a
    CPU with AMX they route Q4_0/Q4_1 matmuls with >= 32 rows through the AMX
    kernels, which give garbage in the llama.cpp bundled with llama-cpp-python
    0.3.16 (see ggml-org/llama.cpp PR #16315); on CPUs without AMX, Q4_1 has no
    repacked layout, so turning them off reproduces what such CPUs compute.
    Llama() builds its model params from llama_model_default_params(), so that
    function is wrapped for the duration of the load.
    """
    import llama_cpp.llama as llama_mod
    orig = llama_mod.llama_cpp.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = bool(extra_bufts)
        return p

    llama_mod.llama_cpp.llama_model_default_params = params
    try:
        return Llama(model_path=model, n_ctx=n_ctx, n_threads=n_threads,
                     n_threads_batch=n_threads, verbose=False, **kw)
    finally:
        llama_mod.llama_cpp.llama_model_default_params = orig


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hx(b):
    return b.hex() if b else "-"


def detokenize(llm, ids, special):
    """llama.cpp's own llama_detokenize (no 32-byte piece limit)."""
    vocab = llm._model.vocab
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 16 * len(ids)
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, bool(special))
        if n >= 0:
            return buf.raw[:n]
        size = -n + 1


def corpus_inputs(data):
    """distinct non-empty lines, then blank-line-separated blocks, then the whole file."""
    out, seen = [], set()

    def add(b):
        if b and b not in seen:
            seen.add(b)
            out.append(b)

    lines = data.split(b"\n")
    for line in lines:
        add(line)
    # blocks: runs of >1 lines separated by blank lines ('' or just '\r'),
    # joined back with '\n' (so they are exact substrings of the corpus)
    cur = []
    for line in lines:
        if line in (b"", b"\r"):
            if len(cur) > 1:
                add(b"\n".join(cur))
            cur = []
        else:
            cur.append(line)
    if len(cur) > 1:
        add(b"\n".join(cur))
    add(data)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--corpus", default=os.path.join(ROOT, "spec", "fixtures", "tokenizer_corpus.txt"),
                    help="the tokenizer corpus, or none: no tok/detok records (e.g. a requantized copy of a model whose vocabulary another fixture covers)")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--threads", type=int, default=N_THREADS,
                    help="llama.cpp threads (default %d; the results do not depend on it, and 1 is much "
                         "faster on a machine whose other processes keep the cores busy)" % N_THREADS)
    ap.add_argument("--gen", type=int, default=N_GEN, help="greedy tokens per prompt (default %d)" % N_GEN)
    ap.add_argument("--extra-bufts", action="store_true",
                    help="keep llama.cpp's extra buffer types (AMX/repacked weights); off by default")
    ap.add_argument("--flash-attn", action="store_true", help="use flash attention (off by default)")
    ap.add_argument("--made-by", default="", help="a comment line: how the model file was made (e.g. a lumen quantize command)")
    args = ap.parse_args()
    if not 0 <= args.prompts <= len(PROMPTS):
        ap.error(f"--prompts must be between 0 and {len(PROMPTS)}")
    if not 1 <= args.gen <= 64:
        ap.error("--gen must be between 1 and 64")
    no_corpus = args.corpus == "none"

    llm = load_llama(args.model, n_threads=args.threads, extra_bufts=args.extra_bufts, flash_attn=args.flash_attn,
                     seed=SEED, logits_all=True)
    n_vocab = llm.n_vocab()
    corpus = b""
    if not no_corpus:
        with open(args.corpus, "rb") as f:
            corpus = f.read()
        corpus.decode("utf-8")  # must be valid UTF-8

    lines = []
    w = lines.append
    w("# lumen reference fixture: llama.cpp outputs recorded through llama-cpp-python")
    w("# produced by: bench/make_fixtures.py --model %s --out %s --prompts %d%s%s%s%s"
      % (os.path.basename(args.model), os.path.relpath(os.path.abspath(args.out), ROOT), args.prompts,
         " --gen %d" % args.gen if args.gen != N_GEN else "", " --corpus none" if no_corpus else "",
         " --threads %d" % args.threads if args.threads != N_THREADS else "",
         (" --extra-bufts" if args.extra_bufts else "") + (" --flash-attn" if args.flash_attn else "")))
    w("# llama-cpp-python %s (bundled llama.cpp), numpy %s" % (llama_cpp.__version__, np.__version__))
    w("# system info: %s" % llama_cpp.llama_print_system_info().decode().strip())
    w("# model: %s sha256 %s" % (os.path.basename(args.model), sha256(args.model)))
    if args.made_by:
        w("# model made by: %s" % args.made_by)
    w("# n_vocab %d n_ctx %d n_threads %d seed %d n_batch %d (prompts are evaluated in one batch)"
      % (n_vocab, N_CTX, args.threads, SEED, llm.n_batch))
    w("# use_extra_bufts %d flash_attn %d, KV cache f16 (llama.cpp default)"
      % (args.extra_bufts, args.flash_attn))
    if no_corpus:
        w("# corpus: none (no tokenizer records)")
    else:
        w("# corpus: %s (%d bytes, sha256 %s)" % (os.path.relpath(args.corpus, ROOT), len(corpus),
                                                  hashlib.sha256(corpus).hexdigest()))
    w("# date: %s" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    w("#")
    for fl in FORMAT.rstrip("\n").split("\n"):
        w(("# " + fl).rstrip())
    w("#")

    # ---- tokenizer ---------------------------------------------------------
    n_lossy = 0
    inputs = corpus_inputs(corpus) if not no_corpus else []
    w("# tokenizer: %d inputs x special 0/1" % len(inputs))
    for special in (0, 1):
        for text in inputs:
            ids = llm.tokenize(text, add_bos=False, special=bool(special))
            w("tok %d %s %d%s" % (special, hx(text), len(ids), "".join(" %d" % t for t in ids)))
            back = detokenize(llm, ids, special)
            if back != text:
                n_lossy += 1
                w("detok %d %s %s" % (special, hx(text), hx(back)))
            # the Python wrapper truncates long pieces; report where it differs
            try:
                py = llm.detokenize(ids, special=bool(special))
            except AssertionError:
                py = None
            if py != back:
                print("note: Llama.detokenize differs from llama_detokenize for special=%d %r"
                      % (special, text[:60]), file=sys.stderr)
    print("tokenizer: %d inputs, %d lossy detok records" % (len(inputs), n_lossy), file=sys.stderr)

    # ---- generation --------------------------------------------------------
    n_gen = args.gen
    w("# generation: %d prompts, %d greedy tokens, top-%d logits per step" % (args.prompts, n_gen, TOP_K))
    for i, (text, special) in enumerate(PROMPTS[:args.prompts]):
        tb = text.encode("utf-8")
        # add_bos=True adds BOS only where the model asks for it (Gemma does, SmolLM2 does not)
        ids = llm.tokenize(tb, add_bos=True, special=bool(special))
        w("prompt %d %s %d %d%s" % (i, hx(tb), special, len(ids), "".join(" %d" % t for t in ids)))
        llm.reset()
        llm.eval(ids)
        gen, tops, orders = [], [], []
        min_margin = (float("inf"), -1)
        for pos in range(n_gen):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            order = np.lexsort((np.arange(n_vocab), -logits))[:TOP_K]
            tok = int(order[0])
            assert tok == int(np.argmax(logits))
            margin = float(logits[order[0]] - logits[order[1]])
            if margin < min_margin[0]:
                min_margin = (margin, pos)
            tops.append("top %d %d %s" % (i, pos, " ".join("%d:%.6f" % (t, logits[t]) for t in order)))
            orders.append(order)
            gen.append(tok)
            if pos + 1 < n_gen:
                llm.eval([tok])
        w("greedy %d %d %s" % (i, n_gen, " ".join(str(t) for t in gen)))
        w("# prompt %d: smallest top1-top2 logit margin over the %d steps: %.6f at pos %d"
          % (i, n_gen, min_margin[0], min_margin[1]))
        lines.extend(tops)
        # the same sequence with the prompt fed token by token
        llm.reset()
        for t in ids:
            llm.eval([t])
        for pos in range(n_gen):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            lines.append("alt %d %d %d %s" % (i, pos, int(np.argmax(logits)),
                                              " ".join("%.6f" % logits[t] for t in orders[pos])))
            if pos + 1 < n_gen:
                llm.eval([gen[pos]])
        print("prompt %d (min margin %.4f at pos %d): %r -> %r"
              % (i, min_margin[0], min_margin[1], text[-60:],
                 detokenize(llm, gen, 1).decode("utf-8", "replace")), file=sys.stderr)

    data = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(data)
    print("wrote %s (%d bytes)" % (args.out, len(data.encode())), file=sys.stderr)


if __name__ == "__main__":
    main()
