--- The C API, bound once: `local C = require "lumen.ffi"`.
-- The declarations come from core/include/lumen.h itself (comments and
-- preprocessor lines stripped), so the binding cannot drift from the header.
-- Inside the `lumen` host the symbols are the executable's own (ffi.C);
-- under plain luajit (busted specs) they come from build/liblumen.so.
local ffi = require "ffi"

local function root_dir()
  local env = os.getenv("LUMEN_ROOT")
  if env and env ~= "" then return env end
  local src = debug.getinfo(1, "S").source
  local dir = src:sub(1, 1) == "@" and src:sub(2):match("^(.*)/lua/lumen/[^/]*$")
  return dir or "."
end

local root = root_dir()
local path = root .. "/core/include/lumen.h"
local f, err = io.open(path, "r")
if not f then error("lumen.ffi: cannot read the C API header: " .. tostring(err), 0) end
local header = f:read("*a")
f:close()

header = header:gsub("/%*.-%*/", ""):gsub("//[^\n]*", "")
header = header:gsub("#ifdef __cplusplus.-#endif", "")
header = header:gsub("#[^\n]*", "")
-- a second require (package.loaded cleared) must not redefine the types
if not pcall(ffi.typeof, "lm_model_info") then ffi.cdef(header) end

local C
if pcall(function() return ffi.C.lm_version end) then
  C = ffi.C
else
  local lib = os.getenv("LUMEN_LIB")
  if not lib or lib == "" then lib = root .. "/build/liblumen.so" end
  local ok, res = pcall(ffi.load, lib)
  if not ok then
    error("lumen.ffi: cannot load the lumen library '" .. lib .. "' (build it with scripts/setup.sh): " .. tostring(res), 0)
  end
  C = res
end

return C
