--- @include "now"
--- @include "chunks"
--- @include "wake"

-- At most this many expired leases and due retries move to READY per call: a backlog
-- (say the leases of a crowd of consumers that died together) must never block Redis
-- for one long script. The rest stay in their ZSETs, where they already count as READY.
local MAX_REQUEUE = 1000

-- Logically, READY is every expired lease and due retry, earliest first (an expired lease
-- before a retry due at the same instant), followed by the `ready` list. The helpers keep
-- that order whatever part of the backlog has been moved so far.

-- Move up to MAX_REQUEUE of the expired leases and due retries to the head of `ready`,
-- forgetting the tokens of the expired leases (their receipts are stale even if nobody
-- claims the events again) and marking those events suspects (each may have crashed its
-- consumer, so it is handed out alone), and wake a waiter if anything moved. The LATEST ones move:
-- they belong right in front of `ready`, and the earlier ones still waiting will land in
-- front of them in a later call, so the order is the one an unbounded sweep would give.
local function requeue_due(ready, leased, tokens, delayed, suspects, marker, now)
  local expired = redis.call('ZRANGE', leased, now, '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, MAX_REQUEUE, 'WITHSCORES')
  local due = redis.call('ZRANGE', delayed, now, '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, MAX_REQUEUE, 'WITHSCORES')
  if #expired == 0 and #due == 0 then
    return
  end
  -- Both lists are latest first; merge them into `ids`, latest first, with a retry ahead
  -- of a lease at equal times. LPUSH puts each id in front of the previous one, so the
  -- earliest, pushed last, ends up at the head.
  local ids, was_leased, was_delayed = {}, {}, {}
  local i, j = 1, 1
  while #ids < MAX_REQUEUE and (i <= #expired or j <= #due) do
    if j > #due or (i <= #expired and tonumber(expired[i + 1]) > tonumber(due[j + 1])) then
      ids[#ids + 1] = expired[i]
      was_leased[#was_leased + 1] = expired[i]
      i = i + 2
    else
      ids[#ids + 1] = due[j]
      was_delayed[#was_delayed + 1] = due[j]
      j = j + 2
    end
  end
  call_chunked('LPUSH', ready, ids, 1, #ids)
  if #was_leased > 0 then
    call_chunked('ZREM', leased, was_leased, 1, #was_leased)
    call_chunked('HDEL', tokens, was_leased, 1, #was_leased)
    call_chunked('SADD', suspects, was_leased, 1, #was_leased)
  end
  if #was_delayed > 0 then
    call_chunked('ZREM', delayed, was_delayed, 1, #was_delayed)
  end
  wake(marker)
end

-- The earliest member of `zset` and its score (as a number, and as the exact string) if
-- it is due at `now`, else nil.
local function due_head(zset, now)
  local head = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
  if head[2] and tonumber(head[2]) <= now then
    return head[1], tonumber(head[2]), head[2]
  end
  return nil
end

-- Take the front of the backlog that requeue_due left in the ZSETs: the earliest expired
-- lease or due retry (the lease on equal times), or nil when none is left; an expired
-- lease's event becomes a suspect, as in requeue_due. Also returns the ZSET it came from
-- and its score there, so that a caller can put it back where it was. O(log n).
local function pop_due(leased, tokens, delayed, suspects, now)
  local lease_id, lease_at, lease_score = due_head(leased, now)
  local retry_id, retry_at, retry_score = due_head(delayed, now)
  if lease_id and (not retry_id or lease_at <= retry_at) then
    redis.call('ZREM', leased, lease_id)
    redis.call('HDEL', tokens, lease_id)
    redis.call('SADD', suspects, lease_id)
    return lease_id, leased, lease_score
  end
  if retry_id then
    redis.call('ZREM', delayed, retry_id)
  end
  return retry_id, delayed, retry_score
end

-- How many expired leases and due retries are still in their ZSETs. O(log n).
local function count_due(leased, delayed, now)
  return redis.call('ZCOUNT', leased, '-inf', now), redis.call('ZCOUNT', delayed, '-inf', now)
end

-- The earliest lease deadline or due time of the queue, as a string ('' when none): a
-- waiting consumer must not sleep past it. It is not after `now` while a backlog remains,
-- so the consumer looks again at once.
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
