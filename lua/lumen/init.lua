--- lumen: `local lumen = require "lumen"`.
-- Submodules load on first use: lumen.model, lumen.tensor, lumen.sampler,
-- lumen.template, lumen.yaml, lumen.config, lumen.chat, lumen.grammar, lumen.json_schema.
local ffi = require "ffi"
local C = require "lumen.ffi"

local lumen = { version = ffi.string(C.lm_version()) }

local lazy = {
  model = "lumen.model", tensor = "lumen.tensor", sampler = "lumen.sampler",
  template = "lumen.template", yaml = "lumen.yaml", config = "lumen.config",
  chat = "lumen.chat", util = "lumen.util", grammar = "lumen.grammar", json_schema = "lumen.json_schema", json_text = "lumen.json_text",
}

return setmetatable(lumen, {
  __index = function(t, k)
    local name = lazy[k]
    if not name then return nil end
    local m = require(name)
    rawset(t, k, m)
    return m
  end,
})
