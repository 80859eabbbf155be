--[[ copy_history: copy the next part of a topic's history into one group.

A copy in progress (`pins`, field: the group) was begun by subscribe (a new group from
history) or by rewind; either way the group is out of the topic's groups meanwhile,
gets events published since through the history, and joins the groups once the copy
reaches the end of the history. Each call reads at least ARGV[2] entries past the
copy's cursor, and twice as many as were appended since its previous call if that is
more (at most ten times ARGV[2]), so that a copy catches up with busy publishers. An entry is copied when it
was published at or after the copy's start time, when it was retained as the copy began
(or published since), and when the group does not hold its id (`held`); it joins the
back of the group's READY queue, behind its key's events in an ordered group. While a
copy is in progress, trimming leaves the entries past its cursor alone.

KEYS: 1 groups  2 ordered  3 log  4 refs  5 eventkeys  6 pins  7 seq  8 retention  9 ready
      10 marker  11 lanes  12 heads  13 held
ARGV: 1 group  2 entries to read (at least)
Returns: {1 once the copy is complete (or there was none) else 0, events copied}
]]
--- @include "history"
--- @include "lanes"
--- @include "wake"

local groups, ordered, log, refs, eventkeys, pins, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local retention, ready, marker, lanes, heads, held = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13]
local group, step = ARGV[1], tonumber(ARGV[2])

local raw = redis.call('HGET', pins, group)
if not raw then
  return {1, 0}
end
local pin = cjson.decode(raw)
local position = tonumber(redis.call('HGET', retention, 'position')) or 0
local most = math.min(math.max(step, 2 * (position - (pin.seen or pin.pos))), 10 * step)
pin.seen = position
local is_ordered = redis.call('SISMEMBER', ordered, group) == 1
local entries = redis.call('XRANGE', log, '(' .. pin.c, '+', 'COUNT', most)
local copied, complete = 0, #entries < most
local began, from = tonumber(pin.now), pin.from and tonumber(pin.from)
local rt = {age = pin.age, count = pin.count, position = pin.pos}
for _, entry in ipairs(entries) do
  pin.c = entry[1]
  local f = entry_fields(entry)
  local published, p, id = tonumber(f.t), tonumber(f.p), f.i
  local live = p > pin.pos  -- published since the copy began
  local wanted = (from == nil or published >= from) and (live or not expired(rt, began, published, p))
  if wanted and redis.call('SADD', held, id) == 1 then
    redis.call('HINCRBY', refs, id, 1)
    local key = is_ordered and redis.call('HGET', eventkeys, id)
    if key then
      join_key(ready, lanes, heads, key, redis.call('INCR', seq), id)
    else
      redis.call('RPUSH', ready, id)
    end
    copied = copied + 1
  end
end
if complete then
  redis.call('SADD', groups, group)
  redis.call('HDEL', pins, group)
else
  redis.call('HSET', pins, group, cjson.encode(pin))
end
if copied > 0 then
  wake(marker)
end
return {complete and 1 or 0, copied}
