--[[ ack: mark leased events DONE for one (topic, group).

A receipt counts only while its lease is live (same token, deadline not passed); a stale
one changes nothing. The body is freed once no group holds the event.

KEYS: 1 msg  2 refs  3 leased  4 tokens  5 attempts  6 errors
ARGV: 1 now ('' = server TIME), then pairs: event id, token
Returns: per pair, 1 if acked, 0 if stale
]]
--- @include "now"
--- @include "lease"
--- @include "release"

local msg, refs, leased, tokens, attempts, errors = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = now_from(ARGV[1])
local out = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if holds_lease(leased, tokens, id, ARGV[i + 1], now) then
    drop_lease(leased, tokens, id)
    redis.call('HDEL', attempts, id)
    redis.call('HDEL', errors, id)
    release(msg, refs, id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
