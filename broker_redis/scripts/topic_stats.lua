--[[ topic_stats: a topic's retention and the history it retains, trimmed first.

The trimming is bounded per call; a call that could not finish says so, to be called
again.

KEYS: 1 retention  2 log  3 logged  4 refs  5 msg  6 eventkeys  7 pins  8 published
ARGV: 1 now ('' = server TIME)  2 most history entries to trim
Returns: {max_age or '', max_events or '', retained, age of the oldest or '', published
         so far} once
         trimmed, else 3 (to call again)
]]
--- @include "history"

local retention, log, logged, refs, msg, eventkeys, pins, published = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local t = {retention = retention, log = log, logged = logged, refs = refs, msg = msg, eventkeys = eventkeys, pins = pins}
local now = now_from(ARGV[1])
local rt = retention_of(retention)
if not trim_log(t, rt, now, tonumber(ARGV[2])) then
  return 3
end
local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
local age = oldest and num(now - tonumber(entry_fields(oldest).t)) or ''
local limits = redis.call('HMGET', retention, 'max_age', 'max_events')
return {limits[1] or '', limits[2] or '', redis.call('XLEN', log), age, tonumber(redis.call('GET', published) or 0)}
