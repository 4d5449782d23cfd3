#!/usr/bin/env python3
"""How llama.cpp (llama-cpp-python 0.3.16, bench/.venv) agrees with the
embedding fixture on the same GGUF lumen loads: token ids and cosine per text
of spec/fixtures/embed_corpus.txt (truncated to the fixture's 256 tokens).
For comparison with spec/c/test_embed.c's numbers; not a test.

usage: bench/.venv/bin/python bench/embed/llama_cpp_agreement.py
"""
import math
import os

import llama_cpp.llama_cpp as L
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("LUMEN_MODELS") or os.path.expanduser("~/.cache/lumen/models")


def main():
    with open(os.path.join(ROOT, "spec", "fixtures", "embed_corpus.txt"), encoding="utf-8", newline="\n") as f:
        texts = f.read().split("\n")[:-1]
    fx = []
    with open(os.path.join(ROOT, "spec", "fixtures", "minilm_embed.txt"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("ids "):
                fx.append([list(map(int, line.split()[1:])), None])
            elif line.startswith("emb "):
                fx[-1][1] = list(map(float, line.split()[1:]))
    m = Llama(model_path=os.path.join(CACHE, "all-MiniLM-L6-v2.f32.gguf"), embedding=True, verbose=False,
              n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2)
    same, cos = 0, []
    for t, (ids, ref) in zip(texts, fx):
        toks = m.tokenize(t.encode("utf-8"), add_bos=True, special=True)
        whole = len(toks)
        if whole > 256:
            toks = toks[:255] + [toks[-1]]
        same += toks == ids
        if toks != ids or whole > 256:
            continue   # the forward pass is compared where the ids agree (llama.cpp's embed cannot take ids)
        e = m.embed(t)
        dot = sum(a * b for a, b in zip(e, ref))
        cos.append((dot / math.sqrt(sum(a * a for a in e) * sum(b * b for b in ref)), len(cos), t[:40]))
    print(f"llama.cpp 0.3.16 on {len(texts)} texts: {same} identical token id lists; on those, "
          f"cosine min {min(cos)[0]:.7f} ({min(cos)[2]!r}), median {sorted(cos)[len(cos) // 2][0]:.7f}, "
          f"{sum(c[0] >= 0.9999 for c in cos)} of {len(cos)} >= 0.9999")


if __name__ == "__main__":
    main()
