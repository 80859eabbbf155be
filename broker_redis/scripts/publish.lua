--[[ publish: append events, in order, to the READY queue of every subscribed group.

All events of the call become visible to every group at once. The body is stored once
for the topic with a count of the groups holding it. An ordered group gets at once only
the events whose key it holds no other event of; the others wait in its lanes (see
includes/lanes.lua). An event is skipped when the topic
still holds its id (some group has not finished with it), or when its id was published
less than its dedup window ago, even if every group has finished with it since; a
skipped duplicate does not extend the window. Ended windows are forgotten a bounded
number per call, at least as many as the call can add.

On a topic with retention (or a history copy in progress), each event not skipped also
joins the topic's history (see
includes/history.lua), which holds its id until retention no longer covers it, and
each group records that it holds the event (`held`, which a rewind consults), even with
no group subscribed. The call first frees a bounded number of expired history entries.

The client passes the groups it believes are subscribed, because every key a script
touches must be declared in KEYS; if the subscribed set differs, nothing is written and
the script answers with the real set so that the client can retry. Likewise the
partition count: a call for another count than the unit's writes nothing (layout.lua).

KEYS: 1 msg  2 refs  3 groups  4 dedup  5 eventkeys  6 ordered  7 seq  8 retention  9 log
      10 logged  11 pins  12 published  13 layout
      then per group g = 1..n: 9+5g ready  10+5g marker  11+5g lanes  12+5g heads  13+5g held
ARGV: 1 now ('' = server TIME)  2 dedup window (seconds, 0 = none)  3 partition count
      4 n, 5..n+4 the group names, n+5 how many values per event (2, or 3 with keys),
      then per event: event id, body[, ordering key ('' = none)]
Returns: the number of copies enqueued (integer: events not skipped times n) once
         published, the subscribed group names (array) when they differ from the ones
         passed, or {'~layout', the unit's count} when the partition count differs.
]]
--- @include "now"
--- @include "chunks"
--- @include "wake"
--- @include "lanes"
--- @include "history"
--- @include "layout"

local msg, refs, groups, dedup, eventkeys, ordered, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local retention, log, logged, pins, published, layout = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13]
local t = {retention = retention, log = log, logged = logged, refs = refs, msg = msg, eventkeys = eventkeys, pins = pins}
local window, n = tonumber(ARGV[2]), tonumber(ARGV[4])

local moved = layout_moved(layout, ARGV[3])
if moved then
  return moved
end
if redis.call('SCARD', groups) ~= n then
  return redis.call('SMEMBERS', groups)
end
for g = 1, n do
  if redis.call('SISMEMBER', groups, ARGV[4 + g]) == 0 then
    return redis.call('SMEMBERS', groups)
  end
end
-- Topics without retention pay one EXISTS for it.
local rt = redis.call('EXISTS', retention) == 1 and retention_of(retention)
-- A group copying the history gets live events only through it, so the history goes on
-- while a copy runs, even if retention was removed meanwhile.
local keeps = rt and (retains(rt) or redis.call('EXISTS', pins) == 1)
if n == 0 and not keeps then
  return 0
end

local stride, first_event = tonumber(ARGV[n + 5]), n + 6
local ids = {}
for i = first_event, #ARGV, stride do
  ids[#ids + 1] = ARGV[i]
end
-- Publishers without a window, on a topic without records, skip the dedup work.
local recording = redis.call('EXISTS', dedup) == 1
local now = (window > 0 or recording or rt) and now_from(ARGV[1])
if rt then
  trim_log(t, rt, now, #ids + 64)
end
local windows = {}
if recording then
  local ended = redis.call('ZRANGE', dedup, '-inf', num(now), 'BYSCORE', 'LIMIT', 0, 2 * #ids + 16)
  call_chunked('ZREM', dedup, ended, 1, #ended)
  windows = get_chunked('ZMSCORE', dedup, ids)
end

-- Every event of the call shares the end of its window.
local ends = window > 0 and num(now + window)
local fresh, fresh_keys, recorded = {}, {}, {}
for i, id in ipairs(ids) do
  local open = windows[i] and tonumber(windows[i]) > now
  local at = first_event + stride * (i - 1)
  local key = stride == 3 and ARGV[at + 2] or ''
  local stored = not open and redis.call('HSETNX', msg, id, ARGV[at + 1]) == 1
  if not open and not stored and rt and reclaim(t, rt, now, id) then
    stored = redis.call('HSETNX', msg, id, ARGV[at + 1]) == 1
  end
  if stored then
    redis.call('HSET', refs, id, keeps and n + 1 or n)
    if key ~= '' then
      redis.call('HSET', eventkeys, id, key)
    end
    if keeps then
      log_event(t, rt, now, id)
      trim_log(t, rt, now, 1)  -- the newest max_events: one in, one out
    end
    fresh[#fresh + 1] = id
    fresh_keys[#fresh] = key
    if ends then
      recorded[#recorded + 1] = ends
      recorded[#recorded + 1] = id
    end
  end
end
call_chunked('ZADD', dedup, recorded, 1, #recorded)
if #fresh > 0 then
  redis.call('INCRBY', published, #fresh)
end
if keeps and #fresh > 0 then
  save_position(t, rt)
end
if #fresh > 0 and n > 0 then
  -- Positions in the keys' histories, for ordered groups: one counter for the topic,
  -- which topics without an ordered group never create.
  local first = nil
  for g = 1, n do
    local ready, marker, lanes, heads = KEYS[9 + 5 * g], KEYS[10 + 5 * g], KEYS[11 + 5 * g], KEYS[12 + 5 * g]
    local held = KEYS[13 + 5 * g]
    if keeps then
      call_chunked('SADD', held, fresh, 1, #fresh)
    end
    if redis.call('SISMEMBER', ordered, ARGV[4 + g]) == 0 then
      call_chunked('RPUSH', ready, fresh, 1, #fresh)
    else
      first = first or redis.call('INCRBY', seq, #fresh) - #fresh
      for i, id in ipairs(fresh) do
        if fresh_keys[i] == '' then
          redis.call('RPUSH', ready, id)
        else
          join_key(ready, lanes, heads, fresh_keys[i], first + i, id)
        end
      end
    end
    wake(marker)
  end
end
return #fresh * n
