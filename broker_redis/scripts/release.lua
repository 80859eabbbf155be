--[[ release: give leased events back to the front of READY, their attempts uncounted.

What a stopping consumer does with the events it will not handle: that is no failed
attempt, so the count the claim added is taken back. An event keeps its suspect mark.
The events go back in the order given, in front of READY. Stale receipts change nothing.

KEYS: 1 ready  2 leased  3 tokens  4 attempts  5 marker
ARGV: 1 now ('' = server TIME), then pairs: event id, token
Returns: per pair, 1 if given back, 0 if stale
]]
--- @include "now"
--- @include "lease"
--- @include "wake"

local ready, leased, tokens, attempts, marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = now_from(ARGV[1])
local out, back = {}, 0
-- Backwards, so that LPUSH leaves the first of them at the very front.
for i = #ARGV - 1, 2, -2 do
  local id = ARGV[i]
  if holds_lease(leased, tokens, id, ARGV[i + 1], now) then
    drop_lease(leased, tokens, id)
    if redis.call('HINCRBY', attempts, id, -1) <= 0 then
      redis.call('HDEL', attempts, id)
    end
    redis.call('LPUSH', ready, id)
    back = back + 1
    out[i / 2] = 1
  else
    out[i / 2] = 0
  end
end
if back > 0 then
  wake(marker)
end
return out
