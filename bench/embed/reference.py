#!/usr/bin/env python3
"""A reference for lumen's BERT embeddings that is not lumen: Hugging Face's
`tokenizers` (the Rust tokenizer sentence-transformers runs) for the token ids,
and a plain NumPy transcription of BertModel + mean/CLS pooling + L2
normalization over the model's own model.safetensors (read with `safetensors`),
in float64. sentence-transformers itself needs torch, whose PyPI wheels pull
gigabytes of CUDA libraries; this computes the same function.

usage: reference.py MODEL_DIR  (a Hugging Face directory: config.json, model.safetensors, tokenizer.json)
"""
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


class Reference:
    def __init__(self, model_dir):
        self.dir = model_dir
        with open(os.path.join(model_dir, "config.json")) as f:
            self.cfg = json.load(f)
        self.max_len = self.cfg["max_position_embeddings"]
        sb = os.path.join(model_dir, "sentence_bert_config.json")
        if os.path.exists(sb):
            with open(sb) as f:
                self.max_len = json.load(f).get("max_seq_length", self.max_len)
        self.pooling, self.normalize = "mean", True
        mods = os.path.join(model_dir, "modules.json")
        if os.path.exists(mods):
            with open(mods) as f:
                modules = json.load(f)
            self.normalize = any(m["type"].endswith("Normalize") for m in modules)
            for m in modules:
                if m["type"].endswith("Pooling"):
                    with open(os.path.join(model_dir, m["path"], "config.json")) as f:
                        pc = json.load(f)
                    self.pooling = "cls" if pc.get("pooling_mode_cls_token") else "mean"
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(self.max_len)   # as sentence-transformers sets it
        self.w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()
                  if v.dtype != np.int64}

    def ids(self, text):
        return self.tok.encode(text).ids

    def embed_ids(self, ids):
        w, c = self.w, self.cfg
        E, H = c["hidden_size"], c["num_attention_heads"]
        eps = c.get("layer_norm_eps", 1e-12)
        hd = E // H

        def ln(x, p):
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

        def lin(x, p):
            return x @ w[p + ".weight"].T + w[p + ".bias"]

        erf = np.vectorize(math.erf)
        L = len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:L]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = ln(x, "embeddings.LayerNorm")
        for i in range(c["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q = lin(x, p + "attention.self.query").reshape(L, H, hd).transpose(1, 0, 2)
            k = lin(x, p + "attention.self.key").reshape(L, H, hd).transpose(1, 0, 2)
            v = lin(x, p + "attention.self.value").reshape(L, H, hd).transpose(1, 0, 2)
            s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(1, 0, 2).reshape(L, E)
            x = ln(x + lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = lin(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
            x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
        e = x[0] if self.pooling == "cls" else x.mean(0)
        if self.normalize:
            e = e / max(np.linalg.norm(e), 1e-12)
        return e


if __name__ == "__main__":
    ref = Reference(sys.argv[1])
    for line in sys.stdin:
        text = line.rstrip("\n")
        ids = ref.ids(text)
        e = ref.embed_ids(ids)
        print(json.dumps({"ids": ids, "embedding": [round(float(v), 7) for v in e]}))
