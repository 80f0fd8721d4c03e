"""CardLinkError <-> rich gRPC status, through a real grpc.aio server on loopback."""

from __future__ import annotations

import logging
import types
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from common import errors
from common.errors import DOMAIN, CardLinkError, FieldViolation
from common.grpc_errors import (
    ERROR_CLASSES,
    GENERIC_INTERNAL_MESSAGE,
    error_from_rpc,
    error_guard,
    rpc_errors,
)
from common.server import start_server
from tests.support.rawservice import Kind, raw_service, stream_unary, unary, unary_stream

SECRET = "do-not-leak-4111111111111111"
SERVICE = "test.Errors"

# The error each unary method raises; the test picks it by method name.
RAISED: dict[str, Exception] = {}


async def _unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    raise RAISED[request.decode()]


async def _abort_directly(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")


async def _ok(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return b"ok:" + request


async def _stream_gen(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    raise errors.NotFound("TOKEN_NOT_FOUND", "no such token", metadata={"token": "tok_1"})


async def _stream_write(request: bytes, context: Any) -> None:
    await context.write(b"first")
    raise RuntimeError(SECRET)


async def _client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
    async for _ in requests:
        pass
    raise errors.Aborted("REQUEST_IN_FLIGHT", "the same request id is in flight")


SERVED = raw_service(
    SERVICE,
    {
        "Raise": Kind.UNARY_UNARY,
        "Abort": Kind.UNARY_UNARY,
        "Ok": Kind.UNARY_UNARY,
        "StreamGen": Kind.UNARY_STREAM,
        "StreamWrite": Kind.UNARY_STREAM,
        "ClientStream": Kind.STREAM_UNARY,
    },
    types.SimpleNamespace(
        Raise=_unary,
        Abort=_abort_directly,
        Ok=_ok,
        StreamGen=_stream_gen,
        StreamWrite=_stream_write,
        ClientStream=_client_stream,
    ),
)


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    running = await start_server([SERVED], "127.0.0.1:0", guards=[error_guard])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as chan:
        yield chan
    await running.stop(None)


async def _raise(channel: grpc.aio.Channel, error: Exception) -> grpc.aio.AioRpcError:
    RAISED["e"] = error
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary(channel, f"/{SERVICE}/Raise")(b"e")
    return caught.value


def _details(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    trailing: Any = error.trailing_metadata() or ()
    for key, value in trailing:
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None


def _error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


@pytest.mark.parametrize(
    "cls", [c for c in ERROR_CLASSES.values() if c is not errors.Internal], ids=lambda c: c.__name__
)
async def test_each_error_class_becomes_its_code_with_error_info(
    channel: grpc.aio.Channel, cls: type[CardLinkError]
) -> None:
    rpc_error = await _raise(channel, cls("SOME_REASON", "human text", metadata={"k": "v"}))
    assert rpc_error.code() == grpc.StatusCode[cls.code.value]
    assert rpc_error.details() == "human text"
    status = _details(rpc_error)
    assert status is not None
    info = _error_info(status)
    assert (info.reason, info.domain, dict(info.metadata)) == ("SOME_REASON", DOMAIN, {"k": "v"})


async def test_field_violations_travel_as_bad_request(channel: grpc.aio.Channel) -> None:
    error = errors.InvalidArgument(
        "PAN_INVALID",
        "invalid card",
        violations=[
            FieldViolation("card.pan", "fails the Luhn check", "PAN_LUHN"),
            FieldViolation("card.expiry", "in the past", "EXPIRY_PAST"),
        ],
    )
    status = _details(await _raise(channel, error))
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
    got = [(v.field, v.description, v.reason) for v in bad.field_violations]
    assert got == [
        ("card.pan", "fails the Luhn check", "PAN_LUHN"),
        ("card.expiry", "in the past", "EXPIRY_PAST"),
    ]


async def test_unexpected_exception_is_bare_internal_and_logged(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cardlink.grpc"):
        rpc_error = await _raise(channel, KeyError(SECRET))
    assert rpc_error.code() == grpc.StatusCode.INTERNAL
    assert rpc_error.details() == GENERIC_INTERNAL_MESSAGE
    assert _details(rpc_error) is None
    assert SECRET not in repr(rpc_error.trailing_metadata())
    assert SECRET not in str(rpc_error)
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)


async def test_internal_error_class_hides_its_message(channel: grpc.aio.Channel) -> None:
    rpc_error = await _raise(channel, errors.Internal("INVARIANT_BROKEN", SECRET))
    assert rpc_error.code() == grpc.StatusCode.INTERNAL
    assert rpc_error.details() == GENERIC_INTERNAL_MESSAGE
    status = _details(rpc_error)
    assert status is not None
    assert _error_info(status).reason == "INVARIANT_BROKEN"
    assert SECRET not in str(rpc_error)


async def test_a_handlers_own_abort_is_not_rewritten(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary(channel, f"/{SERVICE}/Abort")(b"")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == "slow down"


async def test_successful_calls_pass_through(channel: grpc.aio.Channel) -> None:
    assert await unary(channel, f"/{SERVICE}/Ok")(b"x") == b"ok:x"


async def test_unknown_method_stays_unimplemented(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary(channel, f"/{SERVICE}/Nope")(b"")
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def _drain(call: Any, into: list[bytes]) -> None:
    async for message in call:
        into.append(message)


async def test_async_generator_stream_error_after_first_message(channel: grpc.aio.Channel) -> None:
    call = unary_stream(channel, f"/{SERVICE}/StreamGen")(b"")
    got: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _drain(call, got)
    assert got == [b"first"]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    converted = error_from_rpc(caught.value)
    assert isinstance(converted, errors.NotFound)
    assert converted.metadata == {"token": "tok_1"}


async def test_write_style_stream_unexpected_error_is_internal(channel: grpc.aio.Channel) -> None:
    call = unary_stream(channel, f"/{SERVICE}/StreamWrite")(b"")
    got: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _drain(call, got)
    assert got == [b"first"]
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in str(caught.value)


async def test_client_stream_error(channel: grpc.aio.Channel) -> None:
    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream_unary(channel, f"/{SERVICE}/ClientStream")(requests())
    assert isinstance(error_from_rpc(caught.value), errors.Aborted)


async def test_error_from_rpc_recovers_the_typed_error(channel: grpc.aio.Channel) -> None:
    original = errors.invalid_field("card.pan", "fails the Luhn check", "PAN_LUHN")
    original.metadata["extra"] = "1"
    RAISED["e"] = original
    with pytest.raises(errors.InvalidArgument) as caught, rpc_errors():
        await unary(channel, f"/{SERVICE}/Raise")(b"e")
    got = caught.value
    assert (got.reason, got.message, got.metadata) == (
        original.reason,
        original.message,
        {"extra": "1"},
    )
    assert got.violations == original.violations
    assert got.__cause__ is None  # `from None`: transport internals stay out of the chain


async def test_rpc_status_aio_agrees_with_our_details(channel: grpc.aio.Channel) -> None:
    RAISED["e"] = errors.NotFound("TOKEN_NOT_FOUND", "no such token")
    call = unary(channel, f"/{SERVICE}/Raise")(b"e")
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    status = await rpc_status.aio.from_call(call)  # type: ignore[attr-defined]
    assert _error_info(status).reason == "TOKEN_NOT_FOUND"


async def test_transport_failure_maps_to_unavailable() -> None:
    # A port nobody listens on: grab one from a server we stop at once.
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await server.stop(None)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        with pytest.raises(errors.Unavailable) as caught, rpc_errors():
            await unary(chan, "/x.Y/Z")(b"", timeout=5)
    assert caught.value.reason == "UNAVAILABLE"


def test_foreign_domain_error_info_is_not_trusted() -> None:
    from common.grpc_errors import error_from_status

    info = error_details_pb2.ErrorInfo(reason="SPOOFED", domain="evil.example")
    status = status_pb2.Status(code=5, message="nope")
    status.details.add().Pack(info)
    error = error_from_status(grpc.StatusCode.NOT_FOUND, "nope", status)
    assert isinstance(error, errors.NotFound)
    assert error.reason == "NOT_FOUND"


def test_codes_cardlink_never_raises_become_internal() -> None:
    from common.grpc_errors import error_from_status

    error = error_from_status(grpc.StatusCode.UNIMPLEMENTED, "no", None)
    assert isinstance(error, errors.Internal)
    assert error.reason == "UNIMPLEMENTED"
