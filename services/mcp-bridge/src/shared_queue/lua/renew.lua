-- Renews (or, with an idle time, gives back) the entries this mcp-bridge still holds.
-- KEYS: requests stream
-- ARGV: group, consumer, idle ms to set ('0': renew), entry ids...
local n = 0
for i = 4, #ARGV do
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #mine > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    n = n + 1
  end
end
return n
