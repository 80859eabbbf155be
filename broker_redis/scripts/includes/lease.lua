-- Whether `token` holds the live lease on `id`: the token matches AND the deadline has not
-- passed. An expired lease is stale even before a claim requeues it (fencing).
local function holds_lease(leased, tokens, id, token, now)
  if redis.call('HGET', tokens, id) ~= token then
    return false
  end
  local deadline = redis.call('ZSCORE', leased, id)
  return deadline ~= false and tonumber(deadline) > now
end

-- Forget the lease on `id` (its token goes with it, so its receipt turns stale).
local function drop_lease(leased, tokens, id)
  redis.call('ZREM', leased, id)
  redis.call('HDEL', tokens, id)
end
