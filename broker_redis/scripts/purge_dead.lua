--[[ purge_dead: delete dead events for good; a body is freed once no group holds it.

All of them or the listed ids that are dead.

KEYS: 1 msg  2 refs  3 dead  4 deadinfo
ARGV: 1 'all' or 'ids', then the ids
Returns: how many were deleted
]]
--- @include "dead"
--- @include "refs"

local msg, refs, dead, deadinfo = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local taken = take_dead(dead, deadinfo, ARGV[1] == 'ids' and ARGV, 2)
for _, id in ipairs(taken) do
  drop_ref(msg, refs, id)
end
return #taken
