"""The whole system on loopback for gateway tests: vault, bank simulator, gateway.

Each runs in this process as a real grpc.aio server on 127.0.0.1:0, on the
test Redis under the test's key prefix, all on one ManualClock (JWT times,
code expiry and lockouts move only when a test says so).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import duration_pb2

from cardlink.bank.v1 import simulator_pb2 as sim
from cardlink.bank.v1 import simulator_pb2_grpc
from cardlink.vault.v1 import vault_pb2
from clients.banksim.app import BanksimConfig, RunningBanksim, start_banksim
from clients.sdk import PartnerClient, RetryPolicy, consent
from common.auth import save_private_key_pem
from common.errors import CardLinkError
from common.grpc_errors import rpc_errors
from gateway.app import RunningGateway, start_gateway
from gateway.config import GatewayConfig
from gateway.connectors import CallPolicy
from gateway.idempotency import IdempotencySettings
from gateway.thresholds import Thresholds
from tests.support.cards import card
from tests.support.identities import GATEWAY_PARTNER_SCOPES as PARTNER_SCOPES
from tests.support.vault import VaultHandle, running_vault

GATEWAY_AUDIENCE = "cardlink-gateway"
BANK_DEADLINE_S = 0.6
# The simulator's documented cardholders (clients/banksim/cardholders.py).
ALICE = card("4111111111111111", name="Alice Approved", national_id="ID-ALICE-0001",
             phone="+15550100001")
BOB = card("5555555555554444", name="Bob Blocked", national_id="ID-BOB-0002",
           phone="+15550100002")
CAROL = card("4000000000000002", name="Carol Nocredit", national_id="ID-CAROL-0003",
             phone="+15550100003")
DAVE = card("4000000000000119", name="Dave Slowbank", national_id="ID-DAVE-0004",
            phone="+15550100004")
ERIN = card("5200828282828210", name="Erin Tierb", national_id="ID-ERIN-0005",
            phone="+15550100005")
KNOWN_CARDS = (ALICE, BOB, CAROL, DAVE, ERIN)


def gateway_config(stack_dir: Path, redis_url: str, prefix: str, vault: VaultHandle,
                   bank_port: int, **changes: Any) -> GatewayConfig:
    config = GatewayConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        redis_prefix=prefix,
        vault_target=vault.address,
        bank_target=f"127.0.0.1:{bank_port}",
        trust_file=vault.identities.trust_file,
        audience=GATEWAY_AUDIENCE,
        bank_issuers=("cardlink-bank",),
        jwt_issuer="cardlink-gateway",
        jwt_key_file=stack_dir / "gateway.pem",
        jwt_key_id=vault.identities.issuers["cardlink-gateway"].kid,
        vault_audience="cardlink-vault",
        bank_audience="cardlink-bank",
        bank_policy=CallPolicy(deadline_s=BANK_DEADLINE_S, attempts=2, backoff_s=0.01),
        vault_policy=CallPolicy(deadline_s=2.0),
        idempotency=IdempotencySettings(retention_s=3600, wait_s=5.0),
        thresholds=Thresholds(),
        thresholds_file=None,
        fingerprint_secret="test-fingerprint-secret-0123456789",
    )
    return dataclasses.replace(config, **changes)


@dataclass
class Stack:
    vault: VaultHandle
    banksim: RunningBanksim
    gateway: RunningGateway
    channel: grpc.aio.Channel
    control: simulator_pb2_grpc.SimulatorControlAsyncStub
    redis: aioredis.Redis
    prefix: str
    folder: Path
    redis_url: str

    @property
    def clock(self) -> Any:
        return self.vault.clock

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    def token(self, tenant: str = "acme", scopes: tuple[str, ...] = PARTNER_SCOPES,
              issuer: str | None = None, **kwargs: Any) -> str:
        return self.vault.identities.token(issuer or f"{tenant}-partner", tenant, scopes,
                                           audience=GATEWAY_AUDIENCE, **kwargs)

    async def sdk(self, tenant: str = "acme", retry: RetryPolicy | None = None) -> PartnerClient:
        cache = await self.vault.key_cache()
        await cache.key_set()  # fetched and verified once, as a partner would at start-up
        return PartnerClient(self.channel, tenant, lambda: self.token(tenant), cache,
                             retry or RetryPolicy(attempts=1))

    async def code_for(self, secret: vault_pb2.CardSecret) -> str:
        reply = await self.control.GetLastCode(sim.GetLastCodeRequest(phone=secret.phone))
        return reply.code

    async def stats(self) -> sim.GetStatsResponse:
        return await self.control.GetStats(sim.GetStatsRequest())

    async def switch(self, kind: sim.CallKind.ValueType, mode: sim.Mode.ValueType, *,
                     latency_s: float = 0.0, times: int = 0) -> None:
        latency = duration_pb2.Duration()
        latency.FromNanoseconds(int(latency_s * 1e9))
        await self.control.SetBehavior(sim.SetBehaviorRequest(
            kind=kind, mode=mode, added_latency=latency, times=times))

    async def restart_with_thresholds(self, **acme: int) -> None:
        """Restart the gateway with tenant ``acme``'s thresholds overridden."""
        overrides = self.folder / "thresholds.json"
        overrides.write_text(json.dumps({"tenants": {"acme": acme}}))
        await self.restart_gateway(thresholds_file=overrides)

    async def restart_gateway(self, **changes: Any) -> None:
        await self.gateway.stop(0.2)
        config = gateway_config(self.folder, self.redis_url, self.prefix, self.vault,
                                self.banksim.port, **changes)
        self.gateway = await start_gateway(config, self.clock)
        await self.channel.close(None)
        self.channel = grpc.aio.insecure_channel(self.address)


async def refused(call: Awaitable[Any]) -> CardLinkError:
    """The typed error a call (raw stub or SDK) fails with; fails the test if it succeeds."""
    try:
        with rpc_errors():
            await call
    except CardLinkError as error:
        return error
    raise AssertionError("the call succeeded")


def default_consent() -> Any:
    # A fixed acceptance time: a retried request must carry the same consent.
    # Just before the test clock's start (2027-01-15 08:00 UTC): never in the future.
    return consent("bnpl-terms", "2026-01", "web", datetime(2027, 1, 15, 7, 55, tzinfo=UTC))


@pytest.fixture
async def stack(redis_url: str, key_prefix: str, tmp_path: Path,
                redis_client: aioredis.Redis) -> AsyncIterator[Stack]:
    async with running_vault(redis_url, key_prefix, tmp_path) as vault:
        identities = vault.identities
        save_private_key_pem(identities.issuers["cardlink-gateway"].key, tmp_path / "gateway.pem")
        save_private_key_pem(identities.issuers["cardlink-bank"].key, tmp_path / "bank.pem")
        banksim = await start_banksim(BanksimConfig(
            listen="127.0.0.1:0", vault_target=vault.address, trust_file=identities.trust_file,
            audience="cardlink-bank", jwt_issuer="cardlink-bank",
            jwt_key_file=tmp_path / "bank.pem",
            jwt_key_id=identities.issuers["cardlink-bank"].kid, vault_audience="cardlink-vault",
        ), vault.clock)
        gateway = await start_gateway(
            gateway_config(tmp_path, redis_url, key_prefix, vault, banksim.port), vault.clock
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
        control_channel = grpc.aio.insecure_channel(f"127.0.0.1:{banksim.port}")
        stack = Stack(vault, banksim, gateway, channel,
                      simulator_pb2_grpc.SimulatorControlStub(control_channel), redis_client,
                      key_prefix, tmp_path, redis_url)
        try:
            yield stack
        finally:
            await stack.channel.close(None)
            await control_channel.close(None)
            await stack.gateway.stop(0.2)
            await banksim.stop(0.2)
