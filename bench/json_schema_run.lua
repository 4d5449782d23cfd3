-- Generates with a JSON-schema constraint for every schema of a corpus, at
-- temperature 1.0 with several seeds, and writes one JSON line per sample
-- (bench/json_schema_check.py validates them with Python's jsonschema).
--   build/lumen run bench/json_schema_run.lua [corpus.json] [out.jsonl] [seeds] [only-names,...]
-- Defaults: spec/fixtures/json_schemas.json, bench/out/json_schema_lumen.jsonl, 3 seeds, all.
local lumen = require "lumen"
local cjson = require "cjson"
local js = require "lumen.json_schema"
local grammar = require "lumen.grammar"
local util = require "lumen.util"

local corpus_path = arg[1] or "spec/fixtures/json_schemas.json"
local out_path = arg[2] or "bench/out/json_schema_lumen.jsonl"
local n_seeds = tonumber(arg[3] or "3")
local only = {}
for name in (arg[4] or ""):gmatch("[^,]+") do only[name] = true end

local corpus = assert(js.decode(assert(util.read_file(corpus_path))))
local model = lumen.model.load(os.getenv("LUMEN_MODEL_ALIAS"))
local session = model:session{ ctx = 2048 }
local out = assert(io.open(out_path, "w"))
local function now() return os.clock() end
local refused, samples = {}, 0
for _, entry in ipairs(corpus) do
  if next(only) == nil or only[entry.name] then
    local t0 = now()
    local gbnf, err = js.to_gbnf(entry.schema)
    local g, cerr
    if gbnf then g, cerr = grammar.compile(gbnf) end
    local compile_ms = (now() - t0) * 1000
    if not g then
      refused[#refused + 1] = entry.name
      out:write(cjson.encode{ name = entry.name, refused = err or cerr }, "\n")
    else
      local schema_text = cjson.encode(entry.schema)
      local prompt = lumen.chat.render(model, {
        { role = "system", content = "You answer with one JSON value and nothing else." },
        { role = "user", content = "Give " .. entry.prompt .. " as JSON matching this JSON Schema: " .. schema_text },
      })
      for seed = 1, n_seeds do
        session:rewind(0)
        local chain = lumen.sampler.chain{ lumen.sampler.grammar(g), lumen.sampler.temperature(1.0), lumen.sampler.dist(),
                                           seed = seed, model = model }
        local pieces = {}
        local t1 = now()
        local opts = { prompt = prompt, sampler = chain, max_tokens = 1536 }
        for piece in session:generate(opts) do pieces[#pieces + 1] = piece end
        samples = samples + 1
        out:write(cjson.encode{ name = entry.name, seed = seed, text = table.concat(pieces), status = chain:status(),
                                reason = opts.result.reason, tokens = opts.result.tokens,
                                compile_ms = compile_ms, seconds = now() - t1 }, "\n")
        out:flush()
      end
      io.stderr:write(string.format("%-24s compiled in %.1f ms\n", entry.name, compile_ms))
    end
  end
end
out:close()
io.stderr:write(string.format("%d samples; refused: %s\n", samples, table.concat(refused, ", ")))
