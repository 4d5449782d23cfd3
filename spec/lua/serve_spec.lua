-- The server's scheduler (pipelines/serve.lua), the parts that need no HTTP.
describe("serve scheduler", function()
  local serve = dofile((os.getenv("LUMEN_ROOT") or ".") .. "/pipelines/serve.lua")

  it("cuts a prompt only into pieces of two or more tokens", function()
    local wp = serve._whole_pieces
    assert.equal(1, wp(1, 1)) -- a one-token prompt is one piece
    assert.equal(16, wp(16, 40))
    assert.equal(17, wp(16, 17)) -- no single token left behind
    assert.equal(2, wp(1, 5)) -- no single token taken
    assert.equal(3, wp(1, 3))
    assert.equal(3, wp(2, 3))
    -- every prompt length against every room per turn: the pieces add up and
    -- none is a lone token of a longer prompt
    for len = 1, 40 do
      for room = 1, 20 do
        local left, pieces = len, {}
        while left > 0 do
          local n = wp(math.min(room, left), left)
          assert.truthy(n >= 1 and n <= left and n <= room + 2)
          pieces[#pieces + 1] = n
          left = left - n
        end
        for _, n in ipairs(pieces) do
          if len > 1 and n == 1 then error(string.format("length %d, room %d: a one-token piece", len, room)) end
        end
      end
    end
  end)
end)
