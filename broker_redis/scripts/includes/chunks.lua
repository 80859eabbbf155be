-- Lua's stack holds a few thousand values, so a command gets at most CHUNK arguments.
local CHUNK = 1000

-- Call `command key ...` for the items of `list` between `first` and `last`, CHUNK at a time.
local function call_chunked(command, key, list, first, last)
  for i = first, last, CHUNK do
    redis.call(command, key, unpack(list, i, math.min(i + CHUNK - 1, last)))
  end
end

-- The replies of `command key ...` for every item of `list`, in order, CHUNK at a time
-- (HMGET, ZMSCORE: one call per chunk instead of one per item).
local function get_chunked(command, key, list)
  local out = {}
  for i = 1, #list, CHUNK do
    local part = redis.call(command, key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
    for j = 1, #part do
      out[#out + 1] = part[j]
    end
  end
  return out
end
