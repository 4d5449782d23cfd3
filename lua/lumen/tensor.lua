--- Tensors: `local tensor = require "lumen.tensor"`.
--
-- A tensor is the C library's own `lm_tensor *` cdata, owned through
-- ffi.gc(ptr, lm_tensor_free); its methods come from ffi.metatype on the opaque
-- `struct lm_tensor`, so any tensor pointer the C side hands out (logits views,
-- model weights) has them too, and there is no second Lua object per tensor
-- (rather than a wrapper table holding the cdata). What that choice implies:
--   * `t[i]` is not available (LuaJIT reserves numeric indexing of pointers);
--     use t:get(i, ...) or t:slice(1, i, i).
--   * A metatype is set once per process; this module registers it once and
--     keeps working when re-required (after package.loaded was cleared).
--
-- Conventions
--   * Indices and dimensions are 1-based, like Lua: t:dim(1) is the outermost
--     size, t:get(1, 1) the first element, t:argmax() a 1-based flat index.
--   * t:slice(dim, start, stop) keeps start..stop INCLUSIVE (like string.sub);
--     stop defaults to the end, stop = start - 1 gives an empty slice.
--   * t:topk(k) returns two Lua arrays: 1-based indices and values, best first.
--   * Views (view, slice, transpose) share memory with their base and keep its
--     storage alive; math results are new contiguous f32 tensors.
--   * Errors are raised at the caller (error(msg, 2)), C errors included.
local ffi = require "ffi"
local C = require "lumen.ffi"

local M = {}

local F32 = 0
local MAX_DIMS = 4
local OP = { add = 0, sub = 1, mul = 2, div = 3 }

local tensor_ct = ffi.typeof("lm_tensor *")
local char_ptr = ffi.typeof("char *")
local int64_arr = ffi.typeof("int64_t[?]")
local float_arr = ffi.typeof("float[?]")

-- Reusable scratch for shapes, strides and top-k results (no per-call allocation).
local shape_buf = ffi.new("int64_t[4]")
local stride_buf = ffi.new("int64_t[4]")
local topk_cap, topk_idx, topk_val = 0, nil, nil

local function is_tensor(x)
  return ffi.istype(tensor_ct, x) and x ~= nil
end
M.is_tensor = is_tensor

local function last_error()
  return ffi.string(C.lm_last_error())
end

local function describe(x)
  if type(x) == "cdata" then
    if ffi.istype(tensor_ct, x) then return "a NULL tensor" end
    return tostring(ffi.typeof(x))
  end
  return type(x)
end

-- Raises "<fname>: expected a tensor, got string" at the caller of the method.
local function check(t, fname)
  if not is_tensor(t) then
    error(fname .. ": expected a tensor, got " .. describe(t), 3)
  end
end

local function check_int(fname, what, v, level)
  if type(v) ~= "number" or v ~= math.floor(v) or v ~= v or v == math.huge or v == -math.huge then
    error(("%s: %s must be an integer, got %s"):format(fname, what, type(v) == "number" and tostring(v) or type(v)),
      level + 1)
  end
end

--- Takes ownership of one reference to a C tensor (from lm_tensor_* or
-- lm_session_logits_tensor / lm_model_weight): it is freed when collected.
function M.own(ptr)
  if ptr == nil then error(last_error(), 2) end
  return ffi.gc(ptr, C.lm_tensor_free)
end
local own = M.own

-- Note for the methods below: helpers that raise with a level are never
-- tail-called (`return helper()`), since a tail call drops the frame the level
-- counts on; results are checked in place: `if r == nil then error(..., 2) end`.

---------------------------------------------------------------------------
-- dtypes and the layout cache

local dtype_names = {}
local function dtype_name(id)
  local n = dtype_names[id]
  if not n then
    local p = C.lm_dtype_name(id)
    n = p ~= nil and ffi.string(p) or ("dtype " .. tostring(id))
    dtype_names[id] = n
  end
  return n
end

local bits = ffi.new("union { uint32_t u; float f; }")
local function bf16_to_float(h)
  bits.u = bit.lshift(h, 16)
  return bits.f
end
local function f16_to_float(h)
  local sign = bit.band(h, 0x8000) ~= 0 and -1 or 1
  local e, m = bit.band(bit.rshift(h, 10), 0x1f), bit.band(h, 0x3ff)
  if e == 0 then return sign * m * 2 ^ -24 end
  if e == 31 then return m == 0 and sign * math.huge or 0 / 0 end
  return sign * (1 + m / 1024) * 2 ^ (e - 15)
end

-- How elements of each readable dtype are loaded and stored from Lua.
-- conv turns the raw element into a number; settable dtypes store directly.
local elem_types = {
  [0] = { ptr = ffi.typeof("float *"), set = true },          -- f32
  [28] = { ptr = ffi.typeof("double *"), set = true },        -- f64
  [24] = { ptr = ffi.typeof("int8_t *"), set = true, int = true, lo = -128, hi = 127 },
  [25] = { ptr = ffi.typeof("int16_t *"), set = true, int = true, lo = -32768, hi = 32767 },
  [26] = { ptr = ffi.typeof("int32_t *"), set = true, int = true, lo = -2147483648, hi = 2147483647 },
  [27] = { ptr = ffi.typeof("int64_t *"), set = true, int = true, lo = -2 ^ 63, hi = 2 ^ 63 - 1, conv = tonumber },
  [1] = { ptr = ffi.typeof("uint16_t *"), conv = f16_to_float },   -- f16 (read only)
  [30] = { ptr = ffi.typeof("uint16_t *"), conv = bf16_to_float }, -- bf16 (read only)
}

-- A tensor's layout never changes after creation, so it is read from C once per
-- tensor object and kept here (weak keys: the entry goes with the tensor).
local layouts = setmetatable({}, { __mode = "k" })

local function layout(t)
  local L = layouts[t]
  if L then return L end
  local nd = C.lm_tensor_ndim(t)
  local dt = C.lm_tensor_dtype(t)
  L = { ndim = nd, dtype = dt, elem = elem_types[dt], base = ffi.cast(char_ptr, C.lm_tensor_data(t)),
        shape = {}, stride = {} }
  for d = 1, nd do
    L.shape[d] = tonumber(C.lm_tensor_dim(t, d - 1))
    L.stride[d] = tonumber(C.lm_tensor_stride(t, d - 1))
  end
  layouts[t] = L
  return L
end

local function shape_str(shape)
  return "[" .. table.concat(shape, ", ") .. "]"
end

local function elem_or_error(L, fname, level)
  local e = L.elem
  if not e then
    error(("%s: dtype %s not supported here (convert with :float())"):format(fname, dtype_name(L.dtype)), level + 1)
  end
  return e
end

local function load(e, p)
  local v = ffi.cast(e.ptr, p)[0]
  if e.conv then return e.conv(v) end
  return v
end

-- Byte offset of the k-th element (0-based) in row-major order of the view.
local function flat_offset(L, k)
  local off = 0
  for d = L.ndim, 1, -1 do
    local n = L.shape[d]
    off = off + (k % n) * L.stride[d]
    k = math.floor(k / n)
  end
  return off
end

---------------------------------------------------------------------------
-- construction

-- Fills shape_buf from a Lua array; returns ndim.
local function read_shape(fname, shape, level)
  if type(shape) ~= "table" then
    error(("%s: shape must be a table of sizes, got %s"):format(fname, describe(shape)), level + 1)
  end
  local nd = #shape
  if nd < 1 or nd > MAX_DIMS then
    error(("%s: shape must have 1 to %d dimensions, got %d"):format(fname, MAX_DIMS, nd), level + 1)
  end
  for d = 1, nd do
    local n = shape[d]
    if type(n) ~= "number" or n ~= math.floor(n) or n < 0 then
      error(("%s: size of dimension %d must be a non-negative integer, got %s"):format(fname, d, tostring(n)),
        level + 1)
    end
    shape_buf[d - 1] = n
  end
  return nd
end

local function read_dtype(fname, dtype, level)
  if dtype == nil then return F32 end
  if type(dtype) ~= "string" then
    error(("%s: dtype must be a name such as \"f32\", got %s"):format(fname, describe(dtype)), level + 1)
  end
  local id = C.lm_dtype_from_name(dtype)
  if id < 0 then error(("%s: unknown dtype '%s'"):format(fname, dtype), level + 1) end
  return id
end

--- A zero-filled contiguous tensor: tensor.new({2, 3}) or tensor.new({4, 64}, "q8_0").
function M.new(shape, dtype)
  local nd = read_shape("new", shape, 2)
  local id = read_dtype("new", dtype, 2)
  local p = C.lm_tensor_new(id, nd, shape_buf)
  if p == nil then error("new: " .. last_error(), 2) end
  return own(p)
end

--- Same as tensor.new.
function M.zeros(shape, dtype)
  local nd = read_shape("zeros", shape, 2)
  local id = read_dtype("zeros", dtype, 2)
  local p = C.lm_tensor_new(id, nd, shape_buf)
  if p == nil then error("zeros: " .. last_error(), 2) end
  return own(p)
end

local function path_str(path, depth)
  local parts = {}
  for i = 1, depth do parts[i] = "[" .. path[i] .. "]" end
  return table.concat(parts)
end

--- An f32 tensor from nested Lua tables of numbers: {{1, 2, 3}, {4, 5, 6}} is 2x3.
-- Every row must have the same length (a ragged table is an error).
function M.from_table(tbl)
  if type(tbl) ~= "table" then
    error("from_table: expected a (nested) table of numbers, got " .. describe(tbl), 2)
  end
  local shape, x = {}, tbl
  while type(x) == "table" do
    shape[#shape + 1] = #x
    if #shape > MAX_DIMS then error(("from_table: more than %d levels of nesting"):format(MAX_DIMS), 2) end
    x = x[1]
  end
  local nd = #shape
  for d = 1, nd do shape_buf[d - 1] = shape[d] end
  local t = own(C.lm_tensor_new(F32, nd, shape_buf))
  local out = ffi.cast("float *", C.lm_tensor_data(t))
  -- fill returns an error message rather than raising, so the error lands at
  -- the caller of from_table however deep the recursion is
  local path, pos = {}, 0
  local function fill(v, depth)
    if depth > nd then
      if type(v) ~= "number" then
        return ("from_table: element %s is a %s, expected a number"):format(path_str(path, nd), type(v))
      end
      out[pos] = v
      pos = pos + 1
      return nil
    end
    if type(v) ~= "table" then
      return ("from_table: ragged table: element %s is a %s, expected a table of %d items")
        :format(path_str(path, depth - 1), type(v), shape[depth])
    end
    if #v ~= shape[depth] then
      return ("from_table: ragged table: element %s has %d items, expected %d")
        :format(path_str(path, depth - 1), #v, shape[depth])
    end
    for i = 1, #v do
      path[depth] = i
      local err = fill(v[i], depth + 1)
      if err then return err end
    end
    return nil
  end
  local err = fill(tbl, 1)
  if err then error(err, 2) end
  return t
end

---------------------------------------------------------------------------
-- methods

local methods = {}

--- The shape as a Lua array, outermost first.
function methods.shape(t)
  check(t, "shape")
  local s = layout(t).shape
  local out = {}
  for d = 1, #s do out[d] = s[d] end
  return out
end

--- The number of dimensions.
function methods.ndim(t)
  check(t, "ndim")
  return layout(t).ndim
end

--- Size of dimension i (1-based).
function methods.dim(t, i)
  check(t, "dim")
  local L = layout(t)
  check_int("dim", "dimension", i, 2)
  if i < 1 or i > L.ndim then
    error(("dim: dimension %d out of range for a %d-d tensor"):format(i, L.ndim), 2)
  end
  return L.shape[i]
end

--- The dtype's name ("f32", "q8_0", ...).
function methods.dtype(t)
  check(t, "dtype")
  return dtype_name(layout(t).dtype)
end

--- The number of elements.
function methods.numel(t)
  check(t, "numel")
  return tonumber(C.lm_tensor_numel(t))
end

--- Whether the elements lie in row-major order without gaps.
function methods.is_contiguous(t)
  check(t, "is_contiguous")
  return C.lm_tensor_is_contiguous(t)
end

--- A view with another shape over the same elements (contiguous tensors only);
-- one size may be -1 to be inferred.
function methods.view(t, shape)
  check(t, "view")
  if not C.lm_tensor_is_contiguous(t) then
    error("view: the tensor is not contiguous (copy it with :float() first)", 2)
  end
  if type(shape) ~= "table" then error("view: shape must be a table of sizes, got " .. describe(shape), 2) end
  local s, infer, known = {}, nil, 1
  for d = 1, #shape do
    local n = shape[d]
    if n == -1 and not infer then
      infer = d
    else
      if type(n) ~= "number" or n ~= math.floor(n) or n < 0 then
        error(("view: size of dimension %d must be a non-negative integer (or one -1), got %s"):format(d, tostring(n)), 2)
      end
      known = known * n
    end
    s[d] = n
  end
  local numel = tonumber(C.lm_tensor_numel(t))
  if infer then
    if known == 0 or numel % known ~= 0 then
      error(("view: cannot infer the -1 in %s for %d elements"):format(shape_str(s), numel), 2)
    end
    s[infer] = numel / known
    known = numel
  end
  if known ~= numel then
    error(("view: shape %s has %d elements, the tensor has %d"):format(shape_str(s), known, numel), 2)
  end
  local nd = read_shape("view", s, 2)
  local r = C.lm_tensor_view(t, nd, shape_buf, nil, 0)
  if r == nil then error(last_error(), 2) end
  return own(r)
end

--- Elements start..stop (1-based, inclusive) along dim, without copying.
function methods.slice(t, dim, start, stop)
  check(t, "slice")
  local L = layout(t)
  check_int("slice", "dim", dim, 2)
  if dim < 1 or dim > L.ndim then
    error(("slice: dimension %d out of range for a %d-d tensor"):format(dim, L.ndim), 2)
  end
  local size = L.shape[dim]
  check_int("slice", "start", start, 2)
  if stop == nil then stop = size end
  check_int("slice", "stop", stop, 2)
  if start < 1 or stop > size or stop < start - 1 then
    error(("slice: %d..%d out of range for dimension %d (size %d)"):format(start, stop, dim, size), 2)
  end
  local r = C.lm_tensor_slice(t, dim - 1, start - 1, stop)
  if r == nil then error(last_error(), 2) end
  return own(r)
end

--- The transpose of a 2-D tensor, as a strided view (no copy).
function methods.transpose(t)
  check(t, "transpose")
  local L = layout(t)
  if L.ndim ~= 2 then
    error(("transpose: expects a 2-D tensor, got %s"):format(shape_str(L.shape)), 2)
  end
  shape_buf[0], shape_buf[1] = L.shape[2], L.shape[1]
  stride_buf[0], stride_buf[1] = L.stride[2], L.stride[1]
  local r = C.lm_tensor_view(t, 2, shape_buf, stride_buf, 0)
  if r == nil then error(last_error(), 2) end
  return own(r)
end

--- A contiguous f32 copy (dequantizing quantized/f16/bf16 tensors).
function methods.float(t)
  check(t, "float")
  local r = C.lm_tensor_copy(t, F32)
  if r == nil then error(last_error(), 2) end
  return own(r)
end

-- Byte offset of element (i, j, ...) given as varargs; checks count and bounds.
local function element_offset(L, fname, n, ...)
  if n ~= L.ndim then
    error(("%s: expected %d indices for a %d-d tensor, got %d"):format(fname, L.ndim, L.ndim, n), 3)
  end
  local off = 0
  for d = 1, n do
    local i = select(d, ...)
    if type(i) ~= "number" or i ~= math.floor(i) then
      error(("%s: index %d must be an integer, got %s"):format(fname, d, type(i) == "number" and tostring(i) or type(i)), 3)
    end
    local size = L.shape[d]
    if i < 1 or i > size then
      error(("%s: index %d out of range for dimension %d (size %d)"):format(fname, i, d, size), 3)
    end
    off = off + (i - 1) * L.stride[d]
  end
  return off
end

--- Element (i, j, ...) as a number, 1-based.
function methods.get(t, ...)
  check(t, "get")
  local L = layout(t)
  local e = elem_or_error(L, "get", 2)
  local off = element_offset(L, "get", select("#", ...), ...)
  return load(e, L.base + off)
end

--- Sets element (i, j, ...) to v: t:set(i, j, v).
function methods.set(t, ...)
  check(t, "set")
  local L = layout(t)
  local e = elem_or_error(L, "set", 2)
  if not e.set then error(("set: dtype %s is read-only here (convert with :float())"):format(dtype_name(L.dtype)), 2) end
  local n = select("#", ...)
  local v = select(n, ...)
  if type(v) ~= "number" then error("set: the value must be a number, got " .. describe(v), 2) end
  if e.int and (v ~= math.floor(v) or v < e.lo or v > e.hi) then
    error(("set: %s is not a valid %s value"):format(tostring(v), dtype_name(L.dtype)), 2)
  end
  local off = element_offset(L, "set", n - 1, ...)
  ffi.cast(e.ptr, L.base + off)[0] = v
  return t
end

--- The elements as nested Lua tables (a 1-D tensor gives a flat array).
function methods.to_table(t)
  check(t, "to_table")
  local L = layout(t)
  local e = elem_or_error(L, "to_table", 2)
  local shape, stride, nd, base = L.shape, L.stride, L.ndim, L.base
  local function build(d, off)
    local out, n, st = {}, shape[d], stride[d]
    if d == nd then
      for i = 1, n do out[i] = load(e, base + off + (i - 1) * st) end
    else
      for i = 1, n do out[i] = build(d + 1, off + (i - 1) * st) end
    end
    return out
  end
  return build(1, 0)
end

--- Raw pointer to the first element, typed by dtype (float* for f32, uint16_t*
-- for f16/bf16, char* for quantized). It is valid only while the tensor (this
-- cdata or another view of the storage) is alive: keep t referenced while using it.
function methods.data(t)
  check(t, "data")
  local L = layout(t)
  local e = L.elem
  return e and ffi.cast(e.ptr, L.base) or L.base
end

---------------------------------------------------------------------------
-- math

-- A temporary f32 tensor shaped like shape (Lua array), every element v;
-- freed explicitly by the caller (no GC pressure for operands of arithmetic).
local function filled(shape, v)
  local nd = #shape
  local n = 1
  for d = 1, nd do shape_buf[d - 1] = shape[d]; n = n * shape[d] end
  local p = C.lm_tensor_new(F32, nd, shape_buf)
  if p == nil then return nil end
  local f = ffi.cast("float *", C.lm_tensor_data(p))
  for i = 0, n - 1 do f[i] = v end
  return p
end

local one = { 1 }

-- a OP b where a is a tensor and b a tensor or a number.
local function binary(op, fname, a, b, level)
  if type(b) == "number" then
    local s = filled(one, b)
    if s == nil then error(fname .. ": " .. last_error(), level + 1) end
    local r = C.lm_tensor_binary(op, a, s)
    C.lm_tensor_free(s)
    if r == nil then error(last_error(), level + 1) end
    return own(r)
  end
  if not is_tensor(b) then
    error(("%s: expected a tensor or a number, got %s"):format(fname, describe(b)), level + 1)
  end
  local r = C.lm_tensor_binary(op, a, b)
  if r == nil then error(last_error(), level + 1) end
  return own(r)
end

--- Element-wise a + b into a new f32 tensor (b: a tensor of the same shape, or a number).
function methods.add(a, b) check(a, "add") local r = binary(OP.add, "add", a, b, 2) return r end
--- Element-wise a - b (b: a tensor of the same shape, or a number).
function methods.sub(a, b) check(a, "sub") local r = binary(OP.sub, "sub", a, b, 2) return r end
--- Element-wise a * b (b: a tensor of the same shape, or a number).
function methods.mul(a, b) check(a, "mul") local r = binary(OP.mul, "mul", a, b, 2) return r end
--- Element-wise a / b (b: a tensor of the same shape, or a number).
function methods.div(a, b) check(a, "div") local r = binary(OP.div, "div", a, b, 2) return r end

--- a * s for a number s.
function methods.scale(t, s)
  check(t, "scale")
  if type(s) ~= "number" then error("scale: the factor must be a number, got " .. describe(s), 2) end
  local r = C.lm_tensor_scale(t, s)
  if r == nil then error(last_error(), 2) end
  return own(r)
end

--- [.., m, k] x [k, n] -> [.., m, n]; with transpose_b, b is [n, k] (weights as
-- stored). b may be quantized: it is dequantized first.
function methods.matmul(a, b, transpose_b)
  check(a, "matmul")
  if not is_tensor(b) then error("matmul: b must be a tensor, got " .. describe(b), 2) end
  local r = C.lm_tensor_matmul(a, b, transpose_b and true or false)
  if r == nil then error(last_error(), 2) end
  return own(r)
end

--- Softmax over the last dimension.
function methods.softmax(t)
  check(t, "softmax")
  local r = C.lm_tensor_softmax(t)
  if r == nil then error(last_error(), 2) end
  return own(r)
end

--- 1-based flat index (row-major order of the view) of the largest element.
function methods.argmax(t)
  check(t, "argmax")
  local i = C.lm_tensor_argmax(t)
  if i < 0 then error(last_error(), 2) end
  return tonumber(i) + 1
end

--- The k largest elements of a 1-D tensor, best first: two Lua arrays,
-- 1-based indices and values. Fewer than k when the tensor is shorter.
function methods.topk(t, k)
  check(t, "topk")
  check_int("topk", "k", k, 2)
  if k < 0 then error("topk: k must be >= 0, got " .. k, 2) end
  if k > topk_cap then
    topk_cap = k
    topk_idx, topk_val = int64_arr(k), float_arr(k)
  end
  local n = C.lm_tensor_topk(t, k, topk_idx, topk_val)
  if n < 0 then error(last_error(), 2) end
  local idx, val = {}, {}
  for i = 1, tonumber(n) do
    idx[i] = tonumber(topk_idx[i - 1]) + 1
    val[i] = topk_val[i - 1]
  end
  return idx, val
end

--- log(sum(exp(t))) of a 1-D tensor (so t[i] - t:logsumexp() is log-softmax).
function methods.logsumexp(t)
  check(t, "logsumexp")
  local r = C.lm_tensor_logsumexp(t)
  -- NAN is an error, or NaN in the data: the input decides which
  if r ~= r and (C.lm_tensor_dtype(t) ~= F32 or C.lm_tensor_ndim(t) ~= 1) then error(last_error(), 2) end
  return r
end

-- dot/cosine return NAN on an error; NAN is also a legitimate result when the
-- data holds NaNs, so the inputs decide which one it was.
local function reduce(fn, fname, a, b)
  check(a, fname)
  if not is_tensor(b) then error(("%s: b must be a tensor, got %s"):format(fname, describe(b)), 3) end
  local r = fn(a, b)
  if r ~= r and (C.lm_tensor_dtype(a) ~= F32 or C.lm_tensor_dtype(b) ~= F32
      or C.lm_tensor_numel(a) ~= C.lm_tensor_numel(b)) then
    error(last_error(), 3)
  end
  return r
end

--- Sum of products of the elements in row-major order (same count, any shapes).
function methods.dot(a, b) local r = reduce(C.lm_tensor_dot, "dot", a, b) return r end
--- Cosine similarity (0 when either is all zeros).
function methods.cosine(a, b) local r = reduce(C.lm_tensor_cosine, "cosine", a, b) return r end

---------------------------------------------------------------------------
-- metamethods

local mt = { __index = methods }

-- number OP tensor: the number becomes a tensor of the other's shape.
local function arith(op, fname)
  return function(a, b)
    if type(a) == "number" then
      if not is_tensor(b) then error(("%s: expected a tensor or a number, got %s"):format(fname, describe(b)), 2) end
      if op == OP.add or op == OP.mul then local r = binary(op, fname, b, a, 2) return r end
      local f = filled(layout(b).shape, a)
      if f == nil then error(fname .. ": " .. last_error(), 2) end
      local r = C.lm_tensor_binary(op, f, b)
      C.lm_tensor_free(f)
      if r == nil then error(last_error(), 2) end
      return own(r)
    end
    if not is_tensor(a) then error(("%s: expected a tensor or a number, got %s"):format(fname, describe(a)), 2) end
    local r = binary(op, fname, a, b, 2)
    return r
  end
end
mt.__add = arith(OP.add, "add")
mt.__sub = arith(OP.sub, "sub")
mt.__mul = arith(OP.mul, "mul")
mt.__div = arith(OP.div, "div")
mt.__unm = function(a)
  local r = C.lm_tensor_scale(a, -1)
  if r == nil then error(last_error(), 2) end
  return own(r)
end

mt.__len = function(t)
  return layout(t).shape[1]
end

local SHOW = 8
mt.__tostring = function(t)
  local L = layout(t)
  local head = ("tensor %s %s"):format(dtype_name(L.dtype), shape_str(L.shape))
  if not L.elem then return head end
  local n = tonumber(C.lm_tensor_numel(t))
  local vals = {}
  for k = 0, math.min(n, SHOW) - 1 do
    vals[#vals + 1] = ("%.6g"):format(load(L.elem, L.base + flat_offset(L, k)))
  end
  if n > SHOW then vals[#vals + 1] = ("... (%d values)"):format(n) end
  return head .. " {" .. table.concat(vals, ", ") .. "}"
end

-- ffi.metatype may be called only once per ctype in a process; a re-required
-- module (busted insulates spec files) refills the methods table it installed.
local registry = debug.getregistry()
local installed = registry["lumen.tensor.methods"]
if installed then
  for k in pairs(installed) do installed[k] = nil end
  for k, f in pairs(methods) do installed[k] = f end
  methods = installed
else
  ffi.metatype("struct lm_tensor", mt)
  registry["lumen.tensor.methods"] = methods
end

M.methods = methods
return M
