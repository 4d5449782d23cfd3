--- `lumen` subcommands. The host (core/cli/host.c) runs this file with the
-- command line; it returns the exit status. Usage errors and bad input print
-- one line "lumen: error: ..." and exit 2; a bug in a script run with
-- `lumen run` prints the error with a traceback and exits 1.
local args = { ... }

local USAGE = [[
usage: lumen <command> [options]
commands:
  chat [options] [TEXT]        chat with a model: one reply to TEXT, or a REPL without TEXT
  generate -p TEXT [options]   continue TEXT (no chat template)
  run SCRIPT.lua [args]        run a Lua script with require "lumen" available
  serve [options]              OpenAI-compatible HTTP server (configs/server.yaml; see lumen serve --help)
  batch IN.jsonl -o OUT.jsonl  run an OpenAI Batch API file locally, resumably (see lumen batch --help)
  models                       list the models of configs/models.yaml and their state
  bench [-m MODEL] [--pp N] [-n N] [-r RUNS] [-t T]   prefill/decode speed as JSON (see bench/run.py)
  quantize IN OUT TYPE         requantize a GGUF file's weights (q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k f16 bf16 f32)
  version                      print the version
options:
  -m, --model NAME|PATH    model alias from configs/models.yaml or a .gguf path (default: the registry's default)
  -p, --prompt TEXT        prompt (generate)
  -n, --n-predict N        max tokens to generate (default 256)
  -t, --threads N          compute threads (default: all cores)
  -c, --ctx N              context size in tokens
  --temp T                 temperature, 0 = greedy     --seed S          sampling seed
  --top-k K  --top-p P  --min-p P  --repeat-penalty R
  -s, --system TEXT        system prompt (chat)
  --no-stats               do not print speed statistics to stderr
]]

local UsageError = {}
UsageError.__index = UsageError
local function usage_error(msg) error(setmetatable({ msg = msg }, UsageError), 0) end

local function int_arg(opt, v, lo, hi)
  if v == nil then usage_error(opt .. " needs a value") end
  local n = tonumber(v)
  if not n or n ~= math.floor(n) or not v:match("^%s*[-+]?%d+%s*$") then usage_error(opt .. ": '" .. v .. "' is not an integer") end
  if n < lo or n > hi then usage_error(string.format("%s: %d is out of range [%d, %d]", opt, n, lo, hi)) end
  return n
end

local function num_arg(opt, v, lo, hi)
  if v == nil then usage_error(opt .. " needs a value") end
  local n = tonumber(v)
  if not n or n ~= n or n == math.huge or n == -math.huge then usage_error(opt .. ": '" .. v .. "' is not a number") end
  if n < lo or n > hi then usage_error(string.format("%s: %g is out of range [%g, %g]", opt, n, lo, hi)) end
  return n
end

--- Parses generation options; positional words are collected in o.words.
local function parse(argv, first)
  local o = { sampling = {}, words = {}, n_predict = 256, stats = true }
  local i = first
  while i <= #argv do
    local a, v = argv[i], argv[i + 1]
    local function take() if v == nil then usage_error(a .. " needs a value") end i = i + 1 return v end
    if a == "-m" or a == "--model" then o.model = take()
    elseif a == "-p" or a == "--prompt" then o.prompt = take()
    elseif a == "-n" or a == "--n-predict" then o.n_predict = int_arg(a, take(), 0, 2 ^ 20)
    elseif a == "-t" or a == "--threads" then o.threads = int_arg(a, take(), 1, 256)
    elseif a == "-c" or a == "--ctx" then o.ctx = int_arg(a, take(), 1, 2 ^ 24)
    elseif a == "--temp" then o.sampling.temperature = num_arg(a, take(), 0, 100)
    elseif a == "--top-k" then o.sampling.top_k = int_arg(a, take(), 0, 2 ^ 31 - 1)
    elseif a == "--top-p" then o.sampling.top_p = num_arg(a, take(), 0, 1)
    elseif a == "--min-p" then o.sampling.min_p = num_arg(a, take(), 0, 1)
    elseif a == "--repeat-penalty" then o.sampling.repeat_penalty = num_arg(a, take(), 0.01, 100)
    elseif a == "--seed" then o.sampling.seed = int_arg(a, take(), 0, 2 ^ 53)
    elseif a == "-s" or a == "--system" then o.system = take()
    elseif a == "--pp" then o.prompt_tokens = int_arg(a, take(), 1, 2 ^ 20)
    elseif a == "-r" or a == "--runs" then o.runs = int_arg(a, take(), 1, 1000)
    elseif a == "--no-stats" then o.stats = false
    elseif a == "--stats" then o.stats = true
    elseif a:sub(1, 1) == "-" and #a > 1 then usage_error("unknown option '" .. a .. "' (try: lumen --help)")
    else o.words[#o.words + 1] = a end
    i = i + 1
  end
  return o
end

local commands = {}

function commands.generate(argv)
  local o = parse(argv, 2)
  if #o.words > 0 then usage_error("unexpected argument '" .. o.words[1] .. "'") end
  if not o.prompt then usage_error("generate needs a prompt: -p TEXT") end
  return require("generate").run(o)
end

function commands.chat(argv)
  local o = parse(argv, 2)
  if #o.words > 1 then usage_error("chat takes one message; quote it: lumen chat \"TEXT\"") end
  o.message = o.words[1]
  return require("chat").run(o)
end

function commands.run(argv)
  local script = argv[2]
  if not script then usage_error("run needs a script: lumen run SCRIPT.lua [args]") end
  local f, err = loadfile(script)
  if not f then usage_error(err) end
  local sargs = { [0] = script }
  for i = 3, #argv do sargs[#sargs + 1] = argv[i] end
  _G.arg = sargs
  -- errors inside the script are the script's: traceback and exit 1 (the host does that)
  local ok, res = xpcall(f, debug.traceback, unpack(sargs))
  if not ok then
    io.stderr:write("lumen: error: ", tostring(res), "\n")
    return 1
  end
  return type(res) == "number" and res or 0
end

local SERVE_USAGE = [[
usage: lumen serve [options]
  --config FILE      server settings (default: configs/server.yaml when it exists)
  --host ADDR        address to bind (default 127.0.0.1)
  --port N           port (default 8080; 0 = any free port)
  --port-file FILE   write the port there once listening
  -m, --model NAME   model alias or .gguf path to serve (repeat for several; the first is the default)
  --slots N          concurrent sequences per model (default 8)
  -c, --ctx N        context tokens per slot (default 2048)
  --queue N          requests that may wait for a slot before 429 (default 64)
  --api-key-file F   require 'Authorization: Bearer KEY' with a key from F: one per line,
                     or a .yaml list of {key, name, limits} (also: LUMEN_API_KEYS=k1,k2)
  --idle-timeout S   drop connections idle this long, and streams whose client
                     reads nothing for this long (default 30)
  -t, --threads N    compute threads (default: all cores)
  --data-dir DIR     enable /v1/files and /v1/batches, stored in DIR (batches run below live
                     requests and resume when the server starts again with the same DIR)
SIGTERM or Ctrl-C: stop taking requests, finish the running ones, exit 0.
]]

function commands.serve(argv)
  local o = { serve = {} }
  local i = 2
  while i <= #argv do
    local a, v = argv[i], argv[i + 1]
    local function take() if v == nil then usage_error(a .. " needs a value") end i = i + 1 return v end
    if a == "-h" or a == "--help" then io.write(SERVE_USAGE) return 0
    elseif a == "--config" then o.config = take()
    elseif a == "--host" then o.serve.host = take()
    elseif a == "--port" then o.serve.port = int_arg(a, take(), 0, 65535)
    elseif a == "--port-file" then o.port_file = take()
    elseif a == "-m" or a == "--model" then
      if o.model then o.extra_models = o.extra_models or {}; o.extra_models[#o.extra_models + 1] = take()
      else o.model = take() end
    elseif a == "--slots" then o.serve.slots = int_arg(a, take(), 1, 256)
    elseif a == "-c" or a == "--ctx" then o.ctx = int_arg(a, take(), 16, 2 ^ 20)
    elseif a == "--queue" then o.serve.queue_limit = int_arg(a, take(), 0, 100000)
    elseif a == "--api-key-file" then o.serve.api_key_file = take()
    elseif a == "--api-key" then
      -- a key on the command line shows in `ps` to every user of the machine
      usage_error("serve: --api-key would show the key to every user of this machine (ps); "
                  .. "put it in a file (--api-key-file FILE, one key per line) or in LUMEN_API_KEYS")
    elseif a == "--idle-timeout" then o.serve.idle_s = int_arg(a, take(), 1, 86400)
    elseif a == "--data-dir" then o.serve.data_dir = take()
    elseif a == "-t" or a == "--threads" then o.threads = int_arg(a, take(), 1, 256)
    else usage_error("serve: unknown option '" .. a .. "' (try: lumen serve --help)") end
    i = i + 1
  end
  if not o.config then
    local def = require("lumen.util").root() .. "/configs/server.yaml"
    if require("lumen.util").file_exists(def) then o.config = def end
  end
  return require("serve").run(o)
end

local BATCH_USAGE = [[
usage: lumen batch IN.jsonl -o OUT.jsonl [options]
       lumen batch FOLDER --pipeline SCRIPT.lua -o OUT.jsonl [options]
  IN.jsonl              OpenAI Batch API input: one {custom_id, method, url, body} per line;
                        url /v1/chat/completions or /v1/completions
  --pipeline SCRIPT     the input is a folder: each file in it is one request, whose body
                        SCRIPT makes (it returns {url = ..., request = function(doc) -> body},
                        doc = {name, path, text, size}); custom_id = the file name
  -o, --output FILE     output (OpenAI's batch output format), written whole at the end;
                        progress is journaled in FILE.journal (SQLite): rerun the same
                        command after a crash or kill and it carries on
  -m, --model NAME      model alias or .gguf path (default: the registry's default)
  --slots N             sequences decoded together (default 32)
  -c, --ctx N           context tokens per sequence (default 2048)
  -t, --threads N       compute threads (default: all cores)
  --restart             forget the journal (needed when the input or model changed)
  --max-line-bytes N    longer input lines become error entries (default 8388608)
  --progress MODE       bar | json | none (default: bar on a terminal, else a JSON line every 5 s)
]]

function commands.batch(argv)
  local o = { slots = 32, ctx = 2048, max_line_bytes = 8 * 1048576 }
  local i = 2
  while i <= #argv do
    local a, v = argv[i], argv[i + 1]
    local function take() if v == nil then usage_error(a .. " needs a value") end i = i + 1 return v end
    if a == "-h" or a == "--help" then io.write(BATCH_USAGE) return 0
    elseif a == "-o" or a == "--output" then o.output = take()
    elseif a == "-m" or a == "--model" then o.model = take()
    elseif a == "--slots" then o.slots = int_arg(a, take(), 1, 256)
    elseif a == "-c" or a == "--ctx" then o.ctx = int_arg(a, take(), 16, 2 ^ 20)
    elseif a == "-t" or a == "--threads" then o.threads = int_arg(a, take(), 1, 256)
    elseif a == "--restart" then o.restart = true
    elseif a == "--pipeline" then o.pipeline = take()
    elseif a == "--max-line-bytes" then o.max_line_bytes = int_arg(a, take(), 16, 2 ^ 31 - 1)
    elseif a == "--progress" then
      o.progress = take()
      if o.progress ~= "bar" and o.progress ~= "json" and o.progress ~= "none" then usage_error("--progress: bar, json or none, not '" .. o.progress .. "'") end
    elseif a:sub(1, 1) == "-" and #a > 1 then usage_error("batch: unknown option '" .. a .. "' (try: lumen batch --help)")
    elseif o.input then usage_error("batch takes one input file; got '" .. o.input .. "' and '" .. a .. "'")
    else o.input = a end
    i = i + 1
  end
  if not o.input then usage_error("batch needs an input file: lumen batch IN.jsonl -o OUT.jsonl") end
  if not o.output then usage_error("batch needs an output file: -o OUT.jsonl") end
  if o.output == o.input then usage_error("batch: the output must be another file than the input") end
  return require("batch").run(o)
end

function commands.models()
  local config = require "lumen.config"
  local reg = config.registry()
  local names = {}
  for k in pairs(reg.models) do names[#names + 1] = k end
  table.sort(names)
  for _, name in ipairs(names) do
    local e = reg.models[name]
    local where = "not fetched (scripts/fetch_model.py " .. name .. ")"
    for _, dir in ipairs(config.model_dirs()) do
      local p = dir .. "/" .. tostring(e.file)
      if require("lumen.util").file_exists(p) then where = p break end
    end
    io.write(string.format("%-12s %s%s\n    %s\n", name, e.description or e.file or "",
      name == reg.default and " (default)" or "", where))
  end
  return 0
end

function commands.bench(argv)
  local o = parse(argv, 2)
  if #o.words > 0 then usage_error("unexpected argument '" .. o.words[1] .. "'") end
  return require("bench").run(o)
end

function commands.quantize(argv)
  local o = parse(argv, 2)
  local inp, out, ty = o.words[1], o.words[2], o.words[3]
  if not (inp and out and ty) or o.words[4] then usage_error("usage: lumen quantize IN.gguf OUT.gguf TYPE") end
  local C = require "lumen.ffi"
  local dtype = C.lm_dtype_from_name(ty)
  if dtype < 0 then usage_error("unknown type '" .. ty .. "'") end
  if inp == out then usage_error("the output must be another file than the input") end
  local chat = require "lumen.chat"
  local t0 = chat.now()
  if C.lm_quantize_file(inp, out, dtype, o.threads or 0) ~= 0 then
    error(require("lumen.util").last_error(), 0)
  end
  io.stderr:write(string.format("quantized %s -> %s (%s) in %.1f s\n", inp, out, ty, chat.now() - t0))
  return 0
end

function commands.version()
  io.write("lumen ", require("lumen").version, "\n")
  return 0
end

local function main()
  local cmd = args[1]
  if cmd == nil then io.stderr:write(USAGE) return 2 end
  if cmd == "-h" or cmd == "--help" or cmd == "help" then io.write(USAGE) return 0 end
  if cmd == "--version" then cmd = "version" end
  local f = commands[cmd]
  if not f then usage_error("unknown command '" .. cmd .. "' (try: lumen --help)") end
  return f(args)
end

local ok, res = pcall(main)
if ok then return res or 0 end
if getmetatable(res) == UsageError then
  io.stderr:write("lumen: error: ", res.msg, "\n")
  return 2
end
-- Errors raised by lumen's modules on bad input (a missing or corrupt model, a
-- YAML error, a context overflow) are the user's to fix: one line, exit 2.
io.stderr:write("lumen: error: ", tostring(res), "\n")
return 2
