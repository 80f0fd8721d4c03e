"""Vault-only guards: the seal gate and the audit of refused calls.

Order on the server: error_guard, SealGate, RefusalAudit, AuthGuard. The gate
refuses everything but health, reflection and the unseal calls while the
process is sealed. RefusalAudit sits outside the auth guard so it sees the
authentication and scope refusals that guard raises.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Collection
from typing import Any

import jwt

from common.auth import PUBLIC_METHOD_PREFIXES, bearer_token, optional_principal
from common.clock import Clock
from common.errors import PermissionDenied, Unauthenticated, Unavailable
from common.logging import redact
from common.server import Behavior
from vault.audit import CALL_REFUSED, AuditEntry, AuditSink
from vault.keyring import Keyring
from vault.unseal import VAULT_SEALED


class SealGate:
    """While sealed: only health, reflection and ``allowed`` methods answer."""

    def __init__(self, keyring: Keyring, allowed: Collection[str]) -> None:
        self._keyring = keyring
        self._allowed = frozenset(allowed)

    def __call__(self, method: str, behavior: Behavior) -> Behavior:
        if method.startswith(PUBLIC_METHOD_PREFIXES) or method in self._allowed:
            return behavior
        keyring = self._keyring
        if inspect.isasyncgenfunction(behavior):

            async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
                if keyring.sealed:
                    raise _sealed()
                async for response in behavior(request, context):
                    yield response

            return generator

        async def unary(request: Any, context: Any) -> Any:
            if keyring.sealed:
                raise _sealed()
            return await behavior(request, context)

        return unary


def _sealed() -> Unavailable:
    return Unavailable(VAULT_SEALED, "the vault is sealed; custodians must unseal it")


class RefusalAudit:
    """Audits calls to restricted methods refused for credential or scope."""

    def __init__(self, audit: AuditSink, clock: Clock, restricted: Collection[str]) -> None:
        self._audit = audit
        self._clock = clock
        self._restricted = frozenset(restricted)

    def __call__(self, method: str, behavior: Behavior) -> Behavior:
        if method not in self._restricted:
            return behavior
        if inspect.isasyncgenfunction(behavior):

            async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    async for response in behavior(request, context):
                        yield response
                except (Unauthenticated, PermissionDenied) as error:
                    await self._record(method, context, error)
                    raise

            return generator

        async def unary(request: Any, context: Any) -> Any:
            try:
                return await behavior(request, context)
            except (Unauthenticated, PermissionDenied) as error:
                await self._record(method, context, error)
                raise

        return unary

    async def _record(
        self, method: str, context: Any, error: Unauthenticated | PermissionDenied
    ) -> None:
        principal = optional_principal()
        if principal is not None:
            caller, tenant = principal.subject, principal.tenant
        else:
            caller, tenant = _claimed_caller(context.invocation_metadata()), ""
        await self._audit.append(AuditEntry(
            action=CALL_REFUSED, caller=caller, tenant=tenant, token="",
            result=error.reason, time=self._clock.now(), reason=method))


def _claimed_caller(metadata: Any) -> str:
    """Who the refused caller claimed to be (unverified, for forensics only)."""
    try:
        claims = jwt.decode(bearer_token(metadata), options={"verify_signature": False})
    except (Unauthenticated, jwt.PyJWTError, ValueError):
        return "unauthenticated"
    if not isinstance(claims, dict):
        return "unauthenticated"
    return f"unverified:{_claim(claims.get('iss'))}/{_claim(claims.get('sub'))}"


_CLAIM_SCAN_CHARS = 512
CLAIM_MAX_CHARS = 64


def _claim(value: Any) -> str:
    """An unverified claim fit for the audit log: printable, no digit runs that
    could be a card number, bounded length."""
    text = value if isinstance(value, str) else ""
    text = "".join(c if c.isprintable() else "?" for c in text[:_CLAIM_SCAN_CHARS])
    return redact(text)[:CLAIM_MAX_CHARS]
