--[[ stats: count one (topic, group)'s READY, LEASED, DELAYED and DEAD events.

Applies expired leases and due retries first, like claim, and counts those left in
their ZSETs by a bounded requeue as READY, so the counts describe the state machine at
the current time.

KEYS: 1 ready  2 leased  3 tokens  4 delayed  5 dead  6 suspects  7 marker  8 lanes  9 acked
ARGV: 1 now ('' = server TIME)
Returns: {ready, leased, delayed, dead, now, next_due ('' if none), acked so far}
]]
--- @include "now"
--- @include "requeue_due"

local ready, leased, tokens, delayed, dead, suspects, marker, lanes, acked = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now = now_from(ARGV[1])
requeue_due(ready, leased, tokens, delayed, suspects, marker, now)
local expired, due = count_due(leased, delayed, now)
return {
  -- Events waiting for their key's turn (ordered groups) are READY too.
  redis.call('LLEN', ready) + expired + due + redis.call('ZCARD', lanes),
  redis.call('ZCARD', leased) - expired,
  redis.call('ZCARD', delayed) - due,
  redis.call('LLEN', dead),
  num(now),
  next_due(leased, delayed),
  tonumber(redis.call('GET', acked) or 0),
}
