--[[ nack: give a leased event back, to the front of READY or to DELAYED for `delay` s.

The attempt stays counted. The error, if given, is kept as the event's last error for a
later dead letter. Its handler failed rather than crashed: it is a suspect no more. A stale receipt changes nothing. In both cases a waiter is woken; for
a delayed retry the waiter's poll tells it when the retry falls due.

KEYS: 1 ready  2 leased  3 tokens  4 errors  5 delayed  6 suspects  7 marker
ARGV: 1 now ('' = server TIME)  2 delay (seconds)  3 event id  4 token  [5 error]
Returns: 1 if given back, 0 if stale
]]
--- @include "now"
--- @include "lease"
--- @include "wake"

local ready, leased, tokens, errors, delayed, suspects, marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now = now_from(ARGV[1])
local delay, id = tonumber(ARGV[2]), ARGV[3]
if not holds_lease(leased, tokens, id, ARGV[4], now) then
  return 0
end
drop_lease(leased, tokens, id)
redis.call('SREM', suspects, id)
if ARGV[5] then
  redis.call('HSET', errors, id, ARGV[5])
end
if delay > 0 then
  redis.call('ZADD', delayed, now + delay, id)
else
  redis.call('LPUSH', ready, id)
end
wake(marker)
return 1
