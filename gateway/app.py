"""Wiring: one gateway process from its settings (used by `python -m gateway` and tests)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis

from cardlink.gateway.v1 import bank_events_pb2_grpc, bindings_pb2_grpc, credit_lines_pb2_grpc
from common.auth import (
    AuthGuard,
    JwtVerifier,
    TokenMinter,
    TrustStore,
    jwk_thumbprint,
    load_private_key_pem,
)
from common.clock import Clock, SystemClock
from common.grpc_errors import error_guard, store_guard
from common.redis_client import connect
from common.server import RunningServer, Service, start_server
from common.tls import open_channel
from gateway.bank_connector import GrpcBank
from gateway.binding import BindingService
from gateway.binding_store import BindingStore
from gateway.config import GatewayConfig
from gateway.credit import CreditService
from gateway.credit_store import CreditStore
from gateway.idempotency import IdempotencyStore
from gateway.keys import Keyspace
from gateway.servicers import (
    METHOD_SCOPES,
    BankEventsServicer,
    BindingsServicer,
    CreditLinesServicer,
)
from gateway.thresholds import TenantThresholds
from gateway.vault_connector import TENANT_SCOPES, GrpcVault

SUBJECT = "cardlink-gateway"
BANK_SCOPES = ("bank.core",)
# Never route loopback calls through an http_proxy from the environment.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


@dataclass(frozen=True)
class RunningGateway:
    running: RunningServer
    redis: aioredis.Redis
    channels: tuple[grpc.aio.Channel, ...]
    bindings: BindingService
    credit: CreditService
    keyspace: Keyspace

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace: float | None = 1.0) -> None:
        await self.running.stop(grace)
        for channel in self.channels:
            await channel.close(None)
        await self.redis.aclose()


async def start_gateway(config: GatewayConfig, clock: Clock | None = None) -> RunningGateway:
    clock = clock or SystemClock()
    code_key = config.code_fingerprint_key()
    key = load_private_key_pem(config.jwt_key_file)
    kid = config.jwt_key_id or jwk_thumbprint(key)
    to_vault = TokenMinter(key, kid, config.jwt_issuer, config.vault_audience, clock)
    to_bank = TokenMinter(key, kid, config.jwt_issuer, config.bank_audience, clock)
    vault_channel = open_channel(config.vault_target, config.vault_tls, options=CHANNEL_OPTIONS)
    bank_channel = grpc.aio.insecure_channel(config.bank_target, options=CHANNEL_OPTIONS)
    vault = GrpcVault(
        vault_channel,
        lambda tenant: to_vault.metadata(SUBJECT, tenant, TENANT_SCOPES),
        config.vault_policy,
    )
    bank = GrpcBank(
        bank_channel,
        lambda tenant: to_bank.metadata(SUBJECT, tenant, BANK_SCOPES),
        config.bank_policy,
    )
    redis = connect(config.redis_url)
    keyspace = Keyspace(config.redis_prefix)
    idempotency = IdempotencyStore(redis, keyspace, config.idempotency)
    thresholds = TenantThresholds.load(config.thresholds, config.thresholds_file)
    bindings = BindingService(
        BindingStore(redis, keyspace), idempotency, vault, bank, thresholds, clock,
        fingerprint_secret=code_key, bank_budget_s=config.bank_policy.budget_s,
    )
    credit = CreditService(CreditStore(redis, keyspace), bindings, idempotency, bank, clock)
    verifier = JwtVerifier(TrustStore(config.trust_file, clock), config.audience, clock)
    services = [
        Service("cardlink.gateway.v1.Bindings", bindings_pb2_grpc.add_BindingsServicer_to_server,
                BindingsServicer(bindings)),
        Service("cardlink.gateway.v1.CreditLines",
                credit_lines_pb2_grpc.add_CreditLinesServicer_to_server,
                CreditLinesServicer(credit)),
        Service("cardlink.gateway.v1.BankEvents",
                bank_events_pb2_grpc.add_BankEventsServicer_to_server,
                BankEventsServicer(credit, config.bank_issuers)),
    ]
    running = await start_server(
        services, config.listen,
        guards=[error_guard, store_guard, AuthGuard(verifier, METHOD_SCOPES)],
        credentials=config.tls.credentials() if config.tls else None,
    )
    return RunningGateway(running, redis, (vault_channel, bank_channel), bindings, credit,
                          keyspace)
