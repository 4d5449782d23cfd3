--- /v1/files and /v1/batches for `lumen serve` (with data_dir / --data-dir).
--
-- Uploaded files live in DATA_DIR/files, batches' outputs in DATA_DIR/batches,
-- the records in DATA_DIR/store.db (SQLite, WAL). A batch is a `lumen batch` job
-- (pipelines/batch.lua: the same validation, journal and output) whose requests
-- go through the server's scheduler with priority -1: live requests take free
-- slots first, the batch fills the rest. Its journal makes it resumable: a
-- server stopped (SIGTERM, kill -9) with batches in progress carries them on
-- when it starts again with the same data_dir.
local ffi = require "ffi"
local openai = require "lumen.openai"
local sqlite = require "lumen.sqlite"
local util = require "lumen.util"
local batch = require "batch"

pcall(ffi.cdef, "int mkdir(const char *path, unsigned int mode);")

local M = {}
local Store = {}
Store.__index = Store
local fail, json = openai.fail, openai.json

local function mkdir(path)
  if ffi.C.mkdir(path, 493) ~= 0 and ffi.errno() ~= 17 then -- EEXIST is fine
    error(string.format("%s: cannot create the folder: %s", path, ffi.string(ffi.C.strerror(ffi.errno()))), 0)
  end
end

--- Opens the store under dir and resumes its batches in progress.
-- server: sched (lumen.scheduler), model_ids, cfg, log.
function M.new(server, dir)
  mkdir(dir)
  mkdir(dir .. "/files")
  mkdir(dir .. "/batches")
  local db = sqlite.open(dir .. "/store.db")
  db:exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
  db:exec([[CREATE TABLE IF NOT EXISTS files (id TEXT PRIMARY KEY, path TEXT NOT NULL, object TEXT NOT NULL, created_at INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, object TEXT NOT NULL, created_at INTEGER NOT NULL);]])
  local self = setmetatable({ server = server, dir = dir, db = db, running = {},
                              put_file = db:prepare("INSERT OR REPLACE INTO files (id, path, object, created_at) VALUES (?, ?, ?, ?)"),
                              get_file = db:prepare("SELECT path, object FROM files WHERE id = ?"),
                              del_file = db:prepare("DELETE FROM files WHERE id = ?"),
                              list_files = db:prepare("SELECT object FROM files ORDER BY created_at DESC, id"),
                              put_batch = db:prepare("INSERT OR REPLACE INTO batches (id, object, created_at) VALUES (?, ?, ?)"),
                              get_batch = db:prepare("SELECT object FROM batches WHERE id = ?"),
                              list_batches = db:prepare("SELECT object FROM batches ORDER BY created_at DESC, id") }, Store)
  local pending = {}
  for r in self.list_batches:rows() do
    local b = json.decode(r[1])
    if b.status == "in_progress" or b.status == "cancelling" then pending[#pending + 1] = b end
  end
  for _, b in ipairs(pending) do
    local ok, err = pcall(self.start, self, b)
    if ok then
      server:log("batch %s: resumed (%d of %d requests done)", b.id, self.running[b.id].progress.done, b.request_counts.total)
    else
      b.status, b.failed_at = "failed", os.time()
      b.errors = { object = "list", data = { { code = "resume_failed", message = tostring(err) } } }
      self:save(b)
    end
  end
  return self
end

function Store:save(b) self.put_batch:run(b.id, openai.encode(b), b.created_at) end

--- Batches running or stopping: the server loop keeps turning while any is.
function Store:active() return next(self.running) ~= nil end

--- Starts (or resumes) a batch's job in the scheduler.
function Store:start(b)
  local f = self.get_file:first(b.input_file_id)
  if not f then error("the input file " .. b.input_file_id .. " no longer exists", 0) end
  local o = { input = f[1], output = self.dir .. "/batches/" .. b.id .. ".jsonl", max_line_bytes = 8 * 1048576,
              progress = "none", priority = -1, depth = #self.server.sched.models[self.server.model_ids[1]].slots }
  local src = batch.check_input(o)
  local sched = self.server.sched
  local run = batch.open(o, src, sched, sched.models[self.server.model_ids[1]])
  run.model_ids = self.server.model_ids
  run.batch = b
  if b.status == "cancelling" then run:cancel() end
  self.running[b.id] = run
  return run
end

local function counts(b, run)
  if run then
    local p = run.progress
    b.request_counts = { total = p.total, completed = p.done - p.failed, failed = p.failed }
  end
  return b
end

--- Before the scheduler's step: each running batch queues more requests.
function Store:feed()
  for _, run in pairs(self.running) do run:feed() end
end

--- After the step: commits what finished; a batch whose requests are all
-- done gets its output file (or, drained, waits for the next start).
function Store:commit()
  for id, run in pairs(self.running) do
    run:commit()
    if run:done() then
      self.running[id] = nil
      local b = counts(run.batch, run)
      if run.suspended then
        run.journal:flush()
        run.journal.db:close()
        if run.file then run.file:close() end
      else
        run:close()
        local fid = util.random_id("file-")
        local size = ffi.new("int64_t[1]")
        require("lumen.ffi").lm_file_info(run.out, size, nil)
        local obj = { id = fid, object = "file", bytes = tonumber(size[0]), created_at = os.time(),
                      filename = b.id .. "_output.jsonl", purpose = "batch_output", status = "processed" }
        self.put_file:run(fid, run.out, openai.encode(obj), obj.created_at)
        b.output_file_id = fid
        if b.status == "cancelling" then b.status, b.cancelled_at = "cancelled", os.time()
        else b.status, b.finalizing_at, b.completed_at = "completed", os.time(), os.time() end
        self.server:log("batch %s: %s, %d requests, %d failed", b.id, b.status, b.request_counts.total, b.request_counts.failed)
      end
      self:save(b)
    end
  end
end

--- SIGTERM: running batches stop taking requests; the ones running are
-- dropped (not journaled) and the batches stay in_progress for the next start.
function Store:drain()
  for _, run in pairs(self.running) do
    run.suspended = true
    run:cancel()
  end
end

-- ---- multipart/form-data (the openai client's file upload) ---------------------------

local function multipart(body, content_type)
  local boundary = content_type:match('boundary="([^"]+)"') or content_type:match("boundary=([^;%s]+)")
  if not content_type:lower():find("multipart/form-data", 1, true) or not boundary then
    fail(400, "upload a file as multipart/form-data with the fields 'file' and 'purpose'", nil, "invalid_request")
  end
  local delim = "--" .. boundary
  local parts = {}
  local pos = body:find(delim, 1, true)
  while pos do
    local start = pos + #delim
    if body:sub(start, start + 1) == "--" then break end
    start = start + 2 -- the CRLF after the boundary
    local hend = body:find("\r\n\r\n", start, true)
    if not hend then break end
    local headers = body:sub(start, hend - 1)
    local nextp = body:find("\r\n" .. delim, hend + 4, true)
    if not nextp then break end
    local name = headers:match('[%s;]name="([^"]*)"')
    if name then parts[name] = { content = body:sub(hend + 4, nextp - 1), filename = headers:match('filename="([^"]*)"') } end
    pos = nextp + 2
  end
  return parts
end

-- ---- the routes ------------------------------------------------------------------------

local function file_object(self, id)
  local f = self.get_file:first(id)
  if not f then fail(404, "no file with id '" .. id .. "'", "file_id", "file_not_found") end
  return f[1], f[2]
end

local function batch_object(self, id)
  local r = self.get_batch:first(id)
  if not r then fail(404, "no batch with id '" .. id .. "'", "batch_id", "batch_not_found") end
  local b = json.decode(r[1])
  local run = self.running[id]
  return run and counts(run.batch, run) or b
end

local function list(stmt)
  local data = {}
  for r in stmt:rows() do data[#data + 1] = r[1] end
  -- the objects are stored as JSON text: the list is assembled as text
  return '{"object":"list","data":[' .. table.concat(data, ",") .. '],"has_more":false}'
end

local ENDPOINTS = { ["/v1/chat/completions"] = true, ["/v1/completions"] = true }

--- Answers a /v1/files or /v1/batches request: status, body, content type.
-- Errors are raised as openai ApiErrors.
function Store:handle(method, path, r)
  local body = function() return ffi.string(r.body, r.body_len) end
  if path == "/v1/files" and method == "POST" then
    local parts = multipart(body(), ffi.string(r.content_type))
    local file, purpose = parts.file, parts.purpose and parts.purpose.content
    if not file then fail(400, "the upload has no 'file' field", "file", "missing_required_parameter") end
    if purpose ~= "batch" then fail(400, "'purpose' must be \"batch\" (the only purpose lumen serve stores)", "purpose", "invalid_value") end
    local id = util.random_id("file-")
    local p = self.dir .. "/files/" .. id
    local f = io.open(p, "wb")
    if not f then fail(500, "cannot store the file", nil, "storage_error") end
    f:write(file.content)
    f:close()
    local obj = { id = id, object = "file", bytes = #file.content, created_at = os.time(),
                  filename = file.filename or "upload.jsonl", purpose = purpose, status = "processed" }
    local text = openai.encode(obj)
    self.put_file:run(id, p, text, obj.created_at)
    return 200, text
  elseif path == "/v1/files" and method == "GET" then
    return 200, list(self.list_files)
  end
  local fid, rest = path:match("^/v1/files/([^/]+)(.*)$")
  if fid then
    local p, obj = file_object(self, fid)
    if rest == "" and method == "GET" then return 200, obj end
    if rest == "" and method == "DELETE" then
      self.del_file:run(fid)
      os.remove(p)
      return 200, openai.encode({ id = fid, object = "file", deleted = true })
    end
    if rest == "/content" and method == "GET" then
      local f = io.open(p, "rb")
      if not f then fail(404, "the file's content is gone", "file_id", "file_not_found") end
      local data = f:read("*a")
      f:close()
      return 200, data, "application/octet-stream"
    end
    fail(405, method .. " " .. path .. " is not supported", nil, "method_not_allowed")
  end
  if path == "/v1/batches" and method == "POST" then
    local req = openai.decode(body(), nil)
    if type(req.input_file_id) ~= "string" then fail(400, "'input_file_id' is required", "input_file_id", "missing_required_parameter") end
    if req.endpoint == "/v1/embeddings" then fail(400, "batches of /v1/embeddings are not supported yet", "endpoint", "invalid_value") end
    if not ENDPOINTS[req.endpoint] then fail(400, "'endpoint' must be /v1/chat/completions or /v1/completions", "endpoint", "invalid_value") end
    if req.completion_window ~= "24h" then fail(400, "'completion_window' must be \"24h\"", "completion_window", "invalid_value") end
    file_object(self, req.input_file_id)
    local t = os.time()
    local b = { id = util.random_id("batch_"), object = "batch", endpoint = req.endpoint, errors = json.null,
                input_file_id = req.input_file_id, completion_window = "24h", status = "in_progress",
                output_file_id = json.null, error_file_id = json.null, created_at = t, in_progress_at = t,
                expires_at = t + 86400, request_counts = { total = 0, completed = 0, failed = 0 },
                metadata = type(req.metadata) == "table" and req.metadata or json.null }
    local ok, err = pcall(self.start, self, b)
    if not ok then fail(400, "the input file cannot be run: " .. tostring(err), "input_file_id", "invalid_file") end
    counts(b, self.running[b.id])
    self:save(b)
    return 200, openai.encode(b)
  elseif path == "/v1/batches" and method == "GET" then
    return 200, list(self.list_batches)
  end
  local bid, action = path:match("^/v1/batches/([^/]+)(.*)$")
  if bid then
    local b = batch_object(self, bid)
    if action == "" and method == "GET" then return 200, openai.encode(b) end
    if action == "/cancel" and method == "POST" then
      local run = self.running[bid]
      if run and b.status == "in_progress" then
        b.status, b.cancelling_at = "cancelling", os.time()
        run:cancel()
        self:save(b)
      end
      return 200, openai.encode(b)
    end
  end
  fail(404, "unknown endpoint " .. method .. " " .. path, nil, "unknown_url", "invalid_request_error")
end

return M
