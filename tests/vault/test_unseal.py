"""Production mode: init splits the root into SLIP-39 shares, each sealed to its
custodian's X25519 key; k custodians open theirs and unseal."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
import redis.exceptions
import shamir_mnemonic.shamir
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shamir_mnemonic import Share

import vault.keyring as keyring_module
from cardlink.vault.v1 import admin_pb2, vault_pb2
from clients.keytool._custodian import SealedShareFile, open_share
from common.clock import ManualClock
from common.errors import Unavailable
from common.grpc_errors import error_from_rpc
from common.store_errors import STORE_UNAVAILABLE
from tests.support.cards import card
from tests.support.identities import Identities
from tests.support.vault import VaultHandle, running_vault
from vault.audit import AuditEntry, audit_key
from vault.config import VaultMode
from vault.crypto import RootKey
from vault.unseal import split_root

K, N = 3, 5


@asynccontextmanager
async def production(redis_url: str, prefix: str, folder: Path, clock: ManualClock,
                     identities: Identities) -> AsyncIterator[VaultHandle]:
    async with running_vault(redis_url, prefix, folder, mode=VaultMode.PRODUCTION, clock=clock,
                             identities=identities) as handle:
        yield handle


@pytest.fixture
def world(tmp_path: Path) -> tuple[ManualClock, Identities]:
    clock = ManualClock(start=1_800_000_000.0)
    return clock, Identities.create(tmp_path, clock)


async def unseal(vault: VaultHandle, share: str) -> admin_pb2.SealStatus:
    return await vault.admin.Unseal(admin_pb2.UnsealRequest(share=share),
                                    metadata=vault.security())


async def refused(vault: VaultHandle, share: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unseal(vault, share)
    return str(error_from_rpc(caught.value).reason)


def custodian_keys(count: int) -> list[X25519PrivateKey]:
    return [X25519PrivateKey.generate() for _ in range(count)]


def public_keys(keys: list[X25519PrivateKey]) -> list[bytes]:
    return [k.public_key().public_bytes_raw() for k in keys]


def open_shares(sealed: Any, keys: list[X25519PrivateKey]) -> list[str]:
    """What each custodian does with their own sealed share and private key."""
    assert [s.custodian_public_key for s in sealed] == public_keys(keys)
    return [open_share(SealedShareFile(s.custodian_public_key, s.ciphertext), k)
            for s, k in zip(sealed, keys, strict=True)]


async def init(vault: VaultHandle, keys: list[X25519PrivateKey] | None = None) -> list[str]:
    keys = keys or custodian_keys(N)
    reply = await vault.admin.InitRoot(admin_pb2.InitRootRequest(
        threshold=K, share_count=N, custodian_public_keys=public_keys(keys)),
        metadata=vault.security())
    assert reply.seal.sealed and reply.seal.initialized
    assert not reply.shares  # never in clear
    return open_shares(reply.sealed_shares, keys)


async def tokenize(vault: VaultHandle) -> str:
    reply = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
        parent="tenants/acme", sealed_card=await vault.seal(card())), metadata=vault.partner())
    return reply.token.name


async def detokenize(vault: VaultHandle, name: str) -> vault_pb2.CardSecret:
    reply = await vault.stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
        name=name, reason="check"), metadata=vault.bank())
    return reply.card


async def sealed_reason(vault: VaultHandle) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.stub.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    return error_from_rpc(caught.value).reason


def forged_share(genuine: str) -> str:
    """A well-formed share of the same set (valid checksum) with a wrong value."""
    s = Share.from_mnemonic(genuine)
    return str(Share(s.identifier, s.extendable, s.iteration_exponent, s.group_index,
                 s.group_threshold, s.group_count, (s.index + 7) % 16, s.member_threshold,
                 os.urandom(len(s.value))).mnemonic())


async def test_sealed_until_k_valid_shares_and_sealed_again_after_restart(
        redis_url: str, key_prefix: str, tmp_path: Path, world: tuple[ManualClock, Identities],
        redis_client: aioredis.Redis) -> None:
    clock, identities = world
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        assert await sealed_reason(vault) == "VAULT_SEALED"
        health = health_pb2_grpc.HealthStub(vault.channel)
        checked = await health.Check(health_pb2.HealthCheckRequest(
            service="cardlink.vault.v1.TokenVault"))
        assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING
        shares = await init(vault)
        assert len(shares) == N and len(set(shares)) == N
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await init(vault)
        assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS

        # k-1 shares: still sealed.
        assert (await unseal(vault, shares[0])).progress == 1
        state = await unseal(vault, shares[1])
        assert state.sealed and state.progress == 2 and state.threshold == K
        # Wrong shares: refused, clearly, and counted.
        other_set = split_root(os.urandom(32), K, N)[0]
        assert await refused(vault, other_set[0]) == "SHARE_WRONG_SET"
        garbled = shares[2].split()
        garbled[5] = "academic" if garbled[5] != "academic" else "acid"
        assert await refused(vault, " ".join(garbled)) == "SHARE_INVALID"
        assert await refused(vault, shares[1]) == "SHARE_DUPLICATE"
        # A forged share of this set completes k but does not rebuild the root.
        assert await refused(vault, forged_share(shares[0])) == "SHARE_MISMATCH"
        state = await vault.admin.GetSealStatus(admin_pb2.GetSealStatusRequest(),
                                                metadata=vault.security())
        assert state.sealed and state.progress == 0 and state.refused_shares == 4
        assert await sealed_reason(vault) == "VAULT_SEALED"

        # k good shares (any k): open.
        for share in (shares[4], shares[0]):
            assert (await unseal(vault, share)).sealed
        assert not (await unseal(vault, shares[2])).sealed
        checked = await health.Check(health_pb2.HealthCheckRequest(
            service="cardlink.vault.v1.TokenVault"))
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        name = await tokenize(vault)
        assert (await detokenize(vault, name)).pan == card().pan
        # Unseal attempts while sealed were audited once the audit key was available.
        audited: Any = await redis_client.xrange(audit_key(key_prefix))
        actions = [(e[b"action"], e[b"result"]) for _, e in audited]
        assert (b"root.unseal", b"SHARE_WRONG_SET") in actions
        assert (b"root.unseal", b"OK") in actions

    # Nothing about the root is on disk: the folder holds the trust store only.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trust.json"]  # noqa: ASYNC240
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        assert await sealed_reason(vault) == "VAULT_SEALED"
        for share in shares[1:4]:
            state = await unseal(vault, share)
        assert not state.sealed
        assert (await detokenize(vault, name)).pan == card().pan


async def test_rekey_and_rotate_root_need_k_custodians(
        redis_url: str, key_prefix: str, tmp_path: Path,
        world: tuple[ManualClock, Identities], redis_client: aioredis.Redis) -> None:
    clock, identities = world
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        first_custodians = custodian_keys(N)
        shares = await init(vault, first_custodians)
        assert await init(vault, first_custodians) == shares  # a retry gets them again
        for share in shares[:K]:
            await unseal(vault, share)
        name = await tokenize(vault)

        # Rekey to 2-of-3: same root, new shares; k-1 submissions do nothing yet.
        three = custodian_keys(3)
        for share in shares[:K - 1]:
            step = await vault.admin.RekeyRoot(admin_pb2.RekeyRootRequest(
                share=share, threshold=2, share_count=3,
                custodian_public_keys=public_keys(three)), metadata=vault.security())
            assert not step.complete and not step.sealed_shares
        done = await vault.admin.RekeyRoot(admin_pb2.RekeyRootRequest(
            share=shares[K - 1], threshold=2, share_count=3,
            custodian_public_keys=public_keys(three)), metadata=vault.security())
        assert done.complete and len(done.sealed_shares) == 3 and not done.shares
        rekeyed = open_shares(done.sealed_shares, three)
        root_id = done.root_key_id
        # The init request again, same root: its shares belong to a replaced set now.
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await init(vault, first_custodians)
        assert error_from_rpc(again.value).reason == "VAULT_INITIALIZED"

        # Rotate the root with 2 of the new shares: the keyring is rewrapped.
        two = custodian_keys(2)
        step = await vault.admin.RotateRoot(admin_pb2.RotateRootRequest(
            share=rekeyed[0], threshold=2, share_count=2,
            custodian_public_keys=public_keys(two)), metadata=vault.security())
        assert not step.complete
        rotated = await vault.admin.RotateRoot(admin_pb2.RotateRootRequest(
            share=rekeyed[2], threshold=2, share_count=2,
            custodian_public_keys=public_keys(two)), metadata=vault.security())
        assert rotated.complete and rotated.root_key_id != root_id and not rotated.shares
        # Its reply could have been lost on the way: the same request gets it again.
        assert await vault.admin.RotateRoot(admin_pb2.RotateRootRequest(
            share=rekeyed[0], threshold=2, share_count=2,
            custodian_public_keys=public_keys(two)), metadata=vault.security()) == rotated
        newest = open_shares(rotated.sealed_shares, two)
        assert (await detokenize(vault, name)).pan == card().pan
        stored_root = await redis_client.hget(f"{key_prefix}:vault:keys", "root")
        assert stored_root == rotated.root_key_id.encode()

    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        # The original and the rekeyed shares belong to superseded sets.
        assert await refused(vault, shares[0]) == "SHARE_WRONG_SET"
        assert await refused(vault, rekeyed[1]) == "SHARE_WRONG_SET"
        await unseal(vault, newest[0])
        assert not (await unseal(vault, newest[1])).sealed
        assert (await detokenize(vault, name)).pan == card().pan
        verified = await vault.admin.VerifyAudit(admin_pb2.VerifyAuditRequest(),
                                                 metadata=vault.security())
        assert verified.ok, verified  # the chain survives a root rotation


async def test_dev_mode_has_no_shares(vault: VaultHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unseal(vault, "anything")
    assert error_from_rpc(caught.value).reason == "DEV_MODE"
    state = await vault.admin.GetSealStatus(admin_pb2.GetSealStatusRequest(),
                                            metadata=vault.security())
    assert not state.sealed and state.mode == "dev"


async def test_unseal_needs_the_custodian_scope(vault: VaultHandle) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.admin.Unseal(admin_pb2.UnsealRequest(share="x"), metadata=vault.partner())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _root_key_ids(holder: object, depth: int = 3) -> set[str]:
    """The ids of every RootKey in ``holder``'s attributes (and theirs)."""
    if isinstance(holder, RootKey):
        return {holder.key_id}
    if depth == 0:
        return set()
    names = [*getattr(type(holder), "__slots__", ()), *getattr(holder, "__dict__", {})]
    return set().union(*(_root_key_ids(getattr(holder, name, None), depth - 1)
                         for name in names))


def _rotate_root(vault: VaultHandle, share: str,
                 keys: list[X25519PrivateKey]) -> Any:
    return vault.admin.RotateRoot(admin_pb2.RotateRootRequest(
        share=share, threshold=2, share_count=len(keys),
        custodian_public_keys=public_keys(keys)), metadata=vault.security())


def _write_fails(monkeypatch: pytest.MonkeyPatch, keyring: Any, *, landed: bool,
                 then_silent: bool) -> list[tuple[Any, ...]]:
    """The next keyring change fails for its caller (UNAVAILABLE, once), after
    landing in Redis (a connection dropped before the reply) or not;
    ``then_silent``: the read-back of whether it landed fails once too. Returns
    where the failed change's arguments will be."""
    change, read_back = keyring.change, keyring.landed
    sent: list[tuple[Any, ...]] = []

    async def read_back_fails(*args: Any) -> bool:
        monkeypatch.setattr(keyring, "landed", read_back)
        raise Unavailable(STORE_UNAVAILABLE, "the vault store is unavailable; retry")

    async def fails(*args: Any) -> bool:
        monkeypatch.setattr(keyring, "change", change)
        sent.append(args)
        if landed:
            await change(*args)
        if then_silent:
            monkeypatch.setattr(keyring, "landed", read_back_fails)
        raise Unavailable(STORE_UNAVAILABLE, "the vault store is unavailable; retry")

    monkeypatch.setattr(keyring, "change", fails)
    return sent


@dataclass(frozen=True)
class _Underway:
    """An unsealed production vault holding one token, with a root rotation to two
    new custodians one share short of complete."""

    vault: VaultHandle
    shares: list[str]
    token: str
    custodians: list[X25519PrivateKey]


@asynccontextmanager
async def _rotation_underway(redis_url: str, prefix: str, folder: Path,
                             world: tuple[ManualClock, Identities]) -> AsyncIterator[_Underway]:
    clock, identities = world
    two = custodian_keys(2)
    async with production(redis_url, prefix, folder, clock, identities) as vault:
        shares = await init(vault)
        for share in shares[:K]:
            await unseal(vault, share)
        name = await tokenize(vault)
        for share in shares[:K - 1]:
            assert not (await _rotate_root(vault, share, two)).complete
        yield _Underway(vault, shares, name, two)


@pytest.mark.parametrize(("redis_answers_at_once", "share_set"),
                         [(True, None), (False, None), (False, 0)])
async def test_a_root_rotation_whose_reply_is_lost_still_hands_out_its_shares(
        redis_url: str, key_prefix: str, tmp_path: Path,
        world: tuple[ManualClock, Identities], monkeypatch: pytest.MonkeyPatch,
        redis_answers_at_once: bool, share_set: int | None) -> None:
    """Dropping the new shares of a rotation that landed would leave every
    record under a root nobody holds. ``share_set``: the initial share set's
    identifier, if not random (0 is one of SLIP-39's 32,768)."""
    clock, identities = world
    if share_set is not None:  # for init's share set; random again afterwards
        forced, random = [share_set], shamir_mnemonic.shamir._random_identifier
        monkeypatch.setattr(shamir_mnemonic.shamir, "_random_identifier",
                            lambda: forced.pop() if forced else random())
    async with _rotation_underway(redis_url, key_prefix, tmp_path, world) as underway:
        vault, shares, name, two = (underway.vault, underway.shares, underway.token,
                                    underway.custodians)
        _write_fails(monkeypatch, vault.vault.service.keyring, landed=True,
                     then_silent=not redis_answers_at_once)
        if redis_answers_at_once:
            rotated = await _rotate_root(vault, shares[K - 1], two)
        else:
            # Nor can Redis tell at once whether it landed: the call fails, and
            # the custodians' retry gets the shares.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _rotate_root(vault, shares[K - 1], two)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            status = await vault.admin.GetSealStatus(admin_pb2.GetSealStatusRequest(),
                                                     metadata=vault.security())
            assert not status.sealed  # it settles, and keeps the shares for the retry
            # Not for another request (here: other custodian keys).
            other = await _refused(_rotate_root(vault, shares[0], custodian_keys(2)))
            assert other == "SHARE_WRONG_SET"
            rotated = await _rotate_root(vault, shares[0], two)
            # Its reply may be lost too: the shares stay for every retry.
            assert (await _rotate_root(vault, shares[1], two)) == rotated
        assert rotated.complete and len(rotated.sealed_shares) == 2
        newest = open_shares(rotated.sealed_shares, two)
        assert (await detokenize(vault, name)).pan == card().pan

    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        assert await refused(vault, shares[0]) == "SHARE_WRONG_SET"
        await unseal(vault, newest[0])
        assert not (await unseal(vault, newest[1])).sealed
        assert (await detokenize(vault, name)).pan == card().pan


async def _refused(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return str(error_from_rpc(caught.value).reason)


async def test_a_root_rotation_that_did_not_land_leaves_the_old_root_in_place(
        redis_url: str, key_prefix: str, tmp_path: Path,
        world: tuple[ManualClock, Identities], monkeypatch: pytest.MonkeyPatch) -> None:
    clock, identities = world
    async with _rotation_underway(redis_url, key_prefix, tmp_path, world) as underway:
        vault, shares, name, two = (underway.vault, underway.shares, underway.token,
                                    underway.custodians)
        keyring = vault.vault.service.keyring
        sent = _write_fails(monkeypatch, keyring, landed=False, then_silent=True)
        assert await _refused(_rotate_root(vault, shares[K - 1], two)) == "STORE_UNAVAILABLE"
        status = await vault.admin.GetSealStatus(admin_pb2.GetSealStatusRequest(),
                                                 metadata=vault.security())
        assert not status.sealed and status.progress == 0  # settled: the old root, afresh
        assert (await detokenize(vault, name)).pan == card().pan
        step = await _rotate_root(vault, shares[0], two)
        assert not step.complete and step.progress == 1  # the ceremony starts over
        # The write that did not land never will (as if it were still in a dead
        # connection's buffer): the read-back moved the generation it expects.
        assert not await keyring.change(*sent[0])

    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        for share in shares[K:] + shares[:1]:  # the old shares still open the vault
            await unseal(vault, share)
        assert (await detokenize(vault, name)).pan == card().pan


async def test_a_key_rotation_racing_a_root_rotation_wraps_under_the_new_root(
        redis_url: str, key_prefix: str, tmp_path: Path,
        world: tuple[ManualClock, Identities], monkeypatch: pytest.MonkeyPatch) -> None:
    async with _rotation_underway(redis_url, key_prefix, tmp_path, world) as underway:
        vault, shares, name, two = (underway.vault, underway.shares, underway.token,
                                    underway.custodians)
        read = keyring_module.read_fields

        async def root_rotated_meanwhile(*args: Any) -> Any:
            # The KEK rotation is under way when the last custodian completes the
            # root rotation.
            monkeypatch.setattr("vault.lifecycle.read_fields", read)
            assert (await _rotate_root(vault, shares[K - 1], two)).complete
            return await read(*args)

        monkeypatch.setattr("vault.lifecycle.read_fields", root_rotated_meanwhile)
        await vault.admin.RotateKey(admin_pb2.RotateKeyRequest(kind=admin_pb2.KEY_KIND_KEK),
                                    metadata=vault.security())
        await vault.vault.service.keyring.refresh()  # KEYRING_CORRUPT before the fix
        assert (await detokenize(vault, name)).pan == card().pan
        assert (await detokenize(vault, await tokenize(vault))).pan == card().pan


async def test_a_process_that_missed_a_root_rotation_refuses_to_rotate_keys(
        redis_url: str, key_prefix: str, tmp_path: Path,
        world: tuple[ManualClock, Identities]) -> None:
    """A KEK rotation on a process still holding the old root would wrap the new
    version under it, and no process could load the keyring again."""
    clock, identities = world
    two = custodian_keys(2)
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as first, \
            production(redis_url, key_prefix, tmp_path, clock, identities) as second:
        shares = await init(first)
        for vault in (first, second):
            for share in shares[:K]:
                await unseal(vault, share)
        name = await tokenize(first)
        for share in shares[:K]:
            rotated = await _rotate_root(second, share, two)
        assert rotated.complete
        refusal = await _refused(first.admin.RotateKey(
            admin_pb2.RotateKeyRequest(kind=admin_pb2.KEY_KIND_KEK), metadata=first.security()))
        assert refusal == "ROOT_KEY_MISMATCH"
        await second.vault.service.keyring.refresh()  # still loads: nothing was written
        assert (await detokenize(second, name)).pan == card().pan


async def test_a_rekey_that_loses_the_race_to_another_root_rotation_starts_over(
        redis_url: str, key_prefix: str, tmp_path: Path,
        world: tuple[ManualClock, Identities], monkeypatch: pytest.MonkeyPatch) -> None:
    """Between one process's rekey checking its shares and writing, another
    completes a root rotation: the rekey must not write the old root's share set
    over a keyring rewrapped under the new root (no share could open it then)."""
    clock, identities = world
    three = custodian_keys(3)
    rotations: list[Any] = []
    async with _rotation_underway(redis_url, key_prefix, tmp_path, world) as underway, \
            production(redis_url, key_prefix, tmp_path, clock, identities) as other:
        shares, two = underway.shares, underway.custodians
        for share in shares[:K]:
            await unseal(other, share)
        keyring = other.vault.service.keyring
        change = keyring.change

        async def rotated_meanwhile(*args: Any) -> bool:
            monkeypatch.setattr(keyring, "change", change)
            rotations.append(await _rotate_root(underway.vault, shares[K - 1], two))
            return await change(*args)  # refused: the generation moved

        def rekey(share: str) -> Any:
            return other.admin.RekeyRoot(admin_pb2.RekeyRootRequest(
                share=share, threshold=2, share_count=3,
                custodian_public_keys=public_keys(three)), metadata=other.security())

        for share in shares[:K - 1]:
            await rekey(share)
        monkeypatch.setattr(keyring, "change", rotated_meanwhile)
        # CEREMONY_MISMATCH, or ROOT_KEY_MISMATCH from writing that refusal to the
        # audit log: this process no longer holds the keyring's root.
        assert await _refused(rekey(shares[K - 1])) in ("CEREMONY_MISMATCH",
                                                         "ROOT_KEY_MISMATCH")

    [rotated] = rotations
    newest = open_shares(rotated.sealed_shares, two)
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        await unseal(vault, newest[0])
        assert not (await unseal(vault, newest[1])).sealed
        assert (await detokenize(vault, underway.token)).pan == card().pan


async def test_kept_shares_are_not_handed_out_once_another_process_replaced_them(
        redis_url: str, key_prefix: str, tmp_path: Path,
        world: tuple[ManualClock, Identities]) -> None:
    """A rotation's retry gets its shares again, but not after another vault
    process has rekeyed: they belong to a replaced set then, and handing them out
    as "done" would leave custodians holding shares no unseal takes."""
    clock, identities = world
    three = custodian_keys(3)
    async with _rotation_underway(redis_url, key_prefix, tmp_path, world) as underway, \
            production(redis_url, key_prefix, tmp_path, clock, identities) as other:
        vault, shares, two = underway.vault, underway.shares, underway.custodians
        rotated = await _rotate_root(vault, shares[K - 1], two)
        newest = open_shares(rotated.sealed_shares, two)
        assert await _rotate_root(vault, shares[0], two) == rotated  # kept for a retry
        # What is kept for the retry holds no root key: the process holds the
        # new root only, never the one it replaced.
        assert _root_key_ids(vault.vault.service.keyring.root_keys) == {rotated.root_key_id}
        for share in newest:
            await unseal(other, share)
        for share in newest:
            done = await other.admin.RekeyRoot(admin_pb2.RekeyRootRequest(
                share=share, threshold=2, share_count=3,
                custodian_public_keys=public_keys(three)), metadata=other.security())
        assert done.complete
        assert await _refused(_rotate_root(vault, shares[0], two)) == "SHARE_WRONG_SET"


def _next_audit_write_fails(vault: VaultHandle, monkeypatch: pytest.MonkeyPatch, *,
                            landed: bool = False) -> None:
    """Redis drops the connection on the audit log's next append script (once),
    before running it or (``landed``) after, so that only its reply is lost."""
    audit: Any = vault.vault.service.audit
    script = audit._script

    async def fails_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(audit, "_script", script)
        if landed:
            await script(*args, **kwargs)
        raise redis.exceptions.ConnectionError("connection reset by peer")

    monkeypatch.setattr(audit, "_script", fails_once)


async def _unsealed_after_a_failed_audit_write(vault: VaultHandle,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    shares = await init(vault)
    # A share of another set while sealed: audited in the in-memory backlog.
    assert await refused(vault, split_root(os.urandom(32), K, 5)[0][0]) == "SHARE_WRONG_SET"
    for share in shares[:K - 1]:
        await unseal(vault, share)
    _next_audit_write_fails(vault, monkeypatch)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unseal(vault, shares[K - 1])
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # AUDIT_UNAVAILABLE
    state = await vault.admin.GetSealStatus(admin_pb2.GetSealStatusRequest(),
                                            metadata=vault.security())
    assert not state.sealed  # the k-th share was taken: this process holds the root


async def test_sealed_backlog_survives_a_failed_first_write_after_unseal(
        redis_url: str, key_prefix: str, tmp_path: Path, world: tuple[ManualClock, Identities],
        redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    clock, identities = world
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        await _unsealed_after_a_failed_audit_write(vault, monkeypatch)
        name = await tokenize(vault)
        await detokenize(vault, name)  # Redis is back: later entries are written
        logged: Any = await redis_client.xrange(audit_key(key_prefix))
        actions = [(e[b"action"], e[b"result"]) for _, e in logged]
        assert (b"detokenize", b"OK") in actions
        # The refused share and every unseal INTENT, recorded while sealed,
        # reach the log once it can be written (they were dropped for good).
        assert (b"root.unseal", b"SHARE_WRONG_SET") in actions, actions
        assert actions.count((b"root.unseal", b"INTENT")) >= K + 1, actions


async def test_unsealed_process_reports_serving_after_a_failed_audit_write(
        redis_url: str, key_prefix: str, tmp_path: Path, world: tuple[ManualClock, Identities],
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock, identities = world
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        await _unsealed_after_a_failed_audit_write(vault, monkeypatch)
        name = await tokenize(vault)  # it does serve cards...
        await detokenize(vault, name)
        health = health_pb2_grpc.HealthStub(vault.channel)
        checked = await health.Check(health_pb2.HealthCheckRequest(
            service="cardlink.vault.v1.TokenVault"))
        # ...and says so (it stayed NOT_SERVING for good: a retried Unseal
        # answers ALREADY_UNSEALED, and ran no on_unseal callback).
        assert checked.status == health_pb2.HealthCheckResponse.SERVING


async def test_old_shares_are_refused_after_a_rekey_whatever_identifier_it_draws(
        redis_url: str, key_prefix: str, tmp_path: Path, world: tuple[ManualClock, Identities],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rekeys keep the root, so every earlier set still rebuilds it and only
    its identifier refuses it: a rekey must never draw the current set's or an
    earlier one's (one that did brought that set back to life)."""
    clock, identities = world
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        first = await init(vault)
        for share in first[:K]:
            await unseal(vault, share)
        draws = [Share.from_mnemonic(first[0]).identifier]  # the current set's
        random = shamir_mnemonic.shamir._random_identifier
        monkeypatch.setattr(shamir_mnemonic.shamir, "_random_identifier",
                            lambda: draws.pop(0) if draws else random())
        two, three = custodian_keys(2), custodian_keys(3)

        async def rekey(shares: list[str], keys: list[X25519PrivateKey]) -> list[str]:
            for share in shares:
                done = await vault.admin.RekeyRoot(admin_pb2.RekeyRootRequest(
                    share=share, threshold=2, share_count=len(keys),
                    custodian_public_keys=public_keys(keys)), metadata=vault.security())
            assert done.complete  # the key tool prints "the old shares no longer work"
            return open_shares(done.sealed_shares, keys)

        second = await rekey(first[:K], three)
        draws.append(Share.from_mnemonic(first[0]).identifier)  # now an earlier set's
        await rekey(second[:2], two)
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        assert await refused(vault, first[0]) == "SHARE_WRONG_SET"
        assert await refused(vault, second[0]) == "SHARE_WRONG_SET"


async def test_a_sealed_backlog_whose_reply_was_lost_is_written_once(
        redis_url: str, key_prefix: str, tmp_path: Path, world: tuple[ManualClock, Identities],
        redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write landed, its reply did not: the head shows it, so the entries
    are not queued again (they were chained a second time)."""
    clock, identities = world
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        shares = await init(vault)
        assert await refused(vault, split_root(os.urandom(32), K, 5)[0][0]) == "SHARE_WRONG_SET"
        for share in shares[:K - 1]:
            await unseal(vault, share)
        _next_audit_write_fails(vault, monkeypatch, landed=True)
        await unseal(vault, shares[K - 1])
        await detokenize(vault, await tokenize(vault))
        logged: Any = await redis_client.xrange(audit_key(key_prefix))
        actions = [(e[b"action"], e[b"result"]) for _, e in logged]
        assert actions.count((b"root.unseal", b"SHARE_WRONG_SET")) == 1, actions
        assert actions.count((b"root.init", b"OK")) == 1, actions


async def test_a_long_sealed_backlog_keeps_its_order_when_a_write_fails(
        redis_url: str, key_prefix: str, tmp_path: Path, world: tuple[ManualClock, Identities],
        redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """More entries than one write carries, and the first write fails: the
    rest did not go ahead of it (they were chained before the failed batch)."""
    clock, identities = world
    async with production(redis_url, key_prefix, tmp_path, clock, identities) as vault:
        shares = await init(vault)
        audit = vault.vault.service.audit
        for n in range(600):
            await audit.append(AuditEntry(action="test.sealed", caller="test", tenant="",
                                          token="", result="OK", time=clock.now(),
                                          reason=f"{n:04d}"))
        for share in shares[:K - 1]:
            await unseal(vault, share)
        _next_audit_write_fails(vault, monkeypatch)
        with pytest.raises(grpc.aio.AioRpcError):
            await unseal(vault, shares[K - 1])
        await detokenize(vault, await tokenize(vault))
        logged: Any = await redis_client.xrange(audit_key(key_prefix))
        numbered = [e[b"reason"] for _, e in logged if e[b"action"] == b"test.sealed"]
        assert numbered == [f"{n:04d}".encode() for n in range(600)]
