"""Split knowledge (PCI DSS 3.7.6): the vault seals each new share to its
custodian's X25519 key, so no caller of init or rekey can rebuild the root."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cardlink.vault.v1 import admin_pb2
from clients.keytool._custodian import CustodianError, SealedShareFile, fingerprint, open_share
from common.clock import ManualClock
from common.grpc_errors import error_from_rpc
from tests.support.identities import Identities
from tests.vault.test_unseal import (
    custodian_keys,
    detokenize,
    open_shares,
    production,
    public_keys,
    tokenize,
    unseal,
)
from vault.audit import audit_key


def assert_nowhere(secrets: list[str], *texts: str) -> None:
    for share in secrets:
        words = " ".join(share.split()[:6])  # any run of the mnemonic's words
        for text in texts:
            assert share not in text and words not in text


async def init_reply(vault: Any, keys: list[bytes], k: int = 2,
                     n: int = 3) -> admin_pb2.InitRootResponse:
    reply: admin_pb2.InitRootResponse = await vault.admin.InitRoot(admin_pb2.InitRootRequest(
        threshold=k, share_count=n, custodian_public_keys=keys), metadata=vault.security())
    return reply


def as_addressed_to(sealed: Any, key: X25519PrivateKey) -> SealedShareFile:
    """A sealed share whose file names ``key`` as its custodian: only the
    cryptography can then refuse it."""
    return SealedShareFile(key.public_key().public_bytes_raw(), sealed.ciphertext)


async def audit_text(redis_client: aioredis.Redis, prefix: str) -> str:
    entries: Any = await redis_client.xrange(audit_key(prefix))
    return repr(entries)


async def test_each_sealed_share_opens_only_for_its_custodian_and_k_of_them_unseal(
        redis_url: str, key_prefix: str, tmp_path: Path, redis_client: aioredis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = ManualClock(start=1_800_000_000.0)
    identities = Identities.create(tmp_path, clock)
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        keys = custodian_keys(3)
        reply = await init_reply(vault, public_keys(keys))
        assert not reply.shares and len(reply.sealed_shares) == 3
        shares = open_shares(reply.sealed_shares, keys)
        assert len(set(shares)) == 3
        # Another custodian's key (or a stranger's) opens nothing, even past the
        # key tool's check of whose share it is.
        for i, sealed in enumerate(reply.sealed_shares):
            for other in [*keys[:i], *keys[i + 1:], X25519PrivateKey.generate()]:
                with pytest.raises(CustodianError, match="did not open"):
                    open_share(as_addressed_to(sealed, other), other)
        wire = reply.SerializeToString()
        assert all(s.encode() not in wire for s in shares)

        assert (await unseal(vault, shares[2])).sealed
        assert not (await unseal(vault, shares[0])).sealed
        name = await tokenize(vault)
        assert (await detokenize(vault, name)).pan
        # The init entry (chained at unseal) names each custodian key as
        # keygen-custodian printed it.
        audited = await audit_text(redis_client, key_prefix)
        named = ",".join(fingerprint(key) for key in public_keys(keys))
        assert f"custodians={named}'" in audited

        # Rekey: the completing reply carries sealed shares only, too.
        new_keys = custodian_keys(2)
        for share in shares[:2]:
            done = await vault.admin.RekeyRoot(admin_pb2.RekeyRootRequest(
                share=share, threshold=2, share_count=2,
                custodian_public_keys=public_keys(new_keys)), metadata=vault.security())
        assert done.complete and not done.shares
        rekeyed = open_shares(done.sealed_shares, new_keys)
        assert all(s.encode() not in done.SerializeToString() for s in rekeyed)
        with pytest.raises(CustodianError, match="did not open"):
            open_share(as_addressed_to(done.sealed_shares[0], keys[0]), keys[0])

        logs = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
        assert_nowhere(shares + rekeyed, logs, await audit_text(redis_client, key_prefix))
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        await unseal(vault, rekeyed[1])
        assert not (await unseal(vault, rekeyed[0])).sealed


async def refusal(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_from_rpc(caught.value)
    assert error.reason == "CUSTODIAN_KEYS_INVALID"
    return error


async def test_missing_duplicate_and_malformed_custodian_keys_change_nothing(
        redis_url: str, key_prefix: str, tmp_path: Path,
        redis_client: aioredis.Redis) -> None:
    clock = ManualClock(start=1_800_000_000.0)
    identities = Identities.create(tmp_path, clock)
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        good = public_keys(custodian_keys(3))
        cases = {
            "custodian_public_keys": good[:2],  # one missing
            "custodian_public_keys[2]": [good[0], good[1], good[0]],  # duplicate
            "custodian_public_keys[1]": [good[0], good[1][:31], good[2]],  # wrong size
        }
        for field, bad in cases.items():
            error = await refusal(init_reply(vault, bad))
            assert field in [v.field for v in error.violations]
            assert all(k.hex() not in str(error) for k in good)
        error = await refusal(init_reply(vault, [good[0], good[1], bytes(32)]))  # low order
        assert [v.field for v in error.violations] == ["custodian_public_keys[2]"]
        await refusal(init_reply(vault, []))
        flood = await refusal(init_reply(vault, [b"x"] * 500))  # one violation, not 500
        assert [v.field for v in flood.violations] == ["custodian_public_keys"]
        state = await vault.admin.GetSealStatus(admin_pb2.GetSealStatusRequest(),
                                                metadata=vault.security())
        assert not state.initialized and state.sealed
        assert not await redis_client.exists(f"{key_prefix}:vault:keys")

        keys = custodian_keys(3)
        shares = open_shares((await init_reply(vault, public_keys(keys))).sealed_shares, keys)
        await unseal(vault, shares[0])
        await unseal(vault, shares[1])
        new = public_keys(custodian_keys(2))
        for bad in ([new[0]], [new[0], new[0]], [new[0], b"short"]):
            await refusal(vault.admin.RekeyRoot(admin_pb2.RekeyRootRequest(
                share=shares[0], threshold=2, share_count=2, custodian_public_keys=bad),
                metadata=vault.security()))
            await refusal(vault.admin.RotateRoot(admin_pb2.RotateRootRequest(
                share=shares[0], threshold=2, share_count=2, custodian_public_keys=bad),
                metadata=vault.security()))
        state = await vault.admin.GetSealStatus(admin_pb2.GetSealStatusRequest(),
                                                metadata=vault.security())
        assert state.progress == 0 and state.refused_shares == 0

        # One ceremony, one set of custodian keys: a different set is refused.
        step = await vault.admin.RekeyRoot(admin_pb2.RekeyRootRequest(
            share=shares[0], threshold=2, share_count=2, custodian_public_keys=new),
            metadata=vault.security())
        assert step.progress == 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await vault.admin.RekeyRoot(admin_pb2.RekeyRootRequest(
                share=shares[1], threshold=2, share_count=2,
                custodian_public_keys=public_keys(custodian_keys(2))),
                metadata=vault.security())
        assert error_from_rpc(caught.value).reason == "CEREMONY_MISMATCH"
