-- build/lumen run spec/serve/model_info.lua MODEL: the model's info() as one JSON line
-- (the serve tests ask what the engine does with a model's weights on this CPU)
local lumen = require "lumen"
local info = lumen.model.load(arg[1]):info()
io.write(string.format('{"panels": %s, "tiled": %s, "interleaved": %d}\n', tostring(info.panels), tostring(info.tiled),
                       info.interleaved + info.interleaving))
