--- lumen's side of bench/vision/run.sh: image encode time (decode, preprocess, ViT,
-- projector) and time to the first caption token (that + the prompt + one token).
--   build/lumen run bench/vision/bench.lua MMPROJ IMAGE [THREADS]
local lumen = require "lumen"
local vision = require "lumen.vision"
local chat = require "lumen.chat"
local mmproj, image, threads = arg[1], arg[2], tonumber(arg[3] or "2")
local home = os.getenv("LUMEN_MODELS") or (os.getenv("HOME") .. "/.cache/lumen/models")
local text = lumen.model.load(home .. "/SmolLM2-135M-vision.Q4_1.gguf", { threads = threads })
local proj = vision.load(mmproj, text, { threads = threads })
local f = assert(io.open(image, "rb"))
local bytes = f:read("*a")
f:close()
local t0 = chat.now()
local _, g = proj:image_parts(text, bytes, image)
local enc = chat.now() - t0
t0 = chat.now()
local s = text:session{ ctx = 4096 }
s:eval(text:tokenize("<|im_start|>user\n"))
vision.eval_parts(s, (proj:image_parts(text, bytes, image)))
s:eval(text:tokenize("Describe this image.<|im_end|>\n<|im_start|>assistant\n"))
local _ = s:logits():argmax()
local ttft = chat.now() - t0
print(string.format("lumen     encode %.3f s (%d tiles)  ttft %.3f s", enc, g.grid_x * g.grid_y + 1, ttft))
