-- The current time in seconds. The client passes its own clock in `arg` only when a test
-- drives time; otherwise every instance shares the server's clock (never the clients').
local function now_from(arg)
  if arg ~= '' then
    return tonumber(arg)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Times leave the script as strings: Redis would truncate a Lua number to an integer.
local function num(x)
  return string.format('%.17g', x)
end
