--- @include "chunks"

-- One group is done with event `id` (acked, or dead and purged): free the body (and the
-- ordering key) when it was the last group holding it. A missing count (a planted id)
-- also frees.
local function drop_ref(msg, refs, eventkeys, id)
  if redis.call('HINCRBY', refs, id, -1) <= 0 then
    redis.call('HDEL', refs, id)
    redis.call('HDEL', msg, id)
    redis.call('HDEL', eventkeys, id)
  end
end

-- drop_ref() for many distinct ids, with one HMGET and one HDEL per key for all of them
-- (only ids other groups still hold take a call of their own).
local function drop_refs(msg, refs, eventkeys, ids)
  local counts = get_chunked('HMGET', refs, ids)
  local freed = {}
  for i, id in ipairs(ids) do
    if (tonumber(counts[i]) or 0) <= 1 then
      freed[#freed + 1] = id
    else
      redis.call('HINCRBY', refs, id, -1)
    end
  end
  call_chunked('HDEL', refs, freed, 1, #freed)
  call_chunked('HDEL', msg, freed, 1, #freed)
  call_chunked('HDEL', eventkeys, freed, 1, #freed)
end
