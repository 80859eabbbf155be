--[[ kill: move a leased event to DEAD with a reason, the error and its attempt count.

Without an error argument the last error a nack reported is kept. A stale receipt changes
nothing. The body stays until the dead letter is purged.

KEYS: 1 leased  2 tokens  3 attempts  4 errors  5 dead  6 deadinfo  7 suspects
      8 eventkeys  9 ready  10 lanes  11 heads  12 marker
ARGV: 1 now ('' = server TIME)  2 event id  3 token  4 reason  [5 error]
Returns: 1 if killed, 0 if stale
]]
--- @include "now"
--- @include "lease"
--- @include "bury"

local leased, tokens = KEYS[1], KEYS[2]
local k = {
  attempts = KEYS[3], errors = KEYS[4], dead = KEYS[5], deadinfo = KEYS[6], suspects = KEYS[7],
  eventkeys = KEYS[8], ready = KEYS[9], lanes = KEYS[10], heads = KEYS[11], marker = KEYS[12],
}
local now = now_from(ARGV[1])
local id = ARGV[2]
if not holds_lease(leased, tokens, id, ARGV[3], now) then
  return 0
end
drop_lease(leased, tokens, id)
local attempts = tonumber(redis.call('HGET', k.attempts, id) or 0)
bury(k, id, now, ARGV[4], ARGV[5] or false, attempts)
return 1
