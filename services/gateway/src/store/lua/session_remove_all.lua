-- Ends every session, returning their records flattened. ARGV: prefix.
local out = {}
for _, id in ipairs(redis.call('ZRANGE', ends_key, 0, -1)) do
  local r = load(id)
  if r then
    drop(r)
    append(out, r)
  end
end
redis.call('DEL', ends_key)
return out
