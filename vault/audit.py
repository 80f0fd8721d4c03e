"""The vault's audit log: who touched which token, why, when, and the outcome.

Entries go to the Redis stream ``{prefix}:vault:audit``. An entry names the
caller, tenant and token, never card data. ``AuditEntry.fields()`` is the
canonical encoding; a tamper-evident log (a keyed hash chain) can replace
``AuditLog.append`` with a script that adds ``prev``/``mac`` fields computed
over exactly these fields, without changing any caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

from vault.keyring import redis_errors

AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"
DETOKENIZE = "detokenize"
DELETE = "delete"
RESULT_OK = "OK"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited action. ``result`` is ``OK`` or the error reason."""

    action: str
    caller: str
    tenant: str
    token: str
    result: str
    time: float
    reason: str = ""
    request_id: str = ""

    def fields(self) -> dict[str, str]:
        return {
            "action": self.action,
            "caller": self.caller,
            "tenant": self.tenant,
            "token": self.token,
            "result": self.result,
            "time": repr(self.time),
            "reason": self.reason,
            "request_id": self.request_id,
        }


class AuditSink(Protocol):
    """Anything that durably records audit entries, failing loudly if it cannot."""

    async def append(self, entry: AuditEntry) -> str: ...


def audit_key(prefix: str) -> str:
    return f"{prefix}:vault:audit"


class AuditLog:
    """Appends entries to a Redis stream; raises UNAVAILABLE if the write fails."""

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._redis = redis
        self.key = audit_key(prefix)

    async def append(self, entry: AuditEntry) -> str:
        """The stream id of the written entry."""
        with redis_errors(AUDIT_UNAVAILABLE):
            entry_id = await self._redis.xadd(self.key, entry.fields())  # type: ignore[arg-type]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
