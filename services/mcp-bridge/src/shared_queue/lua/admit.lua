-- An mcp-bridge read (or reclaimed) a queue entry for one of its agents: may it hand it out?
-- KEYS: request hash, requests stream, parts stream
-- ARGV: entry id, group, consumer, handout bound, ended keep ms, channel, request id,
--       result frame if its answer had started elsewhere, result frame if handed out too often,
--       'take' (for a waiting poll) or 'sweep' (a lapsed lease found with no poll waiting)
local st = redis.call('HMGET', KEYS[1], 'entry', 'ended', 'chunks')
local function finish(why, frame)
  redis.call('HSET', KEYS[1], 'ended', why)
  redis.call('XADD', KEYS[3], '*', 'f', frame)
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
if not st[1] or st[1] ~= ARGV[1] or st[2] then
  -- Ended, expired, or its id was reused: the entry is stale.
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[2], ARGV[1])
  return {'stale'}
end
if tonumber(st[3] or '0') > 0 then
  -- Part of the answer reached the client from an agent that stopped: never answer twice.
  finish('abandoned', ARGV[8])
  return {'abandoned'}
end
if ARGV[10] == 'sweep' then
  return {'unstarted'}
end
local n = redis.call('HINCRBY', KEYS[1], 'handouts', 1)
if n > tonumber(ARGV[4]) then
  finish('failed', ARGV[9])
  return {'too_often', tostring(n)}
end
redis.call('HSET', KEYS[1], 'holder', ARGV[3])
return {'ok', tostring(n)}
