--- Text into chunks for retrieval: at most max_tokens tokens of a tokenizer
-- each, cut between paragraphs or sentences (a sentence longer than a chunk is
-- cut between words), each chunk repeating up to `overlap` tokens of whole
-- sentences from the end of the one before, so a fact that straddles a cut is
-- whole in one of them.
--   local chunks = chunker.split(text, function(s) return #model:tokenize(s) end,
--                                { max_tokens = 200, overlap = 32 })
--   -- {text=, byte_start=, byte_end= (1-based, inclusive), tok_start=, tok_end=}...
local M = {}

-- sentence ends: . ! ? (and their CJK forms) before white space, or a line break
local ENDS = { ["."] = true, ["!"] = true, ["?"] = true }
local CJK_ENDS = { ["\227\128\130"] = true, ["\239\188\129"] = true, ["\239\188\159"] = true } -- 。！？

--- Units (sentences) with byte ranges [s, e], in order, and whether each starts a paragraph.
local function units(text)
  local out = {}
  local n = #text
  local i = 1
  local para = true
  while i <= n do
    -- skip white space; a blank line starts a paragraph
    local ws_s, ws_e = text:find("^%s+", i)
    if ws_s then
      if text:sub(ws_s, ws_e):find("\n%s*\n") then para = true end
      i = ws_e + 1
    end
    if i > n then break end
    local j = i
    local stop
    while j <= n do
      local c = text:sub(j, j)
      if c == "\n" and text:find("^\n%s*\n", j) then stop = j - 1 break end
      if ENDS[c] and (j == n or text:find("^%s", j + 1)) then stop = j break end
      local c3 = text:sub(j, j + 2)
      if CJK_ENDS[c3] then stop = j + 2 break end
      j = j + 1
    end
    stop = stop or n
    out[#out + 1] = { s = i, e = stop, para = para }
    para = false
    i = stop + 1
  end
  return out
end

-- A unit longer than max tokens: cut between words (halving), keeping byte ranges.
local function split_long(text, u, count, max, out)
  local s, e = u.s, u.e
  if count(text:sub(s, e)) <= max then
    out[#out + 1] = { s = s, e = e, para = u.para }
    return
  end
  local mid = math.floor((s + e) / 2)
  local cut = text:find("%s", mid) -- a space at or after the middle
  if not cut or cut >= e then cut = text:sub(s, mid):match(".*()%s") end
  if not cut or cut <= s then
    -- no space (CJK, a long token run): cut at a UTF-8 character boundary
    cut = mid
    while cut > s and text:byte(cut + 1) and text:byte(cut + 1) >= 0x80 and text:byte(cut + 1) < 0xC0 do cut = cut - 1 end
    if cut <= s then out[#out + 1] = { s = s, e = e, para = u.para } return end
  end
  split_long(text, { s = s, e = cut, para = u.para }, count, max, out)
  local r = cut + 1
  while r <= e and text:find("^%s", r) do r = r + 1 end
  if r <= e then split_long(text, { s = r, e = e, para = false }, count, max, out) end
end

--- Chunks of text: count(s) gives the tokens of s; opts: max_tokens (200),
-- overlap (32). Returns {text, byte_start, byte_end, tok_start, tok_end}...
function M.split(text, count, opts)
  opts = opts or {}
  local max = opts.max_tokens or 200
  local overlap = opts.overlap or 32
  if max < 8 then error("chunker: max_tokens must be at least 8", 2) end
  local us = {}
  for _, u in ipairs(units(text)) do split_long(text, u, count, max, us) end
  local pos = 0
  for _, u in ipairs(us) do
    u.n = count(text:sub(u.s, u.e))
    u.t0 = pos
    pos = pos + u.n
  end
  local chunks = {}
  local i = 1
  while i <= #us do
    local j, sum = i, us[i].n
    while j < #us and sum + us[j + 1].n <= max do
      j = j + 1
      sum = sum + us[j].n
    end
    chunks[#chunks + 1] = { text = text:sub(us[i].s, us[j].e), byte_start = us[i].s, byte_end = us[j].e,
                            tok_start = us[i].t0, tok_end = us[j].t0 + us[j].n }
    if j == #us then break end
    -- the next chunk starts with whole sentences of this one's end, up to `overlap` tokens
    local k, back = j + 1, 0
    while k - 1 > i and back + us[k - 1].n <= overlap and (sum - back - us[k - 1].n) > 0 do
      k = k - 1
      back = back + us[k].n
    end
    -- the overlap must leave room for new text
    if back + us[j + 1].n > max then k = j + 1 end
    i = k
  end
  return chunks
end

M._units = units
return M
