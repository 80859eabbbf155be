--[[ rewind: begin copying a topic's history into one of its groups again.

The history is trimmed first, a bounded part per call; a call that could not finish
trimming changes nothing else and says so, to be called again. Then the group leaves
the topic's groups and a copy (see copy_history) begins, as for a new group from
history: events published meanwhile reach the group through the history, behind the
rewound ones, and it joins the groups again when the copy has caught up. A rewind or a
copy of the group still in progress is replaced (what it copied is held: not twice).

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

if redis.call('SISMEMBER', groups, group) == 0 and redis.call('HEXISTS', pins, group) == 0 then
  return -1
end
local now = now_from(ARGV[3])
local rt = retention_of(t.retention)
if not trim_log(t, rt, now, tonumber(ARGV[4])) then
  return 3
end
if not retains(rt) or redis.call('EXISTS', t.log) == 0 then
  return 0
end
local pin = new_pin(rt, now, history)
redis.call('HSET', pins, group, cjson.encode(pin))
redis.call('SREM', groups, group)
return 2
