--[[ seal: close one unit of a topic's partition layout, for a change of the count.

A change of a topic's partition count (configure_topic) seals every unit of the layout
it leaves, each with this script: atomically, unless the unit holds an event, it marks
the unit's layout key with the change (ARGV[4], '<N>><M>'), so that every publish, claim
and subscribe built for the old count is refused from then on (layout.lua), and answers
the unit's retention (which a change that does not state one keeps) and ordered groups. A unit holds an event while a group holds one in any state
(READY, LEASED, DELAYED, DEAD or waiting in its lanes), its history retains one (after
trimming, a bounded part per call), a history copy is in progress, or it stores a body.
A unit sealed already (a change cut short) is sealed again with the seal given.

The client passes the groups it believes are subscribed (as to publish), for their keys;
if the set differs, nothing changes and the script answers with the real set.

KEYS: 1 layout  2 groups  3 ordered  4 retention  5 log  6 logged  7 refs  8 msg
      9 eventkeys  10 pins
      then per group g = 1..n: 6+5g ready  7+5g leased  8+5g delayed  9+5g dead  10+5g lanes
ARGV: 1 now ('' = server TIME)  2 most history entries to trim  3 the unit's count
      4 the seal ('<N>><M>')  5 n, 6..n+5 the group names
Returns: {'sealed', max_age or '', max_events or '', the ordered groups...} once sealed; {'held', bodies stored, entries
         retained, copies in progress, then per group the events it holds} when the unit
         holds an event (nothing changed); {'groups', the subscribed groups...} when they
         differ from those passed; {'again'} when trimming is not done (call again);
         {'~layout', stored} when the unit has another count and no seal
]]
--- @include "history"
--- @include "layout"

local layout, groups, ordered, pins = KEYS[1], KEYS[2], KEYS[3], KEYS[10]
local t = {retention = KEYS[4], log = KEYS[5], logged = KEYS[6], refs = KEYS[7], msg = KEYS[8], eventkeys = KEYS[9], pins = pins}
local n = tonumber(ARGV[5])

local stored = redis.call('GET', layout)
if not (stored and string.find(stored, '>', 1, true)) then
  local moved = layout_moved(layout, ARGV[3])
  if moved then
    return moved
  end
end
local members = redis.call('SMEMBERS', groups)
local differ = #members ~= n
for g = 1, n do
  differ = differ or redis.call('SISMEMBER', groups, ARGV[5 + g]) == 0
end
if differ then
  table.insert(members, 1, 'groups')
  return members
end
if not trim_log(t, retention_of(t.retention), now_from(ARGV[1]), tonumber(ARGV[2])) then
  return {'again'}
end
local held, holds = {}, false
for g = 1, n do
  local ready, leased, delayed, dead, lanes = KEYS[6 + 5 * g], KEYS[7 + 5 * g], KEYS[8 + 5 * g], KEYS[9 + 5 * g], KEYS[10 + 5 * g]
  held[g] = redis.call('LLEN', ready) + redis.call('ZCARD', leased) + redis.call('ZCARD', delayed)
    + redis.call('LLEN', dead) + redis.call('ZCARD', lanes)
  holds = holds or held[g] > 0
end
local bodies, retained, copies = redis.call('HLEN', t.msg), redis.call('XLEN', t.log), redis.call('HLEN', pins)
if holds or bodies > 0 or retained > 0 or copies > 0 then
  local out = {'held', bodies, retained, copies}
  for g = 1, n do
    out[#out + 1] = held[g]
  end
  return out
end
redis.call('SET', layout, ARGV[4])
local limits = redis.call('HMGET', t.retention, 'max_age', 'max_events')
local out = {'sealed', limits[1] or '', limits[2] or ''}
for _, group in ipairs(redis.call('SMEMBERS', ordered)) do
  out[#out + 1] = group
end
return out
