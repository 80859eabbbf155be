--[[ count_history: count what a rewind of one group would deliver now (a dry run).

Reads at most ARGV[4] entries of the history past the cursor ARGV[3] ('' to begin) and
changes nothing; the client calls again with the cursor returned until it is ''. An
entry counts when retention covers it now, when it was published at most ARGV[2]
seconds ago and when the group does not hold its id.

KEYS: 1 groups  2 retention  3 log  4 held  5 pins
ARGV: 1 group  2 history: 'inf' (all) or seconds  3 cursor  4 most entries to read
      5 now ('' = server TIME)
Returns: -1 if the group does not subscribe the topic, else {cursor ('' when done), count}
]]
--- @include "history"

local groups, retention, log, held, pins = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, history, cursor, most = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

if redis.call('SISMEMBER', groups, group) == 0 and redis.call('HEXISTS', pins, group) == 0 then
  return -1
end
local now = now_from(ARGV[5])
local rt = retention_of(retention)
local from = history ~= 'inf' and now - tonumber(history) or nil
local start = '-'
if cursor ~= '' then
  start = '(' .. cursor
elseif from then
  start = math.max(math.floor(from * 1000) - 1, 0) .. '-0'
end
local entries = redis.call('XRANGE', log, start, '+', 'COUNT', most)
local count = 0
for _, entry in ipairs(entries) do
  local f = entry_fields(entry)
  local t = tonumber(f.t)
  if (from == nil or t >= from) and not expired(rt, now, t, tonumber(f.p)) and redis.call('SISMEMBER', held, f.i) == 0 then
    count = count + 1
  end
end
local last = entries[#entries]
return {#entries < most and '' or last[1], count}
