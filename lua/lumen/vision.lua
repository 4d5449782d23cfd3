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
-- opts: threads.
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
                              image_size = info.image_size, longest_edge = info.longest_edge }, Projector)
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
-- <global-img>" + the overview's rows + "<fake_token_around_image>".
function Projector:image_parts(model, bytes, name)
  local rows, gx, gy = self:encode(bytes, name)
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
  return parts, { grid_x = gx, grid_y = gy, rows = rows }
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

--- Positions the parts take in the context.
function M.n_positions(parts)
  local n = 0
  for _, p in ipairs(parts) do n = n + (p.tokens and #p.tokens or p.n) end
  return n
end

M.Projector = Projector
return M
