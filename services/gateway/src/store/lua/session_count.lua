-- How many sessions are live. ARGV: prefix.
return redis.call('ZCOUNT', ends_key, '(' .. int(now), '+inf')
