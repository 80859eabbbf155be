--[[ unsubscribe: end a group's subscription to one topic and drop its copy of every event.

Every event the group holds, READY, LEASED, DELAYED, DEAD or waiting in its lanes, is
released as if the group were done with it: a body neither another group nor the
topic's history holds is freed (with its ordering key), and the group's keys are
deleted, so that nothing of it is left. A group still copying the topic's history (it
subscribed from history, or is being rewound) counts as subscribed: its copy ends, and
its pin no longer holds trimming back. Other groups are untouched. The registry of
topics is outside the topic's slot and keeps the topic's name, which topics() leaves out
while the topic has no groups.

The first call ends the subscription at once; the events are released at most
ARGV[2] per call (a group may hold millions), and the client calls again while some are
left. A call on a group neither subscribed nor holding anything changes nothing
(idempotent); one that finds what a cut-short unsubscribe left goes on releasing it.

KEYS: 1 msg  2 refs  3 groups  4 eventkeys  5 ordered  6 pins  7 ready  8 leased
      9 tokens  10 attempts  11 errors  12 delayed  13 dead  14 deadinfo  15 marker
      16 suspects  17 heads  18 lanes  19 held  20 acked
ARGV: 1 group  2 most events to release in this call
Returns: {1 if the group was subscribed (or left events to release) else 0,
          1 once nothing of it is left else 0 (call again)}
]]
--- @include "refs"

local msg, refs, groups, eventkeys, ordered, pins = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local ready, leased, tokens, attempts, errors = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local delayed, dead, deadinfo, marker, suspects = KEYS[12], KEYS[13], KEYS[14], KEYS[15], KEYS[16]
local heads, lanes, held, acked = KEYS[17], KEYS[18], KEYS[19], KEYS[20]
local group, budget = ARGV[1], tonumber(ARGV[2])

local was_member = redis.call('SREM', groups, group) == 1
local was_copying = redis.call('HDEL', pins, group) == 1
redis.call('SREM', ordered, group)
local left = redis.call('EXISTS', ready, dead, leased, delayed, lanes, acked) > 0
if not (was_member or was_copying or left) then
  return {0, 1}
end

-- Each event is in exactly one of these (invariant 1): pop a bounded batch of ids.
local ids = {}
for _, list in ipairs({ready, dead}) do
  if #ids < budget then
    for _, id in ipairs(redis.call('LPOP', list, budget - #ids) or {}) do
      ids[#ids + 1] = id
    end
  end
end
for _, zset in ipairs({leased, delayed}) do
  if #ids < budget then
    local popped = redis.call('ZPOPMIN', zset, budget - #ids)
    for i = 1, #popped, 2 do
      ids[#ids + 1] = popped[i]
    end
  end
end
if #ids < budget then
  -- Lane members are `<key> NUL <position> NUL <id>` (includes/lanes.lua).
  local popped = redis.call('ZPOPMIN', lanes, budget - #ids)
  for i = 1, #popped, 2 do
    local member = popped[i]
    local after_key = string.find(member, '\0', 1, true)
    ids[#ids + 1] = string.sub(member, string.find(member, '\0', after_key + 1, true) + 1)
  end
end
drop_refs(msg, refs, eventkeys, ids)

if redis.call('EXISTS', ready, dead, leased, delayed, lanes) > 0 then
  return {1, 0}
end
-- UNLINK: what is left of the group's hashes is freed outside the script's time.
redis.call('UNLINK', tokens, attempts, errors, deadinfo, marker, suspects, heads, held, acked)
return {1, 1}
