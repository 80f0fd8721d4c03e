"""No card number reaches the audit log through a refused call, however the
caller spells it: as the tenant of the token it names, in its reason, or in
the subject of its own (validly signed) JWT."""

from __future__ import annotations

import grpc
import pytest

from cardlink.vault.v1 import admin_pb2, vault_pb2
from tests.support.vault import VaultHandle

PAN = "4111111111111111"
TOKEN = "ctk_" + "a" * 26


async def _audit_text(vault: VaultHandle) -> str:
    records = [r async for r in vault.admin.ExportAudit(admin_pb2.ExportAuditRequest(),
                                                         metadata=vault.security())]
    return repr([dict(r.fields) for r in records])


@pytest.mark.parametrize("tenant", [PAN, "4111-1111-1111-1111"])
async def test_unauthenticated_refusal_does_not_audit_a_pan_spelled_as_the_tenant(
        vault: VaultHandle, tenant: str) -> None:
    name = f"tenants/{tenant}/tokens/{TOKEN}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(name=name, reason="x"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError):
        await vault.stub.DeleteToken(vault_pb2.DeleteTokenRequest(name=name))
    text = await _audit_text(vault)
    assert tenant not in text


async def test_delete_tenant_mismatch_does_not_audit_a_pan_spelled_as_the_tenant(
        vault: VaultHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await vault.stub.DeleteToken(vault_pb2.DeleteTokenRequest(
            name=f"tenants/{PAN}/tokens/{TOKEN}"), metadata=vault.partner())
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert PAN not in await _audit_text(vault)


@pytest.mark.parametrize("reason", ["card 4111,1111,1111,1111", "4111:1111:1111:1111",
                                    "4111    1111    1111    1111",
                                    "card " + "\uff14\uff11\uff11\uff11 " * 4])
async def test_unauthenticated_refusal_does_not_audit_a_pan_in_the_reason(
        vault: VaultHandle, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=f"tenants/acme/tokens/{TOKEN}", reason=reason))
    text = await _audit_text(vault)
    assert "1111" not in text and "\uff11\uff11\uff11" not in text, text


async def test_a_subject_that_could_hold_a_card_number_is_refused_and_not_audited(
        vault: VaultHandle) -> None:
    """An issuer signs whatever its tokens say: a subject that is not printable,
    is overlong or could spell a card number is refused as the credential's
    fault, and the entry of that refusal shows none of it."""
    sub = "4111 1111 1111 1111\nforged=line" + "x" * 500
    token = vault.identities.minter("acme-partner", "cardlink-vault").mint(
        sub, "acme", ["vault.tokens.get"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=f"tenants/acme/tokens/{TOKEN}", reason="x"),
            metadata=(("authorization", f"Bearer {token}"),))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == "the token's subject is invalid"
    text = await _audit_text(vault)
    assert "4111 1111 1111 1111" not in text and "\\n" not in text and "x" * 100 not in text
