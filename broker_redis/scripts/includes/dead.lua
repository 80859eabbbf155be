--- @include "chunks"

-- The dead ids to act on, oldest death first: the first `limit` of them when `list` is
-- false (the caller calls again for the rest: one call stays bounded however many are
-- dead), else those of `list[first..]` that are dead. The list is read in place, since
-- it may be a script's arguments, too many to copy with unpack. Each id taken is removed
-- from DEAD and its dead-letter record deleted; the caller decides where it goes. Walks
-- the list in chunks.
local function take_dead(dead, deadinfo, list, first, limit)
  local taken = {}
  if not list then
    while #taken < limit do
      local ids = redis.call('LRANGE', dead, 0, math.min(CHUNK, limit - #taken) - 1)
      if #ids == 0 then
        break
      end
      redis.call('LTRIM', dead, #ids, -1)
      for _, id in ipairs(ids) do
        taken[#taken + 1] = id
      end
    end
  else
    local wanted = {}
    for i = first, #list do
      if redis.call('HEXISTS', deadinfo, list[i]) == 1 then
        wanted[list[i]] = true
      end
    end
    if next(wanted) == nil then
      return taken
    end
    local length = redis.call('LLEN', dead)
    for first = 0, length - 1, CHUNK do
      for _, id in ipairs(redis.call('LRANGE', dead, first, first + CHUNK - 1)) do
        if wanted[id] then
          taken[#taken + 1] = id
        end
      end
    end
    for _, id in ipairs(taken) do
      redis.call('LREM', dead, 1, id)
    end
  end
  if #taken > 0 then
    call_chunked('HDEL', deadinfo, taken, 1, #taken)
  end
  return taken
end
