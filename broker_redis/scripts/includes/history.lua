--- @include "now"
--- @include "chunks"
--- @include "refs"

-- A topic with retention appends each published event to its history, `log`, a stream
-- whose entries hold the event id (i), when it was published (t, seconds) and its
-- position (p: 1, 2, ... for the topic, kept in `retention` with the limits). The history
-- holds a reference to the body like a group does, and `logged` maps an id to its entry.
-- Retention only ever expires a prefix of the history; the trimming here frees it a
-- bounded number at a time, and nothing reads an entry it has yet to free.

-- The topic's retention: {age = seconds or nil, count = events or nil, position, last_ms}.
local function retention_of(retention)
  local r = redis.call('HMGET', retention, 'max_age', 'max_events', 'position', 'last_ms')
  return {age = tonumber(r[1]), count = tonumber(r[2]), position = tonumber(r[3]) or 0, last_ms = tonumber(r[4]) or 0}
end

local function retains(rt)
  return rt.age ~= nil or rt.count ~= nil
end

-- Whether retention `rt` no longer covers the entry published at `t` at position `p`.
local function expired(rt, now, t, p)
  return not retains(rt) or (rt.age ~= nil and now >= t + rt.age) or (rt.count ~= nil and p <= rt.position - rt.count)
end

-- An entry's fields as a table.
local function entry_fields(entry)
  local f, out = entry[2], {}
  for i = 1, #f, 2 do
    out[f[i]] = f[i + 1]
  end
  return out
end

-- Stream ids "ms-seq" compared as numbers: whether `a` comes after `b`.
local function after(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  a_ms, b_ms = tonumber(a_ms), tonumber(b_ms)
  return a_ms > b_ms or (a_ms == b_ms and tonumber(a_seq) > tonumber(b_seq))
end

-- A new history copy's pin (see copy_history): from `now`, of the events at most
-- `history` seconds old ('inf': all), with the retention `rt` it begins with. Times are
-- kept as strings: cjson would round them to 14 digits.
local function new_pin(rt, now, history)
  local pin = {c = '0-0', now = num(now), pos = rt.position, age = rt.age, count = rt.count}
  if history ~= 'inf' then
    local from = now - tonumber(history)
    pin.from = num(from)
    pin.c = math.max(math.floor(from * 1000) - 1, 0) .. '-0'
  end
  return pin
end

-- Read once per script call: no script moves a pin and then trims or publishes.
local pin_memo = nil

-- The earliest entry some history copy in progress has yet to read past (its cursor),
-- or nil: trimming stops there, so that a copy gets what was retained when it began.
local function pinned_at(pins)
  if pin_memo then
    return pin_memo[1]
  end
  local lowest = nil
  for _, raw in ipairs(redis.call('HVALS', pins)) do
    local cursor = cjson.decode(raw).c
    if lowest == nil or not after(cursor, lowest) then
      lowest = cursor
    end
  end
  pin_memo = {lowest}
  return lowest
end

-- Free up to `budget` expired entries from the front of the history. Returns true once
-- no expired entry is left there (or the rest is pinned), false if the budget ran out.
-- `t` holds the keys: retention, log, logged, refs, msg, eventkeys, pins.
local function trim_log(t, rt, now, budget)
  local pin = pinned_at(t.pins)
  while budget > 0 do
    local batch = redis.call('XRANGE', t.log, '-', '+', 'COUNT', math.min(budget, CHUNK))
    local gone, ids = {}, {}
    for _, entry in ipairs(batch) do
      local f = entry_fields(entry)
      if (pin ~= nil and after(entry[1], pin)) or not expired(rt, now, tonumber(f.t), tonumber(f.p)) then
        break
      end
      gone[#gone + 1] = entry[1]
      -- Only the entry `logged` names holds the body's reference; a stray entry (written
      -- by hand, or by a version that logged ids twice) must not free another's body.
      if redis.call('HGET', t.logged, f.i) == entry[1] then
        ids[#ids + 1] = f.i
      end
    end
    call_chunked('XDEL', t.log, gone, 1, #gone)
    call_chunked('HDEL', t.logged, ids, 1, #ids)
    for _, id in ipairs(ids) do
      drop_ref(t.msg, t.refs, t.eventkeys, id)
    end
    if #gone > 0 and redis.call('XLEN', t.log) == 0 then
      redis.call('DEL', t.log)  -- an empty stream stays a key; last_ms keeps its clock
    end
    if #gone < #batch or #batch < math.min(budget, CHUNK) then
      return true
    end
    budget = budget - #gone
  end
  return false
end

-- Append a published event to the history at `now`: the caller counted the history's
-- reference to the body in `refs`. Stream ids take milliseconds that never go back.
local function log_event(t, rt, now, id)
  rt.position = rt.position + 1
  local ms = math.max(math.floor(now * 1000), rt.last_ms)
  rt.last_ms = ms
  local entry = redis.call('XADD', t.log, ms .. '-*', 'i', id, 't', num(now), 'p', rt.position)
  redis.call('HSET', t.logged, id, entry)
end

-- Write back what log_event moved on.
local function save_position(t, rt)
  redis.call('HSET', t.retention, 'position', rt.position, 'last_ms', rt.last_ms)
end

-- Whether the topic holds `id` only through a history entry retention no longer covers
-- (trimming has yet to reach it): then that entry is freed now, out of order, and the
-- id may be published anew.
local function reclaim(t, rt, now, id)
  if tonumber(redis.call('HGET', t.refs, id) or 0) ~= 1 then
    return false
  end
  local entry_id = redis.call('HGET', t.logged, id)
  if not entry_id then
    return false
  end
  local pin = pinned_at(t.pins)
  if pin ~= nil and after(entry_id, pin) then
    return false  -- a copy in progress has yet to read it: it still holds the id
  end
  local entry = redis.call('XRANGE', t.log, entry_id, entry_id)[1]
  local f = entry and entry_fields(entry)
  if f and not expired(rt, now, tonumber(f.t), tonumber(f.p)) then
    return false
  end
  redis.call('XDEL', t.log, entry_id)
  redis.call('HDEL', t.logged, id)
  drop_ref(t.msg, t.refs, t.eventkeys, id)
  return true
end
