"""Token records in Redis. Every atomic change is one Lua script.

Keys (tenant ``t`` is the hash tag, so a record and its fingerprint mapping
share a Redis Cluster slot and one script may touch both):

- ``{prefix}:vault:{t}:tok:<token>`` hash: ``ct``, ``nonce``, ``wdek``,
  ``kek``, ``fp``, ``fpv``, display fields, ``ctime``, ``mtime``.
- ``{prefix}:vault:{t}:fp:<fpv>:<fingerprint hex>`` -> token.
- ``{prefix}:vault:{t}:counts`` hash: ``kek:<v>`` and ``fp:<v>``, how many of
  the tenant's records name each key version. Every script that writes or
  deletes a record keeps them exact, so ``retire`` can refuse a version that
  is still needed without reading every record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from common.errors import Internal
from common.store_errors import redis_errors
from vault.crypto import Envelope
from vault.pan import CardBrand, CardDisplay

STORE_CORRUPT = "STORE_CORRUPT"

# Per-version record counts, shared by every script below (KEYS[2] is the
# tenant's counts hash). `count(kek, fpv, delta)`. A zero count is removed, so
# a tenant whose records are all deleted leaves no key behind.
_COUNT = """
local function bump(field, delta)
  if redis.call('HINCRBY', KEYS[2], field, delta) == 0 then redis.call('HDEL', KEYS[2], field) end
end
local function count(kek, fpv, delta)
  bump('kek:' .. kek, delta)
  bump('fp:' .. fpv, delta)
end
"""

# A new card: if no fingerprint mapping (of any live fingerprint version)
# names a token yet, claim the current one and write the record, atomically.
# A known card is never rewritten: the reply carries the existing token's
# stored display fields instead (read in the same call, so no second round
# trip). Its record key is built here from ARGV[2] (the tenant's record-key
# prefix); it shares the tenant's hash tag, so it is in this script's slot.
# KEYS: record, counts, fp keys (current version first). ARGV: token,
# record-key prefix, field, value, ... Returns {1} when created,
# {0, token, index, display fields...} for an existing card (index into the
# fp keys, 0-based; display fields in DISPLAY order, absent if the record is
# missing), {2} when the fresh token collides.
_INSERT_NEW = _COUNT + """
for i = 3, #KEYS do
  local existing = redis.call('GET', KEYS[i])
  if existing then
    local reply = {0, existing, i - 3}
    local shown = redis.call('HMGET', ARGV[2] .. existing, 'bin', 'last4', 'brand', 'exp_m',
                             'exp_y', 'mname', 'mphone', 'ctime', 'mtime')
    if shown[1] then
      for j = 1, #shown do reply[#reply + 1] = shown[j] end
    end
    return reply
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {2} end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
local v = redis.call('HMGET', KEYS[1], 'kek', 'fpv')
count(v[1], v[2], 1)
return {1}
"""

# Delete the record (its wrapped data key and ciphertext) and its mapping.
# KEYS: record, counts, fp key. ARGV: token, fp, fpv as the caller read them.
# Returns 1 deleted, 0 no such record, -1 record changed meanwhile (reread).
_DELETE = _COUNT + """
local current = redis.call('HMGET', KEYS[1], 'fp', 'fpv', 'kek')
if not current[1] then return 0 end
if current[1] ~= ARGV[2] or current[2] ~= ARGV[3] then return -1 end
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
count(current[3], current[2], -1)
return 1
"""

# Rewrap compare-and-set: move one record to new key versions only if it
# still holds exactly what the rewrap read (kek, fpv, fp and the ciphertext's
# nonce, fresh on every write), so a concurrent write or delete wins, is never
# reverted, and each record is moved at most once.
# KEYS: record, counts, old fp key, new fp key.
# ARGV: token, old kek, old fpv, old fp, old nonce, field, value, ...
# Returns 1 moved, 0 record gone, -1 record changed (reread), -2 the new
# fingerprint already names another token (left as is, reported).
_REWRAP = _COUNT + """
local cur = redis.call('HMGET', KEYS[1], 'kek', 'fpv', 'fp', 'nonce')
if not cur[1] then return 0 end
if cur[1] ~= ARGV[2] or cur[2] ~= ARGV[3] or cur[3] ~= ARGV[4] or cur[4] ~= ARGV[5] then
  return -1
end
if KEYS[3] ~= KEYS[4] then
  local owner = redis.call('GET', KEYS[4])
  if owner and owner ~= ARGV[1] then return -2 end
  redis.call('SET', KEYS[4], ARGV[1])
  if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
local new = redis.call('HMGET', KEYS[1], 'kek', 'fpv')
count(cur[1], cur[2], -1)
count(new[1], new[2], 1)
return 1
"""

REWRAP_MOVED = 1
REWRAP_GONE = 0
REWRAP_CHANGED = -1
REWRAP_CONFLICT = -2

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

    def secret_fields(self) -> list[bytes | str]:
        """Flattened ciphertext and key-version fields (what a rewrap replaces)."""
        e = self.envelope
        return ["ct", e.ciphertext, "nonce", e.nonce, "wdek", e.wrapped_key,
                "kek", str(e.kek_version), "fp", self.fingerprint,
                "fpv", str(self.fingerprint_version)]

    def fields(self) -> list[bytes | str]:
        """Flattened hash fields (name, value, ...) for a script's ARGV."""
        d = self.display
        return [*self.secret_fields(),
                "bin", d.bin, "last4", d.last_four, "brand", d.brand.value,
                "exp_m", str(d.expiry_month), "exp_y", str(d.expiry_year),
                "mname", d.masked_holder_name, "mphone", d.masked_phone,
                "mtime", repr(self.update_time), "ctime", repr(self.create_time)]


@dataclass(frozen=True, slots=True)
class StoredDisplay:
    display: CardDisplay
    create_time: float
    update_time: float


@dataclass(frozen=True, slots=True)
class InsertOutcome:
    """``created``, or the token the card already has, which fp key named it
    and its stored display data (None if its record was missing)."""

    created: bool
    existing_token: str | None = None
    fingerprint_index: int = 0
    collision: bool = False
    existing: StoredDisplay | None = None


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
        self._delete = redis.register_script(_DELETE)
        self._rewrap = redis.register_script(_REWRAP)

    def record_key(self, tenant: str, token: str) -> str:
        return f"{self._prefix}:vault:{{{tenant}}}:tok:{token}"

    def counts_key(self, tenant: str) -> str:
        return f"{self._prefix}:vault:{{{tenant}}}:counts"

    @property
    def record_pattern(self) -> str:
        """SCAN pattern matching every token record of every tenant."""
        return f"{self._prefix}:vault:{{*}}:tok:*"

    def parse_record_key(self, key: bytes | str) -> tuple[str, str]:
        """(tenant, token) of a record key."""
        text = _text(key)
        head = f"{self._prefix}:vault:{{"
        if not text.startswith(head) or "}:tok:" not in text:
            raise Internal(STORE_CORRUPT, "not a token record key")
        tenant, _, token = text[len(head):].partition("}:tok:")
        return tenant, token

    def fingerprint_key(self, tenant: str, version: int, fingerprint: str) -> str:
        return f"{self._prefix}:vault:{{{tenant}}}:fp:{version}:{fingerprint}"

    async def insert_new(self, record: StoredRecord,
                         fingerprint_keys: Sequence[str]) -> InsertOutcome:
        """Write a new card's record unless a live fingerprint already names a token.

        ``fingerprint_keys[0]`` must be the record's own (current version) mapping.
        """
        keys = [self.record_key(record.tenant, record.token), self.counts_key(record.tenant),
                *fingerprint_keys]
        with redis_errors():
            reply = await self._insert_new(
                keys=keys, args=[record.token, self.record_key(record.tenant, ""),
                                 *record.fields()])
        if reply[0] == 1:
            return InsertOutcome(created=True)
        if reply[0] == 2:
            return InsertOutcome(created=False, collision=True)
        shown = reply[3:]
        existing = _display(shown) if len(shown) == len(_DISPLAY_FIELDS) else None
        return InsertOutcome(False, _text(reply[1]), int(reply[2]), existing=existing)

    async def load_display(self, tenant: str, token: str) -> StoredDisplay | None:
        with redis_errors():
            values = await self._redis.hmget(self.record_key(tenant, token), _DISPLAY_FIELDS)
        if all(v is None for v in values):
            return None
        return _display(values)

    async def load(self, tenant: str, token: str) -> StoredRecord | None:
        with redis_errors():
            values = await self._redis.hmget(self.record_key(tenant, token), _ALL_FIELDS)
        return self._parse_record(tenant, token, values)

    async def load_many(self, keys: Sequence[bytes | str]) -> list[StoredRecord | None]:
        """Records by key, in one pipelined round trip (None for vanished ones)."""
        with redis_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, _ALL_FIELDS)
                replies = await pipe.execute()
        records: list[StoredRecord | None] = []
        for key, values in zip(keys, replies, strict=True):
            tenant, token = self.parse_record_key(key)
            records.append(self._parse_record(tenant, token, values))
        return records

    async def rewrap_many(self, moves: Sequence[tuple[StoredRecord, StoredRecord]]) -> list[int]:
        """Compare-and-set each (old, new) record pair, pipelined; REWRAP_* outcomes."""
        if not moves:
            return []
        with redis_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for old, new in moves:
                    keys = [
                        self.record_key(old.tenant, old.token), self.counts_key(old.tenant),
                        self.fingerprint_key(old.tenant, old.fingerprint_version,
                                             old.fingerprint),
                        self.fingerprint_key(new.tenant, new.fingerprint_version,
                                             new.fingerprint),
                    ]
                    args = [old.token, str(old.envelope.kek_version),
                            str(old.fingerprint_version), old.fingerprint, old.envelope.nonce,
                            *new.secret_fields()]
                    await self._rewrap(keys=keys, args=args, client=pipe)
                replies = await pipe.execute()
        return [int(r) for r in replies]

    async def version_counts(self) -> dict[str, int]:
        """Records per key version over every tenant: {'kek:1': n, 'fp:2': m, ...}."""
        totals: dict[str, int] = {}
        with redis_errors():
            async for key in self._redis.scan_iter(
                    match=f"{self._prefix}:vault:{{*}}:counts", count=1000):
                for field, value in (await self._redis.hgetall(key)).items():
                    name = _text(field)
                    totals[name] = totals.get(name, 0) + int(value)
        return totals

    def _parse_record(self, tenant: str, token: str,
                      values: Sequence[bytes | str | None]) -> StoredRecord | None:
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
                outcome = await self._delete(
                    keys=[record_key, self.counts_key(tenant), fp_key], args=[token, fp, fpv])
            if outcome >= 0:
                return bool(outcome)
        raise Internal(STORE_CORRUPT, "a token record kept changing during delete")
