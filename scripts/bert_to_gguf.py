#!/usr/bin/env python3
"""Write a GGUF of a BERT-family sentence-transformers model (a Hugging Face
directory: config.json, model.safetensors, tokenizer.json or vocab.txt,
modules.json / 1_Pooling) in llama.cpp's `bert` layout: its tensor and key
names, its vocabulary form (word starts marked with U+2581, "##" dropped from
continuations, "[X]" tokens as they are), [CLS] as BOS and [SEP] as the
separator, pooling in bert.pooling_type. Two keys of lumen's own carry what
that layout has no place for: lumen.embed.max_seq_length (sentence-
transformers' max_seq_length) and lumen.embed.normalize (a Normalize module).

usage: scripts/bert_to_gguf.py MODEL_DIR OUT.gguf [--outtype f32|f16]
Needs numpy and gguf (PyPI); the output appears under its name only when complete.
"""
import argparse
import json
import os
import sys

import numpy as np
import gguf
from safetensors.numpy import load_file

LAYER = {
    "attention.self.query": "attn_q", "attention.self.key": "attn_k", "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output", "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up", "output.dense": "ffn_down", "output.LayerNorm": "layer_output_norm",
}
TOP = {
    "embeddings.word_embeddings": "token_embd", "embeddings.position_embeddings": "position_embd",
    "embeddings.token_type_embeddings": "token_types", "embeddings.LayerNorm": "token_embd_norm",
}


def gguf_name(hf):
    if hf.startswith("bert."):
        hf = hf[5:]
    base, _, kind = hf.rpartition(".")
    if base in TOP:
        return f"{TOP[base]}.{kind}"
    if base.startswith("encoder.layer."):
        n, _, rest = base[len("encoder.layer."):].partition(".")
        if rest in LAYER:
            return f"blk.{n}.{LAYER[rest]}.{kind}"
    return None   # position_ids, pooler: llama.cpp leaves them out too


def read_json(d, rel, default=None):
    p = os.path.join(d, rel)
    if not os.path.exists(p):
        return default
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def vocab(d):
    tj = read_json(d, "tokenizer.json")
    if tj:
        v = tj["model"]["vocab"]
        tokens = [None] * (max(v.values()) + 1)
        for t, i in v.items():
            tokens[i] = tokens[i] or t
        special = {a["id"] for a in tj.get("added_tokens", []) if a.get("special")}
    else:
        with open(os.path.join(d, "vocab.txt"), encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
        special = {i for i, t in enumerate(tokens) if t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    return tokens, special


def phantom(t):
    if t.startswith("[") and t.endswith("]"):
        return t
    if t.startswith("##"):
        return t[2:]
    return "\u2581" + t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--outtype", choices=["f32", "f16"], default="f32")
    a = ap.parse_args()
    d = a.model_dir
    cfg = read_json(d, "config.json")
    if cfg is None:
        sys.exit(f"bert_to_gguf: {d}/config.json is missing")
    if cfg.get("model_type") != "bert":
        sys.exit(f"bert_to_gguf: {d}/config.json: model_type is {cfg.get('model_type')!r}, not 'bert'")

    pooling, normalize = 1, 1   # mean, L2
    modules = read_json(d, "modules.json")
    if modules is not None:
        normalize = int(any(m["type"].endswith("Normalize") for m in modules))
        for m in modules:
            if m["type"].endswith("Pooling"):
                pc = read_json(d, os.path.join(m["path"], "config.json"), {})
                pooling = 2 if pc.get("pooling_mode_cls_token") else 1
    max_len = (read_json(d, "sentence_bert_config.json", {}) or {}).get("max_seq_length", cfg["max_position_embeddings"])

    tmp = a.out + ".part"
    w = gguf.GGUFWriter(tmp, "bert")
    w.add_name(os.path.basename(os.path.normpath(d)))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg.get("layer_norm_eps", 1e-12))
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType(pooling))
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if a.outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_uint32("lumen.embed.max_seq_length", int(max_len))
    w.add_uint32("lumen.embed.normalize", normalize)

    tokens, special = vocab(d)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([phantom(t or f"[unused_id_{i}]") for i, t in enumerate(tokens)])
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    w.add_token_type_count(cfg.get("type_vocab_size", 2))
    ids = {t: i for i, t in enumerate(tokens) if t}
    for key, add in (("[CLS]", w.add_bos_token_id), ("[SEP]", w.add_sep_token_id), ("[UNK]", w.add_unk_token_id),
                     ("[PAD]", w.add_pad_token_id), ("[MASK]", w.add_mask_token_id)):
        if key in ids:
            add(ids[key])
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)

    for hf, t in load_file(os.path.join(d, "model.safetensors")).items():
        name = gguf_name(hf)
        if name is None:
            continue
        t = t.astype(np.float32)
        if a.outtype == "f16" and t.ndim == 2 and name != "token_types.weight":
            t = t.astype(np.float16)
        w.add_tensor(name, t)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, a.out)
    print(f"bert_to_gguf: wrote {a.out}")


if __name__ == "__main__":
    main()
