--- `lumen caption IMAGE... [-p PROMPT] [--mmproj FILE] [-m MODEL] [--json]`: one
-- caption per image. Load the text model and its projector, then per image:
-- encode it, lay its rows into the chat prompt, generate.
local M = {}

local util = require "lumen.util"

-- Where the image goes in the rendered prompt (the server's marker too): plain bytes
-- no template or tokenizer treats specially (SmolVLM's own "<image>" is a control token).
local MARKER = require("lumen.openai").IMAGE_MARKER

local function progress(i, n)
  local w = 30
  local done = math.floor(w * i / n)
  io.stderr:write(string.format("\r[%s%s] %d/%d", string.rep("#", done), string.rep(" ", w - done), i, n))
  if i == n then io.stderr:write("\n") end
end

local function is_tty(fd)
  local ffi = require "ffi"
  pcall(ffi.cdef, "int isatty(int fd);")
  return ffi.C.isatty(fd) == 1
end

--- o: images (paths), prompt, model, mmproj, json, n_predict, threads, ctx, sampling, stats.
function M.run(o)
  local lumen = require "lumen"
  local vision = require "lumen.vision"
  local chat = require "lumen.chat"
  local model = lumen.model.load(o.model, { threads = o.threads })
  local mmproj = o.mmproj or (model.entry and model.entry.mmproj)
  if not mmproj then
    error(string.format("model '%s' has no projector: give --mmproj FILE, or name one for its alias in " ..
                        "configs/models.yaml (mmproj: FILE)", o.model or model.alias or model.path), 0)
  end
  local proj = vision.load(mmproj, model, { threads = o.threads })

  -- the prompt around the image: the same text before it for every image (kept in the cache)
  local rendered = chat.render(model, { { role = "user", content = MARKER .. (o.prompt or "Describe this image.") } })
  local at = rendered:find(MARKER, 1, true)
  local before = model:tokenize(rendered:sub(1, at - 1))
  local after = model:tokenize(rendered:sub(at + #MARKER))
  local session = model:session{ ctx = o.ctx or 4096 }
  session:eval(before)

  local sampling = o.sampling or {}
  if sampling.temperature == nil then sampling.temperature = 0 end   -- captions: greedy unless asked
  local cjson = require "cjson"
  local show = o.progress ~= false and #o.images > 1 and is_tty(2)
  local failed, t0 = 0, chat.now()
  for i, path in ipairs(o.images) do
    local ok, caption = pcall(function()
      local bytes, err = util.read_file(path)
      if not bytes then error(path .. ": " .. tostring(err), 0) end
      local parts = proj:image_parts(model, bytes, path)
      if #before + vision.n_positions(parts) + #after + (o.n_predict or 64) > session:ctx() then
        error(string.format("%s: the image takes %d positions; with the prompt and %d tokens to write that exceeds " ..
                            "the context of %d (-c)", path, vision.n_positions(parts), o.n_predict or 64, session:ctx()), 0)
      end
      session:rewind(#before)
      vision.eval_parts(session, parts)
      local sampler = require("lumen.sampler").from_config(sampling)
      local out = {}
      for piece in session:generate{ tokens = after, sampler = sampler, max_tokens = o.n_predict or 64 } do
        out[#out + 1] = piece
      end
      return (table.concat(out):gsub("^%s+", ""):gsub("%s+$", ""))
    end)
    if show then progress(i, #o.images) end
    if not ok then
      failed = failed + 1
      local msg = tostring(caption)
      if o.json then io.write(cjson.encode({ image = path, error = msg }), "\n")
      else io.stderr:write("lumen: error: ", msg, "\n") end
    elseif o.json then
      io.write(cjson.encode({ image = path, caption = caption }), "\n")
    else
      io.write(#o.images > 1 and (path .. ": ") or "", caption, "\n")
    end
    io.flush()
  end
  if o.stats then
    io.stderr:write(string.format("captioned %d images (%d failed) in %.2f s\n", #o.images - failed, failed, chat.now() - t0))
  end
  return failed > 0 and 1 or 0
end

return M
