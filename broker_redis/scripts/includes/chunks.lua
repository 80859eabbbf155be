-- Lua's stack holds a few thousand values, so a command gets at most CHUNK arguments.
local CHUNK = 1000

-- Call `command key ...` for the items of `list` between `first` and `last`, CHUNK at a time.
local function call_chunked(command, key, list, first, last)
  for i = first, last, CHUNK do
    redis.call(command, key, unpack(list, i, math.min(i + CHUNK - 1, last)))
  end
end
