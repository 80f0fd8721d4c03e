"""The shared server builder (guards, health, reflection, graceful stop) and log redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cardlink.vault.v1 import vault_pb2, vault_pb2_grpc
from common import errors
from common.grpc_errors import error_from_rpc, error_guard
from common.logging import REDACTED, configure_logging, redact
from common.server import Behavior, RunningServer, Service, run_until_signal, start_server
from tests.support.rawservice import Kind, raw_service, unary

VAULT = vault_pb2.DESCRIPTOR.services_by_name["TokenVault"].full_name
SLOW = "test.Slow"


class _Vault(vault_pb2_grpc.TokenVaultServicer):
    # Only GetToken is called; the typed base declares every method abstract.
    async def GetToken(self, request: Any, context: Any) -> Any:
        raise errors.NotFound("TOKEN_NOT_FOUND", "no such token")

    GetSealingKeySet = TokenizeCard = DeleteToken = DetokenizeToken = GetToken


async def _slow(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(0.3)
    return b"done"


SERVICES = [
    Service(VAULT, vault_pb2_grpc.add_TokenVaultServicer_to_server, _Vault()),
    raw_service(SLOW, {"Call": Kind.UNARY_UNARY}, types.SimpleNamespace(Call=_slow)),
]


@pytest.fixture
async def running() -> AsyncIterator[RunningServer]:
    server = await start_server(SERVICES, "127.0.0.1:0", guards=[error_guard])
    yield server
    await server.stop(None)


def _channel(running: RunningServer) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")


async def test_binds_a_free_port_and_serves_with_guards(running: RunningServer) -> None:
    assert running.port > 0
    async with _channel(running) as channel:
        stub = vault_pb2_grpc.TokenVaultStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetToken(vault_pb2.GetTokenRequest())
    assert error_from_rpc(caught.value).reason == "TOKEN_NOT_FOUND"


async def test_plaintext_off_loopback_is_never_silent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cardlink.server")
    for address, warned in (("127.0.0.1:0", False), ("[::1]:0", False), ("0.0.0.0:0", True)):
        caplog.clear()
        server = await start_server(SERVICES, address)
        await server.stop(None)
        assert ("serving plaintext on" in caplog.text) is warned, address


VAULT_METHODS = [
    f"/{VAULT}/{m.name}" for m in vault_pb2.DESCRIPTOR.services_by_name["TokenVault"].methods
]


async def test_guards_wrap_each_method_once_at_start_up() -> None:
    wrapped: list[str] = []

    def counting(method: str, behavior: Behavior) -> Behavior:
        wrapped.append(method)
        return behavior

    expected = sorted([*VAULT_METHODS, f"/{SLOW}/Call"])
    running = await start_server(SERVICES, "127.0.0.1:0", guards=[error_guard, counting])
    try:
        assert sorted(wrapped) == expected
        async with _channel(running) as channel:
            stub = vault_pb2_grpc.TokenVaultStub(channel)
            for _ in range(5):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.GetToken(vault_pb2.GetTokenRequest())
            assert await unary(channel, f"/{SLOW}/Call")(b"") == b"done"
    finally:
        await running.stop(None)
    assert sorted(wrapped) == expected  # calls never run a guard again


async def test_first_guard_is_outermost() -> None:
    order: list[str] = []

    def tracing(name: str) -> Any:
        def guard(method: str, behavior: Behavior) -> Behavior:
            async def traced(request: Any, context: Any) -> Any:
                order.append(name)
                return await behavior(request, context)

            return traced

        return guard

    running = await start_server(
        SERVICES, "127.0.0.1:0", guards=[error_guard, tracing("outer"), tracing("inner")]
    )
    try:
        async with _channel(running) as channel:
            assert await unary(channel, f"/{SLOW}/Call")(b"") == b"done"
    finally:
        await running.stop(None)
    assert order == ["outer", "inner"]


async def test_health_and_reflection_are_not_guarded() -> None:
    def refuse_all(method: str, behavior: Behavior) -> Behavior:
        async def refused(request: Any, context: Any) -> Any:
            raise errors.PermissionDenied("NO", "no")

        return refused

    running = await start_server(SERVICES, "127.0.0.1:0", guards=[error_guard, refuse_all])
    try:
        async with _channel(running) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=VAULT)
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await unary(channel, f"/{SLOW}/Call")(b"")
    finally:
        await running.stop(None)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("service", ["", VAULT, SLOW])
async def test_every_service_is_serving(running: RunningServer, service: str) -> None:
    async with _channel(running) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(running: RunningServer) -> None:
    async with _channel(running) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {VAULT, SLOW, "grpc.health.v1.Health"} <= names


async def test_reflection_describes_the_vault_contract(running: RunningServer) -> None:
    async with _channel(running) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=VAULT)
        replies = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    assert replies[0].file_descriptor_response.file_descriptor_proto


async def test_reflection_streams_held_open_are_all_served(running: RunningServer) -> None:
    """Tools such as grpcui keep a reflection stream open. More open streams
    than any default thread pool has workers (32 at most) are all answered:
    reflection runs on the event loop, not one executor thread per stream."""
    async with _channel(running) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        calls = [stub.ServerReflectionInfo() for _ in range(40)]
        for call in calls:
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        async with asyncio.timeout(20):  # a stream starved of a thread never answers
            replies = await asyncio.gather(*(call.read() for call in calls))
        assert all(VAULT in {s.name for s in r.list_services_response.service} for r in replies)
        for call in calls:
            call.cancel()


async def test_bind_failure_raises() -> None:
    with pytest.raises(RuntimeError):
        await start_server(SERVICES, "256.256.256.256:1")


async def test_signal_drains_in_flight_calls_and_flips_health(running: RunningServer) -> None:
    async with _channel(running) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=VAULT)
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        runner = asyncio.create_task(
            run_until_signal(running.server, running.health, 5.0, signals=[signal.SIGUSR1])
        )
        await asyncio.sleep(0.05)  # let it install its handler
        in_flight = asyncio.ensure_future(unary(channel, f"/{SLOW}/Call")(b""))
        await asyncio.sleep(0.05)  # the call has reached the handler
        os.kill(os.getpid(), signal.SIGUSR1)
        status = (await watch.read()).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()  # an open watch would hold the server for the whole grace
        assert await in_flight == b"done"  # finished within the grace period
        await asyncio.wait_for(runner, 5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary(channel, f"/{SLOW}/Call")(b"", timeout=1)
    assert caught.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


# --------------------------------------------------------------------------
# Logging: the PAN safety net
# --------------------------------------------------------------------------

PANS = ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "371449635398431",
        "4111 - 1111 - 1111 - 1111", "4111.1111.1111.1111", "4111/1111/1111/1111",
        "4111  1111  1111  1111", "4111_1111_1111_1111"]


@pytest.mark.parametrize("pan", PANS)
def test_redact_masks_card_numbers(pan: str) -> None:
    assert redact(f"card {pan} declined") == f"card {REDACTED} declined"


@pytest.mark.parametrize(
    "text", ["port 50051", "2026-05-09T07:35:25.123Z", "amount 12345678901", "v1.85.1"]
)
def test_redact_leaves_short_numbers(text: str) -> None:
    assert redact(text) == text


def test_redact_masks_longer_runs_whole() -> None:
    assert "4111" not in redact("x" + "4111111111111111" * 2)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


@pytest.mark.parametrize("as_json", [False, True])
def test_logs_never_hold_a_pan(log_stream: io.StringIO, as_json: bool) -> None:
    configure_logging("INFO", json=as_json, stream=log_stream)
    log = logging.getLogger("cardlink.test")
    log.info(
        "tokenized %s for %s", "4111 1111 1111 1111", "acme", extra={"pan": "5555555555554444"}
    )
    try:
        raise ValueError("bad 4000-0566-5566-5556")
    except ValueError:
        log.exception("failed")
    out = log_stream.getvalue()
    for digits in ("4111", "5555555555554444", "5566"):
        assert digits not in out
    assert "acme" in out
    if as_json:
        first = json.loads(out.splitlines()[0])
        assert first["level"] == "INFO"
        assert first["logger"] == "cardlink.test"
        assert first["pan"] == REDACTED


def test_key_value_format(log_stream: io.StringIO) -> None:
    configure_logging(logging.INFO, json=False, stream=log_stream)
    logging.getLogger("cardlink.test").info("served", extra={"method": "/a.B/C", "ms": 3})
    line = log_stream.getvalue().strip()
    assert "level=INFO" in line
    assert "logger=cardlink.test" in line
    assert "msg=served" in line
    assert "method=/a.B/C" in line
    assert "ms=3" in line
