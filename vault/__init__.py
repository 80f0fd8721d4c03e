"""The CardLink token vault: the only process that ever holds a PAN in clear.

Domain (``pan``, ``tokens``, ``crypto``, ``keyring``, ``store``, ``audit``,
``service``) and transport (``servicer``, ``__main__``). The public domain
surface is re-exported here.
"""

from vault.audit import AuditEntry, AuditLog, AuditSink
from vault.keyring import DevKeyFile, Keyring, KeySnapshot, RootKeyProvider
from vault.pan import CardBrand, CardDisplay, CardSecret
from vault.service import (
    Actor,
    KeySetSignature,
    SignedKeySet,
    TokenizeResult,
    TokenRecord,
    VaultService,
)
from vault.store import VaultStore
from vault.tokens import TokenName, new_token, parse_parent, parse_token_name, token_name

__all__ = [
    "Actor",
    "AuditEntry",
    "AuditLog",
    "AuditSink",
    "CardBrand",
    "CardDisplay",
    "CardSecret",
    "DevKeyFile",
    "KeySetSignature",
    "KeySnapshot",
    "Keyring",
    "RootKeyProvider",
    "SignedKeySet",
    "TokenName",
    "TokenRecord",
    "TokenizeResult",
    "VaultService",
    "VaultStore",
    "new_token",
    "parse_parent",
    "parse_token_name",
    "token_name",
]
