local lumen = require "lumen"
local grammar = require "lumen.grammar"
local js = require "lumen.json_schema"
local sampler = lumen.sampler
local helper = require "helper"
local cjson = require "cjson"
local ffi = require "ffi"

-- a small JSON Schema check for the schemas the generation spec samples
-- (the full corpus is checked by Python's jsonschema: bench/json_schema_check.py)
local function validate(s, v, root)
  if s["$ref"] then
    local name = s["$ref"]:match("^#/%$defs/(.+)$")
    return validate(name and root["$defs"][name] or root, v, root)
  end
  if s.anyOf or s.oneOf then
    local n = 0
    for _, sub in ipairs(s.anyOf or s.oneOf) do if validate(sub, v, root) then n = n + 1 end end
    return s.oneOf and n == 1 or n >= 1
  end
  if s.const ~= nil then return v == s.const end
  if s.enum then for _, e in ipairs(s.enum) do if e == v then return true end end return false end
  local t = s.type
  if type(t) == "table" then
    for _, one in ipairs(t) do
      local c = {}
      for k, x in pairs(s) do c[k] = x end
      c.type = one
      if validate(c, v, root) then return true end
    end
    return false
  end
  if t == "null" then return v == cjson.null end
  if t == "boolean" then return type(v) == "boolean" end
  if t == "integer" or t == "number" then
    if type(v) ~= "number" or (t == "integer" and v ~= math.floor(v)) then return false end
    return not (s.minimum and v < s.minimum) and not (s.maximum and v > s.maximum)
  end
  if t == "string" then
    if type(v) ~= "string" then return false end
    local n = #v:gsub("[\128-\191]", "")
    return not (s.maxLength and n > s.maxLength) and not (s.minLength and n < s.minLength)
  end
  if t == "array" then
    if type(v) ~= "table" then return false end
    if (s.minItems and #v < s.minItems) or (s.maxItems and #v > s.maxItems) then return false end
    for i, x in ipairs(v) do
      local sub = s.prefixItems and s.prefixItems[i] or s.items
      if type(sub) == "table" and not validate(sub, x, root) then return false end
    end
    return true
  end
  if t == "object" then
    if type(v) ~= "table" then return false end
    for _, k in ipairs(s.required or {}) do if v[k] == nil then return false end end
    for k, x in pairs(v) do
      local sub = s.properties and s.properties[k]
      if sub then if not validate(sub, x, root) then return false end
      elseif s.additionalProperties == false then return false end
    end
    return true
  end
  return true
end

describe("lumen.grammar", function()
  it("returns errors as values, with the line and column", function()
    local g, err = grammar.compile('root ::= "a"\nitem ::= [a-z\n')
    assert.is_nil(g)
    assert.matches("grammar:2:10: unterminated character class", err, 1, true)
    g, err = grammar.compile('root ::= value\n')
    assert.matches("grammar:1:10: undefined rule 'value'", err, 1, true)
    g, err = grammar.compile('root ::= list\nlist ::= list "," item | item\nitem ::= [0-9]\n')
    assert.matches("left recursion: rule 'list'", err, 1, true)
    assert.error_matches(function() sampler.grammar("root ::= (") end, "grammar:1:11")
  end)

  it("matches text against a grammar", function()
    local g = 'root ::= "(" [0-9]+ ("," [0-9]+)* ")"\n'
    assert.is_true(grammar.matches(g, "(1,22,3)"))
    assert.is_false(grammar.matches(g, "(1,22,"))
    assert.is_false(grammar.matches(g, "(1;2)"))
  end)

  it("gives the allowed tokens as a bitset, and a Lua link keeps them in one call", function()
    local model = helper.model()
    local m = grammar.matcher('root ::= "Yes" | "No"\n', model)
    local bits, n = m:allowed()
    assert.is_true(n >= 2 and n < 20)
    assert.is_true(grammar.has(bits, model:token("Yes")))
    assert.is_false(grammar.has(bits, model:token("Maybe") or 0))
    local chain = sampler.chain{ function(c) grammar.keep(c, bits) end, sampler.greedy() }
    local logits = ffi.new("float[?]", model.n_vocab)
    local tok = chain:sample(logits, model.n_vocab)
    assert.is_true(grammar.has(bits, tok))
    assert.is_true(m:accept(model:token("Yes")))
    assert.equal("complete", m:status())
  end)

  it("constrains generation and reports when the grammar is complete", function()
    local model = helper.model()
    local s = model:session{ ctx = 512 }
    local chain = sampler.chain{ sampler.grammar('root ::= [1-9] " + " [1-9] " = " [0-9]+\n'),
                                 sampler.top_k(40), sampler.temperature(1), sampler.dist(), seed = 3, model = model }
    local out = {}
    for piece in s:generate{ prompt = "Some sums: 2 + 2 = 4, ", sampler = chain, max_tokens = 30 } do out[#out + 1] = piece end
    local text = table.concat(out)
    assert.matches("^[1-9] %+ [1-9] = [0-9]+$", text)
    assert.is_true(chain:status() == "may_end" or chain:status() == "complete")
  end)
end)

describe("lumen.json_schema", function()
  it("refuses unsupported keywords by name and malformed schemas", function()
    local g, err = js.to_gbnf{ type = "array", items = { type = "string" }, uniqueItems = true }
    assert.is_nil(g)
    assert.matches("uniqueItems", err, 1, true)
    g, err = js.to_gbnf{ type = "object", properties = { a = { type = "integer", multipleOf = 3 } } }
    assert.matches("unsupported keyword 'multipleOf' at /properties/a", err, 1, true)
    g, err = js.to_gbnf('{"type": "object", "properties": {')
    assert.matches("json schema: JSON at byte", err, 1, true)
    g, err = js.to_gbnf{ type = "strin" }
    assert.matches("unknown type 'strin'", err, 1, true)
    g, err = js.to_gbnf{ ["$ref"] = "#/$defs/missing" }
    assert.matches("no such definition", err, 1, true)
    g, err = js.to_gbnf{ type = "string", pattern = "(?=x)" }
    assert.matches("pattern", err, 1, true)
    assert.error_matches(function() sampler.json_schema{ type = "object", ["if"] = {} } end, "'if'")
  end)

  it("compiles integer ranges exactly", function()
    local g = assert(js.to_gbnf{ type = "integer", minimum = -12, maximum = 305 })
    for v = -20, 320 do
      assert.equal(v >= -12 and v <= 305, grammar.matches(g, tostring(v)), "value " .. v)
    end
  end)

  it("compiles number ranges with integer bounds", function()
    local g = assert(js.to_gbnf{ type = "number", minimum = -180, maximum = 180 })
    local want = { ["-180"] = true, ["-180.5"] = false, ["-0.5"] = true, ["180.0"] = true, ["180.1"] = false, ["181"] = false, ["1e3"] = false }
    for text, ok in pairs(want) do assert.equal(ok, grammar.matches(g, text), text) end
  end)

  it("unrolls recursive definitions to a bounded depth", function()
    local emp = '{"$defs": {"p": {"type": "object", "properties": {"name": {"type": "string"}, "boss": {"anyOf": [{"$ref": "#/$defs/p"}, {"type": "null"}]}}, "required": ["name", "boss"]}}, "$ref": "#/$defs/p"}'
    local g = assert(js.to_gbnf(emp, { max_depth = 2 }))
    assert.is_true(grammar.matches(g, '{"name": "a", "boss": {"name": "b", "boss": null}}'))
    assert.is_false(grammar.matches(g, '{"name": "a", "boss": {"name": "b", "boss": {"name": "c", "boss": null}}}'))
    local _, err = js.to_gbnf('{"$defs": {"x": {"type": "object", "properties": {"k": {"$ref": "#/$defs/x"}}, "required": ["k"]}}, "$ref": "#/$defs/x"}')
    assert.matches("no value within 6 levels of recursion", err, 1, true)
  end)

  it("makes any JSON object in json_object mode", function()
    local g = assert(js.to_gbnf("json_object"))
    assert.is_true(grammar.matches(g, '{"a": [1, {"b": null}], "c": "d"}'))
    assert.is_false(grammar.matches(g, '[1]'))
  end)

  it("samples valid JSON for a subset of the corpus", function()
    local model = helper.model()
    local util = require "lumen.util"
    local corpus = assert(js.decode(util.read_file(util.root() .. "/spec/fixtures/json_schemas.json")))
    local want = { user_profile = true, order = true, payment_method = true, geojson_point = true,
                   tool_call = true, matrix = true, employee = true, quiz_question = true }
    local s = model:session{ ctx = 2048 }
    local n = 0
    for _, e in ipairs(corpus) do
      if want[e.name] then
        s:rewind(0)
        local chain = sampler.chain{ sampler.json_schema(e.schema), sampler.temperature(1), sampler.dist(), seed = 1, model = model }
        local prompt = lumen.chat.render(model, { { role = "user", content = "Give " .. e.prompt .. " as JSON." } })
        local out = {}
        for piece in s:generate{ prompt = prompt, sampler = chain, max_tokens = 400 } do out[#out + 1] = piece end
        local text = table.concat(out)
        local ok, v = pcall(cjson.decode, text)
        assert.is_true(ok, e.name .. ": " .. text)
        assert.is_true(validate(e.schema, v, e.schema), e.name .. ": " .. text)
        n = n + 1
      end
    end
    assert.equal(8, n)
  end)
end)
