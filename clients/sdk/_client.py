"""PartnerClient: calls, request ids, deadlines, safe retries, typed errors."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import grpc

from cardlink.gateway.v1 import (
    bindings_pb2,
    bindings_pb2_grpc,
    credit_lines_pb2,
    credit_lines_pb2_grpc,
    resources_pb2,
)
from cardlink.vault.v1 import vault_pb2
from clients.sealing import SealingKeyCache, seal_card
from common.auth import bearer_metadata
from common.errors import Aborted, CardLinkError, DeadlineExceeded, Unavailable
from common.grpc_errors import error_from_rpc

R = TypeVar("R")
_STALE_SEALING_KEY = frozenset({"SEALING_KEY_UNKNOWN", "SEALING_KEY_EXPIRED"})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter."""

    attempts: int = 4
    deadline_s: float = 10.0  # per attempt
    backoff_s: float = 0.2
    max_backoff_s: float = 2.0


def _retryable(error: CardLinkError) -> bool:
    # Safe because every retried call resends the very same request (same
    # request id): the gateway answers a repeat with the first answer.
    if isinstance(error, Unavailable | DeadlineExceeded):
        return True
    return isinstance(error, Aborted) and error.reason == "REQUEST_IN_PROGRESS"


class PartnerClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        tenant: str,
        token: Callable[[], str],
        sealing: SealingKeyCache,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.tenant = tenant
        self._token = token
        self._sealing = sealing
        self._retry = retry or RetryPolicy()
        self._bindings = bindings_pb2_grpc.BindingsStub(channel)
        self._credit = credit_lines_pb2_grpc.CreditLinesStub(channel)

    def user_name(self, user: str) -> str:
        return f"tenants/{self.tenant}/users/{user}"

    async def _call(self, call: Callable[[float, tuple[tuple[str, str], ...]], Awaitable[R]]) -> R:
        return await self._retrying(
            lambda: call(self._retry.deadline_s, bearer_metadata(self._token())))

    async def _retrying(self, call: Callable[[], Awaitable[R]]) -> R:
        policy = self._retry
        for attempt in range(1, policy.attempts + 1):
            try:
                return await call()
            except grpc.aio.AioRpcError as rpc_error:
                error = error_from_rpc(rpc_error)
            if attempt == policy.attempts or not _retryable(error):
                raise error
            pause = min(policy.max_backoff_s, policy.backoff_s * 2 ** (attempt - 1))
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")  # pragma: no cover

    # --- bindings --------------------------------------------------------

    async def create_binding(
        self,
        user: str,
        card: vault_pb2.CardSecret,
        consent: resources_pb2.Consent,
        *,
        request_id: str | None = None,
    ) -> resources_pb2.Binding:
        """Seal ``card`` and start binding it; the bank texts a code to the holder."""
        request = bindings_pb2.CreateBindingRequest(
            parent=self.user_name(user), consent=consent,
            request_id=request_id or str(uuid.uuid4()),
        )
        for refreshed in (False, True):
            key = await self._retrying(
                self._sealing.refresh if refreshed else self._sealing.key_set)
            request.sealed_card.CopyFrom(seal_card(key.current(), f"tenants/{self.tenant}", card))
            try:
                return await self._call(lambda t, m: self._bindings.CreateBinding(
                    request, timeout=t, metadata=m))
            except CardLinkError as error:
                # The vault rotated its sealing key: fetch the new set, seal
                # again, same request id (the gateway compares the card, not
                # the ciphertext, so this is the same request).
                if refreshed or error.reason not in _STALE_SEALING_KEY:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def confirm_binding(
        self, name: str, code: str, *, request_id: str | None = None
    ) -> resources_pb2.Binding:
        request = bindings_pb2.ConfirmBindingRequest(
            name=name, code=code, request_id=request_id or str(uuid.uuid4())
        )
        return await self._call(lambda t, m: self._bindings.ConfirmBinding(
            request, timeout=t, metadata=m))

    async def get_binding(self, name: str) -> resources_pb2.Binding:
        request = bindings_pb2.GetBindingRequest(name=name)
        return await self._call(lambda t, m: self._bindings.GetBinding(
            request, timeout=t, metadata=m))

    async def list_bindings(
        self, user: str, page_size: int = 0
    ) -> AsyncIterator[resources_pb2.Binding]:
        token = ""
        while True:
            request = bindings_pb2.ListBindingsRequest(
                parent=self.user_name(user), page_size=page_size, page_token=token
            )
            page = await self._list_page(request)
            for binding in page.bindings:
                yield binding
            token = page.next_page_token
            if not token:
                return

    async def _list_page(
        self, request: bindings_pb2.ListBindingsRequest
    ) -> bindings_pb2.ListBindingsResponse:
        return await self._call(lambda t, m: self._bindings.ListBindings(
            request, timeout=t, metadata=m))

    async def unbind_binding(
        self, name: str, *, request_id: str | None = None
    ) -> resources_pb2.Binding:
        request = bindings_pb2.UnbindBindingRequest(
            name=name, request_id=request_id or str(uuid.uuid4())
        )
        return await self._call(lambda t, m: self._bindings.UnbindBinding(
            request, timeout=t, metadata=m))

    # --- credit lines ----------------------------------------------------

    async def activate_credit_line(
        self, user: str, binding: str, *, request_id: str | None = None
    ) -> resources_pb2.CreditLine:
        request = credit_lines_pb2.ActivateCreditLineRequest(
            parent=self.user_name(user), binding=binding,
            request_id=request_id or str(uuid.uuid4()),
        )
        return await self._call(lambda t, m: self._credit.ActivateCreditLine(
            request, timeout=t, metadata=m))

    async def get_credit_line(self, name: str) -> resources_pb2.CreditLine:
        request = credit_lines_pb2.GetCreditLineRequest(name=name)
        return await self._call(lambda t, m: self._credit.GetCreditLine(
            request, timeout=t, metadata=m))


def consent(terms_id: str, terms_version: str, channel: str,
            accepted: datetime | None = None) -> resources_pb2.Consent:
    """A consent record for ``create_binding`` (accepted now unless given)."""
    message = resources_pb2.Consent(terms_id=terms_id, terms_version=terms_version,
                                    channel=channel)
    message.accept_time.FromDatetime(accepted or datetime.now(UTC))
    return message
