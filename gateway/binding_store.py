"""Redis storage of bindings and card ownership; every change is one Lua script.

A binding is a hash under the user's slot (fields: name, state, tok (vault
token), tokn (token resource name), disp and cons (JSON), fail, vid (bank
verification id), cexp (code expiry), att (code attempts used, a copy of
the user+card counter), max (allowed), pk / ph (the bank key and code HMAC of
the one code check in flight or of unknown outcome), mk:<bank key> (one per
check that ended as a wrong code), claim, seq, ctime, mtime).
``bcard:<token>`` points at the user's one live binding of a card,
``blive`` holds the live ids (the per-user limit), ``bidx`` orders bindings
for listing, ``lock:<token>`` holds a lockout end, ``catt:<token>`` counts
code attempts per (user, card) for a lockout's length (unbinding does not
reset it), ``bchk:<bid>`` marks a code check on the wire (TTL: the bank
call budget).

Which user holds a card is a separate slot (``keys.CardKeys``), changed by
compare-and-set: claim, take over a stale claim, release.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.keys import Keyspace, UserKeys
from gateway.lua import script
from gateway.models import Binding, BindingState, CardDisplay, Consent
from gateway.names import ChildName, UserName

_CREATE = script("""
local bid, tok, max_live, max_att = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
sweep()
local lock = redis.call('GET', base .. ':lock:' .. tok)
if lock and tonumber(lock) > now then return {'LOCKED', lock} end
local existing = redis.call('GET', base .. ':bcard:' .. tok)
if existing then return {'EXISTS', existing} end
if redis.call('EXISTS', bkey(bid)) == 1 then return {'EXISTS', bid} end
-- Every attempt on this card used up without a lockout (the last answer came
-- after its code expired): a new binding would refuse every code, the right
-- one too. Say so plainly, until the count expires.
local counter = base .. ':catt:' .. tok
if tonumber(redis.call('GET', counter) or '0') >= max_att then
  return {'LOCKED', tostring(now + math.max(redis.call('PTTL', counter), 1000) / 1000)}
end
if redis.call('SCARD', base .. ':blive') >= max_live then return {'LIMIT', ''} end
local seq = redis.call('INCR', base .. ':seq')
redis.call('HSET', bkey(bid), 'seq', seq, unpack(ARGV, 7))
redis.call('ZADD', base .. ':bidx', seq, bid)
redis.call('SADD', base .. ':blive', bid)
redis.call('SET', base .. ':bcard:' .. tok, bid)
return {'CREATED', bid}
""")

_CODE_SENT = script("""
local k = bkey(ARGV[3])
if redis.call('HGET', k, 'state') ~= 'PENDING_VERIFICATION' then return 0 end
-- Wrong codes are counted per (user, card), so a new binding of the card
-- starts with the attempts its predecessors used.
local used = redis.call('GET', base .. ':catt:' .. redis.call('HGET', k, 'tok')) or 0
redis.call('HSET', k, 'state', 'PENDING_CODE', 'vid', ARGV[4], 'cexp', ARGV[5],
  'att', used, 'mtime', now)
return 1
""")

# Retire a binding that is in one of the states ARGV[6..] (FAILED or UNBOUND).
# 1 when this call made the transition, 0 when the binding was elsewhere.
_RETIRE = script("""
local bid, state, reason = ARGV[3], ARGV[4], ARGV[5]
local current = redis.call('HGET', bkey(bid), 'state')
for i = 6, #ARGV do
  if current == ARGV[i] then
    if reason == '' then reason = nil end
    retire(bid, state, reason)
    return 1
  end
end
return 0
""")

# Reserve a code check. ARGV: 4 code digest, 5 the bank key for a new check,
# 6 attempt-counter TTL (ms, the lockout), 7 in-flight marker TTL (ms).
# At most one check is pending per binding (``pk`` bank key, ``ph`` code
# digest): the same code resumes it with its bank key (no new attempt), another
# code is BUSY until it is settled. A new check counts an attempt on the
# (user, card) counter ``catt:<tok>`` at once; only a provable no-op refunds it.
# EXPIRED: the code expired, now or earlier (a rerun whose answer was lost,
# or an expiry another script found first): every later code hears so too.
# MISMATCHED: the check under this bank key (so this very request) already
# ended as a wrong code (``mk:<key>``): its request is running again because
# its answer was never stored, and must not count a second attempt. LOCKED:
# that wrong code was the last attempt, and failed the binding.
_RESERVE_ATTEMPT = script("""
local bid = ARGV[3]
local k = bkey(bid)
local state = redis.call('HGET', k, 'state')
if not state then return {'NOT_FOUND', ''} end
if expired(bid) then return {'EXPIRED', ''} end
local mismatched = redis.call('HEXISTS', k, 'mk:' .. ARGV[5]) == 1
if mismatched and state == 'FAILED'
    and redis.call('HGET', k, 'fail') == 'TOO_MANY_ATTEMPTS' then
  return {'LOCKED', ''}
end
if state ~= 'PENDING_CODE' then return {'STATE', state} end
if mismatched then return {'MISMATCHED', tostring(attempts_left(k))} end
local flight = base .. ':bchk:' .. bid
local pending = redis.call('HGET', k, 'pk')
if pending then
  if redis.call('HGET', k, 'ph') == ARGV[4] then
    redis.call('SET', flight, 1, 'PX', ARGV[7])
    return {'RESUME', pending, redis.call('HGET', k, 'vid') or ''}
  end
  return {'BUSY', tostring(redis.call('EXISTS', flight))}
end
local counter = base .. ':catt:' .. redis.call('HGET', k, 'tok')
local used = tonumber(redis.call('GET', counter) or '0')
if used >= tonumber(redis.call('HGET', k, 'max')) then return {'EXHAUSTED', ''} end
used = redis.call('INCR', counter)
redis.call('PEXPIRE', counter, ARGV[6])
redis.call('HSET', k, 'att', used, 'pk', ARGV[5], 'ph', ARGV[4])
redis.call('SET', flight, 1, 'PX', ARGV[7])
return {'OK', ARGV[5], redis.call('HGET', k, 'vid') or ''}
""")

# The check under bank key ARGV[4] provably did nothing: give its attempt back.
_REFUND_ATTEMPT = script("""
local bid = ARGV[3]
local k = bkey(bid)
if redis.call('HGET', k, 'pk') ~= ARGV[4] then return 0 end
redis.call('HDEL', k, 'pk', 'ph')
redis.call('DEL', base .. ':bchk:' .. bid)
if redis.call('HGET', k, 'state') == 'PENDING_CODE' then
  local counter = base .. ':catt:' .. redis.call('HGET', k, 'tok')
  if tonumber(redis.call('GET', counter) or '0') > 0 then
    redis.call('HSET', k, 'att', redis.call('DECR', counter))
  end
end
return 1
""")

# The check under ARGV[4] ended without an answer (unknown outcome): the
# reservation stays, only the in-flight marker goes.
_CHECK_UNKNOWN = script("""
local bid = ARGV[3]
if redis.call('HGET', bkey(bid), 'pk') == ARGV[4] then
  redis.call('DEL', base .. ':bchk:' .. bid)
end
return 1
""")

# A match landing after the code's expiry (a slow bank) does not activate:
# the binding has read as FAILED since then, and another user may have taken
# the card meanwhile; it becomes FAILED (CODE_EXPIRED) now.
_CODE_MATCH = script("""
local bid = ARGV[3]
local k = bkey(bid)
if expired(bid) then
  -- The right code, late: the user knew it, so no attempt counts against them.
  redis.call('DEL', base .. ':catt:' .. redis.call('HGET', k, 'tok'))
  return {'EXPIRED', ''}
end
local state = redis.call('HGET', k, 'state')
if state ~= 'PENDING_CODE' then return {'STATE', state or ''} end
redis.call('HSET', k, 'state', 'ACTIVE', 'mtime', now)
redis.call('HDEL', k, 'pk', 'ph')
redis.call('DEL', base .. ':bchk:' .. bid, base .. ':catt:' .. redis.call('HGET', k, 'tok'))
return {'ACTIVE', ''}
""")

# A wrong code under bank key ARGV[4], remembered as ``mk:<key>`` (see
# _RESERVE_ATTEMPT): once the attempts are used up the
# binding fails and the user+card pair is locked out until ARGV[5] (clock
# seconds) for ARGV[6] ms. STATE when the binding left PENDING_CODE meanwhile
# (e.g. the right code won a race): nothing changes then. EXPIRED when the
# answer came after the code expired: the binding stays FAILED CODE_EXPIRED;
# the wrong code still counted (it was reserved), and a create that finds the
# card's attempts used up says BINDING_LOCKED_OUT (see _CREATE).
_CODE_MISMATCH = script("""
local bid = ARGV[3]
local k = bkey(bid)
if expired(bid) then return {'EXPIRED', ''} end
local state = redis.call('HGET', k, 'state')
if state ~= 'PENDING_CODE' then return {'STATE', state or ''} end
local left = attempts_left(k)
if redis.call('HGET', k, 'pk') ~= ARGV[4] then
  -- A concurrent resume of the same check settled it already.
  return {'LEFT', tostring(left)}
end
redis.call('HDEL', k, 'pk', 'ph')
redis.call('HSET', k, 'mk:' .. ARGV[4], 1)
redis.call('DEL', base .. ':bchk:' .. bid)
if left > 0 then return {'LEFT', tostring(left)} end
local tok = redis.call('HGET', k, 'tok')
retire(bid, 'FAILED', 'TOO_MANY_ATTEMPTS')
redis.call('SET', base .. ':lock:' .. tok, ARGV[5], 'PX', ARGV[6])
redis.call('DEL', base .. ':catt:' .. tok)
return {'LOCKED', ''}
""")

# DONE: this call unbound it; OK: it was unbound already. A binding whose
# code expired reads as FAILED, and is one from here on.
_UNBIND = script("""
local bid = ARGV[3]
if code_expired(bkey(bid)) then retire(bid, 'FAILED', 'CODE_EXPIRED') end
local state = redis.call('HGET', bkey(bid), 'state')
if not state then return {'NOT_FOUND', ''} end
if state == 'UNBOUND' then return {'OK', ''} end
if state == 'FAILED' then return {'STATE', state} end
local open = redis.call('GET', base .. ':clopen')
if open and redis.call('HGET', base .. ':cl:' .. open, 'bid') == bid then
  return {'IN_USE', ''}
end
retire(bid, 'UNBOUND', nil)
return {'DONE', ''}
""")

# Card ownership (card slot). Value: "<user name>|<nonce>|<claim time>". A
# claim by the owner's own user refreshes the nonce, so a competing take-over
# that read the old value fails its compare-and-set. OK answers the value the
# claim replaced ('' if none): a create refused afterwards puts it back, as a
# concurrent create of the same user may hold it.
_CLAIM_CARD = """
local owner = redis.call('GET', KEYS[1])
if owner and string.sub(owner, 1, #ARGV[1] + 1) ~= ARGV[1] .. '|' then
  return {'OTHER', owner}
end
redis.call('SET', KEYS[1], ARGV[2])
return {'OK', owner or ''}
"""

# One binding attempt of a card that reached the bank's verification (counted
# only after the claim succeeded: a refused stranger cannot use them up).
_COUNT_CARD_ATTEMPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then return 0 end
return 1
"""

_COMPARE_AND_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""


@dataclass(frozen=True)
class StoredBinding:
    """A binding as stored, with the fields the partner never sees."""

    binding: Binding
    token_name: str
    verification_id: str
    claim: str
    seq: int


@dataclass(frozen=True)
class NewBinding:
    name: ChildName
    token: str
    token_name: str
    display: CardDisplay
    consent: Consent
    max_attempts: int
    claim: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pair(reply: Sequence[Any]) -> tuple[str, str]:
    return _text(reply[0]), _text(reply[1])


def claim_value(user: UserName, now: float) -> str:
    return f"{user}|{secrets.token_hex(8)}|{now:.3f}"


def parse_claim(value: str) -> tuple[str, float]:
    """The user name and claim time of a card claim value."""
    user, _, rest = value.partition("|")
    _, _, when = rest.partition("|")
    return user, float(when or 0)


class BindingStore:
    def __init__(self, redis: aioredis.Redis, keyspace: Keyspace) -> None:
        self._redis = redis
        self.keyspace = keyspace
        self._scripts = {
            name: redis.register_script(body)
            for name, body in {
                "create": _CREATE,
                "code_sent": _CODE_SENT,
                "retire": _RETIRE,
                "reserve": _RESERVE_ATTEMPT,
                "refund": _REFUND_ATTEMPT,
                "check_unknown": _CHECK_UNKNOWN,
                "match": _CODE_MATCH,
                "mismatch": _CODE_MISMATCH,
                "unbind": _UNBIND,
                "claim_card": _CLAIM_CARD,
                "count_card": _COUNT_CARD_ATTEMPT,
                "cas": _COMPARE_AND_SET,
            }.items()
        }

    async def _user_script(
        self, name: str, user: UserName, binding_id: str, now: float, *args: Any
    ) -> Any:
        keys = self.keyspace.user(user)
        return await self._scripts[name](
            keys=[keys.binding(binding_id)], args=[keys.base, now, binding_id, *args]
        )

    # --- card ownership (card slot) -------------------------------------

    async def claim_card(self, tenant: str, token: str, value: str) -> tuple[str, str]:
        card = self.keyspace.card(tenant, token)
        reply = await self._scripts["claim_card"](
            keys=[card.owner], args=[value.split("|", 1)[0], value],
        )
        return _pair(reply)

    async def count_card_attempt(
        self, tenant: str, token: str, max_attempts: int, window: int, window_s: int
    ) -> bool:
        """Count a binding attempt that reaches verification; False past the limit."""
        card = self.keyspace.card(tenant, token)
        reply = await self._scripts["count_card"](
            keys=[card.attempts(window)], args=[max_attempts, window_s],
        )
        return bool(reply)

    async def compare_and_set_owner(self, tenant: str, token: str, old: str, new: str) -> bool:
        card = self.keyspace.card(tenant, token)
        return bool(await self._scripts["cas"](keys=[card.owner], args=[old, new]))

    # --- bindings (user slot) ------------------------------------------

    async def create(
        self, new: NewBinding, now: float, max_live: int
    ) -> tuple[str, str]:
        fields = {
            "name": str(new.name),
            "state": BindingState.PENDING_VERIFICATION.value,
            "tok": new.token,
            "tokn": new.token_name,
            "disp": json.dumps(asdict(new.display)),
            "cons": json.dumps(asdict(new.consent)),
            "max": new.max_attempts,
            "att": 0,
            "claim": new.claim,
            "ctime": now,
            "mtime": now,
        }
        flat = [item for pair in fields.items() for item in pair]
        reply = await self._user_script(
            "create", new.name.parent, new.name.id, now, new.token, max_live,
            new.max_attempts, *flat
        )
        return _pair(reply)

    async def code_sent(
        self, name: ChildName, now: float, verification_id: str, code_expire: float
    ) -> bool:
        reply = await self._user_script(
            "code_sent", name.parent, name.id, now, verification_id, code_expire
        )
        return bool(reply)

    async def retire(
        self, name: ChildName, now: float, state: BindingState, reason: str,
        from_states: Sequence[BindingState],
    ) -> bool:
        reply = await self._user_script(
            "retire", name.parent, name.id, now, state.value, reason,
            *(s.value for s in from_states),
        )
        return bool(reply)

    async def reserve_attempt(
        self, name: ChildName, now: float, code_digest: str, new_key: str,
        counter_ms: int, in_flight_ms: int,
    ) -> tuple[str, str, str]:
        """OK/RESUME with the bank key to use and the verification id as of the
        reservation (a verification may have ended just before it); BUSY ("1"
        while in flight) for another code's pending check; MISMATCHED (with the
        attempts left) when the check under ``new_key`` already ended as a wrong
        code, LOCKED when that was the last attempt; NOT_FOUND, EXPIRED, STATE
        (with the state), EXHAUSTED. The third element is '' but for OK/RESUME."""
        reply = await self._user_script(
            "reserve", name.parent, name.id, now, code_digest, new_key, counter_ms,
            in_flight_ms,
        )
        return _text(reply[0]), _text(reply[1]), _text(reply[2]) if len(reply) > 2 else ""

    async def refund_attempt(self, name: ChildName, now: float, key: str) -> None:
        await self._user_script("refund", name.parent, name.id, now, key)

    async def check_unknown(self, name: ChildName, now: float, key: str) -> None:
        await self._user_script("check_unknown", name.parent, name.id, now, key)

    async def code_matched(self, name: ChildName, now: float) -> tuple[str, str]:
        return _pair(await self._user_script("match", name.parent, name.id, now))

    async def code_mismatched(
        self, name: ChildName, now: float, key: str, lock_until: float, lock_ms: int
    ) -> tuple[str, str]:
        reply = await self._user_script(
            "mismatch", name.parent, name.id, now, key, lock_until, lock_ms
        )
        return _pair(reply)

    async def unbind(self, name: ChildName, now: float) -> tuple[str, str]:
        return _pair(await self._user_script("unbind", name.parent, name.id, now))

    # --- reads ---------------------------------------------------------

    async def load(self, user: UserName, binding_id: str, now: float) -> StoredBinding | None:
        raw = await self._redis.hgetall(self.keyspace.user(user).binding(binding_id))
        return decode(raw, now) if raw else None

    async def live_for_card(self, user: UserName, token: str, now: float) -> StoredBinding | None:
        keys = self.keyspace.user(user)
        binding_id = await self._redis.get(keys.card_binding(token))
        if binding_id is None:
            return None
        return await self.load(user, _text(binding_id), now)

    async def page(
        self, user: UserName, before_seq: int | None, size: int, now: float
    ) -> list[StoredBinding]:
        keys: UserKeys = self.keyspace.user(user)
        top = f"({before_seq}" if before_seq is not None else "+inf"
        ids = await self._redis.zrevrangebyscore(keys.binding_index, top, "-inf", 0, size)
        async with self._redis.pipeline(transaction=False) as pipe:
            for binding_id in ids:
                pipe.hgetall(keys.binding(_text(binding_id)))
            rows = await pipe.execute()
        return [decode(row, now) for row in rows if row]


def decode(raw: Mapping[Any, Any], now: float) -> StoredBinding:
    """A stored hash as a StoredBinding; an expired code shows as FAILED at once."""
    f = {_text(k): _text(v) for k, v in raw.items()}
    state = BindingState(f["state"])
    failure = f.get("fail", "")
    code_expire = float(f["cexp"]) if "cexp" in f else None
    if state is BindingState.PENDING_CODE and code_expire is not None and now >= code_expire:
        state, failure = BindingState.FAILED, "CODE_EXPIRED"
    pending = state is BindingState.PENDING_CODE
    binding = Binding(
        name=f["name"],
        state=state,
        card=CardDisplay(**json.loads(f["disp"])),
        consent=Consent(**json.loads(f["cons"])),
        failure_reason=failure,
        code_expire_time=code_expire if pending else None,
        code_attempts_left=int(f["max"]) - int(f.get("att", 0)) if pending else 0,
        create_time=float(f["ctime"]),
        update_time=float(f["mtime"]),
    )
    return StoredBinding(binding, f["tokn"], f.get("vid", ""), f.get("claim", ""), int(f["seq"]))
