--- `lumen chat`: one reply to a message, or a REPL (history kept in the KV cache).
-- REPL commands: /reset (forget the conversation), /system TEXT (set the system
-- prompt and reset), /stats (toggle speed statistics), /quit or Ctrl-D to leave.
local M = {}

function M.run(o)
  local lumen = require "lumen"
  local chat = require "lumen.chat"
  local model = lumen.model.load(o.model, { threads = o.threads })
  local info = model:info()
  local conv = chat.conversation(model, {
    system = o.system,
    ctx = o.ctx or math.min(4096, info.n_ctx_train),
    max_tokens = o.n_predict,
    sampler = lumen.sampler.for_model(model, o.sampling),
  })
  local function write(piece) io.write(piece) io.flush() end

  if o.message then
    local _, st = conv:say(o.message, write)
    io.write("\n")
    if o.stats then io.stderr:write("\n", chat.format_stats(st, o.threads), "\n") end
    return 0
  end

  local stats = false
  local tty = os.getenv("TERM") ~= nil
  if tty then io.stderr:write(string.format("lumen chat: %s (%s). /reset, /system TEXT, /stats, Ctrl-D to leave.\n", info.name, model.alias or model.path)) end
  while true do
    if tty then io.stdout:write("> ") io.stdout:flush() end
    local line = io.stdin:read("*l")
    if line == nil or line == "/quit" or line == "/exit" then break end
    if line == "/reset" then
      conv:reset()
      io.stderr:write("(conversation reset)\n")
    elseif line:match("^/system") then
      conv:set_system((line:match("^/system%s+(.*)$") or ""))
      conv:reset()
      io.stderr:write("(system prompt set; conversation reset)\n")
    elseif line == "/stats" then
      stats = not stats
      io.stderr:write(stats and "(stats on)\n" or "(stats off)\n")
    elseif line:match("^%s*$") then
      -- nothing to say
    else
      local ok, st = pcall(function() local _, s = conv:say(line, write) return s end)
      io.write("\n")
      if not ok then io.stderr:write("lumen: error: ", tostring(st), "\n")
      elseif stats then io.stderr:write(chat.format_stats(st, o.threads), "\n") end
    end
  end
  return 0
end

return M
