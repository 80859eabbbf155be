-- Leave one element in the marker list that waiting consumers BLPOP, never more, so a
-- burst of publishes wakes a waiter once and the list stays bounded. Setting it also
-- PUBLISHes on the channel of the marker's name: on a Redis Cluster, where one BLPOP
-- cannot wait on several slots, idle consumers subscribe to it instead (wakeups.py).
local function wake(marker)
  if redis.call('LLEN', marker) == 0 then
    redis.call('RPUSH', marker, '1')
    redis.call('PUBLISH', marker, '')
  end
end
