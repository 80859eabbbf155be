--- @include "now"
--- @include "chunks"
--- @include "wake"

-- Apply the transitions time causes, before anything reads or pops a queue: expired
-- leases and due DELAYED events go to the front of READY, the one that expired or fell
-- due first in front. An expired lease's token is forgotten, so its receipt is stale
-- even if nobody claims the event again. Wakes a waiter if anything moved.
local function requeue_due(ready, leased, tokens, delayed, marker, now)
  local expired = redis.call('ZRANGE', leased, '-inf', now, 'BYSCORE', 'WITHSCORES')
  local due = redis.call('ZRANGE', delayed, '-inf', now, 'BYSCORE', 'WITHSCORES')
  if #expired == 0 and #due == 0 then
    return
  end
  local moving, ids = {}, {}
  for _, rows in ipairs({expired, due}) do
    for i = 1, #rows, 2 do
      moving[#moving + 1] = {rows[i], tonumber(rows[i + 1]), #moving}
    end
  end
  -- Latest first (ties in reverse of the order read, as table.sort is not stable):
  -- LPUSH puts each argument in front of the previous one, so the earliest, pushed
  -- last, ends up at the head.
  table.sort(moving, function(a, b)
    return a[2] > b[2] or (a[2] == b[2] and a[3] > b[3])
  end)
  for i, entry in ipairs(moving) do
    ids[i] = entry[1]
  end
  call_chunked('LPUSH', ready, ids, 1, #ids)
  redis.call('ZREMRANGEBYSCORE', leased, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', delayed, '-inf', now)
  for i = 1, #expired, 2 do
    redis.call('HDEL', tokens, expired[i])
  end
  wake(marker)
end

-- The earliest lease deadline or due time of the queue, as a string ('' when none): a
-- waiting consumer must not sleep past it.
local function next_due(leased, delayed)
  local a = redis.call('ZRANGE', leased, 0, 0, 'WITHSCORES')[2]
  local b = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')[2]
  if a and b then
    return num(math.min(tonumber(a), tonumber(b)))
  end
  if a then
    return num(tonumber(a))
  end
  return b and num(tonumber(b)) or ''
end
