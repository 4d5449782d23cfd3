-- Specs for lumen.template, the Jinja-subset compiler for chat templates.
-- Run from the repository root: busted --lua=luajit spec/lua/template_spec.lua
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path

local T = require "lumen.template"

local HERE = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
local FIXTURES = HERE .. "../fixtures/templates/"

local function read(path) return assert(require("lumen.util").read_file(path)) end

local function render(src, ctx) return T.render(src, ctx or {}) end

local function render_error(src, ctx)
  local ok, err = pcall(T.render, src, ctx or {})
  assert.is_false(ok, "expected an error, rendered " .. tostring(err))
  return err
end

local function compile_error(src)
  local ok, err = pcall(T.compile, src)
  assert.is_false(ok, "expected a compile error")
  return err
end

describe("lumen.template", function()

  describe("on real chat templates, compared with Python jinja2 as transformers runs it", function()
    local fx = dofile(FIXTURES .. "expected.lua")(T)
    local sources = {}
    for _, c in ipairs(fx.cases) do
      if c.group == "template" then
        sources[c.template] = sources[c.template] or read(FIXTURES .. c.template .. ".jinja")
        local what = c.output and "renders" or "rejects"
        it(c.template .. " " .. what .. " '" .. c.name .. "' exactly as Jinja does", function()
          local ctx = c.context
          ctx.strftime_now = function(fmt) return os.date("!" .. fmt, fx.fixed_time) end
          if c.output then
            assert.are.equal(c.output, render(sources[c.template], ctx))
          else
            local err = render_error(sources[c.template], ctx)
            if c.error_kind == "raise" then
              assert.truthy(err:find("chat template: " .. c.error, 1, true), err)
            end
          end
        end)
      end
    end

    it("covers SmolLM2, Gemma 3, Qwen2.5, Qwen3, Llama 3.1, Llama 3.2, Mistral Nemo, Phi-3.5 and DeepSeek-R1", function()
      for _, name in ipairs{"smollm2", "gemma3", "qwen2.5", "qwen3", "llama3.1", "llama3.2", "mistral-nemo",
          "phi3.5", "deepseek-r1-distill"} do
        assert.truthy(sources[name], name)
      end
    end)
  end)

  describe("on single features, compared with Python jinja2", function()
    local fx = dofile(FIXTURES .. "expected.lua")(T)
    for _, c in ipairs(fx.cases) do
      if c.group == "feature" then
        local label = c.source:gsub("\n", "\\n")
        if #label > 70 then label = label:sub(1, 67) .. "..." end
        it("renders " .. label .. " as Jinja does", function()
          local ctx = c.context
          ctx.strftime_now = function(fmt) return os.date("!" .. fmt, fx.fixed_time) end
          if c.output then
            assert.are.equal(c.output, render(c.source, ctx))
          else
            local err = render_error(c.source, ctx)
            assert.truthy(err:find(c.error, 1, true), err)
          end
        end)
      end
    end
  end)

  describe("text and whitespace", function()
    it("passes plain text through unchanged", function()
      assert.are.equal("hello\nworld", render("hello\nworld"))
    end)

    it("drops a single trailing newline of the template, as Jinja does", function()
      assert.are.equal("a", render("a\n"))
      assert.are.equal("a\n", render("a\n\n"))
    end)

    it("removes the newline after a block tag (trim_blocks)", function()
      assert.are.equal("x\ny", render("{% if true %}\nx\n{% endif %}\ny"))
    end)

    it("does not remove the newline after an expression tag", function()
      assert.are.equal("1\n2", render("{{ 1 }}\n{{ 2 }}"))
    end)

    it("strips the indentation before a block tag on its own line (lstrip_blocks)", function()
      assert.are.equal("a\nx\nb", render("a\n  {% if true %}\nx\n  {% endif %}\nb"))
    end)

    it("keeps indentation before a block tag that follows other content on the line", function()
      assert.are.equal("1  x", render("{{ 1 }}  {% if 1 %}x{% endif %}"))
    end)

    it("strips all whitespace on the side of a '-' marker", function()
      assert.are.equal("[a][b]", render("{%- for m in ['a', 'b'] -%}\n  [{{- m -}}]\n{%- endfor %}"))
      assert.are.equal("ab", render("a  \n {{- '' -}} \n  b"))
    end)

    it("disables lstrip and trim with a '+' marker", function()
      assert.are.equal("  x\ny", render("  {%+ if 1 %}x{% endif +%}\ny"))
    end)

    it("drops comments and applies the same whitespace rules to them", function()
      assert.are.equal("a\nb", render("a\n  {# a comment #}\nb"))
      assert.are.equal("ab", render("a {#- note -#} b"))
    end)

    it("outputs raw blocks verbatim", function()
      assert.are.equal("{{ x }} {% if %}", render("{% raw %}{{ x }} {% if %}{% endraw %}"))
    end)

    it("normalises CRLF line endings to LF", function()
      assert.are.equal("a\nb", render("a\r\nb"))
    end)
  end)

  describe("expressions", function()
    it("evaluates literals of every kind", function()
      assert.are.equal("1 2.5 s True False None [1, 'a'] {'k': 'v'} (1, 2)",
        render("{{ 1 }} {{ 2.5 }} {{ 's' }} {{ true }} {{ False }} {{ none }} {{ [1, 'a'] }} {{ {'k': 'v'} }} {{ (1, 2) }}"))
    end)

    it("decodes Python string escapes", function()
      assert.are.equal("a\tb\nc'd\"e\\ é A", render([[{{ 'a\tb\nc\'d"e\\ \u00e9 \x41' }}]]))
    end)

    it("accesses attributes and subscripts, with negative indices", function()
      local ctx = {messages = {{role = "system"}, {role = "user"}}}
      assert.are.equal("system user user", render("{{ messages[0]['role'] }} {{ messages[1].role }} {{ messages[-1].role }}", ctx))
    end)

    it("slices lists and strings like Python", function()
      assert.are.equal("[2, 3] [3, 2, 1] ello olleh", render("{{ xs[1:] }} {{ xs[::-1] }} {{ s[1:] }} {{ s[::-1] }}",
        {xs = {1, 2, 3}, s = "hello"}))
    end)

    it("does arithmetic with Python's floor division and modulo", function()
      assert.are.equal("5 2.5 3 -4 2 1024", render("{{ 2 + 3 }} {{ 5 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }}"))
    end)

    it("concatenates with + for strings and ~ for anything", function()
      assert.are.equal("ab a1None", render("{{ 'a' + 'b' }} {{ 'a' ~ 1 ~ none }}"))
    end)

    it("compares values, including chained comparisons", function()
      assert.are.equal("True False True True", render("{{ 1 < 2 }} {{ 'a' == 'b' }} {{ 1 < 2 < 3 }} {{ [1] == [1] }}"))
    end)

    it("supports in and not in for strings, lists and dicts", function()
      assert.are.equal("True True True False", render("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in d }} {{ 'k' not in d }}",
        {d = {k = 1}}))
    end)

    it("returns operands from and/or, like Python", function()
      assert.are.equal("b a 0", render("{{ 'a' and 'b' }} {{ 'a' or 'b' }} {{ 0 and 'x' }}"))
    end)

    it("evaluates the right side of and/or only when needed", function()
      assert.are.equal("ok", render("{{ 'ok' if x is not defined or x.content + 1 else 'no' }}"))
    end)

    it("evaluates conditional expressions, with an undefined result when else is missing", function()
      assert.are.equal("yes||no", render("{{ 'yes' if 1 else 'no' }}|{{ 'x' if 0 }}|{{ 'yes' if [] else 'no' }}"))
    end)

    it("uses Python truthiness: empty strings, lists, dicts and zero are false", function()
      assert.are.equal("ffffft", render("{% for v in ['', [], {}, 0, none, 'x'] %}{{ 't' if v else 'f' }}{% endfor %}"))
    end)

    it("applies filters more tightly than binary operators", function()
      assert.are.equal("<b>x</b>", render("{{ '<b>' + ' x '|trim + '</b>' }}"))
    end)
  end)

  describe("statements", function()
    it("chooses the first true branch of if/elif/else", function()
      local src = "{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %}"
      assert.are.equal("one", render(src, {x = 1}))
      assert.are.equal("two", render(src, {x = 2}))
      assert.are.equal("many", render(src, {x = 3}))
    end)

    it("provides loop.index, index0, first, last, length and revindex in for loops", function()
      assert.are.equal("1/0/True/False/3/3 2/1/False/False/3/2 3/2/False/True/3/1 ",
        render("{% for x in xs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.first }}/{{ loop.last }}/" ..
          "{{ loop.length }}/{{ loop.revindex }} {% endfor %}", {xs = {"a", "b", "c"}}))
    end)

    it("iterates over dict items with two targets, in the dict's key order", function()
      local d = T.dict({b = 1, a = 2}, {"b", "a"})
      assert.are.equal("b=1,a=2,", render("{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}", {d = d}))
    end)

    it("runs the loop's else block when nothing was iterated", function()
      assert.are.equal("empty", render("{% for x in xs %}{{ x }}{% else %}empty{% endfor %}", {xs = T.list{}}))
    end)

    it("filters loop items with an inline if, counting only the kept ones", function()
      assert.are.equal("1/2 3/2 ", render("{% for x in [1, 2, 3] if x is odd %}{{ x }}/{{ loop.length }} {% endfor %}"))
    end)

    it("supports break and continue", function()
      assert.are.equal("013", render("{% for i in range(9) %}{% if i == 2 %}{% continue %}{% endif %}" ..
        "{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}"))
    end)

    it("keeps a set inside a loop local to the loop, as Jinja scoping does", function()
      assert.are.equal("0", render("{% set x = 0 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}"))
    end)

    it("lets a set inside an if change the enclosing scope", function()
      assert.are.equal("1", render("{% set x = 0 %}{% if true %}{% set x = 1 %}{% endif %}{{ x }}"))
    end)

    it("carries state out of loops through a namespace", function()
      assert.are.equal("6", render("{% set ns = namespace(total=0) %}{% for i in [1, 2, 3] %}" ..
        "{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }}"))
    end)

    it("captures a block into a variable with set/endset", function()
      assert.are.equal("[hi there]", render("{% set t %}hi {{ 'there' }}{% endset %}[{{ t }}]"))
    end)

    it("defines and calls macros with defaults and keyword arguments", function()
      assert.are.equal("Hi Bob! Hi Al?", render("{% macro greet(name, p='!') %}Hi {{ name }}{{ p }}{% endmacro %}" ..
        "{{ greet('Bob') }} {{ greet(p='?', name='Al') }}"))
    end)

    it("lets macros call themselves", function()
      assert.are.equal("3210", render("{% macro down(n) %}{{ n }}{% if n > 0 %}{{ down(n - 1) }}{% endif %}{% endmacro %}{{ down(3) }}"))
    end)

    it("passes generation blocks through", function()
      assert.are.equal("ab", render("a{% generation %}b{% endgeneration %}"))
    end)
  end)

  describe("filters", function()
    it("trims, changes case and measures length", function()
      assert.are.equal("x|AB|ab|Hello world|Hello World|3", render(
        "{{ '  x '|trim }}|{{ 'ab'|upper }}|{{ 'AB'|lower }}|{{ 'hello WORLD'|capitalize }}|{{ 'hello world'|title }}|{{ 'héé'|length }}"))
    end)

    it("joins, picks first and last, and replaces", function()
      assert.are.equal("a, b|a|b|x-y", render("{{ xs|join(', ') }}|{{ xs|first }}|{{ xs|last }}|{{ 'x+y'|replace('+', '-') }}",
        {xs = {"a", "b"}}))
    end)

    it("returns the default only for undefined values unless asked for falsy ones too", function()
      assert.are.equal("d||e", render("{{ u|default('d') }}|{{ ''|default('d') }}|{{ ''|default('e', true) }}"))
    end)

    it("converts with string, int and list", function()
      assert.are.equal("5!|43|0|['a', 'b']", render("{{ 5|string ~ '!' }}|{{ '42'|int + 1 }}|{{ 'x'|int }}|{{ 'ab'|list }}"))
    end)

    it("selects and rejects by attribute and maps attributes", function()
      local users = {{name = "ann", role = "admin"}, {name = "bob", role = "user"}}
      assert.are.equal("ann|bob|ann,bob", render("{{ users|selectattr('role', 'equalto', 'admin')|map(attribute='name')|join }}|" ..
        "{{ users|rejectattr('role', 'equalto', 'admin')|map(attribute='name')|join }}|{{ users|map(attribute='name')|join(',') }}",
        {users = users}))
    end)

    it("serialises to JSON like Python's json.dumps, keeping dict order and non-ASCII text", function()
      local d = T.dict({name = "é", args = T.dict({}), list = {1, true, T.none}}, {"name", "args", "list"})
      assert.are.equal('{"name": "é", "args": {}, "list": [1, true, null]}', render("{{ d|tojson }}", {d = d}))
    end)

    it("indents JSON when asked", function()
      assert.are.equal('{\n    "a": [\n        1\n    ]\n}', render("{{ d|tojson(indent=4) }}", {d = {a = {1}}}))
    end)

    it("escapes control characters and quotes in JSON strings", function()
      assert.are.equal('"q\\"\\\\\\n\\u0001"', render("{{ s|tojson }}", {s = 'q"\\\n\1'}))
    end)

    it("indents every line but the first", function()
      assert.are.equal("a\n  b", render("{{ 'a\nb'|indent(2) }}"))
    end)

    it("treats safe as a no-op", function()
      assert.are.equal("<b>", render("{{ '<b>'|safe }}"))
    end)
  end)

  describe("tests", function()
    it("tells defined from undefined and none", function()
      assert.are.equal("True False True False", render("{{ x is defined }} {{ y is defined }} {{ n is none }} {{ x is none }}",
        {x = 1, n = T.none}))
    end)

    it("recognises strings, mappings, sequences, iterables and numbers", function()
      assert.are.equal("True True True True True False", render(
        "{{ s is string }} {{ d is mapping }} {{ l is sequence }} {{ s is iterable }} {{ 3 is number }} {{ l is mapping }}",
        {s = "x", d = {k = 1}, l = {1}}))
    end)

    it("checks identity with true and false", function()
      assert.are.equal("True False True", render("{{ t is true }} {{ 1 is true }} {{ f is false }}", {t = true, f = false}))
    end)

    it("supports negated tests and tests with arguments", function()
      assert.are.equal("True True True", render("{{ x is not none }} {{ 9 is divisibleby 3 }} {{ 'a' is equalto('a') }}", {x = 1}))
    end)
  end)

  describe("methods", function()
    it("has the string methods templates use", function()
      assert.are.equal("True True|s|x-|-x|['a', 'b']|AB|ab|A B|a-b", render(
        "{{ s.startswith('ab') }} {{ s.endswith(('x', 'cd')) }}|{{ ' s '.strip() }}|{{ 'x-\n'.rstrip() }}|{{ '\n-x'.lstrip() }}|" ..
        "{{ 'a b'.split() }}|{{ 'ab'.upper() }}|{{ 'AB'.lower() }}|{{ 'a b'.title() }}|{{ 'a b'.replace(' ', '-') }}",
        {s = "abcd"}))
    end)

    it("has dict get, keys, values and items", function()
      local d = T.dict({a = 1, b = 2}, {"a", "b"})
      assert.are.equal("1 None 0 ['a', 'b'] [1, 2] [('a', 1), ('b', 2)]",
        render("{{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 0) }} {{ d.keys() }} {{ d.values() }} {{ d.items() }}", {d = d}))
    end)

    it("splits on separators and takes parts from the end", function()
      assert.are.equal("b", render("{{ 'a</think>b'.split('</think>')[-1] }}"))
    end)
  end)

  describe("undefined values", function()
    it("render as empty text and are falsy", function()
      assert.are.equal("[]no", render("[{{ missing }}]{{ 'yes' if missing else 'no' }}"))
    end)

    it("give undefined again on attribute and item access instead of failing", function()
      assert.are.equal("[][][]", render("[{{ missing.a.b }}][{{ d.nope.deeper }}][{{ xs[7] }}]", {d = {}, xs = {1}}))
    end)

    it("have length zero and iterate as empty", function()
      assert.are.equal("0", render("{{ missing|length }}{% for x in missing %}{{ x }}{% endfor %}"))
    end)

    it("fail when used in arithmetic, as in Jinja", function()
      assert.truthy(render_error("{{ 'a' + missing }}"):find("undefined", 1, true))
    end)
  end)

  describe("values from Lua", function()
    it("treats tables with [1] as lists and others as dicts", function()
      assert.are.equal("list dict", render("{{ 'list' if l is sequence and l is not mapping }} {{ 'dict' if d is mapping }}",
        {l = {1, 2}, d = {a = 1}}))
    end)

    it("tells empty lists from empty dicts when marked with T.list and T.dict", function()
      assert.are.equal("[] {}", render("{{ l|tojson }} {{ d|tojson }}", {l = T.list(), d = T.dict()}))
    end)

    it("sorts the keys of dicts whose order is not known", function()
      assert.are.equal('{"a": 1, "b": 2}', render("{{ d|tojson }}", {d = {b = 2, a = 1}}))
    end)

    it("renders T.none as None and encodes it as null", function()
      assert.are.equal("None null", render("{{ x }} {{ x|tojson }}", {x = T.none}))
    end)

    it("calls Lua functions from the context with positional arguments", function()
      assert.are.equal("3", render("{{ add(1, 2) }}", {add = function(a, b) return a + b end}))
    end)

    it("lets the context override globals such as strftime_now", function()
      assert.are.equal("fixed %d", render("{{ strftime_now('%d') }}", {strftime_now = function(f) return "fixed " .. f end}))
    end)

    it("formats the current date with the built-in strftime_now", function()
      assert.are.equal(os.date("%Y"), render("{{ strftime_now('%Y') }}"))
    end)

    it("builds lists with range", function()
      assert.are.equal("[0, 1, 2] [1, 3]", render("{{ range(3) }} {{ range(1, 5, 2) }}"))
    end)
  end)

  describe("errors", function()
    it("name the line and the problem for an unexpected end tag", function()
      assert.truthy(compile_error("a\nb\n{% endfor %}"):find("chat template line 3: unexpected 'endfor'", 1, true))
    end)

    it("report blocks that are never closed", function()
      local err = compile_error("{% if x %}\nyes\n")
      assert.truthy(err:find("'if' on line 1 is not closed", 1, true), err)
    end)

    it("report bad expressions, unknown filters, tests and tags", function()
      assert.truthy(compile_error("line1\n{{ x + }}"):find("chat template line 2:", 1, true))
      assert.truthy(compile_error("{{ x|nope }}"):find("unknown filter 'nope'", 1, true))
      assert.truthy(compile_error("{{ x is nope }}"):find("unknown test 'nope'", 1, true))
      assert.truthy(compile_error("{% nope %}"):find("unknown tag 'nope'", 1, true))
      assert.truthy(compile_error("{% include 'x' %}"):find("'include' tag is not supported", 1, true))
    end)

    it("report unterminated strings, tags and comments", function()
      assert.truthy(compile_error("{{ 'abc }}"):find("unterminated string", 1, true))
      assert.truthy(compile_error("{{ x"):find("'{{' is not closed", 1, true))
      assert.truthy(compile_error("{# x"):find("comment is not closed", 1, true))
    end)

    it("reject break and continue outside loops", function()
      assert.truthy(compile_error("{% break %}"):find("'break' outside of a loop", 1, true))
    end)

    it("turn raise_exception into a Lua error prefixed 'chat template: '", function()
      local err = render_error("{{ raise_exception('Conversation roles must alternate') }}")
      assert.truthy(err:find("chat template: Conversation roles must alternate", 1, true), err)
    end)

    it("name the template line of runtime errors", function()
      local err = render_error("ok\n{% for m in ms %}\n{{ m.n + 1 }}\n{% endfor %}", {ms = {{n = "s"}}})
      assert.truthy(err:find("chat template line 3: unsupported operand type(s) for +: 'str' and 'int'", 1, true), err)
    end)

    it("refuse to mutate lists, as the immutable sandbox does", function()
      assert.truthy(render_error("{{ [1].append(2) }}"):find("unsafe", 1, true))
    end)

    it("check the arguments of compile and render", function()
      assert.has_error(function() T.compile(42) end)
      assert.has_error(function() T.compile("x")("not a table") end)
    end)
  end)

  describe("safety", function()
    it("keeps template text that looks like Lua inert", function()
      local src = "]] end os.exit(1) --[[ \" \\ {{ ']] .. os.exit(1) .. [[' }} {{ \"\\\"); os.exit(1) --\" }}"
      assert.are.equal("]] end os.exit(1) --[[ \" \\ ]] .. os.exit(1) .. [[ \"); os.exit(1) --", render(src))
    end)

    it("generates code that cannot reach Lua globals", function()
      assert.are.equal("", render("{{ os }}{{ io }}{{ require }}{{ _G }}"))
    end)

    it("escapes every non-printable byte of string literals in the generated code", function()
      local code = T.source("{{ 'a\0b' }}\1\255")
      assert.falsy(code:find("[%z\1\255]"))
    end)
  end)

  describe("compilation", function()
    it("caches compiled templates by their text", function()
      assert.are.equal(T.compile("{{ cached }}"), T.compile("{{ cached }}"))
    end)

    it("handles templates with more variables than Lua allows locals", function()
      local parts, ctx = {}, {}
      for i = 1, 210 do parts[#parts + 1] = ("{{ v%d }}"):format(i); ctx["v" .. i] = i % 10 end
      parts[#parts + 1] = "{% for x in [7] %}{% set v1 = x %}{{ v1 }}{% endfor %}{{ v1 }}"
      local out = render(table.concat(parts), ctx)
      assert.are.equal("71", out:sub(-2))
    end)

    it("handles macros that read more outer variables than a closure may capture", function()
      local parts, ctx = {"{% macro m() %}"}, {}
      for i = 1, 70 do parts[#parts + 1] = ("{{ u%d }}"):format(i); ctx["u" .. i] = "." end
      parts[#parts + 1] = "{% endmacro %}{{ m() }}"
      assert.are.equal(("."):rep(70), render(table.concat(parts), ctx))
    end)

    it("renders a ten-message conversation in well under a millisecond", function()
      local f = T.compile(read(FIXTURES .. "qwen2.5.jinja"))
      local messages = {{role = "system", content = "You are helpful."}}
      for i = 1, 9 do
        messages[#messages + 1] = {role = i % 2 == 1 and "user" or "assistant", content = ("message %d "):format(i):rep(20)}
      end
      local ctx = {messages = messages, add_generation_prompt = true}
      f(ctx)
      local n, t0 = 200, os.clock()
      for _ = 1, n do f(ctx) end
      local per_render = (os.clock() - t0) / n
      assert.truthy(per_render < 0.0005, ("%.3f ms per render"):format(per_render * 1e3))
    end)
  end)
end)
