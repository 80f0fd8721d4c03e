"""Redis storage of credit lines (user slot); every change is one Lua script.

A line is a hash ``cl:<id>`` (fields: name, bid, bname, tokn, state, cur,
limit, held, out, tier, acct, decl, ctime, mtime, and lseq / levt, sseq /
sevt once a bank event of that kind applied) next to the user's
bindings, so "the binding is active" and "the user has no other open line"
are checked in the same script that opens the line. ``clopen`` names the
user's one open (applied, active or frozen) line; a closed or declined line
gives the slot up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.keys import Keyspace
from gateway.lua import script
from gateway.models import CreditLine, CreditLineState, Money
from gateway.names import ChildName

_OPEN = script("""
local clid, bid = ARGV[3], ARGV[4]
local k = base .. ':cl:' .. clid
if redis.call('EXISTS', k) == 1 then return {'FOUND', clid} end
local bstate = redis.call('HGET', bkey(bid), 'state')
if bstate ~= 'ACTIVE' then return {'BINDING', bstate or ''} end
local open = redis.call('GET', base .. ':clopen')
if open then
  local ok = base .. ':cl:' .. open
  local ostate = redis.call('HGET', ok, 'state')
  if ostate == 'APPLIED' and redis.call('HGET', ok, 'bid') == bid then
    return {'FOUND', open}
  end
  if ostate == 'APPLIED' or ostate == 'ACTIVE' or ostate == 'FROZEN' then
    return {'EXISTS', open}
  end
end
redis.call('HSET', k, unpack(ARGV, 5))
redis.call('SET', base .. ':clopen', clid)
return {'CREATED', clid}
""")

# The bank's decision; only an APPLIED line takes it (a replayed decision
# after a timeout finds the line decided already and changes nothing).
_DECIDED = script("""
local clid = ARGV[3]
local k = base .. ':cl:' .. clid
if redis.call('HGET', k, 'state') ~= 'APPLIED' then return 0 end
if ARGV[4] == 'ACTIVE' then
  redis.call('HSET', k, 'state', 'ACTIVE', 'cur', ARGV[5], 'limit', ARGV[6], 'tier', ARGV[7],
    'acct', ARGV[8], 'mtime', now)
else
  redis.call('HSET', k, 'state', 'DECLINED', 'decl', ARGV[5], 'mtime', now)
  if redis.call('GET', base .. ':clopen') == clid then redis.call('DEL', base .. ':clopen') end
end
return 1
""")

# The bank's own events (limit, freeze, unfreeze, close) apply in the bank's
# order. ARGV[4] is the event's sequence, ARGV[5] its kind (the prefix of the
# line's fields ``<kind>seq`` / ``<kind>evt``: the sequence and identity of
# the last event of that kind applied), ARGV[6] its identity (a digest of its
# method, request id and request). order() says SUPERSEDED for an event not
# above the last applied (it arrived after a later one, or reuses a sequence),
# APPLIED for that very event again (a retry whose answer was lost: answered
# as done, nothing changes), nil to apply it. An event refused for the line's
# state, currency or money in use records nothing.
_EVENT = """
local k = base .. ':cl:' .. ARGV[3]
local seq, seqf, evtf, evt = ARGV[4], ARGV[5] .. 'seq', ARGV[5] .. 'evt', ARGV[6]
local function order()
  local last = redis.call('HMGET', k, seqf, evtf)
  local applied = last[1] or '0'
  if tonumber(seq) > tonumber(applied) then return nil, applied end
  if tonumber(seq) == tonumber(applied) and last[2] == evt then return 'APPLIED', applied end
  return 'SUPERSEDED', applied
end
local function record() redis.call('HSET', k, seqf, seq, evtf, evt) end
-- Before anything else (a missing line has applied nothing: it goes on to NOT_FOUND).
local verdict, applied = order()
if verdict == 'APPLIED' then return {'OK', ''} end
if verdict then return {verdict, applied} end
"""

# A new limit from the bank. Available is derived (max(0, limit - held -
# out)) on every read, so a cut below usage shows zero, never a negative.
_CHANGE_LIMIT = script(_EVENT + """
local state = redis.call('HGET', k, 'state')
if not state then return {'NOT_FOUND', ''} end
if state ~= 'ACTIVE' and state ~= 'FROZEN' then return {'STATE', state} end
local cur = redis.call('HGET', k, 'cur')
if cur ~= ARGV[7] then return {'CURRENCY', cur} end
redis.call('HSET', k, 'limit', ARGV[8], 'mtime', now)
record()
return {'OK', ''}
""")

# ARGV[7] -> ARGV[8]: {'OK', 'CHANGED'}, or {'OK', ''} if already there (the
# event still counts as the latest of its kind).
_SET_STATE = script(_EVENT + """
local state = redis.call('HGET', k, 'state')
if not state then return {'NOT_FOUND', ''} end
if state == ARGV[8] then
  record()
  return {'OK', ''}
end
if state ~= ARGV[7] then return {'STATE', state} end
redis.call('HSET', k, 'state', ARGV[8], 'mtime', now)
record()
return {'OK', 'CHANGED'}
""")


# Closing frees the user's open-line slot; it never strands money, so a
# line with anything held or outstanding stays open. Returns {'OK', 'CLOSED'}
# when this call closed it, {'OK', ''} when it was closed already, and
# {'IN_USE', 'held/outstanding'}.
_CLOSE = script(_EVENT + """
local clid = ARGV[3]
local line = redis.call('HMGET', k, 'state', 'held', 'out')
local state = line[1]
if not state then return {'NOT_FOUND', ''} end
if state == 'CLOSED' then
  record()
  return {'OK', ''}
end
if state ~= 'ACTIVE' and state ~= 'FROZEN' then return {'STATE', state} end
if tonumber(line[2]) ~= 0 or tonumber(line[3]) ~= 0 then
  return {'IN_USE', line[2] .. '/' .. line[3]}
end
redis.call('HSET', k, 'state', 'CLOSED', 'mtime', now)
record()
if redis.call('GET', base .. ':clopen') == clid then redis.call('DEL', base .. ':clopen') end
return {'OK', 'CLOSED'}
""")

# The kinds of bank event, ordered apart: the prefix of their line fields.
_LIMIT_EVENTS = "l"
_STATUS_EVENTS = "s"


@dataclass(frozen=True)
class BankEvent:
    """Where a bank event stands in the bank's order, and what tells this very
    event apart from any other (a digest of its method, request id and request)."""

    sequence: int
    identity: str

    def args(self, kind: str) -> tuple[int, str, str]:
        return self.sequence, kind, self.identity


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CreditStore:
    def __init__(self, redis: aioredis.Redis, keyspace: Keyspace) -> None:
        self._redis = redis
        self._keyspace = keyspace
        self._open = redis.register_script(_OPEN)
        self._decided = redis.register_script(_DECIDED)
        self._change_limit = redis.register_script(_CHANGE_LIMIT)
        self._set_state = redis.register_script(_SET_STATE)
        self._close = redis.register_script(_CLOSE)

    async def _run(self, fn: Any, name: ChildName, now: float, *args: Any) -> tuple[str, str]:
        keys = self._keyspace.user(name.parent)
        reply = await fn(keys=[keys.credit_line(name.id)], args=[keys.base, now, name.id, *args])
        if isinstance(reply, list):
            return _text(reply[0]), _text(reply[1])
        return str(reply), ""

    async def open(
        self, name: ChildName, binding: ChildName, token_name: str, now: float
    ) -> tuple[str, str]:
        fields = {
            "name": str(name), "bid": binding.id, "bname": str(binding), "tokn": token_name,
            "state": CreditLineState.APPLIED.value, "cur": "", "limit": 0, "held": 0, "out": 0,
            "tier": "", "acct": "", "decl": "", "ctime": now, "mtime": now,
        }
        flat = [item for pair in fields.items() for item in pair]
        return await self._run(self._open, name, now, binding.id, *flat)

    async def approve(self, name: ChildName, now: float, limit: Money, tier: str,
                      account_id: str) -> None:
        await self._run(self._decided, name, now, "ACTIVE", limit.currency_code,
                        limit.units_minor, tier, account_id)

    async def decline(self, name: ChildName, now: float, reason: str) -> None:
        await self._run(self._decided, name, now, "DECLINED", reason)

    async def change_limit(self, name: ChildName, now: float, limit: Money,
                           event: BankEvent) -> tuple[str, str]:
        """The bank's limit event; ``('SUPERSEDED', applied)`` if a later one applied."""
        return await self._run(self._change_limit, name, now, *event.args(_LIMIT_EVENTS),
                               limit.currency_code, limit.units_minor)

    async def set_state(self, name: ChildName, now: float, from_state: CreditLineState,
                        to_state: CreditLineState, event: BankEvent) -> tuple[str, str]:
        """The bank's freeze or unfreeze event (a status event)."""
        return await self._run(self._set_state, name, now, *event.args(_STATUS_EVENTS),
                               from_state.value, to_state.value)

    async def close(self, name: ChildName, now: float, event: BankEvent) -> tuple[str, str]:
        """The bank's close event (a status event)."""
        return await self._run(self._close, name, now, *event.args(_STATUS_EVENTS))

    async def load(self, name: ChildName) -> tuple[CreditLine, str] | None:
        """The line and its card's vault token name."""
        raw = await self._redis.hgetall(self._keyspace.user(name.parent).credit_line(name.id))
        return decode(raw) if raw else None


def decode(raw: Mapping[Any, Any]) -> tuple[CreditLine, str]:
    f = {_text(k): _text(v) for k, v in raw.items()}
    line = CreditLine(
        name=f["name"],
        binding=f["bname"],
        state=CreditLineState(f["state"]),
        currency_code=f["cur"],
        limit=int(f["limit"]),
        held=int(f["held"]),
        outstanding=int(f["out"]),
        tier=f["tier"],
        decline_reason=f["decl"],
        create_time=float(f["ctime"]),
        update_time=float(f["mtime"]),
    )
    return line, f["tokn"]
