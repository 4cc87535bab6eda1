-- Removes up to ARGV[2] ended sessions and returns their records. The script is atomic, so
-- when several gateways sweep, each ended session is returned (and audited) by exactly one.
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', ends_key, '-inf', int(now), 'LIMIT', 0, tonumber(ARGV[2]))) do
  local r = load(id)
  redis.call('ZREM', ends_key, id)
  if r then
    drop(r)
    append(out, r)
  end
end
return out
