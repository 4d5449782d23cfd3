--- `lumen batch IN.jsonl -o OUT.jsonl`: OpenAI Batch API files, run locally.
--
-- Each input line is one request {custom_id, method: "POST", url, body}; url
-- /v1/chat/completions or /v1/completions (bodies validated by lua/lumen/openai.lua,
-- as the server does). All requests go through lumen.scheduler together, so
-- they share batched forward passes (--slots at a time).
--
-- Nothing is lost: every finished request's output line is committed to a
-- SQLite journal (WAL) beside the output, OUT.jsonl.journal, with the input's
-- identity (sha256, size, model). OUT.jsonl is written only from the journal,
-- at the end, whole (a temporary file, fsync, rename): after a kill at any
-- moment the same command carries on without recomputing what was committed,
-- and no output line is ever torn or written twice. A changed input is
-- refused unless --restart.
--
-- Lines the runner cannot take (not JSON, too long, no custom_id, a
-- custom_id already used by an earlier line, a wrong method or url) get an
-- entry with response null and error {code, message, line}; a duplicate's
-- entry has custom_id null, so every custom_id appears exactly once. A body
-- the endpoint rejects gets response {status_code: 4xx, body: {error}}, as
-- from the server. Empty lines are skipped.
--
-- `lumen batch FOLDER --pipeline SCRIPT.lua -o OUT.jsonl`: each document of
-- the folder becomes one request, made by the pipeline script (see
-- pipeline_source); the same journal, resumption and output format.
local ffi = require "ffi"
local C = require "lumen.ffi"
local lumen = require "lumen"
local openai = require "lumen.openai"
local scheduler = require "lumen.scheduler"
local structured = require "lumen.structured"
local sqlite = require "lumen.sqlite"
local readers = require "lumen.readers"
local util = require "lumen.util"
local now = require("lumen.chat").now

pcall(ffi.cdef, [[
int open(const char *path, int flags, ...);
int close(int fd);
int fsync(int fd);
ssize_t write(int fd, const void *buf, size_t n);
int isatty(int fd);
char *strerror(int errnum);
]])

local M = {}
local O_WRONLY, O_CREAT, O_TRUNC, O_RDONLY = 1, 64, 512, 0

local ENDPOINTS = { ["/v1/chat/completions"] = "chat", ["/v1/completions"] = "completions" }
local REFUSED = { ["/v1/embeddings"] = "lumen batch does not run /v1/embeddings requests yet" }

--- Lines of a file, each at most cap bytes: an iterator of (number, text) or
-- (number, nil) for a line longer than cap, which is skipped without being
-- held in memory. Blocks of 64 KiB; a trailing "\r" is the caller's.
function M.lines(f, cap)
  local buf, at = "", 1
  local parts, plen, over = {}, 0, false
  local n = 0
  return function()
    while true do
      local nl = buf:find("\n", at, true)
      if nl then
        local piece = buf:sub(at, nl - 1)
        at = nl + 1
        n = n + 1
        if over or plen + #piece > cap then
          parts, plen, over = {}, 0, false
          return n, nil
        end
        local line = plen > 0 and (table.concat(parts) .. piece) or piece
        parts, plen = {}, 0
        return n, line
      end
      local tail = buf:sub(at)
      if not over and #tail > 0 then
        if plen + #tail > cap then
          over, parts, plen = true, {}, 0
        else
          parts[#parts + 1], plen = tail, plen + #tail
        end
      end
      buf, at = f:read(65536), 1
      if not buf then
        buf = ""
        if over or plen > 0 then
          n = n + 1
          local was_over, line = over, table.concat(parts)
          parts, plen, over = {}, 0, false
          return n, (not was_over) and line or nil
        end
        return nil
      end
    end
  end
end

local random_id = util.random_id
local enc = openai.encode

--- One output line: the response (status, body JSON text) or an error.
local function output_line(custom_id, status, body, err)
  local cid = custom_id ~= nil and enc(custom_id) or "null"
  local head = '{"id":' .. enc(random_id("batch_req_")) .. ',"custom_id":' .. cid
  if err then return head .. ',"response":null,"error":' .. enc(err) .. "}" end
  return head .. ',"response":{"status_code":' .. status .. ',"request_id":' .. enc(random_id("req_"))
         .. ',"body":' .. body .. '},"error":null}'
end

-- ---- the journal -------------------------------------------------------------------

local Journal = {}
Journal.__index = Journal

--- Opens OUT.journal, checks (or, fresh or with restart, records) the input's
-- identity, and returns it with done[line] = custom_id (false for an entry
-- without one) for every committed line.
local function open_journal(path, identity, restart, in_path)
  local db = sqlite.open(path)
  db:exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
  db:exec([[CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS items (line INTEGER PRIMARY KEY, custom_id TEXT,
                                              ok INTEGER NOT NULL, tokens INTEGER NOT NULL, output TEXT NOT NULL);]])
  local get = db:prepare("SELECT value FROM meta WHERE key = ?")
  local put = db:prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)")
  local stored = {}
  for k in pairs(identity) do
    local r = get:first(k)
    stored[k] = r and r[1]
  end
  local fresh = next(stored) == nil
  if not fresh and not restart then
    for k, v in pairs(identity) do
      if stored[k] ~= v then
        db:close()
        error(string.format("%s: the journal %s was started for another %s (%s, now %s); rerun with --restart to start over",
                            in_path, path, k == "model" and "model" or "input file", tostring(stored[k]), v), 0)
      end
    end
  end
  if fresh or restart then
    db:exec("BEGIN; DELETE FROM items; DELETE FROM meta;")
    for k, v in pairs(identity) do put:run(k, v) end
    db:exec("COMMIT;")
  end
  local done, tokens, failed = {}, 0, 0
  for r in db:prepare("SELECT line, custom_id, ok, tokens FROM items"):rows() do
    done[r[1]] = r[2] or false
    tokens = tokens + r[4]
    if r[3] == 0 then failed = failed + 1 end
  end
  local self = setmetatable({ db = db, path = path, pending = {}, done = done,
                              insert = db:prepare("INSERT OR REPLACE INTO items (line, custom_id, ok, tokens, output) VALUES (?, ?, ?, ?, ?)") }, Journal)
  return self, tokens, failed
end

--- An entry to commit with the next flush.
function Journal:add(line, custom_id, ok, tokens, output)
  self.pending[#self.pending + 1] = { line, custom_id, ok and 1 or 0, tokens, output }
end

--- Commits the pending entries in one transaction (WAL: durable once the
-- process has returned from COMMIT, whatever kills it afterwards).
function Journal:flush()
  if #self.pending == 0 then return end
  self.db:exec("BEGIN IMMEDIATE;")
  for _, e in ipairs(self.pending) do self.insert:run(e[1], e[2], e[3], e[4], e[5]) end
  self.db:exec("COMMIT;")
  self.pending = {}
end

--- Writes every committed line, in input order, to out: a temporary file,
-- fsync, rename, fsync of the folder. Returns the number of lines.
function Journal:write_output(out)
  local tmp = out .. ".tmp"
  local fd = ffi.C.open(tmp, O_WRONLY + O_CREAT + O_TRUNC, ffi.cast("int", 420))
  if fd < 0 then error(string.format("%s: cannot write: %s", tmp, ffi.string(ffi.C.strerror(ffi.errno()))), 0) end
  local chunk, size, n = {}, 0, 0
  local function drain()
    local s = table.concat(chunk)
    local off = 0
    while off < #s do
      local w = ffi.C.write(fd, ffi.cast("const char *", s) + off, #s - off)
      if w < 0 then
        local e = ffi.string(ffi.C.strerror(ffi.errno()))
        ffi.C.close(fd)
        error(string.format("%s: write failed: %s", tmp, e), 0)
      end
      off = off + tonumber(w)
    end
    chunk, size = {}, 0
  end
  for r in self.db:prepare("SELECT output FROM items ORDER BY line"):rows() do
    chunk[#chunk + 1] = r[1]
    chunk[#chunk + 1] = "\n"
    size, n = size + #r[1] + 1, n + 1
    if size > 1048576 then drain() end
  end
  drain()
  if ffi.C.fsync(fd) ~= 0 then
    ffi.C.close(fd)
    error(string.format("%s: fsync failed: %s", tmp, ffi.string(ffi.C.strerror(ffi.errno()))), 0)
  end
  ffi.C.close(fd)
  local ok, err = os.rename(tmp, out)
  if not ok then error(string.format("%s: cannot rename to %s: %s", tmp, out, tostring(err)), 0) end
  local dir = out:match("^(.*)/[^/]*$") or "."
  local dfd = ffi.C.open(dir == "" and "/" or dir, O_RDONLY)
  if dfd >= 0 then ffi.C.fsync(dfd) ffi.C.close(dfd) end
  return n
end

-- ---- progress ------------------------------------------------------------------------

local Progress = {}
Progress.__index = Progress

local function clock(s)
  if not s or s ~= s or s == math.huge then return "--:--" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%d:%02d:%02d", s / 3600, (s % 3600) / 60, s % 60) end
  return string.format("%d:%02d", s / 60, s % 60)
end

local function new_progress(total, done, failed, mode)
  local tty = mode == "bar" or (mode == nil and ffi.C.isatty(2) == 1)
  return setmetatable({ total = total, done = done, failed = failed, resumed = done, tokens = 0,
                        t0 = now(), t_shown = 0, tty = tty, quiet = mode == "none" }, Progress)
end

function Progress:rate() local dt = now() - self.t0 return dt > 0 and self.tokens / dt or 0 end

function Progress:eta()
  local new, dt = self.done - self.resumed, now() - self.t0
  if new <= 0 then return nil end
  return (self.total - self.done) * dt / new
end

function Progress:show(force)
  if self.quiet then return end
  local t = now()
  if not force and t - self.t_shown < (self.tty and 0.25 or 5) then return end
  self.t_shown = t
  if self.tty then
    local width = 30
    local fill = self.total > 0 and math.floor(width * self.done / self.total) or width
    io.stderr:write(string.format("\r[%s%s] %d/%d done, %d failed, %.1f tok/s, ETA %s ",
                                  string.rep("#", fill), string.rep(".", width - fill), self.done, self.total,
                                  self.failed, self:rate(), clock(self:eta())))
  else
    io.stderr:write(openai.encode({ progress = { done = self.done, total = self.total, failed = self.failed,
                                                 tokens = self.tokens, tokens_per_s = math.floor(self:rate() * 10 + 0.5) / 10,
                                                 eta_s = self:eta() and math.floor(self:eta() + 0.5) or openai.json.null } }), "\n")
  end
  io.stderr:flush()
end

-- ---- the run -----------------------------------------------------------------------

--- The file sink: a finished job's answer becomes its journal entry.
local FileSink = {}
FileSink.__index = FileSink
function FileSink:alive() return not self.run.cancelled end
function FileSink.started() return true end
function FileSink.piece() return true end
function FileSink:finished(job)
  self.run:finish(self.line, self.custom_id, true, job.completion_tokens or 0,
                  output_line(self.custom_id, 200, openai.response(job, structured.finish_choices(job, scheduler.choices(job)))))
end
--- A cancelled job's request is not journaled: a resumed job runs it again.
function FileSink:cancelled()
  local run = self.run
  if run.submitted[self.line] then
    run.submitted[self.line] = nil
    run.inflight = run.inflight - 1
  end
end

local Run = {}
Run.__index = Run

function Run:finish(line, custom_id, ok, tokens, output)
  self.journal:add(line, custom_id, ok, tokens, output)
  self.inflight = self.inflight - (self.submitted[line] and 1 or 0)
  self.submitted[line] = nil
  local p = self.progress
  p.done, p.tokens = p.done + 1, p.tokens + tokens
  if not ok then p.failed = p.failed + 1 end
  self.tokens = self.tokens + tokens
end

--- A line that is no request: an error entry (custom_id nil when it has none
-- of its own).
function Run:refuse(line, custom_id, code, message)
  self:finish(line, custom_id, false, 0, output_line(custom_id, nil, nil,
              { code = code, message = string.format("%s line %d: %s", self.in_path, line, message), line = line }))
end

--- One input line: not JSON, or a request.
function Run:take(line, text)
  if text == nil then
    return self:refuse(line, nil, "line_too_long", string.format("longer than %d bytes (--max-line-bytes)", self.max_line))
  end
  local ok, req = pcall(openai.decode, text, function(s) return C.lm_utf8_valid(s, #s) end)
  if not ok then
    return self:refuse(line, nil, "invalid_json", openai.is_error(req) and req.message:gsub("request body", "line") or tostring(req))
  end
  return self:take_request(line, req)
end

--- One request {custom_id, method, url, body} (an input line's, or one a
-- pipeline made from a document): refused, answered with an API error, or submitted.
function Run:take_request(line, req)
  local cid = req.custom_id
  if type(cid) ~= "string" or cid == "" then
    return self:refuse(line, nil, "missing_custom_id", "'custom_id' must be a non-empty string")
  end
  if self.seen[cid] then
    return self:refuse(line, nil, "duplicate_custom_id",
                       string.format("custom_id %s was already used on line %d; this line is not run", enc(cid), self.seen[cid]))
  end
  self.seen[cid] = line
  if req.method ~= "POST" then
    return self:refuse(line, cid, "invalid_method", "'method' must be \"POST\", got " .. enc(req.method == nil and openai.json.null or req.method))
  end
  local url = type(req.url) == "string" and req.url:gsub("/$", "") or nil
  local kind = url and ENDPOINTS[url]
  if not kind then
    if url and REFUSED[url] then return self:refuse(line, cid, "unsupported_url", REFUSED[url]) end
    return self:refuse(line, cid, "invalid_url", "'url' must be /v1/chat/completions or /v1/completions, got "
                       .. enc(req.url == nil and openai.json.null or req.url))
  end
  local entry = self.entry
  local okj, job = pcall(function()
    local body = req.body
    if type(body) ~= "table" or openai.is_array(body) and next(body) ~= nil then
      openai.fail(400, "'body' must be a JSON object", "body", "invalid_type")
    end
    if body.stream == true then openai.fail(400, "'stream' is not supported in a batch", "stream", "unsupported_parameter") end
    -- a server's batch may name any model it serves (model_ids: the first is the default)
    local mid, j = openai.generation_request(kind, body, self.sched.models, self.model_ids or { entry.id })
    structured.attach(j, body, self.sched.models[mid]) -- response_format, grammar, tools
    return scheduler.prepare(self.sched.models[mid], j)
  end)
  if not okj then
    if not openai.is_error(job) then error(job, 0) end
    return self:finish(line, cid, false, 0, output_line(cid, job.status, openai.error_body(job)))
  end
  job.id = random_id(kind == "chat" and "chatcmpl-" or "cmpl-")
  job.created, job.model_id, job.collect = os.time(), job.entry.id, true
  job.priority = self.priority
  self.submitted[line] = true
  self.inflight = self.inflight + 1
  self.sched:submit(job, setmetatable({ run = self, line = line, custom_id = cid }, FileSink))
end

--- A folder of documents and a Lua pipeline: the pipeline script returns a
-- table {url = "/v1/chat/completions" (default) or "/v1/completions",
-- request = function(doc) -> the request body}, doc = {name, path, text, size}.
-- Each regular file of the folder (sorted by name; not hidden ones) is one
-- request, its custom_id the file name. Returns the source (an iterator of
-- index, nil, request-or-nil, error), the number of documents, and the
-- identity of the whole (sha256 of every file's name, size and sha256, and the
-- pipeline script's).
local function pipeline_source(dir, script, max_bytes)
  local chunk, err = loadfile(script)
  if not chunk then error(script .. ": " .. tostring(err), 0) end
  local okp, p = pcall(chunk)
  if not okp then error(script .. ": " .. tostring(p), 0) end
  if type(p) ~= "table" or type(p.request) ~= "function" then
    error(script .. ": a pipeline returns a table with request = function(doc) -> request body", 0)
  end
  local url = p.url or "/v1/chat/completions"
  if not ENDPOINTS[url] then error(script .. ": url must be /v1/chat/completions or /v1/completions, got " .. tostring(url), 0) end
  -- the documents RAG ingest reads (.txt .md .html .pdf, names without an
  -- extension), in the folder and below it, by relative path
  local names = {}
  for _, name in ipairs(readers.list_files(dir)) do
    if readers.kind(name) and not name:match("^%.") and not name:match("/%.") then names[#names + 1] = name end
  end
  local hex, size = ffi.new("char[65]"), ffi.new("int64_t[1]")
  local manifest, total = {}, 0
  for _, name in ipairs(names) do
    local path = dir .. "/" .. name
    if C.lm_sha256_file(path, hex) ~= 0 or C.lm_file_info(path, size, nil) ~= 0 then error(util.last_error(), 0) end
    manifest[#manifest + 1] = name .. "\0" .. tostring(size[0]) .. "\0" .. ffi.string(hex)
    total = total + tonumber(size[0])
  end
  if C.lm_sha256_file(script, hex) ~= 0 then error(util.last_error(), 0) end
  manifest[#manifest + 1] = "pipeline\0" .. ffi.string(hex)
  local m = table.concat(manifest, "\n")
  C.lm_sha256_hex(m, #m, hex)
  local i = 0
  local function next_doc(done)
    i = i + 1
    local name = names[i]
    if not name then return nil end
    if done[i] ~= nil then return i, "" end -- committed before: not read again
    local path = dir .. "/" .. name
    -- the same readers as RAG ingest: HTML's visible text, a PDF's text
    local okd, text = pcall(readers.read, path)
    if not okd then return i, nil, nil, { "unreadable_document", tostring(text), name } end
    if #text > max_bytes then return i, nil, nil, { "document_too_large", string.format("%s is longer than %d bytes (--max-line-bytes)", name, max_bytes), name } end
    local okr, body = pcall(p.request, { name = name, path = path, text = text, size = #text })
    if not okr then return i, nil, nil, { "pipeline_error", script .. ": " .. tostring(body), name } end
    if type(body) ~= "table" then return i, nil, nil, { "pipeline_error", script .. ": request(doc) returned " .. type(body) .. ", not a body table", name } end
    return i, nil, { custom_id = name, method = "POST", url = url, body = body }
  end
  return next_doc, #names, ffi.string(hex), total
end

--- Non-empty lines of the input (for the progress total).
local function count_lines(path)
  local f = assert(io.open(path, "rb"))
  local n = 0
  for _, text in M.lines(f, 1) do
    if text ~= "" and text ~= "\r" then n = n + 1 end
  end
  f:close()
  return n
end

local function check_writable(out)
  local f = io.open(out, "r+b")
  if f then f:close()
  else
    local g = io.open(out, "rb")
    if g then g:close() error(out .. ": the output exists but cannot be written", 0) end
  end
  local tmp = out .. ".tmp"
  local t, err = io.open(tmp, "wb")
  if not t then error(string.format("%s: cannot write the output there: %s", out, tostring(err)), 0) end
  t:close()
  os.remove(tmp)
end

--- Checks a job's input before anything is loaded: a JSONL file, or a folder
-- with o.pipeline. Returns {total, digest, size, next_item (for pipelines)}.
function M.check_input(o)
  local in_path, out = o.input, o.output
  local src = {}
  if o.pipeline then
    check_writable(out)
    src.next_item, src.total, src.digest, src.size = pipeline_source(in_path, o.pipeline, o.max_line_bytes)
    if src.total == 0 then error(in_path .. ": no documents in the folder", 0) end
    return src
  end
  if util.is_dir(in_path) then error(in_path .. ": is a folder; a folder of documents needs --pipeline SCRIPT.lua", 0) end
  local f, err = io.open(in_path, "rb")
  if not f then error(string.format("%s: cannot read the input: %s", in_path, tostring(err):gsub("^[^:]*: ", "")), 0) end
  src.size = f:seek("end")
  f:close()
  if not src.size then error(in_path .. ": cannot read the input", 0) end
  check_writable(out)
  src.total = count_lines(in_path)
  if src.total == 0 then error(in_path .. ": no requests in the input (it is empty)", 0) end
  local hex = ffi.new("char[65]")
  if C.lm_sha256_file(in_path, hex) ~= 0 then error(util.last_error(), 0) end
  src.digest = ffi.string(hex)
  return src
end

--- A job over a checked input (M.check_input) for a scheduler's model entry:
-- its journal opened (or resumed). Drive it with feed(), the scheduler's
-- step(), commit(), until done(); then close(). o: input, output, restart,
-- max_line_bytes, progress, priority (of its requests in the scheduler),
-- depth (requests kept queued or running; default twice the slots).
function M.open(o, src, sched, entry)
  local journal, old_tokens, old_failed = open_journal(o.output .. ".journal",
      { input_sha256 = src.digest, input_size = tostring(src.size), model = entry.id }, o.restart, o.input)
  local n_done = 0
  for _ in pairs(journal.done) do n_done = n_done + 1 end
  local run = setmetatable({ journal = journal, sched = sched, entry = entry, in_path = o.input, out = o.output,
                             seen = {}, submitted = {}, inflight = 0, tokens = 0, old_tokens = old_tokens,
                             max_line = o.max_line_bytes, resumed = n_done, priority = o.priority or 0,
                             depth = o.depth or 2 * #entry.slots, more = true, next_item = src.next_item,
                             total = src.total, t0 = now(),
                             progress = new_progress(src.total, n_done, old_failed, o.progress) }, Run)
  if not run.next_item then
    run.file = assert(io.open(o.input, "rb"))
    run.next_item = M.lines(run.file, o.max_line_bytes)
  end
  return run
end

--- Reads input and submits requests until depth are queued or running.
function Run:feed()
  local journal = self.journal
  while self.more and not self.cancelled and self.inflight < self.depth and #journal.pending < 1000 do
    local line, text, req, bad = self.next_item(journal.done)
    if not line then self.more = false break end
    if text then text = text:gsub("\r$", "") end
    local prev = journal.done[line]
    if prev ~= nil then
      -- committed before: only its custom_id matters now (for duplicates)
      if prev then self.seen[prev] = self.seen[prev] or line end
    elseif bad then
      self.seen[bad[3]] = line
      self:finish(line, bad[3], false, 0, output_line(bad[3], nil, nil, { code = bad[1], message = bad[2], line = line }))
    elseif req then
      self:take_request(line, req)
    elseif text ~= "" then
      self:take(line, text)
    end
  end
end

--- Commits what finished (one transaction) and shows progress.
function Run:commit()
  self.journal:flush()
  self.progress:show()
end

--- All input read and nothing running (or cancelled and nothing running).
function Run:done() return (not self.more or self.cancelled) and self.inflight == 0 end

--- Stops taking input; running requests are dropped (not journaled) at the
-- scheduler's next step.
function Run:cancel() self.cancelled = true end

--- Commits, writes the output from the journal, closes; returns the summary.
function Run:close()
  self.journal:flush()
  if self.file then self.file:close() self.file = nil end
  local dt = now() - self.t0
  self.progress:show(true)
  if self.progress.tty then io.stderr:write("\n") end
  local lines = self.journal:write_output(self.out)
  self.journal.db:close()
  return { requests = lines, failed = self.progress.failed, resumed = self.resumed, tokens = self.tokens + self.old_tokens,
           tokens_this_run = self.tokens, wall_s = math.floor(dt * 100 + 0.5) / 100,
           tokens_per_s = dt > 0 and math.floor(self.tokens / dt * 10 + 0.5) / 10 or 0, output = self.out }
end

--- `lumen batch`. o: input, output, pipeline, model, slots, ctx, threads,
-- restart, max_line_bytes, progress ("bar" | "json" | "none" | nil: bar on a TTY).
function M.run(o)
  math.randomseed(os.time() + math.floor(now() * 1000) % 100000)
  local src = M.check_input(o)
  local t_start = now()
  local model = lumen.model.load(o.model, { threads = o.threads })
  local id = model.alias or (o.model or ""):match("([^/]+)%.gguf$") or o.model or "model"
  local sched = scheduler.new{ slots = o.slots, prefill_chunk = 256 }
  local entry = sched:add_model(id, model, o.ctx)
  local run = M.open(o, src, sched, entry)
  if run.resumed > 0 then
    io.stderr:write(string.format("lumen batch: resuming: %d of %d requests already done (journal %s)\n",
                                  run.resumed, run.total, run.journal.path))
  end
  while true do
    run:feed()
    if run:done() then break end
    sched:step()
    run:commit()
  end
  local summary = run:close()
  summary.total_s = math.floor((now() - t_start) * 100 + 0.5) / 100
  io.stderr:write(openai.encode({ summary = summary }), "\n")
  return 0
end

return M
