"""CardLink's Redis client (hiredis packing, multiplexed plain commands) speaks
to a real Redis exactly like redis-py's own, and fails loudly, never silently."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.exceptions import AuthenticationError, BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.redis_client import connect
from tests.support.scripted_redis import scripted_server


async def test_commands_scripts_and_pipelines_round_trip(redis_url: str, key_prefix: str) -> None:
    client: Any = connect(redis_url)
    try:
        key = f"{key_prefix}:h"
        await client.hset(key, mapping={"text": "é✓", "bytes": b"\x00\xff\r\n", "int": 42,
                                        "float": 1.5})
        assert await client.hgetall(key) == {
            b"text": "é✓".encode(), b"bytes": b"\x00\xff\r\n", b"int": b"42", b"float": b"1.5"}
        script = client.register_script("return redis.call('HGET', KEYS[1], ARGV[1])")
        assert await script(keys=[key], args=["int"]) == b"42"
        await client.execute_command("CLIENT SETNAME", "cardlink-test")  # a two-word command
        assert await client.client_getname() in ("cardlink-test", b"cardlink-test")
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr(f"{key_prefix}:n")
            pipe.incr(f"{key_prefix}:n")
            await script(keys=[key], args=["float"], client=pipe)
            assert await pipe.execute() == [1, 2, b"1.5"]
    finally:
        await client.aclose()


async def test_a_script_redis_does_not_know_is_loaded_and_run_once(redis_url: str,
                                                                   key_prefix: str) -> None:
    """As after a Redis restart or SCRIPT FLUSH: EVALSHA answers NOSCRIPT, the
    script is loaded and run, and its later calls go by the right SHA."""
    client: Any = connect(redis_url)
    try:
        key = f"{key_prefix}:counter"
        script = client.register_script("return redis.call('INCR', KEYS[1])")
        right = script.sha
        script.sha = "0" * 40  # a SHA this Redis has no script for
        assert await script(keys=[key]) == 1
        assert script.sha == right
        assert await script(keys=[key]) == 2
        assert await client.get(key) == b"2"  # run once per call, never twice
    finally:
        await client.aclose()


async def test_concurrent_commands_each_get_their_own_reply(redis_url: str,
                                                            key_prefix: str) -> None:
    """Commands issued in one loop turn share a write; replies, errors
    included, still reach the caller that sent each command."""
    client: Any = connect(redis_url)
    try:
        text_key = f"{key_prefix}:text"
        await client.set(text_key, "not a hash")
        calls = [client.incrby(f"{key_prefix}:n{i % 7}", i) for i in range(200)]
        calls.insert(100, client.hget(text_key, "field"))  # WRONGTYPE for this caller only
        replies = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(replies[100], ResponseError)
        totals: dict[int, int] = {}
        for i, reply in enumerate(replies[:100] + replies[101:]):
            totals[i % 7] = totals.get(i % 7, 0) + i
            assert reply == totals[i % 7]
    finally:
        await client.aclose()


async def test_a_lost_connection_fails_its_waiters_then_reconnects(redis_url: str) -> None:
    client: Any = connect(redis_url)
    admin = connect(redis_url)
    try:
        shared_id = await client.client_id()
        pooled: Any = admin.pipeline(transaction=False)  # not the client's shared connection
        pooled.client_kill_filter(_id=shared_id)
        await pooled.execute()
        failures = 0
        for _ in range(50):
            try:
                assert await client.ping()
                break
            except RedisConnectionError:
                failures += 1  # sent before the loss was noticed: outcome unknown, not retried
        assert failures <= 1
        assert await client.client_id() != shared_id
    finally:
        await client.aclose()
        await admin.aclose()


async def test_a_silent_server_times_out_instead_of_hanging() -> None:
    async def accept_and_say_nothing(reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client: Any = connect(f"redis://127.0.0.1:{port}/0?socket_timeout=0.2")
    try:
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(client.ping(), timeout=10)
    finally:
        await client.aclose()
        server.close()


class _CountingTransport:
    """Stands in for the shared connection's transport, counting writes."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes: list[int] = []  # commands per write

    def writelines(self, data: list[bytes]) -> None:
        self.writes.append(len(data))
        self._transport.writelines(data)

    def abort(self) -> None:
        self._transport.abort()


async def _counted(client: Any) -> _CountingTransport:
    await client.ping()  # opens the shared connection
    connection = client._multiplexer._connection
    counting = _CountingTransport(connection._transport)
    connection._transport = counting
    return counting


def _with_option(url: str, option: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{option}"


async def test_a_lone_caller_never_waits_for_the_batch_window(redis_url: str,
                                                              key_prefix: str) -> None:
    """A caller that awaits each reply before its next command never fills a
    write with two commands, so the window never starts: with an hour-long
    window, 200 sequential commands still finish at once. The connection's
    own handshake (several commands in one write) does not count."""
    client: Any = connect(_with_option(redis_url, "client_name=cardlink-lone-caller"))
    client._multiplexer._batch_window = 3600.0
    try:
        writes = await _counted(client)
        async with asyncio.timeout(30):  # a single wait would take an hour
            for n in range(200):
                await client.set(f"{key_prefix}:lone", n)
        assert writes.writes == [1] * 200
    finally:
        await client.aclose()


async def test_under_concurrency_commands_from_several_loop_turns_share_one_write(
        redis_url: str, key_prefix: str) -> None:
    """Once a write has carried several commands, commands issued over the
    following loop turns wait for the window and go out together."""
    client: Any = connect(_with_option(redis_url, "batch_window=0.05"))
    try:
        writes = await _counted(client)
        await asyncio.gather(client.incr(f"{key_prefix}:n"), client.incr(f"{key_prefix}:n"))

        async def after_turns(turns: int) -> Any:
            for _ in range(turns):
                await asyncio.sleep(0)
            return await client.incr(f"{key_prefix}:n")

        replies = await asyncio.gather(*(after_turns(turns) for turns in range(10)))
        assert sorted(replies) == list(range(3, 13))
        assert writes.writes == [2, 10]
        # A window that gathers one command ends the waiting: with the window
        # now an hour, lone commands still go at once.
        await client.incr(f"{key_prefix}:n")
        client._multiplexer._connection._batch_window = 3600.0
        async with asyncio.timeout(30):
            for _ in range(5):
                await client.incr(f"{key_prefix}:n")
        assert writes.writes == [2, 10, 1, 1, 1, 1, 1, 1]
    finally:
        await client.aclose()


async def test_batch_window_is_a_url_option(redis_url: str) -> None:
    client: Any = connect(_with_option(redis_url, "batch_window=0"))
    try:
        assert client._multiplexer._batch_window == 0
        assert await client.ping()
        async with client.pipeline() as pipe:  # pooled connections never see the option
            pipe.ping()
            assert await pipe.execute() == [True]
    finally:
        await client.aclose()
    with pytest.raises(ValueError, match="batch_window"):
        connect(_with_option(redis_url, "batch_window=5"))


async def test_commands_held_for_the_window_do_not_count_as_unanswered(redis_url: str) -> None:
    """With a reply timeout shorter than the window, a command still waiting
    for its write is not mistaken for one Redis failed to answer."""
    client: Any = connect(_with_option(redis_url, "socket_timeout=0.03&batch_window=0.1"))
    try:
        await asyncio.gather(client.ping(), client.ping())  # a write of two: the window starts
        assert await client.ping()
        assert await client.ping()
    finally:
        await client.aclose()


async def test_closing_the_client_closes_every_connection(redis_url: str) -> None:
    name = f"cardlink-close-{uuid.uuid4().hex[:8]}"
    client: Any = connect(_with_option(redis_url, f"client_name={name}"))
    admin: Any = connect(redis_url)
    try:
        await client.ping()  # the shared connection
        async with client.pipeline() as pipe:  # and a pooled one
            pipe.ping()
            await pipe.execute()
        async def named() -> int:
            return len([c for c in await admin.client_list() if c["name"] == name])

        assert await named() == 2
        await client.aclose()
        for _ in range(200):  # Redis sees the closes asynchronously to admin's command
            if not await named():
                break
            await asyncio.sleep(0.01)
        assert await named() == 0
    finally:
        await admin.aclose()


@pytest.mark.parametrize(("reply", "error"), [
    (b"-LOADING Redis is loading the dataset in memory\r\n", BusyLoadingError),
    (b"-NOAUTH Authentication required.\r\n", AuthenticationError),
])
async def test_every_error_reply_is_raised_never_returned(reply: bytes,
                                                          error: type[Exception]) -> None:
    server, port = await scripted_server(reply)
    client: Any = connect(f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(error):
            await client.hmget("k", ["a", "b"])
        with pytest.raises(error):
            await client.register_script("return 1")()
    finally:
        await client.aclose()
        server.close()


async def test_a_refused_login_fails_the_connection() -> None:
    server, port = await scripted_server(b"-WRONGPASS invalid username-password pair\r\n")
    client: Any = connect(f"redis://:wrong@127.0.0.1:{port}/0")
    try:
        for _ in range(2):  # and again on the next command: no half-open connection stays
            with pytest.raises(AuthenticationError):
                await client.get("k")
    finally:
        await client.aclose()
        server.close()


async def test_a_false_reply_is_a_reply(redis_url: str, key_prefix: str) -> None:
    """RESP3 (what the client speaks) has a boolean reply; hiredis gives `#f`
    as False, which was also its "no whole reply yet": that caller was never
    answered and every later caller on the connection waited behind it (or,
    with the next reply in a later read, got its predecessor's reply)."""
    client: Any = connect(_with_option(redis_url, "socket_timeout=3600"))
    try:
        await client.set(f"{key_prefix}:b", "B")
        async with asyncio.timeout(30):  # stalled, it would wait out the hour
            replies = await asyncio.gather(
                client.eval("redis.setresp(3) return false", 0),
                client.get(f"{key_prefix}:b"))
        assert list(replies) == [False, b"B"]
    finally:
        await client.aclose()
