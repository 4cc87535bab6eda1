-- A request from bridge-agent joins the queue.
-- KEYS: request hash, requests stream, parts stream
-- ARGV: id, invoke (JSON), agent_id, follower, result_after_chunks (0/1), queue bound, ttl ms,
--       when it arrived (Unix ms, for the time it waits)
if redis.call('HEXISTS', KEYS[1], 'entry') == 1 and redis.call('HEXISTS', KEYS[1], 'ended') == 0 then
  return {'duplicate'}
end
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[6]) then
  return {'full'}
end
-- A reused id starts afresh.
redis.call('DEL', KEYS[1], KEYS[3])
local entry = redis.call('XADD', KEYS[2], '*', 'id', ARGV[1], 'invoke', ARGV[2], 'rac', ARGV[5],
  'at', ARGV[8])
redis.call('HSET', KEYS[1], 'entry', entry, 'agent_id', ARGV[3], 'follower', ARGV[4],
  'chunks', 0, 'handouts', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return {'ok', entry}
