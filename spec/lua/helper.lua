-- Shared by the specs: the default model (fetched by scripts/setup.sh) loaded once.
local M = {}

function M.model()
  if not M._model then
    M._model = require("lumen.model").load()
  end
  return M._model
end

function M.rss_kb()
  local f = io.open("/proc/self/statm")
  local pages = f:read("*n")
  pages = f:read("*n")
  f:close()
  return pages * 4
end

return M
