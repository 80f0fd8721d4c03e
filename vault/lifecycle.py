"""Key lifecycle: rotate a key class, retire a version, destroy expired keys, status.

Every change is one compare-and-set on the keyring hash: the script applies
it only if ``gen`` still has the value the change was computed from, then
bumps ``gen``. Two admins rotating at once therefore never both create
"version 3"; the loser recomputes on the new keyring. Every vault process
sees the new ``gen`` within its refresh interval and reloads, so a rotation
takes all new writes without a restart.

Retiring a KEK or fingerprint version is refused while the per-version record
counters (kept by the store scripts) say a record still names it, and until
the version has been superseded for ``settle_seconds``, so that a process
still writing with a stale snapshot (at most one refresh interval plus one
call) cannot create a record under a version about to be destroyed. A full
scan then confirms no record names it before the material is deleted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from common.clock import Clock
from common.errors import Aborted, FailedPrecondition, invalid_field
from common.store_errors import redis_errors
from vault.keyring import (
    FINGERPRINT,
    GENERATION_FIELD,
    KEK,
    ROOT_FIELD,
    ROOT_KEY_MISMATCH,
    ROTATABLE_KINDS,
    SEALING,
    EntryInfo,
    Keyring,
    current_field,
    entry_field,
    entry_info,
    last_field,
    mark_superseded,
    new_version_entry,
    parse_entry_field,
    read_fields,
)
from vault.store import VaultStore

KEY_KIND_INVALID = "KEY_KIND_INVALID"
KEY_VERSION_UNKNOWN = "KEY_VERSION_UNKNOWN"
KEY_VERSION_CURRENT = "KEY_VERSION_CURRENT"
KEY_VERSION_IN_USE = "KEY_VERSION_IN_USE"
KEY_VERSION_SETTLING = "KEY_VERSION_SETTLING"
KEYRING_BUSY = "KEYRING_BUSY"

_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One live key version and how many records name it (KEK, fingerprint)."""

    info: EntryInfo
    current: bool
    record_count: int


@dataclass(frozen=True, slots=True)
class KeyringStatus:
    generation: int
    versions: tuple[VersionStatus, ...]


def check_kind(kind: str) -> str:
    if kind not in ROTATABLE_KINDS:
        raise invalid_field("kind", f"must be one of {', '.join(ROTATABLE_KINDS)}",
                            KEY_KIND_INVALID)
    return kind


def _entries(fields: Mapping[str, str]) -> list[EntryInfo]:
    return [entry_info(f, v) for f, v in fields.items() if parse_entry_field(f) is not None]


class KeyLifecycle:
    """Rotate, retire and destroy key versions; describe the keyring."""

    def __init__(self, redis: Redis, *, keyring: Keyring, store: VaultStore, clock: Clock,
                 sealing_grace_seconds: float, settle_seconds: float) -> None:
        self._redis = redis
        self._keyring = keyring
        self._store = store
        self._clock = clock
        self._grace = sealing_grace_seconds
        self._settle = settle_seconds

    async def _apply(self, generation: str, set_fields: Mapping[str, str],
                     delete: Sequence[str] = ()) -> bool:
        return await self._keyring.change(generation, set_fields, delete)

    async def rotate(self, kind: str) -> EntryInfo:
        """Add a version of ``kind`` and make it current; the previous current
        one is marked superseded (sealing keys: expiring after the grace)."""
        check_kind(kind)
        for _ in range(_ATTEMPTS):
            fields = await read_fields(self._redis, self._keyring.key)
            # Fetched after the read: a root rotation that completed meanwhile
            # (in this process) must not get a key wrapped under the old root.
            # One after the read moves the generation, and the change is refused.
            root = await self._keyring.root_keys.root_key()
            if fields.get(ROOT_FIELD) != root.key_id:
                raise FailedPrecondition(ROOT_KEY_MISMATCH, "this process does not hold the "
                                         "keyring's root key (rotated by another process, or "
                                         "a rotation here is unsettled); get the seal status")
            now = self._clock.now()
            previous = int(fields[current_field(kind)])
            versions = [i.version for i in _entries(fields) if i.kind == kind]
            version = max([int(fields.get(last_field(kind), "0")), *versions]) + 1
            field, value = new_version_entry(root, kind, version, now)
            old_field = entry_field(kind, previous)
            expire = now + self._grace if kind == SEALING else None
            changes = {
                field: value,
                current_field(kind): str(version),
                last_field(kind): str(version),
                old_field: mark_superseded(fields[old_field], now, expire),
            }
            if await self._apply(fields[GENERATION_FIELD], changes):
                return entry_info(field, value)
        raise Aborted(KEYRING_BUSY, "the keyring kept changing; retry")

    async def retire(self, kind: str, version: int) -> EntryInfo:
        """Destroy a non-current version's material; refused while it is needed."""
        check_kind(kind)
        for _ in range(_ATTEMPTS):
            fields = await read_fields(self._redis, self._keyring.key)
            field = entry_field(kind, version)
            if field not in fields:
                raise FailedPrecondition(KEY_VERSION_UNKNOWN, f"{kind} version {version} "
                                         "does not exist or was retired already")
            if int(fields[current_field(kind)]) == version:
                raise FailedPrecondition(KEY_VERSION_CURRENT,
                                         f"{kind} version {version} is current; rotate first")
            info = entry_info(field, fields[field])
            if kind in (KEK, FINGERPRINT):
                await self._check_unused(info)
            if await self._apply(fields[GENERATION_FIELD], {}, [field]):
                return info
        raise Aborted(KEYRING_BUSY, "the keyring kept changing; retry")

    async def _check_unused(self, info: EntryInfo) -> None:
        name = f"{info.kind}:{info.version}"
        counted = (await self._store.version_counts()).get(name, 0)
        if counted > 0:
            raise FailedPrecondition(KEY_VERSION_IN_USE,
                                     f"{counted} records still need {name}; run rewrap first",
                                     metadata={"records": str(counted)})
        settled = (info.supersede_time or 0.0) + self._settle
        if self._clock.now() < settled:
            raise FailedPrecondition(
                KEY_VERSION_SETTLING,
                f"{name} was superseded less than {self._settle:g} s ago; retry after that",
                metadata={"retry_after": f"{settled - self._clock.now():.0f}"})
        found = await self._scan_for(info.kind, info.version)
        if found:
            # The counters missed a record (e.g. written before they existed).
            raise FailedPrecondition(KEY_VERSION_IN_USE,
                                     f"{found} records still need {name}; run rewrap first",
                                     metadata={"records": str(found)})

    async def _scan_for(self, kind: str, version: int) -> int:
        """Records naming ``kind`` ``version``, by reading every record's version."""
        field = "kek" if kind == KEK else "fpv"
        wanted = str(version).encode()
        found = 0
        with redis_errors():
            batch: list[bytes] = []
            async for key in self._redis.scan_iter(match=self._store.record_pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    found += await self._count_in(batch, field, wanted)
                    batch = []
            found += await self._count_in(batch, field, wanted)
        return found

    async def _count_in(self, keys: list[bytes], field: str, wanted: bytes) -> int:
        if not keys:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, field)
            values = await pipe.execute()
        return sum(1 for v in values if v == wanted)

    def _expired(self, fields: Mapping[str, str]) -> list[EntryInfo]:
        now = self._clock.now()
        current = int(fields[current_field(SEALING)])
        return [i for i in _entries(fields) if i.kind == SEALING and i.version != current
                and i.expire_time is not None and i.expire_time <= now]

    async def expired_sealing_keys(self) -> list[EntryInfo]:
        """Sealing keys whose grace period is over (what ``destroy_expired`` would delete)."""
        return self._expired(await read_fields(self._redis, self._keyring.key))

    async def destroy_expired(self, only: Collection[int] | None = None) -> list[EntryInfo]:
        """Delete sealing keys whose grace period is over; returns what was destroyed.

        ``only``: destroy just these versions (those already announced in the audit log).
        """
        for _ in range(_ATTEMPTS):
            fields = await read_fields(self._redis, self._keyring.key)
            expired = [i for i in self._expired(fields) if only is None or i.version in only]
            if not expired:
                return []
            doomed = [entry_field(SEALING, i.version) for i in expired]
            if await self._apply(fields[GENERATION_FIELD], {}, doomed):
                return expired
        raise Aborted(KEYRING_BUSY, "the keyring kept changing; retry")

    async def status(self) -> KeyringStatus:
        fields = await read_fields(self._redis, self._keyring.key)
        counts = await self._store.version_counts()
        versions = []
        for info in sorted(_entries(fields), key=lambda i: (i.kind, -i.version)):
            if info.kind not in ROTATABLE_KINDS:
                continue
            current = int(fields[current_field(info.kind)]) == info.version
            versions.append(VersionStatus(info, current,
                                          counts.get(f"{info.kind}:{info.version}", 0)))
        return KeyringStatus(int(fields.get(GENERATION_FIELD, "0")), tuple(versions))


__all__ = ["KeyLifecycle", "KeyringStatus", "VersionStatus", "check_kind"]
