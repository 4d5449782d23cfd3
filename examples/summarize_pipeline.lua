-- A document pipeline: every file of a folder becomes one chat request.
--   build/lumen batch notes/ --pipeline examples/summarize_pipeline.lua -o summaries.jsonl
-- `lumen batch` calls request(doc) once per file (doc = {name, path, text, size});
-- the answers land in the output as OpenAI batch lines, custom_id = the file name.
local MAX_CHARS = 4000 -- keep the prompt well inside the context

return {
  url = "/v1/chat/completions",
  request = function(doc)
    local text = doc.text
    if #text > MAX_CHARS then text = text:sub(1, MAX_CHARS) .. "\n[...]" end
    return {
      messages = {
        { role = "system", content = "You summarize documents in one sentence." },
        { role = "user", content = "Summarize the document " .. doc.name .. ":\n\n" .. text },
      },
      max_tokens = 64,
      temperature = 0,
    }
  end,
}
