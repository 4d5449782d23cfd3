-- One decode measurement for bench/grammar_speed.py: generates from a fixed
-- prompt with or without a JSON-schema constraint and prints JSON with the
-- decode rate (tokens after the first, over the time after the first).
--   build/lumen run bench/grammar_speed.lua grammar|free SCHEMA_NAME THREADS MAX_TOKENS SEED
local lumen = require "lumen"
local cjson = require "cjson"
local js = require "lumen.json_schema"
local util = require "lumen.util"
local mode, name, threads, max_tokens, seed = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5])
local corpus = assert(js.decode(assert(util.read_file("spec/fixtures/json_schemas.json"))))
local entry
for _, e in ipairs(corpus) do if e.name == name then entry = e end end
local model = lumen.model.load(os.getenv("LUMEN_MODEL_ALIAS"), { threads = threads })
local clock = require("ffi")
clock.cdef[[ typedef struct { long tv_sec; long tv_nsec; } lm_bench_ts; int clock_gettime(int, lm_bench_ts *); ]]
local ts = clock.new("lm_bench_ts")
local function now() clock.C.clock_gettime(1, ts) return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9 end
local t0 = now()
local links = { lumen.sampler.top_k(40), lumen.sampler.temperature(1.0), lumen.sampler.dist(), seed = seed, model = model }
if mode == "grammar" then table.insert(links, 1, lumen.sampler.json_schema(entry.schema)) end
local chain = lumen.sampler.chain(links)
local compile_s = now() - t0
local prompt = lumen.chat.render(model, { { role = "user", content = "Give " .. entry.prompt .. " as JSON." } })
local session = model:session{ ctx = 2048 }
local first, last, n = nil, nil, 0
for _ in session:generate{ prompt = prompt, sampler = chain, max_tokens = max_tokens, on_token = function()
  n = n + 1
  if n == 1 then first = now() end
  last = now()
end } do end
print(cjson.encode{ impl = "lumen", mode = mode, tokens = n, tok_s = (n - 1) / (last - first), compile_ms = compile_s * 1000 })
