#!/usr/bin/env python3
"""Writes the vision test files into the model cache (never committed):

  vision-tiny-mmproj.gguf      idefics3 mmproj, random weights, tiny (the specs)
  vision-smolvlm256m-mmproj.gguf   the same at SmolVLM-256M's real shapes (the benchmark)
  SmolLM2-135M-vision.Q4_1.gguf    SmolLM2 with SmolVLM's image tokens appended (ids from 49152)
  vision/images/               real photographs from Debian's python3-skimage package data

Keys and tensor names are those llama.cpp's tools/mtmd/clip.cpp reads for projector type
idefics3 (SigLIP ViT + pixel shuffle + mm.model.fc). Weights are f32, drawn so activations
stay O(1); the projection is scaled so image rows have the norm of SmolLM2's token rows.
Run with any Python that has numpy and gguf (scripts/test.sh uses bench/.venv-embed):
  bench/.venv-embed/bin/python bench/vision/make_mmproj.py [vision-tiny-mmproj.gguf]
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import gguf

CACHE = os.environ.get("LUMEN_MODELS") or os.path.expanduser("~/.cache/lumen/models")
TEXT = os.path.join(CACHE, "SmolLM2-135M-Instruct.Q4_1.gguf")
N_TEXT_EMBD = 576

CONFIGS = {
    # name: image_size, patch, width, heads, ffn, layers, scale factor, preproc longest edge
    "vision-tiny-mmproj.gguf": dict(image=64, patch=8, width=64, heads=4, ffn=96, layers=2, scale=2, longest=192),
    "vision-smolvlm256m-mmproj.gguf": dict(image=512, patch=16, width=768, heads=12, ffn=3072, layers=12, scale=4,
                                           longest=2048),
}

IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + \
    [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]

SKIMAGE_IMAGES = ["rocket.jpg", "hubble_deep_field.jpg", "chelsea.png", "camera.png", "logo.png", "truncated.jpg"]


def write_mmproj(path, c, seed):
    rng = np.random.default_rng(seed)
    E, F, P, S = c["width"], c["ffn"], c["patch"], c["scale"]
    n_pos = (c["image"] // P) ** 2
    w = gguf.GGUFWriter(path + ".tmp", "clip")
    w.add_string("general.name", "lumen random idefics3 " + os.path.basename(path))
    w.add_uint32("general.file_type", 0)
    w.add_string("clip.projector_type", "idefics3")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", c["image"])
    w.add_uint32("clip.vision.patch_size", P)
    w.add_uint32("clip.vision.embedding_length", E)
    w.add_uint32("clip.vision.feed_forward_length", F)
    w.add_uint32("clip.vision.block_count", c["layers"])
    w.add_uint32("clip.vision.attention.head_count", c["heads"])
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.projection_dim", N_TEXT_EMBD)
    w.add_uint32("clip.vision.projector.scale_factor", S)
    w.add_uint32("clip.vision.preproc_image_size", c["longest"])
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    def mat(name, rows, cols, scale=1.0):
        w.add_tensor(name, (rng.standard_normal((rows, cols)) * (scale / np.sqrt(cols))).astype(np.float32))

    def vec(name, n, mean=0.0, std=0.1):
        w.add_tensor(name, (mean + std * rng.standard_normal(n)).astype(np.float32))

    # conv weight in PyTorch order [out, in, kh, kw] (GGUF ne: [kw, kh, in, out])
    w.add_tensor("v.patch_embd.weight", (rng.standard_normal((E, 3, P, P)) / np.sqrt(3 * P * P)).astype(np.float32))
    vec("v.patch_embd.bias", E)
    w.add_tensor("v.position_embd.weight", (0.5 * rng.standard_normal((n_pos, E))).astype(np.float32))
    for i in range(c["layers"]):
        p = f"v.blk.{i}."
        vec(p + "ln1.weight", E, 1.0)
        vec(p + "ln1.bias", E)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(p + t + ".weight", E, E)
            vec(p + t + ".bias", E)
        vec(p + "ln2.weight", E, 1.0)
        vec(p + "ln2.bias", E)
        mat(p + "ffn_up.weight", F, E)
        vec(p + "ffn_up.bias", F)
        mat(p + "ffn_down.weight", E, F)
        vec(p + "ffn_down.bias", E)
    vec("v.post_ln.weight", E, 1.0)
    vec("v.post_ln.bias", E)
    # SmolLM2's token rows have elements of about this size (their RMS)
    mat("mm.model.fc.weight", N_TEXT_EMBD, E * S * S, scale=0.06)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(path + ".tmp", path)


def write_text_model(src, dst):
    """A copy of SmolLM2 with IMAGE_TOKENS appended; their token_embd rows copy existing rows."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst + ".tmp", "llama")
    skip = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture"}
    n_new = len(IMAGE_TOKENS)
    for k, f in r.fields.items():
        if k in skip:
            continue
        vt = f.types[0]
        if k == "tokenizer.ggml.tokens":
            toks = [bytes(f.parts[i]).decode("utf-8") for i in f.data] + IMAGE_TOKENS
            w.add_array(k, toks)
        elif k == "tokenizer.ggml.token_type":
            types = [int(f.parts[i][0]) for i in f.data] + [int(gguf.TokenType.CONTROL)] * n_new
            w.add_array(k, types)
        elif k == "llama.vocab_size":
            w.add_uint32(k, int(f.parts[f.data[0]][0]) + n_new)
        elif vt == gguf.GGUFValueType.ARRAY:
            it = f.types[1]
            if it == gguf.GGUFValueType.STRING:
                w.add_array(k, [bytes(f.parts[i]).decode("utf-8") for i in f.data])
            else:
                w.add_array(k, [f.parts[i].tolist()[0] for i in f.data])
        elif vt == gguf.GGUFValueType.STRING:
            w.add_string(k, bytes(f.parts[f.data[0]]).decode("utf-8"))
        else:
            w.add_key_value(k, f.parts[f.data[0]][0], vt)
    for t in r.tensors:
        data = np.asarray(t.data)
        if t.name == "token_embd.weight":
            data = np.concatenate([data, data[1000:1000 + n_new]], axis=0)
        w.add_tensor(t.name, data, raw_dtype=t.tensor_type)  # quantized: rows of bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(dst + ".tmp", dst)


def fetch_images(out):
    os.makedirs(out, exist_ok=True)
    if all(os.path.exists(os.path.join(out, n)) for n in SKIMAGE_IMAGES):
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "python3-skimage"], cwd=tmp, check=True, capture_output=True)
        deb = glob.glob(os.path.join(tmp, "python3-skimage_*.deb"))[0]
        subprocess.run(["dpkg-deb", "-x", deb, os.path.join(tmp, "x")], check=True)
        data = glob.glob(os.path.join(tmp, "x/usr/lib/python3/dist-packages/skimage/data"))[0]
        for n in SKIMAGE_IMAGES:
            shutil.copy(os.path.join(data, n), os.path.join(out, n))
    print("images: python3-skimage's data ->", out)


def main():
    os.makedirs(CACHE, exist_ok=True)
    only = sys.argv[1:]
    for seed, (name, c) in enumerate(CONFIGS.items()):
        path = os.path.join(CACHE, name)
        if (not only or name in only) and not os.path.exists(path):
            write_mmproj(path, c, seed + 1)
            print("wrote", path)
    dst = os.path.join(CACHE, "SmolLM2-135M-vision.Q4_1.gguf")
    if not os.path.exists(dst):
        write_text_model(TEXT, dst)
        print("wrote", dst)
    fetch_images(os.path.join(os.path.dirname(CACHE.rstrip("/")), "vision", "images"))


if __name__ == "__main__":
    main()
