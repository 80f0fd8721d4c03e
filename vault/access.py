"""Who may touch which tenant's tokens, and the scope each vault method needs."""

from __future__ import annotations

from common.auth import Principal
from common.errors import NotFound, PermissionDenied

PACKAGE = "/cardlink.vault.v1.TokenVault/"
SCOPE_CREATE = "vault.tokens.create"
SCOPE_GET = "vault.tokens.get"
SCOPE_DELETE = "vault.tokens.delete"
SCOPE_DETOKENIZE = "vault.tokens.detokenize"
ADMIN = "/cardlink.vault.v1.KeyAdmin/"
SCOPE_KEYS_ADMIN = "vault.keys.admin"
SCOPE_KEYS_UNSEAL = "vault.keys.unseal"
SCOPE_AUDIT_READ = "vault.audit.read"

# Methods missing here are refused by the auth guard (fail closed).
METHOD_SCOPES: dict[str, str | None] = {
    PACKAGE + "GetSealingKeySet": None,  # public: its signature is what clients trust
    PACKAGE + "TokenizeCard": SCOPE_CREATE,
    PACKAGE + "GetToken": SCOPE_GET,
    PACKAGE + "DeleteToken": SCOPE_DELETE,
    PACKAGE + "DetokenizeToken": SCOPE_DETOKENIZE,
    ADMIN + "GetKeyStatus": SCOPE_KEYS_ADMIN,
    ADMIN + "RotateKey": SCOPE_KEYS_ADMIN,
    ADMIN + "RewrapRecords": SCOPE_KEYS_ADMIN,
    ADMIN + "RetireKeyVersion": SCOPE_KEYS_ADMIN,
    ADMIN + "InitRoot": SCOPE_KEYS_ADMIN,
    ADMIN + "GetSealStatus": SCOPE_KEYS_UNSEAL,
    ADMIN + "Unseal": SCOPE_KEYS_UNSEAL,
    ADMIN + "RekeyRoot": SCOPE_KEYS_UNSEAL,
    ADMIN + "RotateRoot": SCOPE_KEYS_UNSEAL,
    ADMIN + "VerifyAudit": SCOPE_AUDIT_READ,
    ADMIN + "ExportAudit": SCOPE_AUDIT_READ,
}

# What a sealed vault still answers (besides health and reflection).
SEALED_METHODS = frozenset({ADMIN + "GetSealStatus", ADMIN + "Unseal", ADMIN + "InitRoot"})

# Methods whose refused calls (no credential, wrong scope) are audited: every
# method that reveals a PAN, destroys data or touches keys.
RESTRICTED_METHODS = frozenset(
    {PACKAGE + "DetokenizeToken", PACKAGE + "DeleteToken"}
    | {m for m in METHOD_SCOPES if m.startswith(ADMIN)}
)

TENANT_MISMATCH = "TENANT_MISMATCH"


def require_parent_tenant(principal: Principal, tenant: str) -> str:
    """Creating under another tenant is refused outright: the caller named it."""
    if principal.tenant != tenant:
        raise PermissionDenied(TENANT_MISMATCH, "the credential is not for this tenant")
    return tenant


def require_token_tenant(principal: Principal, tenant: str) -> str:
    """Another tenant's token is NOT_FOUND, exactly as a token that never existed,
    so a partner cannot even confirm that it exists."""
    if principal.tenant != tenant:
        raise NotFound("TOKEN_NOT_FOUND", "token not found")
    return tenant
