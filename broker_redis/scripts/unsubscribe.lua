--[[ unsubscribe: end a group's subscription to one topic and drop its copy of every event.

Every event the group holds, READY, LEASED, DELAYED, DEAD or waiting in its lanes, is
released as if the group were done with it: a body neither another group nor the
topic's history holds is freed (with its ordering key), and the group's keys are
deleted, so that nothing of it is left. A group still copying the topic's history (it
subscribed from history, or is being rewound) counts as subscribed: its copy ends, and
its pin no longer holds trimming back. Other groups are untouched. A group that is not
subscribed is left alone (idempotent). The registry of topics is outside the topic's
slot and keeps the topic's name, which topics() leaves out while the topic has no groups.

KEYS: 1 msg  2 refs  3 groups  4 eventkeys  5 ordered  6 pins  7 ready  8 leased
      9 tokens  10 attempts  11 errors  12 delayed  13 dead  14 deadinfo  15 marker
      16 suspects  17 heads  18 lanes  19 held
ARGV: 1 group
Returns: 1 if the group was subscribed, 0 if not
]]
--- @include "refs"

local msg, refs, groups, eventkeys, ordered, pins = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local ready, leased, tokens, attempts, errors = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local delayed, dead, deadinfo, marker, suspects = KEYS[12], KEYS[13], KEYS[14], KEYS[15], KEYS[16]
local heads, lanes, held = KEYS[17], KEYS[18], KEYS[19]
local group = ARGV[1]

local was_member = redis.call('SREM', groups, group) == 1
local was_copying = redis.call('HDEL', pins, group) == 1
if not (was_member or was_copying) then
  return 0
end
redis.call('SREM', ordered, group)

-- drop_refs takes one count per id: collect each held id once.
local ids, seen = {}, {}
local function hold(id)
  if not seen[id] then
    seen[id] = true
    ids[#ids + 1] = id
  end
end
for _, list in ipairs({ready, dead}) do
  local length = redis.call('LLEN', list)
  for first = 0, length - 1, CHUNK do
    for _, id in ipairs(redis.call('LRANGE', list, first, first + CHUNK - 1)) do
      hold(id)
    end
  end
end
for _, zset in ipairs({leased, delayed}) do
  local length = redis.call('ZCARD', zset)
  for first = 0, length - 1, CHUNK do
    for _, id in ipairs(redis.call('ZRANGE', zset, first, first + CHUNK - 1)) do
      hold(id)
    end
  end
end
-- Lane members are `<key> NUL <position> NUL <id>` (includes/lanes.lua).
local waiting = redis.call('ZCARD', lanes)
for first = 0, waiting - 1, CHUNK do
  for _, member in ipairs(redis.call('ZRANGE', lanes, first, first + CHUNK - 1)) do
    local after_key = string.find(member, '\0', 1, true)
    hold(string.sub(member, string.find(member, '\0', after_key + 1, true) + 1))
  end
end

drop_refs(msg, refs, eventkeys, ids)
redis.call('DEL', ready, leased, tokens, attempts, errors, delayed, dead, deadinfo, marker, suspects, heads, lanes, held)
return 1
