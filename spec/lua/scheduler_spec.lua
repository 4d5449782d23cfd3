-- lumen.scheduler without HTTP: requests in, sinks that record what comes out.
local helper = require "helper"
local scheduler = require "lumen.scheduler"
local openai = require "lumen.openai"
local chat = require "lumen.chat"

describe("scheduler", function()
  local model = helper.model()

  --- A sink that records every call; alive() turns false after `live` pieces.
  local function recorder(log, name, live)
    local sink = { name = name, pieces = 0, texts = {}, events = log }
    function sink.alive() return live == nil or sink.pieces < live end
    function sink.started(_, job) log[#log + 1] = name .. ":started" sink.job = job end
    function sink.piece(_, seq, text, finish)
      sink.pieces = sink.pieces + 1
      local i = seq.index + 1
      sink.texts[i] = (sink.texts[i] or "") .. text
      if finish then sink.finish = finish end
    end
    function sink.finished() log[#log + 1] = name .. ":finished" sink.done = true end
    function sink.cancelled(_, _, reason) log[#log + 1] = name .. ":cancelled:" .. reason sink.reason = reason end
    return sink
  end

  local function new(slots)
    local sched = scheduler.new{ slots = slots, prefill_chunk = 64 }
    local entry = sched:add_model("m", model, 256)
    return sched, entry
  end

  local function request(entry, text, extra)
    local body = { messages = { { role = "user", content = text } }, temperature = 0, max_tokens = 8 }
    for k, v in pairs(extra or {}) do body[k] = v end
    local job = scheduler.prepare(entry, openai.chat_request(body, entry.sampling))
    job.collect = true
    return job
  end

  local function run(sched)
    local steps = 0
    while not sched:idle() do
      sched:step()
      steps = steps + 1
      assert.truthy(steps < 10000)
    end
    return steps
  end

  local function alone(text, max_tokens)
    local s = model:session{ ctx = 256 }
    local buf, n = model:_encode(chat.render(model, { { role = "user", content = text } }, true), false, true)
    local parts = {}
    s:eval_raw(buf, n)
    for piece in s:generate{ sampler = require("lumen.sampler").from_config{ temperature = 0 }, max_tokens = max_tokens } do
      parts[#parts + 1] = piece
    end
    return table.concat(parts)
  end

  it("gives every request the greedy text a lone session gives, however many share a step", function()
    local sched, entry = new(4)
    local log, sinks = {}, {}
    local prompts = { "Hi.", "Name a color.", "Count to three.", "What is 2+2?", "Say yes.", "Name a fruit." }
    for i, p in ipairs(prompts) do
      sinks[i] = recorder(log, "r" .. i)
      sched:submit(request(entry, p), sinks[i])
    end
    run(sched)
    for i, p in ipairs(prompts) do
      assert.truthy(sinks[i].done)
      assert.equal(alone(p, 8), sinks[i].texts[1])
      assert.equal(alone(p, 8), scheduler.choices(sinks[i].job)[1].text)
    end
    assert.equal(4, #entry.free)
  end)

  it("admits no more requests than slots, and the rest as slots come free", function()
    local sched, entry = new(2)
    local log = {}
    for i = 1, 5 do sched:submit(request(entry, "Hello number " .. i), recorder(log, "r" .. i)) end
    sched:step()
    local running, prefilling, queued = sched:counts()
    assert.equal(2, running + prefilling)
    assert.equal(3, queued)
    assert.equal(0, #entry.free)
    run(sched)
    assert.equal(2, #entry.free)
    local finished = 0
    for _, e in ipairs(log) do if e:match(":finished$") then finished = finished + 1 end end
    assert.equal(5, finished)
  end)

  it("starts requests in submission order, a higher priority first", function()
    local sched, entry = new(1)
    local log = {}
    for i = 1, 3 do sched:submit(request(entry, "Tell me " .. i), recorder(log, "r" .. i)) end
    local urgent = request(entry, "Urgent.")
    urgent.priority = 5
    sched:submit(urgent, recorder(log, "urgent"))
    run(sched)
    local order = {}
    for _, e in ipairs(log) do
      local who = e:match("^(.-):started$")
      if who then order[#order + 1] = who end
    end
    assert.same({ "urgent", "r1", "r2", "r3" }, order)
  end)

  it("counts waiting choices by the priority a newcomer would wait behind", function()
    local sched, entry = new(1)
    local log = {}
    sched:submit(request(entry, "A."), recorder(log, "a"))
    local low = request(entry, "B.", { n = 1 })
    low.priority = -1
    sched:submit(low, recorder(log, "low"))
    assert.equal(2, sched:waiting(entry))
    assert.equal(1, sched:waiting(entry, 0))
    run(sched)
  end)

  it("lets a prompt ride along with running sequences and still gives the lone text", function()
    local sched, entry = new(3)
    local log = {}
    local a = recorder(log, "a")
    sched:submit(request(entry, "Write a long story about a cat.", { max_tokens = 24 }), a)
    sched:step() -- a's prompt alone, then it runs
    sched:step()
    local b = recorder(log, "b")
    sched:submit(request(entry, "Name three rivers.", { max_tokens = 8 }), b)
    sched:step() -- b's prompt rides in a's decode pass
    assert.equal("b:started", log[#log])
    local running = sched:counts()
    assert.equal(2, running)
    run(sched)
    assert.equal(alone("Write a long story about a cat.", 24), a.texts[1])
    assert.equal(alone("Name three rivers.", 8), b.texts[1])
  end)

  it("keeps reserved slots for live requests, evaluates their prompts ahead of background work and then steps the background in turns", function()
    local sched = scheduler.new{ slots = 16, prefill_chunk = 64, reserve = 2 }
    local entry = sched:add_model("m", model, 256)
    local log, bg = {}, {}
    for i = 1, 15 do
      local job = request(entry, "Tell me about the number " .. i .. ".", { max_tokens = 40 })
      job.priority = -1
      bg[i] = recorder(log, "bg" .. i)
      sched:submit(job, bg[i])
    end
    local function bg_pieces()
      local n = 0
      for _, s in ipairs(bg) do n = n + s.pieces end
      return n
    end
    sched:step()
    sched:step()
    -- background work leaves the reserve free: 14 run, one waits
    assert.equal(14, (sched:counts()))
    assert.equal(2, #entry.free)
    -- with no live request about, every background sequence advances each step
    local before = bg_pieces()
    sched:step()
    assert.equal(14, bg_pieces() - before)
    -- a live request arrives: one step evaluates its prompt alone and gives its first token
    local live = recorder(log, "live")
    sched:submit(request(entry, "Name three rivers.", { max_tokens = 8 }), live)
    before = bg_pieces()
    local started = live.started
    function live.started(sink, job) live.bg_at_start = bg_pieces() return started(sink, job) end
    sched:step()
    assert.equal("live:started", log[#log])
    assert.truthy(live.pieces >= 1)
    assert.equal(before, live.bg_at_start) -- no background token came out first
    -- ... while the background advances at most a quarter of the slots per step, in turns
    assert.truthy(bg_pieces() - before <= 4)
    local seen = {}
    for _ = 1, 4 do
      local counts = {}
      for i, s in ipairs(bg) do counts[i] = s.pieces end
      sched:step()
      for i, s in ipairs(bg) do if s.pieces > counts[i] then seen[i] = true end end
    end
    for i = 1, 14 do assert.truthy(seen[i], "background request " .. i .. " never stepped") end
    -- the live request done, live traffic is still about for a while: a step of
    -- background work alone is short (one sequence of 16 slots), so the next live
    -- prompt waits little for it
    while not live.done do sched:step() end
    before = bg_pieces()
    sched:step()
    assert.truthy(bg_pieces() - before <= 1)
    run(sched)
    -- priority changes when a sequence steps, never what it says
    assert.equal(alone("Name three rivers.", 8), live.texts[1])
    for i = 1, 15, 7 do assert.equal(alone("Tell me about the number " .. i .. ".", 40), bg[i].texts[1]) end
  end)

  it("cancels a request whose sink stops being alive and frees its slot at once", function()
    local sched, entry = new(2)
    local log = {}
    local gone = recorder(log, "gone", 3)
    local stays = recorder(log, "stays")
    sched:submit(request(entry, "Write a poem.", { max_tokens = 32 }), gone)
    sched:submit(request(entry, "Write a song.", { max_tokens = 32 }), stays)
    run(sched)
    assert.equal("gone", gone.reason)
    assert.falsy(gone.done)
    assert.truthy(gone.pieces <= 4)
    assert.truthy(stays.done)
    assert.equal(2, #entry.free)
  end)

  it("cancels a queued request whose sink died before it got a slot", function()
    local sched, entry = new(1)
    local log = {}
    sched:submit(request(entry, "First."), recorder(log, "first"))
    local dead = recorder(log, "dead", 0)
    sched:submit(request(entry, "Second."), dead)
    run(sched)
    assert.equal("gone", dead.reason)
    assert.same({ "dead:cancelled:gone", "first:started", "first:finished" }, log)
  end)

  it("cancels a request still queued past its queue deadline", function()
    local sched, entry = new(1)
    local log = {}
    sched:submit(request(entry, "First."), recorder(log, "first"))
    local late = request(entry, "Second.")
    late.queue_deadline = chat.now() - 1
    local s = recorder(log, "late")
    sched:submit(late, s)
    run(sched)
    assert.equal("queue_timeout", s.reason)
  end)

  it("runs n > 1 choices from one prompt, each in its own slot", function()
    local sched, entry = new(4)
    local log = {}
    local s = recorder(log, "n3")
    sched:submit(request(entry, "Name a bird.", { n = 3 }), s)
    sched:step()
    assert.equal(1, #entry.free)
    run(sched)
    assert.truthy(s.done)
    local want = alone("Name a bird.", 8)
    for i = 1, 3 do assert.equal(want, s.texts[i]) end -- greedy: three equal choices
    assert.equal(3, #scheduler.choices(s.job))
    assert.equal(4, #entry.free)
  end)

  it("refuses what cannot fit, naming the field", function()
    local _, entry = new(2)
    local ok, e = pcall(request, entry, "Hi.", { n = 3 })
    assert.falsy(ok)
    assert.equal("n", e.param)
    ok, e = pcall(request, entry, "Hi.", { max_tokens = 1000 })
    assert.falsy(ok)
    assert.equal("context_length_exceeded", e.code)
  end)
end)
