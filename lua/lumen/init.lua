--- lumen: `local lumen = require "lumen"`.
-- Submodules load on first use: lumen.model, lumen.tensor, lumen.sampler,
-- lumen.template, lumen.yaml, lumen.config, lumen.chat, lumen.grammar, lumen.json_schema.
--
-- Environment variables (lumen, its scripts and the examples read these):
-- LUMEN_ROOT (the source tree; found from the binary otherwise), LUMEN_MODELS
-- (the model cache, before ~/.cache/lumen/models), LUMEN_REGISTRY (another
-- models.yaml), LUMEN_ISA (scalar | avx2: cap the kernels the CPU would get),
-- LUMEN_INTERLEAVE (0: keep the layer matrices in the file's layout rather than
-- decode's interleaved one, for comparisons: the same results on the legacy
-- types; the K-quants then decode through their single-row kernels), LUMEN_API_KEYS (lumen serve's keys, comma-separated), LUMEN_LIB (the shared
-- library plain luajit binds), LUMEN_ASAN (the sanitizer build's test runs).
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
