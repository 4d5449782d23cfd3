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
  caption IMAGE... [-p TEXT]   one caption per image (JPEG, PNG, WebP) with a vision model (see lumen caption --help)
  embed [-m MODEL] [-p TEXT]   embeddings of texts (one per line on stdin) as JSON lines (see lumen embed --help)
  run SCRIPT.lua [args]        run a Lua script with require "lumen" available
  serve [options]              OpenAI-compatible HTTP server (configs/server.yaml; see lumen serve --help)
  batch IN.jsonl -o OUT.jsonl  run an OpenAI Batch API file locally, resumably (see lumen batch --help)
  models                       list the models of configs/models.yaml and their state
  pull ALIAS|URL               download a model over HTTP(S) into the model cache, checked against its pin
  rag index DIR --db FILE      index a folder (.txt .md .html .pdf) into a retrieval store
  rag search QUERY --db FILE   the best chunks for a query (-k N, --json, --mode hybrid|vector|bm25)
  rag ask QUESTION --db FILE   answer from the indexed documents, then list the sources
  bench [-m MODEL] [--pp N] [-n N] [-r RUNS] [-t T] [--kv-type T]   prefill/decode speed as JSON (see bench/run.py)
  quantize IN OUT TYPE         requantize a GGUF file's weights (TYPE: see lumen quantize --help)
  version                      print the version
options:
  -m, --model NAME|PATH    model alias from configs/models.yaml or a .gguf path (default: the registry's default)
  -p, --prompt TEXT        prompt (generate)
  -n, --n-predict N        max tokens to generate (default 256)
  -t, --threads N          compute threads (default 0: all cores)
  -c, --ctx N              context size in tokens
  --kv-type f16|q8_0       the KV cache's element type (q8_0: half the memory; default f16)
  --temp T                 temperature, 0 = greedy     --seed S   sampling seed (default: new each run)
  --top-k K  --top-p P  --min-p P  --repeat-penalty R
  -s, --system TEXT        system prompt (chat)
  --no-stats               do not print speed statistics to stderr
  --debug                  errors with their source position; `lumen run`: a traceback
Every command takes --help. The chat REPL takes /help, /reset, /system TEXT, /stats, /quit.
]]

-- --debug anywhere: errors keep their source position and `lumen run` prints a traceback
local DEBUG = false
for i = #args, 1, -1 do
  if args[i] == "--debug" then DEBUG = true; table.remove(args, i) end
end

local HELP = {
  chat = [[
usage: lumen chat [options] [TEXT]
One reply to TEXT (TEXT "-": read it from stdin), or a REPL without TEXT.
  -m, --model NAME|PATH   model alias or .gguf path (default: the registry's default)
  -s, --system TEXT       system prompt
  -n, --n-predict N       max tokens of a reply (default 256)
  -c, --ctx N             context in tokens (default: min(4096, the model's))
  --kv-type f16|q8_0      the KV cache's element type (q8_0: half the memory; default f16)
  -t, --threads N         compute threads (default 0: all cores)
  --temp T --top-k K --top-p P --min-p P --repeat-penalty R   sampling (default: the model's in configs/models.yaml)
  --seed S                sampling seed (default: a new one each run)
  --no-stats              no speed statistics on stderr
REPL commands: /help, /reset (forget the conversation), /system TEXT (new system prompt, resets),
/stats (toggle speed statistics), /quit or Ctrl-D. A line starting with // sends the text after one /.
When the conversation outgrows the context, the oldest turns are dropped (the system prompt stays).
]],
  generate = [[
usage: lumen generate -p TEXT [options]
Continues TEXT (no chat template); -p - reads the prompt from stdin.
  -m, --model NAME|PATH   model alias or .gguf path (default: the registry's default)
  -n, --n-predict N       tokens to generate, at least 1 (default 256)
  -c, --ctx N             context in tokens (default: prompt + N, up to the model's)
  --kv-type f16|q8_0      the KV cache's element type (q8_0: half the memory; default f16)
  -t, --threads N         compute threads (default 0: all cores)
  --temp T --top-k K --top-p P --min-p P --repeat-penalty R   sampling (default: the model's in configs/models.yaml)
  --seed S                sampling seed (default: a new one each run)
  --no-stats              no speed statistics on stderr
]],
  caption = [[
usage: lumen caption IMAGE... [-p PROMPT] [--mmproj FILE] [-m MODEL] [--json] [options]
One caption per image (JPEG, PNG or WebP), with a text model and its vision projector (llama.cpp's
mmproj GGUF, idefics3/SmolVLM). A bad image is reported (one line on stderr, or a JSON line with
"error") and the others still go; the exit status is 1 when any failed.
  -p, --prompt TEXT       what to ask about each image (default "Describe this image.")
  -m, --model NAME|PATH   the text model (default: the registry's default); an alias may name its
                          projector in configs/models.yaml (mmproj: FILE)
  --mmproj FILE           the projector: a path, or a file name in the model cache
  --json                  JSON lines {"image": PATH, "caption": TEXT} (or "error") on stdout
  --no-progress           no progress bar (shown on a terminal for more than one image)
  -n, --n-predict N       max tokens of a caption (default 64)
  -c, --ctx N             context in tokens (default 4096)
  -t, --threads N         compute threads (default 0: all cores)
  --temp T ...            sampling (default greedy)     --stats   timing on stderr
]],
  bench = [[
usage: lumen bench [-m MODEL] [--pp N] [-n N] [-r RUNS] [--warmup N] [-t THREADS] [-c CTX] [--kv-type f16|q8_0]
Decode runs after the --pp prompt, so --pp 8192 -c 8320 measures decode at depth 8k.
Prefill (--pp tokens, default 512) and decode (-n tokens, default 128) speed as JSON, median of -r runs (default 3).
]],
  quantize = [[
usage: lumen quantize IN.gguf OUT.gguf TYPE [-t THREADS]
Requantizes a GGUF file's weights to TYPE: TYPES.
Norms and biases stay f32; OUT appears only when complete.
]],
  models = [[
usage: lumen models
The models of configs/models.yaml: where each file is, and whether it is verified against its pinned sha256.
]],
  pull = [[
usage: lumen pull ALIAS|URL [--sha256 HEX] [--timeout S] [--connect-timeout S] [-q]
Downloads a model file over HTTP(S) into the model cache ($LUMEN_MODELS, or ~/.cache/lumen/models):
  ALIAS   an entry of configs/models.yaml whose source names a url: (and pins sha256: and size:)
  URL     an http:// or https:// URL, e.g. https://huggingface.co/ORG/REPO/resolve/main/FILE.gguf;
          the file keeps the URL's file name (a URL of a registry entry gets that entry's name and pin)
The file grows in FILE.partial beside its destination; an interrupted pull continues from there
with a Range request (a server that ignores it sends the whole file again). It enters the cache
only when its sha256 matches the pin; one that does not is kept aside as FILE.corrupt and the
pull fails (exit 3). A URL without a pin is kept and its sha256 printed: pin it (sha256: and size:
in its entry, or --sha256 next time). Aliases packaged on PyPI come from scripts/fetch_model.py.
Nothing is ever downloaded otherwise: loading a model only reads the cache.
  --sha256 HEX          the pin for a URL that the registry does not have
  --timeout S           give up after S seconds under 1 KB/s (default 60)
  --connect-timeout S   give up connecting after S seconds (default 30)
  -q, --quiet           no progress (a bar on a terminal, otherwise a line every 5 s)
Exit status: 0 ok (or already there), 1 download failed, 2 usage or registry error, 3 sha256 mismatch.
Environment: LUMEN_MODELS (the model cache), LUMEN_REGISTRY (another registry than configs/models.yaml),
https_proxy / http_proxy (as curl reads them).
]],
  run = [[
usage: lumen run SCRIPT.lua [args]
Runs a Lua script with require "lumen" available; its arguments are in `arg` and `...`.
An error in the script prints one line (with --debug: a traceback) and exits 1.
Environment: LUMEN_ROOT (the source tree), LUMEN_MODELS (the model cache), LUMEN_ISA (scalar|avx2: cap the kernels).
]],
  version = "usage: lumen version\n",
}

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

--- The words of argv from index first on: `for a, take in options(argv, 2) do`, where
-- take() consumes and returns the option's value (a usage error when there is none).
local function options(argv, first)
  local i = first - 1
  local function take()
    local a, v = argv[i], argv[i + 1]
    if v == nil then usage_error(a .. " needs a value") end
    i = i + 1
    return v
  end
  return function()
    i = i + 1
    if argv[i] ~= nil then return argv[i], take end
  end
end

-- f16 | q8_0: the KV cache's element type
local function kv_type_arg(a, v)
  if v ~= "f16" and v ~= "q8_0" then usage_error(a .. " takes f16 or q8_0, got '" .. tostring(v) .. "'") end
  return v
end

--- Parses generation options; positional words are collected in o.words.
local function parse(argv, first)
  local o = { sampling = {}, words = {}, n_predict = 256, stats = true }
  for a, take in options(argv, first) do
    if a == "-h" or a == "--help" then o.help = true
    elseif a == "-m" or a == "--model" then o.model = take()
    elseif a == "-p" or a == "--prompt" then o.prompt = take()
    elseif a == "-n" or a == "--n-predict" then
      o.n_predict = int_arg(a, take(), 0, 2 ^ 20)
      o.n_predict_given = true
      if o.n_predict == 0 then usage_error(a .. " 0 would generate nothing: give at least 1") end
    elseif a == "-t" or a == "--threads" then
      -- 0 = all cores, as in configs/server.yaml
      o.threads = int_arg(a, take(), 0, 256)
      if o.threads == 0 then o.threads = nil end
    elseif a == "-c" or a == "--ctx" then o.ctx = int_arg(a, take(), 1, 2 ^ 24)
    elseif a == "--kv-type" then o.kv_type = kv_type_arg(a, take())
    elseif a == "--temp" then o.sampling.temperature = num_arg(a, take(), 0, 100)
    elseif a == "--top-k" then o.sampling.top_k = int_arg(a, take(), 0, 2 ^ 31 - 1)
    elseif a == "--top-p" then o.sampling.top_p = num_arg(a, take(), 0, 1)
    elseif a == "--min-p" then o.sampling.min_p = num_arg(a, take(), 0, 1)
    elseif a == "--repeat-penalty" then o.sampling.repeat_penalty = num_arg(a, take(), 0.01, 100)
    elseif a == "--seed" then o.sampling.seed = int_arg(a, take(), 0, 2 ^ 53)
    elseif a == "-s" or a == "--system" then o.system = take()
    elseif a == "--pp" then o.prompt_tokens = int_arg(a, take(), 1, 2 ^ 20)
    elseif a == "-r" or a == "--runs" then o.runs = int_arg(a, take(), 1, 1000)
    elseif a == "--warmup" then o.warmup = int_arg(a, take(), 0, 1000)
    elseif a == "--no-stats" then o.stats = false; o.stats_given = true
    elseif a == "--stats" then o.stats = true; o.stats_given = true
    elseif a:sub(1, 1) == "-" and #a > 1 then usage_error("unknown option '" .. a .. "' (try: lumen --help)")
    else o.words[#o.words + 1] = a end
  end
  return o
end

local commands = {}

-- "-" for a text: read it from stdin
local function stdin_if_dash(v)
  if v ~= "-" then return v end
  local s = io.stdin:read("*a") or ""
  return (s:gsub("\n$", ""))
end

function commands.generate(argv)
  local o = parse(argv, 2)
  if o.help then io.write(HELP.generate) return 0 end
  if #o.words > 0 then usage_error("unexpected argument '" .. o.words[1] .. "'") end
  if not o.prompt then usage_error("generate needs a prompt: -p TEXT (or -p - to read it from stdin)") end
  if o.system then usage_error("generate has no system prompt (-s is for chat); put it in the prompt") end
  o.prompt = stdin_if_dash(o.prompt)
  return require("generate").run(o)
end

function commands.chat(argv)
  local o = parse(argv, 2)
  if o.help then io.write(HELP.chat) return 0 end
  if #o.words > 1 then usage_error("chat takes one message; quote it: lumen chat \"TEXT\"") end
  if o.prompt then usage_error("chat takes its message as an argument, not -p: lumen chat \"TEXT\"") end
  o.message = o.words[1] and stdin_if_dash(o.words[1])
  return require("chat").run(o)
end

function commands.run(argv)
  local script = argv[2]
  if script == "-h" or script == "--help" then io.write(HELP.run) return 0 end
  if not script then usage_error("run needs a script: lumen run SCRIPT.lua [args]") end
  local f, err = loadfile(script)
  if not f then usage_error(err) end
  local sargs = { [0] = script }
  for i = 3, #argv do sargs[#sargs + 1] = argv[i] end
  _G.arg = sargs
  -- errors inside the script are the script's: traceback and exit 1 (the host does that)
  local ok, res = xpcall(f, DEBUG and debug.traceback or function(e) return e end, unpack(sargs))
  if not ok then
    io.stderr:write("lumen: error: ", tostring(res), DEBUG and "" or "\n(lumen --debug run ... shows where)", "\n")
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
  --kv-type T        the slots' KV cache: f16 (default) or q8_0 (half the memory)
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
  for a, take in options(argv, 2) do
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
    elseif a == "--kv-type" then o.serve.kv_type = kv_type_arg(a, take())
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
  end
  if not o.config then
    local def = require("lumen.util").root() .. "/configs/server.yaml"
    if require("lumen.util").file_exists(def) then o.config = def end
  end
  return require("serve").run(o)
end

local RAG_USAGE = [[
usage: lumen rag index DIR --db FILE [--embed-model M] [--chunk-tokens N] [--overlap N] [--vectors f32|i8]
       lumen rag search QUERY --db FILE [-k N] [--json] [--mode hybrid|vector|bm25]
       lumen rag ask QUESTION --db FILE [-m CHAT_MODEL] [-k N] [-n N] [--temp T]
  index    re-embeds only changed files, drops deleted ones, reports and skips unreadable
           ones; a killed run leaves the store consistent and the next run finishes it.
           --embed-model: an embedding model alias or path (default minilm, recorded in the store)
           --chunk-tokens (default 200), --overlap (default 32): chunk size and overlap in tokens
  search   -k results (default 5); --mode: how to rank (default hybrid: vectors and BM25 fused);
           --vector-weight W, --bm25-weight W: their weights in the fusion (default 1, 1)
  ask      streams the answer, then the sources it drew on ([n] marks the ones it cited)
]]

function commands.rag(argv)
  local sub = argv[2]
  if sub == nil or sub == "-h" or sub == "--help" then io.write(RAG_USAGE) return sub and 0 or 2 end
  local o = { k = 5, words = {}, sampling = {} }
  for a, take in options(argv, 3) do
    if a == "-h" or a == "--help" then io.write(RAG_USAGE) return 0
    elseif a == "--db" then o.db = take()
    elseif a == "-k" then o.k = int_arg(a, take(), 1, 1000)
    elseif a == "--json" then o.json = true
    elseif a == "--mode" then
      o.mode = take()
      if o.mode ~= "hybrid" and o.mode ~= "vector" and o.mode ~= "bm25" then usage_error("--mode must be hybrid, vector or bm25") end
    elseif a == "--vector-weight" then o.vector_weight = num_arg(a, take(), 0, 1000)
    elseif a == "--bm25-weight" then o.bm25_weight = num_arg(a, take(), 0, 1000)
    elseif a == "--embed-model" then o.embed_model = take()
    elseif a == "--chunk-tokens" then o.max_tokens = int_arg(a, take(), 8, 100000)
    elseif a == "--overlap" then o.overlap = int_arg(a, take(), 0, 100000)
    elseif a == "--vectors" then
      o.vectors = take()
      if o.vectors ~= "f32" and o.vectors ~= "i8" then usage_error("--vectors must be f32 or i8") end
    elseif a == "-m" or a == "--model" then o.model = take()
    elseif a == "-n" or a == "--n-predict" then o.n_predict = int_arg(a, take(), 1, 2 ^ 20)
    elseif a == "--temp" then o.sampling.temperature = num_arg(a, take(), 0, 100)
    elseif a == "-t" or a == "--threads" then o.threads = int_arg(a, take(), 1, 256)
    elseif a:sub(1, 1) == "-" and #a > 1 then usage_error("rag: unknown option '" .. a .. "' (try: lumen rag --help)")
    else o.words[#o.words + 1] = a end
  end
  if not o.db then usage_error("rag " .. sub .. " needs --db FILE") end
  if #o.words ~= 1 then usage_error("rag " .. sub .. " takes one " .. (sub == "index" and "folder" or "quoted text")) end
  local rag = require "rag"
  if sub == "index" then
    local r = require("lumen.ingest").index(o.words[1], o.db, { embed_model = o.embed_model, vectors = o.vectors,
      max_tokens = o.max_tokens, overlap = o.overlap, threads = o.threads })
    io.stderr:write(string.format("indexed %d of %d files (%d unchanged, %d removed, %d skipped): %d chunks in %.1f s; the store holds %d documents, %d chunks\n",
      r.indexed, r.files, r.unchanged, r.removed, r.failed, r.chunks, r.seconds, r.documents, r.total_chunks))
    return 0
  elseif sub == "search" then
    local hits = rag.search(o.db, o.words[1], o)
    local cjson = require "cjson"
    for rank, h in ipairs(hits) do
      if o.json then
        io.write(cjson.encode({ rank = rank, path = h.path, score = h.score, chunk = h.id, text = h.text }), "\n")
      else
        io.write(string.format("%d. %s (%.4f)\n   %s\n", rank, h.path, h.score, (h.text:gsub("%s+", " "))))
      end
    end
    return 0
  elseif sub == "ask" then
    local sampler = next(o.sampling) and require("lumen.sampler").from_config(o.sampling) or nil
    local _, sources = rag.ask(o.db, o.words[1], { model = o.model, k = o.k, mode = o.mode, max_tokens = o.n_predict,
      threads = o.threads, sampler = sampler, on_piece = function(p) io.write(p) io.stdout:flush() end })
    io.write("\n\nSources:\n")
    for _, src in ipairs(sources) do
      io.write(string.format("[%d]%s %s\n", src.n, src.cited and "" or " (not cited)", src.path))
    end
    return 0
  end
  usage_error("unknown rag command '" .. sub .. "' (index, search or ask)")
end

local EMBED_USAGE = [[
usage: lumen embed [options] < texts.txt
Embeddings of texts, one per line on stdin (or -p TEXT, repeatable), written as
JSON lines {"index": i, "embedding": [...]} in input order.
  -m, --model NAME|PATH  an embedding model: alias (minilm, minilm-gguf), a Hugging Face
                         directory (config.json, model.safetensors, tokenizer.json) or a .gguf
  -p, --prompt TEXT      a text to embed (repeatable; then stdin is not read)
  --pooling mean|cls     override the model's pooling (1_Pooling/config.json, bert.pooling_type)
  --no-normalize         no L2 normalization (default: as the model says)
  --max-tokens N         cut texts at N tokens ([CLS] and [SEP] included; default and limit: the model's)
  --no-truncate          a text longer than that is an error naming the limit, instead of being cut
  --batch N              texts per call (default 256; all of them go through one forward pass
                         per 4096 tokens)
  -t, --threads N        compute threads (default: all cores)
  --stats                texts/s and tokens/s on stderr
]]

function commands.embed(argv)
  local o = { prompts = {}, batch = 256, stats = false }
  for a, take in options(argv, 2) do
    if a == "-h" or a == "--help" then io.write(EMBED_USAGE) return 0
    elseif a == "-m" or a == "--model" then o.model = take()
    elseif a == "-p" or a == "--prompt" then o.prompts[#o.prompts + 1] = take()
    elseif a == "--pooling" then
      o.pooling = take()
      if o.pooling ~= "mean" and o.pooling ~= "cls" then usage_error("--pooling: '" .. o.pooling .. "' is not mean or cls") end
    elseif a == "--no-normalize" then o.normalize = false
    elseif a == "--max-tokens" then o.max_tokens = int_arg(a, take(), 2, 2 ^ 20)
    elseif a == "--no-truncate" then o.truncate = false
    elseif a == "--batch" then o.batch = int_arg(a, take(), 1, 2 ^ 20)
    elseif a == "-t" or a == "--threads" then o.threads = int_arg(a, take(), 1, 256)
    elseif a == "--stats" then o.stats = true
    else usage_error("embed: unknown option '" .. a .. "' (try: lumen embed --help)") end
  end
  return require("embed").run(o)
end

function commands.pull(argv)
  local o = { words = {} }
  for a, take in options(argv, 2) do
    if a == "-h" or a == "--help" then io.write(HELP.pull) return 0
    elseif a == "--sha256" then
      o.sha256 = take()
      if not o.sha256:match("^%x+$") or #o.sha256 ~= 64 then usage_error("--sha256: '" .. o.sha256 .. "' is not 64 hex digits") end
    elseif a == "--timeout" then o.timeout = int_arg(a, take(), 1, 86400)
    elseif a == "--connect-timeout" then o.connect_timeout = int_arg(a, take(), 1, 3600)
    elseif a == "-q" or a == "--quiet" then o.quiet = true
    elseif a:sub(1, 1) == "-" and #a > 1 then usage_error("pull: unknown option '" .. a .. "' (try: lumen pull --help)")
    else o.words[#o.words + 1] = a end
  end
  if #o.words ~= 1 then usage_error("pull takes one model alias or URL (try: lumen pull --help)") end
  local pull = require "lumen.pull"
  local ffi = require "ffi"
  pcall(ffi.cdef, "int isatty(int fd);")
  local target = o.words[1]
  local function say(line) io.stderr:write("pull: ", line, "\n") end
  local finish = function() end
  if not o.quiet then
    local label = target:gsub("[?#].*$", ""):match("([^/]+)$") or target
    o.progress, finish = pull.progress_printer(label, io.stderr, ffi.C.isatty(2) == 1)
  end
  o.say = say
  local now = require("lumen.chat").now
  local t0 = now()
  local r, err, kind = pull.run(target, o)
  finish()
  if not r then
    io.stderr:write("lumen: error: ", err, "\n")
    return ({ usage = 2, download = 1, checksum = 3 })[kind] or 1
  end
  local name = r.plan.alias or r.plan.file
  if r.already then
    io.write(string.format("%s: %s (already there%s)\n", name, r.path, r.pinned and ", sha256 ok" or ""))
  else
    if r.restarted then say("the server sent the whole file again (it ignored the Range request, or the file changed since the last run)") end
    local got, secs = r.size - (r.resumed_from or 0), now() - t0
    say(string.format("%.1f MB in %.1f s (%.1f MB/s)%s", got / 1e6, secs, got / 1e6 / math.max(secs, 1e-3),
      (r.resumed_from or 0) > 0 and string.format(", after %.1f MB of an earlier run", r.resumed_from / 1e6) or ""))
    io.write(string.format("%s: %s (%s)\n", name, r.path, r.pinned and "sha256 ok" or "sha256 " .. r.sha256))
  end
  if not r.pinned then
    say(string.format("no sha256 is pinned for it, so nothing checked this file: pin it, with 'sha256: %s' and 'size: %d' " ..
      "in its configs/models.yaml entry (source: {url: ...}), or with --sha256 %s next time", r.sha256, r.size or 0, r.sha256))
  end
  if not r.plan.alias then say("use it with: lumen chat -m " .. r.plan.file) end
  return 0
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
  for a, take in options(argv, 2) do
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
  end
  if not o.input then usage_error("batch needs an input file: lumen batch IN.jsonl -o OUT.jsonl") end
  if not o.output then usage_error("batch needs an output file: -o OUT.jsonl") end
  if o.output == o.input then usage_error("batch: the output must be another file than the input") end
  return require("batch").run(o)
end

function commands.caption(argv)
  local rest, mmproj, json, progress = { argv[1] }, nil, false, true
  local i = 2
  while i <= #argv do
    local a = argv[i]
    if a == "--mmproj" then
      mmproj = argv[i + 1]
      if not mmproj then usage_error("--mmproj needs a value") end
      i = i + 1
    elseif a == "--json" then json = true
    elseif a == "--no-progress" then progress = false
    else rest[#rest + 1] = a end
    i = i + 1
  end
  local o = parse(rest, 2)
  if o.help then io.write(HELP.caption) return 0 end
  if #o.words == 0 then usage_error("caption needs at least one image: lumen caption IMAGE... (see lumen caption --help)") end
  if o.system then usage_error("caption has no system prompt (-s); use -p PROMPT") end
  if not o.stats_given then o.stats = false end
  o.images, o.mmproj, o.json, o.progress = o.words, mmproj, json, progress
  if o.n_predict == 256 and not o.n_predict_given then o.n_predict = 64 end
  return require("caption").run(o)
end

function commands.models(argv)
  if argv[2] == "-h" or argv[2] == "--help" then io.write(HELP.models) return 0 end
  local config = require "lumen.config"
  local reg = config.registry()
  local names = {}
  for k in pairs(reg.models) do names[#names + 1] = k end
  table.sort(names)
  for _, name in ipairs(names) do
    local e = reg.models[name]
    local st = config.state(name)
    local what = ({
      verified = "verified",
      unverified = "fetched (no sha256 pinned)",
      corrupt = "CORRUPT: sha256 differs from the pin; fetch again: rm '" .. tostring(st.path) .. "' && " .. st.hint,
      missing = st.partial and string.format("not fetched (%.1f MB of an interrupted pull): %s continues", st.partial / 1e6, st.hint)
                or "not fetched: " .. st.hint,
    })[st.state]
    io.write(string.format("%-12s %s%s\n    %s%s\n", name, e.description or e.file or "",
      name == reg.default and " (default)" or "", st.path and (st.path .. ": ") or "", what))
  end
  return 0
end

function commands.bench(argv)
  local o = parse(argv, 2)
  if o.help then io.write(HELP.bench) return 0 end
  if #o.words > 0 then usage_error("unexpected argument '" .. o.words[1] .. "'") end
  return require("bench").run(o)
end

function commands.quantize(argv)
  local o = parse(argv, 2)
  local C = require "lumen.ffi"
  if o.help then
    local names = {}
    for t = 0, C.LM_DTYPE_COUNT - 1 do
      if C.lm_quantize_supports(t) then names[#names + 1] = require("ffi").string(C.lm_dtype_name(t)) end
    end
    io.write((HELP.quantize:gsub("TYPES", table.concat(names, " "))))
    return 0
  end
  local inp, out, ty = o.words[1], o.words[2], o.words[3]
  if not (inp and out and ty) or o.words[4] then usage_error("usage: lumen quantize IN.gguf OUT.gguf TYPE") end
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

function commands.version(argv)
  if argv[2] == "-h" or argv[2] == "--help" then io.write(HELP.version) return 0 end
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
-- YAML error, a context overflow) are the user's to fix: one line, exit 2,
-- without the Lua source position the error carries (--debug keeps it).
local msg = tostring(res)
if not DEBUG then msg = msg:gsub("^[^%s:]+%.lua:%d+: ", "") end
io.stderr:write("lumen: error: ", msg, "\n")
return 2
