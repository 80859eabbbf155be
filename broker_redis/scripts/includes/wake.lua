-- Leave one element in the marker list that waiting consumers BLPOP, never more, so a
-- burst of publishes wakes a waiter once and the list stays bounded.
local function wake(marker)
  if redis.call('LLEN', marker) == 0 then
    redis.call('RPUSH', marker, '1')
  end
end
