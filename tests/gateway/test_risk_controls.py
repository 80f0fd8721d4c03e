"""One-time code attempts, expiry and lockout; binding limits; bad input changes nothing."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable

from cardlink.gateway.v1 import bindings_pb2, bindings_pb2_grpc, resources_pb2
from clients.sdk import FailedPrecondition, InvalidArgument, ResourceExhausted
from common.auth import bearer_metadata
from tests.gateway.conftest import ALICE, CAROL, ERIN, Stack, default_consent, refused

Binding = resources_pb2.Binding


async def test_too_many_wrong_codes_fail_the_binding_and_lock_the_card(stack: Stack) -> None:
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    for left in ("2", "1"):
        wrong = await refused(sdk.confirm_binding(binding.name, "000000"))
        assert isinstance(wrong, InvalidArgument) and wrong.metadata["attempts_left"] == left
    last = await refused(sdk.confirm_binding(binding.name, "000000"))
    assert isinstance(last, ResourceExhausted) and last.reason == "TOO_MANY_ATTEMPTS"
    failed = await sdk.get_binding(binding.name)
    assert (failed.state, failed.failure_reason) == (Binding.STATE_FAILED, "TOO_MANY_ATTEMPTS")
    # Even the right code does nothing now.
    late = await refused(sdk.confirm_binding(binding.name, await stack.code_for(ALICE)))
    assert isinstance(late, FailedPrecondition)

    locked = await refused(sdk.create_binding("u-1", ALICE, default_consent()))
    assert isinstance(locked, ResourceExhausted) and locked.reason == "BINDING_LOCKED_OUT"
    # Another card of the same user is not locked.
    assert (await sdk.create_binding("u-1", ERIN, default_consent())).state == \
        Binding.STATE_PENDING_CODE
    stack.clock.advance(1801)  # the default lockout is 1800 s
    retried = await sdk.create_binding("u-1", ALICE, default_consent())
    assert retried.state == Binding.STATE_PENDING_CODE


async def test_expired_code_fails_the_binding(stack: Stack) -> None:
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-2", ALICE, default_consent())
    code = await stack.code_for(ALICE)
    stack.clock.advance(301)  # the default code lifetime is 300 s
    shown = await sdk.get_binding(binding.name)
    assert (shown.state, shown.failure_reason) == (Binding.STATE_FAILED, "CODE_EXPIRED")
    expired = await refused(sdk.confirm_binding(binding.name, code))
    assert isinstance(expired, FailedPrecondition) and expired.reason == "CODE_EXPIRED"
    # The card is free for a new binding.
    fresh = await sdk.create_binding("u-2", ALICE, default_consent())
    assert fresh.name != binding.name and fresh.state == Binding.STATE_PENDING_CODE


async def test_card_of_another_user_is_refused(stack: Stack) -> None:
    sdk = await stack.sdk()
    await sdk.create_binding("u-3", ALICE, default_consent())
    taken = await refused(sdk.create_binding("u-4", ALICE, default_consent()))
    assert isinstance(taken, FailedPrecondition) and taken.reason == "CARD_BOUND_TO_OTHER_USER"
    assert "u-3" not in taken.message
    assert [b async for b in sdk.list_bindings("u-4")] == []


async def test_per_tenant_thresholds(stack: Stack) -> None:
    await stack.restart_with_thresholds(max_bindings_per_user=2, max_card_attempts=2,
                                        code_max_attempts=1)
    sdk = await stack.sdk()
    first = await sdk.create_binding("u-5", ALICE, default_consent())
    assert first.code_attempts_left == 1
    await sdk.create_binding("u-5", ERIN, default_consent())
    limit = await refused(sdk.create_binding("u-5", CAROL, default_consent()))
    assert isinstance(limit, ResourceExhausted) and limit.reason == "BINDINGS_PER_USER_EXCEEDED"
    # Refusals before verification (the user limit above, another user's claim)
    # do not use up CAROL's card attempts; bindings that reach the bank do.
    carol = await sdk.create_binding("u-6", CAROL, default_consent())
    taken = await refused(sdk.create_binding("u-7", CAROL, default_consent()))
    assert isinstance(taken, FailedPrecondition) and taken.reason == "CARD_BOUND_TO_OTHER_USER"
    await sdk.unbind_binding(carol.name)
    carol = await sdk.create_binding("u-7", CAROL, default_consent())
    await sdk.unbind_binding(carol.name)
    busy = await refused(sdk.create_binding("u-8", CAROL, default_consent()))
    assert isinstance(busy, ResourceExhausted) and busy.reason == "CARD_ATTEMPTS_EXCEEDED"


async def test_bad_input_is_refused_and_writes_nothing(stack: Stack) -> None:
    stub = bindings_pb2_grpc.BindingsStub(stack.channel)
    auth = bearer_metadata(stack.token())
    sealed = await stack.vault.seal(ALICE, "acme")
    good = bindings_pb2.CreateBindingRequest(
        parent="tenants/acme/users/u-8", sealed_card=sealed, consent=default_consent(),
        request_id=str(uuid.uuid4()))
    changes: dict[str, Callable[[bindings_pb2.CreateBindingRequest], object]] = {
        "request_id": lambda r: setattr(r, "request_id", "not-a-uuid"),
        "parent": lambda r: setattr(r, "parent", "tenants/acme/users/{evil}"),
        "consent": lambda r: r.ClearField("consent"),
        "consent.terms_id": lambda r: setattr(r.consent, "terms_id", ""),
        # Past year 9999: not a Timestamp at all; then a day after the test clock's now.
        "consent.accept_time": lambda r: setattr(r.consent.accept_time, "seconds", 10**12),
        "consent.accept_time ": lambda r: setattr(r.consent.accept_time, "seconds",
                                                  int(stack.clock.now()) + 86_400),
        "sealed_card": lambda r: setattr(r.sealed_card, "ciphertext", b"x" * 5000),
    }
    cases: dict[str, bindings_pb2.CreateBindingRequest] = {}
    for name, change in changes.items():
        request = bindings_pb2.CreateBindingRequest()
        request.CopyFrom(good)
        change(request)
        cases[name] = request
    for field, request in cases.items():
        error = await refused(stub.CreateBinding(request, metadata=auth))
        assert isinstance(error, InvalidArgument), (field, error)
        assert error.violations and error.violations[0].field.startswith(field.strip()), field
        if field.startswith("consent.accept_time"):
            assert error.violations[0].description == (
                "not in the future" if field.endswith(" ") else "not a valid timestamp")
    tampered = bindings_pb2.CreateBindingRequest()
    tampered.CopyFrom(good)
    tampered.sealed_card.ciphertext = sealed.ciphertext[:-1] + bytes([sealed.ciphertext[-1] ^ 1])
    error = await refused(stub.CreateBinding(tampered, metadata=auth))
    assert isinstance(error, InvalidArgument)
    keys = [k async for k in stack.redis.scan_iter(match=stack.gateway.keyspace.pattern)]
    assert keys == []
    assert (await stack.stats()).verifications == 0


async def test_an_unbound_card_is_free_at_once_even_after_a_repeated_bind(stack: Stack) -> None:
    """A second CreateBinding of the same card (another request id) answers with
    the existing binding; unbinding that binding then frees the card for others."""
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-20", ALICE, default_consent())
    again = await sdk.create_binding("u-20", ALICE, default_consent())
    assert again.name == binding.name
    await sdk.confirm_binding(binding.name, await stack.code_for(ALICE))
    await sdk.unbind_binding(binding.name)
    other = await sdk.create_binding("u-21", ALICE, default_consent())
    assert other.state == Binding.STATE_PENDING_CODE


async def test_a_forged_page_token_is_invalid_argument(stack: Stack) -> None:
    """Page tokens are opaque, but a crafted one is still only bad input."""
    sdk = await stack.sdk()
    for _ in range(3):
        await sdk.create_binding("u-30", ALICE, default_consent())
    [first, *_] = [b async for b in sdk.list_bindings("u-30", page_size=1)]
    stub = bindings_pb2_grpc.BindingsStub(stack.channel)
    auth = bearer_metadata(stack.token())
    parent = "tenants/acme/users/u-30"
    deep = base64.urlsafe_b64encode(b"[" * 50_000).decode()  # nests past the parser
    boolean = base64.urlsafe_b64encode(json.dumps({"p": parent, "s": True}).encode()).decode()
    tokens = {"deeply nested": deep, "boolean position": boolean, "not base64": "!!",
              "empty object": "e30="}
    for what, token in tokens.items():
        error = await refused(stub.ListBindings(bindings_pb2.ListBindingsRequest(
            parent=parent, page_size=1, page_token=token), metadata=auth))
        assert isinstance(error, InvalidArgument) and error.reason == "PAGE_TOKEN_INVALID", what
    assert first.card.last_four == "1111"
