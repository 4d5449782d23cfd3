-- lumen.yaml: YAML documents as Lua tables (libyaml through core/yaml.c).
local yaml = require "lumen.yaml"

local function load(text) return yaml.load_string(text, "t.yaml") end

-- The message of the error raised by f(...), or nil when it did not raise.
local function error_of(f, ...)
  local ok, err = pcall(f, ...)
  if ok then return nil end
  return tostring(err)
end

local function assert_error(text, want)
  local err = error_of(load, text)
  assert.is_not_nil(err, "expected an error for: " .. text)
  assert.is_truthy(err:find(want, 1, true), "error '" .. err .. "' lacks '" .. want .. "'")
end

describe("lumen.yaml", function()
  describe("structure", function()
    it("turns mappings into tables and sequences into arrays", function()
      local t = load("a:\n  b: [1, 2]\n  c:\n    - x\n    - {d: e}\n")
      assert.same({ a = { b = { 1, 2 }, c = { "x", { d = "e" } } } }, t)
    end)

    it("loads empty collections as empty tables", function()
      assert.same({ s = {}, m = {} }, load("s: []\nm: {}\n"))
    end)

    it("gives an alias the same table as its anchor", function()
      local t = load("base: &b {x: 1}\ncopy: *b\nlist: [*b, *b]\n")
      assert.equal(t.base, t.copy)
      assert.equal(t.base, t.list[1])
      assert.equal(t.list[1], t.list[2])
      assert.same({ x = 1 }, t.copy)
    end)

    it("loads a top-level scalar or sequence", function()
      assert.equal("hello", load("hello"))
      assert.same({ 1, "two" }, load("- 1\n- two\n"))
    end)
  end)

  describe("plain scalar typing (YAML 1.2 core schema)", function()
    it("reads decimal, hexadecimal and octal integers", function()
      assert.same({ 0, 42, -7, 3, 7, 31, 255, 15 }, load("[0, 42, -7, +3, 007, 0x1F, 0xff, 0o17]"))
    end)

    it("reads floats, exponents and the special values", function()
      local t = load("[1.5, -0.25, .5, 1., 1e3, 2.5E-1, .inf, -.Inf, +.INF]")
      assert.same({ 1.5, -0.25, 0.5, 1, 1000, 0.25, math.huge, -math.huge, math.huge }, t)
      local nan = load("[.nan, .NaN, .NAN]")
      for i = 1, 3 do assert.is_true(nan[i] ~= nan[i]) end
    end)

    it("reads true and false in three spellings, not yes/no/on/off", function()
      assert.same({ true, true, true, false, false, false }, load("[true, True, TRUE, false, False, FALSE]"))
      assert.same({ "yes", "no", "on", "off", "y", "n", "tRUE" }, load("[yes, no, on, off, y, n, tRUE]"))
    end)

    it("keeps everything else as strings", function()
      assert.same({ "1_000", "0x", "12e", "1.2.3", "0o8", "-0x10", "hello world", "inf", "nan" },
        load("[1_000, 0x, 12e, 1.2.3, 0o8, -0x10, hello world, inf, nan]"))
    end)

    it("keeps quoted and block scalars as strings", function()
      local t = load("a: '12'\nb: \"true\"\nc: |\n  42\nd: >\n  null\ne: ''\n")
      assert.same({ a = "12", b = "true", c = "42\n", d = "null\n", e = "" }, t)
    end)

    it("types mapping keys like values", function()
      local t = load("1: one\n0x10: sixteen\ntrue: yes\nname: x\n'2': quoted\n")
      assert.equal("one", t[1])
      assert.equal("sixteen", t[16])
      assert.equal("yes", t[true])
      assert.equal("x", t.name)
      assert.equal("quoted", t["2"])
      assert.is_nil(t[2])
    end)
  end)

  describe("explicit tags", function()
    it("honours !!str, !!int, !!float, !!bool and !!null", function()
      local t = load("[!!str 12, !!str true, !!int '7', !!float 2, !!float '1e2', !!bool 'false', !!null '', ! 5]")
      assert.same({ "12", "true", 7, 2, 100, false, yaml.null, "5" }, t)
      assert.equal("string", type(t[1]))
    end)

    it("refuses a value its tag cannot hold", function()
      assert_error("a: !!int 1.5\n", "t.yaml:1:4: invalid !!int value '1.5'")
      assert_error("a: !!bool yes\n", "t.yaml:1:4: invalid !!bool value 'yes'")
      assert_error("a: !!float abc\n", "t.yaml:1:4: invalid !!float value 'abc'")
    end)

    it("refuses tags it does not know", function()
      assert_error("a: !env HOME\n", "t.yaml:1:4: unsupported tag '!env'")
      assert_error("a: !!set {x: ~}\n", "t.yaml:1:4: unsupported tag '!!set' on a mapping")
      assert_error("a: !!str [1]\n", "t.yaml:1:4: unsupported tag '!!str' on a sequence")
    end)
  end)

  describe("null", function()
    it("is yaml.null inside sequences, so arrays keep their length", function()
      local t = load("[1, ~, null, Null, NULL, '', 2]")
      assert.equal(7, #t)
      for i = 2, 5 do assert.equal(yaml.null, t[i]) end
      assert.equal("", t[6])
      local empty = load("- a\n-\n- b\n")
      assert.same({ "a", yaml.null, "b" }, empty)
    end)

    it("leaves the key absent in mappings", function()
      local t = load("a: ~\nb:\nc: null\nd: 1\n")
      assert.same({ d = 1 }, t)
    end)

    it("makes an empty or comment-only document nil", function()
      assert.is_nil(load(""))
      assert.is_nil(load("# nothing here\n"))
      assert.is_nil(load("~"))
    end)

    it("is a read-only sentinel with a name", function()
      assert.equal("yaml.null", tostring(yaml.null))
      assert.has_error(function() yaml.null.x = 1 end)
    end)

    it("is refused as a mapping key", function()
      assert_error("~: x\n", "t.yaml:1:1: null keys are not supported")
    end)
  end)

  describe("errors", function()
    it("names file, line and column of a syntax error", function()
      assert_error("a: 1\nb: c: d\n", "t.yaml:2:5: mapping values are not allowed in this context")
    end)

    it("adds libyaml's context when it has one", function()
      assert_error("a: [1, 2\n", "t.yaml:2:1: did not find expected ',' or ']' (while parsing a flow sequence at line 1, column 4)")
    end)

    it("refuses duplicate keys", function()
      assert_error("a: 1\nb: 2\na: 3\n", "t.yaml:3:1: duplicate key 'a'")
    end)

    it("refuses keys that differ in text but not in value", function()
      assert_error("1: a\n0x1: b\n", "t.yaml:2:1: duplicate key '0x1'")
    end)

    it("refuses more than one document", function()
      assert_error("a: 1\n---\nb: 2\n", "t.yaml:2:1: only one document is supported")
    end)

    it("refuses collection keys", function()
      assert_error("? [a, b]\n: c\n", "t.yaml:1:3: only scalar keys are supported")
    end)

    it("refuses unknown and recursive aliases", function()
      assert_error("a: *nope\n", "t.yaml:1:4: unknown anchor 'nope'")
      assert_error("a: &x [*x]\n", "t.yaml:1:8: recursive alias '*x'")
    end)

    it("refuses an alias bomb", function()
      local lines = { "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]" }
      for i = 1, 9 do
        local refs = {}
        for j = 1, 10 do refs[j] = "*a" .. (i - 1) end
        lines[#lines + 1] = string.format("a%d: &a%d [%s]", i, i, table.concat(refs, ", "))
      end
      assert_error(table.concat(lines, "\n"), "aliases expand the document beyond 1000000 nodes")
    end)

    it("refuses nesting deeper than 256 levels", function()
      assert_error(string.rep("[", 300) .. string.rep("]", 300), "t.yaml:1:257: nesting deeper than 256 levels")
    end)

    it("names a missing file", function()
      local err = error_of(yaml.load_file, "no/such/file.yaml")
      assert.is_truthy(err:find("cannot open 'no/such/file.yaml': No such file or directory", 1, true), err)
    end)

    it("uses <string> when load_string has no name", function()
      local err = error_of(yaml.load_string, "a: b: c")
      assert.is_truthy(err:find("<string>:1:5:", 1, true), err)
    end)

    it("checks argument types", function()
      assert.is_truthy(error_of(yaml.load_string, nil):find("text must be a string", 1, true))
      assert.is_truthy(error_of(yaml.load_file, 42):find("path must be a string", 1, true))
    end)
  end)

  describe("configs/models.yaml", function()
    local root = os.getenv("LUMEN_ROOT") or "."
    local reg = yaml.load_file(root .. "/configs/models.yaml")

    it("names a default model that is registered", function()
      assert.equal("string", type(reg.default))
      assert.equal("table", type(reg.models[reg.default]))
    end)

    it("pins smollm2 with a 64-hex sha256 and typed fields", function()
      local m = reg.models.smollm2
      assert.equal("string", type(m.sha256))
      assert.is_truthy(m.sha256:match("^" .. string.rep("%x", 64) .. "$"))
      assert.equal("number", type(m.size))
      assert.equal("string", type(m.file))
      assert.equal("string", type(m.source.pypi))
      assert.equal(40, m.sampling.top_k)
      assert.equal(0.9, m.sampling.top_p)
    end)
  end)
end)
