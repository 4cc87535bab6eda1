-- Ends the session with this id (live or ended but not yet swept). ARGV: prefix, id.
local r = load(ARGV[2])
if not r then
  redis.call('ZREM', ends_key, ARGV[2])
  return false
end
drop(r)
return r
