--[[ replay_dead: move dead events to the back of READY; their attempts start again.

The first ARGV[3] of them ('all': the client calls again while some are left), or the
listed ids that are dead, in the order they died. Attempt counts and last errors were
cleared when they died. In an ordered group a replayed event joins the back of its
key's history, as if published now.

KEYS: 1 eventkeys  2 ordered  3 seq  4 ready  5 dead  6 deadinfo  7 lanes  8 heads
      9 marker
ARGV: 1 the group's name  2 'all', then at most how many; or 'ids', then the ids
Returns: {how many moved, how many are still dead}
]]
--- @include "dead"
--- @include "wake"
--- @include "lanes"

local eventkeys, ordered, seq = KEYS[1], KEYS[2], KEYS[3]
local ready, dead, deadinfo, lanes, heads, marker = KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local taken = take_dead(dead, deadinfo, ARGV[2] == 'ids' and ARGV, 3, tonumber(ARGV[3]))
if #taken == 0 then
  return {0, redis.call('LLEN', dead)}
end
if redis.call('SISMEMBER', ordered, ARGV[1]) == 0 then
  call_chunked('RPUSH', ready, taken, 1, #taken)
else
  local keys_of = get_chunked('HMGET', eventkeys, taken)
  local first = redis.call('INCRBY', seq, #taken) - #taken
  for i, id in ipairs(taken) do
    if keys_of[i] then
      join_key(ready, lanes, heads, keys_of[i], first + i, id)
    else
      redis.call('RPUSH', ready, id)
    end
  end
end
wake(marker)
return {#taken, redis.call('LLEN', dead)}
