"""A real vault process-in-a-task on 127.0.0.1:0, wired to the test Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cardlink.vault.v1 import admin_pb2_grpc, vault_pb2, vault_pb2_grpc
from clients.sealing import SealingKeyCache, seal_card
from common.clock import ManualClock
from common.tls import ClientTls, ServerTls, open_channel
from tests.support.identities import SECURITY_SCOPES, Identities
from vault.app import RunningVault, start_vault
from vault.config import VaultConfig, VaultMode


def vault_config(redis_url: str, prefix: str, folder: Path, trust_file: Path,
                 mode: VaultMode = VaultMode.DEV) -> VaultConfig:
    return VaultConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        redis_prefix=prefix,
        mode=mode,
        key_file=folder / "vault-root.key",
        trust_file=trust_file,
        audience="cardlink-vault",
        sealing_grace_s=3600,
        keyring_refresh_s=0.0,
        grace_shutdown_s=0.5,
        log_level="INFO",
        log_json=False,
        key_settle_s=30.0,
    )


@dataclass
class VaultHandle:
    """A serving vault with a channel, a stub and helpers to seal cards for it."""

    vault: RunningVault
    channel: grpc.aio.Channel
    stub: vault_pb2_grpc.TokenVaultAsyncStub
    identities: Identities
    clock: ManualClock
    config: VaultConfig

    @property
    def admin(self) -> admin_pb2_grpc.KeyAdminAsyncStub:
        return admin_pb2_grpc.KeyAdminStub(self.channel)

    def security(self, scopes: tuple[str, ...] = SECURITY_SCOPES) -> tuple[tuple[str, str], ...]:
        return self.identities.metadata("cardlink-security", "security", scopes)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.vault.port}"

    async def pins(self) -> dict[str, Ed25519PublicKey]:
        keys = await self.vault.service.keyring.snapshot()
        return {
            s.key.key_id: Ed25519PublicKey.from_public_bytes(s.key.public_key)
            for s in keys.signing_keys
        }

    async def key_cache(self) -> SealingKeyCache:
        return SealingKeyCache(lambda: self.stub.GetSealingKeySet(
            vault_pb2.GetSealingKeySetRequest()), await self.pins())

    async def seal(self, card: vault_pb2.CardSecret, tenant: str = "acme") -> vault_pb2.SealedCard:
        cache = await self.key_cache()
        return seal_card(await cache.current(), f"tenants/{tenant}", card)

    def partner(self, tenant: str = "acme", scopes: tuple[str, ...] = (
            "vault.tokens.create", "vault.tokens.get", "vault.tokens.delete")
    ) -> tuple[tuple[str, str], ...]:
        return self.identities.metadata(f"{tenant}-partner", tenant, scopes)

    def bank(self, tenant: str = "acme") -> tuple[tuple[str, str], ...]:
        return self.identities.metadata("cardlink-bank", tenant, ["vault.tokens.detokenize"])


@asynccontextmanager
async def running_vault(redis_url: str, prefix: str, folder: Path, *,
                        mode: VaultMode = VaultMode.DEV, clock: ManualClock | None = None,
                        identities: Identities | None = None,
                        tls: tuple[ServerTls, ClientTls] | None = None
                        ) -> AsyncIterator[VaultHandle]:
    """A vault on loopback. Pass the clock and identities of an earlier one to
    restart "the same" vault (same folder, prefix and trust file); ``tls``: serve
    TLS, and how the handle's own channel reaches it."""
    clock = clock or ManualClock(start=1_800_000_000.0)  # 2027-01-15
    identities = identities or Identities.create(folder, clock)
    config = vault_config(redis_url, prefix, folder, identities.trust_file, mode)
    if tls is not None:
        config = replace(config, tls=tls[0])
    vault = await start_vault(config, clock)
    channel = open_channel(f"127.0.0.1:{vault.port}", tls[1] if tls else None)
    try:
        yield VaultHandle(vault, channel, vault_pb2_grpc.TokenVaultStub(channel), identities,
                          clock, config)
    finally:
        await channel.close(None)
        await vault.stop(0.5)

