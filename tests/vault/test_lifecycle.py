"""Key rotation of every class while clients keep calling: zero failed calls."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cardlink.vault.v1 import admin_pb2, vault_pb2
from common.auth import generate_signing_key
from common.grpc_errors import error_from_rpc
from tests.support.identities import Issuer
from tests.support.traffic import LoadStats, client_load
from tests.support.vault import VaultHandle

Kind: TypeAlias = admin_pb2.KeyKind.ValueType
KEK: Kind = admin_pb2.KEY_KIND_KEK
FP: Kind = admin_pb2.KEY_KIND_FINGERPRINT
SEAL: Kind = admin_pb2.KEY_KIND_SEALING
SIGN: Kind = admin_pb2.KEY_KIND_SIGNING
SETTLE = 31.0  # just over the test vault's key_settle_s


async def rotate(vault: VaultHandle, kind: Kind) -> admin_pb2.KeyVersion:
    return await vault.admin.RotateKey(admin_pb2.RotateKeyRequest(kind=kind),
                                       metadata=vault.security())


async def rewrap(vault: VaultHandle, limit: int = 0,
                 batch_size: int = 0) -> list[admin_pb2.RewrapProgress]:
    call = vault.admin.RewrapRecords(
        admin_pb2.RewrapRecordsRequest(limit=limit, batch_size=batch_size),
        metadata=vault.security())
    return [p async for p in call]


async def retire(vault: VaultHandle, kind: Kind, version: int) -> admin_pb2.KeyVersion:
    return await vault.admin.RetireKeyVersion(
        admin_pb2.RetireKeyVersionRequest(kind=kind, version=version), metadata=vault.security())


async def status(vault: VaultHandle) -> admin_pb2.KeyStatus:
    return await vault.admin.GetKeyStatus(admin_pb2.GetKeyStatusRequest(),
                                          metadata=vault.security())


def versions(state: admin_pb2.KeyStatus, kind: int) -> dict[int, admin_pb2.KeyVersion]:
    return {v.version: v for v in state.versions if v.kind == kind}


async def record_versions(client: aioredis.Redis, prefix: str) -> list[Any]:
    out: list[Any] = []
    async for key in client.scan_iter(match=f"{prefix}:vault:{{*}}:tok:*", count=1000):
        kek, fpv = await client.hmget(key, ["kek", "fpv"])
        out.append((kek, fpv))
    return out


async def every_token_opens(vault: VaultHandle, stats: LoadStats) -> None:
    for name, card in stats.tokens.items():
        opened = await vault.stub.DetokenizeToken(
            vault_pb2.DetokenizeTokenRequest(name=name, reason="check"), metadata=vault.bank())
        assert opened.card == card


@pytest.mark.parametrize("kind", [KEK, FP])
async def test_rotate_rewrap_retire_under_load(vault: VaultHandle, redis_client: aioredis.Redis,
                                               kind: Kind) -> None:
    async with client_load(vault) as stats:
        new = await rotate(vault, kind)
        assert (new.version, new.current) == (2, True)
        await stats.wait_for_calls(60)
        # Refused while records still need version 1.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await retire(vault, kind, 1)
        assert error_from_rpc(refused.value).reason == "KEY_VERSION_IN_USE"
        if kind == FP:
            # A new fingerprint version is lookup-only until it has settled: no
            # write (tokenize or rewrap) uses it before, so the rewrap waits.
            assert (await rewrap(vault))[-1].target_fingerprint_version == 1
            vault.clock.advance(SETTLE)
        progress = await rewrap(vault, batch_size=7)
        assert progress[-1].complete and progress[-1].done > 0
        await stats.wait_for_calls(60)
        vault.clock.advance(SETTLE)
        await rewrap(vault)  # records written by calls in flight during the first walk
        retired = await retire(vault, kind, 1)
        assert retired.destroyed
        await stats.wait_for_calls(60)
    assert stats.failures == []
    await every_token_opens(vault, stats)
    field = 0 if kind == KEK else 1
    assert all(v[field] == b"2" for v in await record_versions(redis_client,
                                                                vault.config.redis_prefix))
    left = versions(await status(vault), kind)
    assert list(left) == [2] and left[2].record_count == len(stats.tokens)
    # Same card, same token after the fingerprint change: tokenizing again finds it.
    name, card = next(iter(stats.tokens.items()))
    again = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
        parent="tenants/acme", sealed_card=await vault.seal(card)), metadata=vault.partner())
    assert again.already_known and again.token.name == name


async def test_rotate_sealing_key_under_load(vault: VaultHandle) -> None:
    before = (await vault.key_cache())
    old_id = (await before.current()).key_id
    async with client_load(vault) as stats:
        await rotate(vault, SEAL)
        await stats.wait_for_calls(120)
    assert stats.failures == []
    await every_token_opens(vault, stats)
    listed = versions(await status(vault), SEAL)
    assert listed[1].key_id == old_id and listed[1].HasField("expire_time")
    assert listed[2].current and not listed[2].HasField("expire_time")
    content = vault_pb2.SealingKeySetContent.FromString(
        (await vault.stub.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest())).key_set)
    assert [k.key_id for k in content.keys] == [listed[2].key_id, old_id]


async def test_rotate_signing_key_with_overlap_under_load(vault: VaultHandle) -> None:
    pins: dict[str, Ed25519PublicKey] = dict(await vault.pins())  # clients pinned to v1
    async with client_load(vault, pins=pins) as stats:
        new = await rotate(vault, SIGN)
        await stats.wait_for_calls(60)  # old pins still verify: both keys sign
        signed = await vault.stub.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest())
        assert len(signed.signatures) == 2
        # Clients update their pins first, then the old key is retired.
        pins[new.key_id] = Ed25519PublicKey.from_public_bytes(new.public_key)
        await stats.wait_for_calls(30)
        await retire(vault, SIGN, 1)
        for old in [k for k in pins if k != new.key_id]:
            del pins[old]
        await stats.wait_for_calls(60)
    assert stats.failures == []
    signed = await vault.stub.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest())
    assert [s.signing_key_id for s in signed.signatures] == [new.key_id]


async def test_caller_jwt_key_rotation_without_a_failed_call(vault: VaultHandle) -> None:
    bank = vault.identities.issuers["cardlink-bank"]
    async with client_load(vault) as stats:
        # 1. publish the new key beside the old one
        fresh = Issuer(bank.name, generate_signing_key(), f"{bank.name}-k-new")
        vault.identities.extra_keys[bank.name] = [fresh]
        vault.identities.publish()
        await stats.wait_for_calls(30)
        # 2. sign with the new key
        vault.identities.issuers[bank.name] = fresh
        vault.identities.extra_keys[bank.name] = [bank]
        vault.identities.publish()
        await stats.wait_for_calls(30)
        # 3. withdraw the old key
        vault.identities.extra_keys[bank.name] = []
        vault.identities.publish()
        await stats.wait_for_calls(30)
    assert stats.failures == []


async def test_retire_refusals(vault: VaultHandle) -> None:
    async def reason(kind: Kind, version: int) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await retire(vault, kind, version)
        return error_from_rpc(caught.value).reason

    assert await reason(KEK, 1) == "KEY_VERSION_CURRENT"
    assert await reason(KEK, 9) == "KEY_VERSION_UNKNOWN"
    await rotate(vault, KEK)
    assert await reason(KEK, 1) == "KEY_VERSION_SETTLING"  # no records, but just superseded
    vault.clock.advance(SETTLE)
    assert (await retire(vault, KEK, 1)).destroyed
    assert await reason(KEK, 1) == "KEY_VERSION_UNKNOWN"
    # Versions are never reused.
    assert (await rotate(vault, KEK)).version == 3


async def test_previous_sealing_key_grace_then_refused_and_destroyed(
        vault: VaultHandle, redis_client: aioredis.Redis) -> None:
    from tests.support.cards import card

    old_sealed = await vault.seal(card())  # sealed to version 1
    new = await rotate(vault, SEAL)
    vault.clock.advance(vault.config.sealing_grace_s - 1)
    ok = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
        parent="tenants/acme", sealed_card=old_sealed), metadata=vault.partner())
    assert ok.token.name
    vault.clock.advance(2)
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
            parent="tenants/acme", sealed_card=old_sealed), metadata=vault.partner())
    error = error_from_rpc(late.value)
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.metadata["key_ids"] == new.key_id
    # The next status (or the periodic sweep) destroys the expired private key.
    assert list(versions(await status(vault), SEAL)) == [2]
    fields = await redis_client.hkeys(f"{vault.config.redis_prefix}:vault:keys")
    assert b"seal:1" not in fields
