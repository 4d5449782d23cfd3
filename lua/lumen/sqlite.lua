--- SQLite (Debian's libsqlite3) through the FFI: the few calls lumen's stores and
-- journals need, with prepared statements cached per SQL text.
--   local db = require("lumen.sqlite").open("index.db")
--   db:tx(function() db:run("INSERT INTO t(a) VALUES (?)", 1) end)
--   for row in db:rows("SELECT a FROM t WHERE a > ?", 0) do print(row.a) end
-- Errors name the database file and SQLite's message. Blobs are bound from and
-- returned as Lua strings (or bound from cdata with an explicit length).
local ffi = require "ffi"

ffi.cdef [[
typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
int sqlite3_open_v2(const char *filename, sqlite3 **db, int flags, const char *vfs);
int sqlite3_close_v2(sqlite3 *db);
const char *sqlite3_errmsg(sqlite3 *db);
int sqlite3_exec(sqlite3 *db, const char *sql, void *cb, void *arg, char **errmsg);
void sqlite3_free(void *p);
int sqlite3_busy_timeout(sqlite3 *db, int ms);
int sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **stmt, const char **tail);
int sqlite3_step(sqlite3_stmt *stmt);
int sqlite3_reset(sqlite3_stmt *stmt);
int sqlite3_clear_bindings(sqlite3_stmt *stmt);
int sqlite3_finalize(sqlite3_stmt *stmt);
int sqlite3_bind_parameter_count(sqlite3_stmt *stmt);
int sqlite3_bind_int64(sqlite3_stmt *stmt, int i, int64_t v);
int sqlite3_bind_double(sqlite3_stmt *stmt, int i, double v);
int sqlite3_bind_text(sqlite3_stmt *stmt, int i, const char *s, int n, void (*destroy)(void *));
int sqlite3_bind_blob(sqlite3_stmt *stmt, int i, const void *p, int n, void (*destroy)(void *));
int sqlite3_bind_null(sqlite3_stmt *stmt, int i);
int sqlite3_column_count(sqlite3_stmt *stmt);
const char *sqlite3_column_name(sqlite3_stmt *stmt, int i);
int sqlite3_column_type(sqlite3_stmt *stmt, int i);
int64_t sqlite3_column_int64(sqlite3_stmt *stmt, int i);
double sqlite3_column_double(sqlite3_stmt *stmt, int i);
const unsigned char *sqlite3_column_text(sqlite3_stmt *stmt, int i);
const void *sqlite3_column_blob(sqlite3_stmt *stmt, int i);
int sqlite3_column_bytes(sqlite3_stmt *stmt, int i);
int64_t sqlite3_last_insert_rowid(sqlite3 *db);
int sqlite3_changes(sqlite3 *db);
]]

local ok, lib = pcall(ffi.load, "sqlite3")
if not ok then ok, lib = pcall(ffi.load, "libsqlite3.so.0") end
if not ok then error("lumen.sqlite: cannot load libsqlite3 (apt-get install libsqlite3-0): " .. tostring(lib), 0) end

local M = {}
local DB = {}
DB.__index = DB
local Stmt = {}
Stmt.__index = Stmt

local SQLITE_OK, SQLITE_ROW, SQLITE_DONE = 0, 100, 101
local OPEN_READWRITE, OPEN_CREATE, OPEN_READONLY = 0x2, 0x4, 0x1
local INTEGER, FLOAT, TEXT, BLOB = 1, 2, 3, 4
local TRANSIENT = ffi.cast("void (*)(void *)", -1)

--- Opens (creates unless opts.readonly) a database file; WAL journaling and a
-- busy timeout, so a reader and a writer can share it.
function M.open(path, opts)
  opts = opts or {}
  local pdb = ffi.new("sqlite3*[1]")
  local flags = opts.readonly and OPEN_READONLY or bit.bor(OPEN_READWRITE, OPEN_CREATE)
  local rc = lib.sqlite3_open_v2(path, pdb, flags, nil)
  if rc ~= SQLITE_OK then
    local msg = pdb[0] ~= nil and ffi.string(lib.sqlite3_errmsg(pdb[0])) or ("error " .. rc)
    if pdb[0] ~= nil then lib.sqlite3_close_v2(pdb[0]) end
    error(string.format("cannot open database '%s': %s", path, msg), 2)
  end
  local self = setmetatable({ h = ffi.gc(pdb[0], lib.sqlite3_close_v2), path = path, stmts = {} }, DB)
  lib.sqlite3_busy_timeout(self.h, opts.busy_ms or 5000)
  if not opts.readonly then self:exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;") end
  return self
end

--- Raises SQLite's last error, naming the database file.
function DB:fail(what, level)
  error(string.format("%s: %s: %s", self.path, what, ffi.string(lib.sqlite3_errmsg(self.h))), (level or 1) + 1)
end

--- Runs SQL text with no parameters (several statements allowed).
function DB:exec(sql)
  local err = ffi.new("char*[1]")
  if lib.sqlite3_exec(self.h, sql, nil, nil, err) ~= SQLITE_OK then
    local msg = err[0] ~= nil and ffi.string(err[0]) or "error"
    if err[0] ~= nil then lib.sqlite3_free(err[0]) end
    error(string.format("%s: %s", self.path, msg), 2)
  end
end

local function prepare(self, sql)
  local st = self.stmts[sql]
  if st then return st end
  local p = ffi.new("sqlite3_stmt*[1]")
  if lib.sqlite3_prepare_v2(self.h, sql, #sql, p, nil) ~= SQLITE_OK then self:fail("cannot prepare " .. sql:sub(1, 60), 3) end
  st = p[0]
  self.stmts[sql] = st
  return st
end

local function bind(self, st, ...)
  local n = select("#", ...)
  for i = 1, n do
    local v = select(i, ...)
    local rc
    local t = type(v)
    if v == nil then rc = lib.sqlite3_bind_null(st, i)
    elseif t == "number" then
      if v == math.floor(v) and v >= -2 ^ 53 and v <= 2 ^ 53 then rc = lib.sqlite3_bind_int64(st, i, v)
      else rc = lib.sqlite3_bind_double(st, i, v) end
    elseif t == "string" then rc = lib.sqlite3_bind_text(st, i, v, #v, TRANSIENT)
    elseif t == "boolean" then rc = lib.sqlite3_bind_int64(st, i, v and 1 or 0)
    elseif t == "table" and v.blob then
      -- {blob = string or cdata, len = bytes}: bound as a BLOB
      rc = lib.sqlite3_bind_blob(st, i, v.blob, v.len or #v.blob, TRANSIENT)
    else error("sqlite: parameter " .. i .. " has unsupported type " .. t, 3) end
    if rc ~= SQLITE_OK then self:fail("cannot bind parameter " .. i, 3) end
  end
end

local function column(st, i)
  local t = lib.sqlite3_column_type(st, i)
  if t == INTEGER then return tonumber(lib.sqlite3_column_int64(st, i))
  elseif t == FLOAT then return lib.sqlite3_column_double(st, i)
  elseif t == TEXT then return ffi.string(lib.sqlite3_column_text(st, i), lib.sqlite3_column_bytes(st, i))
  elseif t == BLOB then
    local n = lib.sqlite3_column_bytes(st, i)
    return n > 0 and ffi.string(lib.sqlite3_column_blob(st, i), n) or ""
  end
  return nil
end

--- Runs one statement with parameters; returns rows changed and the last rowid.
function DB:run(sql, ...)
  local st = prepare(self, sql)
  bind(self, st, ...)
  local rc = lib.sqlite3_step(st)
  lib.sqlite3_reset(st)
  lib.sqlite3_clear_bindings(st)
  if rc ~= SQLITE_DONE and rc ~= SQLITE_ROW then self:fail(sql:sub(1, 60), 2) end
  return lib.sqlite3_changes(self.h), tonumber(lib.sqlite3_last_insert_rowid(self.h))
end

-- rows of a statement: keyed by column name, or (positional) an array
local function rows(self, sql, positional, ...)
  local st = prepare(self, sql)
  bind(self, st, ...)
  local nc = lib.sqlite3_column_count(st)
  local names = {}
  for i = 0, nc - 1 do names[i] = positional and (i + 1) or ffi.string(lib.sqlite3_column_name(st, i)) end
  return function()
    local rc = lib.sqlite3_step(st)
    if rc == SQLITE_ROW then
      local row = {}
      for i = 0, nc - 1 do row[names[i]] = column(st, i) end
      return row
    end
    lib.sqlite3_reset(st)
    lib.sqlite3_clear_bindings(st)
    if rc ~= SQLITE_DONE then self:fail(sql:sub(1, 60), 2) end
    return nil
  end
end

--- Iterates over a query's rows, each a table keyed by column name.
function DB:rows(sql, ...) return rows(self, sql, false, ...) end

--- The first row of a query, or nil.
function DB:one(sql, ...)
  local it = self:rows(sql, ...)
  local row = it()
  if row then while it() do end end
  return row
end

--- Runs f inside a transaction: committed if it returns, rolled back if it
-- raises (the error goes on).
function DB:tx(f)
  self:exec("BEGIN IMMEDIATE")
  local ok, err = pcall(f)
  if ok then self:exec("COMMIT") return end
  pcall(self.exec, self, "ROLLBACK")
  error(err, 0)
end

--- A statement to run again and again: stmt:run(...), stmt:rows(...) and
-- stmt:first(...), whose rows are arrays of the columns in order.
function DB:prepare(sql)
  prepare(self, sql) -- errors now, not at first use
  return setmetatable({ db = self, sql = sql }, Stmt)
end

--- Runs the statement (see DB:run).
function Stmt:run(...) return self.db:run(self.sql, ...) end
--- Its rows, each an array of the columns in order.
function Stmt:rows(...) return rows(self.db, self.sql, true, ...) end
--- Its first row (an array), or nil.
function Stmt:first(...)
  local it = self:rows(...)
  local row = it()
  if row then while it() do end end
  return row
end

--- Closes the database (its statements first).
function DB:close()
  for _, st in pairs(self.stmts) do lib.sqlite3_finalize(st) end
  self.stmts = {}
  if self.h then lib.sqlite3_close_v2(ffi.gc(self.h, nil)) self.h = nil end
end

return M
