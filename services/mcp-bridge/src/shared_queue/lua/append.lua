-- A chunk of the answer, from the mcp-bridge whose agent holds the request.
-- KEYS: request hash, parts stream, requests stream
-- ARGV: frame, consumer, group, parts bound, ttl ms
local st = redis.call('HMGET', KEYS[1], 'entry', 'ended', 'holder')
if not st[1] or st[2] or st[3] ~= ARGV[2] then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'f', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'chunks', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
-- A sign of life renews the lease: the pending entry's idle time starts again.
redis.call('XCLAIM', KEYS[3], ARGV[3], ARGV[2], 0, st[1], 'JUSTID')
return 1
