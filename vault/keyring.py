"""Versioned vault keys, stored in Redis wrapped under the root key.

Layout of the Redis hash ``{prefix}:vault:keys`` (one hash, so every vault
process sees a change at once):

- ``root``: id of the root key that wraps the material (marks "initialized").
- ``gen``: generation counter; every change to the keyring increments it, and
  processes compare it to decide whether to reload.
- ``{kind}:current``: the version new writes use, for kind in
  ``kek``, ``fp``, ``seal``, ``sign``.
- ``{kind}:{version}``: JSON ``{"id", "ctime", "expire", "wrapped"}`` where
  ``wrapped`` is the key material under the root key with the field name and
  key id as associated data. A retired version is a deleted field.

Reads: every present ``kek`` version opens records, every present ``fp``
version is consulted for "same card" lookups (current first), every present
unexpired ``seal`` key opens sealed cards, every present ``sign`` key signs the
key set. The key lifecycle (rotate, rewrap, retire, production unseal) only
adds and removes fields and bumps ``gen``; nothing here changes for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.clock import Clock
from common.errors import Internal, Unavailable
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
KINDS = (KEK, FINGERPRINT, SEALING, SIGNING)
ROOT_FIELD = "root"
GENERATION_FIELD = "gen"

ROOT_KEY_MISMATCH = "ROOT_KEY_MISMATCH"
KEYRING_CORRUPT = "KEYRING_CORRUPT"
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"

# Writes every field of a fresh keyring only if none exists yet, so vault
# processes starting together agree on one version 1 of every class.
_INIT_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'root') == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def keys_key(prefix: str) -> str:
    return f"{prefix}:vault:keys"


def entry_field(kind: str, version: int) -> str:
    return f"{kind}:{version}"


def current_field(kind: str) -> str:
    return f"{kind}:current"


@contextlib.contextmanager
def redis_errors(reason: str = STORE_UNAVAILABLE) -> Iterator[None]:
    """Turn Redis failures into UNAVAILABLE, without leaking internals."""
    try:
        yield
    except RedisError:
        raise Unavailable(reason, "the vault store is unavailable; retry") from None


# --- root key providers ---------------------------------------------------------


class RootKeyProvider(Protocol):
    """Where the root key comes from. Production providers (custodian shares)
    raise FAILED_PRECONDITION while the vault is sealed."""

    async def root_key(self) -> RootKey: ...


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
    material: bytes


def _current_first(entries: list[_Entry], current: int) -> list[_Entry]:
    return sorted(entries, key=lambda e: (e.version != current, -e.version))


def _build_snapshot(generation: int, entries: list[_Entry],
                    current: Mapping[str, int]) -> KeySnapshot:
    by_kind: dict[str, list[_Entry]] = {kind: [] for kind in KINDS}
    for entry in entries:
        by_kind[entry.kind].append(entry)
    keks = {e.version: Kek(e.version, e.material) for e in by_kind[KEK]}
    if current[KEK] not in keks:
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
    )


def encode_entry(root: RootKey, kind: str, version: int, key_id: str, material: bytes,
                 create_time: float, expire_time: float | None = None) -> tuple[str, str]:
    """(field, value) of one key version wrapped under ``root``; also for the key tool."""
    field = entry_field(kind, version)
    wrapped = root.wrap(material, field=field, key_id=key_id)
    value = json.dumps({"id": key_id, "ctime": create_time, "expire": expire_time,
                        "wrapped": base64.b64encode(wrapped).decode()})
    return field, value


def _decode_entry(root: RootKey, field: str, raw: str) -> _Entry:
    kind, _, version = field.partition(":")
    document: dict[str, Any] = json.loads(raw)
    key_id = str(document["id"])
    wrapped = base64.b64decode(document["wrapped"])
    material = root.unwrap(wrapped, field=field, key_id=key_id)
    expire = document.get("expire")
    return _Entry(kind, int(version), key_id, float(document["ctime"]),
                  None if expire is None else float(expire), material)


def _new_keyring_fields(root: RootKey, now: float) -> dict[str, str]:
    sealing, signing = SealingKey.generate(), SigningKey.generate()
    fields = dict(
        [
            encode_entry(root, KEK, 1, "kek-1", new_symmetric_key(), now),
            encode_entry(root, FINGERPRINT, 1, "fp-1", new_symmetric_key(), now),
            encode_entry(root, SEALING, 1, sealing.key_id, sealing.private_bytes(), now),
            encode_entry(root, SIGNING, 1, signing.key_id, signing.private_bytes(), now),
        ]
    )
    fields.update({current_field(kind): "1" for kind in KINDS})
    fields[GENERATION_FIELD] = "1"
    fields[ROOT_FIELD] = root.key_id
    return fields


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- the keyring ------------------------------------------------------------------


class Keyring:
    """The process's cached view of the vault keys, refreshed cheaply.

    ``snapshot()`` returns the cached keys and, at most every
    ``refresh_seconds``, reads only the ``gen`` field (one HGET) to learn
    whether another process changed the keyring; only then is it reloaded.
    ``refresh()`` forces that check, for a key version or key id this process
    has not seen yet.
    """

    def __init__(self, redis: Redis, *, prefix: str, root_keys: RootKeyProvider, clock: Clock,
                 refresh_seconds: float = 1.0) -> None:
        self._redis = redis
        self._key = keys_key(prefix)
        self._root_keys = root_keys
        self._clock = clock
        self._refresh_seconds = refresh_seconds
        self._snapshot: KeySnapshot | None = None
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()
        self._init_script = redis.register_script(_INIT_SCRIPT)

    def _fresh(self) -> KeySnapshot | None:
        current = self._snapshot
        if current is not None and self._clock.now() - self._checked_at < self._refresh_seconds:
            return current
        return None

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
                await self._init_script(keys=[self._key],
                                        args=_flatten(_new_keyring_fields(root, self._clock.now())))
                fields = await self._redis.hgetall(self._key)
        return self._parse(root, {_text(k): _text(v) for k, v in fields.items()})

    def _parse(self, root: RootKey, fields: dict[str, str]) -> KeySnapshot:
        if fields.get(ROOT_FIELD) != root.key_id:
            raise Internal(ROOT_KEY_MISMATCH,
                           "the keyring in Redis is wrapped under another root key")
        try:
            entries = [
                _decode_entry(root, field, value)
                for field, value in fields.items()
                if field.partition(":")[0] in KINDS and field.partition(":")[2] != "current"
            ]
            current = {kind: int(fields[current_field(kind)]) for kind in KINDS}
            return _build_snapshot(int(fields[GENERATION_FIELD]), entries, current)
        except (DecryptionFailed, KeyError, ValueError):
            raise Internal(KEYRING_CORRUPT, "the keyring in Redis does not open") from None


def _flatten(fields: Mapping[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]
