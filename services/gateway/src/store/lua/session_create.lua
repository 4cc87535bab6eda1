-- Adds a session unless `max` live ones exist (live: its end is after now).
-- ARGV: prefix, id, digest, owner, ttl_ms, idle_ms, max. Returns {1, end, now} or
-- {0, earliest end, now}.
local id, digest, owner = ARGV[2], ARGV[3], ARGV[4]
local ttl, idle, max = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local live = redis.call('ZCOUNT', ends_key, '(' .. int(now), '+inf')
if live >= max then
  local first = redis.call('ZRANGEBYSCORE', ends_key, '(' .. int(now), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return {0, first[2] or int(now + 1000), int(now)}
end
local expires = now + ttl
local ending = math.min(expires, now + idle)
redis.call('HSET', session_key(id), 'digest', digest, 'owner', owner, 'created', int(now),
  'expires', int(expires), 'idle', int(idle), 'last_used', int(now))
redis.call('PEXPIREAT', session_key(id), int(ending + GRACE))
redis.call('SET', token_key(digest), id, 'PX', int(math.max(ending - now, 1)))
redis.call('ZADD', ends_key, int(ending), id)
return {1, int(ending), int(now)}
