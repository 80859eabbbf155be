--[[ unseal: open again a unit that seal closed, when the change of the partition count
is refused (another unit holds events) or was cut short before it took effect.

Only a unit sealed by the seal given (or, with '', by any) is changed, so that a unit
another change sealed meanwhile stays sealed.

KEYS: 1 layout
ARGV: 1 the seal ('<N>><M>', or '' for any)  2 the count to restore ('' = none: the
      topic's own unit, where absent means 1)
Returns: 1 if the unit was unsealed, else 0
]]

local layout = KEYS[1]
local stored = redis.call('GET', layout)
if not stored or not string.find(stored, '>', 1, true) or (ARGV[1] ~= '' and stored ~= ARGV[1]) then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', layout)
else
  redis.call('SET', layout, ARGV[2])
end
return 1
