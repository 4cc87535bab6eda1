-- Admission's first step: one request taken from the request bucket and the token bucket looked
-- at, in one step. ARGV: prefix, request bucket, its capacity, its per_second, token bucket, its
-- capacity, its per_second. Returns {allowed, request level before, token level, now}.
local allowed, requests = bucket_op(ARGV[2], 'take', tonumber(ARGV[3]), tonumber(ARGV[4]), 1)
local _, tokens = bucket_op(ARGV[5], 'peek', tonumber(ARGV[6]), tonumber(ARGV[7]), 0)
return {allowed, level_of(requests), level_of(tokens), int(now)}
