-- The Lua API reference (lua/API.md) is generated from the doc comments where
-- each function is defined: every public function has one, and the page is current.
local doc = dofile("scripts/lua_api_doc.lua")

describe("the Lua API reference", function()
  it("documents every public function of lua/lumen/*.lua", function()
    assert.same({}, doc.undocumented("."))
  end)

  it("is the page the doc comments make (run luajit scripts/lua_api_doc.lua)", function()
    local f = assert(io.open("lua/API.md", "rb"))
    local page = f:read("*a")
    f:close()
    assert.equal(doc.render("."), page)
  end)

  it("includes the sampler-link contract and the environment", function()
    local page = doc.render(".")
    for _, want in ipairs{ "c.n", "c.ids", "c.logits", "c.probs", "ctx.softmax", "ctx.history", "ctx.session",
                           "LUMEN_MODELS", "LUMEN_ISA", "LUMEN_API_KEYS" } do
      assert.truthy(page:find(want, 1, true), want)
    end
  end)
end)
