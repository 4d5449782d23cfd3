--- `lumen bench`: prefill, decode and time-to-first-token of one model, measured
-- the way bench/llama_speed.py measures llama.cpp (same filler text, prompt of
-- exactly N tokens, greedy argmax decode, a warm-up run, medians of R runs).
-- Prints one JSON object on stdout.
local ffi = require "ffi"
local M = {}

local FILLER = "The old lighthouse keeper climbed the spiral stairs every evening at dusk, "
  .. "counting the one hundred and twelve steps as his father had done before him. "
  .. "From the lamp room he could see the fishing boats returning to the harbor, "
  .. "their lights scattered across the dark water like fallen stars. "
  .. "He wrote the weather in a leather notebook: wind from the north-east, "
  .. "pressure falling, a thin rain expected before midnight. "

pcall(ffi.cdef, [[
typedef struct lm_rusage { long tv[4]; long maxrss; long rest[13]; } lm_rusage;
int getrusage(int who, lm_rusage *usage);
]])

local function peak_rss_kb()
  local ru = ffi.new("lm_rusage")
  ffi.C.getrusage(0, ru)
  return tonumber(ru.maxrss)
end

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) / 2] or (s[n / 2] + s[n / 2 + 1]) / 2
end

local function round(x, d) local m = 10 ^ d return math.floor(x * m + 0.5) / m end

function M.run(o)
  local lumen = require "lumen"
  local now = require("lumen.chat").now
  local n_prompt, n_gen, runs = o.prompt_tokens or 128, o.n_predict or 128, o.runs or 5
  -- timed in the layout decode ends up in (the interleaved layer matrices, where the CPU has them)
  local model = lumen.model.load(o.model, { threads = o.threads, kv_type = o.kv_type }):wait_layout()
  local ids = {}
  local filler = model:tokenize(FILLER, { parse_special = false })
  while #ids < n_prompt do for _, t in ipairs(filler) do ids[#ids + 1] = t end end
  for i = #ids, n_prompt + 1, -1 do ids[i] = nil end
  local buf = ffi.new("int32_t[?]", n_prompt, ids)
  local s = model:session{ ctx = o.ctx or math.max(512, n_prompt + n_gen + 16), batch = o.batch }
  local logits = s:logits()

  local function one_run()
    s:rewind(0)
    local t0 = now()
    s:eval_raw(buf, n_prompt)
    local t1 = now()
    local tok = logits:argmax() - 1
    local t2 = now()
    for _ = 1, n_gen do
      s:eval(tok)
      tok = logits:argmax() - 1
    end
    local t3 = now()
    return t1 - t0, t2 - t0, t3 - t2
  end

  for _ = 1, o.warmup or 1 do one_run() end -- untimed
  local pre, ttft, dec = {}, {}, {}
  for r = 1, runs do
    local p, f, d = one_run()
    pre[r], ttft[r] = n_prompt / p, f * 1000
    if n_gen > 0 then dec[r] = n_gen / d end
  end
  local info = model:info()
  local function list(t, d) local o2 = {} for i, v in ipairs(t) do o2[i] = tostring(round(v, d)) end return "[" .. table.concat(o2, ", ") .. "]" end
  io.write(string.format(
    '{"engine": "lumen", "version": "%s", "model": "%s", "threads": %d, "prompt_tokens": %d, "gen_tokens": %d, "runs": %d, '
    .. '"isa": "%s", "kv_type": "%s", "prefill_tok_s": %s, "decode_tok_s": %s, "ttft_ms": %s, "peak_rss_kb": %d, "model_file_bytes": %d, '
    .. '"per_run": {"prefill_tok_s": %s, "decode_tok_s": %s, "ttft_ms": %s}}\n',
    lumen.version, (info.path or ""):match("[^/]*$"), o.threads or 0, n_prompt, n_gen, runs,
    os.getenv("LUMEN_ISA") or "auto", s:kv_type(),
    round(median(pre), 2), n_gen > 0 and round(median(dec), 2) or "null", round(median(ttft), 3),
    peak_rss_kb(), info.file_size, list(pre, 2), list(dec, 2), list(ttft, 3)))
  return 0
end

return M
