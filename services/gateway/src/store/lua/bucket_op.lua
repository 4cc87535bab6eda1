-- Prepended to the bucket scripts. One check-and-consume on a token bucket, the arithmetic of
-- ratelimit.rs step for step (the same doubles in the same order): op is take, adjust or peek.
-- Returns allowed (1 or 0) and the level before the op (refilled to now).
local function bucket_op(name, op, cap, rate, amount)
  local key = p .. 'bucket:' .. name
  local level = cap
  local s = redis.call('HMGET', key, 'level', 'at')
  if s[1] then
    local elapsed = math.max(now - tonumber(s[2]), 0) / 1000
    level = math.min(tonumber(s[1]) + elapsed * rate, cap)
  end
  local allowed, after = 1, level
  if op == 'take' then
    if level >= amount then after = level - amount else allowed = 0 end
  elseif op == 'adjust' then
    -- Saturates at minus the capacity, as ratelimit.rs does: no charge leaves a longer debt.
    after = math.max(math.min(level + amount, cap), -cap)
  end
  if op ~= 'peek' then
    if after >= cap then
      -- A full bucket carries no information: a missing one reads as full.
      redis.call('DEL', key)
    else
      redis.call('HSET', key, 'level', string.format('%.17g', after), 'at', int(now))
      -- Gone once it would have refilled anyway, so idle clients cost no memory.
      redis.call('PEXPIRE', key, int(math.ceil((cap - after) / rate * 1000) + 1000))
    end
  end
  return allowed, level
end
local function level_of(level) return string.format('%.17g', level) end
