--[[ purge_dead: delete dead events for good; a body is freed once no group holds it.

The first ARGV[2] of them ('all': the client calls again while some are left), or the
listed ids that are dead.

KEYS: 1 msg  2 refs  3 eventkeys  4 dead  5 deadinfo  6 held
ARGV: 1 'all', then at most how many; or 'ids', then the ids
Returns: {how many were deleted, how many are still dead}
]]
--- @include "dead"
--- @include "refs"

local msg, refs, eventkeys, dead, deadinfo, held = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local taken = take_dead(dead, deadinfo, ARGV[1] == 'ids' and ARGV, 2, tonumber(ARGV[2]))
for _, id in ipairs(taken) do
  drop_ref(msg, refs, eventkeys, id)
end
if #taken > 0 and redis.call('EXISTS', held) == 1 then
  call_chunked('SREM', held, taken, 1, #taken)
end
return {#taken, redis.call('LLEN', dead)}
