-- Admission's last step: the request's tokens taken from the token bucket; when they do not
-- fit, the request taken in the first step is given back, in the same step. ARGV: prefix, token
-- bucket, its capacity, its per_second, the cost, request bucket, its capacity, its per_second.
-- Returns {allowed, token level before, now}.
local allowed, tokens = bucket_op(ARGV[2], 'take', tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
if allowed == 0 then
  bucket_op(ARGV[6], 'adjust', tonumber(ARGV[7]), tonumber(ARGV[8]), 1)
end
return {allowed, level_of(tokens), int(now)}
