"""Races and abuse on the gateway: double-submitted and racing codes, a slow
bank, another user's refused bind, bank events on an undecided line."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from cardlink.bank.v1 import simulator_pb2 as sim
from cardlink.gateway.v1 import bank_events_pb2_grpc, resources_pb2
from clients.sdk import Aborted, FailedPrecondition
from common.auth import bearer_metadata
from common.grpc_errors import rpc_errors
from gateway.connectors import CallPolicy
from gateway.names import credit_line_name, derived_id, parse_user
from tests.gateway import bank_events as event
from tests.gateway.conftest import (
    ALICE,
    ERIN,
    GATEWAY_AUDIENCE,
    Stack,
    default_consent,
    refused,
)

Binding = resources_pb2.Binding
Line = resources_pb2.CreditLine


def _short(value: object) -> str:
    if isinstance(value, Exception):
        return repr(value)
    return f"{getattr(value, 'name', '')} state={getattr(value, 'state', '')}"


async def _settle(*calls: object) -> list[object]:
    """Run calls concurrently; return each answer or the typed error it failed with."""

    async def one(call: object) -> object:
        try:
            with rpc_errors():
                return await call  # type: ignore[misc]
        except Exception as error:  # the error is the result here
            return error

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def test_double_submitted_right_code_keeps_the_card_owned(stack: Stack) -> None:
    """The user taps "confirm" twice (two request ids, same right code): the
    second check gets EXPIRED from the bank but finds the binding ACTIVE, so the
    card stays owned and no other user of the tenant can bind it."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    # The first CheckCode to reach the bank is delayed (below the deadline).
    await stack.switch(sim.CALL_KIND_CHECK_CODE, sim.MODE_NORMAL, latency_s=0.3, times=1)
    slow = asyncio.ensure_future(_settle(sdk.confirm_binding(binding.name, code)))
    await asyncio.sleep(0.1)
    fast = await sdk.confirm_binding(binding.name, code)
    assert fast.state == Binding.STATE_ACTIVE
    await slow
    assert (await sdk.get_binding(binding.name)).state == Binding.STATE_ACTIVE
    # The card is bound to u-1: another user must be refused.
    other = await _settle(sdk.create_binding("u-2", ALICE, default_consent()))
    assert isinstance(other[0], FailedPrecondition), (
        f"card of an ACTIVE binding was released; u-2 got {_short(other[0])}")


async def test_wrong_code_racing_the_right_one_keeps_the_card_owned(stack: Stack) -> None:
    """A wrong code that loses the race against the right one leaves the ACTIVE
    binding and its card claim alone."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    wrong = "000000" if code != "000000" else "111111"
    await stack.switch(sim.CALL_KIND_CHECK_CODE, sim.MODE_NORMAL, latency_s=0.3, times=1)
    slow = asyncio.ensure_future(_settle(sdk.confirm_binding(binding.name, wrong)))
    await asyncio.sleep(0.1)
    assert (await sdk.confirm_binding(binding.name, code)).state == Binding.STATE_ACTIVE
    await slow
    other = await _settle(sdk.create_binding("u-2", ALICE, default_consent()))
    assert isinstance(other[0], FailedPrecondition), (
        f"card of an ACTIVE binding was released; u-2 got {_short(other[0])}")


async def test_right_code_after_bank_timeout_with_new_request_id(stack: Stack) -> None:
    """The right code times out at the bank (which matched and used it up); the
    app retries it under a new request id, which resumes the same bank check and
    activates the binding instead of failing it with CODE_EXPIRED."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    await stack.switch(sim.CALL_KIND_CHECK_CODE, sim.MODE_TIMEOUT, times=1)
    await refused(sdk.confirm_binding(binding.name, code))
    again = await _settle(sdk.confirm_binding(binding.name, code))
    assert not isinstance(again[0], Exception), f"right code refused: {again[0]!r}"
    assert again[0].state == Binding.STATE_ACTIVE  # type: ignore[attr-defined]


async def test_slow_bank_does_not_allow_more_guesses_than_the_limit(stack: Stack) -> None:
    """With the bank timing out, guesses under new request ids stay counted:
    the bank never checks more codes than code_max_attempts (3)."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    await stack.switch(sim.CALL_KIND_CHECK_CODE, sim.MODE_TIMEOUT)
    before = (await stack.stats()).code_checks
    for guess in ("100001", "100002", "100003", "100004", "100005"):
        await refused(sdk.confirm_binding(binding.name, guess))
    checked = (await stack.stats()).code_checks - before
    left = (await sdk.get_binding(binding.name)).code_attempts_left
    assert checked <= 3, f"the bank checked {checked} guesses; gateway still shows {left} left"


async def test_refused_create_by_another_user_does_not_change_the_card(stack: Stack) -> None:
    """Another user's bind of the same card, refused CARD_BOUND_TO_OTHER_USER,
    changes nothing in the vault, so the owner's verification still succeeds."""
    await stack.restart_gateway(bank_policy=CallPolicy(deadline_s=3.0, attempts=2,
                                                       backoff_s=0.01))
    sdk = await stack.sdk()
    await stack.switch(sim.CALL_KIND_VERIFY_HOLDER, sim.MODE_NORMAL, latency_s=1.0, times=1)
    owner = asyncio.ensure_future(_settle(sdk.create_binding("u-1", ALICE, default_consent())))
    await asyncio.sleep(0.3)
    mallory = type(ALICE)()
    mallory.CopyFrom(ALICE)
    mallory.national_id = "ID-MALLORY-9"
    refusal = await refused(sdk.create_binding("u-2", mallory, default_consent()))
    assert refusal.reason == "CARD_BOUND_TO_OTHER_USER"
    (result,) = await owner
    assert not isinstance(result, Exception), repr(result)
    assert result.state == Binding.STATE_PENDING_CODE, (  # type: ignore[attr-defined]
        f"owner's binding {result.failure_reason}")  # type: ignore[attr-defined]


async def test_freeze_refused_while_applied_is_not_replayed_forever(stack: Stack) -> None:
    """A freeze sent while the line is still APPLIED (after a DecideCredit
    timeout) is refused as retryable, not stored: the bank's retry freezes the
    line once it is ACTIVE."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    binding = await sdk.confirm_binding(binding.name, await stack.code_for(ALICE))
    request_id = str(uuid.uuid4())
    await stack.switch(sim.CALL_KIND_DECIDE_CREDIT, sim.MODE_TIMEOUT, times=1)
    await refused(sdk.activate_credit_line("u-1", binding.name, request_id=request_id))
    user = parse_user("tenants/acme/users/u-1")
    line_name = str(credit_line_name(user, derived_id("cln", str(user), request_id)))

    events = bank_events_pb2_grpc.BankEventsStub(stack.channel)
    auth = bearer_metadata(stack.vault.identities.token(
        "cardlink-bank", "acme", ["gateway.bank.events"], audience=GATEWAY_AUDIENCE))
    freeze = event.freeze(line_name, "FRAUD")
    first = await refused(events.FreezeCreditLine(freeze, metadata=auth))
    assert first.reason == "CREDIT_LINE_STATE"
    close = event.close(line_name, "FRAUD")
    early_close = await refused(events.CloseCreditLine(close, metadata=auth))
    assert isinstance(early_close, Aborted) and early_close.reason == "CREDIT_LINE_STATE"

    line = await sdk.activate_credit_line("u-1", binding.name, request_id=request_id)
    assert line.state == Line.STATE_ACTIVE
    retried = await _settle(events.FreezeCreditLine(freeze, metadata=auth))
    assert not isinstance(retried[0], Exception), f"bank's freeze retry: {retried[0]!r}"
    assert retried[0].state == Line.STATE_FROZEN  # type: ignore[attr-defined]
    closed = await events.CloseCreditLine(close, metadata=auth)  # the same event, retried
    assert closed.state == Line.STATE_CLOSED


async def test_a_match_that_lands_after_the_code_expired_does_not_bind_the_card_twice(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bank checks the code in time and says MATCH, but its answer arrives
    after the code's expiry: by then the binding reads FAILED and another user
    may bind the card. The late match must not make the first binding ACTIVE too."""
    sdk = await stack.sdk()
    first = await sdk.create_binding("u-late", ALICE, default_consent())
    bank = stack.gateway.bindings._bank  # the gateway's own bank connector
    check_code = bank.check_code
    second: list[Binding] = []

    async def answer_arrives_late(*args: Any) -> Any:
        result = await check_code(*args)  # checked by the bank before the expiry
        stack.clock.advance(301)  # the default code lifetime is 300 s
        assert (await sdk.get_binding(first.name)).state == Binding.STATE_FAILED
        second.append(await sdk.create_binding("u-other", ALICE, default_consent()))
        return result

    monkeypatch.setattr(bank, "check_code", answer_arrives_late)
    late = await refused(sdk.confirm_binding(first.name, await stack.code_for(ALICE)))
    monkeypatch.undo()
    assert isinstance(late, FailedPrecondition) and late.reason == "CODE_EXPIRED"
    other = await sdk.confirm_binding(second[0].name, await stack.code_for(ALICE))
    states = [(await sdk.get_binding(b.name)).state for b in (first, other)]
    assert states == [Binding.STATE_FAILED, Binding.STATE_ACTIVE]


async def test_a_binding_whose_code_expired_cannot_be_unbound(stack: Stack) -> None:
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-exp", ALICE, default_consent())
    stack.clock.advance(301)
    assert (await sdk.get_binding(binding.name)).state == Binding.STATE_FAILED
    refusal = await refused(sdk.unbind_binding(binding.name))
    assert isinstance(refusal, FailedPrecondition) and refusal.reason == "BINDING_NOT_BOUND"
    shown = await sdk.get_binding(binding.name)
    assert (shown.state, shown.failure_reason) == (Binding.STATE_FAILED, "CODE_EXPIRED")


async def test_a_confirm_racing_the_end_of_verification_sends_the_verification_id(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bank texted the code, then timed out; the partner's retry of the
    create ends verification just as the user confirms. The right code
    activates (the check went out with no verification id, which the bank
    answered EXPIRED: the binding failed and the card was released)."""
    sdk = await stack.sdk()
    request_id = str(uuid.uuid4())
    await stack.switch(sim.CALL_KIND_VERIFY_HOLDER, sim.MODE_TIMEOUT, times=1)
    await refused(sdk.create_binding("u-1", ALICE, default_consent(), request_id=request_id))
    name = "tenants/acme/users/u-1/bindings/" + derived_id("bnd", "tenants/acme/users/u-1",
                                                           request_id)
    code = await stack.code_for(ALICE)  # texted before the timeout
    store = stack.gateway.bindings._store
    reserve = store.reserve_attempt

    async def reserve_after_verification(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(store, "reserve_attempt", reserve)
        done = await sdk.create_binding("u-1", ALICE, default_consent(), request_id=request_id)
        assert done.state == Binding.STATE_PENDING_CODE
        return await reserve(*args, **kwargs)

    monkeypatch.setattr(store, "reserve_attempt", reserve_after_verification)
    assert (await sdk.confirm_binding(name, code)).state == Binding.STATE_ACTIVE


async def test_a_refused_create_leaves_a_concurrent_create_its_card_claim(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two creates of one card by one user at the binding limit; the second is
    refused (limit) while the first is between claiming the card and creating
    its binding, and a slot frees up meanwhile. The first binding must keep the
    card (the refusal deleted the claim: another user bound the same card and
    both bindings became ACTIVE)."""
    await stack.restart_with_thresholds(max_bindings_per_user=1)
    sdk = await stack.sdk()
    other = await sdk.create_binding("u-1", ERIN, default_consent())
    first_id = str(uuid.uuid4())
    first_bid = derived_id("bnd", "tenants/acme/users/u-1", first_id)
    store = stack.gateway.bindings._store
    create = store.create
    at_gate, gate = asyncio.Event(), asyncio.Event()

    async def held_create(new: Any, *args: Any) -> Any:
        if new.name.id == first_bid:
            at_gate.set()
            await gate.wait()  # the card is claimed, the binding not yet created
        return await create(new, *args)

    monkeypatch.setattr(store, "create", held_create)
    first = asyncio.ensure_future(sdk.create_binding("u-1", ALICE, default_consent(),
                                                     request_id=first_id))
    await at_gate.wait()
    limit = await refused(sdk.create_binding("u-1", ALICE, default_consent()))
    assert limit.reason == "BINDINGS_PER_USER_EXCEEDED"
    await sdk.unbind_binding(other.name)
    gate.set()
    assert (await first).state == Binding.STATE_PENDING_CODE
    taken = await refused(sdk.create_binding("u-2", ALICE, default_consent()))
    assert taken.reason == "CARD_BOUND_TO_OTHER_USER"
