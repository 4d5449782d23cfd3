#!/usr/bin/env python3
"""Records spec/fixtures/minilm_embed.txt: for every text of
spec/fixtures/embed_corpus.txt, the token ids of Hugging Face `tokenizers`
and the embedding of bench/embed/reference.py (NumPy, float64, from the
model's own model.safetensors), rounded to 6 decimals.

usage: bench/.venv-embed/bin/python bench/embed/make_fixture.py [MODEL_DIR]
(default MODEL_DIR: the model cache's all-MiniLM-L6-v2, scripts/fetch_model.py minilm)
"""
import datetime
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import Reference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    cache = os.environ.get("LUMEN_MODELS") or os.path.expanduser("~/.cache/lumen/models")
    model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(cache, "all-MiniLM-L6-v2")
    ref = Reference(model_dir)
    with open(os.path.join(ROOT, "spec", "fixtures", "embed_corpus.txt"), encoding="utf-8", newline="\n") as f:
        texts = f.read().split("\n")[:-1]
    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    import tokenizers
    out = [
        "# all-MiniLM-L6-v2: token ids (tokenizers %s, truncation at %d) and embeddings (%s pooling, %s)"
        % (tokenizers.__version__, ref.max_len, ref.pooling, "L2-normalized" if ref.normalize else "not normalized"),
        "# of bench/embed/reference.py (NumPy float64 transcription of BertModel), for spec/fixtures/embed_corpus.txt",
        f"# model.safetensors sha256 {sha}",
        f"# produced by: bench/embed/make_fixture.py on {datetime.date.today().isoformat()}",
        f"texts {len(texts)} dim {ref.cfg['hidden_size']}",
    ]
    for i, t in enumerate(texts):
        ids = ref.ids(t)
        e = ref.embed_ids(ids)
        out.append("ids " + " ".join(map(str, ids)))
        out.append("emb " + " ".join("%.6f" % v for v in e))
    path = os.path.join(ROOT, "spec", "fixtures", "minilm_embed.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    print(f"{path}: {len(texts)} texts")


if __name__ == "__main__":
    main()
