-- The single-stream side of bench/batch_throughput.py: the chat requests of an
-- OpenAI batch file, one after the other, as `lumen generate` decodes (one
-- session, greedy unless the body says otherwise, the same validation and
-- prompt as `lumen batch`). Prints {"requests", "tokens", "seconds"} as JSON.
-- Usage: build/lumen run bench/single_stream.lua IN.jsonl [max_requests] [threads]
local lumen = require "lumen"
local openai = require "lumen.openai"
local scheduler = require "lumen.scheduler"
local clock = require("lumen.chat").now
local path, limit, threads = arg[1], tonumber(arg[2] or "1e9"), tonumber(arg[3] or "0")
if not path then error("usage: build/lumen run bench/single_stream.lua IN.jsonl [max_requests] [threads]", 0) end
local model = lumen.model.load(nil, { threads = threads > 0 and threads or nil })
local sched = scheduler.new{ slots = 1 }
local entry = sched:add_model(model.alias or "model", model, 2048)
local session = entry.slots[1].session
local n, tokens = 0, 0
local t0 = clock()
for line in io.lines(path) do
  if n >= limit then break end
  local req = openai.json.decode(line)
  local job = scheduler.prepare(entry, openai.chat_request(req.body, entry.sampling))
  session:rewind(0)
  session:eval_raw(job.prompt_buf, job.prompt_tokens)
  local opts = { sampler = lumen.sampler.from_config(job.sampling), max_tokens = job.max_tokens }
  for _ in session:generate(opts) do end
  tokens = tokens + opts.result.tokens
  n = n + 1
end
io.write(openai.encode({ requests = n, tokens = tokens, seconds = clock() - t0 }), "\n")
