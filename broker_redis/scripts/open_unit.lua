--[[ open_unit: write one unit of a topic's new partition layout (configure_topic).

Once every unit of the old layout is sealed, each unit of the new one gets the topic's
groups with their options, its retention and its count, so that the clients that learn
the new count find their subscriptions there. Adding is idempotent: a change cut short
is completed by running it again.

KEYS: 1 layout  2 groups  3 ordered  4 retention
ARGV: 1 the count to store ('' = leave the layout key alone: the topic's own unit, whose
      count the client writes last)  2 '1' to set the retention, '0' to leave it
      3 max_age (seconds, '' = none)  4 max_events ('' = none)  5 n, then per group: its
      name, '1' if ordered else '0'
Returns: 1
]]

local layout, groups, ordered, retention = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
for g = 1, tonumber(ARGV[5]) do
  local name = ARGV[4 + 2 * g]
  redis.call('SADD', groups, name)
  if ARGV[5 + 2 * g] == '1' then
    redis.call('SADD', ordered, name)
  end
end
if ARGV[2] == '1' then
  for i, field in ipairs({'max_age', 'max_events'}) do
    if ARGV[2 + i] == '' then
      redis.call('HDEL', retention, field)
    else
      redis.call('HSET', retention, field, ARGV[2 + i])
    end
  end
end
if ARGV[1] ~= '' then
  redis.call('SET', layout, ARGV[1])
end
return 1
