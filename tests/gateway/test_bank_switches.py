"""Each bank switch gives its documented outcome, and retries never do the work twice.

- DECLINE VerifyHolder: binding FAILED, HOLDER_VERIFICATION_DECLINED; the card is free.
- DECLINE CheckCode: INVALID_ARGUMENT CODE_MISMATCH (one attempt used), still PENDING_CODE.
- DECLINE DecideCredit: line DECLINED, SIMULATED_DECLINE; the user may apply again.
- ERROR, UNAVAILABLE (beyond the gateway's one retry): UNAVAILABLE BANK_UNAVAILABLE; the
  binding stays PENDING_VERIFICATION, the line APPLIED, a code attempt is refunded.
- TIMEOUT: UNAVAILABLE BANK_UNAVAILABLE (cause timeout); the code attempt stays counted
  and the check pending; the retry (same code, any request id) gets the bank's first
  answer, the bank does the work once.
- Latency under the deadline: the normal outcome, later; over it: as TIMEOUT.
- MALFORMED (an answer in breach of the contract): INTERNAL BANK_PROTOCOL, never
  blamed on the caller nor stored; the retry under the same request id recovers.
"""

from __future__ import annotations

import uuid

from cardlink.bank.v1 import simulator_pb2 as sim
from cardlink.gateway.v1 import resources_pb2
from clients.sdk import Internal, InvalidArgument, Unavailable
from tests.gateway.conftest import (
    ALICE,
    BANK_DEADLINE_S,
    DAVE,
    ERIN,
    Stack,
    default_consent,
    refused,
)

Binding = resources_pb2.Binding
Line = resources_pb2.CreditLine


async def test_verify_decline(stack: Stack) -> None:
    await stack.switch(sim.CALL_KIND_VERIFY_HOLDER, sim.MODE_DECLINE, times=1)
    sdk = await stack.sdk()
    failed = await sdk.create_binding("u-1", ALICE, default_consent())
    assert failed.state == Binding.STATE_FAILED
    assert failed.failure_reason == "HOLDER_VERIFICATION_DECLINED"
    # The card is free again: a new request binds it.
    again = await sdk.create_binding("u-1", ALICE, default_consent())
    assert again.state == Binding.STATE_PENDING_CODE and again.name != failed.name


async def test_verify_error_and_outage_leave_binding_retryable(stack: Stack) -> None:
    sdk = await stack.sdk()
    request_id = str(uuid.uuid4())
    for mode in (sim.MODE_ERROR, sim.MODE_UNAVAILABLE):
        await stack.switch(sim.CALL_KIND_VERIFY_HOLDER, mode)
        error = await refused(sdk.create_binding("u-2", ALICE, default_consent(),
                                                 request_id=request_id))
        assert isinstance(error, Unavailable) and error.reason == "BANK_UNAVAILABLE"
    listed = [b async for b in sdk.list_bindings("u-2")]
    assert [b.state for b in listed] == [Binding.STATE_PENDING_VERIFICATION]
    await stack.switch(sim.CALL_KIND_VERIFY_HOLDER, sim.MODE_NORMAL)
    resumed = await sdk.create_binding("u-2", ALICE, default_consent(), request_id=request_id)
    assert resumed.name == listed[0].name and resumed.state == Binding.STATE_PENDING_CODE
    assert (await stack.stats()).verifications == 1


async def test_verify_timeout_then_retry_verifies_once(stack: Stack) -> None:
    sdk = await stack.sdk()
    request_id = str(uuid.uuid4())
    await stack.switch(sim.CALL_KIND_VERIFY_HOLDER, sim.MODE_TIMEOUT, times=1)
    error = await refused(sdk.create_binding("u-3", ERIN, default_consent(),
                                             request_id=request_id))
    assert isinstance(error, Unavailable) and error.reason == "BANK_UNAVAILABLE"
    assert error.metadata["cause"] == "timeout"
    # The bank did verify and text a code before the deadline ran out.
    assert (await stack.stats()).codes_sent == 1
    retried = await sdk.create_binding("u-3", ERIN, default_consent(), request_id=request_id)
    assert retried.state == Binding.STATE_PENDING_CODE
    stats = await stack.stats()
    assert (stats.verifications, stats.codes_sent) == (1, 1)
    confirmed = await sdk.confirm_binding(retried.name, await stack.code_for(ERIN))
    assert confirmed.state == Binding.STATE_ACTIVE


async def test_slow_card_resolves_on_sdk_retry(stack: Stack) -> None:
    """Dave's bank answers after the deadline; the SDK's own retry resolves it."""
    from clients.sdk import RetryPolicy

    sdk = await stack.sdk(retry=RetryPolicy(attempts=3, backoff_s=0.01))
    binding = await sdk.create_binding("u-4", DAVE, default_consent())
    assert binding.state == Binding.STATE_PENDING_CODE
    stats = await stack.stats()
    assert (stats.verifications, stats.codes_sent) == (1, 1)


async def test_latency_below_deadline_is_just_slower(stack: Stack) -> None:
    await stack.switch(sim.CALL_KIND_VERIFY_HOLDER, sim.MODE_NORMAL,
                       latency_s=BANK_DEADLINE_S / 3)
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-5", ALICE, default_consent())
    assert binding.state == Binding.STATE_PENDING_CODE


async def test_latency_above_deadline_is_a_timeout(stack: Stack) -> None:
    await stack.switch(sim.CALL_KIND_VERIFY_HOLDER, sim.MODE_NORMAL,
                       latency_s=BANK_DEADLINE_S + 0.3, times=1)
    sdk = await stack.sdk()
    error = await refused(sdk.create_binding("u-6", ALICE, default_consent()))
    assert isinstance(error, Unavailable) and error.metadata["cause"] == "timeout"


async def test_one_outage_is_absorbed_by_the_gateway_retry(stack: Stack) -> None:
    # UNAVAILABLE means the bank never ran the call: the only kind retried inside.
    await stack.switch(sim.CALL_KIND_VERIFY_HOLDER, sim.MODE_UNAVAILABLE, times=1)
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-9", ALICE, default_consent())
    assert binding.state == Binding.STATE_PENDING_CODE


async def test_check_code_switches(stack: Stack) -> None:
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-7", ALICE, default_consent())
    code = await stack.code_for(ALICE)

    await stack.switch(sim.CALL_KIND_CHECK_CODE, sim.MODE_DECLINE, times=1)
    mismatch = await refused(sdk.confirm_binding(binding.name, code))
    assert isinstance(mismatch, InvalidArgument) and mismatch.reason == "CODE_MISMATCH"
    assert mismatch.metadata["attempts_left"] == "2"

    await stack.switch(sim.CALL_KIND_CHECK_CODE, sim.MODE_ERROR, times=1)
    down = await refused(sdk.confirm_binding(binding.name, code))
    assert isinstance(down, Unavailable)
    # The failed call's attempt was given back.
    assert (await sdk.get_binding(binding.name)).code_attempts_left == 2

    request_id = str(uuid.uuid4())
    await stack.switch(sim.CALL_KIND_CHECK_CODE, sim.MODE_TIMEOUT, times=1)
    timed_out = await refused(sdk.confirm_binding(binding.name, code, request_id=request_id))
    assert isinstance(timed_out, Unavailable)
    active = await sdk.confirm_binding(binding.name, code, request_id=request_id)
    assert active.state == Binding.STATE_ACTIVE


async def test_credit_switches_and_timeout_retry_makes_one_line(stack: Stack) -> None:
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-8", ALICE, default_consent())
    binding = await sdk.confirm_binding(binding.name, await stack.code_for(ALICE))

    await stack.switch(sim.CALL_KIND_DECIDE_CREDIT, sim.MODE_DECLINE, times=1)
    declined = await sdk.activate_credit_line("u-8", binding.name)
    assert declined.state == Line.STATE_DECLINED
    assert declined.decline_reason == "SIMULATED_DECLINE"

    # Two outages in a row: more than the gateway's own bounded retry absorbs.
    await stack.switch(sim.CALL_KIND_DECIDE_CREDIT, sim.MODE_UNAVAILABLE, times=2)
    request_id = str(uuid.uuid4())
    down = await refused(sdk.activate_credit_line("u-8", binding.name, request_id=request_id))
    assert isinstance(down, Unavailable) and down.reason == "BANK_UNAVAILABLE"

    await stack.switch(sim.CALL_KIND_DECIDE_CREDIT, sim.MODE_TIMEOUT, times=1)
    timed_out = await refused(sdk.activate_credit_line("u-8", binding.name,
                                                       request_id=request_id))
    assert isinstance(timed_out, Unavailable)
    decisions = (await stack.stats()).credit_decisions
    line = await sdk.activate_credit_line("u-8", binding.name, request_id=request_id)
    again = await sdk.activate_credit_line("u-8", binding.name, request_id=request_id)
    assert line.state == Line.STATE_ACTIVE and again == line
    assert (await stack.stats()).credit_decisions == decisions  # resolved, not decided again
    other = await refused(sdk.activate_credit_line("u-8", binding.name))
    assert other.reason == "CREDIT_LINE_EXISTS"


async def test_a_malformed_bank_answer_is_the_bank_s_error_and_a_retry_recovers(
        stack: Stack) -> None:
    sdk = await stack.sdk()
    request_id = str(uuid.uuid4())
    await stack.switch(sim.CALL_KIND_VERIFY_HOLDER, sim.MODE_MALFORMED, times=1)
    broken = await refused(sdk.create_binding("u-11", ALICE, default_consent(),
                                              request_id=request_id))
    assert isinstance(broken, Internal) and broken.reason == "BANK_PROTOCOL"
    binding = await sdk.create_binding("u-11", ALICE, default_consent(),
                                       request_id=request_id)
    binding = await sdk.confirm_binding(binding.name, await stack.code_for(ALICE))

    await stack.switch(sim.CALL_KIND_DECIDE_CREDIT, sim.MODE_MALFORMED, times=1)
    bad_limit = await refused(sdk.activate_credit_line("u-11", binding.name,
                                                       request_id=request_id))
    assert isinstance(bad_limit, Internal) and bad_limit.reason == "BANK_PROTOCOL"
    assert not bad_limit.violations  # nothing the caller sent was wrong
    line = await sdk.activate_credit_line("u-11", binding.name, request_id=request_id)
    assert line.state == Line.STATE_ACTIVE and line.limit.currency_code == "EUR"
    assert (await stack.stats()).credit_decisions == 1  # the bank decided once


async def test_vault_down_is_unavailable_and_writes_nothing(stack: Stack) -> None:
    sdk = await stack.sdk()  # it fetches and caches the sealing keys now
    await stack.vault.vault.running.server.stop(None)
    error = await refused(sdk.create_binding("u-10", ALICE, default_consent()))
    assert isinstance(error, Unavailable) and error.reason == "VAULT_UNAVAILABLE"
    assert [k async for k in stack.redis.scan_iter(match=stack.gateway.keyspace.pattern)] == []
