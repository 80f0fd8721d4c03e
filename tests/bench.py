"""`make bench`: the vault's throughput as a ratio to a bare grpc.aio echo.

Starts a private Redis (or uses REDIS_URL), a bare echo server and a real
vault (`python -m vault`), each its own process, then drives each with 64
calls in flight from this process and prints calls/s, p50, p99 and the
ratio to the echo measured in the same run. Figures go to
.bench/results.json as well.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cardlink.vault.v1 import vault_pb2, vault_pb2_grpc
from clients.sealing import SealingKeyCache, load_pins, seal_card
from common.clock import SystemClock
from common.redis_runtime import PrivateRedis
from common.server import install_uvloop
from tests.benchsupport.echo import METHOD
from tests.benchsupport.load import Result, Scenario, run_load
from tests.support.cards import numbered_card
from tests.support.identities import Identities

INFLIGHT = int(os.environ.get("CARDLINK_BENCH_INFLIGHT", "64"))
SECONDS = float(os.environ.get("CARDLINK_BENCH_SECONDS", "4"))
WORKERS = int(os.environ.get("CARDLINK_BENCH_WORKERS", "2"))
CARDS = 30_000  # distinct new cards: more than tokenize can use up in one run
VAULT = "/cardlink.vault.v1.TokenVault/"
TARGETS = {"tokenize": 0.5, "get": 0.6, "detokenize": 0.6}
RESULTS = Path(".bench/results.json")


@contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
        [sys.executable, *args], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_healthy(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)  # process start-up, not domain time
    raise RuntimeError(f"{address} did not become healthy")


def _echo(address: str) -> Result:
    return _load(Scenario("echo", address, METHOD, (b"x" * 200,)))


def _load(scenario: Scenario) -> Result:
    return run_load(scenario, workers=WORKERS, inflight=INFLIGHT, seconds=SECONDS)


async def _vault_scenarios(address: str, identities: Identities,
                           pins_file: Path) -> list[Scenario]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = vault_pb2_grpc.TokenVaultStub(channel)
        cache = SealingKeyCache(lambda: stub.GetSealingKeySet(
            vault_pb2.GetSealingKeySetRequest()), load_pins(pins_file))
        key = await cache.current()
        partner = identities.metadata("acme-partner", "acme",
                                      ["vault.tokens.create", "vault.tokens.get"])
        bank = identities.metadata("cardlink-bank", "acme", ["vault.tokens.detokenize"])
        # Sealing happens on the partner's machine: do it before the clock starts.
        new_cards = tuple(vault_pb2.TokenizeCardRequest(
            parent="tenants/acme", sealed_card=seal_card(key, "tenants/acme", numbered_card(n))
        ).SerializeToString() for n in range(CARDS))
        known = [vault_pb2.TokenizeCardRequest.FromString(r) for r in new_cards[:200]]
        names = [(await stub.TokenizeCard(r, metadata=partner)).token.name for r in known]
    gets = tuple(vault_pb2.GetTokenRequest(name=n).SerializeToString() for n in names)
    opens = tuple(vault_pb2.DetokenizeTokenRequest(name=n, reason="benchmark")
                  .SerializeToString() for n in names)
    return [
        Scenario("tokenize", address, VAULT + "TokenizeCard", new_cards[200:], partner),
        Scenario("get", address, VAULT + "GetToken", gets, partner),
        Scenario("detokenize", address, VAULT + "DetokenizeToken", opens, bank),
    ]


def _report(echo: Result, results: list[Result]) -> dict[str, object]:
    print(f"{'call':<12}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'ratio':>8}{'target':>8}")
    print(f"{echo.name:<12}{echo.calls_per_s:>10.0f}{echo.p50_ms:>9.2f}{echo.p99_ms:>9.2f}"
          f"{echo.errors:>8}{1.0:>8.2f}")
    report: dict[str, object] = {"inflight": INFLIGHT, "workers": WORKERS, "seconds": SECONDS,
                                 "echo": echo.as_dict(), "calls": {}}
    calls: dict[str, object] = {}
    for r in results:
        ratio = r.calls_per_s / echo.calls_per_s
        target = TARGETS[r.name]
        verdict = "ok" if ratio >= target else "MISS"
        print(f"{r.name:<12}{r.calls_per_s:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
              f"{r.errors:>8}{ratio:>8.2f}{target:>7.2f} {verdict}")
        calls[r.name] = {**r.as_dict(), "ratio": round(ratio, 3), "target": target}
    report["calls"] = calls
    return report


def _main(folder: Path) -> None:
    identities = Identities.create(folder, SystemClock())
    redis_url = os.environ.get("REDIS_URL")
    redis = None if redis_url else PrivateRedis(folder / "redis").start()
    env = {**os.environ, "REDIS_URL": redis_url or (redis.url if redis else ""),
           "CARDLINK_REDIS_PREFIX": f"cardlink-bench-{os.getpid()}",
           "CARDLINK_VAULT_LISTEN": "127.0.0.1:17101", "CARDLINK_VAULT_MODE": "dev",
           "CARDLINK_VAULT_KEY_FILE": str(folder / "vault-root.key"),
           "CARDLINK_TRUST_FILE": str(identities.trust_file), "CARDLINK_LOG_LEVEL": "WARNING"}
    try:
        with _process(["-m", "tests.benchsupport.echo", "127.0.0.1:17100"], env), \
                _process(["-m", "vault"], env):
            _wait_healthy("127.0.0.1:17100")
            _wait_healthy("127.0.0.1:17101")
            pins = subprocess.run([sys.executable, "-m", "vault", "pins"], env=env,
                                  check=True, capture_output=True, text=True).stdout
            (folder / "pins.json").write_text(pins)
            echo = _echo("127.0.0.1:17100")
            scenarios = asyncio.run(_vault_scenarios("127.0.0.1:17101", identities,
                                                     folder / "pins.json"))
            results = [_load(scenario) for scenario in scenarios]
    finally:
        if redis is not None:
            redis.stop()
    report = _report(echo, results)
    report["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"figures written to {RESULTS}")


def main() -> None:
    install_uvloop()
    with tempfile.TemporaryDirectory(prefix="cardlink-bench-") as folder:
        _main(Path(folder))


if __name__ == "__main__":
    main()
