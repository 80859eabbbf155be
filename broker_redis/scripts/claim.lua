--[[ claim: lease up to max_count READY events of one (topic, group).

First expired leases and due retries go back to the front of READY (at most MAX_REQUEUE
per call, see requeue_due). Then events are taken from the front: what is left of that
backlog, earliest first, then the head of the list. Each one's attempt count goes up
with its claim, in this same atomic step, so an event that kills its consumer still runs
out of attempts. An event that would exceed max_attempts goes to DEAD ("max_attempts")
instead of being handed out (at most MAX_BURIALS per call). Each lease gets a fresh
token. Afterwards the marker is left set only while READY still has events, so other
idle consumers wake up for the rest. One call does O(max_count + MAX_REQUEUE +
MAX_BURIALS) work, whatever the size of the queues.

KEYS: 1 msg  2 ready  3 leased  4 tokens  5 attempts  6 errors  7 delayed  8 dead
      9 deadinfo  10 marker
ARGV: 1 now ('' = server TIME)  2 lease (seconds)  3 max_count  4 max_attempts
      5 token prefix (random, unique to this call)
Returns: {now, deadline, next_due ('' if none), then per event: id, token, attempt, body}
]]
--- @include "now"
--- @include "requeue_due"
--- @include "bury"

local MAX_BURIALS = 1000
local msg, ready, leased, tokens, delayed, marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[7], KEYS[10]
local k = {attempts = KEYS[5], errors = KEYS[6], dead = KEYS[8], deadinfo = KEYS[9]}
local now = now_from(ARGV[1])
local deadline = now + tonumber(ARGV[2])
local max_count, max_attempts = tonumber(ARGV[3]), tonumber(ARGV[4])

requeue_due(ready, leased, tokens, delayed, marker, now)

local out = {}
local claimed, buried = 0, 0
-- Whether the ZSETs may still hold expired leases or due retries: they come before the
-- list. Once none is found, none appears in this call (`now` does not move).
local backlog = true
while claimed < max_count and buried < MAX_BURIALS do
  local id = backlog and pop_due(leased, tokens, delayed, now)
  if not id then
    backlog = false
    id = redis.call('LPOP', ready)
    if not id then
      break
    end
  end
  local attempt = tonumber(redis.call('HGET', k.attempts, id) or 0) + 1
  if attempt > max_attempts then
    bury(k, id, now, 'max_attempts', false, attempt - 1)
    buried = buried + 1
  else
    claimed = claimed + 1
    local token = ARGV[5] .. '.' .. claimed
    redis.call('HSET', k.attempts, id, attempt)
    redis.call('ZADD', leased, deadline, id)
    redis.call('HSET', tokens, id, token)
    -- A missing body (an id planted without one) is handed out empty: the consumer's
    -- decoder dead-letters it like any other undecodable payload.
    out[#out + 1] = id
    out[#out + 1] = token
    out[#out + 1] = attempt
    out[#out + 1] = redis.call('HGET', msg, id) or ''
  end
end

local expired, due = count_due(leased, delayed, now)
if redis.call('LLEN', ready) + expired + due > 0 then
  wake(marker)
else
  redis.call('DEL', marker)
end

local head = {num(now), num(deadline), next_due(leased, delayed)}
for i = 1, #out do
  head[#head + 1] = out[i]
end
return head
