--- @include "now"
--- @include "lanes"

-- Move `id` to DEAD at `now`, recording why. `err` false means "no error given": the last
-- error a nack reported is kept instead. The attempt count moves into the dead letter, so
-- a replay starts from zero. DEAD is a list, so that dead letters keep the exact order of
-- death even when several die at the same instant. In an ordered group the event's key
-- lets its next event out. `k` holds the keys: attempts, errors, dead, deadinfo,
-- suspects, eventkeys, ready, lanes, heads, marker.
local function bury(k, id, now, reason, err, attempts)
  if not err then
    err = redis.call('HGET', k.errors, id)
  end
  local info = {reason = reason, attempts = attempts, died_at = num(now)}
  if err then
    info.error = err
  end
  redis.call('RPUSH', k.dead, id)
  redis.call('HSET', k.deadinfo, id, cjson.encode(info))
  redis.call('HDEL', k.errors, id)
  redis.call('HDEL', k.attempts, id)
  redis.call('SREM', k.suspects, id)
  local key = redis.call('HGET', k.eventkeys, id)
  if key then
    pass_key(k.ready, k.lanes, k.heads, k.marker, key, id)
  end
end
