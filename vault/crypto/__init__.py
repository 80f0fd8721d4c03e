"""The vault's cryptography: small recipes over pyca/cryptography primitives.

- ``Kek.seal/open``: a record's payload under a fresh AES-256-GCM data key,
  wrapped (RFC 3394) under a versioned key-encrypting key; the associated
  data binds it to tenant, token and KEK version.
- ``FingerprintKey.fingerprint``: HMAC-SHA256 of a PAN under a per-tenant key.
- ``SealingKey.open`` / ``seal``: HPKE (RFC 9180) base mode,
  DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
- ``seal_custodian_share``: HPKE, same suite, of one root-key share to its
  custodian's X25519 key (the key tool opens it, on the custodian's side).
- ``SigningKey.sign_key_set`` / ``verify_key_set``: Ed25519 over the key set.
- ``RootKey.wrap/unwrap``: versioned key material at rest in Redis.
- ``AuditMacKey.mac``: the audit log's keyed hash chain (HMAC-SHA256).

Every failure to open raises :class:`DecryptionFailed`; nothing returns None.
"""

from vault.crypto._asymmetric import (
    AEAD_ID,
    CUSTODIAN_KEY_SIZE,
    CUSTODIAN_SHARE_INFO,
    KDF_ID,
    KEM_ID,
    SealingKey,
    SigningKey,
    custodian_fingerprint,
    custodian_key_usable,
    seal,
    seal_custodian_share,
    sealing_info,
    verify_key_set,
)
from vault.crypto._errors import CryptoError, DecryptionFailed, SignatureInvalid
from vault.crypto._symmetric import (
    AuditMacKey,
    Envelope,
    FingerprintKey,
    Kek,
    RootKey,
    new_symmetric_key,
    record_aad,
)

__all__ = [
    "AEAD_ID",
    "CUSTODIAN_KEY_SIZE",
    "CUSTODIAN_SHARE_INFO",
    "KDF_ID",
    "KEM_ID",
    "AuditMacKey",
    "CryptoError",
    "DecryptionFailed",
    "Envelope",
    "FingerprintKey",
    "Kek",
    "RootKey",
    "SealingKey",
    "SignatureInvalid",
    "SigningKey",
    "custodian_fingerprint",
    "custodian_key_usable",
    "new_symmetric_key",
    "record_aad",
    "seal",
    "seal_custodian_share",
    "sealing_info",
    "verify_key_set",
]
