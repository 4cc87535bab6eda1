-- bridge-agent carries on with a request on a connection to this mcp-bridge.
-- KEYS: request hash
-- ARGV: agent_id, follower
local st = redis.call('HMGET', KEYS[1], 'entry', 'agent_id')
if not st[1] then
  return 'unknown'
end
if st[2] ~= ARGV[1] then
  return 'other_agent'
end
redis.call('HSET', KEYS[1], 'follower', ARGV[2])
return 'ok'
