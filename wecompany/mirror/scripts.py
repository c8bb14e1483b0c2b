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
