--- Document readers for RAG ingest (and batch document pipelines): a file's
-- text by its kind. Plain text and Markdown as they are, HTML through libxml2
-- (lm_html_to_text), PDF through poppler's pdftotext. A file that is not text
-- (NUL bytes, invalid UTF-8), unreadable or corrupt is an error naming it.
local ffi = require "ffi"
local C = require "lumen.ffi"
local util = require "lumen.util"

local M = {}

M.KINDS = { txt = "text", text = "text", md = "text", markdown = "text", html = "html", htm = "html", pdf = "pdf" }

--- The kind of a path by its extension, or nil for files ingest skips. A name
-- without an extension (README, LICENSE, GPL-3, Apache-2.0) is read as text.
function M.kind(path)
  local name = path:match("([^/]+)$") or path
  local ext = name:match("%.(%a[%w]*)$")
  if not ext then return "text" end
  return M.KINDS[ext:lower()]
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function check_text(path, s)
  if s:find("\0", 1, true) then error(path .. ": not a text file (it has NUL bytes)", 0) end
  if not C.lm_utf8_valid(s, #s) then error(path .. ": not UTF-8 text", 0) end
  return s
end

--- The visible text of an HTML page (lm_html_to_text, libxml2).
function M.html_to_text(html)
  local out, len = ffi.new("char*[1]"), ffi.new("size_t[1]")
  if C.lm_html_to_text(html, #html, out, len) ~= 0 then util.c_error("html") end
  local s = ffi.string(out[0], len[0])
  C.lm_free(out[0])
  return s
end

--- The text of a file (kind: "text" | "html" | "pdf", default by extension).
function M.read(path, kind)
  kind = kind or M.kind(path)
  if not kind then error(path .. ": unsupported file type (txt, md, html, pdf)", 0) end
  if kind == "pdf" then
    -- pdftotext prints its errors and exits non-zero on a damaged file; the shell
    -- appends its status (LuaJIT's popen:close does not report it)
    local errf = os.tmpname()
    local p = io.popen("pdftotext -q -enc UTF-8 " .. shell_quote(path) .. " - 2>" .. shell_quote(errf) .. "; printf '\\n%d' $?", "r")
    local out = p:read("*a")
    p:close()
    local err = util.read_file(errf) or ""
    os.remove(errf)
    local s, code = out:match("^(.*)\n(%d+)$")
    if code ~= "0" then
      error(string.format("%s: not a readable PDF (pdftotext exit %s%s)", path, tostring(code),
                          err ~= "" and (": " .. err:gsub("%s+$", "")) or ""), 0)
    end
    return check_text(path, (s:gsub("\f", "\n\n")))
  end
  local s, err = util.read_file(path)
  if not s then error(path .. ": cannot read: " .. tostring(err), 0) end
  if kind == "html" then
    check_text(path, s)
    return M.html_to_text(s)
  end
  return check_text(path, s)
end

--- Regular files under dir (recursive, sorted, relative paths).
function M.list_files(dir)
  local out, len, n = ffi.new("char*[1]"), ffi.new("size_t[1]"), ffi.new("int64_t[1]")
  if C.lm_list_files(dir, out, len, n) ~= 0 then util.c_error() end
  local all = ffi.string(out[0], len[0])
  C.lm_free(out[0])
  local files = {}
  for f in all:gmatch("([^%z]+)%z") do files[#files + 1] = f end
  return files
end

return M
