"""The partner SDK's own contract: every failure is a typed CardLinkError, and
a card is resealed when the vault's sealing key moved on."""

from __future__ import annotations

import uuid

import pytest

from cardlink.gateway.v1 import resources_pb2
from cardlink.vault.v1 import admin_pb2, vault_pb2
from clients.sdk import PartnerClient, RetryPolicy, Unavailable
from clients.sealing import SealingKeyCache
from tests.gateway.conftest import ALICE, Stack, default_consent


async def test_the_sdk_reseals_after_the_sealing_key_expired(stack: Stack) -> None:
    sdk = await stack.sdk()
    await stack.vault.admin.RotateKey(admin_pb2.RotateKeyRequest(
        kind=admin_pb2.KEY_KIND_SEALING), metadata=stack.vault.security())
    stack.clock.advance(3601)  # past the test vault's sealing grace
    binding = await sdk.create_binding("u-1", ALICE, default_consent(),
                                       request_id=str(uuid.uuid4()))
    assert binding.state == resources_pb2.Binding.STATE_PENDING_CODE


async def test_a_key_set_fetch_that_fails_is_a_typed_retried_error(stack: Stack) -> None:
    """The partner's key cache is due for its refresh while the vault is down:
    UNAVAILABLE, as for any call (grpc's own AioRpcError escaped, unretried)."""
    ticks = [0.0]
    fetches = []

    async def fetch() -> vault_pb2.SealingKeySet:
        fetches.append(ticks[0])
        return await stack.vault.stub.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest(),
                                                       timeout=2)

    cache = SealingKeyCache(fetch, await stack.vault.pins(), monotonic=lambda: ticks[0])
    await cache.key_set()
    sdk = PartnerClient(stack.channel, "acme", lambda: stack.token("acme"), cache,
                        RetryPolicy(attempts=2, backoff_s=0.01))
    ticks[0] = 301.0  # the cache is due
    await stack.vault.vault.running.server.stop(None)
    with pytest.raises(Unavailable):  # not grpc's own AioRpcError
        await sdk.create_binding("u-1", ALICE, default_consent())
    assert len(fetches) == 1 + 2  # the first fill, then both attempts
