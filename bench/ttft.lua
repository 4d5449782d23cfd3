-- Time to first token of one prompt of N tokens (median of 7 fresh sessions).
-- Usage: build/lumen run bench/ttft.lua MODEL [threads] [N]
local lumen = require "lumen"
local path, threads, n = arg[1], tonumber(arg[2] or "2"), tonumber(arg[3] or "128")
if not path or not threads or threads < 1 or not n or n < 1 or n > 512 or n % 1 ~= 0 then
  error("usage: build/lumen run bench/ttft.lua MODEL [threads >= 1] [N in 1..512]", 0)
end
local model = lumen.model.load(path, { threads = threads })
local text = string.rep("The quick brown fox jumps over the lazy dog while the committee debates quantization. ", 40)
local toks = model:tokenize(text)
local p = {}
for i = 1, n do p[i] = toks[i] end
local now = require("lumen.chat").now
local r = {}
for k = 1, 7 do
  local s = model:session{ ctx = n + 8 }
  local a = now()
  s:eval(p)
  local tok = s:logits():argmax()
  r[k] = now() - a
  s:close()
end
table.sort(r)
print(string.format("%s t%d n=%d: TTFT %.1f ms (%.1f tok/s)", path, threads, n, r[4] * 1000, n / r[4]))
