"""Vault-only guards: the seal gate and the audit of refused calls.

Order on the server: error_guard, SealGate, RefusalAudit, AuthGuard. The gate
refuses everything but health, reflection and the unseal calls while the
process is sealed. RefusalAudit sits outside the auth guard so it sees the
authentication and scope refusals that guard raises.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

import jwt

from common.auth import PUBLIC_METHOD_PREFIXES, ScopeMissing, bearer_token, optional_principal
from common.clock import Clock
from common.errors import PermissionDenied, Unauthenticated, Unavailable
from common.logging import mask_digits, redact
from common.server import Behavior
from vault.audit import CALL_REFUSED, AuditEntry, AuditSink
from vault.keyring import Keyring
from vault.service import AuditTarget
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


@dataclass(frozen=True)
class AuditedCall:
    """How a refusal of one method reads in the audit log: its domain action
    (``detokenize``, ``delete``) and what the request names (``AuditTarget``)."""

    action: str
    target: Callable[[Any], AuditTarget]


class RefusalAudit:
    """Audits calls to restricted methods refused for credential or scope.

    A method listed in ``calls`` is audited as its own action, with the
    tenant, token, reason and request id its request names; any other as
    CALL_REFUSED with the method's name for a reason. The caller is the
    verified subject when the credential was valid but lacked the scope,
    else what the credential claimed (marked unverified).
    """

    def __init__(self, audit: AuditSink, clock: Clock, restricted: Collection[str],
                 calls: Mapping[str, AuditedCall] | None = None) -> None:
        self._audit = audit
        self._clock = clock
        self._restricted = frozenset(restricted)
        self._calls = dict(calls or {})

    def __call__(self, method: str, behavior: Behavior) -> Behavior:
        if method not in self._restricted:
            return behavior
        if inspect.isasyncgenfunction(behavior):

            async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    async for response in behavior(request, context):
                        yield response
                except (Unauthenticated, PermissionDenied) as error:
                    await self._record(method, request, context, error)
                    raise

            return generator

        async def unary(request: Any, context: Any) -> Any:
            try:
                return await behavior(request, context)
            except (Unauthenticated, PermissionDenied) as error:
                await self._record(method, request, context, error)
                raise

        return unary

    async def _record(self, method: str, request: Any, context: Any,
                      error: Unauthenticated | PermissionDenied) -> None:
        principal = error.principal if isinstance(error, ScopeMissing) else optional_principal()
        # An unauthenticated caller's claims are kept without digits: nothing it
        # said can be trusted, and digits spread over several fields could be
        # read together as a card number.
        caller = (principal.subject if principal is not None
                  else mask_digits(_claimed_caller(context.invocation_metadata())))
        call = self._calls.get(method)
        if call is None:
            entry = AuditEntry(action=CALL_REFUSED, caller=caller,
                               tenant=principal.tenant if principal is not None else "",
                               token="", result=error.reason, time=self._clock.now(),
                               reason=method)
        else:
            target = call.target(request).unprivileged()
            if principal is None:  # for the same reason, not even its own words
                target = replace(target, reason="")
            entry = AuditEntry(action=call.action, caller=caller, tenant=target.tenant,
                               token=target.token, result=error.reason,
                               time=self._clock.now(), reason=target.reason,
                               request_id=target.request_id)
        await self._audit.append(entry)


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
