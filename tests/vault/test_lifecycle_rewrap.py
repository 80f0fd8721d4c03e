"""Rewrap stopped halfway (by a limit, or by killing the stream) and run again:
every record moves exactly once, none is skipped."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from cardlink.vault.v1 import admin_pb2
from common.grpc_errors import error_from_rpc
from tests.support.cards import numbered_card
from tests.support.vault import VaultHandle
from tests.vault.test_lifecycle import KEK, rewrap, rotate, status, versions
from vault.service import Actor

RECORDS = 400


async def fill(vault: VaultHandle, count: int, start: int = 0) -> None:
    """Records written straight through the domain service (fast), tenant acme."""
    service = vault.vault.service
    cache = await vault.key_cache()
    key = await cache.current()
    from clients.sealing import seal_card

    async def one(n: int) -> None:
        sealed = seal_card(key, "tenants/acme", numbered_card(n))
        await service.tokenize("acme", sealed.key_id, sealed.ciphertext, Actor("filler"))

    for chunk in range(start, start + count, 100):
        await asyncio.gather(*(one(n) for n in range(chunk, min(chunk + 100, start + count))))


async def snapshot(client: aioredis.Redis, prefix: str) -> dict[Any, Any]:
    """record key -> (kek version, ciphertext)."""
    out: dict[Any, Any] = {}
    async for key in client.scan_iter(match=f"{prefix}:vault:{{*}}:tok:*", count=1000):
        kek, ct = await client.hmget(key, ["kek", "ct"])
        out[key] = (kek, ct)
    return out


async def cancelled_run(vault: VaultHandle, after_batches: int) -> None:
    """Start a rewrap and kill its stream after a few progress messages."""
    call = vault.admin.RewrapRecords(admin_pb2.RewrapRecordsRequest(batch_size=25),
                                     metadata=vault.security())
    seen = 0
    async for _ in call:
        seen += 1
        if seen > after_batches:
            call.cancel()
            break


async def rerun_when_lease_free(vault: VaultHandle) -> list[admin_pb2.RewrapProgress]:
    for _ in range(200):
        try:
            return await rewrap(vault, batch_size=25)
        except grpc.aio.AioRpcError as error:
            if error_from_rpc(error).reason != "REWRAP_RUNNING":
                raise
            await asyncio.sleep(0.01)  # the server is still unwinding the killed run
    raise AssertionError("the killed run never released its lease")


def check_moved_once(before: dict[bytes, tuple[bytes, bytes]],
                     middle: dict[bytes, tuple[bytes, bytes]],
                     after: dict[bytes, tuple[bytes, bytes]]) -> None:
    assert set(before) == set(middle) == set(after)
    assert {v[0] for v in before.values()} == {b"1"}
    assert {v[0] for v in after.values()} == {b"2"}  # nothing skipped
    moved_first = {k for k, v in middle.items() if v[0] == b"2"}
    assert 0 < len(moved_first) < len(before)  # really stopped halfway
    for key in moved_first:
        assert after[key] == middle[key]  # not moved a second time
    for key in set(before) - moved_first:
        assert after[key][1] != before[key][1]  # moved by the rerun


async def test_rewrap_stopped_by_limit_resumes(vault: VaultHandle,
                                               redis_client: aioredis.Redis) -> None:
    prefix = vault.config.redis_prefix
    await fill(vault, RECORDS)
    before = await snapshot(redis_client, prefix)
    await rotate(vault, KEK)
    first = await rewrap(vault, limit=100, batch_size=25)
    assert not first[-1].complete and 100 <= first[-1].done < RECORDS
    middle = await snapshot(redis_client, prefix)
    second = await rewrap(vault, batch_size=25)
    assert second[-1].complete and second[-1].done == RECORDS  # counted across both runs
    check_moved_once(before, middle, await snapshot(redis_client, prefix))
    assert versions(await status(vault), KEK)[1].record_count == 0


async def test_rewrap_killed_halfway_resumes(vault: VaultHandle,
                                             redis_client: aioredis.Redis) -> None:
    prefix = vault.config.redis_prefix
    await fill(vault, RECORDS)
    before = await snapshot(redis_client, prefix)
    await rotate(vault, KEK)
    await cancelled_run(vault, after_batches=4)
    await asyncio.sleep(0.05)  # let the server-side run unwind before looking
    middle = await snapshot(redis_client, prefix)
    final = await rerun_when_lease_free(vault)
    assert final[-1].complete
    check_moved_once(before, middle, await snapshot(redis_client, prefix))
    state = await status(vault)
    assert versions(state, KEK)[1].record_count == 0
    assert versions(state, KEK)[2].record_count == RECORDS


async def test_second_concurrent_rewrap_is_refused(vault: VaultHandle) -> None:
    await fill(vault, 200)
    await rotate(vault, KEK)
    call = vault.admin.RewrapRecords(admin_pb2.RewrapRecordsRequest(batch_size=10),
                                     metadata=vault.security())
    first: Any = await call.read()
    assert not first.complete
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await rewrap(vault)
    assert error_from_rpc(busy.value).reason == "REWRAP_RUNNING"
    call.cancel()
