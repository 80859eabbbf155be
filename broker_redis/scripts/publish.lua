--[[ publish: append events, in order, to the READY queue of every subscribed group.

All events of the call become visible to every group at once. The body is stored once
for the topic with a count of the groups holding it. An event is skipped when the topic
still holds its id (some group has not finished with it), or when its id was published
less than its dedup window ago, even if every group has finished with it since; a
skipped duplicate does not extend the window. Ended windows are forgotten a bounded
number per call, at least as many as the call can add.

The client passes the groups it believes are subscribed, because every key a script
touches must be declared in KEYS; if the subscribed set differs, nothing is written and
the script answers with the real set so that the client can retry.

KEYS: 1 msg  2 refs  3 groups  4 dedup  5 eventkeys
      then per group g = 1..n: 4+2g ready  5+2g marker
ARGV: 1 now ('' = server TIME)  2 dedup window (seconds, 0 = none)  3 n,
      4..n+3 the group names, then triples: event id, body, ordering key ('' = none)
Returns: the number of copies enqueued (integer: events not skipped times n) once
         published, or the subscribed group names (array) when they differ from the
         ones passed.
]]
--- @include "now"
--- @include "chunks"
--- @include "wake"

local msg, refs, groups, dedup, eventkeys = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local window, n = tonumber(ARGV[2]), tonumber(ARGV[3])

if redis.call('SCARD', groups) ~= n then
  return redis.call('SMEMBERS', groups)
end
for g = 1, n do
  if redis.call('SISMEMBER', groups, ARGV[3 + g]) == 0 then
    return redis.call('SMEMBERS', groups)
  end
end
if n == 0 then
  return 0
end

local now = now_from(ARGV[1])
local ids = {}
for i = n + 4, #ARGV, 3 do
  ids[#ids + 1] = ARGV[i]
end
local ended = redis.call('ZRANGE', dedup, '-inf', num(now), 'BYSCORE', 'LIMIT', 0, 2 * #ids + 16)
call_chunked('ZREM', dedup, ended, 1, #ended)
local windows = get_chunked('ZMSCORE', dedup, ids)

-- Every event of the call shares the end of its window.
local ends = window > 0 and num(now + window)
local fresh, recorded = {}, {}
for i, id in ipairs(ids) do
  local open = windows[i] and tonumber(windows[i]) > now
  local at = n + 1 + 3 * i
  if not open and redis.call('HSETNX', msg, id, ARGV[at + 1]) == 1 then
    redis.call('HSET', refs, id, n)
    if ARGV[at + 2] ~= '' then
      redis.call('HSET', eventkeys, id, ARGV[at + 2])
    end
    fresh[#fresh + 1] = id
    if ends then
      recorded[#recorded + 1] = ends
      recorded[#recorded + 1] = id
    end
  end
end
call_chunked('ZADD', dedup, recorded, 1, #recorded)
if #fresh > 0 then
  for g = 1, n do
    local ready, marker = KEYS[4 + 2 * g], KEYS[5 + 2 * g]
    call_chunked('RPUSH', ready, fresh, 1, #fresh)
    wake(marker)
  end
end
return #fresh * n
