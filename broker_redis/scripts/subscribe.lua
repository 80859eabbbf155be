--[[ subscribe: make a group a durable subscriber of one topic, keeping its options.

A new subscription is created with the options given (ordered or not). An existing one
keeps the options it was created with: asked for without options it is left alone, and
asked for with other options it is left alone too, and the script says so, so that the
client refuses the call. The registry of topics is written by the client, outside the
topic's slot.

KEYS: 1 groups  2 ordered
ARGV: 1 group  2 '1' (ordered), '0' (not) or '' (keep the stored options)
Returns: {1 if created / 0 if it existed / -1 if the options differ, stored ordered (1 or 0)}
]]
local groups, ordered = KEYS[1], KEYS[2]
local group, asked = ARGV[1], ARGV[2]

if redis.call('SISMEMBER', groups, group) == 1 then
  local stored = redis.call('SISMEMBER', ordered, group)
  if asked ~= '' and tonumber(asked) ~= stored then
    return {-1, stored}
  end
  return {0, stored}
end
redis.call('SADD', groups, group)
if asked == '1' then
  redis.call('SADD', ordered, group)
  return {1, 1}
end
return {1, 0}
