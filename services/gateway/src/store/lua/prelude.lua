-- Prepended to every script. ARGV[1] is the key prefix. The clock is Redis's own, so gateways
-- on different machines never disagree about time; numbers go out as strings because Redis
-- truncates Lua numbers in replies.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = ARGV[1]
local function int(n) return string.format('%.0f', n) end
-- Ended sessions' records stay this long (ms) so that a sweeper can audit them; their tokens
-- stop working at the end itself.
local GRACE = 300000
local ends_key = p .. 'session-ends'
local function session_key(id) return p .. 'session:' .. id end
local function token_key(digest) return p .. 'token:' .. digest end
-- A session record: id, digest, owner, created, expires, idle, last_used (ms).
local function load(id)
  local f = redis.call('HMGET', session_key(id), 'digest', 'owner', 'created', 'expires', 'idle', 'last_used')
  if not f[1] then return nil end
  return {id, f[1], f[2], f[3], f[4], f[5], f[6]}
end
local function end_of(r) return math.min(tonumber(r[5]), tonumber(r[7]) + tonumber(r[6])) end
local function drop(r)
  redis.call('DEL', session_key(r[1]), token_key(r[2]))
  redis.call('ZREM', ends_key, r[1])
end
local function append(out, r) for i = 1, 7 do out[#out + 1] = r[i] end end
