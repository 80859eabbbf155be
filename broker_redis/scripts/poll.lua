--[[ poll: what a waiting consumer runs at its periodic sweep, when a deadline it knows
passes, or when woken by a marker of one of several topics.

Applies expired leases and due retries (a bounded part of them, see requeue_due), then,
if READY has events, leaves the marker set so that the next idle consumer of the group
wakes too (one wake-up passes the next on). The READY count includes the expired leases
and due retries not moved yet, so a backlog keeps consumers claiming.

KEYS: 1 ready  2 leased  3 tokens  4 delayed  5 suspects  6 marker
ARGV: 1 now ('' = server TIME)
Returns: {number of READY events, now, next_due ('' if none)}
]]
--- @include "now"
--- @include "requeue_due"

local ready, leased, tokens, delayed, suspects, marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = now_from(ARGV[1])
requeue_due(ready, leased, tokens, delayed, suspects, marker, now)
local expired, due = count_due(leased, delayed, now)
local n = redis.call('LLEN', ready) + expired + due
if n > 0 then
  wake(marker)
end
return {n, num(now), next_due(leased, delayed)}
