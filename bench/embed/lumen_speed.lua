-- texts/s of model:embed on batches of short sentences (bench/embed/speed.py runs it).
-- usage: lumen run bench/embed/lumen_speed.lua MODEL SENTENCES.txt BATCH SECONDS [THREADS]
local lumen = require "lumen"
local chat = require "lumen.chat"
local model_path, file, batch, seconds, threads = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5])
local texts = {}
for line in io.lines(file) do texts[#texts + 1] = line end
local model = lumen.model.load(model_path, { threads = threads })
local function run_batch(k)
  local part = {}
  for i = 1, batch do part[i] = texts[(k * batch + i - 1) % #texts + 1] end
  return model:embed(part)
end
run_batch(0)   -- warm-up: oneDNN primitives, workspace
local n, t0, k = 0, chat.now(), 1
while chat.now() - t0 < seconds do
  run_batch(k)
  n, k = n + batch, k + 1
end
io.write(string.format('{"texts_per_s": %.3f, "texts": %d}\n', n / (chat.now() - t0), n))
