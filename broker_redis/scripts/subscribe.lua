--[[ subscribe: make a group a durable subscriber of one topic, keeping its options.

A new subscription is created with the options given (ordered or not). An existing one
keeps the options it was created with: asked for without options it is left alone, and
asked for with other options it is left alone too, and the script says so, so that the
client refuses the call. The registry of topics is written by the client, outside the
topic's slot.

A new subscription with a history (ARGV[3]) on a topic that retains events begins a
copy of the history instead (see copy_history): the group joins the topic's groups when
the copy completes. The history is trimmed first, a bounded part per call; a call that
could not finish trimming changes nothing else and says so, to be called again. A copy
already in progress for the group (a crash cut it short) is reported, to be completed.
A call for another partition count than the unit's changes nothing (layout.lua).

KEYS: 1 groups  2 ordered  3 retention  4 log  5 logged  6 refs  7 msg  8 eventkeys
      9 pins  10 layout
ARGV: 1 group  2 '1' (ordered), '0' (not) or '' (keep the stored options)
      3 history: '' (none), 'inf' (all) or seconds  4 now ('' = server TIME)
      5 most history entries to trim  6 partition count
Returns: {outcome, stored ordered (1 or 0)}: outcome 1 if created, 0 if it existed, -1 if
         the options differ, 2 if a history copy is to be run, 3 to call again; or
         {'~layout', the unit's count} when the partition count differs
]]
--- @include "history"
--- @include "layout"

local groups, ordered, pins = KEYS[1], KEYS[2], KEYS[9]
local t = {retention = KEYS[3], log = KEYS[4], logged = KEYS[5], refs = KEYS[6], msg = KEYS[7], eventkeys = KEYS[8], pins = pins}
local group, asked, history = ARGV[1], ARGV[2], ARGV[3]

local layout = KEYS[10]
local moved = layout_moved(layout, ARGV[6])
if moved then
  return moved
end

local exists = redis.call('SISMEMBER', groups, group) == 1
local copying = redis.call('HEXISTS', pins, group) == 1
if exists or copying then
  local stored = redis.call('SISMEMBER', ordered, group)
  if asked ~= '' and tonumber(asked) ~= stored then
    return {-1, stored}
  end
  return {copying and 2 or 0, stored}
end

local stored = asked == '1' and 1 or 0
if history ~= '' and redis.call('EXISTS', t.log) == 1 then
  local now = now_from(ARGV[4])
  local rt = retention_of(t.retention)
  if not trim_log(t, rt, now, tonumber(ARGV[5])) then
    return {3, stored}
  end
  if retains(rt) and redis.call('EXISTS', t.log) == 1 then
    local pin = new_pin(rt, now, history)
    redis.call('HSET', pins, group, cjson.encode(pin))
    if stored == 1 then
      redis.call('SADD', ordered, group)
    end
    return {2, stored}
  end
end
redis.call('SADD', groups, group)
if stored == 1 then
  redis.call('SADD', ordered, group)
end
return {1, stored}
