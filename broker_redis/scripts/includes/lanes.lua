--- @include "wake"

-- Ordered groups keep, per ordering key, one event out (in `heads`: READY in `ready`,
-- LEASED or DELAYED) and the rest waiting in `lanes`, a sorted set whose members sort by
-- key then by position: `<key> NUL <position> NUL <id>`. Keys hold no control characters
-- (broker_core.names.validate_key), so a key's members are the range [key NUL, key SOH).

local POSITION_DIGITS = 16

-- The member of `id` at `position` in the history of `key`.
local function lane_member(key, position, id)
  return key .. '\0' .. string.format('%016d', position) .. '\0' .. id
end

-- An event of `key` joins the back of its key: out at once (pushed to `ready`) if the
-- key has none out, else waiting in `lanes`. Returns whether it went to `ready`.
local function join_key(ready, lanes, heads, key, position, id)
  if redis.call('HSETNX', heads, key, id) == 1 then
    redis.call('RPUSH', ready, id)
    return true
  end
  redis.call('ZADD', lanes, 0, lane_member(key, position, id))
  return false
end

-- Event `id` of `key` is done or dead: if it was the key's event out, the key's next
-- waiting one (if any) goes out, to the back of `ready`. O(log n).
local function pass_key(ready, lanes, heads, marker, key, id)
  if redis.call('HGET', heads, key) ~= id then
    return
  end
  local next = redis.call('ZRANGE', lanes, '[' .. key .. '\0', '(' .. key .. '\1', 'BYLEX', 'LIMIT', 0, 1)[1]
  if not next then
    redis.call('HDEL', heads, key)
    return
  end
  redis.call('ZREM', lanes, next)
  local next_id = string.sub(next, #key + POSITION_DIGITS + 3)
  redis.call('HSET', heads, key, next_id)
  redis.call('RPUSH', ready, next_id)
  wake(marker)
end
