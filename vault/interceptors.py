"""Vault-only server interceptors: the seal gate and the audit of refused calls.

Order on the server: ErrorInterceptor, SealGate, RefusalAudit, AuthInterceptor.
The gate refuses everything but health, reflection and the unseal calls while
the process is sealed. RefusalAudit sits outside the auth interceptor so it
sees the authentication and scope refusals that interceptor raises.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import grpc
import jwt

from common.auth import PUBLIC_METHOD_PREFIXES, bearer_token, optional_principal
from common.clock import Clock
from common.errors import PermissionDenied, Unauthenticated, Unavailable
from common.grpc_errors import Continuation, wrap_handler
from vault.audit import CALL_REFUSED, AuditEntry, AuditSink
from vault.keyring import Keyring
from vault.unseal import VAULT_SEALED

Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


def _wrappers(before: Callable[[], None] | None,
              on_error: Callable[[Exception], Awaitable[None]] | None) -> tuple[Wrapper, Wrapper]:
    """Handler wrappers that run ``before`` and report errors to ``on_error``."""

    def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: Any) -> Any:
            try:
                if before is not None:
                    before()
                return await behavior(request, context)
            except Exception as error:
                if on_error is not None:
                    await on_error(error)
                raise

        return wrapper

    def stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):
            return unary(behavior)

        async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                if before is not None:
                    before()
                async for response in behavior(request, context):
                    yield response
            except Exception as error:
                if on_error is not None:
                    await on_error(error)
                raise

        return generator

    return unary, stream


class SealGate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """While sealed: only health, reflection and ``allowed`` methods answer."""

    def __init__(self, keyring: Keyring, allowed: Collection[str]) -> None:
        self._keyring = keyring
        self._allowed = frozenset(allowed)

    def _check(self) -> None:
        if self._keyring.sealed:
            raise Unavailable(VAULT_SEALED, "the vault is sealed; custodians must unseal it")

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_METHOD_PREFIXES) or method in self._allowed:
            return handler
        return wrap_handler(handler, *_wrappers(self._check, None))


class RefusalAudit(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Audits calls to restricted methods refused for credential or scope."""

    def __init__(self, audit: AuditSink, clock: Clock, restricted: Collection[str]) -> None:
        self._audit = audit
        self._clock = clock
        self._restricted = frozenset(restricted)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in self._restricted:
            return handler

        metadata: Any = handler_call_details.invocation_metadata

        async def record(error: Exception) -> None:
            if not isinstance(error, Unauthenticated | PermissionDenied):
                return
            principal = optional_principal()
            caller = principal.subject if principal is not None else _claimed_caller(metadata)
            tenant = principal.tenant if principal is not None else ""
            await self._audit.append(AuditEntry(
                action=CALL_REFUSED, caller=caller, tenant=tenant, token="",
                result=error.reason, time=self._clock.now(), reason=method))

        return wrap_handler(handler, *_wrappers(None, record))


def _claimed_caller(metadata: Any) -> str:
    """Who the refused caller claimed to be (unverified, for forensics only)."""
    try:
        claims = jwt.decode(bearer_token(metadata), options={"verify_signature": False})
    except (Unauthenticated, jwt.PyJWTError, ValueError):
        return "unauthenticated"
    return f"unverified:{str(claims.get('iss', ''))[:64]}/{str(claims.get('sub', ''))[:64]}"
