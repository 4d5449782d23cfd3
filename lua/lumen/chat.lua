--- Chat: messages -> the model's own chat template -> a session that keeps the
-- conversation's KV cache between turns (only the new tokens are evaluated).
--   local chat = require "lumen.chat"
--   local conv = chat.conversation(model, {system = "Be brief."})
--   local reply, stats = conv:say("Hello!", function(piece) io.write(piece) end)
local template = require "lumen.template"
local tool_format = require "lumen.tool_format"
local util = require "lumen.util"

local M = {}
local Conv = {}
Conv.__index = Conv

local compiled = setmetatable({}, { __mode = "k" })

--- Messages as the template sees them. Their text (content, names, tool
-- results: every string but a role) is untrusted: a control token's text in it
-- ("<|im_end|>") must stay text when the rendered prompt is tokenized with
-- special tokens parsed, or a user could close their turn and write the
-- system's. Model:escape_special marks it so; ordinary text is unchanged. A
-- model's registry entry may say `special_in_content: true` for trusted local
-- use, where message text may carry control tokens on purpose.
local function escaped(model, messages)
  if model.entry and model.entry.special_in_content == true then return messages end
  local function esc(v, key)
    if type(v) == "string" then return key == "role" and v or model:escape_special(v) end
    if type(v) ~= "table" or v == template.none then return v end
    local t = {}
    for k, x in pairs(v) do t[k] = esc(x, k) end
    setmetatable(t, getmetatable(v))
    local order = template.key_order(v)
    if order then template.dict(t, order) end
    return t
  end
  return esc(messages)
end

-- built-in templates a registry entry may name (chat_template: chatml)
local BUILTIN = {
  chatml = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        .. "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
}

--- The model's chat template: its registry entry's `chat_template` (a built-in
-- name or a .jinja file, relative to the source tree), else the file's own.
-- A model with neither is refused for chat, never given a foreign format.
function M.template_source(model)
  local info = model._info or model:info()
  model._info = info
  local named = model.entry and model.entry.chat_template
  if named then
    if BUILTIN[named] then return BUILTIN[named] end
    local path = named:sub(1, 1) == "/" and named or (util.root() .. "/" .. named)
    local src, err = util.read_file(path)
    if not src then error(string.format("configs/models.yaml: chat_template '%s' of model '%s': %s", named, tostring(model.alias), tostring(err)), 0) end
    return src
  end
  if info.chat_template and info.chat_template ~= "" then return info.chat_template end
  error(string.format("model '%s' has no chat template (a base model?): use `lumen generate -p TEXT`, or name one " ..
                      "for its alias in configs/models.yaml (chat_template: chatml, or a .jinja file)",
                      model.alias or model.path), 0)
end

local formats = setmetatable({}, { __mode = "k" })

--- The model's tool-call format: an entry of lumen.tool_format's FORMATS when
-- its chat template has its own, else nil (lumen's JSON format applies).
function M.tool_format(model)
  local f = formats[model]
  if f == nil then
    f = tool_format.detect(M.template_source(model)) or false
    formats[model] = f
  end
  return f or nil
end

--- Renders messages ({role=, content=}...) with the model's chat template,
-- for tokenizing with special tokens parsed (message text stays text). An
-- assistant message may carry `tool_calls` ({{id, name, arguments}...}) and a
-- tool result `tool_call_id`: they reach the template in its own tool format
-- or as lumen's JSON (lumen.tool_format.history). `vars` adds template
-- variables: `tools` (OpenAI's tool list, for a template with a tool format),
-- or a template's own switches (`enable_thinking = false`).
function M.render(model, messages, add_generation_prompt, vars)
  local info = model._info or model:info()
  model._info = info
  local f = compiled[model]
  if not f then
    f = template.compile(M.template_source(model))
    compiled[model] = f
  end
  local ctx = {}
  for k, v in pairs(vars or {}) do ctx[k] = v end
  if ctx.tools then ctx.tools = tool_format.template_tools(escaped(model, ctx.tools)) end
  ctx.messages = escaped(model, tool_format.history(M.tool_format(model), messages))
  ctx.add_generation_prompt = add_generation_prompt ~= false
  ctx.bos_token = info.bos_text or ""
  ctx.eos_token = info.eos_text or ""
  return f(ctx)
end

--- A conversation. opts: system (prompt), sampler, ctx (context tokens), max_tokens.
function M.conversation(model, opts)
  opts = opts or {}
  local self = setmetatable({
    model = model,
    session = model:session{ ctx = opts.ctx },
    sampler = opts.sampler,
    max_tokens = opts.max_tokens or 512,
    messages = {},
    system = opts.system,
  }, Conv)
  self:reset()
  return self
end

--- Forgets the conversation; the system prompt stays.
function Conv:reset()
  self.messages = {}
  if self.system and self.system ~= "" then
    self.messages[1] = { role = "system", content = self.system }
  end
end

--- A new system prompt (nil or "" removes it) for the turns that follow.
function Conv:set_system(text)
  self.system = text
  if self.messages[1] and self.messages[1].role == "system" then
    if text and text ~= "" then self.messages[1].content = text else table.remove(self.messages, 1) end
  elseif text and text ~= "" then
    table.insert(self.messages, 1, { role = "system", content = text })
  end
end

local function now()
  local ffi = require "ffi"
  if not M._clock then
    pcall(ffi.cdef, "typedef struct lm_timespec { long tv_sec; long tv_nsec; } lm_timespec; int clock_gettime(int, lm_timespec *);")
    M._clock = ffi.new("lm_timespec")
  end
  ffi.C.clock_gettime(1, M._clock)
  return tonumber(M._clock.tv_sec) + tonumber(M._clock.tv_nsec) * 1e-9
end
M.now = now

--- Adds a user message, generates the reply (streamed to on_piece), records it.
-- Returns the reply text and stats {prompt_tokens, prompt_s, tokens, decode_s, ttft_s, reason}.
function Conv:say(text, on_piece)
  util.check_type("say", "text", text, "string")
  local model, s = self.model, self.session
  self.messages[#self.messages + 1] = { role = "user", content = text }
  -- room for a reply: when the conversation would leave less, its oldest turns
  -- go (the system prompt stays), and the caller hears how many (stats.dropped)
  local reserve = math.min(self.max_tokens, math.floor(s:ctx() / 4))
  local dropped = 0
  local prompt, buf, n
  while true do
    prompt = M.render(model, self.messages, true)
    buf, n = model:_encode(prompt, false, true)
    if n + reserve <= s:ctx() then break end
    local first = (self.messages[1].role == "system") and 2 or 1
    if first >= #self.messages then break end -- only the new message is left
    table.remove(self.messages, first)
    if self.messages[first] and self.messages[first].role == "assistant" and first < #self.messages then
      table.remove(self.messages, first)
    end
    dropped = dropped + 1
  end
  -- reuse the longest prefix already in the KV cache
  local keep = s:common_prefix(buf, n)
  if n >= s:ctx() then
    table.remove(self.messages)
    error(string.format("the conversation (%d tokens) does not fit the context of %d tokens%s", n, s:ctx(),
                        #self.messages <= 1 and " (the message alone; a larger -c?)" or "; /reset to start over"), 2)
  end
  s:rewind(keep)
  local sampler = self.sampler or require("lumen.sampler").for_model(model)
  self.sampler = sampler
  sampler:reset()
  local t0 = now()
  s:eval_raw(buf + keep, n - keep)
  local t1 = now()
  local gen_opts = { sampler = sampler, max_tokens = math.min(self.max_tokens, s:ctx() - s:pos()) }
  local parts, t_first = {}, nil
  for piece in s:generate(gen_opts) do
    t_first = t_first or now()
    parts[#parts + 1] = piece
    if on_piece then on_piece(piece) end
  end
  local t2 = now()
  local reply = table.concat(parts)
  self.messages[#self.messages + 1] = { role = "assistant", content = reply }
  local r = gen_opts.result
  return reply, {
    prompt_tokens = n - keep, prompt_s = t1 - t0, tokens = r.tokens,
    decode_s = t2 - (t_first or t2), ttft_s = (t_first or t2) - t0, reason = r.reason,
    cached_tokens = keep, dropped = dropped, context_full = r.reason == "length" and s:pos() >= s:ctx(),
  }
end

--- One line of statistics, as printed to stderr.
function M.format_stats(st, threads)
  local dec_n = math.max(st.tokens - 1, 0)
  return string.format(
    "prompt: %d tokens in %.3f s (%.1f tok/s) | decode: %d tokens in %.3f s (%.1f tok/s) | time to first token: %.1f ms%s",
    st.prompt_tokens, st.prompt_s, st.prompt_s > 0 and st.prompt_tokens / st.prompt_s or 0,
    dec_n, st.decode_s, st.decode_s > 0 and dec_n / st.decode_s or 0, st.ttft_s * 1e3,
    threads and (" | threads: " .. threads) or "")
end

return M
