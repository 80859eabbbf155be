--[[ extend: make live leases of one (topic, group) last at least `lease` seconds from now.

A lease never gets shorter (GT keeps the later deadline), so a consumer's own idea of its
lease never outlives this one (fencing). Stale receipts change nothing.

KEYS: 1 leased  2 tokens
ARGV: 1 now ('' = server TIME)  2 lease (seconds), then pairs: event id, token
Returns: per pair, 1 if extended, 0 if stale
]]
--- @include "now"
--- @include "lease"

local leased, tokens = KEYS[1], KEYS[2]
local now = now_from(ARGV[1])
local deadline = now + tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if holds_lease(leased, tokens, id, ARGV[i + 1], now) then
    redis.call('ZADD', leased, 'XX', 'GT', deadline, id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
