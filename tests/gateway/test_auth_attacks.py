"""JWT attacks and tenant isolation on the gateway: all refused, nothing changed."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any

import pytest

from cardlink.gateway.v1 import (
    bank_events_pb2,
    bank_events_pb2_grpc,
    bindings_pb2,
    bindings_pb2_grpc,
    credit_lines_pb2,
    credit_lines_pb2_grpc,
)
from common.auth import bearer_metadata
from common.errors import NotFound, PermissionDenied, Unauthenticated
from tests.gateway.conftest import (
    ALICE,
    GATEWAY_AUDIENCE,
    Stack,
    default_consent,
    refused,
)
from tests.support.identities import GATEWAY_PARTNER_SCOPES as PARTNER_SCOPES
from tests.support.jwt_attacks import NAMES, Attacks
from tests.support.keyspace import snapshot as keyspace_snapshot


async def snapshot(stack: Stack) -> dict[bytes, bytes]:
    return await keyspace_snapshot(stack.redis, stack.gateway.keyspace.pattern)


async def _create(stack: Stack, token: str) -> Any:
    sealed = await stack.vault.seal(ALICE, "acme")
    stub = bindings_pb2_grpc.BindingsStub(stack.channel)
    return await stub.CreateBinding(bindings_pb2.CreateBindingRequest(
        parent="tenants/acme/users/u-1", sealed_card=sealed, consent=default_consent(),
        request_id=str(uuid.uuid4())), metadata=bearer_metadata(token))


@pytest.mark.parametrize("attack", NAMES)
async def test_jwt_attack_is_refused_and_changes_nothing(stack: Stack, attack: str) -> None:
    before = await snapshot(stack)
    token, reason = Attacks(stack.vault.identities, "acme-partner", GATEWAY_AUDIENCE, "acme",
                            PARTNER_SCOPES).all()[attack]
    error = await refused(_create(stack, token))
    assert isinstance(error, Unauthenticated) and error.reason == reason
    assert token not in error.message
    assert await snapshot(stack) == before
    assert (await stack.stats()).verifications == 0


async def test_no_credential_and_missing_scope(stack: Stack) -> None:
    stub = bindings_pb2_grpc.BindingsStub(stack.channel)
    missing = await refused(stub.GetBinding(bindings_pb2.GetBindingRequest(
        name="tenants/acme/users/u/bindings/bnd_" + "a" * 26)))
    assert isinstance(missing, Unauthenticated) and missing.reason == "TOKEN_MISSING"
    read_only = stack.token(scopes=("gateway.bindings.read",))
    error = await refused(_create(stack, read_only))
    assert isinstance(error, PermissionDenied) and error.reason == "SCOPE_MISSING"
    assert await snapshot(stack) == {}


async def test_partner_cannot_send_bank_events(stack: Stack) -> None:
    # A partner signs its own tokens; the trust store does not grant it the
    # bank's scope, and the gateway checks the issuer as well.
    events = bank_events_pb2_grpc.BankEventsStub(stack.channel)
    name, request_id = "tenants/acme/users/u/creditLines/cln_" + "a" * 26, str(uuid.uuid4())
    partner = bearer_metadata(stack.token(scopes=(*PARTNER_SCOPES, "gateway.bank.events")))
    for call in (
        events.FreezeCreditLine(bank_events_pb2.FreezeCreditLineRequest(
            name=name, reason="X", request_id=request_id), metadata=partner),
        events.CloseCreditLine(bank_events_pb2.CloseCreditLineRequest(
            name=name, reason="X", request_id=request_id), metadata=partner),
    ):
        assert isinstance(await refused(call), PermissionDenied)


async def test_tenant_a_token_on_tenant_b_resources_is_not_found(stack: Stack) -> None:
    sdk = await stack.sdk("acme")
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    binding = await sdk.confirm_binding(binding.name, await stack.code_for(ALICE))
    line = await sdk.activate_credit_line("u-1", binding.name)
    before = await snapshot(stack)

    globex = bearer_metadata(stack.token("globex"))
    bindings = bindings_pb2_grpc.BindingsStub(stack.channel)
    credit = credit_lines_pb2_grpc.CreditLinesStub(stack.channel)
    calls: list[Awaitable[Any]] = [
        bindings.GetBinding(bindings_pb2.GetBindingRequest(name=binding.name), metadata=globex),
        bindings.UnbindBinding(bindings_pb2.UnbindBindingRequest(
            name=binding.name, request_id=str(uuid.uuid4())), metadata=globex),
        bindings.ConfirmBinding(bindings_pb2.ConfirmBindingRequest(
            name=binding.name, code="123456", request_id=str(uuid.uuid4())), metadata=globex),
        bindings.ListBindings(bindings_pb2.ListBindingsRequest(
            parent="tenants/acme/users/u-1"), metadata=globex),
        credit.GetCreditLine(credit_lines_pb2.GetCreditLineRequest(name=line.name),
                             metadata=globex),
        credit.ActivateCreditLine(credit_lines_pb2.ActivateCreditLineRequest(
            parent="tenants/acme/users/u-1", binding=binding.name,
            request_id=str(uuid.uuid4())), metadata=globex),
    ]
    for call in calls:
        error = await refused(call)
        assert isinstance(error, NotFound), error
    # Exactly like a binding that never existed in globex's own tenant.
    ghost = await refused(bindings.GetBinding(bindings_pb2.GetBindingRequest(
        name=binding.name.replace("tenants/acme", "tenants/globex")), metadata=globex))
    assert (type(ghost), ghost.reason) == (NotFound, "BINDING_NOT_FOUND")
    assert await snapshot(stack) == before
