-- The live session with this id, unchanged. ARGV: prefix, id.
local r = load(ARGV[2])
if not r or end_of(r) <= now then return false end
return r
