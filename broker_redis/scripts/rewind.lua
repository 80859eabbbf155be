--[[ rewind: begin copying a topic's history into one of its groups again.

The history is trimmed first, a bounded part per call; a call that could not finish
trimming changes nothing else and says so, to be called again. Then the copy (see
copy_history) is set to end at the entry that is the newest now, replacing any rewind
of the group still in progress.

KEYS: 1 groups  2 retention  3 log  4 logged  5 refs  6 msg  7 eventkeys  8 pins
ARGV: 1 group  2 history: 'inf' (all) or seconds  3 now ('' = server TIME)
      4 most history entries to trim
Returns: -1 if the group does not subscribe the topic, 0 if there is nothing to copy,
         2 if a copy is to be run, 3 to call again
]]
--- @include "history"

local groups, pins = KEYS[1], KEYS[8]
local t = {retention = KEYS[2], log = KEYS[3], logged = KEYS[4], refs = KEYS[5], msg = KEYS[6], eventkeys = KEYS[7], pins = pins}
local group, history = ARGV[1], ARGV[2]

if redis.call('SISMEMBER', groups, group) == 0 then
  return -1
end
local now = now_from(ARGV[3])
local rt = retention_of(t.retention)
if not trim_log(t, rt, now, tonumber(ARGV[4])) then
  return 3
end
local newest = redis.call('XREVRANGE', t.log, '+', '-', 'COUNT', 1)[1]
if not retains(rt) or not newest then
  return 0
end
local pin = {c = '0-0', now = now, pos = rt.position, age = rt.age, count = rt.count, upto = newest[1]}
if history ~= 'inf' then
  pin.from = now - tonumber(history)
  pin.c = math.max(math.floor(pin.from * 1000) - 1, 0) .. '-0'
end
redis.call('HSET', pins, group, cjson.encode(pin))
return 2
