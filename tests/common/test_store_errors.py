"""Redis failures as callers and operators see them, against a real Redis."""

from __future__ import annotations

import logging
import socket

import pytest

from common.errors import Unavailable
from common.redis_client import connect
from common.store_errors import STORE_UNAVAILABLE, redis_errors


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_redis_is_unavailable_and_not_an_error_in_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    client = connect(f"redis://127.0.0.1:{closed_port()}/0?socket_connect_timeout=1")
    try:
        with caplog.at_level(logging.WARNING, logger="cardlink.store"), \
                pytest.raises(Unavailable) as raised, redis_errors():
            await client.get("anything")
    finally:
        await client.aclose()
    assert raised.value.reason == STORE_UNAVAILABLE
    assert "retry" in raised.value.message and "redis" not in raised.value.message.lower()
    assert not caplog.records  # a blip, expected in operation


async def test_a_refused_command_is_unavailable_and_logged_for_the_operator(
        redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    key = f"{key_prefix}:a-string"
    client = connect(redis_url)
    await client.set(key, "x")
    try:
        with caplog.at_level(logging.WARNING, logger="cardlink.store"), \
                pytest.raises(Unavailable) as raised, redis_errors("AUDIT_UNAVAILABLE"):
            await client.hget(key, "field")  # WRONGTYPE: a bug, not a blip
    finally:
        await client.aclose()
    assert raised.value.reason == "AUDIT_UNAVAILABLE"
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "WRONGTYPE" in caplog.records[0].getMessage()


async def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), redis_errors():
        raise KeyError("not Redis's")
