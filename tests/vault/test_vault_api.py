"""The vault over real gRPC on loopback, against a real Redis."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from cardlink.vault.v1 import vault_pb2
from clients.sealing import KeySetError, verify_key_set
from common.errors import CardLinkError
from common.grpc_errors import error_from_rpc
from tests.support.cards import card, numbered_card
from tests.support.identities import VAULT_PARTNER_SCOPES
from tests.support.jwt_attacks import NAMES, Attacks
from tests.support.keyspace import contents, snapshot
from tests.support.vault import VaultHandle


async def _error(call: object) -> CardLinkError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return error_from_rpc(caught.value)


async def _tokenize(vault: VaultHandle, secret: vault_pb2.CardSecret,
                    tenant: str = "acme") -> vault_pb2.TokenizeCardResponse:
    request = vault_pb2.TokenizeCardRequest(parent=f"tenants/{tenant}",
                                            sealed_card=await vault.seal(secret, tenant))
    return await vault.stub.TokenizeCard(request, metadata=vault.partner(tenant))


async def _keys(redis_client: aioredis.Redis, prefix: str) -> set[bytes]:
    return set(await snapshot(redis_client, f"{prefix}:*"))


async def test_round_trip_tokenize_get_detokenize(vault: VaultHandle) -> None:
    secret = card()
    created = await _tokenize(vault, secret)
    assert created.token.name.startswith("tenants/acme/tokens/ctk_")
    assert not created.already_known
    shown = created.token.card
    assert (shown.bin, shown.last_four, shown.expiry_year) == ("411111", "1111", 2031)
    assert shown.brand == vault_pb2.CARD_BRAND_VISA
    assert shown.masked_holder_name == "J*** D**"
    assert shown.masked_phone.endswith("5678") and "1234" not in shown.masked_phone

    got = await vault.stub.GetToken(vault_pb2.GetTokenRequest(name=created.token.name),
                                    metadata=vault.partner())
    assert got == created.token

    opened = await vault.stub.DetokenizeToken(
        vault_pb2.DetokenizeTokenRequest(name=created.token.name, reason="holder verification"),
        metadata=vault.bank())
    assert opened.card == secret


async def test_key_set_is_signed_and_pinned(vault: VaultHandle) -> None:
    signed = await vault.stub.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest())
    verified = verify_key_set(signed, await vault.pins())
    assert verified.current().key_id
    content = vault_pb2.SealingKeySetContent.FromString(signed.key_set)
    assert (content.keys[0].kem_id, content.keys[0].kdf_id, content.keys[0].aead_id) == (
        0x20, 0x1, 0x2)
    # A key set substituted by a relay (a gateway, say) fails verification.
    content.keys[0].public_key = bytes(32)
    forged = vault_pb2.SealingKeySet(key_set=content.SerializeToString(),
                                     signatures=signed.signatures)
    with pytest.raises(KeySetError):
        verify_key_set(forged, await vault.pins())


async def test_same_card_same_token_and_concurrent_tokenize(vault: VaultHandle) -> None:
    first = await _tokenize(vault, card())
    again = await _tokenize(vault, card(year=2032))  # a renewed card keeps its token
    assert again.already_known and again.token.name == first.token.name
    # ... and its stored details: a known card is never rewritten.
    assert again.token == first.token and again.token.card.expiry_year == 2031
    got = await vault.stub.GetToken(vault_pb2.GetTokenRequest(name=first.token.name),
                                    metadata=vault.partner())
    assert got == first.token

    fresh = numbered_card(7)
    results = await asyncio.gather(*(_tokenize(vault, fresh) for _ in range(50)))
    assert len({r.token.name for r in results}) == 1
    assert sum(not r.already_known for r in results) == 1


async def test_tenants_are_isolated(vault: VaultHandle) -> None:
    created = await _tokenize(vault, card())
    other = vault.partner("globex")
    error = await _error(vault.stub.GetToken(vault_pb2.GetTokenRequest(name=created.token.name),
                                             metadata=other))
    missing = await _error(vault.stub.GetToken(vault_pb2.GetTokenRequest(
        name="tenants/globex/tokens/ctk_" + "a" * 26), metadata=other))
    assert (error.code, error.reason) == (missing.code, missing.reason)
    assert error.reason == "TOKEN_NOT_FOUND" and str(error) == str(missing)
    # globex asking under acme's name is the same NOT_FOUND: nothing to confirm.
    denied = await _error(vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
        name=created.token.name, reason="x"), metadata=vault.bank("globex")))
    assert denied.reason == "TOKEN_NOT_FOUND"
    # The same card under another tenant gets another token.
    theirs = await _tokenize(vault, card(), tenant="globex")
    assert not theirs.already_known
    assert theirs.token.name.split("/")[-1] != created.token.name.split("/")[-1]


async def test_scopes_and_credentials(vault: VaultHandle) -> None:
    created = await _tokenize(vault, card())
    request = vault_pb2.DetokenizeTokenRequest(name=created.token.name, reason="audit")
    no_scope = await _error(vault.stub.DetokenizeToken(request, metadata=vault.partner()))
    assert (no_scope.code.value, no_scope.reason) == ("PERMISSION_DENIED", "SCOPE_MISSING")
    anonymous = await _error(vault.stub.GetToken(vault_pb2.GetTokenRequest(
        name=created.token.name)))
    assert anonymous.code.value == "UNAUTHENTICATED"
    expired = vault.identities.token("acme-partner", "acme", ["vault.tokens.get"], ttl=60)
    vault.clock.advance(3600)
    late = await _error(vault.stub.GetToken(vault_pb2.GetTokenRequest(name=created.token.name),
                                            metadata=(("authorization", f"Bearer {expired}"),)))
    assert (late.code.value, late.reason) == ("UNAUTHENTICATED", "TOKEN_EXPIRED")


@pytest.mark.parametrize("attack", NAMES)
async def test_jwt_attacks_are_refused_and_change_nothing(
    vault: VaultHandle, redis_client: aioredis.Redis, attack: str
) -> None:
    created = await _tokenize(vault, card())
    before = await snapshot(redis_client, f"{vault.config.redis_prefix}:vault:{{acme}}:*")
    token, reason = Attacks(vault.identities, "acme-partner", "cardlink-vault", "acme",
                            VAULT_PARTNER_SCOPES).all()[attack]
    metadata = (("authorization", f"Bearer {token}"),)
    refusals = [
        await _error(vault.stub.GetToken(vault_pb2.GetTokenRequest(
            name=created.token.name), metadata=metadata)),
        await _error(vault.stub.DeleteToken(vault_pb2.DeleteTokenRequest(
            name=created.token.name), metadata=metadata)),
    ]
    for error in refusals:
        assert (error.code.value, error.reason) == ("UNAUTHENTICATED", reason)
        assert token not in str(error)
    assert await snapshot(redis_client, f"{vault.config.redis_prefix}:vault:{{acme}}:*") == before


async def test_delete_destroys_and_retokenize_gives_new_token(
    vault: VaultHandle, redis_client: aioredis.Redis
) -> None:
    created = await _tokenize(vault, card())
    await vault.stub.DeleteToken(vault_pb2.DeleteTokenRequest(name=created.token.name),
                                 metadata=vault.partner())
    # Nothing that could open the card is left: no record, no fingerprint.
    for kind in ("tok", "fp"):
        pattern = vault.config.redis_prefix + ":vault:{acme}:" + kind
        assert await _keys(redis_client, pattern) == set()
    gone = await _error(vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
        name=created.token.name, reason="check"), metadata=vault.bank()))
    assert gone.reason == "TOKEN_NOT_FOUND"
    again = await _tokenize(vault, card())
    assert not again.already_known and again.token.name != created.token.name


async def test_moved_or_tampered_ciphertext_does_not_open(
    vault: VaultHandle, redis_client: Any
) -> None:
    one = (await _tokenize(vault, numbered_card(1))).token.name.split("/")[-1]
    two = (await _tokenize(vault, numbered_card(2))).token.name.split("/")[-1]
    prefix = vault.config.redis_prefix + ":vault:{acme}:tok:"
    stolen = await redis_client.hmget(prefix + one, ["ct", "nonce", "wdek"])
    await redis_client.hset(prefix + two, mapping=dict(zip(["ct", "nonce", "wdek"], stolen,
                                                           strict=True)))
    moved = await _error(vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
        name=f"tenants/acme/tokens/{two}", reason="check"), metadata=vault.bank()))
    assert (moved.code.value, moved.reason) == ("INTERNAL", "RECORD_UNREADABLE")

    ct = bytearray(stolen[0] or b"")
    ct[0] ^= 1
    await redis_client.hset(prefix + one, "ct", bytes(ct))
    tampered = await _error(vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
        name=f"tenants/acme/tokens/{one}", reason="check"), metadata=vault.bank()))
    assert tampered.reason == "RECORD_UNREADABLE"


BAD_CARDS = {
    "PAN_INVALID": card("4111111111111112"),  # fails Luhn
    "PAN_LENGTH": card("41111111111"),  # 11 digits
    "CARD_EXPIRED": card(year=2020),
    "EXPIRY_INVALID": vault_pb2.CardSecret(pan="4111111111111111", expiry_month=13,
                                           expiry_year=2031, holder_name="Jane Doe",
                                           national_id="ID1", phone="+4915112345678"),
    "HOLDER_NAME_INVALID": card(name="x" * 101),
    "NATIONAL_ID_INVALID": card(national_id="1" * 33),
    "PHONE_INVALID": card(phone="12345"),
}


@pytest.mark.parametrize("expected", sorted(BAD_CARDS))
async def test_bad_cards_are_refused_and_change_nothing(
    vault: VaultHandle, redis_client: aioredis.Redis, expected: str
) -> None:
    await vault.vault.service.keyring.snapshot()
    before = await _keys(redis_client, vault.config.redis_prefix)
    error = await _error(_tokenize(vault, BAD_CARDS[expected]))
    assert error.code.value == "INVALID_ARGUMENT"
    reason = "PAN_INVALID" if expected == "PAN_LENGTH" else expected
    assert reason in {v.reason for v in error.violations} | {error.reason}
    assert await _keys(redis_client, vault.config.redis_prefix) == before
    assert BAD_CARDS[expected].pan not in repr(error) + str(error.violations)


async def test_bad_requests_are_refused_and_change_nothing(
    vault: VaultHandle, redis_client: aioredis.Redis
) -> None:
    sealed = await vault.seal(card())
    before = await _keys(redis_client, vault.config.redis_prefix)
    cases: dict[str, vault_pb2.TokenizeCardRequest] = {
        "SEALED_CARD_UNREADABLE": vault_pb2.TokenizeCardRequest(
            parent="tenants/acme", sealed_card=vault_pb2.SealedCard(
                key_id=sealed.key_id, ciphertext=sealed.ciphertext[:-1] + b"\0")),
        "SEALING_KEY_UNKNOWN": vault_pb2.TokenizeCardRequest(
            parent="tenants/acme", sealed_card=vault_pb2.SealedCard(
                key_id="vhk-unknown", ciphertext=sealed.ciphertext)),
        "SEALED_CARD_INVALID": vault_pb2.TokenizeCardRequest(
            parent="tenants/acme", sealed_card=vault_pb2.SealedCard(
                key_id=sealed.key_id, ciphertext=b"x" * 5000)),
        "TENANT_INVALID": vault_pb2.TokenizeCardRequest(parent="acme", sealed_card=sealed),
    }
    for reason, request in cases.items():
        error = await _error(vault.stub.TokenizeCard(request, metadata=vault.partner()))
        assert error.reason == reason, reason
        assert error.code.value in {"INVALID_ARGUMENT", "FAILED_PRECONDITION"}
    # A card sealed for acme does not open for globex.
    cross = await _error(vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
        parent="tenants/globex", sealed_card=sealed), metadata=vault.partner("globex")))
    assert cross.reason == "SEALED_CARD_UNREADABLE"
    for name in ["tenants/acme/tokens/4111111111111111", "tenants/acme/tokens/ctk_short",
                 "tenants/ACME/tokens/ctk_" + "a" * 26, "x" * 300]:
        bad = await _error(vault.stub.GetToken(vault_pb2.GetTokenRequest(name=name),
                                               metadata=vault.partner()))
        assert bad.code.value == "INVALID_ARGUMENT" and bad.violations[0].field == "name"
        assert "4111111111111111" not in str(bad) + str(bad.violations)
    assert await _keys(redis_client, vault.config.redis_prefix) == before


async def test_no_pan_or_identity_in_redis_or_logs(
    vault: VaultHandle, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [numbered_card(n) for n in range(20, 30)]
    names = [(await _tokenize(vault, s)).token.name for s in secrets]
    for name in names:
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=name, reason="scan test"), metadata=vault.bank())
    await _error(_tokenize(vault, card("4111111111111112")))
    haystack = await contents(redis_client, f"{vault.config.redis_prefix}:*")
    haystack += caplog.text.encode()
    assert len(haystack) > 1000
    for secret in [*secrets, card("4111111111111112")]:
        for value in (secret.pan, secret.national_id, secret.phone, secret.holder_name):
            assert value.encode() not in haystack


@pytest.mark.parametrize(("what", "body"), [
    ("corrupt wire bytes", b"\xff\xff\xff\xff"),
    ("a name that is not UTF-8", b"\x0a\x02\xff\xfe"),  # field 1 (name), 2 bytes
])
async def test_a_request_that_does_not_parse_is_invalid_argument(
        vault: VaultHandle, what: str, body: bytes) -> None:
    """grpc alone answers UNKNOWN with the parser's exception text."""
    call = vault.channel.unary_unary("/cardlink.vault.v1.TokenVault/GetToken",
                                     request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(body, metadata=vault.partner())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
    assert error_from_rpc(caught.value).reason == "REQUEST_MALFORMED"
    assert "DecodeError" not in (caught.value.details() or "")
