-- The Lua API reference, generated from the doc comments where each function is
-- defined (no hand-kept copy): every public function of lua/lumen/*.lua
-- (`function M.name`, `function Class:name`, `M.name = function`) with the
-- `---` comment block just above it, plus each module's header comment.
--   luajit scripts/lua_api_doc.lua            -> writes lua/API.md
--   luajit scripts/lua_api_doc.lua --check    -> lists undocumented functions and
--                                                 whether lua/API.md is current; exit 1 if not
-- spec/lua/api_doc_spec.lua runs the check.
local M = {}

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function modules(root)
  local p = io.popen("ls " .. root .. "/lua/lumen/*.lua 2>/dev/null")
  local out = {}
  -- cli.lua is the `lumen` command's implementation, ffi.lua the binding: not API
  for line in p:lines() do if not line:match("/cli%.lua$") and not line:match("/ffi%.lua$") then out[#out + 1] = line end end
  p:close()
  -- lumen itself (init.lua) first, then the modules by name
  table.sort(out, function(x, y)
    local xi, yi = x:match("/init%.lua$") ~= nil, y:match("/init%.lua$") ~= nil
    if xi ~= yi then return xi end
    return x < y
  end)
  return out
end

--- Parses one module: {name, header, functions = {{name, args, doc, line}}}.
function M.parse(path)
  local src = read(path)
  local lines = {}
  for l in (src .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
  local name = "lumen." .. path:match("([^/]+)%.lua$")
  if name == "lumen.init" then name = "lumen" end
  -- the header: the leading comment block
  local header = {}
  for _, l in ipairs(lines) do
    local c = l:match("^%-%-%-? ?(.*)$")
    if not c then break end
    header[#header + 1] = c
  end
  -- tables whose functions are public: the module table (the one returned) and
  -- its classes (tables used as some metatable's __index); local helper tables
  -- (a template's filters, the CLI's commands) are not API
  local public = { M = true }
  local ret = src:match("\nreturn%s+([%w_]+)%s*$")
  if ret then public[ret] = true end
  for t in src:gmatch("__index%s*=%s*([%w_]+)") do public[t] = true end
  -- a class declared `local X = {} -- internal: ...` is the module's own business
  for t in src:gmatch("\nlocal ([%w_]+) = {} %-%- internal") do public[t] = nil end
  local fns = {}
  for i, l in ipairs(lines) do
    local owner, sep, fname, args = l:match("^function ([%w_]+)([%.:])([%w_]+)%s*(%b())")
    if not owner then
      owner, fname, args = l:match("^([%w_]+)%.([%w_]+)%s*=%s*function%s*(%b())")
      sep = "."
    end
    if owner and public[owner] and not fname:match("^_") then
      local doc, documented = {}, false
      local j = i - 1
      while j >= 1 and lines[j]:match("^%s*%-%-") do
        table.insert(doc, 1, (lines[j]:gsub("^%s*%-%-%-? ?", "")))
        documented = documented or lines[j]:match("^%s*%-%-%-") ~= nil
        j = j - 1
      end
      fns[#fns + 1] = { owner = owner, sep = sep, name = fname, args = args, doc = doc, line = i, documented = documented }
    end
  end
  return { name = name, path = path, header = header, functions = fns }
end

--- The reference page.
function M.render(root)
  local out = { "# lumen's Lua API", "",
    "Generated from the doc comments in `lua/lumen/*.lua` by `scripts/lua_api_doc.lua`;",
    "`spec/lua/api_doc_spec.lua` fails when a public function has no doc comment or",
    "this page is out of date. `require \"lumen\"` gives the modules below.", "" }
  for _, path in ipairs(modules(root)) do
    local m = M.parse(path)
    out[#out + 1] = "## " .. m.name
    out[#out + 1] = ""
    if #m.header > 0 then out[#out + 1] = table.concat(m.header, "\n") out[#out + 1] = "" end
    for _, f in ipairs(m.functions) do
      local owner = f.owner == "M" and m.name or f.owner
      out[#out + 1] = string.format("### `%s%s%s%s`", owner, f.sep, f.name, f.args)
      out[#out + 1] = ""
      out[#out + 1] = table.concat(f.doc, "\n")
      out[#out + 1] = ""
    end
  end
  return table.concat(out, "\n")
end

--- Public functions without a `---` doc comment: {"file:line name"}.
function M.undocumented(root)
  local missing = {}
  for _, path in ipairs(modules(root)) do
    for _, f in ipairs(M.parse(path).functions) do
      if not f.documented then missing[#missing + 1] = string.format("%s:%d %s%s%s", path:gsub("^.*/lua/", "lua/"), f.line, f.owner, f.sep, f.name) end
    end
  end
  return missing
end

if select("#", ...) >= 0 and arg and arg[0] and arg[0]:match("lua_api_doc%.lua$") then
  local root = arg[0]:match("^(.*)/scripts/lua_api_doc%.lua$") or "."
  local page = M.render(root)
  local target = root .. "/lua/API.md"
  if arg[1] == "--check" then
    local missing = M.undocumented(root)
    for _, m in ipairs(missing) do io.stderr:write("undocumented: ", m, "\n") end
    local f = io.open(target, "rb")
    local current = f and f:read("*a")
    if f then f:close() end
    if current ~= page then io.stderr:write("lua/API.md is out of date: run luajit scripts/lua_api_doc.lua\n") end
    os.exit((#missing == 0 and current == page) and 0 or 1)
  end
  local f = assert(io.open(target, "wb"))
  f:write(page)
  f:close()
  io.stderr:write("wrote ", target, "\n")
end

return M
