"""The audit log's keyed hash chain: any one altered, deleted, inserted or
reordered entry in Redis is reported at that entry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from hypothesis import given
from hypothesis import strategies as st

from cardlink.vault.v1 import admin_pb2, vault_pb2
from common.clock import ManualClock
from common.errors import CardLinkError
from common.grpc_errors import error_from_rpc
from tests.support.cards import card, numbered_card
from tests.support.vault import VaultHandle
from tests.vault.test_store_service import make_service
from vault.audit import FIELDS, AuditEntry, AuditLog, audit_head_key, audit_key, chain_payload
from vault.keyring import DevKeyFile, Keyring
from vault.tokens import parse_token_name

ENTRIES = 12
AT = 5

Entry = tuple[bytes, dict[bytes, bytes]]


async def make_entries(vault: VaultHandle) -> str:
    created = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
        parent="tenants/acme", sealed_card=await vault.seal(card())), metadata=vault.partner())
    name = created.token.name
    for i in range(ENTRIES):
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=name, reason=f"check {i}"), metadata=vault.bank())
    return name


async def verify(vault: VaultHandle, checkpoint: admin_pb2.AuditCheckpoint | None = None
                 ) -> admin_pb2.AuditVerification:
    return await vault.admin.VerifyAudit(admin_pb2.VerifyAuditRequest(checkpoint=checkpoint),
                                         metadata=vault.security())


async def cut_back_to(client: aioredis.Redis, prefix: str, kept: int) -> None:
    """What an attacker with Redis access can do unseen: drop the newest
    entries and move the head back to the last one kept."""
    entries: Any = await client.xrange(audit_key(prefix))
    await rewrite(client, audit_key(prefix), lambda e: e[:kept])
    await client.hset(audit_head_key(prefix), mapping={
        "seq": str(kept), "mac": entries[kept - 1][1][b"mac"]})


async def rewrite(client: aioredis.Redis, key: str,
                  change: Callable[[list[Entry]], list[Entry]]) -> list[Any]:
    """Replace the stream by ``change(entries)``, with fresh ids; returns the ids."""
    entries: Any = await client.xrange(key)
    changed = change([(i, dict(f)) for i, f in entries])
    await client.delete(key)
    ids = []
    for n, (_, fields) in enumerate(changed, start=1):
        ids.append(await client.xadd(key, fields, id=f"1-{n}"))  # type: ignore[arg-type]
    return ids


def altered(entries: list[Entry]) -> list[Entry]:
    entries[AT][1][b"reason"] = b"nothing to see"
    return entries


def deleted(entries: list[Entry]) -> list[Entry]:
    return entries[:AT] + entries[AT + 1:]


def inserted_forgery(entries: list[Entry]) -> list[Entry]:
    forged = dict(entries[AT][1])
    forged[b"caller"] = b"someone-else"
    return [*entries[:AT], (b"", forged), *[(i, f) for i, f in entries[AT:]]]


def inserted_copy(entries: list[Entry]) -> list[Entry]:
    return [*entries[:AT], entries[AT - 1], *entries[AT:]]


def reordered(entries: list[Entry]) -> list[Entry]:
    entries[AT], entries[AT + 1] = entries[AT + 1], entries[AT]
    return entries


@pytest.mark.parametrize(("change", "problem"), [
    (altered, "ALTERED"),
    (deleted, "MISSING_OR_REORDERED"),
    (inserted_forgery, "ALTERED"),
    (inserted_copy, "INSERTED_OR_REORDERED"),
    (reordered, "MISSING_OR_REORDERED"),
])
async def test_tampering_is_reported_at_that_entry(
        vault: VaultHandle, redis_client: aioredis.Redis,
        change: Callable[[list[Entry]], list[Entry]], problem: str) -> None:
    await make_entries(vault)
    clean = await verify(vault)
    assert clean.ok and clean.verified == clean.head_seq == ENTRIES
    ids = await rewrite(redis_client, audit_key(vault.config.redis_prefix), change)
    result = await verify(vault)
    assert not result.ok
    assert (result.problem, result.verified, result.expected_seq) == (problem, AT, AT + 1)
    assert result.entry_id == ids[AT].decode()


async def test_truncated_tail_is_reported(vault: VaultHandle,
                                          redis_client: aioredis.Redis) -> None:
    await make_entries(vault)
    await rewrite(redis_client, audit_key(vault.config.redis_prefix), lambda e: e[:-1])
    result = await verify(vault)
    assert (result.ok, result.problem, result.verified) == (False, "TRUNCATED", ENTRIES - 1)


@pytest.mark.parametrize("head", ["deleted", "rolled back"])
async def test_entries_beyond_a_missing_or_rolled_back_head_are_reported(
        vault: VaultHandle, redis_client: aioredis.Redis, head: str) -> None:
    await make_entries(vault)
    prefix = vault.config.redis_prefix
    entries: Any = await redis_client.xrange(audit_key(prefix))
    if head == "deleted":
        await redis_client.delete(audit_head_key(prefix))
        kept = 0
    else:
        kept = AT
        await redis_client.hset(audit_head_key(prefix), mapping={
            "seq": str(kept), "mac": entries[kept - 1][1][b"mac"]})
    result = await verify(vault)
    assert (result.ok, result.problem, result.verified) == (False, "BEYOND_HEAD", kept)
    assert result.entry_id == entries[kept][0].decode()


async def test_a_checkpoint_shows_a_tail_cut_off_with_its_head(
        vault: VaultHandle, redis_client: aioredis.Redis) -> None:
    await make_entries(vault)
    head = await verify(vault)
    checkpoint = admin_pb2.AuditCheckpoint(seq=head.head_seq, mac=head.head_mac)
    assert (await verify(vault, checkpoint)).ok
    await cut_back_to(redis_client, vault.config.redis_prefix, AT)
    assert (await verify(vault)).ok  # consistent as far as Redis can tell
    result = await verify(vault, checkpoint)
    assert (result.ok, result.problem, result.verified) == (False, "ROLLED_BACK", AT)
    assert (result.entry_id, result.expected_seq) == ("", ENTRIES)


async def test_a_checkpoint_shows_a_tail_cut_off_and_grown_again(
        vault: VaultHandle, redis_client: aioredis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    name = await make_entries(vault)
    head = await verify(vault)
    checkpoint = admin_pb2.AuditCheckpoint(seq=head.head_seq, mac=head.head_mac)
    await cut_back_to(redis_client, vault.config.redis_prefix, AT)
    for i in range(ENTRIES):  # the vault chains on from the moved-back head
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=name, reason=f"later {i}"), metadata=vault.bank())
    assert (await verify(vault)).ok
    # The process that wrote past the cut saw its head go back, and said so.
    assert f"head moved back from seq {ENTRIES} to {AT}" in caplog.text
    result = await verify(vault, checkpoint)
    assert (result.ok, result.problem, result.expected_seq) == (False, "ROLLED_BACK", ENTRIES)
    entries: Any = await redis_client.xrange(audit_key(vault.config.redis_prefix))
    assert result.entry_id == entries[ENTRIES - 1][0].decode()


async def test_a_cut_tail_with_its_head_left_is_truncated_whatever_the_checkpoint(
        vault: VaultHandle, redis_client: aioredis.Redis) -> None:
    await make_entries(vault)
    head = await verify(vault)
    await rewrite(redis_client, audit_key(vault.config.redis_prefix), lambda e: e[:-1])
    result = await verify(vault, admin_pb2.AuditCheckpoint(seq=head.head_seq,
                                                           mac=head.head_mac))
    assert (result.ok, result.problem) == (False, "TRUNCATED")


async def test_a_checkpoint_still_held_as_the_log_grows(vault: VaultHandle) -> None:
    name = await make_entries(vault)
    head = await verify(vault)
    await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
        name=name, reason="one more"), metadata=vault.bank())
    later = await verify(vault, admin_pb2.AuditCheckpoint(seq=head.head_seq,
                                                          mac=head.head_mac))
    assert later.ok and later.head_seq == head.head_seq + 1


@pytest.mark.parametrize(("seq", "mac", "field"), [
    (0, "a" * 64, "checkpoint.seq"),
    (-3, "a" * 64, "checkpoint.seq"),
    (1, "A" * 64, "checkpoint.mac"),
    (1, "a" * 63, "checkpoint.mac"),
    (1, "", "checkpoint.mac"),
])
async def test_a_malformed_checkpoint_is_refused(vault: VaultHandle, seq: int, mac: str,
                                                 field: str) -> None:
    await make_entries(vault)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await verify(vault, admin_pb2.AuditCheckpoint(seq=seq, mac=mac))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_from_rpc(caught.value)
    assert error.reason == "CHECKPOINT_INVALID"
    assert [v.field for v in error.violations] == [field]


async def test_sealed_backlog_is_capped_and_the_overflow_counted(
        redis_client: aioredis.Redis, key_prefix: str, tmp_path: Any) -> None:
    from common.clock import ManualClock
    from vault import audit as audit_mod
    from vault.keyring import DevKeyFile, Keyring

    keyring = Keyring(redis_client, prefix=key_prefix, root_keys=DevKeyFile(tmp_path / "k"),
                      clock=ManualClock(1_800_000_000.0), create_if_missing=True)
    await keyring.snapshot()
    log = audit_mod.AuditLog(redis_client, prefix=key_prefix, keyring=keyring)
    limit = audit_mod.MAX_SEALED_BACKLOG
    sealed = pytest.MonkeyPatch()
    sealed.setattr(type(keyring), "sealed", property(lambda self: True))
    try:
        for n in range(limit + 7):
            await log.append(audit_mod.AuditEntry("call.refused", "x", "", "", "R", float(n)))
    finally:
        sealed.undo()
    await log.flush_backlog()
    stored: Any = await redis_client.xrange(log.key)
    assert len(stored) == limit + 1
    assert stored[-1][1][b"action"] == b"audit.sealed_overflow"
    assert stored[-1][1][b"reason"].startswith(b"7 entries")
    assert (await log.verify()).ok
    await log.aclose()


async def test_concurrent_appends_form_one_chain(vault: VaultHandle) -> None:
    names = []
    for n in range(5):
        created = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
            parent="tenants/acme", sealed_card=await vault.seal(numbered_card(n))),
            metadata=vault.partner())
        names.append(created.token.name)
    await asyncio.gather(*(vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
        name=names[i % 5], reason="parallel"), metadata=vault.bank()) for i in range(300)))
    result = await verify(vault)
    assert result.ok and result.verified == 300


async def test_refused_calls_and_key_operations_are_audited_without_pans(
        vault: VaultHandle) -> None:
    name = await make_entries(vault)
    with pytest.raises(grpc.aio.AioRpcError):  # a partner may not detokenize
        await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=name, reason="peek"), metadata=vault.partner())
    with pytest.raises(grpc.aio.AioRpcError):  # no credential at all
        await vault.admin.RotateKey(admin_pb2.RotateKeyRequest(kind=admin_pb2.KEY_KIND_KEK))
    await vault.admin.RotateKey(admin_pb2.RotateKeyRequest(kind=admin_pb2.KEY_KIND_KEK),
                                metadata=vault.security())
    await vault.stub.DeleteToken(vault_pb2.DeleteTokenRequest(name=name),
                                 metadata=vault.partner())
    records = [r async for r in vault.admin.ExportAudit(admin_pb2.ExportAuditRequest(),
                                                         metadata=vault.security())]
    actions = [(r.fields["action"], r.fields["result"]) for r in records]
    assert ("detokenize", "SCOPE_MISSING") in actions
    assert ("call.refused", "TOKEN_MISSING") in actions
    assert ("key.rotate", "OK") in actions and ("delete", "OK") in actions
    # The refused detokenize reads as one: the verified caller (its JWT was
    # valid, only the scope was missing), the token, the reason it gave.
    refused = next(r for r in records if r.fields["result"] == "SCOPE_MISSING")
    token = parse_token_name(name)
    assert {k: refused.fields[k] for k in ("caller", "tenant", "token", "reason")} == {
        "caller": "acme-partner-svc", "tenant": token.tenant, "token": token.token,
        "reason": "peek"}
    no_credential = next(r for r in records if r.fields["result"] == "TOKEN_MISSING")
    assert no_credential.fields["reason"].endswith("/RotateKey")
    secret = card()
    text = repr([dict(r.fields) for r in records])
    for value in (secret.pan, secret.national_id, secret.phone, secret.holder_name):
        assert value not in text
    assert (await verify(vault)).ok
    later = [r async for r in vault.admin.ExportAudit(admin_pb2.ExportAuditRequest(start_seq=5),
                                                       metadata=vault.security())]
    assert [int(r.fields["seq"]) for r in later] == list(range(5, len(records) + 1))


async def test_a_detokenize_refused_for_its_credential_is_audited_as_a_detokenize(
        vault: VaultHandle) -> None:
    """No credential, or a forged one: the entry names the token the request
    gave and the caller it claimed (marked unverified, without digits); what it
    says beyond that (its reason, its request id) is not kept: digits spread
    over fields could be read together as a card number."""
    name = await make_entries(vault)
    pan = card().pan
    forged = vault.identities.token("cardlink-bank", "acme", ["vault.tokens.detokenize"])
    forged = forged[:-4] + ("AAAA" if not forged.endswith("AAAA") else "BBBB")
    request_id = "5f0d5a52-4cbe-4b5a-9a3e-0c3c1ae0a8f1"
    calls = [
        (vault_pb2.DetokenizeTokenRequest(name=name, reason="no badge",
                                          request_id=request_id), ()),
        (vault_pb2.DetokenizeTokenRequest(name=name, reason="forged badge"),
         (("authorization", f"Bearer {forged}"),)),
        (vault_pb2.DetokenizeTokenRequest(name=f"tenants/acme/tokens/{pan}",
                                          reason=f"card {pan}", request_id=pan), ()),
    ]
    for request, metadata in calls:
        with pytest.raises(grpc.aio.AioRpcError):
            await vault.stub.DetokenizeToken(request, metadata=metadata)
    records = [r async for r in vault.admin.ExportAudit(admin_pb2.ExportAuditRequest(),
                                                         metadata=vault.security())]
    refused = [{k: r.fields[k] for k in ("caller", "tenant", "token", "reason", "request_id")}
               for r in records if r.fields["action"] == "detokenize"
               and r.fields["result"] in ("TOKEN_MISSING", "TOKEN_INVALID")]
    token = parse_token_name(name)
    assert refused == [
        {"caller": "unauthenticated", "tenant": token.tenant, "token": token.token,
         "reason": "", "request_id": ""},
        {"caller": "unverified:cardlink-bank/cardlink-bank-svc", "tenant": token.tenant,
         "token": token.token, "reason": "", "request_id": ""},
        {"caller": "unauthenticated", "tenant": "", "token": "", "reason": "",
         "request_id": ""},
    ]
    assert pan not in repr([dict(r.fields) for r in records])


@given(st.lists(st.text(), min_size=len(FIELDS), max_size=len(FIELDS)),
       st.integers(min_value=1, max_value=2**53))
def test_chain_payload_is_the_compact_ascii_json_array_the_chain_has_always_used(
        values: list[str], seq: int) -> None:
    """The MAC input must never drift: logs written earlier must keep verifying."""
    expected = json.dumps([str(seq), *values], ensure_ascii=True, separators=(",", ":"))
    assert chain_payload(values, seq) == expected.encode("ascii")


def test_an_entry_stores_each_value_under_its_own_field_name() -> None:
    """``values()`` is positional: it must line up with FIELDS, the order the
    append script names the stream fields and the MAC covers them in."""
    entry = AuditEntry(action="detokenize", caller="cardlink-bank", tenant="acme",
                       token="ctk_x", result="OK", time=1.5, reason="dispute",
                       request_id="r-1")
    assert dict(zip(FIELDS, entry.values(), strict=True)) == {
        "action": "detokenize", "caller": "cardlink-bank", "tenant": "acme", "token": "ctk_x",
        "result": "OK", "time": "1.5", "reason": "dispute", "request_id": "r-1"}


def _chained_entry(n: int) -> AuditEntry:
    return AuditEntry("detokenize", "cardlink-bank", "acme", "", "OK", float(n), "check")


async def test_a_process_with_a_stale_head_cannot_break_the_chain(
        redis_client: aioredis.Redis, key_prefix: str, clock: ManualClock,
        key_file: Path) -> None:
    """Two vault processes. Redis loses its last write (restart with appendfsync
    everysec, or failover to a replica that had not got it): entry 5 and the head's
    move to 5. Another process appends a new entry 5; the first one, still caching
    the lost head (5, its MAC), must chain from the new entry 5, not append entry 6
    on the lost one's MAC (verify reported ALTERED there, and nothing after it
    could ever be verified again)."""
    first = make_service(redis_client, key_prefix, clock, key_file)
    second = make_service(redis_client, key_prefix, clock, key_file)
    await first.sealing_key_set()
    await second.sealing_key_set()
    log1, log2 = first.audit, second.audit
    assert isinstance(log1, AuditLog) and isinstance(log2, AuditLog)
    for n in range(5):
        await log1.append(_chained_entry(n))
    stream = audit_key(key_prefix)
    entries: Any = await redis_client.xrange(stream)
    await redis_client.xdel(stream, entries[-1][0])
    await redis_client.hset(audit_head_key(key_prefix),
                            mapping={"seq": "4", "mac": entries[-2][1][b"mac"]})
    await log2.append(_chained_entry(100))  # the other process: seq 5 again, another MAC
    await log1.append(_chained_entry(101))  # seq 6, chained from the lost entry's MAC
    for n in range(102, 110):       # later, perfectly ordinary entries
        await log2.append(_chained_entry(n))
    result = await log1.verify()
    try:
        assert result.ok, result
    finally:
        await log1.aclose()
        await log2.aclose()


async def _sealed_log(redis_client: aioredis.Redis, key_prefix: str, key_file: Path,
                      entries: int, monkeypatch: pytest.MonkeyPatch) -> AuditLog:
    """An audit log holding ``entries`` numbered entries recorded while sealed."""
    keyring = Keyring(redis_client, prefix=key_prefix, root_keys=DevKeyFile(key_file),
                      clock=ManualClock(1_800_000_000.0), create_if_missing=True)
    await keyring.snapshot()
    log = AuditLog(redis_client, prefix=key_prefix, keyring=keyring)
    with monkeypatch.context() as sealed:
        sealed.setattr(Keyring, "sealed", property(lambda self: True))
        for n in range(entries):
            await log.append(AuditEntry("call.refused", "x", "", "", "R", float(n),
                                        reason=f"{n:05d}"))
    return log


async def _refused_reasons(redis_client: aioredis.Redis, log: AuditLog) -> list[bytes]:
    stored: Any = await redis_client.xrange(log.key)
    return [e[b"reason"] for _, e in stored if e[b"action"] == b"call.refused"]


def _next_write_held_then_failing(log: AuditLog, monkeypatch: pytest.MonkeyPatch
                                  ) -> tuple[asyncio.Event, asyncio.Event]:
    """The log's next write (only) waits for the second event, then fails as a
    dropped connection; the first event is set once that write has begun."""
    script = log._script
    writing, fail = asyncio.Event(), asyncio.Event()

    async def slow_then_failing(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(log, "_script", script)
        writing.set()
        await fail.wait()
        raise redis.exceptions.ConnectionError("connection reset by peer")

    monkeypatch.setattr(log, "_script", slow_then_failing)
    return writing, fail


async def _all_written_by_the_next_append(redis_client: aioredis.Redis, log: AuditLog,
                                          entries: int) -> None:
    """One more append writes what the backlog kept: every numbered entry,
    once, in order. Closes the log."""
    await log.append(AuditEntry("later", "x", "", "", "OK", 1.0))
    try:
        assert await _refused_reasons(redis_client, log) == [
            f"{n:05d}".encode() for n in range(entries)]
    finally:
        await log.aclose()


async def test_a_cancelled_backlog_flush_loses_no_entry(
        redis_client: aioredis.Redis, key_prefix: str, key_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The call that runs the flush is cancelled (a client deadline) between
    batches: the batches not yet queued stay for the next append (they were
    dropped)."""
    log = await _sealed_log(redis_client, key_prefix, key_file, 2000, monkeypatch)
    flush = asyncio.ensure_future(log.flush_backlog())
    await asyncio.sleep(0)  # one loop turn: the flush queues its first batch
    assert log._queue
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    await _all_written_by_the_next_append(redis_client, log, 2000)


async def test_a_backlog_batch_written_in_two_parts_is_not_written_twice(
        redis_client: aioredis.Redis, key_prefix: str, key_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries queued before the flush push part of its batch into a second
    write; the first write fails, the second lands: only the failed part goes
    back (the whole batch did, and its landed part was written twice)."""
    log = await _sealed_log(redis_client, key_prefix, key_file, 512, monkeypatch)
    early = [log._enqueue(AuditEntry("early", "x", "", "", "OK", 0.0)) for _ in range(10)]
    script = log._script
    calls: list[int] = []

    async def first_write_fails(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise redis.exceptions.ConnectionError("connection reset by peer")
        return await script(*args, **kwargs)

    monkeypatch.setattr(log, "_script", first_write_fails)
    with pytest.raises(CardLinkError):
        await log.flush_backlog()
    await asyncio.gather(*early, return_exceptions=True)
    await log.flush_backlog()
    try:
        reasons = await _refused_reasons(redis_client, log)
        assert sorted(reasons) == [f"{n:05d}".encode() for n in range(512)]
    finally:
        await log.aclose()


@pytest.mark.parametrize("cancels", [1, 2], ids=["a deadline", "a deadline then shutdown"])
async def test_a_cancelled_flush_keeps_what_its_queued_batch_failed_to_write(
        redis_client: aioredis.Redis, key_prefix: str, key_file: Path,
        monkeypatch: pytest.MonkeyPatch, cancels: int) -> None:
    """A slow Redis: the flush is cancelled (once, or again while its batch
    settles) while that batch is being written, and the write then fails. The
    batch and the rest stay for the next append (the batch was left to the
    appender, whose failure nobody kept; a second cancel dropped them all)."""
    log = await _sealed_log(redis_client, key_prefix, key_file, 600, monkeypatch)
    writing, fail = _next_write_held_then_failing(log, monkeypatch)
    flush = asyncio.ensure_future(log.flush_backlog())
    await writing.wait()
    for _ in range(cancels):
        flush.cancel()
        await asyncio.sleep(0)  # one loop turn: the flush sees this cancel
    fail.set()
    with pytest.raises(asyncio.CancelledError):
        await flush
    await _all_written_by_the_next_append(redis_client, log, 600)


async def test_closing_the_log_during_a_flush_leaves_no_one_waiting(
        redis_client: aioredis.Redis, key_prefix: str, key_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown cancels the appender mid-write: the flush ends with an error
    (it waited for ever, holding the lock every later append waits on)."""
    log = await _sealed_log(redis_client, key_prefix, key_file, 600, monkeypatch)
    writing = asyncio.Event()

    async def hanging(*args: Any, **kwargs: Any) -> Any:
        writing.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(log, "_script", hanging)
    flush = asyncio.ensure_future(log.flush_backlog())
    await writing.wait()
    await log.aclose()
    async with asyncio.timeout(30):  # a hang guard, not a measurement
        with pytest.raises(CardLinkError):
            await flush
