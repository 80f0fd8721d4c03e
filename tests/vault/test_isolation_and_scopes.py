"""Tenant isolation, per-method scopes and audited callers of the TokenVault
service, over real gRPC on loopback against a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest
import redis.asyncio as aioredis

from cardlink.vault.v1 import admin_pb2, vault_pb2
from common.auth import bearer_metadata
from common.errors import CardLinkError
from common.grpc_errors import error_from_rpc
from tests.support.cards import card, numbered_card
from tests.support.keyspace import snapshot
from tests.support.vault import VaultHandle

CREATE = "vault.tokens.create"
GET = "vault.tokens.get"
DELETE = "vault.tokens.delete"
DETOKENIZE = "vault.tokens.detokenize"
# The scope each TokenVault method needs (GetSealingKeySet is public), spelled
# out here rather than read from vault.access: this is what the test pins.
METHOD_SCOPE = {
    "TokenizeCard": CREATE,
    "GetToken": GET,
    "DeleteToken": DELETE,
    "DetokenizeToken": DETOKENIZE,
}
# An issuer the test trust store lets grant each scope for tenant acme.
ISSUER_OF = {CREATE: "acme-partner", GET: "acme-partner", DELETE: "acme-partner",
             DETOKENIZE: "cardlink-bank"}
MISSING_SCOPE_PAIRS = [(method, scope) for method, needed in METHOD_SCOPE.items()
                       for scope in METHOD_SCOPE.values() if scope != needed]

Metadata = tuple[tuple[str, str], ...]


async def _error(call: Awaitable[object]) -> CardLinkError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return error_from_rpc(caught.value)


async def _tokenize(vault: VaultHandle, secret: vault_pb2.CardSecret,
                    tenant: str = "acme") -> str:
    created = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
        parent=f"tenants/{tenant}", sealed_card=await vault.seal(secret, tenant)),
        metadata=vault.partner(tenant))
    return created.token.name


def _only(vault: VaultHandle, scope: str, *, subject: str | None = None) -> Metadata:
    """A credential for tenant acme holding ``scope`` and nothing else."""
    issuer = ISSUER_OF[scope]
    minter = vault.identities.minter(issuer, "cardlink-vault")
    return bearer_metadata(minter.mint(subject or f"{issuer}-svc", "acme", [scope]))


async def _audit(vault: VaultHandle) -> list[dict[str, str]]:
    return [dict(r.fields) async for r in vault.admin.ExportAudit(
        admin_pb2.ExportAuditRequest(), metadata=vault.security())]


# --- tenant isolation ----------------------------------------------------------------


async def test_tokenize_under_another_tenant_is_refused_and_writes_nothing(
        vault: VaultHandle, redis_client: aioredis.Redis) -> None:
    """acme's partner naming parent tenants/globex is refused PERMISSION_DENIED
    TENANT_MISMATCH, even with a card sealed for globex that globex itself could
    tokenize: nothing is written, and globex has no token for that card."""
    secret = numbered_card(41)
    sealed_for_globex = await vault.seal(secret, "globex")
    await vault.vault.service.keyring.snapshot()
    before = await snapshot(redis_client, f"{vault.config.redis_prefix}:*")
    refused = await _error(vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
        parent="tenants/globex", sealed_card=sealed_for_globex), metadata=vault.partner("acme")))
    assert (refused.code.value, refused.reason) == ("PERMISSION_DENIED", "TENANT_MISMATCH")
    assert await snapshot(redis_client, f"{vault.config.redis_prefix}:*") == before
    # The very same request under globex's own credential creates a fresh token:
    # the refusal above was the tenant check, not a bad card.
    created = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
        parent="tenants/globex", sealed_card=sealed_for_globex), metadata=vault.partner("globex"))
    assert not created.already_known
    assert created.token.name.startswith("tenants/globex/tokens/ctk_")


async def test_delete_of_another_tenant_s_token_is_not_found_and_deletes_nothing(
        vault: VaultHandle, redis_client: aioredis.Redis) -> None:
    """globex deleting acme's token gets the NOT_FOUND a token that never existed
    gets (same code, reason and message: nothing to confirm), and acme's token,
    its record and its card are untouched."""
    name = await _tokenize(vault, card())
    acme_keys = f"{vault.config.redis_prefix}:vault:{{acme}}:*"
    before = await snapshot(redis_client, acme_keys)
    other = vault.partner("globex")
    cross = await _error(vault.stub.DeleteToken(vault_pb2.DeleteTokenRequest(name=name),
                                                metadata=other))
    never = await _error(vault.stub.DeleteToken(vault_pb2.DeleteTokenRequest(
        name="tenants/globex/tokens/ctk_" + "a" * 26), metadata=other))
    assert (cross.code.value, cross.reason) == ("NOT_FOUND", "TOKEN_NOT_FOUND")
    assert (cross.code, cross.reason, str(cross), cross.metadata) == (
        never.code, never.reason, str(never), never.metadata)
    assert await snapshot(redis_client, acme_keys) == before
    got = await vault.stub.GetToken(vault_pb2.GetTokenRequest(name=name),
                                    metadata=vault.partner())
    assert got.name == name
    opened = await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
        name=name, reason="holder verification"), metadata=vault.bank())
    assert opened.card == card()
    # The attempt on acme's card left a trace all the same.
    token = name.rsplit("/", 1)[1]
    attempts = [{k: e[k] for k in ("caller", "tenant", "token", "result", "reason")}
                for e in await _audit(vault) if e["action"] == "delete"]
    assert {"caller": "globex-partner-svc", "tenant": "acme", "token": token,
            "result": "TENANT_MISMATCH", "reason": "caller tenant globex"} in attempts


# --- scopes --------------------------------------------------------------------------


def _call(vault: VaultHandle, method: str, name: str,
          sealed: vault_pb2.SealedCard) -> Callable[[Metadata], Awaitable[object]]:
    """A well-formed call of ``method`` on acme's token ``name``."""
    stub = vault.stub
    calls: dict[str, Callable[[Metadata], Awaitable[object]]] = {
        "TokenizeCard": lambda md: stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
            parent="tenants/acme", sealed_card=sealed), metadata=md),
        "GetToken": lambda md: stub.GetToken(vault_pb2.GetTokenRequest(name=name), metadata=md),
        "DeleteToken": lambda md: stub.DeleteToken(vault_pb2.DeleteTokenRequest(name=name),
                                                   metadata=md),
        "DetokenizeToken": lambda md: stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=name, reason="holder verification"), metadata=md),
    }
    return calls[method]


@pytest.mark.parametrize(("method", "scope"), MISSING_SCOPE_PAIRS)
async def test_each_method_is_refused_without_its_own_scope(
        vault: VaultHandle, redis_client: aioredis.Redis, method: str, scope: str) -> None:
    """A credential holding another TokenVault scope (and not this method's) is
    refused PERMISSION_DENIED SCOPE_MISSING naming the scope needed, and the
    tenant's tokens are untouched."""
    name = await _tokenize(vault, card())
    sealed = await vault.seal(numbered_card(42))
    acme_keys = f"{vault.config.redis_prefix}:vault:{{acme}}:*"
    before = await snapshot(redis_client, acme_keys)
    refused = await _error(_call(vault, method, name, sealed)(_only(vault, scope)))
    assert (refused.code.value, refused.reason) == ("PERMISSION_DENIED", "SCOPE_MISSING")
    assert refused.metadata.get("scope") == METHOD_SCOPE[method]
    assert await snapshot(redis_client, acme_keys) == before


@pytest.mark.parametrize("method", sorted(METHOD_SCOPE))
async def test_each_method_is_served_with_only_its_own_scope(
        vault: VaultHandle, method: str) -> None:
    """The counterpart of the refusals: the same call with just the method's own
    scope succeeds, so the refusals above are about the scope, nothing else."""
    name = await _tokenize(vault, card())
    sealed = await vault.seal(numbered_card(43))
    await _call(vault, method, name, sealed)(_only(vault, METHOD_SCOPE[method]))


# --- audited callers -----------------------------------------------------------------


async def test_detokenize_and_delete_are_audited_under_the_jwt_subject(
        vault: VaultHandle) -> None:
    """The audit log names who opened or destroyed a card by the credential's
    subject (``sub``), not its issuer or tenant, together with the request id."""
    name = await _tokenize(vault, card())
    token = name.rsplit("/", 1)[-1]
    opened_by, opened_for = "bank-officer-0042", str(uuid.uuid4())
    deleted_by, deleted_for = "acme-ops-7", str(uuid.uuid4())
    await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
        name=name, reason="holder verification", request_id=opened_for),
        metadata=_only(vault, DETOKENIZE, subject=opened_by))
    await vault.stub.DeleteToken(vault_pb2.DeleteTokenRequest(name=name, request_id=deleted_for),
                                 metadata=_only(vault, DELETE, subject=deleted_by))
    entries = [e for e in await _audit(vault) if e["token"] == token]
    detokenized = [e for e in entries if e["action"] == "detokenize"]
    deleted = [e for e in entries if e["action"] == "delete"]
    assert [(e["caller"], e["tenant"], e["request_id"], e["result"]) for e in detokenized] == [
        (opened_by, "acme", opened_for, "OK")]
    assert [(e["caller"], e["tenant"], e["request_id"], e["result"]) for e in deleted] == [
        (deleted_by, "acme", deleted_for, "INTENT"), (deleted_by, "acme", deleted_for, "OK")]
