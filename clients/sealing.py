"""Seal cards to the vault so that only the vault can open them.

A partner pins the vault's key-set verification key(s) out of band. The
helper fetches the signed sealing key set (possibly relayed by a gateway it
does not fully trust), verifies a signature by a pinned key before reading
anything in it, caches the keys by id, and seals a card with HPKE (RFC 9180)
to the current key, bound to the partner's tenant.

    pins = load_pins(Path("vault-pins.json"))
    vault = vault_pb2_grpc.TokenVaultStub(channel)
    cache = SealingKeyCache(lambda: vault.GetSealingKeySet(
        vault_pb2.GetSealingKeySetRequest(), timeout=5), pins)
    sealed = seal_card(await cache.current(), "tenants/acme", card)
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from google.protobuf.message import DecodeError

from cardlink.vault.v1 import vault_pb2

KEY_SET_CONTEXT = b"cardlink.vault.v1 key set\x00"
SEALED_CARD_CONTEXT = b"cardlink.vault.v1 sealed card\x00"
# RFC 9180 identifiers of the one suite CardLink seals with.
KEM_X25519_HKDF_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_256_GCM = 0x0002
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
DEFAULT_REFRESH_S = 300.0
# The vault re-signs its key set at least every minute; a set much older than
# that is a replay (say by a compromised relay keeping partners on an old key).
DEFAULT_MAX_AGE_S = 3600.0
# An id the cached set lacks costs a fetch at most this often, however often asked.
MISS_REFETCH_S = 10.0


class KeySetError(Exception):
    """The key set is not signed by a pinned key, or is malformed."""


def sealed_card_info(tenant_name: str) -> bytes:
    """HPKE ``info``: binds a sealed card to the tenant it was sealed for."""
    return SEALED_CARD_CONTEXT + tenant_name.encode()


def load_pins(path: Path) -> dict[str, Ed25519PublicKey]:
    """Read pinned verification keys: ``{"keys": {"<signing key id>": "<base64>"}}``."""
    document = json.loads(path.read_text())
    return {
        key_id: Ed25519PublicKey.from_public_bytes(base64.b64decode(raw))
        for key_id, raw in document["keys"].items()
    }


@dataclass(frozen=True)
class SealingPublicKey:
    """One vault sealing key a client may seal to."""

    key_id: str
    public_key: X25519PublicKey
    current: bool
    expire_time: float | None = None  # a previous key's end of grace (epoch seconds)

    def open_at(self, now: float) -> bool:
        """Still accepted by the vault at ``now``."""
        return self.expire_time is None or self.expire_time > now


@dataclass(frozen=True)
class VerifiedKeySet:
    """Sealing keys whose signature by a pinned key has been checked."""

    keys: tuple[SealingPublicKey, ...]
    issue_time: float

    @cached_property
    def _by_id(self) -> dict[str, SealingPublicKey]:
        return {key.key_id: key for key in self.keys}

    def current(self) -> SealingPublicKey:
        for key in self.keys:
            if key.current:
                return key
        raise KeySetError("the key set names no current sealing key")

    def key(self, key_id: str, now: float) -> SealingPublicKey | None:
        """The key ``key_id``, if the set lists it and it is still open at ``now``."""
        found = self._by_id.get(key_id)
        return found if found is not None and found.open_at(now) else None


def verify_key_set(
    signed: vault_pb2.SealingKeySet,
    pins: Mapping[str, Ed25519PublicKey],
    *,
    now: float | None = None,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    not_before: float = 0.0,
) -> VerifiedKeySet:
    """Check a pinned key's signature, then parse; anything else raises KeySetError.

    A set signed more than ``max_age_s`` before ``now`` (default: the wall
    clock), or before ``not_before`` (the issue time of the last set accepted),
    is refused as a replay; keys whose grace period has ended are dropped.
    """
    if not any(_signature_ok(sig, pins, signed.key_set) for sig in signed.signatures):
        raise KeySetError("the key set carries no valid signature by a pinned key")
    content = vault_pb2.SealingKeySetContent()
    try:
        content.ParseFromString(signed.key_set)
    except DecodeError:
        raise KeySetError("the signed key set does not parse") from None
    now = time.time() if now is None else now
    issue_time = content.issue_time.ToNanoseconds() / 1e9
    if issue_time < now - max_age_s or issue_time < not_before:
        raise KeySetError("the key set is older than one already seen or than its maximum age")
    keys = tuple(_public_key(k) for k in content.keys if _supported(k) and _open(k, now))
    return VerifiedKeySet(keys=keys, issue_time=issue_time)


def _open(key: vault_pb2.SealingKey, now: float) -> bool:
    """Still accepting cards: current, or previous within its grace period."""
    return not key.HasField("expire_time") or key.expire_time.ToNanoseconds() / 1e9 > now


def _signature_ok(
    sig: vault_pb2.KeySetSignature, pins: Mapping[str, Ed25519PublicKey], key_set: bytes
) -> bool:
    pinned = pins.get(sig.signing_key_id)
    if pinned is None:
        return False
    try:
        pinned.verify(sig.signature, KEY_SET_CONTEXT + key_set)
    except InvalidSignature:
        return False
    return True


def _supported(key: vault_pb2.SealingKey) -> bool:
    return (key.kem_id, key.kdf_id, key.aead_id) == (
        KEM_X25519_HKDF_SHA256,
        KDF_HKDF_SHA256,
        AEAD_AES_256_GCM,
    )


def _public_key(key: vault_pb2.SealingKey) -> SealingPublicKey:
    try:
        public = X25519PublicKey.from_public_bytes(key.public_key)
    except ValueError:
        raise KeySetError(f"sealing key {key.key_id!r} is not an X25519 key") from None
    return SealingPublicKey(
        key_id=key.key_id,
        public_key=public,
        current=key.state == vault_pb2.SealingKey.STATE_CURRENT,
        expire_time=key.expire_time.ToNanoseconds() / 1e9 if key.HasField("expire_time")
        else None,
    )


def seal_card(
    key: SealingPublicKey, tenant_name: str, card: vault_pb2.CardSecret
) -> vault_pb2.SealedCard:
    """Seal ``card`` for ``tenant_name`` (``tenants/{tenant}``) to ``key``."""
    info = sealed_card_info(tenant_name)
    ciphertext = _SUITE.encrypt(card.SerializeToString(), key.public_key, info)
    return vault_pb2.SealedCard(key_id=key.key_id, ciphertext=ciphertext)


KeySetFetcher = Callable[[], Awaitable[vault_pb2.SealingKeySet]]


class SealingKeyCache:
    """Fetches and verifies the key set at most every ``refresh_s`` seconds.

    ``refresh()`` forces a fetch: call it when the vault answers
    SEALING_KEY_UNKNOWN or SEALING_KEY_EXPIRED, then seal again.
    """

    def __init__(
        self,
        fetch: KeySetFetcher,
        pins: Mapping[str, Ed25519PublicKey],
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not pins:
            raise ValueError("at least one pinned verification key is required")
        self._fetch = fetch
        self._pins = dict(pins)
        self._refresh_s = refresh_s
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._key_set: VerifiedKeySet | None = None
        self._fetched_at = 0.0
        self._missed_at = float("-inf")

    async def refresh(self) -> VerifiedKeySet:
        last = self._key_set.issue_time if self._key_set is not None else 0.0
        self._key_set = verify_key_set(await self._fetch(), self._pins,
                                       now=self._wall_clock(), not_before=last)
        self._fetched_at = self._monotonic()
        return self._key_set

    async def key_set(self) -> VerifiedKeySet:
        if self._key_set is None or self._monotonic() - self._fetched_at > self._refresh_s:
            return await self.refresh()
        return self._key_set

    async def current(self) -> SealingPublicKey:
        return (await self.key_set()).current()

    async def key(self, key_id: str) -> SealingPublicKey:
        """The sealing key ``key_id``: from the cached set, else from a fresh one
        (a key the vault made since, fetched at most every ``MISS_REFETCH_S``);
        KeySetError if the vault lists no usable key by that id (unknown, or
        its grace period has ended)."""
        found = (await self.key_set()).key(key_id, self._wall_clock())
        now = self._monotonic()
        if found is None and now - max(self._fetched_at, self._missed_at) >= MISS_REFETCH_S:
            self._missed_at = now  # a failing fetch counts too: no storm on a struggling vault
            found = (await self.refresh()).key(key_id, self._wall_clock())
        if found is None:
            raise KeySetError(f"the vault lists no usable sealing key {key_id!r}")
        return found
