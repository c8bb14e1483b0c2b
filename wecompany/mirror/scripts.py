"""
The few things the cluster must do atomically in Redis, as Lua scripts
(``EVAL``): a read and a write that no other node may come between.
"""

from __future__ import annotations

#: Add a session to its user's hash (KEYS[1]; field ARGV[1], TTL ARGV[2] s)
#: -> how many sessions the user has in the cluster now (1: just came online).
ADD_SESSION = """
redis.call('HSET', KEYS[1], ARGV[1], '1')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return redis.call('HLEN', KEYS[1])
"""

#: Remove a session from its user's hash -> how many are left (0: now offline).
REMOVE_SESSION = """
redis.call('HDEL', KEYS[1], ARGV[1])
return redis.call('HLEN', KEYS[1])
"""

#: Delete KEYS[1] if it still holds ARGV[1] (a lock or a claim of ours) -> 1, else 0.
DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: Take an attempt's slot on an address and a target, unless either is out of
#: attempts. KEYS: failures and attempts under way of the address, then of the
#: target; ARGV: the address's limit, the target's, how long an attempt under
#: way may hold its slot (s: a node that dies mid-attempt frees it then).
#: -> {0} taken; {1 or 2 (the address or the target), failures, ms until they are forgotten}.
RESERVE_ATTEMPT = """
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
for i = 1, 2 do
  local failures = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local pending = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  if failures + pending >= limits[i] then
    return {i, failures, redis.call('PTTL', KEYS[2 * i - 1])}
  end
end
for i = 1, 2 do
  redis.call('INCR', KEYS[2 * i])
  redis.call('EXPIRE', KEYS[2 * i], tonumber(ARGV[3]))
end
return {0, 0, 0}
"""

#: End an attempt RESERVE_ATTEMPT took (same KEYS). ARGV: 1 if it failed,
#: the window (s) a first failure starts, 1 to forgive the target's failures.
SETTLE_ATTEMPT = """
for i = 1, 2 do
  if tonumber(redis.call('DECR', KEYS[2 * i])) <= 0 then
    redis.call('DEL', KEYS[2 * i])
  end
end
if ARGV[1] == '1' then
  for i = 1, 2 do
    if tonumber(redis.call('INCR', KEYS[2 * i - 1])) == 1 then
      redis.call('EXPIRE', KEYS[2 * i - 1], tonumber(ARGV[2]))
    end
  end
end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[3])
end
return 0
"""

#: Is a key (an address) out of attempts? KEYS: its failures, its attempts
#: under way; ARGV: its limit. -> {0} or {1, failures, ms until forgotten}.
CHECK_ATTEMPTS = """
local failures = tonumber(redis.call('GET', KEYS[1]) or '0')
local pending = tonumber(redis.call('GET', KEYS[2]) or '0')
if failures + pending >= tonumber(ARGV[1]) then
  return {1, failures, redis.call('PTTL', KEYS[1])}
end
return {0, 0, 0}
"""

#: A request against a rate shared by every node (GCRA: one theoretical
#: arrival time per key). KEYS[1]: the key; ARGV: now (ms, the node's clock),
#: the interval between requests (ms), the burst's span (ms).
#: -> 0 allowed, else ms until the next request would be.
RATE = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local span = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
local later = tat + interval
if later - now > span then
  return math.ceil(later - now - span)
end
redis.call('SET', KEYS[1], tostring(later), 'PX', math.ceil(later - now))
return 0
"""

#: Hold KEYS[1] for owner ARGV[1] for ARGV[2] s: taken when free, refreshed
#: when already ours. -> 1, or 0 when another owner holds it.
CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return 1
"""
