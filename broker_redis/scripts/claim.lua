--[[ claim: lease up to max_count READY events of one (topic, group).

First expired leases and due retries go back to the front of READY (at most MAX_REQUEUE
per call, see requeue_due). Then events are taken from the front: what is left of that
backlog, earliest first, then the head of the list. Each one's attempt count goes up
with its claim, in this same atomic step, so an event that kills its consumer still runs
out of attempts. An event that would exceed max_attempts goes to DEAD ("max_attempts")
instead of being handed out (at most MAX_BURIALS per call). Each lease gets a fresh
token. A suspect (an event whose last lease expired: it may have crashed its consumer)
is handed out alone, marked isolated, when it is the first event the call takes and
ARGV[6] allows it; otherwise the call stops before it, leaving it at the front.
Afterwards the marker is left set only while READY still has events, so other idle
consumers wake up for the rest, and the reply says how many are left: a claim over the
partitions of a topic asks a second round only of those that have more. One call does
O(max_count + MAX_REQUEUE + MAX_BURIALS) work, whatever the size of the queues; with
max_count 0 it only requeues due work and counts. A call for another partition count
than the unit's changes nothing (layout.lua).

KEYS: 1 msg  2 eventkeys  3 ready  4 leased  5 tokens  6 attempts  7 errors  8 delayed
      9 dead  10 deadinfo  11 suspects  12 marker  13 lanes  14 heads  15 log  16 retention
      17 logged  18 refs  19 pins  20 layout
ARGV: 1 now ('' = server TIME)  2 lease (seconds)  3 max_count  4 max_attempts
      5 token prefix (random, unique to this call)  6 '1' if a suspect may be handed out
      7 the group's name  8 partition count
Returns: {now, deadline, next_due ('' if none), stopped (1 if it stopped before a suspect,
         else 0), copying (1 if a history copy of the group is in progress, which the
         client then runs: a copy a crash cut short goes on), READY events left, then per
         event: id, token, attempt, isolated (1 or 0), ordering key ('' if none), body};
         or {'~layout', the unit's count} when the partition count differs
]]
--- @include "now"
--- @include "requeue_due"
--- @include "bury"
--- @include "chunks"
--- @include "history"
--- @include "layout"

local MAX_BURIALS = 1000
-- Expired history entries freed per call: a quiet topic's history ages out too.
local TRIM_BUDGET = 64
local msg, eventkeys, ready, leased, tokens, delayed, marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[8], KEYS[12]
local k = {
  attempts = KEYS[6], errors = KEYS[7], dead = KEYS[9], deadinfo = KEYS[10], suspects = KEYS[11],
  eventkeys = eventkeys, ready = ready, marker = marker, lanes = KEYS[13], heads = KEYS[14],
}
local now = now_from(ARGV[1])
local deadline = now + tonumber(ARGV[2])
local max_count, max_attempts = tonumber(ARGV[3]), tonumber(ARGV[4])
local may_isolate = ARGV[6] == '1'

local layout = KEYS[20]
local moved = layout_moved(layout, ARGV[8])
if moved then
  return moved
end

requeue_due(ready, leased, tokens, delayed, k.suspects, marker, now)

local log, pins = KEYS[15], KEYS[19]
if redis.call('EXISTS', log) == 1 then
  local retention = KEYS[16]
  local t = {retention = retention, log = log, logged = KEYS[17], refs = KEYS[18], msg = msg, eventkeys = eventkeys, pins = pins}
  trim_log(t, retention_of(retention), now, TRIM_BUDGET)
end

local out = {}
local claimed, buried = 0, 0
-- 'isolated' once a suspect was taken, 'stopped' once the call stopped before one.
local ending = false
local isolated_id = nil
-- Leases taken but not yet written: written together, a few calls per batch instead of
-- a few per event (see flush).
local ids, attempts_of, leases, token_of = {}, {}, {}, {}
-- Ids this call already claimed or buried: their attempt count read in bulk is stale.
local touched = {}

local function flush()
  call_chunked('HSET', k.attempts, attempts_of, 1, #attempts_of)
  call_chunked('ZADD', leased, leases, 1, #leases)
  call_chunked('HSET', tokens, token_of, 1, #token_of)
  local bodies = get_chunked('HMGET', msg, ids)
  local keys_of = get_chunked('HMGET', eventkeys, ids)
  for i = 1, #ids do
    -- A missing body (an id planted without one) is handed out empty: the consumer's
    -- decoder dead-letters it like any other undecodable payload.
    out[#out + 1] = ids[i]
    out[#out + 1] = token_of[2 * i]
    out[#out + 1] = attempts_of[2 * i]
    out[#out + 1] = ids[i] == isolated_id and 1 or 0
    out[#out + 1] = keys_of[i] or ''
    out[#out + 1] = bodies[i] or ''
  end
  ids, attempts_of, leases, token_of = {}, {}, {}, {}
end

-- Whether the ZSETs may still hold expired leases or due retries: they come before the
-- list. Once none is found, none appears in this call (`now` does not move).
local backlog = true
-- Where each event of the current batch taken from the backlog came from: {zset, score}.
local origin = {}

-- The events of `batch` from position `first` on go back where they were, in front of
-- the rest in the same order: backlog events to their ZSET, the others to the list.
local function put_back(batch, first)
  for i = #batch, first, -1 do
    local from = origin[i]
    if from then
      redis.call('ZADD', from[1], from[2], batch[i])
    else
      redis.call('LPUSH', ready, batch[i])
    end
  end
end

while not ending and claimed < max_count and buried < MAX_BURIALS do
  -- A batch never holds more events than may still be claimed or buried, so the call
  -- stops after the same event as it would taking them one at a time.
  local want = math.min(max_count - claimed, MAX_BURIALS - buried)
  local batch = {}
  origin = {}
  while backlog and #batch < want do
    local id, zset, score = pop_due(leased, tokens, delayed, k.suspects, now)
    if not id then
      backlog = false
    else
      batch[#batch + 1] = id
      origin[#batch] = {zset, score}
    end
  end
  if #batch < want then
    for _, id in ipairs(redis.call('LPOP', ready, want - #batch) or {}) do
      batch[#batch + 1] = id
    end
  end
  if #batch == 0 then
    break
  end
  local counts = get_chunked('HMGET', k.attempts, batch)
  local suspect = get_chunked('SMISMEMBER', k.suspects, batch)
  for i, id in ipairs(batch) do
    local count = counts[i]
    if touched[id] then
      flush()
      count = redis.call('HGET', k.attempts, id)
      suspect[i] = redis.call('SISMEMBER', k.suspects, id)
    end
    touched[id] = true
    local attempt = tonumber(count or 0) + 1
    if attempt > max_attempts then
      flush()  -- keeps every write in the order of the events
      bury(k, id, now, 'max_attempts', false, attempt - 1)
      buried = buried + 1
    elseif suspect[i] == 1 and (claimed > 0 or not may_isolate) then
      put_back(batch, i)
      ending = 'stopped'
      break
    else
      if suspect[i] == 1 then
        isolated_id = id
        ending = 'isolated'
      end
      claimed = claimed + 1
      ids[#ids + 1] = id
      attempts_of[#attempts_of + 1] = id
      attempts_of[#attempts_of + 1] = attempt
      leases[#leases + 1] = deadline
      leases[#leases + 1] = id
      token_of[#token_of + 1] = id
      token_of[#token_of + 1] = ARGV[5] .. '.' .. claimed
      if ending then
        put_back(batch, i + 1)
        break
      end
    end
  end
end
flush()

local expired, due = count_due(leased, delayed, now)
local left = redis.call('LLEN', ready) + expired + due
if left > 0 then
  wake(marker)
else
  redis.call('DEL', marker)
end

local copying = redis.call('HEXISTS', pins, ARGV[7])
local head = {num(now), num(deadline), next_due(leased, delayed), ending == 'stopped' and 1 or 0, copying, left}
for i = 1, #out do
  head[#head + 1] = out[i]
end
return head
