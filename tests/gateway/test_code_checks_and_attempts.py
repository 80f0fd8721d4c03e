"""One-time code checks and attempt counting: refunds only when the bank did no
work, pending checks, per-card and per-user counters, code fingerprints."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from cardlink.bank.v1 import simulator_pb2 as sim
from cardlink.gateway.v1 import resources_pb2
from clients.sdk import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    PartnerClient,
    ResourceExhausted,
)
from common.config import ConfigError
from gateway.config import GatewayConfig
from gateway.connectors import CallPolicy
from gateway.idempotency import fingerprint
from gateway.names import parse_user
from tests.gateway.conftest import ALICE, ERIN, Stack, default_consent, refused

Binding = resources_pb2.Binding


def _wrong(code: str, n: int = 0) -> str:
    return next(c for c in (f"{n}0000{n}", "000000", "111111") if c != code)


async def _two_wrong_codes(stack: Stack,
                           sdk: PartnerClient) -> tuple[resources_pb2.Binding, str]:
    """User u-1's new binding of ALICE after two wrong codes (one attempt of
    the default three left), and its right code."""
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    for n in (1, 2):
        await refused(sdk.confirm_binding(binding.name, _wrong(code, n)))
    return binding, code


async def test_unreachable_bank_gives_the_attempt_back(stack: Stack) -> None:
    """Finding 2: only a bank that provably did nothing refunds the attempt."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    await stack.switch(sim.CALL_KIND_CHECK_CODE, sim.MODE_UNAVAILABLE, times=2)
    await refused(sdk.confirm_binding(binding.name, _wrong(code)))
    assert (await sdk.get_binding(binding.name)).code_attempts_left == 3
    # The pending check was dropped with the refund: another code goes through.
    assert (await sdk.confirm_binding(binding.name, code)).state == Binding.STATE_ACTIVE


async def test_another_code_waits_for_a_check_of_unknown_outcome(stack: Stack) -> None:
    """Finding 2: after a timeout the check stays pending; a different code is
    ABORTED (not stored), the same code under a new request id resolves it."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    await stack.switch(sim.CALL_KIND_CHECK_CODE, sim.MODE_TIMEOUT, times=1)
    await refused(sdk.confirm_binding(binding.name, _wrong(code)))
    assert (await sdk.get_binding(binding.name)).code_attempts_left == 2
    request_id = str(uuid.uuid4())
    busy = await refused(sdk.confirm_binding(binding.name, code, request_id=request_id))
    assert isinstance(busy, Aborted) and busy.reason == "CODE_CHECK_PENDING"
    wrong = await refused(sdk.confirm_binding(binding.name, _wrong(code)))
    assert isinstance(wrong, InvalidArgument) and wrong.metadata["attempts_left"] == "2"
    # ABORTED was not stored: the same request id now runs the check.
    active = await sdk.confirm_binding(binding.name, code, request_id=request_id)
    assert active.state == Binding.STATE_ACTIVE
    assert (await stack.stats()).code_checks == 2


async def test_refused_strangers_do_not_use_up_card_attempts(stack: Stack) -> None:
    """Finding 4: the per-card attempt counter moves only for a successful claim."""
    await stack.restart_with_thresholds(max_card_attempts=2)
    sdk = await stack.sdk()
    first = await sdk.create_binding("u-1", ALICE, default_consent())
    for user in ("u-2", "u-3", "u-4"):
        taken = await refused(sdk.create_binding(user, ALICE, default_consent()))
        assert isinstance(taken, FailedPrecondition), taken
    await sdk.unbind_binding(first.name)
    second = await sdk.create_binding("u-5", ALICE, default_consent())
    assert second.state == Binding.STATE_PENDING_CODE
    await sdk.unbind_binding(second.name)
    busy = await refused(sdk.create_binding("u-6", ALICE, default_consent()))
    assert isinstance(busy, ResourceExhausted) and busy.reason == "CARD_ATTEMPTS_EXCEEDED"
    shown = [b async for b in sdk.list_bindings("u-6")]
    assert [(b.state, b.failure_reason) for b in shown] == [
        (Binding.STATE_FAILED, "CARD_ATTEMPTS_EXCEEDED")]
    # The refused attempt released its claim.
    again = await refused(sdk.create_binding("u-7", ALICE, default_consent()))
    assert isinstance(again, ResourceExhausted) and again.reason == "CARD_ATTEMPTS_EXCEEDED"


async def test_unbinding_does_not_reset_wrong_code_counting(stack: Stack) -> None:
    """Finding 5: wrong codes count per (user, card), not per binding."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    await refused(sdk.confirm_binding(binding.name, _wrong(code, 1)))
    await refused(sdk.confirm_binding(binding.name, _wrong(code, 2)))
    await sdk.unbind_binding(binding.name)
    again = await sdk.create_binding("u-1", ALICE, default_consent())
    assert again.code_attempts_left == 1
    code = await stack.code_for(ALICE)
    last = await refused(sdk.confirm_binding(again.name, _wrong(code, 3)))
    assert isinstance(last, ResourceExhausted) and last.reason == "TOO_MANY_ATTEMPTS"
    locked = await refused(sdk.create_binding("u-1", ALICE, default_consent()))
    assert isinstance(locked, ResourceExhausted) and locked.reason == "BINDING_LOCKED_OUT"


async def test_confirm_fingerprint_is_not_a_plain_hash_of_the_code(stack: Stack) -> None:
    """Finding 6: the stored fingerprint is keyed by the deployment secret."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    request_id = str(uuid.uuid4())
    await sdk.confirm_binding(binding.name, code, request_id=request_id)
    key = stack.gateway.keyspace.idempotency("acme", "ConfirmBinding", request_id)
    raw = await stack.redis.hget(key, "fp")
    stored = raw.decode() if isinstance(raw, bytes) else str(raw or "")
    assert stored
    assert stored != fingerprint(binding.name, hashlib.sha256(code.encode()).hexdigest())


def test_fingerprint_secret_is_required_and_lease_is_derived(tmp_path: Path) -> None:
    """Findings 6 and 7."""
    config = GatewayConfig.from_env({"REDIS_URL": "redis://x",
                                     "CARDLINK_STATE_DIR": str(tmp_path),
                                     "CARDLINK_GATEWAY_BANK_DEADLINE_S": "10",
                                     "CARDLINK_GATEWAY_BANK_ATTEMPTS": "3"})
    with pytest.raises(ConfigError):
        config.code_fingerprint_key()
    bank = CallPolicy(deadline_s=10.0, attempts=3)
    assert config.idempotency.lease_s > 2 * bank.budget_s > 3 * 10.0
    secret = GatewayConfig.from_env({"REDIS_URL": "redis://x",
                                     "CARDLINK_GATEWAY_FINGERPRINT_SECRET": "s" * 32})
    assert secret.code_fingerprint_key() == b"s" * 32


async def lose_answer(stack: Stack, binding_name: str, request_id: str) -> None:
    """As if a ConfirmBinding's answer had never been stored (Redis failed as
    the call ended) and its claim's lease had run out."""
    tenant = binding_name.split("/")[1]
    await stack.redis.delete(stack.gateway.keyspace.idempotency(tenant, "ConfirmBinding",
                                                                request_id))


async def test_a_wrong_code_whose_answer_was_lost_costs_one_attempt_only(stack: Stack) -> None:
    """When a wrong code's answer is never stored (Redis failed as the call
    ended), its claim runs out and the retry runs the same request again: it
    answers CODE_MISMATCH again and uses up no second attempt, even after
    later wrong codes."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    first_id = str(uuid.uuid4())
    first = await refused(sdk.confirm_binding(binding.name, _wrong(code, 1),
                                              request_id=first_id))
    assert isinstance(first, InvalidArgument) and first.metadata["attempts_left"] == "2"
    second = await refused(sdk.confirm_binding(binding.name, _wrong(code, 2)))
    assert isinstance(second, InvalidArgument) and second.metadata["attempts_left"] == "1"
    await lose_answer(stack, binding.name, first_id)
    again = await refused(sdk.confirm_binding(binding.name, _wrong(code, 1),
                                              request_id=first_id))
    assert isinstance(again, InvalidArgument) and again.reason == "CODE_MISMATCH"
    assert again.metadata["attempts_left"] == "1"
    pending = await sdk.get_binding(binding.name)
    assert pending.state == Binding.STATE_PENDING_CODE and pending.code_attempts_left == 1
    assert (await stack.stats()).code_checks == 2  # the bank was not asked again
    assert (await sdk.confirm_binding(binding.name, code)).state == Binding.STATE_ACTIVE


async def test_the_last_wrong_code_run_again_answers_as_it_did(stack: Stack) -> None:
    """The rerun of the wrong code that used up the last attempt answers
    TOO_MANY_ATTEMPTS again (not "the binding awaits no code"), asks the
    bank nothing and locks nothing twice."""
    sdk = await stack.sdk()
    binding, code = await _two_wrong_codes(stack, sdk)
    last_id = str(uuid.uuid4())
    last = await refused(sdk.confirm_binding(binding.name, _wrong(code, 3),
                                             request_id=last_id))
    assert isinstance(last, ResourceExhausted) and last.reason == "TOO_MANY_ATTEMPTS"
    await lose_answer(stack, binding.name, last_id)
    again = await refused(sdk.confirm_binding(binding.name, _wrong(code, 3),
                                              request_id=last_id))
    assert isinstance(again, ResourceExhausted) and again.reason == "TOO_MANY_ATTEMPTS"
    assert again.metadata == last.metadata
    assert (await stack.stats()).code_checks == 3
    failed = await sdk.get_binding(binding.name)
    assert failed.state == Binding.STATE_FAILED and failed.failure_reason == "TOO_MANY_ATTEMPTS"


async def test_a_code_that_expired_answers_code_expired_every_time(stack: Stack) -> None:
    """Once the code has expired, ConfirmBinding answers CODE_EXPIRED: the
    call that found it, that call's rerun (its answer lost), and a later code
    after another script had already retired the binding; none asks the bank."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    stack.clock.advance(301)  # the default code lifetime is 300 s
    first_id = str(uuid.uuid4())
    first = await refused(sdk.confirm_binding(binding.name, code, request_id=first_id))
    assert isinstance(first, FailedPrecondition) and first.reason == "CODE_EXPIRED"
    await lose_answer(stack, binding.name, first_id)
    again = await refused(sdk.confirm_binding(binding.name, code, request_id=first_id))
    assert isinstance(again, FailedPrecondition) and again.reason == "CODE_EXPIRED"
    later = await refused(sdk.confirm_binding(binding.name, _wrong(code, 1)))
    assert isinstance(later, FailedPrecondition) and later.reason == "CODE_EXPIRED"
    assert (await stack.stats()).code_checks == 0
    failed = await sdk.get_binding(binding.name)
    assert failed.state == Binding.STATE_FAILED and failed.failure_reason == "CODE_EXPIRED"


async def test_an_expiry_found_by_a_sweep_answers_code_expired(stack: Stack) -> None:
    """A binding whose expiry another call found first (the per-user sweep)
    still answers CODE_EXPIRED, not "awaits no code"."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    stack.clock.advance(301)
    await sdk.create_binding("u-1", ERIN, default_consent())  # sweeps u-1's bindings
    swept = await refused(sdk.confirm_binding(binding.name, code))
    assert isinstance(swept, FailedPrecondition) and swept.reason == "CODE_EXPIRED"


async def test_a_resumed_check_that_cannot_reach_the_bank_keeps_its_attempt(
        stack: Stack) -> None:
    """The check timed out but the bank did check the code; its resume finds
    the bank unreachable. That attempt was used (it was given back, so a
    timeout then an outage bought a free guess each time)."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    await stack.switch(sim.CALL_KIND_CHECK_CODE, sim.MODE_TIMEOUT, times=1)
    await refused(sdk.confirm_binding(binding.name, _wrong(code, 1)))  # the bank checked it
    await stack.switch(sim.CALL_KIND_CHECK_CODE, sim.MODE_UNAVAILABLE, times=2)
    resumed = await refused(sdk.confirm_binding(binding.name, _wrong(code, 1)))
    assert resumed.reason == "BANK_UNAVAILABLE"
    assert (await sdk.get_binding(binding.name)).code_attempts_left == 2


async def test_the_attempt_counter_outlives_the_code_under_a_short_lockout(
        stack: Stack) -> None:
    """With a lockout shorter than the code's lifetime, the attempts counted on
    a code must not expire while the code is still valid (they started over)."""
    await stack.restart_with_thresholds(lockout_s=1)
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    await refused(sdk.confirm_binding(binding.name, _wrong(await stack.code_for(ALICE), 1)))
    base = stack.gateway.keyspace.user(parse_user("tenants/acme/users/u-1")).base
    [counter] = await stack.redis.keys(f"{base}:catt:*")
    assert await stack.redis.pttl(counter) > 299_000  # the default code lifetime: 300 s


async def test_a_wrong_last_code_answered_after_the_code_expired_locks_out_plainly(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bank's MISMATCH for the last attempt lands after the code expired:
    CODE_EXPIRED, as for every code from then on, and the binding stays FAILED
    CODE_EXPIRED (it was rewritten TOO_MANY_ATTEMPTS). The wrong code still
    counted: the next create is refused BINDING_LOCKED_OUT, plainly (not
    handed a binding whose every code, the right one too, is refused)."""
    await stack.restart_with_thresholds(code_ttl_s=60)  # shorter than the bank's code
    sdk = await stack.sdk()
    binding, code = await _two_wrong_codes(stack, sdk)
    bank = stack.gateway.bindings._bank
    check_code = bank.check_code

    async def slow_bank(*args: Any) -> Any:
        result = await check_code(*args)  # MISMATCH: the bank's code is still valid
        stack.clock.advance(61)  # the gateway's expired while the answer was on its way
        return result

    monkeypatch.setattr(bank, "check_code", slow_bank)
    late = await refused(sdk.confirm_binding(binding.name, _wrong(code, 3)))
    assert late.reason == "CODE_EXPIRED"
    failed = await sdk.get_binding(binding.name)
    assert failed.failure_reason == "CODE_EXPIRED"
    locked = await refused(sdk.create_binding("u-1", ALICE, default_consent()))
    assert isinstance(locked, ResourceExhausted) and locked.reason == "BINDING_LOCKED_OUT"


async def test_a_create_while_the_last_attempt_is_out_is_locked_out_plainly(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last attempt is on its way to the bank when the code expires, and
    the user starts again: refused BINDING_LOCKED_OUT (a new binding was
    handed out with no attempts left, refusing even the right code)."""
    await stack.restart_with_thresholds(code_ttl_s=60)
    sdk = await stack.sdk()
    binding, code = await _two_wrong_codes(stack, sdk)
    bank = stack.gateway.bindings._bank
    check_code = bank.check_code
    answered, release = asyncio.Event(), asyncio.Event()

    async def slow_bank(*args: Any) -> Any:
        result = await check_code(*args)
        answered.set()
        await release.wait()
        return result

    monkeypatch.setattr(bank, "check_code", slow_bank)
    last = asyncio.ensure_future(refused(sdk.confirm_binding(binding.name, _wrong(code, 3))))
    await answered.wait()
    stack.clock.advance(61)  # the code expires while the answer is on its way
    again = await refused(sdk.create_binding("u-1", ALICE, default_consent()))
    assert isinstance(again, ResourceExhausted) and again.reason == "BINDING_LOCKED_OUT"
    release.set()
    assert (await last).reason == "CODE_EXPIRED"


async def test_a_right_code_answered_late_or_a_code_the_bank_calls_expired_locks_nothing(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two wrong codes, then a third check the bank judges no wrong code: the
    right code answered after the code expired, or the bank's EXPIRED. Both
    answer CODE_EXPIRED and leave the card free to bind again (the third
    attempt stayed counted and the next create was locked out)."""
    await stack.restart_with_thresholds(code_ttl_s=600)  # outlives the bank's code
    sdk = await stack.sdk()
    bank = stack.gateway.bindings._bank
    check_code = bank.check_code
    for late in (True, False):
        binding, code = await _two_wrong_codes(stack, sdk)

        async def third_check(*args: Any, late: bool = late) -> Any:
            if late:  # the right code: the gateway's code expires on the way back
                result = await check_code(*args)
                stack.clock.advance(601)
                return result
            stack.clock.advance(301)  # the bank's code (300 s) has expired, ours not
            return await check_code(*args)

        monkeypatch.setattr(bank, "check_code", third_check)
        answer = await refused(sdk.confirm_binding(binding.name, code))
        assert answer.reason == "CODE_EXPIRED"
        monkeypatch.setattr(bank, "check_code", check_code)
        again = await sdk.create_binding("u-1", ALICE, default_consent())
        assert again.state == Binding.STATE_PENDING_CODE
        await sdk.unbind_binding(again.name)
