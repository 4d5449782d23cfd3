-- What a chat prompt's tokens must be when a message's text contains special
-- tokens' text, worked out without lumen's escaping: the template rendered
-- around a placeholder, its two sides tokenized with special tokens parsed and
-- the message text between them tokenized as plain text. Used by
-- spec/lua/injection_spec.lua and, through `lumen run`, by
-- spec/serve/test_hardening.py:
--   build/lumen run spec/lua/prompt_oracle.lua MODEL [all|N]
-- prints {"content": ..., "expected": N, "naive": N} as JSON, where content is
-- the text of every control token (or the first N) and naive is the count an
-- unescaped prompt would have.
local chat = require "lumen.chat"

local M = {}

--- Every control token's text (the tokens plain text never produces), in id order.
function M.control_texts(model, limit)
  local out = {}
  for id = 0, model.n_vocab - 1 do
    if model:piece(id, false) == "" then
      local t = model:piece(id, true)
      if t ~= "" then out[#out + 1] = t end
    end
    if limit and #out >= limit then break end
  end
  return out
end

local function concat(...)
  local out = {}
  for _, t in ipairs{...} do for _, v in ipairs(t) do out[#out + 1] = v end end
  return out
end

--- The prompt's expected ids for one user message with this content.
function M.expected(model, content)
  local mark = "Placeholder7f3a"
  local text = chat.render(model, { { role = "user", content = mark } }, true)
  local at = assert(text:find(mark, 1, true), "the template dropped the message")
  local before, after = text:sub(1, at - 1), text:sub(at + #mark)
  return concat(model:tokenize(before), model:tokenize(content, { parse_special = false }), model:tokenize(after))
end

--- The ids of the same prompt rendered without escaping (what an attacker gets).
function M.naive(model, content)
  local mark = "Placeholder7f3a"
  local text = chat.render(model, { { role = "user", content = mark } }, true)
  local at = text:find(mark, 1, true)
  return model:tokenize(text:sub(1, at - 1) .. content .. text:sub(at + #mark))
end

--- Text that starts and ends with plain words (so nothing merges across the
-- template's edges) around every control token's text.
function M.hostile(model, limit)
  return "Hello " .. table.concat(M.control_texts(model, limit), " x ") .. " bye"
end

if select("#", ...) >= 1 and (...) ~= "prompt_oracle" then
  local name, how = ...
  local model = require("lumen.model").load(name)
  local content = M.hostile(model, how ~= "all" and tonumber(how) or nil)
  local cjson = require "cjson"
  io.write(cjson.encode({ content = content, expected = #M.expected(model, content), naive = #M.naive(model, content) }), "\n")
end

return M
