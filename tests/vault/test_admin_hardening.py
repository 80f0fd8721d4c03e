"""Key administration under failure and misuse: audit-before-act, free-text
checks, rewrap lease ownership, key material kept out of reprs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from cardlink.vault.v1 import admin_pb2, vault_pb2
from common.clock import ManualClock
from common.errors import Aborted, Unavailable
from common.grpc_errors import error_from_rpc
from tests.support.vault import VaultHandle
from tests.vault.test_store_service import START, make_service, random_card, tokenize
from vault import Actor
from vault.admin import KeyAdminService
from vault.audit import AuditEntry, audit_key
from vault.guards import _claim
from vault.lifecycle import KeyLifecycle
from vault.rewrap import REWRAP_LEASE_LOST, Rewrapper, _State
from vault.unseal import CeremonyOutcome, SealedShare

KEYS = (b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)


class FlakyAudit:
    """Writes the first ``ok`` entries, then fails."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.entries: list[AuditEntry] = []

    async def append(self, entry: AuditEntry) -> str:
        if len(self.entries) >= self.ok:
            raise Unavailable("AUDIT_UNAVAILABLE", "down")
        self.entries.append(entry)
        return str(len(self.entries))


class FakeUnsealer:
    def __init__(self) -> None:
        self.calls = 0

    async def ceremony(self, kind: str, share: str, threshold: int, count: int,
                       keys: tuple[bytes, ...]) -> CeremonyOutcome:
        self.calls += 1
        sealed = tuple(SealedShare(k, b"sealed-" + k[:1]) for k in keys)
        return CeremonyOutcome(threshold, threshold, True, sealed, "root-2")


def admin_with(audit: FlakyAudit, unsealer: Any = None) -> KeyAdminService:
    return KeyAdminService(keyring=None, lifecycle=None, rewrapper=None,  # type: ignore[arg-type]
                           audit=audit, clock=ManualClock(START),  # type: ignore[arg-type]
                           unsealer=unsealer)


async def test_rekey_refused_when_intent_cannot_be_written() -> None:
    unsealer = FakeUnsealer()
    with pytest.raises(Unavailable):
        await admin_with(FlakyAudit(0), unsealer).rekey("share", 2, 3, KEYS, Actor("custodian"))
    assert unsealer.calls == 0


async def test_rekey_returns_new_shares_when_the_outcome_entry_fails() -> None:
    audit, unsealer = FlakyAudit(1), FakeUnsealer()
    outcome = await admin_with(audit, unsealer).rotate_root("share", 2, 3, KEYS,
                                                            Actor("custodian"))
    assert [s.custodian_public_key for s in outcome.shares] == list(KEYS)
    assert unsealer.calls == 1
    assert [(e.action, e.result) for e in audit.entries] == [("root.rotate", "INTENT")]
    assert "sealed-" not in repr(outcome)


async def test_rewrap_lease_is_renewed_only_by_its_owner(
        redis_client: aioredis.Redis, key_prefix: str, tmp_path: Path) -> None:
    service = make_service(redis_client, key_prefix, ManualClock(START),
                           tmp_path / "vault-root.key")
    rewrapper = Rewrapper(redis_client, prefix=key_prefix, keyring=service.keyring,
                          store=service.store)
    lease = f"{key_prefix}:vault:rewrap:lease"
    await redis_client.set(lease, "other-job", px=30_000)
    with pytest.raises(Aborted) as caught:
        await rewrapper._save(_State(5, 1, 1, 5, 0), "stalled-job")
    assert caught.value.reason == REWRAP_LEASE_LOST
    assert await redis_client.get(lease) == b"other-job"
    assert not await redis_client.exists(f"{key_prefix}:vault:rewrap")
    await redis_client.delete(lease)  # expired, nobody took it: the job takes it back
    await rewrapper._save(_State(5, 1, 1, 5, 0), "stalled-job")
    assert await redis_client.get(lease) == b"stalled-job"


def test_unverified_claims_are_sanitized_for_the_audit_log() -> None:
    assert _claim("acme-partner") == "acme-partner"
    assert "4111111111111111" not in _claim("x 4111 1111 1111 1111 y")
    assert "4111" * 4 not in _claim("1" * 600 + "4111" * 4)
    assert _claim("a\nb\x00c") == "a?b?c"
    assert len(_claim("z" * 10_000)) == 64
    assert _claim(12345) == ""


async def test_admin_request_id_must_be_empty_or_uuid4(vault: VaultHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.admin.RotateKey(admin_pb2.RotateKeyRequest(
            kind=admin_pb2.KEY_KIND_KEK, request_id="4111111111111111"),
            metadata=vault.security())
    error = error_from_rpc(caught.value)
    assert error.reason == "REQUEST_ID_INVALID" and error.violations[0].field == "request_id"


async def test_vault_request_id_and_reason_checks_over_grpc(vault: VaultHandle) -> None:
    from tests.support.cards import card
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
            parent="tenants/acme", sealed_card=await vault.seal(card()), request_id="nope"),
            metadata=vault.partner())
    assert error_from_rpc(caught.value).reason == "REQUEST_ID_INVALID"
    created = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
        parent="tenants/acme", sealed_card=await vault.seal(card())), metadata=vault.partner())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=created.token.name, reason="card 4111-1111-1111-1111"), metadata=vault.bank())
    assert error_from_rpc(caught.value).reason == "REASON_INVALID"


def test_key_material_is_not_in_reprs() -> None:
    from vault.keyring import _Entry
    entry = _Entry("kek", 1, "kek-1", 0.0, None, b"\x01secret-material")
    assert "secret-material" not in repr(entry)


async def test_bad_admin_input_names_its_field_and_is_not_audited(
        vault: VaultHandle, redis_client: aioredis.Redis) -> None:
    before = await redis_client.xlen(audit_key(vault.config.redis_prefix))

    async def violated(call: Any) -> tuple[str, list[str]]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        error = error_from_rpc(caught.value)
        return error.reason, [v.field for v in error.violations]

    security = vault.security()
    assert await violated(vault.admin.RotateKey(
        admin_pb2.RotateKeyRequest(), metadata=security)) == ("KEY_KIND_INVALID", ["kind"])
    for request, field in ((admin_pb2.RewrapRecordsRequest(limit=-1), "limit"),
                           (admin_pb2.RewrapRecordsRequest(batch_size=-5), "batch_size")):
        call = vault.admin.RewrapRecords(request, metadata=security)
        assert await violated(_drain(call)) == ("REWRAP_OPTION_INVALID", [field])
    assert await redis_client.xlen(audit_key(vault.config.redis_prefix)) == before


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


SETTLE = 30.0


async def test_rewrap_never_moves_a_record_to_a_superseded_fingerprint_version(
        redis_client: aioredis.Redis, key_prefix: str, clock: ManualClock,
        key_file: Path) -> None:
    """A fingerprint version that settles while a rewrap runs ends that run: it
    moved records written under the new version back to the one it started for."""
    service = make_service(redis_client, key_prefix, clock, key_file,
                           key_settle_seconds=SETTLE)
    await service.sealing_key_set()
    keyring, store = service.keyring, service.store
    lifecycle = KeyLifecycle(redis_client, keyring=keyring, store=store, clock=clock,
                             sealing_grace_seconds=3600, settle_seconds=SETTLE)
    for _ in range(3):
        await tokenize(service, "acme", random_card())
    await lifecycle.rotate("fp")  # v2
    clock.advance(SETTLE + 1)     # v2 settles: the write and rewrap target
    walk = Rewrapper(redis_client, prefix=key_prefix, keyring=keyring,
                     store=store).run(batch_size=1)
    first = await walk.__anext__()
    assert first.target_fingerprint_version == 2
    await lifecycle.rotate("fp")  # v3, while the walk runs
    clock.advance(SETTLE + 1)     # v3 settles: new cards are mapped under v3
    late = await tokenize(service, "acme", random_card())
    stored = await store.load("acme", late.record.token)
    assert stored is not None and stored.fingerprint_version == 3
    async for _ in walk:
        pass
    stored = await store.load("acme", late.record.token)
    assert stored is not None
    assert stored.fingerprint_version == 3, "moved back to superseded fp v2"
