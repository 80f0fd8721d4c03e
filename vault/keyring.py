"""Versioned vault keys, stored in Redis wrapped under the root key.

Layout of the Redis hash ``{prefix}:vault:keys`` (one hash, so every vault
process sees a change at once):

- ``root``: id of the root key that wraps the material (marks "initialized").
- ``gen``: generation counter; every change to the keyring increments it, and
  processes compare it to decide whether to reload.
- ``{kind}:current``: the version new writes use, for kind in
  ``kek``, ``fp``, ``seal``, ``sign``.
- ``{kind}:last``: the highest version ever created (versions are never reused,
  so a retired version number can never name other material).
- ``{kind}:{version}``: JSON ``{"id", "ctime", "expire", "superseded",
  "wrapped"}`` where ``wrapped`` is the key material under the root key with
  the field name and key id as associated data. A retired version is a
  deleted field.
- ``audit:1``: the audit log's MAC key. Stored like the others (not derived
  from the root) so a root rotation, which rewraps every entry, keeps the
  whole audit chain verifiable.
- ``shares:*``: the production share set (SLIP-39 identifier, k, n).

Reads: every present ``kek`` version opens records, every present ``fp``
version is consulted for "same card" lookups (current first), every present
unexpired ``seal`` key opens sealed cards, every present ``sign`` key signs the
key set. The key lifecycle (rotate, rewrap, retire, production unseal) only
adds and removes fields and bumps ``gen`` (see ``vault.lifecycle``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Protocol

from redis.asyncio import Redis

from common.clock import Clock
from common.errors import FailedPrecondition, Internal
from common.store_errors import redis_errors
from vault.crypto import (
    DecryptionFailed,
    FingerprintKey,
    Kek,
    RootKey,
    SealingKey,
    SigningKey,
    new_symmetric_key,
)

KEK = "kek"
FINGERPRINT = "fp"
SEALING = "seal"
SIGNING = "sign"
AUDIT = "audit"
ROTATABLE_KINDS = (KEK, FINGERPRINT, SEALING, SIGNING)
KINDS = (*ROTATABLE_KINDS, AUDIT)
ROOT_FIELD = "root"
GENERATION_FIELD = "gen"

ROOT_KEY_MISMATCH = "ROOT_KEY_MISMATCH"
KEYRING_MISSING = "KEYRING_MISSING"
KEYRING_CORRUPT = "KEYRING_CORRUPT"

# Writes every field of a fresh keyring only if none exists yet, so vault
# processes starting together agree on one version 1 of every class.
_INIT_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'root') == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# Applies a keyring change computed from generation ARGV[1].
# ARGV: expected gen, number of fields to set (n), n field/value pairs, then
# fields to delete. Returns the new generation, or 0 if gen moved meanwhile.
_CHANGE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[2])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 3, 2 + 2 * n)) end
if #ARGV > 2 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 3 + 2 * n)) end
return redis.call('HINCRBY', KEYS[1], 'gen', 1)
"""

# Whether the change carrying marker ARGV[2] (in field ARGV[1]) landed: 1 if
# so. If not, the generation moves on, so that change, should it still reach
# Redis (sent before its connection broke), finds another generation than it
# expects and is refused: "did not land" stays true.
_FENCE_SCRIPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 1 end
redis.call('HINCRBY', KEYS[1], 'gen', 1)
return 0
"""

# Adds the audit MAC key to a keyring created before it existed, once.
_ADD_AUDIT_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'audit:current') == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('HINCRBY', KEYS[1], 'gen', 1)
return 1
"""


def keys_key(prefix: str) -> str:
    return f"{prefix}:vault:keys"


def entry_field(kind: str, version: int) -> str:
    return f"{kind}:{version}"


def current_field(kind: str) -> str:
    return f"{kind}:current"


def last_field(kind: str) -> str:
    return f"{kind}:last"


def parse_entry_field(field: str) -> tuple[str, int] | None:
    """(kind, version) of a key-version field, None for any other field."""
    kind, _, version = field.partition(":")
    if kind in KINDS and version.isdigit():
        return kind, int(version)
    return None


# --- root key providers ---------------------------------------------------------


class RootKeyProvider(Protocol):
    """Where the root key comes from. Production providers (custodian shares)
    raise FAILED_PRECONDITION while the vault is sealed."""

    @property
    def sealed(self) -> bool: ...

    async def root_key(self) -> RootKey: ...

    def seal(self) -> None:
        """Forget the root key (production: after the root was rotated elsewhere)."""


class DevKeyFile:
    """Development root key in a JSON file (mode 0600) created on first use.

    The file is written to a private temporary name and then hard-linked into
    place, so concurrent first starts never see a half-written file and never
    overwrite each other: the first link wins and the rest read it.
    """

    FORMAT = "cardlink.vault.dev-root-key.v1"

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._key: RootKey | None = None

    @property
    def sealed(self) -> bool:
        return False

    def seal(self) -> None:
        """A development vault cannot be sealed: the key is in the file."""

    async def root_key(self) -> RootKey:
        if self._key is None:
            self._key = RootKey(self._load_or_create())
        return self._key

    def _load_or_create(self) -> bytes:
        if not self._path.exists():
            self._create()
        mode = self._path.stat().st_mode
        if mode & 0o077:
            raise Internal(KEYRING_CORRUPT,
                           f"development key file {self._path} must not be readable by others")
        document = json.loads(self._path.read_text(encoding="utf-8"))
        if document.get("format") != self.FORMAT:
            raise Internal(KEYRING_CORRUPT, f"{self._path} is not a CardLink development key")
        return base64.b64decode(document["key"], validate=True)

    def _create(self) -> None:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        document = {"format": self.FORMAT, "key": base64.b64encode(new_symmetric_key()).decode()}
        temporary = self._path.with_name(f".{self._path.name}.{secrets.token_hex(8)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle)
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temporary, self._path)
        finally:
            temporary.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"DevKeyFile({str(self._path)!r})"


# --- key snapshot -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealingKeyVersion:
    """An HPKE key pair; ``expire_time`` is set once it is no longer current."""

    version: int
    key: SealingKey
    create_time: float
    expire_time: float | None

    @property
    def key_id(self) -> str:
        return self.key.key_id

    def usable(self, now: float) -> bool:
        return self.expire_time is None or now < self.expire_time


@dataclass(frozen=True, slots=True)
class SigningKeyVersion:
    version: int
    key: SigningKey
    create_time: float


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    """One immutable view of the keyring; swapped whole when ``gen`` moves."""

    generation: int
    kek: Kek
    keks: Mapping[int, Kek]
    fingerprint_keys: tuple[FingerprintKey, ...]  # current first
    sealing_keys: tuple[SealingKeyVersion, ...]  # current first
    signing_keys: tuple[SigningKeyVersion, ...]
    audit_key: bytes = dc_field(repr=False)
    # Fingerprint version -> create time (when it was rotated in).
    fingerprint_create_times: Mapping[int, float] = dc_field(default_factory=dict)

    @property
    def fingerprint_key(self) -> FingerprintKey:
        """The current fingerprint key (lookups consult it first)."""
        return self.fingerprint_keys[0]

    def fingerprint_write_key(self, now: float, settle_seconds: float) -> FingerprintKey:
        """The fingerprint version new mappings are written under (tokenize, rewrap).

        A version rotated in less than ``settle_seconds`` ago is lookup-only:
        a process whose snapshot predates the rotation (up to one keyring
        refresh) looks only at older versions, and would mint a second token
        for a card mapped under the new one. Until then the newest settled
        version is written; the oldest live version always qualifies.
        """
        for key in self.fingerprint_keys:  # current first, then newest first
            created = self.fingerprint_create_times.get(key.version, float("-inf"))
            if created + settle_seconds <= now:
                return key
        return min(self.fingerprint_keys, key=lambda k: k.version)

    def fingerprint_version(self, version: int) -> FingerprintKey | None:
        for key in self.fingerprint_keys:
            if key.version == version:
                return key
        return None

    def kek_version(self, version: int) -> Kek | None:
        return self.keks.get(version)

    def sealing_key(self, key_id: str) -> SealingKeyVersion | None:
        for entry in self.sealing_keys:
            if entry.key_id == key_id:
                return entry
        return None

    def usable_sealing_keys(self, now: float) -> tuple[SealingKeyVersion, ...]:
        return tuple(entry for entry in self.sealing_keys if entry.usable(now))


@dataclass(frozen=True, slots=True)
class _Entry:
    kind: str
    version: int
    key_id: str
    create_time: float
    expire_time: float | None
    material: bytes = dc_field(repr=False)


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """A key version's public facts, readable without the root key."""

    kind: str
    version: int
    key_id: str
    create_time: float
    expire_time: float | None
    supersede_time: float | None


def _current_first(entries: list[_Entry], current: int) -> list[_Entry]:
    return sorted(entries, key=lambda e: (e.version != current, -e.version))


def _build_snapshot(generation: int, entries: list[_Entry],
                    current: Mapping[str, int]) -> KeySnapshot:
    by_kind: dict[str, list[_Entry]] = {kind: [] for kind in KINDS}
    for entry in entries:
        by_kind[entry.kind].append(entry)
    keks = {e.version: Kek(e.version, e.material) for e in by_kind[KEK]}
    if current[KEK] not in keks or not by_kind[AUDIT]:
        raise Internal(KEYRING_CORRUPT, "the current key-encrypting key is missing")
    return KeySnapshot(
        generation=generation,
        kek=keks[current[KEK]],
        keks=keks,
        fingerprint_keys=tuple(
            FingerprintKey(e.version, e.material)
            for e in _current_first(by_kind[FINGERPRINT], current[FINGERPRINT])
        ),
        sealing_keys=tuple(
            SealingKeyVersion(e.version, SealingKey.from_private_bytes(e.material),
                              e.create_time, e.expire_time)
            for e in _current_first(by_kind[SEALING], current[SEALING])
        ),
        signing_keys=tuple(
            SigningKeyVersion(e.version, SigningKey.from_private_bytes(e.material), e.create_time)
            for e in _current_first(by_kind[SIGNING], current[SIGNING])
        ),
        audit_key=_current_first(by_kind[AUDIT], current[AUDIT])[0].material,
        fingerprint_create_times={e.version: e.create_time for e in by_kind[FINGERPRINT]},
    )


def encode_entry(root: RootKey, kind: str, version: int, key_id: str, material: bytes,
                 create_time: float, expire_time: float | None = None) -> tuple[str, str]:
    """(field, value) of one key version wrapped under ``root``."""
    field = entry_field(kind, version)
    wrapped = root.wrap(material, field=field, key_id=key_id)
    value = json.dumps({"id": key_id, "ctime": create_time, "expire": expire_time,
                        "superseded": None, "wrapped": base64.b64encode(wrapped).decode()})
    return field, value


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def entry_info(field: str, raw: str) -> EntryInfo:
    """The public facts of a stored entry (no unwrapping)."""
    parsed = parse_entry_field(field)
    if parsed is None:
        raise ValueError(f"{field} is not a key version")
    document: dict[str, Any] = json.loads(raw)
    return EntryInfo(parsed[0], parsed[1], str(document["id"]), float(document["ctime"]),
                     _optional_float(document.get("expire")),
                     _optional_float(document.get("superseded")))


def mark_superseded(raw: str, when: float, expire_time: float | None = None) -> str:
    """The stored entry with a supersede time (and, for sealing keys, an expiry).

    The wrapped material is untouched: only the JSON around it changes.
    """
    document: dict[str, Any] = json.loads(raw)
    document["superseded"] = when
    if expire_time is not None:
        document["expire"] = expire_time
    return json.dumps(document)


def rewrap_entry(old: RootKey, new: RootKey, field: str, raw: str) -> str:
    """The stored entry with its material rewrapped from ``old`` to ``new`` root."""
    document: dict[str, Any] = json.loads(raw)
    key_id = str(document["id"])
    material = old.unwrap(base64.b64decode(document["wrapped"]), field=field, key_id=key_id)
    document["wrapped"] = base64.b64encode(new.wrap(material, field=field, key_id=key_id)).decode()
    return json.dumps(document)


def _decode_entry(root: RootKey, field: str, raw: str) -> _Entry:
    info = entry_info(field, raw)
    wrapped = base64.b64decode(json.loads(raw)["wrapped"])
    material = root.unwrap(wrapped, field=field, key_id=info.key_id)
    return _Entry(info.kind, info.version, info.key_id, info.create_time, info.expire_time,
                  material)


def new_key_material(kind: str) -> tuple[str, bytes]:
    """(key id, material) of a fresh key of ``kind``; version-independent ids for
    asymmetric keys (derived from the public key), None for symmetric ones."""
    if kind == SEALING:
        sealing = SealingKey.generate()
        return sealing.key_id, sealing.private_bytes()
    if kind == SIGNING:
        signing = SigningKey.generate()
        return signing.key_id, signing.private_bytes()
    return "", new_symmetric_key()


def new_version_entry(root: RootKey, kind: str, version: int, now: float) -> tuple[str, str]:
    key_id, material = new_key_material(kind)
    return encode_entry(root, kind, version, key_id or f"{kind}-{version}", material, now)


def new_keyring_fields(root: RootKey, now: float) -> dict[str, str]:
    """Every field of a fresh keyring: version 1 of each class, wrapped under ``root``."""
    fields = dict(new_version_entry(root, kind, 1, now) for kind in KINDS)
    fields.update({current_field(kind): "1" for kind in KINDS})
    fields.update({last_field(kind): "1" for kind in KINDS})
    fields[GENERATION_FIELD] = "1"
    fields[ROOT_FIELD] = root.key_id
    return fields


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- the keyring ------------------------------------------------------------------


DEFAULT_SETTLE_SECONDS = 30.0  # CARDLINK_KEY_SETTLE_S


class Keyring:
    """The process's cached view of the vault keys, refreshed cheaply.

    ``snapshot()`` returns the cached keys and, at most every
    ``refresh_seconds``, reads only the ``gen`` field (one HGET) to learn
    whether another process changed the keyring; only then is it reloaded.
    ``refresh()`` forces that check, for a key version or key id this process
    has not seen yet.
    """

    def __init__(self, redis: Redis, *, prefix: str, root_keys: RootKeyProvider, clock: Clock,
                 refresh_seconds: float = 1.0, create_if_missing: bool = True,
                 settle_seconds: float = DEFAULT_SETTLE_SECONDS) -> None:
        self._redis = redis
        self.settle_seconds = settle_seconds
        self._key = keys_key(prefix)
        self._root_keys = root_keys
        self._clock = clock
        self._refresh_seconds = refresh_seconds
        self._create_if_missing = create_if_missing
        self._snapshot: KeySnapshot | None = None
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()
        self._init_script = redis.register_script(_INIT_SCRIPT)
        self._add_audit_script = redis.register_script(_ADD_AUDIT_SCRIPT)
        self._change_script = redis.register_script(_CHANGE_SCRIPT)
        self._fence_script = redis.register_script(_FENCE_SCRIPT)

    @property
    def key(self) -> str:
        """The Redis hash holding the keyring."""
        return self._key

    @property
    def root_keys(self) -> RootKeyProvider:
        return self._root_keys

    @property
    def sealed(self) -> bool:
        return self._root_keys.sealed

    async def create(self, root: RootKey, extra: Mapping[str, str] | None = None) -> bool:
        """Write a fresh keyring under ``root`` (plus ``extra`` fields) unless one
        exists; True if written."""
        fields = {**new_keyring_fields(root, self._clock.now()), **(extra or {})}
        with redis_errors():
            written = await self._init_script(keys=[self._key], args=_flatten(fields))
        return bool(written)

    async def change(self, generation: str, set_fields: Mapping[str, str],
                     delete: Sequence[str] = ()) -> bool:
        """Apply a change computed from keyring ``generation`` and bump ``gen``;
        False (nothing written) if another change came first."""
        args = [generation, str(len(set_fields)), *_flatten(set_fields), *delete]
        with redis_errors():
            moved = await self._change_script(keys=[self._key], args=args)
        if moved:
            await self.refresh()  # this process sees its own change at once
        return bool(moved)

    async def landed(self, field: str, marker: str) -> bool:
        """Whether the change that set ``field`` to ``marker`` landed; if it did not,
        it never will (for a change whose reply was lost)."""
        with redis_errors():
            return bool(await self._fence_script(keys=[self._key], args=[field, marker]))

    def invalidate(self) -> None:
        """Drop the cached snapshot (after the root key changed, or a seal)."""
        self._snapshot = None
        self._checked_at = float("-inf")

    def _fresh(self) -> KeySnapshot | None:
        current = self._snapshot
        if current is not None and self._clock.now() - self._checked_at < self._refresh_seconds:
            return current
        return None

    def fingerprint_write_key(self, keys: KeySnapshot) -> FingerprintKey:
        """``keys``' fingerprint version for new mappings now (see KeySnapshot)."""
        return keys.fingerprint_write_key(self._clock.now(), self.settle_seconds)

    async def snapshot(self) -> KeySnapshot:
        return self._fresh() or await self._check(force=False)

    async def refresh(self) -> KeySnapshot:
        """Check the generation now and reload if it moved."""
        return await self._check(force=True)

    async def _check(self, *, force: bool) -> KeySnapshot:
        async with self._lock:
            # Callers that queued behind another's check need not repeat it.
            fresh = None if force else self._fresh()
            if fresh is not None:
                return fresh
            self._checked_at = self._clock.now()
            current = self._snapshot
            if current is not None:
                with redis_errors():
                    generation = await self._redis.hget(self._key, GENERATION_FIELD)
                if generation is not None and int(generation) == current.generation:
                    return current
            self._snapshot = await self._load()
            return self._snapshot

    async def _load(self) -> KeySnapshot:
        root = await self._root_keys.root_key()
        with redis_errors():
            fields = await self._redis.hgetall(self._key)
            if not fields:
                if not self._create_if_missing:
                    raise FailedPrecondition(KEYRING_MISSING, "the vault is not initialized")
                await self.create(root)
                fields = await self._redis.hgetall(self._key)
            if current_field(AUDIT) not in {_text(k) for k in fields}:
                # A keyring from before the audit chain: add its MAC key once.
                field, value = new_version_entry(root, AUDIT, 1, self._clock.now())
                added = {field: value}
                added.update({current_field(AUDIT): "1", last_field(AUDIT): "1"})
                await self._add_audit_script(keys=[self._key], args=_flatten(added))
                fields = await self._redis.hgetall(self._key)
        return self._parse(root, {_text(k): _text(v) for k, v in fields.items()})

    def _parse(self, root: RootKey, fields: dict[str, str]) -> KeySnapshot:
        if fields.get(ROOT_FIELD) != root.key_id:
            # Production: another process rotated the root; this one must be
            # unsealed again with the new shares.
            self._root_keys.seal()
            raise Internal(ROOT_KEY_MISMATCH,
                           "the keyring in Redis is wrapped under another root key")
        try:
            entries = [
                _decode_entry(root, field, value)
                for field, value in fields.items()
                if parse_entry_field(field) is not None
            ]
            current = {kind: int(fields[current_field(kind)]) for kind in KINDS}
            return _build_snapshot(int(fields[GENERATION_FIELD]), entries, current)
        except (DecryptionFailed, KeyError, ValueError):
            raise Internal(KEYRING_CORRUPT, "the keyring in Redis does not open") from None


async def read_fields(redis: Redis, key: str) -> dict[str, str]:
    """The keyring hash as text."""
    with redis_errors():
        fields = await redis.hgetall(key)
    return {_text(k): _text(v) for k, v in fields.items()}


def _flatten(fields: Mapping[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]
