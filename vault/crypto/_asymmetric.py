"""Public-key recipes: HPKE sealing of cards, Ed25519 signing of the sealing key set.

With ``_symmetric`` the only module holding raw key objects. The HPKE
``info`` and the signature's context label are fixed here, so no caller can
seal for the wrong tenant or sign something that reads as a key set.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)

from vault.crypto._errors import DecryptionFailed, SignatureInvalid

# RFC 9180 section 7 identifiers of the one suite the vault speaks.
KEM_ID = 0x0020  # DHKEM(X25519, HKDF-SHA256)
KDF_ID = 0x0001  # HKDF-SHA256
AEAD_ID = 0x0002  # AES-256-GCM
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
SEALED_CARD_LABEL = b"cardlink.vault.v1 sealed card"
KEY_SET_LABEL = b"cardlink.vault.v1 key set"
CUSTODIAN_SHARE_INFO = b"cardlink.vault.v1 custodian share"
CUSTODIAN_KEY_SIZE = 32


def sealing_info(tenant: str) -> bytes:
    """HPKE ``info``: label NUL ``tenants/{tenant}``, so a card sealed for one tenant
    does not open for another."""
    return SEALED_CARD_LABEL + b"\x00tenants/" + tenant.encode()


def key_set_message(key_set: bytes) -> bytes:
    """What the key-set signature covers: label NUL serialized key set."""
    return KEY_SET_LABEL + b"\x00" + key_set


def _key_id(prefix: str, public_key: bytes) -> str:
    # Derived from the public key, so an id can never name two different keys.
    return prefix + hashlib.sha256(public_key).hexdigest()[:16]


def custodian_fingerprint(public_key: bytes) -> str:
    """How the audit log names a custodian key (what ``keygen-custodian`` prints)."""
    return _key_id("", public_key)


def seal(public_key: bytes, plaintext: bytes, *, tenant: str) -> bytes:
    """Seal ``plaintext`` to a raw X25519 public key (what a partner client does)."""
    recipient = X25519PublicKey.from_public_bytes(public_key)
    return SUITE.encrypt(plaintext, recipient, info=sealing_info(tenant))


def seal_custodian_share(public_key: bytes, share: bytes) -> bytes:
    """HPKE-seal one root-key share to its custodian's raw X25519 public key.

    ``info`` is the fixed custodian-share label, so a sealed card can never
    pass for a share or the other way round. Raises ValueError for a key
    that is not a usable X25519 public key (wrong size, low order).
    """
    if len(public_key) != CUSTODIAN_KEY_SIZE:
        raise ValueError("a custodian key is a raw 32-byte X25519 public key")
    recipient = X25519PublicKey.from_public_bytes(public_key)
    return SUITE.encrypt(share, recipient, info=CUSTODIAN_SHARE_INFO)


def custodian_key_usable(public_key: bytes) -> bool:
    """True if shares can be sealed to ``public_key`` (32 bytes, not a low-order point)."""
    try:
        seal_custodian_share(public_key, b"")
    except ValueError:
        return False
    return True


class SealingKey:
    """An HPKE X25519 private key with its key id."""

    __slots__ = ("_private", "key_id", "public_key")

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._private = private_key
        self.public_key = private_key.public_key().public_bytes_raw()
        self.key_id = _key_id("hpke-", self.public_key)

    @classmethod
    def generate(cls) -> SealingKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> SealingKey:
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """Raw private key, for wrapping under the root key only."""
        return self._private.private_bytes_raw()

    def open(self, sealed: bytes, *, tenant: str) -> bytes:
        """The sealed plaintext, or :class:`DecryptionFailed`."""
        try:
            return SUITE.decrypt(sealed, self._private, info=sealing_info(tenant))
        except (InvalidTag, ValueError):
            raise DecryptionFailed("sealed card did not open") from None

    def __repr__(self) -> str:
        return f"SealingKey(key_id={self.key_id!r})"


class SigningKey:
    """The vault's Ed25519 key that signs the sealing key set."""

    __slots__ = ("_private", "key_id", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key = private_key.public_key().public_bytes_raw()
        self.key_id = _key_id("vsk-", self.public_key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """Raw private key, for wrapping under the root key only."""
        return self._private.private_bytes_raw()

    def sign_key_set(self, key_set: bytes) -> bytes:
        return self._private.sign(key_set_message(key_set))

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"


def verify_key_set(public_key: bytes, key_set: bytes, signature: bytes) -> None:
    """Return if ``signature`` is the key's signature over ``key_set``; raise otherwise."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, key_set_message(key_set))
    except (InvalidSignature, ValueError):
        raise SignatureInvalid("key set signature does not verify") from None
