"""The vault's cryptographic failures: specific exceptions, never return values.

Messages say what failed to open, never why: a reason such as "bad tag" versus
"bad padding" would help an attacker probing ciphertexts.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Root of every cryptographic failure raised by ``vault.crypto``."""


class DecryptionFailed(CryptoError):
    """A ciphertext, wrapped key or sealed card did not open (tampered, wrong key or context)."""


class SignatureInvalid(CryptoError):
    """A signature does not verify under the given public key."""
