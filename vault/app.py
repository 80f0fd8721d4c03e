"""Wiring: one vault process from its settings (used by `python -m vault` and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2

from cardlink.vault.v1 import admin_pb2_grpc, vault_pb2_grpc
from common.auth import AuthGuard, JwtVerifier, TrustStore
from common.clock import Clock, SystemClock
from common.errors import CardLinkError
from common.grpc_errors import error_guard
from common.redis_client import connect
from common.server import RunningServer, Service, start_server
from vault.access import METHOD_SCOPES, PACKAGE, RESTRICTED_METHODS, SEALED_METHODS
from vault.admin import KeyAdminService
from vault.admin_servicer import KeyAdminServicer
from vault.audit import DELETE, DETOKENIZE, AuditLog
from vault.config import VaultConfig, VaultMode
from vault.guards import AuditedCall, RefusalAudit, SealGate
from vault.keyring import SIGNING, keys_key
from vault.lifecycle import KeyLifecycle
from vault.rewrap import Rewrapper
from vault.service import AuditTarget, VaultService
from vault.servicer import TokenVaultServicer
from vault.unseal import ShamirRootKeys

SERVICE_NAME = "cardlink.vault.v1.TokenVault"
ADMIN_SERVICE_NAME = "cardlink.vault.v1.KeyAdmin"
# How often each process destroys sealing keys whose grace period is over.
EXPIRY_SWEEP_S = 30.0

logger = logging.getLogger("cardlink.vault")


@dataclass(frozen=True)
class RunningVault:
    """A serving vault and what it holds open."""

    running: RunningServer
    service: VaultService
    admin: KeyAdminService
    redis: aioredis.Redis
    sweeper: asyncio.Task[None]

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace: float | None = 1.0) -> None:
        self.sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.sweeper
        await self.running.stop(grace)
        audit = self.service.audit
        if isinstance(audit, AuditLog):
            await audit.aclose()
        await self.redis.aclose()


# A detokenize or delete refused for its credential or scope is audited as the
# call it was, naming the token (and the stated reason) its request names.
AUDITED_CALLS = {
    PACKAGE + "DetokenizeToken": AuditedCall(
        DETOKENIZE, lambda r: AuditTarget.of_name(r.name, r.reason, r.request_id)),
    PACKAGE + "DeleteToken": AuditedCall(
        DELETE, lambda r: AuditTarget.of_name(r.name, request_id=r.request_id)),
}


def connect_redis(url: str) -> aioredis.Redis:
    return connect(url)


def build_services(config: VaultConfig, redis: aioredis.Redis,
                   clock: Clock) -> tuple[VaultService, KeyAdminService]:
    """The token and key-admin domain services of one process."""
    unsealer = None
    if config.mode is VaultMode.PRODUCTION:
        unsealer = ShamirRootKeys(redis, prefix=config.redis_prefix,
                                  keys_key=keys_key(config.redis_prefix))
    service = VaultService.create(
        redis, prefix=config.redis_prefix, clock=clock, root_keys=unsealer,
        dev_key_file=None if unsealer else config.key_file,
        keyring_refresh_seconds=config.keyring_refresh_s, key_settle_seconds=config.key_settle_s)
    if unsealer is not None:
        unsealer.attach(service.keyring)
    audit = service.audit
    assert isinstance(audit, AuditLog)
    lifecycle = KeyLifecycle(redis, keyring=service.keyring, store=service.store, clock=clock,
                             sealing_grace_seconds=config.sealing_grace_s,
                             settle_seconds=config.key_settle_s)
    rewrapper = Rewrapper(redis, prefix=config.redis_prefix, keyring=service.keyring,
                          store=service.store)
    admin = KeyAdminService(keyring=service.keyring, lifecycle=lifecycle, rewrapper=rewrapper,
                            audit=audit, clock=clock, unsealer=unsealer)
    return service, admin


async def _sweep(admin: KeyAdminService) -> None:
    while True:
        await asyncio.sleep(EXPIRY_SWEEP_S)
        try:
            await admin.destroy_expired()
        except CardLinkError as error:  # the next sweep retries
            logger.warning("sealing key expiry sweep failed: %s", error.reason)


async def start_vault(config: VaultConfig, clock: Clock | None = None) -> RunningVault:
    """Serve; in dev mode open the keyring (creating version 1 of each key on first
    start), in production mode start sealed."""
    clock = clock or SystemClock()
    redis = connect_redis(config.redis_url)
    service, admin = build_services(config, redis, clock)
    if not service.keyring.sealed:
        await service.keyring.snapshot()  # fail fast on a bad root key or an unreachable Redis

    async def signing_public_keys() -> dict[tuple[str, int], bytes]:
        keys = await service.keyring.snapshot()
        return {(SIGNING, s.version): s.key.public_key for s in keys.signing_keys}

    verifier = JwtVerifier(TrustStore(config.trust_file, clock), config.audience, clock)
    running = await start_server(
        [Service(SERVICE_NAME, vault_pb2_grpc.add_TokenVaultServicer_to_server,
                 TokenVaultServicer(service)),
         Service(ADMIN_SERVICE_NAME, admin_pb2_grpc.add_KeyAdminServicer_to_server,
                 KeyAdminServicer(admin, signing_public_keys))],
        config.listen,
        credentials=config.tls.credentials() if config.tls else None,
        guards=[error_guard, SealGate(service.keyring, SEALED_METHODS),
                RefusalAudit(service.audit, clock, RESTRICTED_METHODS, AUDITED_CALLS),
                AuthGuard(verifier, METHOD_SCOPES)],
    )
    if service.keyring.sealed:
        # Load balancers keep traffic away until custodians unseal this process.
        await running.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def serving() -> None:
        await running.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    admin.on_unseal(serving)
    sweeper = asyncio.create_task(_sweep(admin), name="sealing-key-expiry")
    return RunningVault(running, service, admin, redis, sweeper)
