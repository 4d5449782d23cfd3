-- Vision: images, the idefics3 projector, image rows in a session, against llama.cpp's mtmd
-- (spec/fixtures/vision_idefics3.txt, recorded by bench/vision/reference.py). The model
-- files and photographs come from bench/vision/make_mmproj.py (model cache, never committed);
-- (scripts/test.sh writes them): without them the agreement specs fail, saying so.
local lumen = require "lumen"
local vision = require "lumen.vision"
local ffi = require "ffi"
local C = require "lumen.ffi"

local home = os.getenv("HOME")
local models = os.getenv("LUMEN_MODELS") or (home .. "/.cache/lumen/models")
local images = models:gsub("/+$", ""):gsub("[^/]+$", "") .. "vision/images/"
local root = os.getenv("LUMEN_ROOT") or "."
local TEXT = models .. "/SmolLM2-135M-vision.Q4_1.gguf"
local TEXT_F32 = models .. "/SmolLM2-135M-vision.f32.gguf"  -- scripts/test.sh: lumen quantize TEXT TEXT_F32 f32
local have = io.open(TEXT) and io.open(TEXT_F32) and io.open(models .. "/vision-tiny-mmproj.gguf") and io.open(images .. "rocket.jpg")

local function read(path) return assert(require("lumen.util").read_file(path)) end
local function write(path, s) local f = assert(io.open(path, "wb")) f:write(s) f:close() end

local function fixture()
  local fx, cur = {}, nil
  for line in io.lines(root .. "/spec/fixtures/vision_idefics3.txt") do
    local w = {}
    for x in line:gmatch("%S+") do w[#w + 1] = x end
    if w[1] == "image" then cur = { name = w[2], w = tonumber(w[3]), h = tonumber(w[4]), sha = w[5], rows = {} }; fx[#fx + 1] = cur
    elseif w[1] == "row" then
      cur.rows[#cur.rows + 1] = { tonumber(w[4]), tonumber(w[5]), tonumber(w[6]), tonumber(w[7]), tonumber(w[8]) }
    elseif w[1] == "seq" then cur.seq = table.concat(w, " ", 2)
    elseif w[1] == "greedy" then cur.greedy = { unpack(w, 2) }
    elseif w[1] == "margin" then cur.margin = { unpack(w, 2) }
    elseif w[1] == "greedy_f32" then cur.greedy_f32 = { unpack(w, 2) }
    elseif w[1] == "margin_f32" then cur.margin_f32 = { unpack(w, 2) } end
  end
  return fx
end

local function decode(bytes, name)
  local img = C.lm_image_decode(bytes, #bytes, name)
  if img == nil then return nil, ffi.string(C.lm_last_error()) end
  return ffi.gc(img, C.lm_image_free)
end

local function rgb_sha(img)
  local hex = ffi.new("char[65]")
  C.lm_sha256_hex(C.lm_image_rgb(img), C.lm_image_width(img) * C.lm_image_height(img) * 3, hex)
  return ffi.string(hex)
end

-- a PNG chunk with its CRC (crc32 of type + data), for hand-made bad files
local function crc32(s)
  local crc = 0xFFFFFFFF
  for i = 1, #s do
    crc = bit.bxor(crc, s:byte(i))
    for _ = 1, 8 do crc = bit.band(crc, 1) ~= 0 and bit.bxor(bit.rshift(crc, 1), 0xEDB88320) or bit.rshift(crc, 1) end
  end
  return bit.bxor(crc, 0xFFFFFFFF)
end
local function be32(n) return string.char(bit.band(bit.rshift(n, 24), 255), bit.band(bit.rshift(n, 16), 255), bit.band(bit.rshift(n, 8), 255), bit.band(n, 255)) end
local function chunk(ty, data) return be32(#data) .. ty .. data .. be32(crc32(ty .. data)) end
local function png_header(w, h) return "\137PNG\r\n\26\n" .. chunk("IHDR", be32(w) .. be32(h) .. "\8\2\0\0\0") end

describe("images", function()
  it("refuse a text file named .png, naming it", function()
    local img, err = decode("just some text\n", "notes.png")
    assert.is_nil(img)
    assert.matches("notes.png: not an image lumen reads", err, 1, true)
  end)

  it("refuse a PNG bomb from its header, before allocating", function()
    local img, err = decode(png_header(60000, 60000) .. chunk("IDAT", "x") .. chunk("IEND", ""), "bomb.png")
    assert.is_nil(img)
    assert.matches("bomb.png: the PNG image is 60000x60000", err, 1, true)
    assert.matches("decompression bomb", err, 1, true)
    img, err = decode(png_header(16000, 7000) .. chunk("IDAT", "x") .. chunk("IEND", ""), "wide.png")   -- 112 Mpixel
    assert.matches("100 Mpixel", err, 1, true)
  end)

  it("refuse a 0x0 image", function()
    local img, err = decode(png_header(0, 0) .. chunk("IEND", ""), "empty.png")
    assert.is_nil(img)
    assert.matches("empty.png: the PNG image is 0x0: an image needs at least one pixel", err, 1, true)
    img, err = decode("", "nothing.jpg")
    assert.matches("nothing.jpg: .*empty", err)
  end)

  it("refuse a truncated JPEG and a truncated PNG", function()
    assert(have, "the vision test files are missing: run scripts/test.sh (bench/vision/make_mmproj.py, then lumen quantize to f32)")
    local jpg = read(images .. "rocket.jpg")
    local img, err = decode(jpg:sub(1, math.floor(#jpg / 2)), "half.jpg")
    assert.is_nil(img)
    assert.matches("half.jpg: the JPEG is truncated", err, 1, true)
    local png = read(images .. "chelsea.png")
    img, err = decode(png:sub(1, math.floor(#png / 2)), "half.png")
    assert.is_nil(img)
    assert.matches("half.png: not a readable PNG: the file is truncated", err, 1, true)
  end)

  it("decode a WebP as Pillow does", function()
    local img = assert(decode(read(root .. "/spec/fixtures/vision/chelsea_120x80.webp"), "chelsea.webp"))
    assert.equal(120, C.lm_image_width(img))
    assert.equal(80, C.lm_image_height(img))
    -- Pillow 12 (its own libwebp) on the same file
    assert.equal("be6cf4ec329541fbdc60bcb83e333d7c3711e8a0f5910b9ba71f1c7cd290a6ee", rgb_sha(img))
  end)

  it("decode JPEG, PNG, grayscale and RGBA PNG to the RGB pixels Pillow gives", function()
    assert(have, "the vision test files are missing: run scripts/test.sh (bench/vision/make_mmproj.py, then lumen quantize to f32)")
    for _, im in ipairs(fixture()) do
      local img = assert(decode(read(images .. im.name), im.name))
      assert.equal(im.w, C.lm_image_width(img))
      assert.equal(im.h, C.lm_image_height(img))
      assert.equal(im.sha, rgb_sha(img), im.name)
    end
  end)
end)

describe("vision projector (idefics3)", function()
  if not have then
    it("needs bench/vision/make_mmproj.py's files", function()
      error("the vision test files are missing: run scripts/test.sh (bench/vision/make_mmproj.py, then lumen quantize to f32)")
    end)
    return
  end
  local text, proj
  local function load()
    text = text or lumen.model.load(TEXT)
    proj = proj or vision.load("vision-tiny-mmproj.gguf", text)
    return text, proj
  end

  it("reads every hyperparameter from the file's clip.* keys", function()
    local _, p = load()
    assert.equal(16, p.tile_tokens)         -- (64 / 8)^2 patches / 2^2
    assert.equal(576, p.proj_dim)
    assert.equal(64, p.image_size)
    assert.equal(192, p.longest_edge)
  end)

  it("refuse another projector type, naming the file", function()
    local src = read(models .. "/vision-tiny-mmproj.gguf")
    local path = os.tmpname() .. ".gguf"
    local at = src:find("idefics3", src:find("clip.projector_type", 1, true), true)
    write(path, src:sub(1, at - 1) .. "idefics2" .. src:sub(at + 8))
    local ok, err = pcall(vision.load, path)
    os.remove(path)
    assert.is_false(ok)
    assert.matches(path, err, 1, true)
    assert.matches("projector type 'idefics2': lumen runs idefics3", err, 1, true)
  end)

  it("refuse a projector whose rows are not the text model's width, naming both files", function()
    local ok, err = pcall(vision.load, "vision-tiny-mmproj.gguf", { h = lumen.model.load("gemma3").h })
    assert.is_false(ok)
    assert.matches("vision-tiny-mmproj.gguf' makes rows of 576 values", err, 1, true)
    assert.matches("gemma-3-270m-q4_k_m.gguf' takes 640", err, 1, true)
  end)

  it("encode each test image to llama.cpp's rows (1e-3 relative) in mtmd's token layout", function()
    local t, p = load()
    local worst = 0
    for _, im in ipairs(fixture()) do
      local parts, g = p:image_parts(t, read(images .. im.name), im.name)
      local rows = g.rows
      assert.equal(#im.rows, rows:dim(1), im.name .. ": image positions")
      local E, d = rows:dim(2), rows:data()
      for r, ref in ipairs(im.rows) do
        local s = 0
        for j = 0, E - 1 do s = s + d[(r - 1) * E + j] ^ 2 end
        local rel = math.abs(math.sqrt(s) - ref[1]) / ref[1]
        for k, j in ipairs({ 0, 1, 2, E - 1 }) do rel = math.max(rel, math.abs(d[(r - 1) * E + j] - ref[k + 1]) / ref[1]) end
        worst = math.max(worst, rel)
      end
      local seq = {}
      for _, x in ipairs(t:tokenize("<|im_start|>user\n")) do seq[#seq + 1] = "t:" .. x end
      for _, part in ipairs(parts) do
        if part.tokens then for _, x in ipairs(part.tokens) do seq[#seq + 1] = "t:" .. x end
        else seq[#seq + 1] = "i:" .. part.n end
      end
      for _, x in ipairs(t:tokenize("Describe this image.<|im_end|>\n<|im_start|>assistant\n")) do seq[#seq + 1] = "t:" .. x end
      assert.equal(im.seq, table.concat(seq, " "), im.name .. ": layout")
    end
    assert.is_true(worst < 1e-3, "worst relative difference " .. worst)
  end)

  --- Greedy continuations of every fixture image against llama.cpp's: how many are
  -- identical for 16 tokens, and how many fork where llama.cpp's top-1/top-2 margin
  -- is under 0.1 (a near-tie that rounding decides).
  local function greedy_agreement(t, p, key)
    local same, near = 0, 0
    for _, im in ipairs(fixture()) do
      local s = t:session{ ctx = 1024 }
      s:eval(t:tokenize("<|im_start|>user\n"))
      vision.eval_parts(s, (p:image_parts(t, read(images .. im.name), im.name)))
      s:eval(t:tokenize("Describe this image.<|im_end|>\n<|im_start|>assistant\n"))
      local want, margin = im["greedy" .. key], im["margin" .. key]
      local fork
      for i = 1, #want do
        local tok = s:logits():argmax() - 1
        if tok ~= tonumber(want[i]) then fork = i break end
        if t:is_eog(tok) then break end
        s:eval(tok)
      end
      if not fork then same = same + 1
      elseif tonumber(margin[fork]) < 0.1 then near = near + 1 end
    end
    return same, near
  end

  it("continue greedily as llama.cpp does on the f32 text model: 16 tokens identical on 4 of 5 images", function()
    local t = lumen.model.load(TEXT_F32)
    local same, near = greedy_agreement(t, vision.load("vision-tiny-mmproj.gguf", t), "_f32")
    assert.is_true(same >= 4, string.format("%d identical, %d fork at a near-tie", same, near))
  end)

  it("continue greedily as llama.cpp does on Q4_1: 16 tokens, or a fork at a near-tie, on 4 of 5 images", function()
    -- both engines quantize activations to 8 bits for Q4_1 weights, at different points:
    -- a margin under 0.1 logits is decided by that rounding
    local t, p = load()
    local same, near = greedy_agreement(t, p, "")
    assert.is_true(same >= 4 or same + near >= 4, string.format("%d identical, %d fork at a near-tie", same, near))
  end)

  it("record image positions so prefix reuse never matches across images", function()
    local t, p = load()
    local function history(name)
      local s = t:session{ ctx = 1024 }
      vision.eval_parts(s, (p:image_parts(t, read(images .. name), name)))
      return s:tokens()
    end
    local a, a2, b = history("rocket.jpg"), history("rocket.jpg"), history("chelsea.png")
    local n_neg, differ = 0, 0
    for i = 1, #a do
      assert.equal(a[i], a2[i])                  -- the same image: the same history (reusable)
      if a[i] < 0 then n_neg = n_neg + 1 end
      if b[i] and a[i] < 0 and a[i] == b[i] then differ = differ - 1 end
    end
    assert.equal(112, n_neg)                     -- 6 tiles + overview, 16 rows each
    assert.equal(0, differ)                      -- no image position equals another image's
  end)

  it("lay out a chat prompt whose image positions hold the ids the session records", function()
    local t, p = load()
    local openai, chat = require "lumen.openai", require "lumen.chat"
    local parts = p:image_parts(t, read(root .. "/spec/fixtures/vision/chelsea_40x27.jpg"), "chelsea")
    local text = chat.render(t, { { role = "user", content = openai.IMAGE_MARKER .. "What is it?" } }, true)
    local buf, n, segs = vision.prompt(t, text, openai.IMAGE_MARKER, { parts })
    assert.equal(n, segs[#segs].at + segs[#segs].n)
    local s = t:session{ ctx = 1024 }
    for _, seg in ipairs(segs) do
      if seg.rows then s:eval_embd(seg.rows:data() + seg.from * seg.rows:dim(2), seg.n)
      else s:eval_raw(buf + seg.at, seg.n) end
    end
    local hist, images = s:tokens(), 0
    for i = 1, n do
      assert.equal(buf[i - 1], hist[i])
      if hist[i] < 0 then images = images + 1 end
    end
    assert.equal(10 * 16, images)                -- 3x3 tiles + the overview, 16 rows each
    -- a message's text holding the marker is not taken for an image
    assert.has_error(function() vision.prompt(t, text .. openai.IMAGE_MARKER, openai.IMAGE_MARKER, { parts }) end,
                     "the rendered prompt holds 2 image places for 1 images (does a message's text hold lumen's image placeholder, or does the chat template drop messages?)")
  end)

  it("through the scheduler: lumen caption's text, the same image reused, another image not", function()
    local t, p = load()
    local scheduler, openai, chat = require "lumen.scheduler", require "lumen.openai", require "lumen.chat"
    local sched = scheduler.new{ slots = 1 }
    local entry = sched:add_model("v", t, 1024)
    local function run(name)
      local bytes = read(root .. "/spec/fixtures/vision/" .. name)
      local job = openai.chat_request({ messages = { { role = "user", content = {
        { type = "image_url", image_url = { url = "data:image/png;base64,x" } }, { type = "text", text = "What is in the picture?" } } } },
        temperature = 0, max_tokens = 12 }, {})
      job.image_parts = { (p:image_parts(t, bytes, name)) }
      job.collect = true
      sched:submit(scheduler.prepare(entry, job), { alive = function() return true end, started = function() end,
                                                    piece = function() end, finished = function() end, cancelled = function() end })
      while not sched:idle() do sched:step() end
      -- what pipelines/caption.lua does for the same image and prompt
      local rendered = chat.render(t, { { role = "user", content = openai.IMAGE_MARKER .. "What is in the picture?" } })
      local at = rendered:find(openai.IMAGE_MARKER, 1, true)
      local s = t:session{ ctx = 1024 }
      s:eval(t:tokenize(rendered:sub(1, at - 1)))
      vision.eval_parts(s, (p:image_parts(t, bytes, name)))
      local out = {}
      for piece in s:generate{ tokens = t:tokenize(rendered:sub(at + #openai.IMAGE_MARKER)),
                               sampler = lumen.sampler.from_config{ temperature = 0 }, max_tokens = 12 } do out[#out + 1] = piece end
      assert.equal(table.concat(out), scheduler.choices(job)[1].text)
      local first_row
      for _, seg in ipairs(job.segments) do if seg.rows then first_row = seg.at break end end
      return job, first_row
    end
    local a1 = run("chelsea_40x27.jpg")
    -- with another request decoding: the image's rows go alone before each batched step, its
    -- text rides along in it (2 slots, the first busy with text), and the answer stays the same
    local s2 = scheduler.new{ slots = 2, prefill_chunk = 32 }
    local e2 = s2:add_model("v", t, 1024)
    local talk = openai.chat_request({ messages = { { role = "user", content = "Tell me a story." } }, temperature = 0, max_tokens = 60 }, {})
    local sink = { alive = function() return true end, started = function() end, piece = function() end,
                   finished = function() end, cancelled = function() end }
    talk.collect = true
    s2:submit(scheduler.prepare(e2, talk), sink)
    for _ = 1, 3 do s2:step() end
    local job = openai.chat_request({ messages = { { role = "user", content = {
      { type = "image_url", image_url = { url = "data:," } }, { type = "text", text = "What is in the picture?" } } } },
      temperature = 0, max_tokens = 12 }, {})
    job.image_parts = { (p:image_parts(t, read(root .. "/spec/fixtures/vision/chelsea_40x27.jpg"), "c")) }
    job.collect = true
    s2:submit(scheduler.prepare(e2, job), sink)
    local steps_while_running = 0
    while not s2:idle() do
      if job.prefilled and job.prefilled < job.prompt_tokens and #s2.decoding > 0 then steps_while_running = steps_while_running + 1 end
      s2:step()
    end
    assert.is_true(steps_while_running > 3, "the image prompt was evaluated over " .. steps_while_running .. " steps beside the other")
    assert.equal(scheduler.choices(a1)[1].text, scheduler.choices(job)[1].text)
    local a2 = run("chelsea_40x27.jpg")
    assert.equal(a2.prompt_tokens - 1, a2.cached_tokens)             -- everything but the last position
    local b, b_first = run("chelsea_40x27_gray.png")
    assert.equal(a1.prompt_tokens, b.prompt_tokens)
    assert.equal(b_first, b.cached_tokens)                            -- up to the image, not one row of it
  end)
end)

describe("image URLs", function()
  local util = require "lumen.util"
  it("decode base64 in C, strictly, naming the first bad character", function()
    for n = 0, 40 do
      local bytes = {}
      for i = 1, n do bytes[i] = string.char((i * 37 + n) % 256) end
      local s = table.concat(bytes)
      local b64 = util.base64(s, #s)
      assert.equal(s, util.base64_decode(b64))
      assert.equal(s, util.base64_decode((b64:gsub("=+$", ""))))      -- padding optional
    end
    local ok, err = util.base64_decode("aGVs bG8=")
    assert.is_nil(ok)
    assert.equal("base64: ' ' at offset 4 is not a base64 character", err)
    assert.matches("not a whole number of bytes", select(2, util.base64_decode("aGVsb")), 1, true)
    assert.matches("'=' at offset 2", select(2, util.base64_decode("aG=sbG8=")), 1, true)
    assert.matches("'-' at offset 0", select(2, util.base64_decode("-_AA")), 1, true)   -- URL-safe letters are not standard
  end)

  it("take only base64 data: URLs of images, and fetch nothing", function()
    assert.equal("hello", vision.data_url("data:image/png;base64,aGVsbG8="))
    assert.equal("hello", vision.data_url("DATA:;base64,aGVsbG8="))
    local function why(url) return select(2, vision.data_url(url)) end
    assert.matches("remote image URLs are not fetched", why("https://example.com/a.png"), 1, true)
    assert.matches("remote image URLs are not fetched", why("HTTP://example.com/a.png"), 1, true)
    assert.matches("must be a data: URL", why("file:///etc/passwd"), 1, true)
    assert.matches("must be base64", why("data:image/png,abc"), 1, true)
    assert.matches("'text/plain', not an image", why("data:text/plain;base64,aGVsbG8="), 1, true)
    assert.matches("holds no bytes", why("data:image/png;base64,"), 1, true)
    assert.matches("data: URL's base64: '!' at offset 2", why("data:image/png;base64,aG!s"), 1, true)
  end)
end)
