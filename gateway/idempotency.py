"""Request-id idempotency (AIP-155) for every mutating call.

A record per (tenant, method, request id) holds a fingerprint of the request
and, once done, the answer. The first caller claims the record (an atomic
create with a lease); the same id with the same request then gets the stored
answer, also after a restart since it lives in Redis; the same id with a
different request fails with REQUEST_ID_REUSED; a concurrent duplicate waits
(bounded) for the first to finish, or gets ABORTED / REQUEST_IN_PROGRESS to
retry later. The work itself is written to be safe to repeat (derived ids,
bank idempotency keys), so a lease that runs out only costs a repeat, never
a second effect.

Answers that a retry could change are not stored: UNAVAILABLE, ABORTED,
DEADLINE_EXCEEDED and INTERNAL release the claim so the retry runs the work
again and drives it to completion. Definite errors (a wrong code, a refused
state) are stored and replayed like successes: a retried wrong code must not
burn a second attempt.

A released claim, and a claim whose lease ran out, keep the request's
fingerprint for the whole retention: ids and bank keys are derived from the
request id, so the same id with another request (another card, another
binding, another code) must stay REQUEST_ID_REUSED, never run against the
first request's resources.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis

from common import errors
from common.errors import Aborted, CardLinkError, Code, FieldViolation, InvalidArgument
from gateway.keys import Keyspace

T = TypeVar("T")

_REUSED_VIOLATION = FieldViolation("request_id", "used with another request", "REQUEST_ID_REUSED")
_RETRYABLE = (errors.Unavailable, errors.Aborted, errors.DeadlineExceeded, errors.Internal)

# Fields: st (pending|released|done), fp (request fingerprint), own (claim
# owner), lease (Redis time in ms until which a pending claim holds), body.
# The record lives for the retention from its last claim on, so its
# fingerprint outlives a released or abandoned claim. Redis's own clock
# times the lease: it bounds real latency across processes, not business time.
# ARGV: fingerprint, owner, lease ms, retention s.
_CLAIM = """
local rec = redis.call('HMGET', KEYS[1], 'st', 'fp', 'lease', 'body')
if rec[1] and rec[2] ~= ARGV[1] then return {'MISMATCH', ''} end
if rec[1] == 'done' then return {'DONE', rec[4]} end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
-- A pending record without a lease predates leases as fields: it holds
-- until its TTL (the old lease) runs out.
if rec[1] == 'pending' and (not rec[3] or tonumber(rec[3]) > now_ms) then
  return {'PENDING', ''}
end
redis.call('HSET', KEYS[1], 'st', 'pending', 'fp', ARGV[1], 'own', ARGV[2],
           'lease', now_ms + tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {'CLAIMED', ''}
"""

_COMPLETE = """
if redis.call('HGET', KEYS[1], 'own') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'st', 'done', 'body', ARGV[2])
redis.call('HDEL', KEYS[1], 'own', 'lease')
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# The next call with the same request claims it again at once.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'own') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'st', 'released')
redis.call('HDEL', KEYS[1], 'own', 'lease')
return 1
"""


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How a method's answer is stored: to and from a JSON-able value."""

    dump: Callable[[T], Any]
    load: Callable[[Any], T]


@dataclass(frozen=True)
class IdempotencySettings:
    retention_s: int = 86_400  # how long answers are replayed
    lease_s: float = 30.0  # how long a claim holds without an answer
    wait_s: float = 5.0  # how long a duplicate waits for the first call
    poll_s: float = 0.02


def fingerprint(*parts: object) -> str:
    """A stable digest of a request's meaningful fields."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyStore:
    def __init__(
        self, redis: aioredis.Redis, keyspace: Keyspace, settings: IdempotencySettings
    ) -> None:
        self._keyspace = keyspace
        self._settings = settings
        self._claim = redis.register_script(_CLAIM)
        self._complete = redis.register_script(_COMPLETE)
        self._release = redis.register_script(_RELEASE)

    async def run(
        self,
        tenant: str,
        method: str,
        request_id: str,
        request_fingerprint: str,
        work: Callable[[], Awaitable[T]],
        codec: Codec[T],
    ) -> T:
        key = self._keyspace.idempotency(tenant, method, request_id)
        owner = secrets.token_hex(16)
        # Waiting uses the monotonic clock: it bounds real latency, not business time.
        deadline = time.monotonic() + self._settings.wait_s
        while True:
            status, body = await self._claim(
                keys=[key],
                args=[request_fingerprint, owner, int(self._settings.lease_s * 1000),
                      self._settings.retention_s],
            )
            status = _text(status)
            if status == "CLAIMED":
                return await self._do(key, owner, work, codec)
            if status == "MISMATCH":
                raise InvalidArgument(
                    "REQUEST_ID_REUSED",
                    "this request_id was already used with a different request",
                    violations=[_REUSED_VIOLATION],
                )
            if status == "DONE":
                return _replay(json.loads(body), codec)
            if time.monotonic() >= deadline:
                raise Aborted(
                    "REQUEST_IN_PROGRESS",
                    "a call with this request_id is still in progress; retry it",
                )
            await asyncio.sleep(self._settings.poll_s)

    async def _do(
        self, key: str, owner: str, work: Callable[[], Awaitable[T]], codec: Codec[T]
    ) -> T:
        try:
            result = await work()
        except _RETRYABLE:
            await self._release(keys=[key], args=[owner])
            raise
        except CardLinkError as error:
            await self._store(key, owner, {"error": _dump_error(error)})
            raise
        except BaseException:
            await self._release(keys=[key], args=[owner])
            raise
        await self._store(key, owner, {"ok": codec.dump(result)})
        return result

    async def _store(self, key: str, owner: str, record: dict[str, Any]) -> None:
        body = json.dumps(record, separators=(",", ":"))
        await self._complete(keys=[key], args=[owner, body, self._settings.retention_s])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _dump_error(error: CardLinkError) -> dict[str, Any]:
    return {
        "code": error.code.value,
        "reason": error.reason,
        "message": error.message,
        "metadata": error.metadata,
        "violations": [[v.field, v.description, v.reason] for v in error.violations],
    }


def _error_classes() -> dict[Code, type[CardLinkError]]:
    return {cls.code: cls for cls in CardLinkError.__subclasses__()}


def _replay(record: dict[str, Any], codec: Codec[T]) -> T:
    if "ok" in record:
        return codec.load(record["ok"])
    raw = record["error"]
    cls = _error_classes().get(Code(raw["code"]), errors.Internal)
    raise cls(
        raw["reason"],
        raw["message"],
        metadata=raw["metadata"],
        violations=[FieldViolation(*v) for v in raw["violations"]],
    )
