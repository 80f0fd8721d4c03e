"""Abuse and failure cases of the vault: audit outages, stale processes,
replayed key sets, card data smuggled into free text, concurrent writers.

Real Redis (the ``redis_client`` / ``key_prefix`` fixtures); domain services
wired the way ``vault.app`` wires them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from cardlink.vault.v1 import vault_pb2
from clients.sealing import KeySetError, verify_key_set
from common.clock import ManualClock
from common.errors import CardLinkError, NotFound, Unavailable
from tests.support.vault import VaultHandle
from tests.vault.test_store_service import (
    BANK,
    audit_entries,
    make_service,
    random_card,
    tokenize,
)
from vault import Actor, CardSecret, VaultService
from vault.admin import KeyAdminService
from vault.audit import AuditEntry
from vault.keyring import FINGERPRINT, KEK, keys_key
from vault.lifecycle import KeyLifecycle
from vault.rewrap import Rewrapper

PAN = "4111111111111111"


class FailingAudit:
    """An audit sink whose write fails (Redis blip, 'too contended', ...)."""

    def __init__(self) -> None:
        self.calls = 0

    async def append(self, entry: AuditEntry) -> str:
        self.calls += 1
        raise Unavailable("AUDIT_UNAVAILABLE", "the audit log is unavailable; retry")


def lifecycle(redis_client: aioredis.Redis, service: VaultService,
              clock: ManualClock) -> KeyLifecycle:
    return KeyLifecycle(redis_client, keyring=service.keyring, store=service.store, clock=clock,
                        sealing_grace_seconds=3600, settle_seconds=30)


# A process whose keyring snapshot has not yet seen a fingerprint rotation (up
# to CARDLINK_KEYRING_REFRESH_S) looks only at the old version; the new version
# therefore takes writes only after it has settled, so no card gets two tokens.
async def test_stale_process_after_fp_rotation_finds_the_same_token(
        redis_client: aioredis.Redis, key_prefix: str, clock: ManualClock,
        key_file: Path) -> None:
    a = make_service(redis_client, key_prefix, clock, key_file)
    b = make_service(redis_client, key_prefix, clock, key_file)
    await a.sealing_key_set()
    await b.sealing_key_set()  # b's snapshot: fp v1 only, fresh for 1 s
    await lifecycle(redis_client, a, clock).rotate(FINGERPRINT)  # a sees v2 at once
    card = random_card()
    first = await tokenize(a, "acme", card)
    second = await tokenize(b, "acme", card)  # same instant, other process
    assert second.record.token == first.record.token, "two tokens for one card"


# Delete writes its audit intent first: with the audit log down, nothing is
# destroyed.
async def test_delete_is_refused_when_the_audit_log_is_down(
        redis_client: aioredis.Redis, service: VaultService, clock: ManualClock) -> None:
    token = (await tokenize(service, "acme", random_card())).record.token
    failing = VaultService(store=service.store, keyring=service.keyring, audit=FailingAudit(),
                           clock=clock)
    with pytest.raises(Unavailable):
        await failing.delete("acme", token, BANK)
    # The call failed, so nothing may have changed; instead the token is gone:
    try:
        await service.get("acme", token)
    except NotFound:
        pytest.fail("token destroyed although its audit entry was never written")


# Key administration writes its audit intent first: retire (irreversible) does
# not destroy a KEK that the log cannot record.
async def test_retire_is_refused_when_the_audit_log_is_down(
        redis_client: aioredis.Redis, key_prefix: str, service: VaultService,
        clock: ManualClock) -> None:
    life = lifecycle(redis_client, service, clock)
    await life.rotate(KEK)
    clock.advance(60)
    admin = KeyAdminService(keyring=service.keyring, lifecycle=life,
                            rewrapper=Rewrapper(redis_client, prefix=key_prefix,
                                                keyring=service.keyring, store=service.store),
                            audit=FailingAudit(), clock=clock,  # type: ignore[arg-type]
                            unsealer=None)
    with pytest.raises(Unavailable):
        await admin.retire(KEK, 1, Actor("security"))
    assert await redis_client.hexists(keys_key(key_prefix), "kek:1"), \
        "kek:1 destroyed with no audit entry"


# Free text that reaches the audit log is checked: a card number in the
# detokenize reason, or a request_id that is not a UUID4, is refused.
async def test_no_pan_reaches_the_audit_log_via_reason_or_request_id(
        redis_client: aioredis.Redis, key_prefix: str, service: VaultService) -> None:
    token = (await tokenize(service, "acme", random_card())).record.token
    for call in (
        service.detokenize("acme", token, f"dispute on card {PAN}", BANK),
        service.detokenize("acme", token, "check", Actor("bank-core", PAN + "x" * 100_000)),
    ):
        with contextlib.suppress(CardLinkError):
            await call
    raw = b"".join(v for e in await audit_entries(redis_client, key_prefix) for v in e.values())
    assert PAN.encode() not in raw, "PAN stored in clear in the audit stream"


# Rewrap's compare-and-set includes the nonce (unique per write): a writer that
# re-seals a record with the same KEK and fingerprint while the job runs is
# never reverted to the ciphertext the job read. The concurrent writer is
# simulated by re-sealing the record in place.
async def test_rewrap_never_reverts_a_concurrent_write(
        redis_client: aioredis.Redis, service: VaultService, clock: ManualClock) -> None:
    from vault.service import card_to_bytes
    from vault.store import REWRAP_CHANGED
    card = random_card(expiry_year=2030)
    token = (await tokenize(service, "acme", card)).record.token
    await lifecycle(redis_client, service, clock).rotate(FINGERPRINT)
    keys = await service.keyring.refresh()
    old = await service.store.load("acme", token)
    assert old is not None
    state: Any = type("S", (), {"kek": keys.kek.version, "fp": keys.fingerprint_key.version})
    planned = Rewrapper._rewrapped(old, keys, state)  # what _plan computes for the batch
    assert planned is not None
    clock.advance(5)
    renewed = CardSecret(card.pan, 3, 2033, card.holder_name, card.national_id, card.phone)
    again = await tokenize(service, "acme", renewed)
    assert again.record.token == token and again.record.display.expiry_year == 2030
    # A concurrent writer re-seals the record (same KEK and fingerprint, new nonce).
    fresh = keys.kek.seal(card_to_bytes(renewed), tenant="acme", token=token)
    await redis_client.hset(service.store.record_key("acme", token), mapping={
        "ct": fresh.ciphertext, "nonce": fresh.nonce, "wdek": fresh.wrapped_key, "exp_m": "3",
        "exp_y": "2033"})
    outcome = await service.store.rewrap_many([planned])  # the job's CAS lands after it
    assert outcome == [REWRAP_CHANGED]
    shown = await service.get("acme", token)
    _, clear = await service.detokenize("acme", token, "check", BANK)
    assert shown.display.expiry_year == 2033
    assert clear == renewed, "detokenize returns the superseded card (lost update)"


# A detokenize of another tenant's token is refused exactly like a missing one,
# and audited like every other detokenize.
async def test_cross_tenant_detokenize_is_audited(
        vault: VaultHandle, redis_client: aioredis.Redis, key_prefix: str) -> None:
    sealed = await vault.seal(vault_pb2.CardSecret(
        pan=PAN, expiry_month=12, expiry_year=2031, holder_name="Jane Doe",
        national_id="ID1", phone="+4915112345678"))
    created = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
        parent="tenants/acme", sealed_card=sealed), metadata=vault.partner())
    before = len(await audit_entries(redis_client, key_prefix))
    with pytest.raises(grpc.aio.AioRpcError):
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=created.token.name, reason="probe"), metadata=vault.bank("globex"))
    assert len(await audit_entries(redis_client, key_prefix)) == before + 1


# A relay (say a compromised gateway) replaying a pre-rotation key set cannot
# steer partners to a superseded sealing key: the helper refuses stale sets.
async def test_sealing_helper_refuses_a_replayed_key_set(vault: VaultHandle) -> None:
    old = await vault.stub.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest())
    old_current = verify_key_set(old, await vault.pins()).current().key_id
    await vault.vault.admin.rotate("seal", Actor("security"))
    vault.clock.advance(7 * 86_400)  # long after the old key's grace period
    pins = await vault.pins()
    try:
        replayed = verify_key_set(old, pins, now=vault.clock.now())  # stale: refused
    except KeySetError:
        return
    pytest.fail(f"replayed key set accepted; seals to {replayed.current().key_id} "
                f"(was current before rotation: {old_current})")


# Display data of a short PAN keeps at least six digits hidden: BIN (6) and last
# four of a 12-digit PAN would leave two, one of them fixed by Luhn.
async def test_short_pan_display_hides_at_least_six_digits(service: VaultService) -> None:
    from vault.pan import luhn_valid
    pan = "501800000009"  # 12-digit Maestro, Luhn-valid
    assert luhn_valid(pan)
    record = (await tokenize(service, "acme", random_card(pan=pan))).record
    hidden = len(pan) - len(record.display.bin) - len(record.display.last_four)
    candidates = [c for c in range(10 ** hidden) if luhn_valid(
        record.display.bin + f"{c:0{hidden}d}" + record.display.last_four)]
    assert len(candidates) >= 1000, f"PAN narrowed to {len(candidates)} candidates"
