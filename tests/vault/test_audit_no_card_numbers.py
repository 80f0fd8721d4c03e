"""No card number reaches the audit log through a refused call, however the
caller spells it: as the tenant of the token it names, in its reason, or in
the subject of its own (validly signed) JWT."""

from __future__ import annotations

import unicodedata

import grpc
import jwt
import pytest

from cardlink.vault.v1 import admin_pb2, vault_pb2
from tests.support.vault import VaultHandle
from vault.audit import FIELDS, AuditEntry

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


async def test_a_subject_that_could_hold_a_card_number_is_kept_without_it(
        vault: VaultHandle) -> None:
    """An issuer signs whatever its tokens say: the caller's subject is audited
    with the card number masked (the call itself is judged as always)."""
    token = vault.identities.minter("acme-partner", "cardlink-vault").mint(
        "svc 4111 1111 1111 1111", "acme", ["vault.tokens.get"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=f"tenants/acme/tokens/{TOKEN}", reason="x"),
            metadata=(("authorization", f"Bearer {token}"),))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    text = await _audit_text(vault)
    assert "1111" not in text and "'caller': 'svc [REDACTED]'" in text


async def test_a_request_id_or_claims_that_spell_a_card_number_are_kept_without_it(
        vault: VaultHandle) -> None:
    """No credential needed to try: a UUID4 whose digits spell a PAN, and a PAN
    split between the unverified issuer and subject of a forged JWT."""
    pan_uuid = "00000000-0000-4012-8888-888818810000"
    forged = jwt.encode({"iss": "https://x.test/4012-8888", "sub": "8888-1881"},
                        "not the issuer's key, and long enough for HS256", algorithm="HS256")
    for metadata, request_id in (((), pan_uuid),
                                 ((("authorization", f"Bearer {forged}"),), "")):
        with pytest.raises(grpc.aio.AioRpcError):
            await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
                name=f"tenants/acme/tokens/{TOKEN}", reason="x", request_id=request_id),
                metadata=metadata)
    digits = "".join(c for c in await _audit_text(vault) if c.isdigit())
    assert "4012888888881881" not in digits


@pytest.mark.parametrize("text", [
    "card 4012 8888 8888 1881", "4012,8888,8888,1881", "4012:8888:8888:1881",
    "card \u2074\u2070\u00b9\u00b2\u2078\u2078\u2078\u2078\u2078\u2078\u2078\u2078"
    "\u00b9\u2078\u2078\u00b9",  # superscript digits
    "4012\u31648888\u31648888\u31641881",  # a blank-looking Hangul filler between groups
    "4012\u01c08888\u01c08888\u01c01881", "batch_size=0 limit=4012888888881881",
    "caller tenant t-40128; 88888881881",
])
def test_every_text_field_of_an_entry_is_kept_without_a_card_number(text: str) -> None:
    entry = AuditEntry(action="detokenize", caller=text, tenant=text, token=text,
                       result="OK", time=1_795_000_000.25, reason=text, request_id=text)
    stored = entry.values()
    assert stored[FIELDS.index("time")] == "1795000000.25"  # times are not text
    kept = "".join(c for c in unicodedata.normalize("NFKC", repr(stored)) if c.isdigit())
    assert "4012888888881881" not in kept and "88888881881" not in kept


def test_text_without_a_card_number_is_kept_as_it_is() -> None:
    for text in ("holder verification", "chargeback 2024-05-01 case 4471",
                 "5f0d5a52-4cbe-4b5a-9a3e-0c3c1ae0a8f1", "caf\u00e9 \u00b9"):
        entry = AuditEntry("detokenize", text, "acme", "", "OK", 1.0, text, text)
        assert entry.values()[1] == text and entry.values()[6] == text
    # The price of never keeping a PAN: twelve digits with only punctuation
    # between them are masked, even when they were a date and a case number.
    dated = AuditEntry("detokenize", "bank", "acme", "", "OK", 1.0,
                       "chargeback 2024-05-01 (#4471)")
    assert dated.values()[6] == "chargeback [REDACTED])"
