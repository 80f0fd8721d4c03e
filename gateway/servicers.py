"""gRPC servicers: proto <-> domain, tenant scoping, nothing else.

A resource of another tenant is NOT_FOUND, exactly like one that does not
exist. The scope per method is enforced by ``common.auth.AuthGuard``
(see ``METHOD_SCOPES``; the trust store grants each issuer its scopes);
bank events additionally require a bank issuer, so a trust store that
granted a partner the bank's scope by mistake still lets no partner move
a credit limit.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from cardlink.gateway.v1 import (
    bank_events_pb2,
    bank_events_pb2_grpc,
    bindings_pb2,
    bindings_pb2_grpc,
    credit_lines_pb2,
    credit_lines_pb2_grpc,
    resources_pb2,
)
from common.auth import current_principal
from common.errors import NotFound, PermissionDenied, invalid_field
from gateway.binding import BindingService, SealedCardInput
from gateway.convert import (
    binding_to_proto,
    consent_from_proto,
    credit_line_to_proto,
    money_from_proto,
)
from gateway.credit import CreditService
from gateway.models import is_stable_reason
from gateway.names import (
    ChildName,
    UserName,
    check_request_id,
    parse_binding,
    parse_credit_line,
    parse_user,
)

Context = Any

METHOD_SCOPES: dict[str, str | None] = {
    "/cardlink.gateway.v1.Bindings/CreateBinding": "gateway.bindings.write",
    "/cardlink.gateway.v1.Bindings/ConfirmBinding": "gateway.bindings.write",
    "/cardlink.gateway.v1.Bindings/UnbindBinding": "gateway.bindings.write",
    "/cardlink.gateway.v1.Bindings/GetBinding": "gateway.bindings.read",
    "/cardlink.gateway.v1.Bindings/ListBindings": "gateway.bindings.read",
    "/cardlink.gateway.v1.CreditLines/ActivateCreditLine": "gateway.credit.write",
    "/cardlink.gateway.v1.CreditLines/GetCreditLine": "gateway.credit.read",
    "/cardlink.gateway.v1.BankEvents/ChangeCreditLimit": "gateway.bank.events",
    "/cardlink.gateway.v1.BankEvents/FreezeCreditLine": "gateway.bank.events",
    "/cardlink.gateway.v1.BankEvents/UnfreezeCreditLine": "gateway.bank.events",
    "/cardlink.gateway.v1.BankEvents/CloseCreditLine": "gateway.bank.events",
}


def _bank_reason(reason: str) -> str:
    if not is_stable_reason(reason):
        raise invalid_field("reason", "1 to 64 characters of A-Z, 0-9 and _, starting "
                            "with a letter, and no card number", "REASON_INVALID")
    return reason


def _own_user(user: UserName, reason: str) -> UserName:
    if current_principal().tenant != user.tenant:
        raise NotFound(reason, "not found")
    return user


def _own(name: ChildName, reason: str) -> ChildName:
    _own_user(name.parent, reason)
    return name


def _binding(value: str, field: str = "name") -> ChildName:
    return _own(parse_binding(value, field), "BINDING_NOT_FOUND")


def _line(value: str) -> ChildName:
    return _own(parse_credit_line(value), "CREDIT_LINE_NOT_FOUND")


class BindingsServicer(bindings_pb2_grpc.BindingsServicer):
    def __init__(self, bindings: BindingService) -> None:
        self._bindings = bindings

    async def CreateBinding(
        self, request: bindings_pb2.CreateBindingRequest, context: Context
    ) -> resources_pb2.Binding:
        user = _own_user(parse_user(request.parent), "USER_NOT_FOUND")
        request_id = check_request_id(request.request_id)
        if not request.HasField("consent"):
            raise invalid_field("consent", "required", "CONSENT_INVALID")
        sealed = SealedCardInput(request.sealed_card.key_id, request.sealed_card.ciphertext)
        binding = await self._bindings.create(
            user, sealed, consent_from_proto(request.consent), request_id
        )
        return binding_to_proto(binding)

    async def ConfirmBinding(
        self, request: bindings_pb2.ConfirmBindingRequest, context: Context
    ) -> resources_pb2.Binding:
        name = _binding(request.name)
        request_id = check_request_id(request.request_id)
        return binding_to_proto(await self._bindings.confirm(name, request.code, request_id))

    async def GetBinding(
        self, request: bindings_pb2.GetBindingRequest, context: Context
    ) -> resources_pb2.Binding:
        return binding_to_proto(await self._bindings.get(_binding(request.name)))

    async def ListBindings(
        self, request: bindings_pb2.ListBindingsRequest, context: Context
    ) -> bindings_pb2.ListBindingsResponse:
        user = _own_user(parse_user(request.parent), "USER_NOT_FOUND")
        rows, token = await self._bindings.list(user, request.page_size, request.page_token)
        return bindings_pb2.ListBindingsResponse(
            bindings=[binding_to_proto(b) for b in rows], next_page_token=token
        )

    async def UnbindBinding(
        self, request: bindings_pb2.UnbindBindingRequest, context: Context
    ) -> resources_pb2.Binding:
        name = _binding(request.name)
        request_id = check_request_id(request.request_id)
        return binding_to_proto(await self._bindings.unbind(name, request_id))


class CreditLinesServicer(credit_lines_pb2_grpc.CreditLinesServicer):
    def __init__(self, credit: CreditService) -> None:
        self._credit = credit

    async def ActivateCreditLine(
        self, request: credit_lines_pb2.ActivateCreditLineRequest, context: Context
    ) -> resources_pb2.CreditLine:
        user = _own_user(parse_user(request.parent), "USER_NOT_FOUND")
        binding = _binding(request.binding, "binding")
        request_id = check_request_id(request.request_id)
        return credit_line_to_proto(await self._credit.activate(user, binding, request_id))

    async def GetCreditLine(
        self, request: credit_lines_pb2.GetCreditLineRequest, context: Context
    ) -> resources_pb2.CreditLine:
        return credit_line_to_proto(await self._credit.get(_line(request.name)))


class BankEventsServicer(bank_events_pb2_grpc.BankEventsServicer):
    def __init__(self, credit: CreditService, bank_issuers: Collection[str]) -> None:
        self._credit = credit
        self._issuers = frozenset(bank_issuers)

    def _bank_line(self, value: str) -> ChildName:
        if current_principal().issuer not in self._issuers:
            raise PermissionDenied("CALLER_NOT_BANK", "only the bank may send bank events")
        return _line(value)

    async def ChangeCreditLimit(
        self, request: bank_events_pb2.ChangeCreditLimitRequest, context: Context
    ) -> resources_pb2.CreditLine:
        name = self._bank_line(request.name)
        request_id = check_request_id(request.request_id)
        if not request.HasField("limit"):
            raise invalid_field("limit", "required", "AMOUNT_INVALID")
        limit = money_from_proto(request.limit, "limit")
        return credit_line_to_proto(await self._credit.change_limit(
            name, limit, request.event_sequence, request_id))

    async def FreezeCreditLine(
        self, request: bank_events_pb2.FreezeCreditLineRequest, context: Context
    ) -> resources_pb2.CreditLine:
        name = self._bank_line(request.name)
        request_id = check_request_id(request.request_id)
        reason = _bank_reason(request.reason)
        return credit_line_to_proto(await self._credit.set_frozen(
            name, True, request.event_sequence, request_id, reason))

    async def UnfreezeCreditLine(
        self, request: bank_events_pb2.UnfreezeCreditLineRequest, context: Context
    ) -> resources_pb2.CreditLine:
        name = self._bank_line(request.name)
        request_id = check_request_id(request.request_id)
        return credit_line_to_proto(await self._credit.set_frozen(
            name, False, request.event_sequence, request_id))

    async def CloseCreditLine(
        self, request: bank_events_pb2.CloseCreditLineRequest, context: Context
    ) -> resources_pb2.CreditLine:
        name = self._bank_line(request.name)
        request_id = check_request_id(request.request_id)
        reason = _bank_reason(request.reason)
        return credit_line_to_proto(await self._credit.close(
            name, reason, request.event_sequence, request_id))
