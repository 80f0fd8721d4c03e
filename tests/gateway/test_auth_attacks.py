"""JWT attacks and tenant isolation on the gateway: all refused, nothing changed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Awaitable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

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
from tests.support.keyspace import snapshot as keyspace_snapshot


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(stack: Stack, **changes: Any) -> dict[str, Any]:
    now = int(stack.clock.now())
    claims: dict[str, Any] = {
        "iss": "acme-partner", "sub": "shop", "aud": GATEWAY_AUDIENCE, "iat": now, "nbf": now,
        "exp": now + 300, "tenant": "acme", "scope": " ".join(PARTNER_SCOPES),
    }
    claims.update(changes)
    return claims


def _signed(stack: Stack, claims: dict[str, Any], kid: str | None = None) -> str:
    issuer = stack.vault.identities.issuers["acme-partner"]
    return jwt.encode(claims, issuer.key, algorithm="EdDSA", headers={"kid": kid or issuer.kid})


def _hs256_with_public_key(stack: Stack) -> str:
    issuer = stack.vault.identities.issuers["acme-partner"]
    public_pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": issuer.kid, "typ": "JWT"}
    body = _b64(json.dumps(_claims(stack)).encode())
    signing_input = f"{_b64(json.dumps(header).encode())}.{body}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def attacks(stack: Stack) -> dict[str, tuple[str, str]]:
    now = int(stack.clock.now())
    kid = stack.vault.identities.issuers["acme-partner"].kid
    return {
        "alg_none": (jwt.encode(_claims(stack), "", algorithm="none", headers={"kid": kid}),
                     "ALGORITHM_NOT_ALLOWED"),
        "hs256_public_key": (_hs256_with_public_key(stack), "ALGORITHM_NOT_ALLOWED"),
        "expired": (_signed(stack, _claims(stack, iat=now - 900, nbf=now - 900, exp=now - 600)),
                    "TOKEN_EXPIRED"),
        "not_yet_valid": (_signed(stack, _claims(stack, nbf=now + 600, iat=now + 600,
                                                 exp=now + 900)), "TOKEN_NOT_YET_VALID"),
        "wrong_issuer": (_signed(stack, _claims(stack, iss="evil-partner")), "ISSUER_UNKNOWN"),
        "wrong_audience": (_signed(stack, _claims(stack, aud="cardlink-vault")),
                           "AUDIENCE_MISMATCH"),
        "unknown_kid": (_signed(stack, _claims(stack), kid="acme-k99"), "KEY_UNKNOWN"),
        "path_kid": (_signed(stack, _claims(stack), kid="../../etc/passwd"), "KEY_UNKNOWN"),
        "sql_kid": (_signed(stack, _claims(stack), kid="x' OR '1'='1"), "KEY_UNKNOWN"),
        "other_tenant_claim": (_signed(stack, _claims(stack, tenant="globex")),
                               "TENANT_NOT_ALLOWED"),
    }


async def snapshot(stack: Stack) -> dict[bytes, bytes]:
    return await keyspace_snapshot(stack.redis, stack.gateway.keyspace.pattern)


async def _create(stack: Stack, token: str) -> Any:
    sealed = await stack.vault.seal(ALICE, "acme")
    stub = bindings_pb2_grpc.BindingsStub(stack.channel)
    return await stub.CreateBinding(bindings_pb2.CreateBindingRequest(
        parent="tenants/acme/users/u-1", sealed_card=sealed, consent=default_consent(),
        request_id=str(uuid.uuid4())), metadata=bearer_metadata(token))


@pytest.mark.parametrize("attack", [
    "alg_none", "hs256_public_key", "expired", "not_yet_valid", "wrong_issuer",
    "wrong_audience", "unknown_kid", "path_kid", "sql_kid", "other_tenant_claim",
])
async def test_jwt_attack_is_refused_and_changes_nothing(stack: Stack, attack: str) -> None:
    before = await snapshot(stack)
    token, reason = attacks(stack)[attack]
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
    request = bank_events_pb2.FreezeCreditLineRequest(
        name="tenants/acme/users/u/creditLines/cln_" + "a" * 26, reason="X",
        request_id=str(uuid.uuid4()))
    partner = stack.token(scopes=(*PARTNER_SCOPES, "gateway.bank.events"))
    error = await refused(events.FreezeCreditLine(request, metadata=bearer_metadata(partner)))
    assert isinstance(error, PermissionDenied)


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
