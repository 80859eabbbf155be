--[[ publish: append events, in order, to the READY queue of every subscribed group.

All events of the call become visible to every group at once. The body is stored once
for the topic with a count of the groups holding it. An id the topic still holds (some
group has not finished with it) is skipped, so publishing again is harmless.

The client passes the groups it believes are subscribed, because every key a script
touches must be declared in KEYS; if the subscribed set differs, nothing is written and
the script answers with the real set so that the client can retry.

KEYS: 1 msg  2 refs  3 groups
      then per group g = 1..n: 2+2g ready  3+2g marker
ARGV: 1 n, 2..n+1 the group names, then pairs: event id, body
Returns: n (integer) once published, or the subscribed group names (array) when they
         differ from the ones passed.
]]
--- @include "chunks"
--- @include "wake"

local msg, refs, groups = KEYS[1], KEYS[2], KEYS[3]
local n = tonumber(ARGV[1])

if redis.call('SCARD', groups) ~= n then
  return redis.call('SMEMBERS', groups)
end
for g = 1, n do
  if redis.call('SISMEMBER', groups, ARGV[1 + g]) == 0 then
    return redis.call('SMEMBERS', groups)
  end
end
if n == 0 then
  return 0
end

local fresh = {}
for i = n + 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HSETNX', msg, id, ARGV[i + 1]) == 1 then
    redis.call('HSET', refs, id, n)
    fresh[#fresh + 1] = id
  end
end
if #fresh > 0 then
  for g = 1, n do
    local ready, marker = KEYS[2 + 2 * g], KEYS[3 + 2 * g]
    call_chunked('RPUSH', ready, fresh, 1, #fresh)
    wake(marker)
  end
end
return n
