"""Who may touch which tenant's tokens, and the scope each vault method needs."""

from __future__ import annotations

from common.auth import Principal
from common.errors import NotFound, PermissionDenied

PACKAGE = "/cardlink.vault.v1.TokenVault/"
SCOPE_CREATE = "vault.tokens.create"
SCOPE_GET = "vault.tokens.get"
SCOPE_DELETE = "vault.tokens.delete"
SCOPE_DETOKENIZE = "vault.tokens.detokenize"

# Methods missing here are refused by the auth interceptor (fail closed).
METHOD_SCOPES: dict[str, str | None] = {
    PACKAGE + "GetSealingKeySet": None,  # public: its signature is what clients trust
    PACKAGE + "TokenizeCard": SCOPE_CREATE,
    PACKAGE + "GetToken": SCOPE_GET,
    PACKAGE + "DeleteToken": SCOPE_DELETE,
    PACKAGE + "DetokenizeToken": SCOPE_DETOKENIZE,
}

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
