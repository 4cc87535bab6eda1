-- A request ends, once: its result (if any) is the last frame of its parts stream.
-- KEYS: request hash, parts stream, requests stream
-- ARGV: why, result frame or '', group, holder required or '', follower required or '',
--       ended keep ms, channel, request id
local st = redis.call('HMGET', KEYS[1], 'entry', 'ended', 'holder', 'follower')
if not st[1] or st[2] then
  return 0
end
if ARGV[4] ~= '' and st[3] ~= ARGV[4] then
  return 0
end
if ARGV[5] ~= '' and st[4] ~= ARGV[5] then
  return 0
end
redis.call('HSET', KEYS[1], 'ended', ARGV[1])
if ARGV[2] ~= '' then
  redis.call('XADD', KEYS[2], '*', 'f', ARGV[2])
end
redis.call('XACK', KEYS[3], ARGV[3], st[1])
redis.call('XDEL', KEYS[3], st[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 1
