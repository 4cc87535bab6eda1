-- One op on one bucket. ARGV: prefix, bucket, op (take|adjust|peek), capacity, per_second,
-- amount. Returns {allowed, level before the op (refilled), now}.
local allowed, level = bucket_op(ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
return {allowed, level_of(level), int(now)}
