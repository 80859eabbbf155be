--[[ stats: count one (topic, group)'s READY, LEASED, DELAYED and DEAD events.

Applies expired leases and due retries first, like claim, so the counts describe the
state machine at the current time.

KEYS: 1 ready  2 leased  3 tokens  4 delayed  5 dead  6 marker
ARGV: 1 now ('' = server TIME)
Returns: {ready, leased, delayed, dead, now, next_due ('' if none)}
]]
--- @include "now"
--- @include "requeue_due"

local ready, leased, tokens, delayed, dead, marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = now_from(ARGV[1])
requeue_due(ready, leased, tokens, delayed, marker, now)
return {
  redis.call('LLEN', ready),
  redis.call('ZCARD', leased),
  redis.call('ZCARD', delayed),
  redis.call('LLEN', dead),
  num(now),
  next_due(leased, delayed),
}
