"""Custodian keys and sealed shares, on the custodian's side.

Each custodian has an X25519 key pair: ``NAME.key`` (0600, never leaves the
custodian) and ``NAME.pub`` (the raw 32-byte public key, base64). The key
file is JSON: the raw private key under AES-256-GCM, keyed by scrypt from the
custodian's passphrase at OWASP's recommended cost (N=2**17, r=8, p=1), so a
stolen key file alone opens nothing and guessing the passphrase offline is
slow. Key files from earlier versions (PKCS#8 PEM, encrypted with OpenSSL's
default of 2,048 PBKDF2 rounds, or unencrypted) still load.
The vault seals each new root-key share to one custodian's public key with
HPKE (RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM,
``info`` below), so whoever runs ``init`` or completes a ``rekey`` only ever
holds ciphertexts. The tool opens a custodian's own share locally, with the
private key, just before submitting it to ``Unseal``.

A sealed share file is JSON: ``{"format": ..., "custodian_public_key":
base64, "ciphertext": base64}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

SHARE_INFO = b"cardlink.vault.v1 custodian share"
SHARE_FORMAT = "cardlink.vault.v1.SealedShare"
KEY_FORMAT = "cardlink.vault.v1.CustodianKey"
_SCRYPT = {"n": 2**17, "r": 8, "p": 1}
# A key file's own parameters are bounded: a doctored file must not make the
# tool allocate without limit.
_MAX_SCRYPT = {"n": 2**18, "r": 8, "p": 2}
KEY_SIZE = 32
MIN_PASSPHRASE_CHARS = 12
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class CustodianError(Exception):
    """A custodian key or sealed share file that cannot be used (message says why)."""


@dataclass(frozen=True)
class SealedShareFile:
    custodian_public_key: bytes
    ciphertext: bytes


def fingerprint(public_key: bytes) -> str:
    """Short SHA-256 of a raw public key: what the audit log names custodians by."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def _create(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _check_passphrase(passphrase: str) -> str:
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise CustodianError(f"a custodian passphrase needs at least {MIN_PASSPHRASE_CHARS} "
                             "characters")
    return passphrase


def generate(name: Path, passphrase: Callable[[], str]) -> tuple[Path, Path, bytes]:
    """Write ``NAME.key`` (0600, encrypted under the passphrase, asked for once
    the names are known to be free) and ``NAME.pub``; (key path, pub path, raw
    public key)."""
    key_path, pub_path = Path(f"{name}.key"), Path(f"{name}.pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise CustodianError(f"{path} exists; not overwriting a key")
    secret = _check_passphrase(passphrase())
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    _create(key_path, _encrypted_key_text(private, public, secret).encode(), 0o600)
    _create(pub_path, base64.b64encode(public) + b"\n", 0o644)
    return key_path, pub_path, public


def read_public_key(path: Path) -> bytes:
    """The raw 32-byte X25519 public key in a ``.pub`` file (base64)."""
    try:
        raw = base64.b64decode(path.read_text(encoding="utf-8").strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CustodianError(f"{path} is not a custodian public key (base64 expected)") from None
    if len(raw) != KEY_SIZE:
        raise CustodianError(f"{path} is not a custodian public key (32 bytes expected, "
                             f"got {len(raw)})")
    return raw


@dataclass(frozen=True)
class PrivateKeyFile:
    key: X25519PrivateKey
    encrypted: bool  # False: a key file from before passphrases


def _key_cipher(passphrase: str, salt: bytes, n: int, r: int, p: int) -> AESGCM:
    return AESGCM(Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode()))


def _encrypted_key_text(private: X25519PrivateKey, public: bytes, passphrase: str) -> str:
    salt, nonce = os.urandom(16), os.urandom(12)
    # The public key is associated data: a file whose halves do not belong together
    # does not open.
    sealed = _key_cipher(passphrase, salt, **_SCRYPT).encrypt(
        nonce, private.private_bytes_raw(), KEY_FORMAT.encode() + public)
    document = {"format": KEY_FORMAT, "kdf": "scrypt", **_SCRYPT,
                **{name: base64.b64encode(value).decode() for name, value in (
                    ("salt", salt), ("nonce", nonce), ("public_key", public),
                    ("ciphertext", sealed))}}
    return json.dumps(document, sort_keys=True) + "\n"


def _open_key_text(path: Path, text: str, passphrase: Callable[[], str]) -> X25519PrivateKey:
    try:
        document = json.loads(text)
        if document.get("format") != KEY_FORMAT or document.get("kdf") != "scrypt":
            raise ValueError("not a custodian key file")
        cost = {name: document[name] for name in _SCRYPT}
        if any(type(value) is not int or not 1 <= value <= _MAX_SCRYPT[name]
               for name, value in cost.items()):
            raise ValueError("scrypt parameters out of bounds")
        salt, nonce, public, sealed = (base64.b64decode(document[name], validate=True) for name in
                                       ("salt", "nonce", "public_key", "ciphertext"))
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise CustodianError(f"{path} is not a custodian private key") from None
    try:
        raw = _key_cipher(passphrase(), salt, **cost).decrypt(
            nonce, sealed, KEY_FORMAT.encode() + public)
    except (InvalidTag, ValueError):
        raise CustodianError(f"{path}: wrong passphrase, or the key file is damaged") from None
    return X25519PrivateKey.from_private_bytes(raw)


def read_private_key(path: Path, passphrase: Callable[[], str]) -> PrivateKeyFile:
    """The key in ``path``; ``passphrase`` is asked for only if the file is encrypted."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        return PrivateKeyFile(_open_key_text(path, data.decode("utf-8", "replace"),
                                             passphrase), True)
    encrypted = b"ENCRYPTED PRIVATE KEY" in data
    try:
        key = serialization.load_pem_private_key(
            data, password=passphrase().encode() if encrypted else None)
    except (ValueError, TypeError):
        if encrypted:
            raise CustodianError(f"{path}: wrong passphrase, or the key file is damaged") from None
        raise CustodianError(f"{path} is not a custodian private key (PEM)") from None
    if not isinstance(key, X25519PrivateKey):
        raise CustodianError(f"{path} is not an X25519 custodian private key")
    return PrivateKeyFile(key, encrypted)


def sealed_share_text(share: SealedShareFile) -> str:
    """A sealed share file's content."""
    document = {"format": SHARE_FORMAT,
                "custodian_public_key": base64.b64encode(share.custodian_public_key).decode(),
                "ciphertext": base64.b64encode(share.ciphertext).decode()}
    return json.dumps(document, sort_keys=True) + "\n"


def write_sealed_share(path: Path, share: SealedShareFile) -> None:
    _create(path, sealed_share_text(share).encode(), 0o600)


def parse_sealed_share(text: str) -> SealedShareFile | None:
    """The sealed share in ``text``, or None if it is not a sealed share file."""
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("format") != SHARE_FORMAT:
        return None
    try:
        return SealedShareFile(base64.b64decode(document["custodian_public_key"], validate=True),
                               base64.b64decode(document["ciphertext"], validate=True))
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise CustodianError("the sealed share file is damaged") from None


def open_share(sealed: SealedShareFile, key: X25519PrivateKey) -> str:
    """The mnemonic inside ``sealed``; CustodianError if ``key`` is not its custodian's."""
    if key.public_key().public_bytes_raw() != sealed.custodian_public_key:
        raise CustodianError("this share is sealed to another custodian's key "
                             f"({fingerprint(sealed.custodian_public_key)}); use that key")
    try:
        return _SUITE.decrypt(sealed.ciphertext, key, info=SHARE_INFO).decode("utf-8")
    except (InvalidTag, ValueError):  # UnicodeDecodeError too; say nothing about why
        raise CustodianError("the sealed share did not open with this key (damaged or "
                             "not sealed by this vault)") from None
