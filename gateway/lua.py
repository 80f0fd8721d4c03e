"""Lua helpers shared by the binding and credit scripts.

Every script gets the user's key base (``{p}:gw:{t/u}``) as ARGV[1] and
builds that user's other key names from it; they all carry the same hash tag,
so the script stays on one slot. KEYS[1] names a key of that slot for
routing.
"""

from __future__ import annotations

# retire: a binding leaves the live states (pending or active) for good (and
# drops any code check in flight: ``pk``/``ph`` and the ``bchk`` marker).
# sweep: pending-code bindings whose code expired become FAILED, so they stop
# counting against the per-user limit and holding the card. attempts_left: a
# binding's code attempts not yet used (never below 0). expired: see there.
PRELUDE = """
local base = ARGV[1]
local now = tonumber(ARGV[2])
local function bkey(bid) return base .. ':b:' .. bid end
local function retire(bid, state, reason)
  local k = bkey(bid)
  local tok = redis.call('HGET', k, 'tok')
  redis.call('HSET', k, 'state', state, 'mtime', now)
  if reason then redis.call('HSET', k, 'fail', reason) end
  redis.call('HDEL', k, 'pk', 'ph')
  redis.call('DEL', base .. ':bchk:' .. bid)
  redis.call('SREM', base .. ':blive', bid)
  local ptr = base .. ':bcard:' .. tok
  if redis.call('GET', ptr) == bid then redis.call('DEL', ptr) end
end
local function attempts_left(k)
  local left = tonumber(redis.call('HGET', k, 'max')) - tonumber(redis.call('HGET', k, 'att'))
  return math.max(left, 0)
end
local function code_expired(k)
  return redis.call('HGET', k, 'state') == 'PENDING_CODE'
    and tonumber(redis.call('HGET', k, 'cexp')) <= now
end
-- The binding's code has expired, now (it is retired here) or before (it
-- failed CODE_EXPIRED already): every code answer from then on is EXPIRED.
local function expired(bid)
  local k = bkey(bid)
  if code_expired(k) then retire(bid, 'FAILED', 'CODE_EXPIRED') return true end
  return redis.call('HGET', k, 'state') == 'FAILED'
    and redis.call('HGET', k, 'fail') == 'CODE_EXPIRED'
end
local function sweep()
  for _, bid in ipairs(redis.call('SMEMBERS', base .. ':blive')) do
    if code_expired(bkey(bid)) then retire(bid, 'FAILED', 'CODE_EXPIRED') end
  end
end
"""


def script(body: str) -> str:
    return PRELUDE + body
