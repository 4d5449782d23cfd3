-- Batched decode throughput: B sessions, each with a short prompt, advanced one
-- greedy token per step by lumen.model.eval_batch (the server's decode step).
-- Usage: build/lumen run bench/batch_decode.lua [model] [threads] [steps] [B ...]
-- Prints tokens/s per batch size (median of 3 runs) and the ratio to B = 1.
local lumen = require "lumen"
local ffi = require "ffi"
local path = arg[1] or "smollm2"
local threads = tonumber(arg[2] or "2")
local steps = tonumber(arg[3] or "64")
local sizes = {}
for i = 4, #arg do sizes[#sizes + 1] = tonumber(arg[i]) end
if #sizes == 0 then sizes = { 1, 4, 8, 16, 32 } end
local function count(v) return v and v >= 1 and v % 1 == 0 end
if not count(threads) or not count(steps) then error("usage: build/lumen run bench/batch_decode.lua [model] [threads] [steps] [B ...]", 0) end
for _, b in ipairs(sizes) do if not count(b) then error("batch sizes must be whole numbers >= 1", 0) end end

local model = lumen.model.load(path, { threads = threads })
local prompt = model:tokenize("The history of the printing press begins")
local function run(B)
  local sessions, toks = {}, {}
  for i = 1, B do
    local s = model:session{ ctx = #prompt + steps + 8 }
    s:eval(prompt)
    sessions[i], toks[i] = s, s:logits():argmax() - 1 -- argmax is 1-based, token ids 0-based
  end
  local sb, tb = ffi.new("lm_session*[?]", B), ffi.new("int32_t[?]", B)
  local clock = require("lumen.chat").now
  local a = clock()
  for _ = 1, steps do
    lumen.model.eval_batch(sessions, toks, sb, tb)
    for i = 1, B do toks[i] = sessions[i]:logits():argmax() - 1 end
  end
  local dt = clock() - a
  for i = 1, B do sessions[i]:close() end
  return B * steps / dt
end

run(1)
local base
for _, B in ipairs(sizes) do
  local r = {}
  for k = 1, 3 do r[k] = run(B) end
  table.sort(r)
  base = base or (B == 1 and r[2])
  io.write(string.format("B=%-3d %8.1f tok/s%s\n", B, r[2], base and string.format("  (%.2fx B=1)", r[2] / base) or ""))
end
