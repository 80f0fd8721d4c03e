"""Token records in Redis. Every atomic change is one Lua script.

Keys (tenant ``t`` is the hash tag, so a record and its fingerprint mapping
share a Redis Cluster slot and one script may touch both):

- ``{prefix}:vault:{t}:tok:<token>`` hash: ``ct``, ``nonce``, ``wdek``,
  ``kek``, ``fp``, ``fpv``, display fields, ``ctime``, ``mtime``.
- ``{prefix}:vault:{t}:fp:<fpv>:<fingerprint hex>`` -> token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from common.errors import Internal
from vault.crypto import Envelope
from vault.keyring import redis_errors
from vault.pan import CardBrand, CardDisplay

STORE_CORRUPT = "STORE_CORRUPT"

# A new card: if no fingerprint mapping (of any live fingerprint version)
# names a token yet, claim the current one and write the record, atomically.
# KEYS: record, fp keys (current version first). ARGV: token, field, value, ...
# Returns {1} when created, {0, token, index} for an existing card (index into
# the fp keys, 0-based), {2} when the fresh token collides with a record.
_INSERT_NEW = """
for i = 2, #KEYS do
  local existing = redis.call('GET', KEYS[i])
  if existing then return {0, existing, i - 2} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {2} end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return {1}
"""

# A known card: replace the record's payload only while the mapping still
# names this token (a concurrent delete makes the caller start over).
# KEYS: record, fp key. ARGV: token, field, value, ... Returns ctime or false.
_UPDATE_KNOWN = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return redis.call('HGET', KEYS[1], 'ctime')
"""

# Delete the record (its wrapped data key and ciphertext) and its mapping.
# KEYS: record, fp key. ARGV: token, fp, fpv as the caller read them.
# Returns 1 deleted, 0 no such record, -1 record changed meanwhile (reread).
_DELETE = """
local current = redis.call('HMGET', KEYS[1], 'fp', 'fpv')
if not current[1] then return 0 end
if current[1] ~= ARGV[2] or current[2] ~= ARGV[3] then return -1 end
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

_DISPLAY_FIELDS = ("bin", "last4", "brand", "exp_m", "exp_y", "mname", "mphone", "ctime", "mtime")
_SECRET_FIELDS = ("ct", "nonce", "wdek", "kek", "fp", "fpv")
# HMGET of named fields: half the reply elements of HGETALL, which is what
# dominates a read's cost in the Python client.
_ALL_FIELDS = _DISPLAY_FIELDS + _SECRET_FIELDS


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A token record as stored: ciphertext, fingerprint, display data, times."""

    tenant: str
    token: str
    envelope: Envelope
    fingerprint: str
    fingerprint_version: int
    display: CardDisplay
    create_time: float
    update_time: float

    def fields(self, *, with_create_time: bool = True) -> list[bytes | str]:
        """Flattened hash fields (name, value, ...) for a script's ARGV."""
        d, e = self.display, self.envelope
        pairs: list[tuple[str, bytes | str]] = [
            ("ct", e.ciphertext), ("nonce", e.nonce), ("wdek", e.wrapped_key),
            ("kek", str(e.kek_version)), ("fp", self.fingerprint),
            ("fpv", str(self.fingerprint_version)),
            ("bin", d.bin), ("last4", d.last_four), ("brand", d.brand.value),
            ("exp_m", str(d.expiry_month)), ("exp_y", str(d.expiry_year)),
            ("mname", d.masked_holder_name), ("mphone", d.masked_phone),
            ("mtime", repr(self.update_time)),
        ]
        if with_create_time:
            pairs.append(("ctime", repr(self.create_time)))
        return [item for pair in pairs for item in pair]


@dataclass(frozen=True, slots=True)
class StoredDisplay:
    display: CardDisplay
    create_time: float
    update_time: float


@dataclass(frozen=True, slots=True)
class InsertOutcome:
    """``created``, or the token the card already has and which fp key named it."""

    created: bool
    existing_token: str | None = None
    fingerprint_index: int = 0
    collision: bool = False


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    # The client is built with decode_responses=False; str only appears if it is not.
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _display(values: Sequence[bytes | str | None]) -> StoredDisplay:
    if any(v is None for v in values):
        raise Internal(STORE_CORRUPT, "a token record is incomplete")
    b, last4, brand, m, y, name, phone, ctime, mtime = (_text(v) for v in values if v is not None)
    try:
        display = CardDisplay(b, last4, CardBrand(brand), int(m), int(y), name, phone)
        return StoredDisplay(display, float(ctime), float(mtime))
    except ValueError:
        raise Internal(STORE_CORRUPT, "a token record is unreadable") from None


class VaultStore:
    """Token records and fingerprint mappings in Redis (client must return bytes)."""

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._insert_new = redis.register_script(_INSERT_NEW)
        self._update_known = redis.register_script(_UPDATE_KNOWN)
        self._delete = redis.register_script(_DELETE)

    def record_key(self, tenant: str, token: str) -> str:
        return f"{self._prefix}:vault:{{{tenant}}}:tok:{token}"

    def fingerprint_key(self, tenant: str, version: int, fingerprint: str) -> str:
        return f"{self._prefix}:vault:{{{tenant}}}:fp:{version}:{fingerprint}"

    async def insert_new(self, record: StoredRecord,
                         fingerprint_keys: Sequence[str]) -> InsertOutcome:
        """Write a new card's record unless a live fingerprint already names a token.

        ``fingerprint_keys[0]`` must be the record's own (current version) mapping.
        """
        keys = [self.record_key(record.tenant, record.token), *fingerprint_keys]
        with redis_errors():
            reply = await self._insert_new(keys=keys, args=[record.token, *record.fields()])
        if reply[0] == 1:
            return InsertOutcome(created=True)
        if reply[0] == 2:
            return InsertOutcome(created=False, collision=True)
        return InsertOutcome(False, _text(reply[1]), int(reply[2]))

    async def update_known(self, record: StoredRecord, fingerprint_key: str) -> float | None:
        """Replace a known card's payload; its create time, or None if the token is gone."""
        keys = [self.record_key(record.tenant, record.token), fingerprint_key]
        args = [record.token, *record.fields(with_create_time=False)]
        with redis_errors():
            ctime = await self._update_known(keys=keys, args=args)
        return None if ctime is None else float(ctime)

    async def load_display(self, tenant: str, token: str) -> StoredDisplay | None:
        with redis_errors():
            values = await self._redis.hmget(self.record_key(tenant, token), _DISPLAY_FIELDS)
        if all(v is None for v in values):
            return None
        return _display(values)

    async def load(self, tenant: str, token: str) -> StoredRecord | None:
        with redis_errors():
            values = await self._redis.hmget(self.record_key(tenant, token), _ALL_FIELDS)
        if all(v is None for v in values):
            return None
        shown = _display(values[:len(_DISPLAY_FIELDS)])
        ct, nonce, wdek, kek, fp, fpv = values[len(_DISPLAY_FIELDS):]
        if ct is None or nonce is None or wdek is None or kek is None or fp is None or fpv is None:
            raise Internal(STORE_CORRUPT, "a token record is incomplete")
        try:
            envelope = Envelope(_bytes(ct), _bytes(nonce), _bytes(wdek), int(kek))
            return StoredRecord(tenant, token, envelope, _text(fp), int(fpv), shown.display,
                                shown.create_time, shown.update_time)
        except ValueError:
            raise Internal(STORE_CORRUPT, "a token record is incomplete") from None

    async def delete(self, tenant: str, token: str) -> bool:
        """Delete a record and its mapping; False when there was none."""
        record_key = self.record_key(tenant, token)
        for _ in range(8):
            with redis_errors():
                fp, fpv = await self._redis.hmget(record_key, ["fp", "fpv"])
                if fp is None or fpv is None:
                    return False
                fp_key = self.fingerprint_key(tenant, int(fpv), _text(fp))
                outcome = await self._delete(keys=[record_key, fp_key], args=[token, fp, fpv])
            if outcome >= 0:
                return bool(outcome)
        raise Internal(STORE_CORRUPT, "a token record kept changing during delete")
