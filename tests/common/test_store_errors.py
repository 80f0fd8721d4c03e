"""Redis failures as callers and operators see them, against a real Redis."""

from __future__ import annotations

import inspect
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from common.errors import CardLinkError, Internal, Unavailable
from common.grpc_errors import store_guard
from common.redis_client import connect
from common.store_errors import STORE_ERROR, STORE_UNAVAILABLE, redis_errors
from tests.support.scripted_redis import scripted_server


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def failed_get(url: str, answer: type[CardLinkError],
                     caplog: pytest.LogCaptureFixture) -> CardLinkError:
    """What a GET of "some-key" on ``url`` raised inside ``redis_errors``
    (it must be ``answer``), with the store's log captured."""
    client = connect(url)
    try:
        with caplog.at_level(logging.WARNING, logger="cardlink.store"), \
                pytest.raises(answer) as raised, redis_errors():
            await client.get("some-key")
    finally:
        await client.aclose()
    return raised.value


async def test_an_unreachable_redis_is_unavailable_and_not_an_error_in_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    raised = await failed_get(f"redis://127.0.0.1:{closed_port()}/0?socket_connect_timeout=1",
                              Unavailable, caplog)
    assert raised.reason == STORE_UNAVAILABLE
    assert "retry" in raised.message and "redis" not in raised.message.lower()
    assert not caplog.records  # a blip, expected in operation


@pytest.mark.parametrize(("reply", "answer", "logged"), [
    # Blips and failovers: retry, nothing for the operator.
    (b"-LOADING Redis is loading the dataset in memory\r\n", Unavailable, False),
    (b"-READONLY You can't write against a read only replica.\r\n", Unavailable, False),
    # Redis refusing this service: retry later, but the operator must act.
    (b"-NOAUTH Authentication required.\r\n", Unavailable, True),
    (b"-NOPERM User has no permissions to run the 'evalsha' command\r\n", Unavailable, True),
    (b"-OOM command not allowed when used memory > 'maxmemory'.\r\n", Unavailable, True),
    # Bugs: retrying would run the same failing work again.
    (b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", Internal,
     True),
    (b"-ERR user_script:3: attempt to compare nil with number\r\n", Internal, True),
], ids=["loading", "readonly", "noauth", "noperm", "oom", "wrongtype", "script-error"])
async def test_each_kind_of_error_reply_gets_its_answer(
        reply: bytes, answer: type[CardLinkError], logged: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    server, port = await scripted_server(reply)
    try:
        raised = await failed_get(f"redis://127.0.0.1:{port}/0", answer, caplog)
    finally:
        server.close()
    assert raised.reason == (STORE_UNAVAILABLE if answer is Unavailable else STORE_ERROR)
    assert "redis" not in raised.message.lower()
    assert [r.levelno for r in caplog.records] == ([logging.ERROR] if logged else [])
    code = reply[1:].split()[0].decode()
    assert all(code in r.getMessage() and "some-key" not in r.getMessage()
               for r in caplog.records)


async def hget_in_a_pipeline(client: Any, key: str) -> None:
    async with client.pipeline(transaction=False) as pipe:
        pipe.hget(key, "field")
        await pipe.execute()


async def test_a_refused_command_in_a_pipeline_is_logged_without_quoting_it(
        redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    key = f"{key_prefix}:a-string"
    client = connect(redis_url)
    await client.set(key, "x")
    try:
        with caplog.at_level(logging.WARNING, logger="cardlink.store"), \
                pytest.raises(Internal), redis_errors():
            await hget_in_a_pipeline(client, key)  # redis-py quotes the command in its error
    finally:
        await client.aclose()
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert key_prefix not in caplog.records[0].getMessage()


async def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), redis_errors():
        raise KeyError("not Redis's")


async def test_the_guard_translates_for_unary_and_streaming_methods() -> None:
    async def unary(request: Any, context: Any) -> Any:
        raise RedisConnectionError("gone")

    async def stream(request: Any, context: Any) -> AsyncIterator[int]:
        yield 1
        raise RedisConnectionError("gone")

    context: Any = None  # neither guard nor method looks at it
    with pytest.raises(Unavailable):
        await store_guard("/x.Y/Unary", unary)(None, context)
    guarded = store_guard("/x.Y/Stream", stream)
    assert inspect.isasyncgenfunction(guarded)  # grpc.aio serves it as a stream
    received: list[int] = []

    async def drain() -> None:
        async for item in guarded(None, context):
            received.append(item)

    with pytest.raises(Unavailable):
        await drain()
    assert received == [1]
