"""Request ids: replay, mismatch, concurrency, restart, stored errors, retention."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from cardlink.bank.v1 import simulator_pb2 as sim
from cardlink.gateway.v1 import resources_pb2
from clients.sdk import Aborted, InvalidArgument, Unavailable
from common.redis_client import connect
from gateway.idempotency import Codec, IdempotencySettings, IdempotencyStore
from gateway.keys import Keyspace
from tests.gateway.conftest import ALICE, DAVE, ERIN, Stack, default_consent, refused

Binding = resources_pb2.Binding


async def test_replay_returns_the_first_answer_even_after_a_restart(stack: Stack) -> None:
    sdk = await stack.sdk()
    request_id = str(uuid.uuid4())
    first = await sdk.create_binding("u-1", ALICE, default_consent(), request_id=request_id)
    # Re-sealed (new ciphertext), same card and consent: the same request.
    replay = await sdk.create_binding("u-1", ALICE, default_consent(), request_id=request_id)
    assert replay == first
    await stack.restart_gateway()
    sdk = await stack.sdk()
    after_restart = await sdk.create_binding("u-1", ALICE, default_consent(),
                                             request_id=request_id)
    assert after_restart == first
    assert (await stack.stats()).verifications == 1


async def test_same_id_different_request_is_refused(stack: Stack) -> None:
    sdk = await stack.sdk()
    request_id = str(uuid.uuid4())
    await sdk.create_binding("u-2", ALICE, default_consent(), request_id=request_id)
    other_card = await refused(sdk.create_binding("u-2", ERIN, default_consent(),
                                                  request_id=request_id))
    assert isinstance(other_card, InvalidArgument) and other_card.reason == "REQUEST_ID_REUSED"
    assert other_card.violations[0].field == "request_id"
    assert [b.card.last_four async for b in sdk.list_bindings("u-2")] == ["1111"]


async def test_an_id_released_by_a_retryable_error_stays_bound_to_its_request(
        stack: Stack) -> None:
    """A retryable failure lets the same request run again, but never another
    request under that id: its ids and bank keys derive from the request id."""
    sdk = await stack.sdk()
    request_id = str(uuid.uuid4())
    slow = await refused(sdk.create_binding("u-7", DAVE, default_consent(),
                                            request_id=request_id))
    assert isinstance(slow, Unavailable)  # Dave's bank answers after the call's budget
    other = await refused(sdk.create_binding("u-7", ALICE, default_consent(),
                                             request_id=request_id))
    assert isinstance(other, InvalidArgument) and other.reason == "REQUEST_ID_REUSED"
    assert [b.card.last_four async for b in sdk.list_bindings("u-7")] == ["0119"]
    alice = await sdk.create_binding("u-8", ALICE, default_consent())  # Alice's card is free
    assert alice.card.last_four == "1111"

    binding = await sdk.confirm_binding(alice.name, await stack.code_for(ALICE))
    erin = await sdk.create_binding("u-8", ERIN, default_consent())
    erin = await sdk.confirm_binding(erin.name, await stack.code_for(ERIN))
    line_id = str(uuid.uuid4())
    await stack.switch(sim.CALL_KIND_DECIDE_CREDIT, sim.MODE_TIMEOUT, times=1)
    timed_out = await refused(sdk.activate_credit_line("u-8", binding.name, request_id=line_id))
    assert isinstance(timed_out, Unavailable)
    elsewhere = await refused(sdk.activate_credit_line("u-8", erin.name, request_id=line_id))
    assert isinstance(elsewhere, InvalidArgument) and elsewhere.reason == "REQUEST_ID_REUSED"
    line = await sdk.activate_credit_line("u-8", binding.name, request_id=line_id)  # the retry
    assert line.binding == binding.name


async def test_twenty_concurrent_duplicates_do_the_work_once(stack: Stack) -> None:
    sdk = await stack.sdk()
    request_id = str(uuid.uuid4())
    # Slow the bank so the duplicates really overlap the first call.
    await stack.switch(sim.CALL_KIND_VERIFY_HOLDER, sim.MODE_NORMAL, latency_s=0.2)
    results = await asyncio.gather(*(
        sdk.create_binding("u-3", ALICE, default_consent(), request_id=request_id)
        for _ in range(20)
    ))
    assert len({r.SerializeToString() for r in results}) == 1
    stats = await stack.stats()
    assert (stats.verifications, stats.codes_sent) == (1, 1)
    assert len([b async for b in sdk.list_bindings("u-3")]) == 1

    binding = results[0]
    code = await stack.code_for(ALICE)
    confirm_id = str(uuid.uuid4())
    confirmed = await asyncio.gather(*(
        sdk.confirm_binding(binding.name, code, request_id=confirm_id) for _ in range(20)
    ))
    assert {c.state for c in confirmed} == {Binding.STATE_ACTIVE}
    assert (await stack.stats()).code_checks == 1

    line_id = str(uuid.uuid4())
    lines = await asyncio.gather(*(
        sdk.activate_credit_line("u-3", binding.name, request_id=line_id) for _ in range(20)
    ))
    assert len({line.name for line in lines}) == 1
    assert (await stack.stats()).credit_decisions == 1


async def test_duplicate_that_waits_too_long_is_told_to_retry(stack: Stack) -> None:
    await stack.restart_gateway(idempotency=__import__(
        "gateway.idempotency", fromlist=["IdempotencySettings"]
    ).IdempotencySettings(wait_s=0.05))
    sdk = await stack.sdk()
    request_id = str(uuid.uuid4())
    await stack.switch(sim.CALL_KIND_VERIFY_HOLDER, sim.MODE_NORMAL, latency_s=0.3)
    first = asyncio.create_task(
        sdk.create_binding("u-4", ALICE, default_consent(), request_id=request_id))
    await asyncio.sleep(0.1)
    busy = await refused(sdk.create_binding("u-4", ALICE, default_consent(),
                                            request_id=request_id))
    assert isinstance(busy, Aborted) and busy.reason == "REQUEST_IN_PROGRESS"
    assert (await first).state == Binding.STATE_PENDING_CODE


async def test_a_replayed_wrong_code_does_not_burn_another_attempt(stack: Stack) -> None:
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-5", ALICE, default_consent())
    request_id = str(uuid.uuid4())
    for _ in range(3):
        wrong = await refused(sdk.confirm_binding(binding.name, "000000", request_id=request_id))
        assert wrong.reason == "CODE_MISMATCH" and wrong.metadata["attempts_left"] == "2"
    assert (await sdk.get_binding(binding.name)).code_attempts_left == 2


async def test_records_expire_after_the_retention(stack: Stack) -> None:
    sdk = await stack.sdk()
    request_id = str(uuid.uuid4())
    await sdk.create_binding("u-6", ALICE, default_consent(), request_id=request_id)
    key = stack.gateway.keyspace.idempotency("acme", "CreateBinding", request_id)
    ttl = await stack.redis.ttl(key)
    assert 3500 < ttl <= 3600  # the configured retention (conftest: 3600 s)


async def test_a_claim_from_before_leases_were_fields_still_holds(
        redis_url: str, key_prefix: str) -> None:
    """During a rolling upgrade, a request in flight on an old process (a pending
    record whose TTL is its lease) is not run a second time by a new one."""
    redis = connect(redis_url)
    try:
        store = IdempotencyStore(redis, Keyspace(key_prefix), IdempotencySettings(wait_s=0.05))
        key = Keyspace(key_prefix).idempotency("acme", "CreateBinding", "r-1")
        await redis.hset(key, mapping={"st": "pending", "fp": "f", "own": "old-process"})
        await redis.pexpire(key, 30_000)
        ran: list[str] = []

        async def work() -> str:
            ran.append("again")
            return "done"

        codec = Codec[str](dump=str, load=str)
        with pytest.raises(Aborted) as busy:
            await store.run("acme", "CreateBinding", "r-1", "f", work, codec)
        assert busy.value.reason == "REQUEST_IN_PROGRESS" and ran == []
        await redis.delete(key)  # its lease ran out: a new process claims it
        assert await store.run("acme", "CreateBinding", "r-1", "f", work, codec) == "done"
        assert 3500 < await redis.ttl(key) <= 86_400
    finally:
        await redis.aclose()
