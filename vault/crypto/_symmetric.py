"""Symmetric recipes: record envelopes, key material under the root key, fingerprints.

This module and ``_asymmetric`` are the only places that touch raw keys and
AEADs. Callers get small recipes whose context (tenant, token, key version)
is a required argument, so a ciphertext cannot be opened, or produced, for
the wrong record by accident.
"""

from __future__ import annotations

import hmac as _hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from vault.crypto._errors import DecryptionFailed

KEY_BYTES = 32
NONCE_BYTES = 12
RECORD_LABEL = b"cardlink.vault.v1 card"
KEY_MATERIAL_LABEL = b"cardlink.vault.v1 key material"
FINGERPRINT_LABEL = b"cardlink.vault.v1 fingerprint"
ROOT_ID_LABEL = b"cardlink.vault.v1 root key id"
# Derived per-tenant fingerprint contexts kept per key version. Tenants are few
# (partners), so the bound only guards memory against a flood of tenant names.
_MAX_CACHED_TENANTS = 4096


def new_symmetric_key() -> bytes:
    """A fresh 256-bit key from the OS CSPRNG."""
    return AESGCM.generate_key(bit_length=256)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError("key must be 32 bytes")
    return key


def _check_version(version: int) -> int:
    if not isinstance(version, int) or version < 1:
        raise ValueError("key version must be a positive integer")
    return version


def _join(*parts: bytes) -> bytes:
    """NUL-join context parts; a NUL inside a part would make the join ambiguous."""
    if any(b"\x00" in part for part in parts[1:]):
        raise ValueError("context parts must not contain NUL")
    return b"\x00".join(parts)


def record_aad(tenant: str, token: str, kek_version: int) -> bytes:
    """Associated data binding a record's ciphertext to its tenant, token and KEK version."""
    return _join(RECORD_LABEL, tenant.encode(), token.encode(), str(kek_version).encode())


def wrap_key(wrapping_key: bytes, key: bytes) -> bytes:
    """RFC 3394 AES key wrap (deterministic, no nonce to manage)."""
    return aes_key_wrap(wrapping_key, key)


def unwrap_key(wrapping_key: bytes, wrapped: bytes) -> bytes:
    """Inverse of :func:`wrap_key`; raises :class:`DecryptionFailed` on any mismatch."""
    try:
        return aes_key_unwrap(wrapping_key, wrapped)
    except (InvalidUnwrap, ValueError):
        raise DecryptionFailed("wrapped key did not open") from None


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104); the fingerprint primitive."""
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869) extract-and-expand."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One record's encrypted payload, as stored.

    ``wrapped_key`` is the record's own AES-256 data key under KEK version
    ``kek_version``. The data key encrypts exactly one message, so GCM's
    per-key invocation limit (NIST SP 800-38D) can never be reached and a
    random 96-bit nonce can never repeat under one key.
    """

    ciphertext: bytes
    nonce: bytes
    wrapped_key: bytes
    kek_version: int

    def __repr__(self) -> str:
        return f"Envelope(kek_version={self.kek_version}, {len(self.ciphertext)} bytes)"


class Kek:
    """One version of the key-encrypting key: seals and opens record envelopes."""

    __slots__ = ("_key", "version")

    def __init__(self, version: int, key: bytes) -> None:
        self.version = _check_version(version)
        self._key = _check_key(key)

    def seal(self, plaintext: bytes, *, tenant: str, token: str) -> Envelope:
        aad = record_aad(tenant, token, self.version)
        data_key = new_symmetric_key()
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
        return Envelope(ciphertext, nonce, wrap_key(self._key, data_key), self.version)

    def open(self, envelope: Envelope, *, tenant: str, token: str) -> bytes:
        """The plaintext, or :class:`DecryptionFailed` if anything does not match."""
        if envelope.kek_version != self.version:
            raise DecryptionFailed("record names another key version")
        data_key = unwrap_key(self._key, envelope.wrapped_key)
        aad = record_aad(tenant, token, self.version)
        try:
            return AESGCM(data_key).decrypt(envelope.nonce, envelope.ciphertext, aad)
        except (InvalidTag, ValueError):
            raise DecryptionFailed("record did not open") from None

    def __repr__(self) -> str:
        return f"Kek(version={self.version})"


class RootKey:
    """The root of the key hierarchy: wraps every versioned key stored in Redis.

    Each wrap uses a random nonce under the root key; the root wraps one
    message per key version ever created, far below GCM's 2**32 limit for
    random nonces. Which field and which key id are the associated
    data, so wrapped material moved to another field does not open.
    """

    __slots__ = ("_aead", "key_id")

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(_check_key(key))
        # A public identifier so a vault can tell "wrong root key" from "tampered".
        self.key_id = hmac_sha256(key, ROOT_ID_LABEL)[:8].hex()

    def wrap(self, material: bytes, *, field: str, key_id: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        aad = _join(KEY_MATERIAL_LABEL, field.encode(), key_id.encode())
        return nonce + self._aead.encrypt(nonce, material, aad)

    def unwrap(self, blob: bytes, *, field: str, key_id: str) -> bytes:
        nonce, ciphertext = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
        aad = _join(KEY_MATERIAL_LABEL, field.encode(), key_id.encode())
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except (InvalidTag, ValueError):
            raise DecryptionFailed("key material did not open") from None

    def __repr__(self) -> str:
        return f"RootKey(key_id={self.key_id!r})"


class FingerprintKey:
    """One version of the fingerprint key: keyed, per-tenant hashes of PANs.

    The per-tenant key is HKDF(version key, info = label NUL tenant), so one
    card has unrelated fingerprints in two tenants. Derivation runs once per
    tenant; each call then copies a keyed HMAC context.
    """

    __slots__ = ("_key", "_tenant_macs", "version")

    def __init__(self, version: int, key: bytes) -> None:
        self.version = _check_version(version)
        self._key = _check_key(key)
        self._tenant_macs: dict[str, hmac.HMAC] = {}

    def fingerprint(self, tenant: str, pan: str) -> str:
        """Hex HMAC-SHA256 of the PAN under this tenant's key."""
        base = self._tenant_macs.get(tenant)
        if base is None:
            base = self._derive(tenant)
        mac = base.copy()
        mac.update(pan.encode("ascii"))
        return mac.finalize().hex()

    def _derive(self, tenant: str) -> hmac.HMAC:
        info = _join(FINGERPRINT_LABEL, tenant.encode())
        mac = hmac.HMAC(hkdf_sha256(self._key, salt=None, info=info), hashes.SHA256())
        if len(self._tenant_macs) >= _MAX_CACHED_TENANTS:
            self._tenant_macs.clear()
        self._tenant_macs[tenant] = mac
        return mac

    def __repr__(self) -> str:
        return f"FingerprintKey(version={self.version})"


AUDIT_LABEL = b"cardlink.vault.v1 audit entry"


class AuditMacKey:
    """The audit log's chain MAC: HMAC-SHA256 over (label, previous MAC, entry).

    Each entry's MAC covers the previous entry's MAC, so altering, removing,
    inserting or reordering an entry breaks every MAC from there on, and
    nobody without the key can forge a replacement chain.
    """

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        # Keyed once; each MAC copies the keyed context (cheap on the hot path).
        self._base = hmac.HMAC(_check_key(key), hashes.SHA256())

    def mac(self, previous: str, entry: bytes) -> str:
        """Hex MAC of ``entry`` chained to the hex MAC ``previous`` ('' for the first)."""
        mac = self._base.copy()
        mac.update(_join(AUDIT_LABEL, previous.encode("ascii")) + b"\x00" + entry)
        return mac.finalize().hex()

    def verify(self, previous: str, entry: bytes, claimed: str) -> bool:
        """Constant-time check of a stored MAC."""
        return _compare(self.mac(previous, entry), claimed)

    def __repr__(self) -> str:
        return "AuditMacKey()"


def _compare(a: str, b: str) -> bool:
    return _hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))
