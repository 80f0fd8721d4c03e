"""The whole story through the SDK: bind with a code, activate credit, bank events."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from cardlink.bank.v1 import bank_core_pb2
from cardlink.gateway.v1 import bank_events_pb2_grpc, resources_pb2
from common.auth import bearer_metadata
from common.errors import FailedPrecondition, InvalidArgument, Unavailable
from gateway.credit_store import CreditStore
from gateway.names import ChildName, parse_user
from tests.gateway import bank_events as event
from tests.gateway.conftest import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    ERIN,
    GATEWAY_AUDIENCE,
    KNOWN_CARDS,
    Stack,
    default_consent,
    refused,
)
from tests.support.keyspace import contents
from tests.support.keyspace import snapshot as keyspace_snapshot

Binding = resources_pb2.Binding
Line = resources_pb2.CreditLine


async def bind(stack: Stack, user: str, secret: object) -> Binding:
    sdk = await stack.sdk()
    binding = await sdk.create_binding(user, secret, default_consent())  # type: ignore[arg-type]
    assert binding.state == Binding.STATE_PENDING_CODE
    code = await stack.code_for(secret)  # type: ignore[arg-type]
    return await sdk.confirm_binding(binding.name, code)


def bank_events(stack: Stack) -> bank_events_pb2_grpc.BankEventsAsyncStub:
    return bank_events_pb2_grpc.BankEventsStub(stack.channel)


def bank_auth(stack: Stack, tenant: str = "acme") -> tuple[tuple[str, str], ...]:
    return bearer_metadata(stack.vault.identities.token(
        "cardlink-bank", tenant, ["gateway.bank.events"], audience=GATEWAY_AUDIENCE))


async def test_bind_confirm_activate_and_bank_events(stack: Stack,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    assert binding.state == Binding.STATE_PENDING_CODE
    assert binding.card.last_four == "1111" and binding.card.bin == "411111"
    assert binding.code_attempts_left == 3
    assert binding.consent.terms_id == "bnpl-terms"

    code = await stack.code_for(ALICE)
    active = await sdk.confirm_binding(binding.name, code)
    assert active.state == Binding.STATE_ACTIVE
    assert (await sdk.get_binding(binding.name)).state == Binding.STATE_ACTIVE

    # The same card bound again by the same user: the existing binding.
    again = await sdk.create_binding("u-1", ALICE, default_consent())
    assert again.name == binding.name and again.state == Binding.STATE_ACTIVE

    line = await sdk.activate_credit_line("u-1", binding.name)
    assert line.state == Line.STATE_ACTIVE
    assert (line.limit.currency_code, line.limit.units_minor, line.tier) == ("EUR", 500000, "A")
    assert line.available.units_minor == 500000 and line.held.units_minor == 0

    events = bank_events(stack)
    cut = await events.ChangeCreditLimit(event.limit_change(line.name, 1000),
                                         metadata=bank_auth(stack))
    assert cut.limit.units_minor == 1000 and cut.available.units_minor == 1000
    frozen = await events.FreezeCreditLine(event.freeze(line.name), metadata=bank_auth(stack))
    assert frozen.state == Line.STATE_FROZEN
    thawed = await events.UnfreezeCreditLine(event.unfreeze(line.name),
                                             metadata=bank_auth(stack))
    assert thawed.state == Line.STATE_ACTIVE
    assert (await sdk.get_credit_line(line.name)).limit.units_minor == 1000

    # An open credit line is repaid from the binding: it cannot be unbound.
    in_use = await refused(sdk.unbind_binding(binding.name))
    assert isinstance(in_use, FailedPrecondition) and in_use.reason == "BINDING_IN_USE"

    stats = await stack.stats()
    assert (stats.verifications, stats.codes_sent, stats.credit_decisions) == (1, 1, 1)
    await assert_no_secrets(stack, caplog)


async def test_limit_cut_below_usage_leaves_zero_available(stack: Stack) -> None:
    binding = await bind(stack, "u-2", ERIN)
    sdk = await stack.sdk()
    line = await sdk.activate_credit_line("u-2", binding.name)
    # Simulate usage the money issues will add: 600.00 held, 300.00 outstanding.
    keys = stack.gateway.keyspace.user(parse_user("tenants/acme/users/u-2"))
    await stack.redis.hset(keys.credit_line(line.name.rsplit("/", 1)[1]),
                           mapping={"held": 60000, "out": 30000})
    cut = await bank_events(stack).ChangeCreditLimit(event.limit_change(line.name, 50000),
                                                     metadata=bank_auth(stack))
    assert cut.limit.units_minor == 50000
    assert cut.available.units_minor == 0
    wrong_currency = await refused(bank_events(stack).ChangeCreditLimit(
        event.limit_change(line.name, 1, "USD"), metadata=bank_auth(stack)))
    assert wrong_currency.reason == "CURRENCY_MISMATCH"
    assert [v.field for v in wrong_currency.violations] == ["limit.currency_code"]


async def test_closed_line_is_final_and_frees_the_user_and_the_card(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    binding = await bind(stack, "u-3", ALICE)
    sdk = await stack.sdk()
    events, auth = bank_events(stack), bank_auth(stack)
    line = await sdk.activate_credit_line("u-3", binding.name)
    frozen = await events.FreezeCreditLine(event.freeze(line.name), metadata=auth)
    assert frozen.available.units_minor == 0  # nothing can be spent on a frozen line
    request = event.close(line.name)
    closed = await events.CloseCreditLine(request, metadata=auth)
    assert closed.state == Line.STATE_CLOSED
    assert (closed.limit.units_minor, closed.available.units_minor) == (500000, 0)

    # The same event again is answered from the record, not re-run.
    line_key = stack.gateway.keyspace.user(parse_user("tenants/acme/users/u-3")).credit_line(
        line.name.rsplit("/", 1)[1])
    await stack.redis.hset(line_key, "mtime", closed.update_time.seconds + 60)
    assert (await events.CloseCreditLine(request, metadata=auth)) == closed
    reused = await refused(events.CloseCreditLine(
        event.close(line.name, "OTHER_REASON", request_id=request.request_id), metadata=auth))
    assert isinstance(reused, InvalidArgument) and reused.reason == "REQUEST_ID_REUSED"
    # A new event on a closed line returns it as it is, and logs no second close.
    again = await events.CloseCreditLine(event.close(line.name, "AGAIN"), metadata=auth)
    assert again.state == Line.STATE_CLOSED
    closes = [r for r in caplog.records if "closed by the bank" in r.getMessage()]
    assert [r.getMessage().rsplit(": ", 1)[1] for r in closes] == ["ACCOUNT_CLOSED"]

    # Final: no bank event brings it back or changes it.
    for call in (
        events.UnfreezeCreditLine(event.unfreeze(line.name), metadata=auth),
        events.FreezeCreditLine(event.freeze(line.name), metadata=auth),
        events.ChangeCreditLimit(event.limit_change(line.name, 1), metadata=auth),
    ):
        error = await refused(call)
        assert isinstance(error, FailedPrecondition) and error.reason == "CREDIT_LINE_STATE"
        assert error.metadata["state"] == "CLOSED"
    assert (await sdk.get_credit_line(line.name)).limit.units_minor == 500000

    # The user may apply again, and once that line closes too the card is free.
    second = await sdk.activate_credit_line("u-3", binding.name)
    assert second.name != line.name and second.state == Line.STATE_ACTIVE
    assert second.available.units_minor == 500000
    await events.CloseCreditLine(event.close(second.name), metadata=auth)
    assert (await sdk.unbind_binding(binding.name)).state == Binding.STATE_UNBOUND


async def test_a_line_in_use_does_not_close(stack: Stack) -> None:
    binding = await bind(stack, "u-4", ERIN)
    sdk = await stack.sdk()
    line = await sdk.activate_credit_line("u-4", binding.name)
    keys = stack.gateway.keyspace.user(parse_user("tenants/acme/users/u-4"))
    line_key = keys.credit_line(line.name.rsplit("/", 1)[1])
    requests = []
    for held, outstanding in ((100, 0), (0, 1)):
        # Usage the money issues will add.
        await stack.redis.hset(line_key, mapping={"held": held, "out": outstanding})
        requests.append(event.close(line.name))
        error = await refused(bank_events(stack).CloseCreditLine(
            requests[-1], metadata=bank_auth(stack)))
        assert isinstance(error, FailedPrecondition) and error.reason == "CREDIT_LINE_IN_USE"
        assert error.metadata == {"held_minor": str(held),
                                  "outstanding_minor": str(outstanding)}
        assert (await sdk.get_credit_line(line.name)).state == Line.STATE_ACTIVE
    in_use = await refused(sdk.unbind_binding(binding.name))
    assert in_use.reason == "BINDING_IN_USE"

    # Settled: the refused event stays refused (its answer is replayed); a new one closes.
    await stack.redis.hset(line_key, mapping={"held": 0, "out": 0})
    replayed = await refused(bank_events(stack).CloseCreditLine(
        requests[0], metadata=bank_auth(stack)))
    assert replayed.reason == "CREDIT_LINE_IN_USE" and replayed.metadata["held_minor"] == "100"
    closed = await bank_events(stack).CloseCreditLine(event.close(line.name),
                                                      metadata=bank_auth(stack))
    assert closed.state == Line.STATE_CLOSED


async def test_a_declined_line_does_not_close(stack: Stack) -> None:
    carol = await bind(stack, "u-5", CAROL)
    line = await (await stack.sdk()).activate_credit_line("u-5", carol.name)
    assert line.state == Line.STATE_DECLINED
    error = await refused(bank_events(stack).CloseCreditLine(event.close(line.name),
                                                            metadata=bank_auth(stack)))
    assert isinstance(error, FailedPrecondition) and error.reason == "CREDIT_LINE_STATE"
    assert error.metadata["state"] == "DECLINED"


@pytest.mark.parametrize("kind", ["freeze", "close"])
@pytest.mark.parametrize("reason", ["", "closed", "CLOSED BY 4111111111111111",
                                    "CLOSED_BY_4111111111111111",
                                    "CLOSED_4111_1111_1111_1111", "_CLOSED", "9LIVES",
                                    "A" * 65])
async def test_bank_event_reason_is_a_stable_code(stack: Stack, kind: str,
                                                  reason: str) -> None:
    binding = await bind(stack, "u-8", ALICE)
    line = await (await stack.sdk()).activate_credit_line("u-8", binding.name)
    before = await contents(stack.redis, stack.gateway.keyspace.pattern)
    events, auth = bank_events(stack), bank_auth(stack)
    call = events.CloseCreditLine(event.close(line.name, reason), metadata=auth) if (
        kind == "close") else events.FreezeCreditLine(event.freeze(line.name, reason),
                                                      metadata=auth)
    error = await refused(call)
    assert isinstance(error, InvalidArgument) and error.reason == "REASON_INVALID"
    assert [v.field for v in error.violations] == ["reason"]
    assert await contents(stack.redis, stack.gateway.keyspace.pattern) == before
    longest = await events.CloseCreditLine(event.close(line.name, "A" * 64), metadata=auth)
    assert longest.state == Line.STATE_CLOSED


async def active_line(stack: Stack, user: str) -> Line:
    binding = await bind(stack, user, ALICE)
    return await (await stack.sdk()).activate_credit_line(user, binding.name)


async def test_a_limit_event_that_arrives_after_a_later_one_changes_nothing(
        stack: Stack) -> None:
    """The bank cuts the limit to 2,000.00, then to 10.00; the first event's
    first attempt was lost and its retry lands last. The line keeps 10.00."""
    line = await active_line(stack, "u-20")
    events, auth = bank_events(stack), bank_auth(stack)
    first, second = event.next_event_sequence(), event.next_event_sequence()
    await events.ChangeCreditLimit(event.limit_change(line.name, 1000, sequence=second),
                                   metadata=auth)
    before = await keyspace_snapshot(stack.redis, stack.gateway.keyspace.pattern)
    late = event.limit_change(line.name, 200000, sequence=first)
    error = await refused(events.ChangeCreditLimit(late, metadata=auth))
    assert isinstance(error, FailedPrecondition) and error.reason == "BANK_EVENT_SUPERSEDED"
    assert error.metadata == {"applied_sequence": str(second)}
    after = await keyspace_snapshot(stack.redis, stack.gateway.keyspace.pattern)
    assert {k: v for k, v in after.items() if k in before} == before  # the line did not move
    assert (await (await stack.sdk()).get_credit_line(line.name)).limit.units_minor == 1000
    # The same sequence from another event is not "later": only a higher one applies.
    same = await refused(events.ChangeCreditLimit(
        event.limit_change(line.name, 3000, sequence=second), metadata=auth))
    assert same.reason == "BANK_EVENT_SUPERSEDED"
    raised = await events.ChangeCreditLimit(event.limit_change(line.name, 3000), metadata=auth)
    assert raised.limit.units_minor == 3000
    # The refusal is the late event's stored answer, replayed as it was given.
    again = await refused(events.ChangeCreditLimit(late, metadata=auth))
    assert (again.reason, again.metadata) == (error.reason, error.metadata)


@pytest.mark.parametrize("kind", ["limit", "freeze", "unfreeze", "close"])
async def test_a_bank_event_retried_after_it_applied_is_answered_as_done(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The event applies, then reading the line back fails (Redis times out):
    UNAVAILABLE, and the bank sends the same event again. It gets the line,
    not a refusal by its own sequence, and nothing is applied twice."""
    line = await active_line(stack, "u-25")
    events, auth = bank_events(stack), bank_auth(stack)
    if kind == "unfreeze":
        await events.FreezeCreditLine(event.freeze(line.name), metadata=auth)
    send: dict[str, tuple[Any, Any, int]] = {
        "limit": (events.ChangeCreditLimit, event.limit_change(line.name, 1234),
                  Line.STATE_ACTIVE),
        "freeze": (events.FreezeCreditLine, event.freeze(line.name), Line.STATE_FROZEN),
        "unfreeze": (events.UnfreezeCreditLine, event.unfreeze(line.name), Line.STATE_ACTIVE),
        "close": (events.CloseCreditLine, event.close(line.name), Line.STATE_CLOSED),
    }
    call, request, state = send[kind]
    load, failures = CreditStore.load, [RedisTimeoutError("the read-back timed out")]

    async def load_times_out_once(store: CreditStore, name: ChildName) -> Any:
        if failures:
            raise failures.pop()
        return await load(store, name)

    monkeypatch.setattr(CreditStore, "load", load_times_out_once)
    assert isinstance(await refused(call(request, metadata=auth)), Unavailable)
    monkeypatch.undo()
    applied = await keyspace_snapshot(stack.redis, stack.gateway.keyspace.pattern)
    stack.clock.advance(60)  # a second application would move the line's update time
    retried = await call(request, metadata=auth)
    assert retried.state == state
    assert retried.limit.units_minor == (1234 if kind == "limit" else 500000)
    # Applied once: nothing moved but the request's record (released -> done).
    after = await keyspace_snapshot(stack.redis, stack.gateway.keyspace.pattern)
    assert after.keys() == applied.keys()
    assert {k for k in after if after[k] != applied[k]} == {
        k for k in after if b"/idem/" in k and request.request_id.encode() in k}


@pytest.mark.parametrize("kind", ["close", "unfreeze"])
async def test_another_event_reusing_an_applied_events_ids_is_superseded_not_done(
        stack: Stack, kind: str) -> None:
    """A freeze applies; a close or an unfreeze (another method) comes with its
    request id and sequence. It is not "the freeze again": never a success
    answer for a change that did not happen."""
    line = await active_line(stack, "u-27")
    events, auth = bank_events(stack), bank_auth(stack)
    request_id, sequence = str(uuid.uuid4()), event.next_event_sequence()
    await events.FreezeCreditLine(event.freeze(line.name, request_id=request_id,
                                               sequence=sequence), metadata=auth)
    reuse = events.CloseCreditLine(event.close(
        line.name, request_id=request_id, sequence=sequence), metadata=auth) if (
        kind == "close") else events.UnfreezeCreditLine(event.unfreeze(
            line.name, request_id=request_id, sequence=sequence), metadata=auth)
    error = await refused(reuse)
    assert error.reason == "BANK_EVENT_SUPERSEDED"
    assert (await (await stack.sdk()).get_credit_line(line.name)).state == Line.STATE_FROZEN


async def test_a_new_request_under_an_applied_events_ids_is_superseded_not_done(
        stack: Stack) -> None:
    """Once the request's record is gone (its retention ended: deleted here),
    another limit under the same request id and sequence is not that event."""
    line = await active_line(stack, "u-28")
    events, auth = bank_events(stack), bank_auth(stack)
    request_id, sequence = str(uuid.uuid4()), event.next_event_sequence()
    await events.ChangeCreditLimit(event.limit_change(
        line.name, 1234, request_id=request_id, sequence=sequence), metadata=auth)
    async for key in stack.redis.scan_iter(match=stack.gateway.keyspace.pattern):
        if b"/idem/" + request_id.encode() in key:
            await stack.redis.delete(key)
    error = await refused(events.ChangeCreditLimit(event.limit_change(
        line.name, 9999, request_id=request_id, sequence=sequence), metadata=auth))
    assert error.reason == "BANK_EVENT_SUPERSEDED"
    assert (await (await stack.sdk()).get_credit_line(line.name)).limit.units_minor == 1234


async def test_sequences_compare_as_numbers(stack: Stack) -> None:
    line = await active_line(stack, "u-29")
    events, auth = bank_events(stack), bank_auth(stack)
    await events.ChangeCreditLimit(event.limit_change(line.name, 100, sequence=9), metadata=auth)
    later = await events.ChangeCreditLimit(event.limit_change(line.name, 200, sequence=10),
                                           metadata=auth)
    assert later.limit.units_minor == 200


async def test_limit_events_refused_for_currency_or_state_move_no_sequence(
        stack: Stack) -> None:
    line = await active_line(stack, "u-30")
    events, auth = bank_events(stack), bank_auth(stack)
    seq = [event.next_event_sequence() for _ in range(6)]
    wrong = await refused(events.ChangeCreditLimit(
        event.limit_change(line.name, 1, "USD", sequence=seq[1]), metadata=auth))
    assert wrong.reason == "CURRENCY_MISMATCH"
    earlier = await events.ChangeCreditLimit(
        event.limit_change(line.name, 700, sequence=seq[0]), metadata=auth)
    assert earlier.limit.units_minor == 700
    await events.CloseCreditLine(event.close(line.name, sequence=seq[2]), metadata=auth)
    closed = await refused(events.ChangeCreditLimit(
        event.limit_change(line.name, 800, sequence=seq[5]), metadata=auth))
    assert closed.reason == "CREDIT_LINE_STATE"
    late = await refused(events.ChangeCreditLimit(
        event.limit_change(line.name, 900, sequence=seq[4]), metadata=auth))
    assert late.reason == "CREDIT_LINE_STATE"  # not superseded by the refused seq[5]


async def test_a_close_on_a_closed_line_counts_as_the_latest_status_event(stack: Stack) -> None:
    line = await active_line(stack, "u-26")
    events, auth = bank_events(stack), bank_auth(stack)
    first, middle, last = (event.next_event_sequence() for _ in range(3))
    await events.CloseCreditLine(event.close(line.name, sequence=first), metadata=auth)
    await events.CloseCreditLine(event.close(line.name, sequence=last), metadata=auth)
    stale = await refused(events.UnfreezeCreditLine(event.unfreeze(line.name, sequence=middle),
                                                    metadata=auth))
    assert (stale.reason, stale.metadata) == ("BANK_EVENT_SUPERSEDED",
                                              {"applied_sequence": str(last)})


async def test_a_freeze_that_arrives_after_the_unfreeze_leaves_the_line_active(
        stack: Stack) -> None:
    line = await active_line(stack, "u-21")
    events, auth = bank_events(stack), bank_auth(stack)
    await events.FreezeCreditLine(event.freeze(line.name), metadata=auth)
    lost, later = event.freeze(line.name, "FRAUD"), event.unfreeze(line.name)
    assert (await events.UnfreezeCreditLine(later, metadata=auth)).state == Line.STATE_ACTIVE
    error = await refused(events.FreezeCreditLine(lost, metadata=auth))
    assert error.reason == "BANK_EVENT_SUPERSEDED"
    assert error.metadata == {"applied_sequence": str(later.event_sequence)}
    assert (await (await stack.sdk()).get_credit_line(line.name)).state == Line.STATE_ACTIVE


async def test_bank_events_are_ordered_per_kind_and_only_by_events_that_applied(
        stack: Stack) -> None:
    line = await active_line(stack, "u-22")
    keys = stack.gateway.keyspace.user(parse_user("tenants/acme/users/u-22"))
    line_key = keys.credit_line(line.name.rsplit("/", 1)[1])
    events, auth, sdk = bank_events(stack), bank_auth(stack), await stack.sdk()
    seq = [event.next_event_sequence() for _ in range(8)]
    # A limit event does not order status events (nor the other way round).
    await events.ChangeCreditLimit(event.limit_change(line.name, 7000, sequence=seq[7]),
                                   metadata=auth)
    frozen = await events.FreezeCreditLine(event.freeze(line.name, sequence=seq[0]),
                                           metadata=auth)
    assert frozen.state == Line.STATE_FROZEN
    # A refused event (money in use) moves nothing: an earlier one still applies.
    await stack.redis.hset(line_key, "held", 100)
    in_use = await refused(events.CloseCreditLine(event.close(line.name, sequence=seq[2]),
                                                  metadata=auth))
    assert in_use.reason == "CREDIT_LINE_IN_USE"
    await events.UnfreezeCreditLine(event.unfreeze(line.name, sequence=seq[1]), metadata=auth)
    assert (await sdk.get_credit_line(line.name)).state == Line.STATE_ACTIVE
    # An event that finds the line already as it asks still counts as the latest.
    await events.FreezeCreditLine(event.freeze(line.name, sequence=seq[3]), metadata=auth)
    already = await events.FreezeCreditLine(event.freeze(line.name, sequence=seq[5]),
                                            metadata=auth)
    assert already.state == Line.STATE_FROZEN
    stale = await refused(events.UnfreezeCreditLine(event.unfreeze(line.name, sequence=seq[4]),
                                                    metadata=auth))
    assert stale.reason == "BANK_EVENT_SUPERSEDED"
    assert stale.metadata == {"applied_sequence": str(seq[5])}
    assert (await sdk.get_credit_line(line.name)).state == Line.STATE_FROZEN


@pytest.mark.parametrize("sequence", [0, -1, 2**53, 2**63 - 1])
async def test_an_event_sequence_out_of_range_is_refused(stack: Stack, sequence: int) -> None:
    line = await active_line(stack, "u-23")
    before = await keyspace_snapshot(stack.redis, stack.gateway.keyspace.pattern)
    events, auth = bank_events(stack), bank_auth(stack)
    for call in (
        events.ChangeCreditLimit(event.limit_change(line.name, 1, sequence=sequence),
                                 metadata=auth),
        events.FreezeCreditLine(event.freeze(line.name, sequence=sequence), metadata=auth),
        events.UnfreezeCreditLine(event.unfreeze(line.name, sequence=sequence), metadata=auth),
        events.CloseCreditLine(event.close(line.name, sequence=sequence), metadata=auth),
    ):
        error = await refused(call)
        assert isinstance(error, InvalidArgument) and error.reason == "EVENT_SEQUENCE_INVALID"
        assert [v.field for v in error.violations] == ["event_sequence"]
    assert await keyspace_snapshot(stack.redis, stack.gateway.keyspace.pattern) == before


async def test_event_times_in_microseconds_order_exactly(stack: Stack) -> None:
    """A bank may use its events' times in microseconds: 16 digits, beyond a
    32-bit float, inside Lua's exact integers. One microsecond apart still orders."""
    line = await active_line(stack, "u-24")
    events, auth = bank_events(stack), bank_auth(stack)
    now_us = 1_795_000_000_000_000
    await events.ChangeCreditLimit(event.limit_change(line.name, 100, sequence=now_us + 1),
                                   metadata=auth)
    error = await refused(events.ChangeCreditLimit(
        event.limit_change(line.name, 200, sequence=now_us), metadata=auth))
    assert error.metadata == {"applied_sequence": str(now_us + 1)}
    latest = await events.ChangeCreditLimit(
        event.limit_change(line.name, 300, sequence=2**53 - 1), metadata=auth)
    assert latest.limit.units_minor == 300


async def test_list_pages_and_unbind(stack: Stack) -> None:
    sdk = await stack.sdk()
    names = []
    for secret in (ALICE, ERIN, CAROL):
        names.append((await bind(stack, "u-3", secret)).name)
    listed = [b.name async for b in sdk.list_bindings("u-3", page_size=2)]
    assert listed == list(reversed(names))
    unbound = await sdk.unbind_binding(names[0])
    assert unbound.state == Binding.STATE_UNBOUND
    # Once unbound, another user of the tenant may bind the card.
    stack.clock.advance(120)
    other = await sdk.create_binding("u-4", ALICE, default_consent())
    assert other.state == Binding.STATE_PENDING_CODE


async def test_credit_declined_and_holder_declined(stack: Stack) -> None:
    sdk = await stack.sdk()
    carol = await bind(stack, "u-5", CAROL)
    line = await sdk.activate_credit_line("u-5", carol.name)
    assert line.state == Line.STATE_DECLINED
    assert line.decline_reason == "INSUFFICIENT_CREDIT_HISTORY"
    assert not line.HasField("limit")

    bob = await sdk.create_binding("u-6", BOB, default_consent())
    assert bob.state == Binding.STATE_FAILED
    assert bob.failure_reason == "HOLDER_VERIFICATION_DECLINED"

    mismatch = ALICE.__class__()
    mismatch.CopyFrom(ALICE)
    mismatch.national_id = "ID-SOMEONE-ELSE"
    failed = await sdk.create_binding("u-7", mismatch, default_consent())
    assert failed.state == Binding.STATE_FAILED


async def assert_no_secrets(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """No PAN, national ID (or one-time code) in the gateway keyspace or the logs."""
    secrets = [c.pan for c in KNOWN_CARDS] + [c.national_id for c in KNOWN_CARDS]
    blob = await contents(stack.redis, stack.gateway.keyspace.pattern)
    assert blob.count(b"\n") > 10
    logs = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    for secret in secrets:
        assert secret.encode() not in blob
        assert secret not in logs
    assert DAVE.pan not in logs
    assert bank_core_pb2  # the contract module is importable alongside
