"""The gateway while Redis is gone, and after it is back.

This module's stack (vault, bank simulator, gateway) runs on a Redis of its
own, a private redis-server with its append-only file, which the tests stop
and start again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cardlink.gateway.v1 import resources_pb2
from clients.sdk import PartnerClient, Unavailable
from common.redis_runtime import PrivateRedis
from tests.gateway.conftest import ALICE, CAROL, Stack, default_consent, refused


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(private_redis: PrivateRedis) -> str:
    """Overrides the session's shared Redis for this module's stack."""
    return private_redis.url


async def listed(sdk: PartnerClient, user: str) -> list[resources_pb2.Binding]:
    return [binding async for binding in sdk.list_bindings(user)]


async def test_redis_gone_is_unavailable_so_clients_retry_and_nothing_is_lost(
        stack: Stack, private_redis: PrivateRedis) -> None:
    sdk = await stack.sdk()
    binding = await sdk.create_binding("u-1", ALICE, default_consent())
    binding = await sdk.confirm_binding(binding.name, await stack.code_for(ALICE))

    private_redis.stop()
    try:
        # Retryable (the SDK retries UNAVAILABLE), never INTERNAL.
        for call in (sdk.get_binding(binding.name), listed(sdk, "u-1")):
            error = await refused(call)
            assert isinstance(error, Unavailable) and error.reason == "STORE_UNAVAILABLE"
            assert "redis" not in error.message.lower()
        new = await refused(sdk.create_binding("u-2", CAROL, default_consent()))
        assert isinstance(new, Unavailable)  # the vault's store is the same Redis
    finally:
        private_redis.start()  # the same data folder: its append-only file is replayed
    assert await sdk.get_binding(binding.name) == binding
    later = await sdk.create_binding("u-2", CAROL, default_consent())
    assert later.state == binding.STATE_PENDING_CODE
