"""The vault service against a real Redis: tokenize, get, delete, detokenize, keys."""

from __future__ import annotations

import asyncio
import random
import string
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from cardlink.vault.v1 import vault_pb2
from clients import sealing as partner
from common.clock import ManualClock
from common.errors import CardLinkError, Code, Internal, NotFound, Unavailable
from vault import Actor, CardSecret, DevKeyFile, VaultService
from vault.audit import AuditEntry, audit_key
from vault.crypto import seal
from vault.keyring import SEALING, current_field, encode_entry, keys_key
from vault.pan import luhn_valid
from vault.tokens import new_token

START = datetime(2027, 6, 15, 12, 0, tzinfo=UTC).timestamp()
REQUEST_ID = "6f1c2a3e-8b4d-4c5e-9f60-7a8b9c0d1e2f"  # a UUID4
BANK = Actor("bank-core", REQUEST_ID)


# --- helpers -------------------------------------------------------------------------


def random_card(rng: random.Random | None = None, **changes: Any) -> CardSecret:
    """A random, valid card whose every element is unique to this test run."""
    rng = rng or random.Random()
    body = "4" + "".join(rng.choice(string.digits) for _ in range(14))
    pan = next(body + d for d in string.digits if luhn_valid(body + d))
    first = "".join(rng.choice(string.ascii_lowercase) for _ in range(9)).capitalize()
    last = "".join(rng.choice(string.ascii_lowercase) for _ in range(11)).capitalize()
    values: dict[str, Any] = dict(
        pan=pan, expiry_month=rng.randint(1, 12), expiry_year=2030,
        holder_name=f"{first} {last}",
        national_id="ID" + "".join(rng.choice(string.digits) for _ in range(12)),
        phone="+86" + "".join(rng.choice(string.digits) for _ in range(11)),
    )
    values.update(changes)
    return CardSecret(**values)


def card_bytes(card: CardSecret) -> bytes:
    return vault_pb2.CardSecret(
        pan=card.pan, expiry_month=card.expiry_month, expiry_year=card.expiry_year,
        holder_name=card.holder_name, national_id=card.national_id, phone=card.phone,
    ).SerializeToString()


async def current_key(service: VaultService) -> vault_pb2.SealingKey:
    content = vault_pb2.SealingKeySetContent.FromString((await service.sealing_key_set()).key_set)
    return content.keys[0]


async def sealed_for(service: VaultService, tenant: str,
                     card: CardSecret | bytes) -> tuple[str, bytes]:
    key = await current_key(service)
    payload = card if isinstance(card, bytes) else card_bytes(card)
    return key.key_id, seal(key.public_key, payload, tenant=tenant)


async def tokenize(service: VaultService, tenant: str, card: CardSecret) -> Any:
    key_id, blob = await sealed_for(service, tenant, card)
    return await service.tokenize(tenant, key_id, blob, BANK)


async def dump(client: aioredis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key under the prefix with its full value."""
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = await client.type(key)
        if kind == b"hash":
            out[key] = await client.hgetall(key)
        elif kind == b"string":
            out[key] = await client.get(key)
        elif kind == b"stream":
            out[key] = await client.xrange(key)
        else:
            out[key] = kind
    return out


async def audit_entries(client: aioredis.Redis, prefix: str) -> list[dict[bytes, bytes]]:
    raw: Any = await client.xrange(audit_key(prefix))
    return [entry for _, entry in raw]


def make_service(client: aioredis.Redis, prefix: str, clock: ManualClock, key_file: Path,
                 **kwargs: Any) -> VaultService:
    return VaultService.create(client, prefix=prefix, clock=clock, dev_key_file=key_file,
                               **kwargs)


# --- the happy paths -----------------------------------------------------------------


async def test_round_trip_tokenize_get_detokenize(service: VaultService,
                                                  redis_client: aioredis.Redis,
                                                  key_prefix: str) -> None:
    card = random_card(holder_name="John Doe", phone="+14155551234")
    result = await tokenize(service, "acme", card)
    record = result.record
    assert not result.already_known
    assert record.name == f"tenants/acme/tokens/{record.token}"
    assert record.display.bin == card.pan[:6]
    assert record.display.last_four == card.pan[-4:]
    assert record.display.masked_holder_name == "J*** D**"
    assert record.display.masked_phone == "*******1234"
    assert record.create_time == record.update_time == START

    assert await service.get("acme", record.token) == record
    got, clear = await service.detokenize("acme", record.token, "holder verification", BANK)
    assert got == record
    assert clear == card

    entries = await audit_entries(redis_client, key_prefix)
    assert len(entries) == 1
    fields = {k.decode(): v.decode() for k, v in entries[0].items()}
    assert fields.pop("seq") == "1" and len(fields.pop("mac")) == 64  # the chain (issue 4)
    assert fields == {"action": "detokenize", "caller": "bank-core", "tenant": "acme",
                      "token": record.token, "result": "OK", "time": repr(START),
                      "reason": "holder verification", "request_id": REQUEST_ID}


async def test_same_card_twice_same_token_and_details_kept(service: VaultService,
                                                           clock: ManualClock) -> None:
    card = random_card(expiry_year=2030)
    first = await tokenize(service, "acme", card)
    clock.advance(60)
    renewed = CardSecret(card.pan, 3, 2033, "Jane Roe", "ID-OTHER-1", "+4915199999999")
    second = await tokenize(service, "acme", renewed)
    assert second.already_known
    # A known card is never rewritten: the stored details stand.
    assert second.record == first.record
    assert second.record.create_time == second.record.update_time == START
    assert second.record.display.expiry_year == 2030
    assert await service.get("acme", first.record.token) == first.record
    _, clear = await service.detokenize("acme", first.record.token, "check", BANK)
    assert clear == card


async def test_fifty_concurrent_tokenizes_of_one_new_card_give_one_token(
        service: VaultService, redis_client: aioredis.Redis, key_prefix: str) -> None:
    card = random_card()
    key_id, blob = await sealed_for(service, "acme", card)
    results = await asyncio.gather(*(service.tokenize("acme", key_id, blob, BANK)
                                     for _ in range(50)))
    assert len({r.record.token for r in results}) == 1
    assert sorted(r.already_known for r in results) == [False] + [True] * 49
    keys = await dump(redis_client, f"{key_prefix}:vault:{{acme}}")
    keys.pop(f"{key_prefix}:vault:{{acme}}:counts".encode())  # per-version counters
    assert len(keys) == 2  # one record, one fingerprint mapping
    _, clear = await service.detokenize("acme", results[0].record.token, "check", BANK)
    assert clear == card


async def test_delete_then_tokenize_gives_new_token(service: VaultService,
                                                    redis_client: aioredis.Redis,
                                                    key_prefix: str) -> None:
    card = random_card()
    old = (await tokenize(service, "acme", card)).record.token
    await service.delete("acme", old, BANK)
    assert await dump(redis_client, f"{key_prefix}:vault:{{acme}}") == {}
    for call in (service.get("acme", old), service.delete("acme", old, BANK),
                 service.detokenize("acme", old, "check", BANK)):
        with pytest.raises(NotFound) as caught:
            await call
        assert caught.value.reason == "TOKEN_NOT_FOUND"
    again = await tokenize(service, "acme", card)
    assert not again.already_known
    assert again.record.token != old
    audit = await audit_entries(redis_client, key_prefix)
    assert [(e[b"action"], e[b"result"]) for e in audit] == [
        (b"delete", b"INTENT"), (b"delete", b"OK"),  # audit-before-act: intent, outcome
        (b"delete", b"INTENT"), (b"delete", b"TOKEN_NOT_FOUND"),
        (b"detokenize", b"TOKEN_NOT_FOUND")]


async def test_other_tenants_token_is_not_found_exactly_like_a_missing_one(
        service: VaultService) -> None:
    card = random_card()
    token = (await tokenize(service, "acme", card)).record.token
    errors = []
    for tenant, tok in (("beta", token), ("acme", new_token())):
        for call in (service.get(tenant, tok), service.delete(tenant, tok, BANK),
                     service.detokenize(tenant, tok, "check", BANK)):
            with pytest.raises(NotFound) as caught:
                await call
            errors.append((caught.value.reason, caught.value.message, caught.value.metadata))
    assert len(set(map(repr, errors))) == 1
    # The same card in another tenant is another token, and acme's is untouched.
    other = await tokenize(service, "beta", card)
    assert not other.already_known
    assert other.record.token != token
    assert (await service.get("acme", token)).token == token


# --- the sealing key set -------------------------------------------------------------


async def test_key_set_is_signed_and_verifies_with_the_partner_helper(
        service: VaultService) -> None:
    signed = await service.sealing_key_set()
    keys = await service.keyring.snapshot()
    signer = keys.signing_keys[0].key
    assert [s.signing_key_id for s in signed.signatures] == [signer.key_id]
    pins = {signer.key_id: Ed25519PublicKey.from_public_bytes(signer.public_key)}
    message = vault_pb2.SealingKeySet(
        key_set=signed.key_set,
        signatures=[vault_pb2.KeySetSignature(signing_key_id=s.signing_key_id,
                                              signature=s.signature) for s in signed.signatures])
    verified = partner.verify_key_set(message, pins)
    current = verified.current()
    assert current.key_id == keys.sealing_keys[0].key_id
    content = vault_pb2.SealingKeySetContent.FromString(signed.key_set)
    key = content.keys[0]
    assert (key.kem_id, key.kdf_id, key.aead_id) == (0x20, 0x01, 0x02)
    assert key.state == vault_pb2.SealingKey.STATE_CURRENT
    assert not key.HasField("expire_time")

    card = random_card()
    sealed = partner.seal_card(current, "tenants/acme", vault_pb2.CardSecret(
        pan=card.pan, expiry_month=card.expiry_month, expiry_year=card.expiry_year,
        holder_name=card.holder_name, national_id=card.national_id, phone=card.phone))
    result = await service.tokenize("acme", sealed.key_id, sealed.ciphertext, BANK)
    assert result.record.display.last_four == card.pan[-4:]


async def _rotate_sealing_key(client: aioredis.Redis, prefix: str, key_file: Path,
                              clock: ManualClock, grace: float) -> str:
    """What the key tool's `rotate seal` will do: add a key, make it current,
    give the old one an expiry, bump the generation."""
    from vault.crypto import SealingKey
    from vault.keyring import Keyring

    root = await DevKeyFile(key_file).root_key()
    keyring = Keyring(client, prefix=prefix, root_keys=DevKeyFile(key_file), clock=clock)
    old = (await keyring.snapshot()).sealing_keys[0]
    new = SealingKey.generate()
    now = clock.now()
    fields = dict([
        encode_entry(root, SEALING, 2, new.key_id, new.private_bytes(), now),
        encode_entry(root, SEALING, 1, old.key_id, old.key.private_bytes(), old.create_time,
                     now + grace),
    ])
    fields[current_field(SEALING)] = "2"
    await client.hset(keys_key(prefix), mapping=fields)  # type: ignore[arg-type]
    await client.hincrby(keys_key(prefix), "gen", 1)
    return new.key_id


async def test_previous_sealing_key_opens_within_grace_then_expires(
        service: VaultService, redis_client: aioredis.Redis, key_prefix: str,
        key_file: Path, clock: ManualClock) -> None:
    old_key_id, old_blob = await sealed_for(service, "acme", random_card())
    new_key_id = await _rotate_sealing_key(redis_client, key_prefix, key_file, clock, grace=600)
    # This process learns of the rotation on its next refresh (or an unknown key id).
    clock.advance(2)
    content = vault_pb2.SealingKeySetContent.FromString((await service.sealing_key_set()).key_set)
    assert [k.key_id for k in content.keys] == [new_key_id, old_key_id]
    assert content.keys[1].state == vault_pb2.SealingKey.STATE_PREVIOUS
    assert content.keys[1].expire_time.ToSeconds() == int(START + 600)

    result = await service.tokenize("acme", old_key_id, old_blob, BANK)
    assert not result.already_known
    clock.advance(600)
    _, second_blob = await sealed_for(service, "acme", random_card())
    with pytest.raises(CardLinkError) as caught:
        await service.tokenize("acme", old_key_id, second_blob, BANK)
    assert (caught.value.code, caught.value.reason) == (Code.FAILED_PRECONDITION,
                                                         "SEALING_KEY_EXPIRED")
    assert caught.value.metadata == {"key_ids": new_key_id}
    content = vault_pb2.SealingKeySetContent.FromString((await service.sealing_key_set()).key_set)
    assert [k.key_id for k in content.keys] == [new_key_id]


async def test_unknown_key_id_forces_a_keyring_refresh(
        redis_client: aioredis.Redis, key_prefix: str, key_file: Path,
        clock: ManualClock) -> None:
    # Refresh interval long enough that only the forced check can see the rotation.
    stale = make_service(redis_client, key_prefix, clock, key_file, keyring_refresh_seconds=3600)
    await stale.sealing_key_set()
    new_key_id = await _rotate_sealing_key(redis_client, key_prefix, key_file, clock, grace=60)
    fresh = make_service(redis_client, key_prefix, clock, key_file)
    key = await current_key(fresh)
    assert key.key_id == new_key_id
    blob = seal(key.public_key, card_bytes(random_card()), tenant="acme")
    result = await stale.tokenize("acme", new_key_id, blob, BANK)
    assert result.record.token


async def _add_key_version(client: aioredis.Redis, prefix: str, key_file: Path,
                           clock: ManualClock, kind: str) -> None:
    """What the key tool's `rotate kek|fp` will do: add version 2, make it current."""
    from vault.crypto import new_symmetric_key

    root = await DevKeyFile(key_file).root_key()
    fields = dict([encode_entry(root, kind, 2, f"{kind}-2", new_symmetric_key(), clock.now())])
    fields[current_field(kind)] = "2"
    await client.hset(keys_key(prefix), mapping=fields)  # type: ignore[arg-type]
    await client.hincrby(keys_key(prefix), "gen", 1)


async def test_kek_rotation_reaches_a_stale_process_through_the_record(
        service: VaultService, redis_client: aioredis.Redis, key_prefix: str,
        key_file: Path, clock: ManualClock) -> None:
    stale = make_service(redis_client, key_prefix, clock, key_file, keyring_refresh_seconds=3600)
    old_card = random_card()
    old = (await tokenize(stale, "acme", old_card)).record.token
    await _add_key_version(redis_client, key_prefix, key_file, clock, "kek")
    clock.advance(2)  # `service` refreshes every second; `stale` not for an hour
    new_card = random_card()
    new = (await tokenize(service, "acme", new_card)).record.token
    assert await redis_client.hget(f"{key_prefix}:vault:{{acme}}:tok:{new}", "kek") == b"2"
    assert await redis_client.hget(f"{key_prefix}:vault:{{acme}}:tok:{old}", "kek") == b"1"
    # The stale process meets version 2 in a record and reloads instead of failing.
    assert (await stale.detokenize("acme", new, "check", BANK))[1] == new_card
    assert (await service.detokenize("acme", old, "check", BANK))[1] == old_card


async def test_fingerprint_rotation_keeps_same_card_same_token(
        service: VaultService, redis_client: aioredis.Redis, key_prefix: str,
        key_file: Path, clock: ManualClock) -> None:
    card = random_card()
    first = (await tokenize(service, "acme", card)).record.token
    await _add_key_version(redis_client, key_prefix, key_file, clock, "fp")
    clock.advance(2)
    again = await tokenize(service, "acme", card)
    assert again.already_known
    assert again.record.token == first
    # The new version is lookup-only until it has settled (CARDLINK_KEY_SETTLE_S),
    # so a process that has not seen it yet still finds every new mapping.
    fresh = await tokenize(service, "acme", random_card())
    fpv = await redis_client.hget(f"{key_prefix}:vault:{{acme}}:tok:{fresh.record.token}", "fpv")
    assert fpv == b"1"
    clock.advance(service.keyring.settle_seconds)
    settled = await tokenize(service, "acme", random_card())
    fpv = await redis_client.hget(f"{key_prefix}:vault:{{acme}}:tok:{settled.record.token}",
                                  "fpv")
    assert fpv == b"2"
    assert (await tokenize(service, "acme", card)).record.token == first  # still found


# --- keyring start-up ----------------------------------------------------------------


async def test_concurrent_first_starts_agree_on_one_keyring(
        redis_client: aioredis.Redis, key_prefix: str, key_file: Path,
        clock: ManualClock) -> None:
    services = [make_service(redis_client, key_prefix, clock, key_file) for _ in range(10)]
    key_sets = await asyncio.gather(*(s.keyring.snapshot() for s in services))
    assert len({k.sealing_keys[0].key_id for k in key_sets}) == 1
    assert len({k.signing_keys[0].key.key_id for k in key_sets}) == 1
    assert key_file.stat().st_mode & 0o777 == 0o600  # noqa: ASYNC240
    assert key_file.parent.stat().st_mode & 0o077 == 0
    # A card tokenized through one process opens through another.
    token = (await tokenize(services[0], "acme", card := random_card())).record.token
    assert (await services[7].detokenize("acme", token, "check", BANK))[1] == card


async def test_concurrent_key_file_creation_yields_one_key(tmp_path: Path) -> None:
    path = tmp_path / "k" / "root.key"
    keys = await asyncio.gather(*(asyncio.to_thread(asyncio.run, DevKeyFile(path).root_key())
                                  for _ in range(8)))
    assert len({k.key_id for k in keys}) == 1
    assert [p.name for p in path.parent.iterdir()] == ["root.key"]


async def test_wrong_root_key_is_refused(service: VaultService, redis_client: aioredis.Redis,
                                         key_prefix: str, tmp_path: Path,
                                         clock: ManualClock) -> None:
    other = make_service(redis_client, key_prefix, clock, tmp_path / "other.key")
    with pytest.raises(Internal) as caught:
        await other.sealing_key_set()
    assert caught.value.reason == "ROOT_KEY_MISMATCH"


async def test_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    await DevKeyFile(path).root_key()
    path.chmod(0o644)
    with pytest.raises(Internal):
        await DevKeyFile(path).root_key()


# --- bad input changes nothing -------------------------------------------------------


@dataclass
class BadCase:
    code: Code
    reason: str
    tenant: str = "acme"
    key_id: str | None = None
    blob: bytes | None = None
    card: dict[str, Any] = field(default_factory=dict)
    sealed_tenant: str = "acme"
    payload: bytes | None = None
    violation: str | None = None


BAD_TOKENIZE = {
    "tenant": BadCase(Code.INVALID_ARGUMENT, "TENANT_INVALID", tenant="Acme!"),
    "empty-key-id": BadCase(Code.INVALID_ARGUMENT, "SEALING_KEY_ID_INVALID", key_id=""),
    "long-key-id": BadCase(Code.INVALID_ARGUMENT, "SEALING_KEY_ID_INVALID", key_id="k" * 65),
    "unknown-key-id": BadCase(Code.FAILED_PRECONDITION, "SEALING_KEY_UNKNOWN",
                              key_id="hpke-0000000000000000"),
    "empty-blob": BadCase(Code.INVALID_ARGUMENT, "SEALED_CARD_INVALID", blob=b""),
    "oversized-blob": BadCase(Code.INVALID_ARGUMENT, "SEALED_CARD_INVALID", blob=b"x" * 4097),
    "garbage-blob": BadCase(Code.INVALID_ARGUMENT, "SEALED_CARD_UNREADABLE", blob=b"x" * 80),
    "other-tenant": BadCase(Code.INVALID_ARGUMENT, "SEALED_CARD_UNREADABLE", sealed_tenant="beta"),
    "not-a-card": BadCase(Code.INVALID_ARGUMENT, "SEALED_CARD_UNREADABLE", payload=b"\xff\xff"),
    "luhn": BadCase(Code.INVALID_ARGUMENT, "PAN_INVALID", card={"pan": "4111111111111112"},
                    violation="card.pan"),
    "short-pan": BadCase(Code.INVALID_ARGUMENT, "PAN_INVALID", card={"pan": "42424242426"}),
    "long-pan": BadCase(Code.INVALID_ARGUMENT, "PAN_INVALID", card={"pan": "4" * 19 + "2"}),
    "expired": BadCase(Code.INVALID_ARGUMENT, "CARD_EXPIRED",
                       card={"expiry_month": 5, "expiry_year": 2027}),
    "month-13": BadCase(Code.INVALID_ARGUMENT, "EXPIRY_INVALID", card={"expiry_month": 13}),
    "two-digit-year": BadCase(Code.INVALID_ARGUMENT, "EXPIRY_INVALID", card={"expiry_year": 30}),
    "long-name": BadCase(Code.INVALID_ARGUMENT, "HOLDER_NAME_INVALID",
                         card={"holder_name": "N" * 101}),
    "long-national-id": BadCase(Code.INVALID_ARGUMENT, "NATIONAL_ID_INVALID",
                                card={"national_id": "1" * 33}),
    "phone": BadCase(Code.INVALID_ARGUMENT, "PHONE_INVALID", card={"phone": "0155 555 1234"}),
}


@pytest.mark.parametrize("case", BAD_TOKENIZE.values(), ids=BAD_TOKENIZE.keys())
async def test_bad_tokenize_is_refused_and_writes_nothing(
        service: VaultService, redis_client: aioredis.Redis, key_prefix: str,
        case: BadCase) -> None:
    await tokenize(service, "acme", random_card())  # something to leave untouched
    card = random_card(**case.card)
    key = await current_key(service)
    payload = case.payload if case.payload is not None else card_bytes(card)
    blob = case.blob if case.blob is not None else seal(key.public_key, payload,
                                                        tenant=case.sealed_tenant)
    key_id = case.key_id if case.key_id is not None else key.key_id
    before = await dump(redis_client, key_prefix)
    with pytest.raises(CardLinkError) as caught:
        await service.tokenize(case.tenant, key_id, blob, BANK)
    error = caught.value
    assert (error.code, error.reason) == (case.code, case.reason)
    assert await dump(redis_client, key_prefix) == before
    text = " ".join([str(error), repr(error), *map(str, error.violations),
                     *error.metadata.values()])
    for secret in (card.pan, card.holder_name, card.national_id, card.phone):
        assert secret not in text
    if case.code is Code.INVALID_ARGUMENT:
        assert error.violations
        assert error.violations[0].reason == case.reason
    if case.violation:
        assert error.violations[0].field == "sealed_card.ciphertext"
        assert error.violations[0].description.startswith(case.violation)
    if case.reason == "SEALING_KEY_UNKNOWN":
        assert error.metadata == {"key_ids": key.key_id}


@pytest.mark.parametrize("token", ["", "ctk_short", "CTK_" + "a" * 26, "ctk_" + "a" * 25 + "b",
                                   "../../x", "ctk_" + "a" * 26 + "\x00"])
async def test_malformed_token_is_invalid_argument_and_writes_nothing(
        service: VaultService, redis_client: aioredis.Redis, key_prefix: str, token: str) -> None:
    before = await dump(redis_client, key_prefix)
    for call in (service.get("acme", token), service.delete("acme", token, BANK),
                 service.detokenize("acme", token, "check", BANK)):
        with pytest.raises(CardLinkError) as caught:
            await call
        assert (caught.value.code, caught.value.reason) == (Code.INVALID_ARGUMENT,
                                                             "TOKEN_NAME_INVALID")
        assert caught.value.violations[0].field == "name"
    # Nothing is written but the malformed detokenize's audit entry (without the value).
    assert _without_audit(await dump(redis_client, key_prefix)) == _without_audit(before)
    entries = await audit_entries(redis_client, key_prefix)
    assert [(e[b"action"], e[b"result"], e[b"token"]) for e in entries] == [
        (b"detokenize", b"TOKEN_NAME_INVALID", b"")]


def _without_audit(keys: dict[bytes, Any]) -> dict[bytes, Any]:
    return {k: v for k, v in keys.items() if b":{audit}:" not in k}


@pytest.mark.parametrize("reason", ["", " ", "x" * 201, "line\nbreak", "card 4111111111111111",
                                    "ref 4111-1111-1111", "call 0049 1511 2345 6789"])
async def test_bad_detokenize_reason_is_refused_and_audited_without_it(
        service: VaultService, redis_client: aioredis.Redis, key_prefix: str,
        reason: str) -> None:
    token = (await tokenize(service, "acme", random_card())).record.token
    before = await dump(redis_client, key_prefix)
    with pytest.raises(CardLinkError) as caught:
        await service.detokenize("acme", token, reason, BANK)
    assert caught.value.reason == "REASON_INVALID"
    assert caught.value.violations[0].field == "reason"
    assert _without_audit(await dump(redis_client, key_prefix)) == _without_audit(before)
    entries = await audit_entries(redis_client, key_prefix)
    assert [(e[b"action"], e[b"result"], e[b"reason"]) for e in entries] == [
        (b"detokenize", b"REASON_INVALID", b"")]


@pytest.mark.parametrize("reason", ["dispute 2024-05-01", "order 12345678901", "ticket 1234"])
async def test_reasons_with_short_numbers_are_accepted(service: VaultService,
                                                       reason: str) -> None:
    token = (await tokenize(service, "acme", random_card())).record.token
    await service.detokenize("acme", token, reason, BANK)


@pytest.mark.parametrize("request_id", [
    "req-1", "4111111111111111", "38d98f7a-e8e4-11f1-987b-02fc00000001",  # a UUID1
    "6F1C2A3E8B4D4C5E9F607A8B9C0D1E2F", " " * 36])
async def test_request_id_must_be_empty_or_uuid4(
        service: VaultService, redis_client: aioredis.Redis, key_prefix: str,
        request_id: str) -> None:
    token = (await tokenize(service, "acme", random_card())).record.token
    actor = Actor("bank-core", request_id)
    for call in (service.delete("acme", token, actor),
                 service.detokenize("acme", token, "check", actor)):
        with pytest.raises(CardLinkError) as caught:
            await call
        assert caught.value.reason == "REQUEST_ID_INVALID"
        assert caught.value.violations[0].field == "request_id"
    await service.get("acme", token)  # not deleted
    entries = await audit_entries(redis_client, key_prefix)
    assert [(e[b"action"], e[b"result"], e[b"request_id"]) for e in entries] == [
        (b"detokenize", b"REQUEST_ID_INVALID", b"")]
    await service.detokenize("acme", token, "check", Actor("bank-core", ""))
    await service.detokenize("acme", token, "check", Actor("bank-core", str(uuid.uuid4())))


# --- storage holds nothing in clear --------------------------------------------------


async def test_redis_holds_no_pan_or_identity_element(service: VaultService,
                                                      redis_client: aioredis.Redis,
                                                      key_prefix: str) -> None:
    cards = [random_card() for _ in range(5)]
    for card in cards:
        token = (await tokenize(service, "acme", card)).record.token
        await tokenize(service, "acme", card)  # the known-card path writes too
        await service.detokenize("acme", token, "check", BANK)
    secrets_ = []
    for card in cards:
        secrets_ += [card.pan, card.national_id, card.phone, card.phone[1:], card.holder_name,
                     *card.holder_name.split()]
    blobs: list[Any] = []
    client: Any = redis_client
    async for key in client.scan_iter(count=1000):  # the whole DB, not just our prefix
        blobs.append(key)
        kind = await client.type(key)
        if kind == b"hash":
            for name, value in (await client.hgetall(key)).items():
                blobs += [name, value]
        elif kind == b"string":
            blobs.append(await client.get(key) or b"")
        elif kind == b"stream":
            for _, entry in await client.xrange(key):
                for name, value in entry.items():
                    blobs += [name, value]
    haystack = b"\n".join(blobs)
    for secret in secrets_:
        assert secret.encode() not in haystack
    record = await redis_client.hgetall(f"{key_prefix}:vault:{{acme}}:tok:{token}")
    assert set(record) == {b"ct", b"nonce", b"wdek", b"kek", b"fp", b"fpv", b"bin", b"last4",
                           b"brand", b"exp_m", b"exp_y", b"mname", b"mphone", b"ctime", b"mtime"}


async def test_ciphertext_moved_or_tampered_in_redis_does_not_open(
        service: VaultService, redis_client: aioredis.Redis, key_prefix: str) -> None:
    a = (await tokenize(service, "acme", random_card())).record.token
    b = (await tokenize(service, "acme", random_card())).record.token
    key_a = f"{key_prefix}:vault:{{acme}}:tok:{a}"
    key_b = f"{key_prefix}:vault:{{acme}}:tok:{b}"
    moved: Any = await redis_client.hmget(key_a, ["ct", "nonce", "wdek"])
    await redis_client.hset(key_b, mapping={"ct": moved[0], "nonce": moved[1], "wdek": moved[2]})
    with pytest.raises(Internal) as caught:
        await service.detokenize("acme", b, "check", BANK)
    assert caught.value.reason == "RECORD_UNREADABLE"
    ct = bytearray(moved[0])
    ct[3] ^= 1
    await redis_client.hset(key_a, "ct", bytes(ct))
    with pytest.raises(Internal):
        await service.detokenize("acme", a, "check", BANK)
    audit = await audit_entries(redis_client, key_prefix)
    assert [e[b"result"] for e in audit] == [b"RECORD_UNREADABLE"] * 2


class FailingAudit:
    async def append(self, entry: AuditEntry) -> str:
        raise Unavailable("AUDIT_UNAVAILABLE", "audit log down")


async def test_detokenize_fails_when_the_audit_write_fails(
        service: VaultService, redis_client: aioredis.Redis, key_prefix: str,
        clock: ManualClock) -> None:
    token = (await tokenize(service, "acme", random_card())).record.token
    from vault.store import VaultStore

    blind = VaultService(store=VaultStore(redis_client, prefix=key_prefix),
                         keyring=service.keyring, audit=FailingAudit(), clock=clock)
    with pytest.raises(Unavailable):
        await blind.detokenize("acme", token, "check", BANK)


# --- stateful model ------------------------------------------------------------------

CARD_POOL = [random_card(random.Random(seed)) for seed in range(4)]
TENANTS = ["acme", "beta"]


class VaultMachine(RuleBasedStateMachine):
    """tokenize / retry / get / delete / detokenize against a dictionary model."""

    tokens = Bundle("tokens")

    def __init__(self, redis_url: str, prefix: str, key_file: Path) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.Redis.from_url(redis_url)
        self.prefix = f"{prefix}:{new_token()[4:12]}"
        self.clock = ManualClock(START)
        self.service = make_service(self.client, self.prefix, self.clock, key_file)
        self.by_card: dict[tuple[str, str], str] = {}  # (tenant, pan) -> live token
        self.cards: dict[tuple[str, str], CardSecret] = {}  # (tenant, token) -> stored card
        self.last_request: tuple[str, str, bytes] | None = None

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()

    def _expect_tokenized(self, tenant: str, card: CardSecret, result: Any) -> tuple[str, str]:
        known = self.by_card.get((tenant, card.pan))
        assert result.already_known == (known is not None)
        if known is not None:
            assert result.record.token == known
        else:
            assert all(result.record.token != t for _, t in self.cards)
        self.by_card[(tenant, card.pan)] = result.record.token
        # A known card is never rewritten: the model keeps the first card.
        self.cards.setdefault((tenant, result.record.token), card)
        return tenant, result.record.token

    @rule(target=tokens, tenant=st.sampled_from(TENANTS), index=st.integers(0, 3),
          month=st.integers(1, 12))
    def tokenize(self, tenant: str, index: int, month: int) -> tuple[str, str]:
        base = CARD_POOL[index]
        card = CardSecret(base.pan, month, base.expiry_year, base.holder_name, base.national_id,
                          base.phone)
        key_id, blob = self.run(sealed_for(self.service, tenant, card))
        self.last_request = (tenant, key_id, blob)
        result = self.run(self.service.tokenize(tenant, key_id, blob, BANK))
        self.clock.advance(1)
        return self._expect_tokenized(tenant, card, result)

    @rule()
    def retry_last(self) -> None:
        if self.last_request is None:
            return
        tenant, key_id, blob = self.last_request
        card = self.run(self._open(tenant, blob))
        result = self.run(self.service.tokenize(tenant, key_id, blob, BANK))
        self._expect_tokenized(tenant, card, result)

    async def _open(self, tenant: str, blob: bytes) -> CardSecret:
        keys = await self.service.keyring.snapshot()
        raw = keys.sealing_keys[0].key.open(blob, tenant=tenant)
        message = vault_pb2.CardSecret.FromString(raw)
        return CardSecret(message.pan, message.expiry_month, message.expiry_year,
                          message.holder_name, message.national_id, message.phone)

    @rule(ref=tokens, cross=st.booleans())
    def get(self, ref: tuple[str, str], cross: bool) -> None:
        tenant = TENANTS[1 - TENANTS.index(ref[0])] if cross else ref[0]
        expected = self.cards.get((tenant, ref[1]))
        if expected is None:
            with pytest.raises(NotFound):
                self.run(self.service.get(tenant, ref[1]))
        else:
            assert self.run(self.service.get(tenant, ref[1])).display == expected.display()

    @rule(ref=tokens)
    def detokenize(self, ref: tuple[str, str]) -> None:
        expected = self.cards.get(ref)
        if expected is None:
            with pytest.raises(NotFound):
                self.run(self.service.detokenize(*ref, "model check", BANK))
        else:
            assert self.run(self.service.detokenize(*ref, "model check", BANK))[1] == expected

    @rule(ref=tokens)
    def delete(self, ref: tuple[str, str]) -> None:
        card = self.cards.pop(ref, None)
        if card is None:
            with pytest.raises(NotFound):
                self.run(self.service.delete(*ref, BANK))
        else:
            self.run(self.service.delete(*ref, BANK))
            del self.by_card[(ref[0], card.pan)]

    @invariant()
    def one_record_and_one_mapping_per_live_token(self) -> None:
        for tenant in TENANTS:
            keys = self.run(dump(self.client, f"{self.prefix}:vault:{{{tenant}}}"))
            keys.pop(f"{self.prefix}:vault:{{{tenant}}}:counts".encode(), None)
            live = sum(1 for t, _ in self.cards if t == tenant)
            assert len(keys) == 2 * live


def test_vault_state_machine(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    key_file = tmp_path / "root.key"
    run_state_machine_as_test(
        lambda: VaultMachine(redis_url, key_prefix, key_file),  # type: ignore[arg-type,return-value]
        settings=settings(max_examples=15, stateful_step_count=20, deadline=None),
    )
