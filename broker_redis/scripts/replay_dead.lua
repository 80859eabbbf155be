--[[ replay_dead: move dead events to the back of READY; their attempts start again.

All of them or the listed ids that are dead, in the order they died. Attempt counts and
last errors were cleared when they died.

KEYS: 1 ready  2 dead  3 deadinfo  4 marker
ARGV: 1 'all' or 'ids', then the ids
Returns: how many moved
]]
--- @include "dead"
--- @include "wake"

local ready, dead, deadinfo, marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local taken = take_dead(dead, deadinfo, ARGV[1] == 'ids' and ARGV, 2)
if #taken > 0 then
  call_chunked('RPUSH', ready, taken, 1, #taken)
  wake(marker)
end
return #taken
