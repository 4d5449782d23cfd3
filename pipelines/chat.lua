--- `lumen chat`: one reply to a message, or a REPL (history kept in the KV cache).
-- REPL commands: /reset (forget the conversation), /system TEXT (set the system
-- prompt and reset), /stats (toggle speed statistics), /quit or Ctrl-D to leave.
local M = {}

local HELP = [[
/help          this list
/reset         forget the conversation (the system prompt stays)
/system TEXT   a new system prompt (resets the conversation)
/stats         speed statistics after each reply, on or off
/quit          leave (or Ctrl-D)
//text         send "/text" to the model
]]

function M.run(o)
  local lumen = require "lumen"
  local chat = require "lumen.chat"
  local model = lumen.model.load(o.model, { threads = o.threads, kv_type = o.kv_type })
  local info = model:info()
  local conv = chat.conversation(model, {
    system = o.system,
    ctx = o.ctx or math.min(4096, info.n_ctx_train),
    max_tokens = o.n_predict,
    sampler = lumen.sampler.for_model(model, o.sampling),
  })
  local function write(piece) io.write(piece) io.flush() end

  -- what the user should know about a reply: turns dropped, a reply cut by a full context
  local function notices(st)
    if st.dropped > 0 then
      io.stderr:write(string.format("(the conversation outgrew the context of %d tokens: dropped its %d oldest turn%s; /reset to start over)\n",
        conv.session:ctx(), st.dropped, st.dropped == 1 and "" or "s"))
    end
    if st.context_full then io.stderr:write("(the reply was cut: the context is full)\n") end
  end

  if o.message then
    local _, st = conv:say(o.message, write)
    io.write("\n")
    notices(st)
    if o.stats then io.stderr:write("\n", chat.format_stats(st, o.threads), "\n") end
    return 0
  end

  local stats = false
  local tty = os.getenv("TERM") ~= nil
  if tty then io.stderr:write(string.format("lumen chat: %s (%s). /help for commands, Ctrl-D to leave.\n", info.name, model.alias or model.path)) end
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
    elseif line == "/help" or line == "/?" then
      io.stderr:write(HELP)
    elseif line:match("^/[^/]") then
      io.stderr:write(string.format("(unknown command %s: /help lists them; //text sends /text to the model)\n", line:match("^%S+")))
    elseif line:match("^%s*$") then
      -- nothing to say
    else
      if line:match("^//") then line = line:sub(2) end
      local ok, st = pcall(function() local _, s = conv:say(line, write) return s end)
      io.write("\n")
      if not ok then io.stderr:write("lumen: error: ", (tostring(st):gsub("^[^%s:]+%.lua:%d+: ", "")), "\n")
      else
        notices(st)
        if stats then io.stderr:write(chat.format_stats(st, o.threads), "\n") end
      end
    end
  end
  return 0
end

return M
