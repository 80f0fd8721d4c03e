"""Steady client load on a test vault: tokenize, get and detokenize in a loop."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cardlink.vault.v1 import vault_pb2
from clients.sealing import seal_card, verify_key_set
from tests.support.cards import numbered_card
from tests.support.vault import VaultHandle

_numbers = itertools.count(10_000)


@dataclass
class LoadStats:
    """What the clients did; ``tokens`` maps each token name to its card."""

    calls: int = 0
    failures: list[str] = field(default_factory=list)
    tokens: dict[str, vault_pb2.CardSecret] = field(default_factory=dict)
    progressed: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, calls: int) -> None:
        self.calls += calls
        self.progressed.set()

    async def wait_for_calls(self, more: int) -> None:
        """Until ``more`` further calls completed (real time: it is traffic, not expiry)."""
        target = self.calls + more
        async with asyncio.timeout(20.0):
            while self.calls < target:
                self.progressed.clear()
                await self.progressed.wait()


async def _client(vault: VaultHandle, stats: LoadStats, pins: dict[str, Ed25519PublicKey],
                  stop: asyncio.Event) -> None:
    while not stop.is_set():
        card = numbered_card(next(_numbers))
        try:
            signed = await vault.stub.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest())
            key = verify_key_set(signed, pins).current()
            created = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
                parent="tenants/acme", sealed_card=seal_card(key, "tenants/acme", card)),
                metadata=vault.partner())
            name = created.token.name
            stats.tokens[name] = card
            again = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
                parent="tenants/acme", sealed_card=seal_card(key, "tenants/acme", card)),
                metadata=vault.partner())
            if again.token.name != name:
                stats.failures.append("same card, another token")
            await vault.stub.GetToken(vault_pb2.GetTokenRequest(name=name),
                                      metadata=vault.partner())
            for other in list(stats.tokens)[-3:]:
                opened = await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
                    name=other, reason="load"), metadata=vault.bank())
                if opened.card != stats.tokens[other]:
                    stats.failures.append("detokenize returned another card")
            stats.count(6)
        except grpc.aio.AioRpcError as error:
            stats.failures.append(f"{error.code().name}: {error.details()}")
        except Exception as error:
            stats.failures.append(repr(error))


@asynccontextmanager
async def client_load(vault: VaultHandle, clients: int = 4,
                      pins: dict[str, Ed25519PublicKey] | None = None
                      ) -> AsyncIterator[LoadStats]:
    """``clients`` concurrent clients, each tokenizing new cards (twice), getting
    and detokenizing, until the block ends. ``pins`` may be updated meanwhile."""
    stats = LoadStats()
    stop = asyncio.Event()
    pinned = pins if pins is not None else await vault.pins()
    tasks = [asyncio.create_task(_client(vault, stats, pinned, stop)) for _ in range(clients)]
    try:
        await stats.wait_for_calls(24)
        yield stats
    finally:
        stop.set()
        await asyncio.gather(*tasks)
