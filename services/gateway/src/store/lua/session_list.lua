-- Every live session, records flattened. ARGV: prefix.
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', ends_key, '(' .. int(now), '+inf')) do
  local r = load(id)
  if r then append(out, r) end
end
return out
