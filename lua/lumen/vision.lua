--- Vision: images -> a projector (llama.cpp's mmproj GGUF, idefics3/SmolVLM) -> rows
-- of the text model's embeddings, laid out with SmolVLM's image tokens.
--   local vision = require "lumen.vision"
--   local proj = vision.load("vision-tiny-mmproj.gguf", text_model)
--   local parts = proj:image_parts(text_model, io.open("cat.jpg", "rb"):read("*a"), "cat.jpg")
--   vision.eval_parts(session, parts)          -- then session:generate{...}
-- C decodes, preprocesses and encodes; Lua only lays out the parts.
local ffi = require "ffi"
local C = require "lumen.ffi"
local util = require "lumen.util"

local M = {}
local Projector = {}

-- C's messages name the file and the problem: no Lua position in front
local function fail() error(util.last_error(), 0) end
Projector.__index = Projector

--- The mmproj file: a path, or a file name in the model cache.
function M.find(name)
  if name:find("/") then return name end
  for _, dir in ipairs(require("lumen.config").model_dirs()) do
    local p = dir .. "/" .. name
    if util.file_exists(p) then return p end
  end
  error("mmproj '" .. name .. "' is not in the model cache (bench/vision/make_mmproj.py writes the test ones)", 0)
end

--- Loads a projector; with text_model, checks that its rows fit that model.
-- opts: threads, cache (how many images' parts image_parts keeps, by the
-- sha256 of their bytes, so the same image again is not encoded again; default 0).
function M.load(path, text_model, opts)
  util.check_type("vision.load", "path", path, "string")
  path = M.find(path)
  local params = ffi.new("lm_model_params", { n_threads = opts and opts.threads or 0 })
  local h = C.lm_model_load(path, params)
  if h == nil then fail() end
  ffi.gc(h, C.lm_model_free)
  local info = ffi.new("lm_vision_info")
  if C.lm_vision_get_info(h, info) ~= 0 then fail() end
  local self = setmetatable({ h = h, path = path, tile_tokens = info.tile_tokens, proj_dim = info.proj_dim,
                              image_size = info.image_size, longest_edge = info.longest_edge,
                              cache_size = opts and opts.cache or 0, cache = {},
                              encodes = 0 }, Projector) -- encodes started (image_parts_start; not cache hits)
  if text_model and C.lm_vision_check(h, text_model.h) ~= 0 then fail() end
  return self
end

local function image_handle(bytes, name)
  local img = C.lm_image_decode(bytes, #bytes, name or "image")
  if img == nil then fail() end
  return ffi.gc(img, C.lm_image_free)
end

--- An image's rows: an [n, proj_dim] f32 tensor, and the grid (columns, rows of tiles).
function Projector:encode(bytes, name)
  util.check_type("encode", "bytes", bytes, "string")
  local img = image_handle(bytes, name)
  local gx, gy = ffi.new("int32_t[1]"), ffi.new("int32_t[1]")
  if C.lm_vision_grid(self.h, img, gx, gy) ~= 0 then fail() end
  local n = (gx[0] * gy[0] + 1) * self.tile_tokens
  local rows = require("lumen.tensor").new({ n, self.proj_dim })
  if C.lm_vision_encode(self.h, img, rows:data()) ~= 0 then fail() end
  return rows, gx[0], gy[0]
end

--- What the chat path needs for one image: a list of parts, each {tokens = {ids}}
-- or {rows = tensor, from = first row (0-based), n = rows}, in SmolVLM's layout as
-- llama.cpp's mtmd builds it: per tile "<fake_token_around_image><row_R_col_C>" + its
-- rows, "\n" after each row of tiles but the last, then "\n\n<fake_token_around_image>
-- <global-img>" + the overview's rows + "<fake_token_around_image>". With a cache
-- (vision.load's opts.cache) the same bytes give the parts kept from last time.
function Projector:image_parts(model, bytes, name)
  local key = self:_key(bytes)
  local hit = key and self:_cached(key, model)
  if hit then return hit.parts, hit.info end
  local rows, gx, gy = self:encode(bytes, name)
  return self:_layout(model, key, rows, gx, gy)
end

local Pending = {}
Pending.__index = Pending

--- image_parts on a thread of its own (lm_vision_encode_start), for a caller that
-- goes on meanwhile (a server's loop): the image is decoded now (a bad one raises
-- C's message at once), then encoded in the background. Returns a handle whose
-- :poll() is nil while it runs, then the parts and info as image_parts gives them
-- (or raises C's message). A cached image is done at once.
function Projector:image_parts_start(model, bytes, name)
  util.check_type("image_parts_start", "bytes", bytes, "string")
  local key = self:_key(bytes)
  local hit = key and self:_cached(key, model)
  if hit then return setmetatable({ parts = hit.parts, info = hit.info }, Pending) end
  local img = C.lm_image_decode(bytes, #bytes, name or "image")
  if img == nil then fail() end
  local job = C.lm_vision_encode_start(self.h, img)   -- takes the image
  if job == nil then fail() end
  self.encodes = self.encodes + 1
  return setmetatable({ proj = self, model = model, key = key, job = ffi.gc(job, C.lm_vision_job_free) }, Pending)
end

--- nil while the encode runs; then the parts and info (every call once done);
-- raises C's message when the encode failed.
function Pending:poll()
  if self.parts then return self.parts, self.info end
  local st = C.lm_vision_encode_poll(self.job)
  if st == 0 then return nil end
  local job = ffi.gc(self.job, nil)
  self.job = nil
  if st < 0 then
    local msg = util.last_error()
    C.lm_vision_job_free(job)
    error(msg, 0)
  end
  local dims = ffi.new("int32_t[3]")
  local ptr = C.lm_vision_job_rows(job, dims, dims + 1, dims + 2)
  local p = self.proj
  local rows = require("lumen.tensor").new({ dims[0], p.proj_dim })
  ffi.copy(rows:data(), ptr, dims[0] * p.proj_dim * 4)
  C.lm_vision_job_free(job)
  self.parts, self.info = p:_layout(self.model, self.key, rows, dims[1], dims[2])
  return self.parts, self.info
end

-- the cache's key of an image's bytes (their sha256), without a cache nil
function Projector:_key(bytes)
  if self.cache_size == 0 then return nil end
  local hex = ffi.new("char[65]")
  C.lm_sha256_hex(bytes, #bytes, hex)
  return ffi.string(hex, 64)
end

function Projector:_cached(key, model)
  for i, c in ipairs(self.cache) do
    if c.key == key and c.model == model then
      table.remove(self.cache, i)
      table.insert(self.cache, 1, c)   -- most recently used first
      return c
    end
  end
end

-- an image's rows laid out as image_parts describes (and kept in the cache)
function Projector:_layout(model, key, rows, gx, gy)
  local parts, k = {}, 0
  local function text(s) parts[#parts + 1] = { tokens = model:tokenize(s, { parse_special = true }) } end
  local function tile()
    parts[#parts + 1] = { rows = rows, from = k * self.tile_tokens, n = self.tile_tokens }
    k = k + 1
  end
  for r = 1, gy do
    for c = 1, gx do
      text(string.format("<fake_token_around_image><row_%d_col_%d>", r, c))
      tile()
    end
    if r < gy then text("\n") end
  end
  text("\n\n<fake_token_around_image><global-img>")
  tile()
  text("<fake_token_around_image>")
  local info = { grid_x = gx, grid_y = gy, rows = rows }
  if key then
    table.insert(self.cache, 1, { key = key, model = model, parts = parts, info = info })
    self.cache[self.cache_size + 1] = nil
  end
  return parts, info
end

--- Evaluates parts (image_parts, or {tokens = ...} of the text around them) into a session.
function M.eval_parts(session, parts)
  for _, p in ipairs(parts) do
    if p.tokens then
      if #p.tokens > 0 then session:eval(p.tokens) end
    else
      session:eval_embd(p.rows:data() + p.from * p.rows:dim(2), p.n)
    end
  end
end

--- The bytes of an image given as a URL (an OpenAI image_url): only a base64
-- data: URL ("data:image/png;base64,..."; C decodes it); nothing is fetched
-- from the network. Returns the bytes, or nil and why not.
function M.data_url(url)
  util.check_type("data_url", "url", url, "string")
  local scheme = url:match("^(%a[%w+.-]*):")
  scheme = scheme and scheme:lower()
  if scheme == "http" or scheme == "https" then
    return nil, "remote image URLs are not fetched (this server never reaches the network): " ..
                "send the image inline as a data: URL, data:image/png;base64,..."
  end
  if scheme ~= "data" then
    return nil, "the image URL must be a data: URL (data:image/png;base64,...), got '" .. url:sub(1, 32) .. (#url > 32 and "...'" or "'")
  end
  local comma = url:find(",", 6, true)
  if not comma then return nil, "the data: URL has no ',' before its data" end
  local meta = url:sub(6, comma - 1):lower()
  if not meta:find(";base64$") then return nil, "the data: URL must be base64 (data:image/png;base64,...), got 'data:" .. meta .. ",'" end
  local mime = meta:match("^([^;]*)")
  if mime ~= "" and not mime:find("^image/") then return nil, "the data: URL's type is '" .. mime .. "', not an image" end
  local bytes, err = util.base64_decode(url:sub(comma + 1))
  if not bytes then return nil, "the data: URL's " .. err end
  if bytes == "" then return nil, "the data: URL holds no bytes" end
  return bytes
end

--- A chat prompt with images, for a scheduler or a session: `rendered` is the
-- template's text with `marker` where each image goes, images[k] the parts
-- (image_parts) of the k-th. Returns the prompt as token ids in an int32
-- cdata (an image's positions hold the ids lm_session_eval_embd records for
-- its rows, so a prefix match over a session's history reuses them only for the
-- same rows), their count, and the segments that cover it in order, each
-- {at, n} of tokens or {at, n, rows, from, key} of image rows (key: sha256 of
-- the rows), cut where `lumen caption` cuts its evaluation calls. Errors when
-- the markers are not one per image.
function M.prompt(model, rendered, marker, images)
  local texts, at = {}, 1
  while true do
    local i = rendered:find(marker, at, true)
    if not i then break end
    texts[#texts + 1] = rendered:sub(at, i - 1)
    at = i + #marker
  end
  texts[#texts + 1] = rendered:sub(at)
  if #texts - 1 ~= #images then
    error(string.format("the rendered prompt holds %d image places for %d images (does a message's text hold lumen's " ..
                        "image placeholder, or does the chat template drop messages?)", #texts - 1, #images), 0)
  end
  local segs, total = {}, 0
  local function add(seg) seg.at = total; total = total + seg.n; segs[#segs + 1] = seg end
  for k, t in ipairs(texts) do
    if t ~= "" then
      local buf, n = model:_encode(t, false, true)
      if n > 0 then add({ n = n, buf = buf }) end
    end
    for _, p in ipairs(images[k] or {}) do
      if p.tokens then
        if #p.tokens > 0 then add({ n = #p.tokens, tokens = p.tokens }) end
      else
        add({ n = p.n, rows = p.rows, from = p.from })
      end
    end
  end
  local out = ffi.new("int32_t[?]", math.max(total, 1))
  local hex = ffi.new("char[65]")
  for _, seg in ipairs(segs) do
    if seg.buf then
      ffi.copy(out + seg.at, seg.buf, seg.n * 4)
    elseif seg.tokens then
      for i = 1, seg.n do out[seg.at + i - 1] = seg.tokens[i] end
    else
      local ptr = seg.rows:data() + seg.from * seg.rows:dim(2)
      if C.lm_embd_ids(model.h, ptr, seg.n, out + seg.at) ~= 0 then fail() end
      C.lm_sha256_hex(ptr, seg.n * seg.rows:dim(2) * 4, hex)
      seg.key = ffi.string(hex, 64)
    end
    seg.buf, seg.tokens = nil, nil
  end
  return out, total, segs
end

--- Positions the parts take in the context.
function M.n_positions(parts)
  local n = 0
  for _, p in ipairs(parts) do n = n + (p.tokens and #p.tokens or p.n) end
  return n
end

M.Projector = Projector
return M
