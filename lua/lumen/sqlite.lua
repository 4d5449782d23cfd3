--- A thin binding of Debian's libsqlite3 (ffi.load "sqlite3"): open, exec,
-- prepared statements. Errors name the database file and SQLite's message.
--   local db = require("lumen.sqlite").open("job.journal")
--   db:exec("PRAGMA journal_mode=WAL")
--   local st = db:prepare("SELECT a, b FROM t WHERE k = ?")
--   for row in st:rows(key) do print(row[1], row[2]) end
local ffi = require "ffi"

ffi.cdef [[
typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
int sqlite3_open_v2(const char *filename, sqlite3 **db, int flags, const char *vfs);
int sqlite3_close_v2(sqlite3 *db);
int sqlite3_exec(sqlite3 *db, const char *sql, void *cb, void *arg, char **errmsg);
void sqlite3_free(void *p);
const char *sqlite3_errmsg(sqlite3 *db);
int sqlite3_busy_timeout(sqlite3 *db, int ms);
int sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **st, const char **tail);
int sqlite3_bind_int64(sqlite3_stmt *st, int i, int64_t v);
int sqlite3_bind_text(sqlite3_stmt *st, int i, const char *s, int n, intptr_t destructor);
int sqlite3_bind_null(sqlite3_stmt *st, int i);
int sqlite3_step(sqlite3_stmt *st);
int sqlite3_reset(sqlite3_stmt *st);
int sqlite3_clear_bindings(sqlite3_stmt *st);
int sqlite3_finalize(sqlite3_stmt *st);
int sqlite3_column_count(sqlite3_stmt *st);
int sqlite3_column_type(sqlite3_stmt *st, int i);
int64_t sqlite3_column_int64(sqlite3_stmt *st, int i);
const unsigned char *sqlite3_column_text(sqlite3_stmt *st, int i);
int sqlite3_column_bytes(sqlite3_stmt *st, int i);
]]

local lib
local function load()
  if not lib then
    local ok, res = pcall(ffi.load, "sqlite3")
    if not ok then ok, res = pcall(ffi.load, "libsqlite3.so.0") end
    if not ok then error("lumen.sqlite: cannot load libsqlite3 (apt install libsqlite3-0): " .. tostring(res), 3) end
    lib = res
  end
  return lib
end

local OK, ROW, DONE = 0, 100, 101
local OPEN_READWRITE, OPEN_CREATE, OPEN_FULLMUTEX = 0x2, 0x4, 0x10000
local TRANSIENT = -1 -- SQLITE_TRANSIENT: SQLite copies bound text
local INTEGER, NULL = 1, 5

local M = {}
local Db = {}
Db.__index = Db
local Stmt = {}
Stmt.__index = Stmt

--- Opens (creating) a database file.
function M.open(path)
  if type(path) ~= "string" then error("sqlite.open: path must be a string", 2) end
  local L = load()
  local pp = ffi.new("sqlite3*[1]")
  local rc = L.sqlite3_open_v2(path, pp, OPEN_READWRITE + OPEN_CREATE + OPEN_FULLMUTEX, nil)
  if rc ~= OK then
    local msg = pp[0] ~= nil and ffi.string(L.sqlite3_errmsg(pp[0])) or ("error " .. rc)
    if pp[0] ~= nil then L.sqlite3_close_v2(pp[0]) end
    error(string.format("%s: cannot open the journal: %s", path, msg), 2)
  end
  L.sqlite3_busy_timeout(pp[0], 5000)
  return setmetatable({ h = pp[0], path = path, stmts = {} }, Db)
end

function Db:fail(what, level)
  error(string.format("%s: %s: %s", self.path, what, ffi.string(lib.sqlite3_errmsg(self.h))), (level or 1) + 1)
end

--- Runs SQL without results (several statements allowed).
function Db:exec(sql)
  local err = ffi.new("char*[1]")
  if lib.sqlite3_exec(self.h, sql, nil, nil, err) ~= OK then
    local msg = err[0] ~= nil and ffi.string(err[0]) or "?"
    if err[0] ~= nil then lib.sqlite3_free(err[0]) end
    error(string.format("%s: %s (in: %s)", self.path, msg, sql:sub(1, 80)), 2)
  end
end

--- A prepared statement (kept until the database closes).
function Db:prepare(sql)
  local pp = ffi.new("sqlite3_stmt*[1]")
  if lib.sqlite3_prepare_v2(self.h, sql, #sql, pp, nil) ~= OK then self:fail("prepare '" .. sql:sub(1, 60) .. "'", 2) end
  local st = setmetatable({ h = pp[0], db = self }, Stmt)
  self.stmts[#self.stmts + 1] = st
  return st
end

function Db:close()
  if self.h == nil then return end
  for _, st in ipairs(self.stmts) do
    if st.h ~= nil then lib.sqlite3_finalize(st.h) st.h = nil end
  end
  lib.sqlite3_close_v2(self.h)
  self.h = nil
end

function Stmt:bind(...)
  local h = self.h
  lib.sqlite3_reset(h)
  lib.sqlite3_clear_bindings(h)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    local rc
    if v == nil then rc = lib.sqlite3_bind_null(h, i)
    elseif type(v) == "number" then rc = lib.sqlite3_bind_int64(h, i, v)
    else
      v = tostring(v)
      rc = lib.sqlite3_bind_text(h, i, v, #v, TRANSIENT)
    end
    if rc ~= OK then self.db:fail("bind parameter " .. i, 3) end
  end
end

local function row(h)
  local out = {}
  for i = 0, lib.sqlite3_column_count(h) - 1 do
    local t = lib.sqlite3_column_type(h, i)
    if t == INTEGER then out[i + 1] = tonumber(lib.sqlite3_column_int64(h, i))
    elseif t ~= NULL then out[i + 1] = ffi.string(lib.sqlite3_column_text(h, i), lib.sqlite3_column_bytes(h, i)) end
  end
  return out
end

--- Runs a statement that returns no rows.
function Stmt:run(...)
  self:bind(...)
  local rc = lib.sqlite3_step(self.h)
  lib.sqlite3_reset(self.h)
  if rc ~= DONE and rc ~= ROW then self.db:fail("step", 2) end
end

--- Iterates over result rows (arrays of column values).
function Stmt:rows(...)
  self:bind(...)
  local h = self.h
  return function()
    local rc = lib.sqlite3_step(h)
    if rc == ROW then return row(h) end
    lib.sqlite3_reset(h)
    if rc ~= DONE then self.db:fail("step", 2) end
    return nil
  end
end

--- The first row, or nil.
function Stmt:first(...)
  local it = self:rows(...)
  local r = it()
  lib.sqlite3_reset(self.h)
  return r
end

return M
