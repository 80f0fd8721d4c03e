"""Rewrap figures for issue 4: time to rewrap N records, and get/detokenize calls/s
before and during the rewrap.

    .venv/bin/python -m tests.benchsupport.rewrap [RECORDS]   # default 100000

Starts a private Redis (or uses REDIS_URL) and a real vault process, fills it
through the domain service (fast, no gRPC), then: steady load alone; rotate
KEK and fingerprint key; rewrap (via KeyAdmin) while the same load runs; then
a second rewrap with no load. Prints a JSON summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cardlink.vault.v1 import admin_pb2, admin_pb2_grpc, vault_pb2, vault_pb2_grpc
from clients.sealing import SealingPublicKey, seal_card
from common.clock import SystemClock
from common.redis_runtime import PrivateRedis
from common.server import install_uvloop
from tests.support.cards import numbered_card
from tests.support.identities import SECURITY_SCOPES, Identities
from vault.app import connect_redis
from vault.service import Actor, VaultService

ADDRESS = "127.0.0.1:17201"
INFLIGHT = 64


@dataclass(frozen=True)
class Result:
    calls_per_s: float
    errors: int


async def run_load(call: Callable[[], Awaitable[object]], *, inflight: int,
                   seconds: float) -> Result:
    """Closed loop: ``inflight`` calls at all times for ``seconds``."""
    calls = errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal calls, errors
        while time.perf_counter() < stop_at:
            try:
                await call()
                calls += 1
            except grpc.aio.AioRpcError:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(inflight)))
    return Result(calls / seconds, errors)


@contextmanager
def _vault_process(env: dict[str, str]) -> Iterator[None]:
    process = subprocess.Popen([sys.executable, "-m", "vault"], env=env)
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _wait_healthy(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(200):
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.05)  # process start-up
    raise RuntimeError("the vault did not become healthy")


async def _fill(env: dict[str, str], records: int) -> list[str]:
    redis = connect_redis(env["REDIS_URL"])
    service = VaultService.create(redis, prefix=env["CARDLINK_REDIS_PREFIX"], clock=SystemClock(),
                                  dev_key_file=Path(env["CARDLINK_VAULT_KEY_FILE"]))
    keys = await service.keyring.snapshot()
    public = keys.sealing_keys[0]
    key = SealingPublicKey(public.key_id,
                           X25519PublicKey.from_public_bytes(public.key.public_key), True)
    tokens: list[str] = []

    async def one(n: int) -> None:
        sealed = seal_card(key, "tenants/acme", numbered_card(n))
        result = await service.tokenize("acme", sealed.key_id, sealed.ciphertext, Actor("fill"))
        tokens.append(result.record.name)

    for start in range(0, records, 100):
        await asyncio.gather(*(one(n) for n in range(start, min(start + 100, records))))
    await redis.aclose()
    return tokens


async def _load(stub: vault_pb2_grpc.TokenVaultAsyncStub, names: list[str], identities: Identities,
                seconds: float) -> tuple[Result, Result]:
    partner = identities.metadata("acme-partner", "acme", ["vault.tokens.get"])
    bank = identities.metadata("cardlink-bank", "acme", ["vault.tokens.detokenize"])

    async def get() -> object:
        return await stub.GetToken(vault_pb2.GetTokenRequest(name=random.choice(names)),
                                   metadata=partner)

    async def detokenize() -> object:
        return await stub.DetokenizeToken(vault_pb2.DetokenizeTokenRequest(
            name=random.choice(names), reason="bench"), metadata=bank)

    got = await run_load(get, inflight=INFLIGHT, seconds=seconds)
    opened = await run_load(detokenize, inflight=INFLIGHT, seconds=seconds)
    return got, opened


async def _rewrap(admin: admin_pb2_grpc.KeyAdminAsyncStub,
                  meta: tuple[tuple[str, str], ...]) -> tuple[float, admin_pb2.RewrapProgress]:
    began = time.perf_counter()
    last = admin_pb2.RewrapProgress()
    async for progress in admin.RewrapRecords(admin_pb2.RewrapRecordsRequest(batch_size=1000),
                                              metadata=meta):
        last = progress
    return time.perf_counter() - began, last


async def _main(folder: Path, records: int) -> dict[str, object]:
    identities = Identities.create(folder, SystemClock())
    redis_url = os.environ.get("REDIS_URL")
    redis = None if redis_url else PrivateRedis(folder / "redis").start()
    env = {**os.environ, "REDIS_URL": redis_url or (redis.url if redis else ""),
           "CARDLINK_REDIS_PREFIX": f"cardlink-rewrap-{os.getpid()}",
           "CARDLINK_VAULT_LISTEN": ADDRESS, "CARDLINK_VAULT_MODE": "dev",
           "CARDLINK_VAULT_KEY_FILE": str(folder / "vault-root.key"),
           "CARDLINK_TRUST_FILE": str(identities.trust_file), "CARDLINK_LOG_LEVEL": "WARNING"}
    try:
        began = time.perf_counter()
        names = await _fill(env, records)
        fill_s = time.perf_counter() - began
        with _vault_process(env):
            async with grpc.aio.insecure_channel(ADDRESS) as channel:
                await _wait_healthy(channel)
                stub = vault_pb2_grpc.TokenVaultStub(channel)
                admin = admin_pb2_grpc.KeyAdminStub(channel)
                meta = identities.metadata("cardlink-security", "security", SECURITY_SCOPES)
                before = await _load(stub, names, identities, 4.0)
                for kind in (admin_pb2.KEY_KIND_KEK, admin_pb2.KEY_KIND_FINGERPRINT):
                    await admin.RotateKey(admin_pb2.RotateKeyRequest(kind=kind), metadata=meta)
                rewrap = asyncio.create_task(_rewrap(admin, meta))
                during: list[tuple[Result, Result]] = []
                while not rewrap.done():
                    during.append(await _load(stub, names, identities, 2.0))
                loaded_s, loaded = await rewrap
                await admin.RotateKey(admin_pb2.RotateKeyRequest(kind=admin_pb2.KEY_KIND_KEK),
                                      metadata=meta)
                alone_s, alone = await _rewrap(admin, meta)
    finally:
        if redis is not None:
            redis.stop()

    def rate(results: list[tuple[Result, Result]], index: int) -> float:
        return round(sum(r[index].calls_per_s for r in results) / max(len(results), 1))

    return {
        "inflight": INFLIGHT, "records": records, "cpus": os.cpu_count(),
        "fill_seconds": round(fill_s, 1),
        "rewrap_kek_and_fp_under_load_seconds": round(loaded_s, 1),
        "rewrap_under_load_moved": loaded.done, "rewrap_under_load_complete": loaded.complete,
        "rewrap_kek_alone_seconds": round(alone_s, 1), "rewrap_alone_moved": alone.done,
        "get_per_s_before": round(before[0].calls_per_s),
        "detokenize_per_s_before": round(before[1].calls_per_s),
        "get_per_s_during": rate(during, 0), "detokenize_per_s_during": rate(during, 1),
        "errors_during": sum(r[0].errors + r[1].errors for r in during),
    }


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    install_uvloop()
    with tempfile.TemporaryDirectory(prefix="cardlink-rewrap-") as folder:
        print(json.dumps(asyncio.run(_main(Path(folder), records)), indent=2))


if __name__ == "__main__":
    main()
