-- One group is done with event `id` (acked, or dead and purged): free the body when it
-- was the last group holding it. A missing count (a planted id) also frees.
local function release(msg, refs, id)
  if redis.call('HINCRBY', refs, id, -1) <= 0 then
    redis.call('HDEL', refs, id)
    redis.call('HDEL', msg, id)
  end
end
