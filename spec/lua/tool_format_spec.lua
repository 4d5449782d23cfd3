-- Tool calls in the chat template's own format (lua/lumen/tool_format.lua): which templates have one, OpenAI
-- requests with tools rendered through the template as Python jinja2 renders them, the grammar of an answer
-- and reading the calls back.
local lumen = require "lumen"
local helper = require "helper"
local T = require "lumen.template"
local chat = require "lumen.chat"
local grammar = require "lumen.grammar"
local openai = require "lumen.openai"
local structured = require "lumen.structured"
local tool_format = require "lumen.tool_format"
local cjson = require "cjson"

local HERE = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
local FIXTURES = HERE .. "../fixtures/templates/"

local function read(path) return assert(require("lumen.util").read_file(path)) end

-- SmolLM2 (its tokenizer, weights and special tokens) with another chat template, as a registry entry's
-- `chat_template` gives one
local function with_template(name)
  local model = helper.model()
  return setmetatable({ entry = { chat_template = "spec/fixtures/templates/" .. name .. ".jinja" } }, { __index = model })
end

local WEATHER = { type = "function", ["function"] = { name = "get_weather", description = "The weather in a city.",
  parameters = { type = "object", properties = { city = { type = "string", maxLength = 20 } }, required = { "city" },
                 additionalProperties = false } } }
local TIME = { type = "function", ["function"] = { name = "get_time", parameters = { type = "object", properties = {} } } }

local HERMES = tool_format.FORMATS[1]
local function call(name, args) return '<tool_call>\n{"name": "' .. name .. '", "arguments": ' .. args .. '}\n</tool_call>' end

describe("lumen.tool_format", function()
  it("knows the tool format of the templates that have one, and no other", function()
    local want = { ["qwen2.5"] = "hermes", qwen3 = "hermes", ["llama3.1"] = "llama3", ["llama3.2"] = "llama3",
                   ["mistral-nemo"] = "mistral", smollm2 = false, gemma3 = false, ["phi3.5"] = false,
                   -- it takes tools, in a format not in the table: lumen's JSON format for it
                   ["deepseek-r1-distill"] = false }
    for name, fmt in pairs(want) do
      local got = tool_format.detect(read(FIXTURES .. name .. ".jinja"))
      assert.equal(fmt, got and got.name or false, name)
    end
    assert.equal("hermes", chat.tool_format(with_template("qwen2.5")).name)
    assert.is_nil(chat.tool_format(helper.model()))
  end)

  describe("renders an OpenAI request with tools as Python jinja2 renders it", function()
    local fx = dofile(FIXTURES .. "expected.lua")(T)
    local n = 0
    for _, c in ipairs(fx.cases) do
      if c.group == "request" then
        n = n + 1
        it(c.template .. ": " .. c.name, function()
          local model = with_template(c.template)
          local body = cjson.decode(c.body)
          local job = openai.chat_request(body, {})
          local spec = structured.parse(body, chat.tool_format(model))
          local vars = { strftime_now = function(f) return os.date("!" .. f, fx.fixed_time) end }
          for k, v in pairs(spec and spec.vars or {}) do vars[k] = v end
          local messages = structured.with_system(spec, job.messages)
          assert.are.equal(c.output, chat.render(model, messages, c.add_generation_prompt, vars))
        end)
      end
    end
    it("has cases", function() assert.is_true(n >= 4) end)
  end)

  it("constrains an answer to the template's call syntax and the tools' schemas", function()
    local required = structured.parse({ tools = { WEATHER, TIME }, tool_choice = "required" }, HERMES)
    local g = assert(grammar.compile(required.gbnf))
    assert.is_nil(required.system)
    assert.is_true(grammar.matches(g, call("get_weather", '{"city": "Oslo"}')))
    assert.is_true(grammar.matches(g, call("get_weather", '{"city": "Oslo"}') .. "\n" .. call("get_time", "{}")))
    assert.is_false(grammar.matches(g, call("get_weather", '{"town": "Oslo"}')))           -- not in the schema
    assert.is_false(grammar.matches(g, call("get_weather", '{"city": "' .. ("x"):rep(21) .. '"}'))) -- maxLength
    assert.is_false(grammar.matches(g, call("get_news", "{}")))
    assert.is_false(grammar.matches(g, "It is sunny."))
    local eight = {}
    for i = 1, 8 do eight[i] = call("get_time", "{}") end
    assert.is_true(grammar.matches(g, table.concat(eight, "\n")))
    assert.is_false(grammar.matches(g, table.concat(eight, "\n") .. "\n" .. call("get_time", "{}")))

    local one = structured.parse({ tools = { WEATHER, TIME }, tool_choice = "required", parallel_tool_calls = false }, HERMES)
    assert.is_false(grammar.matches(assert(grammar.compile(one.gbnf)), call("get_time", "{}") .. "\n" .. call("get_time", "{}")))

    local named = structured.parse({ tools = { WEATHER, TIME },
                                     tool_choice = { type = "function", ["function"] = { name = "get_time" } } }, HERMES)
    g = assert(grammar.compile(named.gbnf))
    assert.is_true(grammar.matches(g, call("get_time", "{}")))
    assert.is_false(grammar.matches(g, call("get_weather", '{"city": "Oslo"}')))

    local auto = structured.parse({ tools = { WEATHER } }, HERMES)
    g = assert(grammar.compile(auto.gbnf))
    assert.is_true(grammar.matches(g, "It is sunny."))
    assert.is_true(grammar.matches(g, call("get_weather", '{"city": "Oslo"}')))
    assert.is_false(grammar.matches(g, "<tool_call>oops"))
    assert.same({ tools = { WEATHER } }, auto.vars)
  end)

  it("writes one Llama 3 call a turn, with parameters", function()
    local llama3 = tool_format.FORMATS[2]
    local spec = structured.parse({ tools = { WEATHER }, tool_choice = "required" }, llama3)
    local g = assert(grammar.compile(spec.gbnf))
    assert.is_false(spec.parallel)
    assert.is_true(grammar.matches(g, '{"name": "get_weather", "parameters": {"city": "Oslo"}}'))
    assert.is_false(grammar.matches(g, '{"name": "get_weather", "arguments": {"city": "Oslo"}}'))
    local calls = structured.tool_calls(spec, '{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    assert.equal("get_weather", calls[1]["function"].name)
    assert.same({ city = "Oslo" }, cjson.decode(calls[1]["function"].arguments))
  end)

  it("writes Mistral's one list of calls, each with an id of 9 letters and digits that comes back as its id", function()
    local mistral = tool_format.FORMATS[3]
    local spec = structured.parse({ tools = { WEATHER, TIME }, tool_choice = "required" }, mistral)
    local g = assert(grammar.compile(spec.gbnf))
    local a = '{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "abcDEF123"}'
    local b = '{"name": "get_time", "arguments": {}, "id": "xyz789XYZ"}'
    assert.is_true(grammar.matches(g, "[TOOL_CALLS][" .. a .. "]"))
    assert.is_true(grammar.matches(g, "[TOOL_CALLS][" .. a .. ", " .. b .. "]"))
    assert.is_false(grammar.matches(g, "[TOOL_CALLS][" .. a:gsub("abcDEF123", "abcDEF12") .. "]"))
    assert.is_false(grammar.matches(g, '[TOOL_CALLS][{"name": "get_time", "arguments": {}}]'))
    assert.is_false(grammar.matches(g, a))
    local calls = structured.tool_calls(spec, "[TOOL_CALLS][" .. a .. ", " .. b .. "]")
    assert.equal(2, #calls)
    assert.equal("abcDEF123", calls[1].id)
    assert.equal("get_time", calls[2]["function"].name)
    assert.equal("xyz789XYZ", calls[2].id)
    assert.is_nil(structured.tool_calls(spec, "[TOOL_CALLS][" .. a:gsub("abcDEF123", "abc") .. "]"))
    local auto = assert(grammar.compile(structured.parse({ tools = { WEATHER } }, mistral).gbnf))
    assert.is_true(grammar.matches(auto, "It is sunny."))
    assert.is_false(grammar.matches(auto, "[1, 2]"))
  end)

  it("reads the calls back, and nothing from text or a broken call", function()
    local spec = structured.parse({ tools = { WEATHER, TIME } }, HERMES)
    local calls = structured.tool_calls(spec, call("get_weather", '{"city": "Oslo"}') .. "\n" .. call("get_time", "{}"))
    assert.equal(2, #calls)
    assert.equal("get_weather", calls[1]["function"].name)
    assert.same({ city = "Oslo" }, cjson.decode(calls[1]["function"].arguments))
    assert.equal("get_time", calls[2]["function"].name)
    assert.truthy(calls[1].id:match("^call_") and calls[1].id ~= calls[2].id)
    assert.is_nil(structured.tool_calls(spec, "It is sunny."))
    assert.is_nil(structured.tool_calls(spec, '<tool_call>\n{"name": "get_time", "arguments": {}'))   -- cut off
    assert.is_nil(structured.tool_calls(spec, '<tool_call>\n{"name": "get_time"}\n</tool_call>'))     -- no arguments
    assert.is_nil(structured.tool_calls(spec, "Sure. " .. call("get_time", "{}")))                    -- text first
    assert.is_nil(structured.tool_calls(spec, call("get_time", "{}") .. " and more"))                 -- text after
  end)

  it("tells text from calls by an answer's first character, as the grammar does", function()
    local hermes = structured.parse({ tools = { WEATHER } }, HERMES)
    local json = structured.parse({ tools = { WEATHER } })
    assert.is_true(structured.is_text(hermes, "It"))
    assert.is_false(structured.is_text(hermes, "<"))
    assert.is_false(structured.is_text(hermes, ""))
    assert.is_true(structured.is_text(hermes, "{"))
    assert.is_false(structured.is_text(json, "{"))
    assert.is_false(structured.is_text(json, "["))
    assert.is_true(structured.is_text(json, "It"))
    local g = assert(grammar.compile(hermes.gbnf))
    assert.is_false(grammar.matches(g, "<b>bold</b>"))
    assert.is_false(grammar.matches(g, " It"))
  end)

  it("makes SmolLM2 call a tool in the Qwen format, end to end", function()
    local model = with_template("qwen2.5")
    local spec = structured.parse({ tools = { WEATHER, TIME }, tool_choice = "required", parallel_tool_calls = false },
                                  chat.tool_format(model))
    local prompt = chat.render(model, { { role = "user", content = "What's the weather in Oslo?" } }, true, spec.vars)
    assert.truthy(prompt:find('<tools>\n{"type": "function", "function": {"name": "get_weather"', 1, true), prompt)
    local s = model:session{ ctx = 1024 }
    local chain = lumen.sampler.from_config{ temperature = 0, grammar = lumen.sampler.grammar(spec.gbnf, { model = model }) }
    local parts = {}
    -- one call: the grammar bounds it (a city of at most 20 characters, bounded whitespace) inside 300 tokens
    for piece in s:generate{ prompt = prompt, sampler = chain, max_tokens = 300 } do parts[#parts + 1] = piece end
    local out = table.concat(parts)
    assert.truthy(out:match("^<tool_call>\n"), out)
    local calls = structured.tool_calls(spec, out)
    assert.is_table(calls, out)
    assert.equal(1, #calls)
  end)
end)
