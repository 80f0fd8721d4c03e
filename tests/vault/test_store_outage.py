"""The vault while its Redis is gone, and after it is back.

A vault on a Redis of its own (a private redis-server with its append-only
file), which the test stops and starts again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest

from cardlink.vault.v1 import vault_pb2
from common.grpc_errors import error_from_rpc
from common.redis_runtime import PrivateRedis
from tests.support.cards import card
from tests.support.vault import running_vault


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


async def unavailable(call: Awaitable[Any]) -> tuple[str, str]:
    """(reason, message) of a call that must fail UNAVAILABLE."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    return error_from_rpc(caught.value).reason, caught.value.details() or ""


async def test_redis_gone_is_unavailable_then_everything_acknowledged_is_back(
        redis: PrivateRedis, tmp_path: Path) -> None:
    async with running_vault(redis.url, "outage", tmp_path) as vault:
        stub = vault.stub
        sealed = await vault.seal(card())
        tokenized = await stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
            parent="tenants/acme", sealed_card=sealed), metadata=vault.partner())
        name = tokenized.token.name
        other = await vault.seal(card(pan="5555555555554444"))

        redis.stop()
        refusals = [
            await unavailable(stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
                parent="tenants/acme", sealed_card=other), metadata=vault.partner())),
            await unavailable(stub.GetToken(vault_pb2.GetTokenRequest(name=name),
                                            metadata=vault.partner())),
            await unavailable(stub.DeleteToken(vault_pb2.DeleteTokenRequest(name=name),
                                               metadata=vault.partner())),
            await unavailable(stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
                name=name, reason="check"), metadata=vault.bank())),
        ]
        # Retryable, and nothing of Redis's own errors in what the caller sees.
        reasons = [reason for reason, _ in refusals]
        assert reasons[:2] == ["STORE_UNAVAILABLE", "STORE_UNAVAILABLE"]
        # Delete and detokenize are audited first: either store may be named.
        assert set(reasons[2:]) <= {"STORE_UNAVAILABLE", "AUDIT_UNAVAILABLE"}
        assert all("retry" in message and "redis" not in message.lower()
                   for _, message in refusals)

        redis.start()  # the same data folder: its append-only file is replayed
        shown = await stub.GetToken(vault_pb2.GetTokenRequest(name=name),
                                    metadata=vault.partner())
        assert shown == tokenized.token
        opened = await stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=name, reason="check"), metadata=vault.bank())
        assert opened.card.pan == card().pan
        again = await stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
            parent="tenants/acme", sealed_card=sealed), metadata=vault.partner())
        assert again.already_known and again.token.name == name
