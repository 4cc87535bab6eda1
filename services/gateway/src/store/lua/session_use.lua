-- The live session whose token has this digest, marked as used now: its end moves to
-- min(expires, now + idle) and the token key's Redis expiry with it. ARGV: prefix, digest.
local id = redis.call('GET', token_key(ARGV[2]))
if not id then return false end
local r = load(id)
if not r or end_of(r) <= now then return false end
r[7] = int(now)
local ending = end_of(r)
redis.call('HSET', session_key(id), 'last_used', r[7])
redis.call('PEXPIREAT', session_key(id), int(ending + GRACE))
redis.call('PEXPIRE', token_key(ARGV[2]), int(math.max(ending - now, 1)))
redis.call('ZADD', ends_key, int(ending), id)
return r
