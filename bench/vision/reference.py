#!/usr/bin/env python3
"""llama.cpp's mtmd (llama-cpp-python 0.3.36) on the vision test files: records the fixture
spec/fixtures/vision_idefics3.txt, or (--bench) times image encoding and the first caption token.

Pixels: each image is decoded with Pillow (libjpeg-turbo, libpng, libwebp: the libraries lumen
uses) and handed to mtmd_bitmap_init as RGB, so the comparison is of preprocessing + ViT +
projector + text model; the fixture carries a hash of those pixels so lumen's decoding is
checked against Pillow's too. Flash attention off in the ViT (exact softmax).

  bench/.venv-mtmd/bin/python bench/vision/reference.py            # writes the fixture
  bench/.venv-mtmd/bin/python bench/vision/reference.py --bench MMPROJ IMAGE [THREADS]
"""
import ctypes
import hashlib
import os
import sys
import time

import numpy as np
from PIL import Image
import llama_cpp
import llama_cpp.mtmd_cpp as mtmd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("LUMEN_MODELS") or os.path.expanduser("~/.cache/lumen/models")
IMAGES = os.path.join(os.path.dirname(CACHE.rstrip("/")), "vision", "images")
TEXT = os.path.join(CACHE, "SmolLM2-135M-vision.Q4_1.gguf")
# the same weights widened to f32 (scripts/test.sh: `lumen quantize TEXT TEXT_F32 f32`): no
# activation quantization on either side, so greedy continuations compare free of Q8 rounding
TEXT_F32 = os.path.join(CACHE, "SmolLM2-135M-vision.f32.gguf")
MMPROJ = os.path.join(CACHE, "vision-tiny-mmproj.gguf")
TEST_IMAGES = ["rocket.jpg", "hubble_deep_field.jpg", "chelsea.png", "camera.png", "logo.png"]
PROMPT_BEFORE = "<|im_start|>user\n"
PROMPT_AFTER = "Describe this image.<|im_end|>\n<|im_start|>assistant\n"
N_GEN = 16


def rgb(path):
    im = Image.open(path)
    im.load()
    return im.convert("RGB")


def load(threads, mmproj, flash, text=TEXT):
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(text.encode(), mp)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = 4096, 512, 512
    cp.n_threads = cp.n_threads_batch = threads
    if not flash:
        cp.flash_attn_type = 0
    lctx = llama_cpp.llama_init_from_model(model, cp)
    p = mtmd.mtmd_context_params_default()
    p.use_gpu = False
    p.n_threads = threads
    p.print_timings = False
    p.warmup = False
    if not flash:
        p.flash_attn_type = 0
    ctx = mtmd.mtmd_init_from_file(mmproj.encode(), model, p)
    assert ctx, "mtmd_init_from_file failed"
    return model, lctx, ctx


def tokenize(ctx, img):
    buf = (ctypes.c_uint8 * (img.width * img.height * 3)).from_buffer_copy(img.tobytes())
    bmp = mtmd.mtmd_bitmap_init(img.width, img.height, buf)
    text = (PROMPT_BEFORE + mtmd.mtmd_default_marker().decode() + PROMPT_AFTER).encode()
    inp = mtmd.mtmd_input_text(text, len(text), False, True)
    chunks = mtmd.mtmd_input_chunks_init()
    arr = (mtmd.mtmd_bitmap_p_ctypes * 1)(bmp)
    rc = mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), arr, 1)
    assert rc == 0, rc
    return chunks, bmp


def greedy(model, lctx, ctx, chunks):
    mem = llama_cpp.llama_get_memory(lctx)
    llama_cpp.llama_memory_clear(mem, True)
    n_past = llama_cpp.llama_pos(0)
    t0 = time.perf_counter()
    rc = mtmd.mtmd_helper_eval_chunks(ctx, lctx, chunks, 0, 0, 512, True, ctypes.byref(n_past))
    assert rc == 0, rc
    vocab = llama_cpp.llama_model_get_vocab(model)
    nv = llama_cpp.llama_vocab_n_tokens(vocab)
    out, margins, first = [], [], None
    for _ in range(N_GEN):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lctx, -1), shape=(nv,))
        tok = int(np.argmax(logits))
        top2 = np.partition(logits, -2)[-2:]
        margins.append(float(top2[1] - top2[0]))
        if first is None:
            first = time.perf_counter() - t0
        out.append(tok)
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            break
        one = (llama_cpp.llama_token * 1)(tok)
        assert llama_cpp.llama_decode(lctx, llama_cpp.llama_batch_get_one(one, 1)) == 0
    return out, margins, first


def record():
    # greedy on the f32 copy first: its lines go beside each image's Q4_1 ones
    f32 = {}
    model, lctx, ctx = load(2, MMPROJ, False, TEXT_F32)
    for name in TEST_IMAGES:
        chunks, bmp = tokenize(ctx, rgb(os.path.join(IMAGES, name)))
        f32[name] = greedy(model, lctx, ctx, chunks)[:2]
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bmp)
    mtmd.mtmd_free(ctx)
    llama_cpp.llama_free(lctx)
    llama_cpp.llama_model_free(model)
    model, lctx, ctx = load(2, MMPROJ, False)
    lines = ["# llama.cpp mtmd (llama-cpp-python 0.3.36) on vision-tiny-mmproj.gguf + SmolLM2-135M-vision.Q4_1.gguf,",
             "# written by bench/vision/reference.py (see bench/vision/make_mmproj.py for the files).",
             f"# prompt: {PROMPT_BEFORE!r} <image> {PROMPT_AFTER!r}",
             "# image NAME WIDTH HEIGHT SHA256-OF-RGB  (Pillow's decoding)",
             "# seq: the prompt's positions: t:ID a text token, i:N an image chunk of N rows",
             "# row CHUNK ROW L2NORM V0 V1 V2 VLAST  (image rows after the projector)",
             f"# greedy: the first {N_GEN} greedy tokens; margin: llama.cpp's top-1 minus top-2 logit at each",
             "# greedy_f32, margin_f32: the same on SmolLM2-135M-vision.f32.gguf (the Q4_1 weights widened)",
             "# flash attention off (ViT and text model), KV cache f16, 2 threads, n_batch 512"]
    for name in TEST_IMAGES:
        img = rgb(os.path.join(IMAGES, name))
        lines.append(f"image {name} {img.width} {img.height} {hashlib.sha256(img.tobytes()).hexdigest()}")
        chunks, bmp = tokenize(ctx, img)
        seq, k = [], 0
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            ch = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(ch) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                p = mtmd.mtmd_input_chunk_get_tokens_text(ch, ctypes.byref(n))
                seq += [f"t:{p[j]}" for j in range(n.value)]
                continue
            nt = mtmd.mtmd_input_chunk_get_n_tokens(ch)
            seq.append(f"i:{nt}")
            assert mtmd.mtmd_encode_chunk(ctx, ch) == 0
            e = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(nt * 576,)).reshape(nt, 576).copy()
            for r in range(nt):
                v = e[r]
                lines.append(f"row {k} {r} {np.linalg.norm(v):.7g} {v[0]:.7g} {v[1]:.7g} {v[2]:.7g} {v[-1]:.7g}")
            k += 1
        lines.append("seq " + " ".join(seq))
        toks, margins, _ = greedy(model, lctx, ctx, chunks)
        lines.append("greedy " + " ".join(map(str, toks)))
        lines.append("margin " + " ".join(f"{x:.4f}" for x in margins))
        lines.append("greedy_f32 " + " ".join(map(str, f32[name][0])))
        lines.append("margin_f32 " + " ".join(f"{x:.4f}" for x in f32[name][1]))
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bmp)
        print(name, img.size, "chunks", k, "greedy", toks, file=sys.stderr)
    out = os.path.join(ROOT, "spec", "fixtures", "vision_idefics3.txt")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", out)


def bench(mmproj, image, threads):
    model, lctx, ctx = load(threads, mmproj, True)
    img = rgb(image)
    t0 = time.perf_counter()
    chunks, bmp = tokenize(ctx, img)       # preprocessing (resize, tiles) happens here
    n_img = 0
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        ch = mtmd.mtmd_input_chunks_get(chunks, i)
        if mtmd.mtmd_input_chunk_get_type(ch) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            assert mtmd.mtmd_encode_chunk(ctx, ch) == 0
            n_img += 1
    enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunks, bmp = tokenize(ctx, img)
    prep = time.perf_counter() - t0
    _, _, first = greedy(model, lctx, ctx, chunks)  # encodes again, then the text model, then one token
    print(f"llama.cpp encode {enc:.3f} s ({n_img} tiles)  ttft {prep + first:.3f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bench":
        bench(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 2)
    else:
        record()
