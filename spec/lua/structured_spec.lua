-- response_format, grammar and tools as the server reads them (lua/lumen/structured.lua).
local lumen = require "lumen"
local helper = require "helper"
local structured = require "lumen.structured"
local openai = require "lumen.openai"
local cjson = require "cjson"

local function refused(body, want)
  local ok, err = pcall(structured.parse, body)
  assert.is_false(ok, "accepted: " .. cjson.encode(body))
  assert.is_true(openai.is_error(err), tostring(err))
  assert.equal(400, err.status)
  if want then assert.truthy(err.message:find(want, 1, true), err.message) end
end

local WEATHER = { type = "function", ["function"] = { name = "get_weather", description = "The weather in a city.",
  parameters = { type = "object", properties = { city = { type = "string", maxLength = 40 }, unit = { enum = { "c", "f" } } },
                 required = { "city", "unit" }, additionalProperties = false } } }
local TIME = { type = "function", ["function"] = { name = "get_time", parameters = { type = "object", properties = {} } } }

-- greedy generation under a spec's grammar, through the chat template (SmolLM2)
local function generate(spec, messages, max_tokens)
  local model = helper.model()
  local text = lumen.chat.render(model, structured.with_system(spec, messages), true)
  local s = model:session{ ctx = 1024 }
  local chain = lumen.sampler.from_config{ temperature = 0, grammar = lumen.sampler.grammar(spec.gbnf, { model = model }) }
  local parts = {}
  for piece in s:generate{ prompt = text, sampler = chain, max_tokens = max_tokens or 120 } do parts[#parts + 1] = piece end
  return table.concat(parts)
end

describe("lumen.structured", function()
  it("has nothing to do for plain requests", function()
    assert.is_nil(structured.parse{})
    assert.is_nil(structured.parse{ response_format = { type = "text" } })
    assert.is_nil(structured.parse{ tools = { WEATHER }, tool_choice = "none" })
  end)

  it("turns response_format into a grammar whose output parses", function()
    local spec = structured.parse{ response_format = { type = "json_schema", json_schema = { name = "city",
      schema = { type = "object", properties = { name = { type = "string", maxLength = 30 }, population = { type = "integer" } },
                 required = { "name", "population" }, additionalProperties = false } } } }
    local out = generate(spec, { { role = "user", content = "Describe Paris as JSON." } })
    local v = cjson.decode(out)
    assert.is_string(v.name)
    assert.is_number(v.population)
    local obj = generate(structured.parse{ response_format = { type = "json_object" } },
                         { { role = "user", content = "Give me a JSON object with a cat's name and age." } }, 400)
    assert.equal("table", type(cjson.decode(obj)))
  end)

  it("refuses what it cannot do, naming it", function()
    refused({ response_format = { type = "xml" } }, "response_format.type")
    refused({ response_format = { type = "json_schema", json_schema = {} } }, "schema")
    refused({ response_format = { type = "json_schema", json_schema = { schema = { type = "string", format = "hostname" } } } }, "hostname")
    refused({ grammar = 'root ::= "a' }, "grammar")
    refused({ grammar = "root ::= undefined-rule" }, "undefined")
    refused({ grammar = 'root ::= "a"', response_format = { type = "json_object" } }, "either")
    refused({ tools = { { type = "function", ["function"] = { name = "bad name!" } } } }, "name")
    refused({ tools = { WEATHER }, tool_choice = { type = "function", ["function"] = { name = "nope" } } }, "nope")
    refused({ tool_choice = "required" }, "needs 'tools'")
    refused({ tools = { WEATHER, WEATHER } }, "two tools")
  end)

  it("makes a required tool call that parses into OpenAI tool_calls", function()
    local spec = structured.parse{ tools = { WEATHER, TIME }, tool_choice = "required", parallel_tool_calls = false }
    local out = generate(spec, { { role = "user", content = "What is the weather in Oslo, in celsius?" } })
    local calls = structured.tool_calls(spec, out)
    assert.is_table(calls, out)
    assert.equal(1, #calls)
    assert.truthy(calls[1].id:match("^call_"))
    assert.equal("function", calls[1].type)
    local args = cjson.decode(calls[1]["function"].arguments)
    if calls[1]["function"].name == "get_weather" then
      assert.is_string(args.city)
      assert.truthy(args.unit == "c" or args.unit == "f")
    end
  end)

  it("calls the named tool and allows several calls in parallel", function()
    local spec = structured.parse{ tools = { WEATHER, TIME }, tool_choice = { type = "function", ["function"] = { name = "get_time" } } }
    local out = generate(spec, { { role = "user", content = "Hi" } }, 400)
    local calls = structured.tool_calls(spec, out)
    assert.is_table(calls, out)
    assert.is_true(#calls >= 1 and #calls <= 8)
    for _, c in ipairs(calls) do assert.equal("get_time", c["function"].name) end
  end)

  it("leaves plain text alone under tool_choice auto", function()
    local spec = structured.parse{ tools = { WEATHER } }
    assert.is_nil(structured.tool_calls(spec, "The weather is fine."))
    assert.is_table(structured.tool_calls(spec, '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}'))
    assert.truthy(structured.with_system(spec, { { role = "user", content = "x" } })[1].content:find("get_weather"))
  end)
end)
