"""Wiring: one vault process from its settings (used by `python -m vault` and tests)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from cardlink.vault.v1 import vault_pb2_grpc
from common.auth import AuthInterceptor, JwtVerifier, TrustStore
from common.clock import Clock, SystemClock
from common.grpc_errors import ErrorInterceptor
from common.server import RunningServer, Service, start_server
from vault.access import METHOD_SCOPES
from vault.config import VaultConfig
from vault.service import VaultService
from vault.servicer import TokenVaultServicer

SERVICE_NAME = "cardlink.vault.v1.TokenVault"


@dataclass(frozen=True)
class RunningVault:
    """A serving vault and what it holds open."""

    running: RunningServer
    service: VaultService
    redis: aioredis.Redis

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace: float | None = 1.0) -> None:
        await self.running.stop(grace)
        await self.redis.aclose()


def connect_redis(url: str) -> aioredis.Redis:
    # Bytes in and out: ciphertexts and wrapped keys are binary.
    return aioredis.Redis.from_url(url, decode_responses=False, health_check_interval=30)


async def start_vault(config: VaultConfig, clock: Clock | None = None) -> RunningVault:
    """Open the keyring (creating version 1 of each key on first start) and serve."""
    clock = clock or SystemClock()
    redis = connect_redis(config.redis_url)
    service = VaultService.create(
        redis,
        prefix=config.redis_prefix,
        clock=clock,
        dev_key_file=config.key_file,
        keyring_refresh_seconds=config.keyring_refresh_s,
    )
    await service.keyring.snapshot()  # fail fast on a bad root key or an unreachable Redis
    verifier = JwtVerifier(TrustStore(config.trust_file, clock), config.audience, clock)
    running = await start_server(
        [Service(SERVICE_NAME, vault_pb2_grpc.add_TokenVaultServicer_to_server,
                 TokenVaultServicer(service))],
        config.listen,
        interceptors=[ErrorInterceptor(), AuthInterceptor(verifier, METHOD_SCOPES)],
    )
    return RunningVault(running, service, redis)
