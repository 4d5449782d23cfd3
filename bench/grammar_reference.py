#!/usr/bin/env python3
"""Records llama.cpp's allowed-token sets for the GBNF grammars in
spec/fixtures/grammars/ into spec/fixtures/grammar_equivalence.txt, which
spec/c/test_grammar_equiv.c replays against lumen's matcher.

For each grammar, 20 strings are drawn token by token through llama.cpp's
grammar sampler (llama-cpp-python 0.3.16, bench/.venv) on SmolLM2's vocabulary:
at every step the set of tokens the sampler leaves (logit not -inf) is recorded
as its size and an order-free hash (the sum of splitmix64(id) mod 2^64), then
one allowed token is picked at random (an end token with probability 0.3 where
it is allowed, else a token weighted towards short pieces) and accepted.

usage: bench/.venv/bin/python bench/grammar_reference.py [model.gguf]
"""
import ctypes
import glob
import os
import random
import sys

import numpy as np
import llama_cpp as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRINGS, MAX_STEPS = 20, 30
M1, M2, M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def set_hash(ids):
    z = ids.astype(np.uint64) + M1
    z = (z ^ (z >> np.uint64(30))) * M2
    z = (z ^ (z >> np.uint64(27))) * M3
    z = z ^ (z >> np.uint64(31))
    return int(z.sum(dtype=np.uint64))


def main():
    model_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.vocab_only = True
    model = L.llama_model_load_from_file(model_path.encode(), mp)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    eog = np.array([L.llama_vocab_is_eog(vocab, t) for t in range(n_vocab)])
    plen = np.zeros(n_vocab, dtype=np.int64)
    buf = ctypes.create_string_buffer(256)
    for t in range(n_vocab):
        plen[t] = max(1, L.llama_token_to_piece(vocab, t, buf, 256, 0, True))
    arr = (L.llama_token_data * n_vocab)()
    view = np.frombuffer(arr, dtype=np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]))
    cand = L.llama_token_data_array(data=arr, size=n_vocab, selected=-1, sorted=False)
    out = ["# llama.cpp (llama-cpp-python %s) grammar sampler on %s: bench/grammar_reference.py" %
           (L.__version__, os.path.basename(model_path)),
           "# grammar FILE / string N / step N_ALLOWED HASH TOKEN (TOKEN: the one accepted next, -1: none)",
           "# eog: llama.cpp's end-of-generation tokens (its set differs from lumen's: see the spec)",
           "eog " + " ".join(str(t) for t in range(n_vocab) if eog[t])]
    with np.errstate(over="ignore"):
        for path in sorted(glob.glob(os.path.join(ROOT, "spec", "fixtures", "grammars", "*.gbnf"))):
            text = open(path, "rb").read()
            name = os.path.basename(path)
            out.append("grammar " + name)
            rng = random.Random(name)
            total = 0
            for s in range(STRINGS):
                smpl = L.llama_sampler_init_grammar(vocab, text, b"root")
                if not smpl:
                    sys.exit("llama.cpp refused " + name)
                steps = []
                for _ in range(MAX_STEPS):
                    view["id"] = np.arange(n_vocab, dtype=np.int32)
                    view["logit"] = 0
                    view["p"] = 0
                    cand.size, cand.selected, cand.sorted = n_vocab, -1, False
                    L.llama_sampler_apply(smpl, ctypes.byref(cand))
                    allowed = view["id"][np.isfinite(view["logit"])]
                    h = set_hash(allowed)
                    if len(allowed) == 0:
                        steps.append((0, h, -1))
                        break
                    ends = allowed[eog[allowed]]
                    if len(ends) and (rng.random() < 0.3 or len(ends) == len(allowed)):
                        tok = int(ends[0])
                    else:
                        rest = allowed[~eog[allowed]]
                        w = 1.0 / plen[rest] ** 2
                        tok = int(rest[rng.choices(range(len(rest)), weights=w)[0]])
                    steps.append((len(allowed), h, tok))
                    if eog[tok]:
                        break
                    L.llama_sampler_accept(smpl, tok)
                L.llama_sampler_free(smpl)
                out.append("string %d" % len(steps))
                out.extend("step %d %016x %d" % st for st in steps)
                total += len(steps)
            print("%-18s %d strings, %d steps" % (name, STRINGS, total), file=sys.stderr)
    with open(os.path.join(ROOT, "spec", "fixtures", "grammar_equivalence.txt"), "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
