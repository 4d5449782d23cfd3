-- build/lumen run bench/kv_logits.lua MODEL KV_TYPE IDS_FILE OUT P
-- The logits lumen gives along a fixed token sequence: the first P ids as one
-- prompt, then the rest one decode step at a time (the path a KV cache type
-- matters for), each row of n_vocab float32 appended to OUT. For
-- bench/big_models.py's agreement part, which compares them with llama.cpp's.
local lumen = require "lumen"
local ffi = require "ffi"
local path, kv, ids_file, out, P = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5])
local ids = {}
for w in assert(io.open(ids_file)):read("*a"):gmatch("%d+") do ids[#ids + 1] = tonumber(w) end
local m = lumen.model.load(path, { threads = tonumber(os.getenv("LUMEN_THREADS") or "2") })
local s = m:session{ ctx = #ids + 8, kv_type = kv }
local f = assert(io.open(out, "wb"))
local function dump() f:write(ffi.string(s:logits():data(), m.n_vocab * 4)) end
s:eval({ unpack(ids, 1, P) })
dump()
for i = P + 1, #ids do s:eval(ids[i]) dump() end
f:close()
