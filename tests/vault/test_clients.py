"""The bank-side client and the partner sealing helper against a real vault."""

from __future__ import annotations

import pytest

from cardlink.vault.v1 import admin_pb2, vault_pb2
from clients.bank import BankVaultClient
from clients.sealing import (
    MISS_REFETCH_S,
    KeySetError,
    SealingKeyCache,
    seal_card,
    verify_key_set,
)
from common.errors import InvalidArgument, NotFound, PermissionDenied
from tests.support.cards import card
from tests.support.vault import VaultHandle


async def test_bank_client_detokenizes_with_its_own_credential(vault: VaultHandle) -> None:
    cache = await vault.key_cache()
    sealed = seal_card(await cache.current(), "tenants/acme", card())
    created = await vault.stub.TokenizeCard(
        vault_pb2.TokenizeCardRequest(parent="tenants/acme", sealed_card=sealed),
        metadata=vault.partner())
    bank = BankVaultClient(vault.channel, vault.identities.minter("cardlink-bank",
                                                                  "cardlink-vault"))
    opened = await bank.detokenize(created.token.name, "holder verification")
    assert opened.card.pan == "4111111111111111"
    with pytest.raises(NotFound):
        await bank.detokenize("tenants/acme/tokens/ctk_" + "a" * 26, "holder verification")

    partner_as_bank = BankVaultClient(vault.channel, vault.identities.minter(
        "acme-partner", "cardlink-vault"))
    with pytest.raises(PermissionDenied):
        await partner_as_bank.detokenize(created.token.name, "curiosity")


async def test_key_cache_refetches_only_when_due(vault: VaultHandle) -> None:
    fetches = 0

    async def fetch() -> vault_pb2.SealingKeySet:
        nonlocal fetches
        fetches += 1
        return await vault.stub.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest())

    now = [0.0]
    cache = SealingKeyCache(fetch, await vault.pins(), refresh_s=60, monotonic=lambda: now[0])
    first = await cache.current()
    assert (await cache.current()) == first and fetches == 1
    now[0] = 61
    await cache.current()
    assert fetches == 2


async def test_key_cache_finds_keys_by_id_and_fetches_only_for_one_it_does_not_hold(
        vault: VaultHandle) -> None:
    fetches = 0

    async def fetch() -> vault_pb2.SealingKeySet:
        nonlocal fetches
        fetches += 1
        return await vault.stub.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest())

    elapsed = [0.0]
    cache = SealingKeyCache(fetch, await vault.pins(), refresh_s=3600,
                            monotonic=lambda: elapsed[0], wall_clock=vault.clock.now)
    old = await cache.current()
    assert await cache.key(old.key_id) == old and fetches == 1
    rotated = await vault.admin.RotateKey(admin_pb2.RotateKeyRequest(
        kind=admin_pb2.KEY_KIND_SEALING), metadata=vault.security())
    vault.clock.advance(1)
    # A key made after the cached set was fetched: one fetch finds it, but no
    # more often than every MISS_REFETCH_S, however often it is asked for.
    with pytest.raises(KeySetError):
        await cache.key(rotated.key_id)
    assert fetches == 1
    elapsed[0] += MISS_REFETCH_S
    new = await cache.key(rotated.key_id)
    assert new.current and new.key_id != old.key_id and fetches == 2
    previous = await cache.key(old.key_id)  # still opening cards: from the cache
    assert not previous.current and previous.public_key == old.public_key and fetches == 2
    elapsed[0] += MISS_REFETCH_S
    for _ in range(3):
        with pytest.raises(KeySetError):
            await cache.key("hpke-" + "0" * 16)
    assert fetches == 3


async def test_key_cache_refuses_a_key_set_older_than_one_it_accepted(vault: VaultHandle) -> None:
    request = vault_pb2.GetSealingKeySetRequest()
    first = await vault.stub.GetSealingKeySet(request)
    vault.clock.advance(120)  # the vault re-signs its key set at least every minute
    second = await vault.stub.GetSealingKeySet(request)
    relayed = iter([second, first])  # a relay replaying the older set

    async def fetch() -> vault_pb2.SealingKeySet:
        return next(relayed)

    cache = SealingKeyCache(fetch, await vault.pins(), wall_clock=vault.clock.now)
    await cache.refresh()
    with pytest.raises(KeySetError):
        await cache.refresh()
    # Too old on its own, whatever was seen before.
    vault.clock.advance(2 * 3600)
    with pytest.raises(KeySetError):
        verify_key_set(second, await vault.pins(), now=vault.clock.now())


@pytest.mark.parametrize("name", ["ctk_" + "a" * 26, "tenants/acme/tokens/ctk_x/extra",
                                  "tenants//tokens/ctk_x"])
async def test_bank_client_refuses_a_malformed_token_name_as_the_caller_s_error(
        vault: VaultHandle, name: str) -> None:
    """Not as a refused credential (UNAUTHENTICATED TOKEN_INVALID): the client
    minted a token for tenant "" when the name named none it could read."""
    bank = BankVaultClient(vault.channel,
                           vault.identities.minter("cardlink-bank", "cardlink-vault"))
    with pytest.raises(InvalidArgument):
        await bank.detokenize(name, "holder verification")
