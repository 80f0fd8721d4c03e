"""Online, resumable rewrap: move every record to the current KEK and fingerprint key.

The job walks the record keys with Redis SCAN and saves the SCAN cursor in
``{prefix}:vault:rewrap`` after each batch, so a run that is killed (or
cancelled by a closed stream) continues from the last saved batch when
called again. SCAN returns every key that exists for the whole walk at
least once; a key it returns twice, or a batch redone after a kill, is
harmless because each record moves by a compare-and-set script that only
rewrites a record still holding exactly what the job read (old versions,
old fingerprint). A concurrent tokenize or delete wins; the job rereads.
Each record is therefore moved exactly once.

A record can be written under an old version after the walk passed it (by
a process whose keyring snapshot was still stale): at the end of a walk the
per-version counters are checked and, if anything still names an old
version, the walk starts over (a few times at most).

One rewrap runs at a time, guarded by a lease key that the running job
renews after each batch.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace

from google.protobuf.message import DecodeError
from redis.asyncio import Redis

from common.errors import Aborted
from common.store_errors import redis_errors
from vault.crypto import DecryptionFailed
from vault.keyring import Keyring, KeySnapshot
from vault.service import card_from_bytes
from vault.store import REWRAP_CHANGED, REWRAP_CONFLICT, REWRAP_MOVED, StoredRecord, VaultStore

REWRAP_RUNNING = "REWRAP_RUNNING"
REWRAP_LEASE_LOST = "REWRAP_LEASE_LOST"
DEFAULT_BATCH = 500
MAX_BATCH = 5000
_LEASE_MS = 30_000
_RETRIES = 3
_WALKS = 3
# Records re-encrypted between two yields to the event loop (about 2-3 ms of CPU).
_SLICE = 50

# Save progress and renew the lease, only while this job still holds it (a
# job that stalled past its lease must not extend another job's lease nor
# overwrite its cursor; an expired lease nobody took is taken back).
# KEYS: state, lease. ARGV: owner, lease ms, field, value, ...
# Returns 1 saved, 0 the lease belongs to another run.
_SAVE = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class RewrapProgress:
    done: int
    total: int
    rate: float
    eta_seconds: float
    complete: bool
    target_kek_version: int
    target_fingerprint_version: int
    skipped: int = 0


@dataclass(slots=True)
class _State:
    cursor: int
    kek: int
    fp: int
    done: int
    skipped: int

    def fields(self) -> dict[str, str]:
        return {"cursor": str(self.cursor), "kek": str(self.kek), "fp": str(self.fp),
                "done": str(self.done), "skipped": str(self.skipped)}


def _remaining(counts: Mapping[str, int], kek: int, fp: int) -> int:
    """Records still on an old version: a record may be on an old KEK and an old
    fingerprint at once, so the larger of the two sums (a lower bound of the union)."""
    old_kek = sum(n for f, n in counts.items() if f.startswith("kek:") and f != f"kek:{kek}")
    old_fp = sum(n for f, n in counts.items() if f.startswith("fp:") and f != f"fp:{fp}")
    return max(old_kek, old_fp, 0)


class Rewrapper:
    """Runs the rewrap job; ``run`` yields progress after every batch."""

    def __init__(self, redis: Redis, *, prefix: str, keyring: Keyring, store: VaultStore) -> None:
        self._redis = redis
        self._keyring = keyring
        self._store = store
        self._state_key = f"{prefix}:vault:rewrap"
        self._lease_key = f"{prefix}:vault:rewrap:lease"
        self._release = redis.register_script(_RELEASE)
        self._save_script = redis.register_script(_SAVE)

    async def progress(self) -> RewrapProgress:
        """Where the last (or running) rewrap stands, for status."""
        keys = await self._keyring.snapshot()
        state = await self._load_state(keys)
        remaining = _remaining(await self._store.version_counts(), state.kek, state.fp)
        return RewrapProgress(state.done, state.done + remaining, 0.0, 0.0, remaining == 0,
                              state.kek, state.fp, state.skipped)

    async def run(self, batch_size: int = DEFAULT_BATCH,
                  limit: int = 0) -> AsyncIterator[RewrapProgress]:
        batch_size = min(max(batch_size or DEFAULT_BATCH, 1), MAX_BATCH)
        owner = secrets.token_hex(8)
        with redis_errors():
            if not await self._redis.set(self._lease_key, owner, nx=True, px=_LEASE_MS):
                raise Aborted(REWRAP_RUNNING, "a rewrap is already running; wait for it")
        try:
            async for progress in self._walk(owner, batch_size, limit):
                yield progress
        finally:
            with redis_errors():
                await self._release(keys=[self._lease_key], args=[owner])

    async def _walk(self, owner: str, batch_size: int,
                    limit: int) -> AsyncIterator[RewrapProgress]:
        keys = await self._keyring.refresh()
        state = await self._load_state(keys)
        counts = await self._store.version_counts()
        start_remaining = _remaining(counts, state.kek, state.fp)
        began, moved_now, walks = time.monotonic(), 0, 0

        def progress(complete: bool) -> RewrapProgress:
            left = 0 if complete else max(start_remaining - moved_now, 0)
            rate = moved_now / max(time.monotonic() - began, 1e-6)
            return RewrapProgress(state.done, state.done + left, rate,
                                  left / rate if rate > 0 else 0.0, complete,
                                  state.kek, state.fp, state.skipped)

        yield progress(start_remaining == 0)
        if start_remaining == 0:
            return
        while True:
            with redis_errors():
                cursor, batch = await self._redis.scan(
                    state.cursor, match=self._store.record_pattern, count=batch_size)
            keys = await self._keyring.snapshot()
            if (keys.kek.version, self._keyring.fingerprint_write_key(keys).version) != (
                    state.kek, state.fp):
                # A rotation mid-run: moving on toward the old targets would move
                # records written under the new versions back. The next run walks
                # afresh toward the new ones.
                yield progress(False)
                return
            moved, skipped = await self._move(batch, keys, state)
            state.cursor, state.done, state.skipped = int(cursor), state.done + moved, (
                state.skipped + skipped)
            moved_now += moved
            await self._save(state, owner)
            if state.cursor == 0:
                walks += 1
                left = _remaining(await self._store.version_counts(), state.kek, state.fp)
                start_remaining = moved_now + left
                if left == 0 or walks >= _WALKS:
                    yield progress(left == 0)
                    return
            yield progress(False)
            if limit and moved_now >= limit:
                return

    async def _move(self, batch: Sequence[bytes | str], keys: KeySnapshot,
                    state: _State) -> tuple[int, int]:
        """Move the batch's records that are on old versions; (moved, skipped)."""
        pending: list[bytes | str] = list(batch)
        moved = 0
        for _ in range(_RETRIES):
            moves = [m for m in await self._plan(pending, keys, state) if m is not None]
            outcomes = await self._store.rewrap_many(moves)
            moved += outcomes.count(REWRAP_MOVED)
            conflicts = outcomes.count(REWRAP_CONFLICT)
            pending = [self._store.record_key(old.tenant, old.token)
                       for (old, _), outcome in zip(moves, outcomes, strict=True)
                       if outcome == REWRAP_CHANGED]
            if not pending:
                return moved, conflicts
        return moved, conflicts + len(pending)

    async def _plan(self, batch: Sequence[bytes | str], keys: KeySnapshot,
                    state: _State) -> list[tuple[StoredRecord, StoredRecord] | None]:
        if not batch:
            return []
        records = await self._store.load_many(batch)
        planned: list[tuple[StoredRecord, StoredRecord] | None] = []
        for index, r in enumerate(records):
            if index and index % _SLICE == 0:
                await asyncio.sleep(0)  # let calls in flight run between crypto slices
            if r is not None and (r.envelope.kek_version != state.kek
                                  or r.fingerprint_version != state.fp):
                planned.append(self._rewrapped(r, keys, state))
        return planned

    @staticmethod
    def _rewrapped(record: StoredRecord, keys: KeySnapshot,
                   state: _State) -> tuple[StoredRecord, StoredRecord] | None:
        kek = keys.kek_version(record.envelope.kek_version)
        if kek is None:
            return None  # a version this process does not know yet: left for the next run
        try:
            plaintext = kek.open(record.envelope, tenant=record.tenant, token=record.token)
            pan = card_from_bytes(plaintext).pan
        except (DecryptionFailed, DecodeError):
            return None  # unreadable records are left for an operator; counted as remaining
        new = record
        if record.envelope.kek_version != state.kek:
            new = replace(new, envelope=keys.kek.seal(plaintext, tenant=record.tenant,
                                                      token=record.token))
        if record.fingerprint_version != state.fp:
            fingerprint_key = keys.fingerprint_version(state.fp)
            if fingerprint_key is None:
                return None  # not in this snapshot: left for the next run
            new = replace(new, fingerprint=fingerprint_key.fingerprint(record.tenant, pan),
                          fingerprint_version=fingerprint_key.version)
        return record, new

    async def _load_state(self, keys: KeySnapshot) -> _State:
        with redis_errors():
            raw = await self._redis.hgetall(self._state_key)
        saved = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        # Fingerprints move to the write version only: a freshly rotated one
        # stays lookup-only until it has settled (see KeySnapshot).
        target = (keys.kek.version, self._keyring.fingerprint_write_key(keys).version)
        if (saved.get("kek"), saved.get("fp")) != target:
            # A new rotation: a fresh walk toward the new targets.
            return _State(0, target[0], target[1], 0, 0)
        return _State(saved.get("cursor", 0), target[0], target[1], saved.get("done", 0),
                      saved.get("skipped", 0))

    async def _save(self, state: _State, owner: str) -> None:
        args: list[str] = [owner, str(_LEASE_MS)]
        for name, value in state.fields().items():
            args += [name, value]
        with redis_errors():
            saved = await self._save_script(keys=[self._state_key, self._lease_key], args=args)
        if not int(saved):
            raise Aborted(REWRAP_LEASE_LOST, "this rewrap lost its lease to another run; "
                          "its progress is kept by that run")
