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
from vault.tokens import is_token

PAN = "4111111111111111"
TOKEN = "ctk_" + "a" * 26


async def _records(vault: VaultHandle) -> list[dict[str, str]]:
    return [dict(r.fields) async for r in vault.admin.ExportAudit(
        admin_pb2.ExportAuditRequest(), metadata=vault.security())]


async def _audit_text(vault: VaultHandle) -> str:
    return repr(await _records(vault))


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
    assert "4012888888881881" not in _digits(await _audit_text(vault))


_DINGBAT_PAN = "".join("\u24ea" if c == "0" else chr(0x2780 + int(c) - 1)
                       for c in "4012888888881881")


def _digits(text: str) -> str:
    """The digits a reader sees: every character with a digit value, as ASCII."""
    return "".join(str(d) for c in unicodedata.normalize("NFKC", text)
                   if (d := unicodedata.digit(c, None)) is not None)


@pytest.mark.parametrize("text", [
    "card 4012 8888 8888 1881", "4012,8888,8888,1881", "4012:8888:8888:1881",
    "card \u2074\u2070\u00b9\u00b2\u2078\u2078\u2078\u2078\u2078\u2078\u2078\u2078"
    "\u00b9\u2078\u2078\u00b9",  # superscript digits
    "card " + _DINGBAT_PAN,  # circled dingbat digits: no NFKC form, not \d
    "4012\u31648888\u31648888\u31641881",  # a blank-looking Hangul filler between groups
    "4012\u01c08888\u01c08888\u01c01881",  # a letter that looks like a bar
    "4012\u21608888\u21608888\u21601881",  # ROMAN NUMERAL ONE (NFKC: "I")
    "4012\u21168888\u21168888\u21161881",  # NUMERO SIGN (NFKC: "No")
    "batch_size=0 limit=4012888888881881", "caller tenant t-40128; 88888881881",
])
def test_an_entry_s_free_text_is_kept_without_a_card_number(text: str) -> None:
    entry = AuditEntry(action="detokenize", caller="svc", tenant="acme", token="",
                       result="OK", time=1_795_000_000.25, reason=text)
    stored = entry.values()
    assert stored[FIELDS.index("time")] == "1795000000.25"  # times are not text
    kept = _digits(stored[FIELDS.index("reason")])
    assert "4012888888881881" not in kept and "88888881881" not in kept, stored


def test_identifiers_are_kept_exactly() -> None:
    """Who, whose and which request: numeric subjects (a service account's 21
    digits), numeric tenants and UUID4 request ids stay distinct and exact."""
    entries = [AuditEntry("detokenize", caller, tenant, "", "OK", 1.0, "x", request_id)
               for caller, tenant, request_id in (
                   ("112233445566778899001", "100000000001",
                    "3f0e2a1b-1234-4567-8901-234567890abc"),
                   ("998877665544332211009", "100000000002", ""))]
    assert [(*e.values()[1:3], e.values()[7]) for e in entries] == [
        ("112233445566778899001", "100000000001", "3f0e2a1b-1234-4567-8901-234567890abc"),
        ("998877665544332211009", "100000000002", "")]


async def test_a_pan_split_between_the_claimed_caller_and_the_reason_is_not_kept(
        vault: VaultHandle) -> None:
    forged = jwt.encode({"iss": "x", "sub": "card 4012 8888"},
                        "not the issuer's key, and long enough for HS256", algorithm="HS256")
    with pytest.raises(grpc.aio.AioRpcError):
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=f"tenants/acme/tokens/{TOKEN}", reason="8888 1881"),
            metadata=(("authorization", f"Bearer {forged}"),))
    last = (await _records(vault))[-1]
    assert last["action"] == "detokenize" and last["token"] == TOKEN
    assert "4012888888881881" not in _digits(last["caller"] + last["reason"]), last


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


# Mastercard test PAN, Luhn-valid, only digits 2-7: fits the token alphabet.
MC_PAN = "5555555555554444"
PAN_TOKEN = "ctk_" + "a" * 10 + MC_PAN[:-1] + MC_PAN[-1]  # 10 + 15 + final "4"


async def test_a_token_name_whose_base32_spells_a_card_number_is_kept_without_it(
        vault: VaultHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=f"tenants/acme/tokens/{PAN_TOKEN}", reason="x"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and is_token(PAN_TOKEN)
    records = await _records(vault)
    assert not any(MC_PAN in _digits(r["token"]) for r in records), records[-1]


async def test_a_partner_s_delete_of_such_a_token_is_kept_without_it(
        vault: VaultHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await vault.stub.DeleteToken(vault_pb2.DeleteTokenRequest(
            name=f"tenants/acme/tokens/{PAN_TOKEN}"), metadata=vault.partner())
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    records = await _records(vault)
    assert not any(MC_PAN in _digits(r["token"]) for r in records), records[-2:]


# 4111111111111111 as 4, seven CIRCLED NUMBER ELEVEN (NFKC "11"), 1: no
# character but the first and last has a digit value, so the scrub counts 2.
CIRCLED = "card \u2463" + "\u246a" * 7 + "\u2460"


async def test_circled_numbers_of_two_digits_count_in_a_reason(
        vault: VaultHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name="tenants/acme/tokens/ctk_" + "a" * 26, reason=CIRCLED))
    last = (await _records(vault))[-1]
    assert "4111111111111111" not in _digits(last["reason"]), last


async def test_circled_numbers_of_two_digits_count_in_claims(
        vault: VaultHandle) -> None:
    forged = jwt.encode({"iss": "x", "sub": CIRCLED},
                        "not the issuer's key, and long enough for HS256", algorithm="HS256")
    with pytest.raises(grpc.aio.AioRpcError):
        await vault.stub.DeleteToken(vault_pb2.DeleteTokenRequest(
            name="tenants/acme/tokens/ctk_" + "a" * 26),
            metadata=(("authorization", f"Bearer {forged}"),))
    last = (await _records(vault))[-1]
    assert "4111111111111111" not in _digits(last["caller"]), last


async def test_a_pan_split_between_claims_and_tenant_is_not_kept(vault: VaultHandle) -> None:
    forged = jwt.encode({"iss": "x", "sub": "card 4012 8888"},
                        "not the issuer's key, and long enough for HS256", algorithm="HS256")
    with pytest.raises(grpc.aio.AioRpcError):
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name="tenants/88881881/tokens/ctk_" + "a" * 26, reason="x"),
            metadata=(("authorization", f"Bearer {forged}"),))
    last = (await _records(vault))[-1]
    assert "4012888888881881" not in _digits(last["caller"] + last["tenant"]), last


async def test_a_pan_split_between_reason_and_request_id_is_not_kept(
        vault: VaultHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name="tenants/acme/tokens/ctk_" + "a" * 26, reason="card 4012 8888",
            request_id="88881881-aaaa-4aaa-aaaa-aaaaaaaaaaaa"))
    last = (await _records(vault))[-1]
    assert "4012888888881881" not in _digits(last["reason"] + last["request_id"]), last


async def test_a_partner_without_the_scope_cannot_split_a_pan_over_tenant_and_reason(
        vault: VaultHandle) -> None:
    """4012888888881881 as tenant "4012-8888" and reason "8888 1881", with the
    token's letters between them in the entry."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=f"tenants/4012-8888/tokens/{TOKEN}", reason="8888 1881"),
            metadata=vault.partner())
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    last = (await _records(vault))[-1]
    assert "4012888888881881" not in _digits(last["tenant"] + last["reason"]), last


async def test_a_bank_detokenize_is_audited_exactly_and_a_reason_it_would_mask_is_refused(
        vault: VaultHandle) -> None:
    sealed = await vault.seal(vault_pb2.CardSecret(pan="4111111111111111", expiry_month=12,
                                                   expiry_year=2030, holder_name="A B",
                                                   national_id="ID1", phone="+4915112345678"))
    made = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
        parent="tenants/acme", sealed_card=sealed), metadata=vault.partner())
    with pytest.raises(grpc.aio.AioRpcError) as masked:  # the log could not keep it exactly
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=made.token.name, reason="tickets 1234, 5678, 9012"), metadata=vault.bank())
    assert masked.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason = "tickets 1234 and 5678"
    await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
        name=made.token.name, reason=reason), metadata=vault.bank())
    last = (await _records(vault))[-1]
    assert (last["caller"], last["tenant"], last["result"]) == ("cardlink-bank-svc", "acme", "OK")
    assert last["token"] == made.token.name.rsplit("/", 1)[1]
    assert last["reason"] == reason, last
