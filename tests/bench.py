"""`make bench`: the vault's throughput as a ratio to a bare grpc.aio echo.

Starts a private Redis (or uses REDIS_URL), a bare echo server and a real
vault (`python -m vault`), each its own process. Load comes from two more
processes keeping 64 calls in flight in all, sending pre-serialized requests
as raw bytes, so the client costs the same per call for the echo and the
vault. Each scenario runs in rounds of (echo, scenario) back to back; the
round with the median ratio is reported (calls/s, p50, p99, the echo's
calls/s, the ratio and its target). Figures go to .bench/results.json too.
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
from dataclasses import dataclass
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
SECONDS = float(os.environ.get("CARDLINK_BENCH_SECONDS", "2"))
ROUNDS = int(os.environ.get("CARDLINK_BENCH_ROUNDS", "5"))
WARMUP_S = 0.5
WORKERS = int(os.environ.get("CARDLINK_BENCH_WORKERS", "2"))
CARDS = 50_000  # distinct new cards: more than tokenize can use up in one run
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


def _cpu_seconds(stat: Path) -> float:
    """User + system CPU time in a /proc stat file (a process's or one thread's)."""
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Measured:
    """A load's figures and the server CPU it cost per call, which unlike calls/s
    does not depend on how much of the machine the server got: in all (every
    thread) and in the event-loop thread, the one that runs the Python
    handlers and so bounds the throughput (grpc's own threads run beside it)."""

    result: Result
    server_us_per_call: float
    loop_us_per_call: float

    @property
    def loop_busy(self) -> float:
        """Share of the time the event-loop thread ran: near 1, that thread bounds
        the server; well below, something else does (the echo: the whole machine)."""
        return self.loop_us_per_call * self.result.calls_per_s / 1e6


def _load(scenario: Scenario, server_pid: int) -> Measured:
    process, loop_thread = (Path(f"/proc/{server_pid}/stat"),
                            Path(f"/proc/{server_pid}/task/{server_pid}/stat"))
    before = _cpu_seconds(process), _cpu_seconds(loop_thread)
    result = run_load(scenario, workers=WORKERS, inflight=INFLIGHT, seconds=SECONDS,
                      warmup_s=WARMUP_S)
    used = _cpu_seconds(process) - before[0], _cpu_seconds(loop_thread) - before[1]
    # The warm-up half second is served too: count its calls at the measured rate.
    calls = result.calls_per_s * (SECONDS + WARMUP_S)
    per_call = 1e6 / calls if calls else 0.0
    return Measured(result, used[0] * per_call, used[1] * per_call)


@dataclass(frozen=True)
class Paired:
    """One round: the echo, then the scenario, back to back on the same machine state."""

    echo: Measured
    call: Measured

    @property
    def ratio(self) -> float:
        return self.call.result.calls_per_s / self.echo.result.calls_per_s


@dataclass(frozen=True)
class Rounds:
    """Every round of one scenario, by ratio; the median one is reported."""

    paired: list[Paired]

    @property
    def median(self) -> Paired:
        return self.paired[len(self.paired) // 2]

    @property
    def ratios(self) -> list[float]:
        return [round(p.ratio, 3) for p in self.paired]


def _rounds(echo: tuple[Scenario, int], rounds: list[Scenario], vault_pid: int) -> Rounds:
    """Background load on a shared machine moves both figures of a round
    together, and the median round drops outliers."""
    return Rounds(sorted((Paired(_load(*echo), _load(s, vault_pid)) for s in rounds),
                         key=lambda p: p.ratio))


async def _vault_scenarios(address: str, identities: Identities,
                           pins_file: Path) -> dict[str, list[Scenario]]:
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
    fresh = new_cards[200:]
    share = len(fresh) // ROUNDS  # every tokenize round seals cards never seen before
    return {
        "tokenize": [Scenario("tokenize", address, VAULT + "TokenizeCard",
                              fresh[i * share:(i + 1) * share], partner) for i in range(ROUNDS)],
        "get": [Scenario("get", address, VAULT + "GetToken", gets, partner)] * ROUNDS,
        "detokenize": [Scenario("detokenize", address, VAULT + "DetokenizeToken", opens,
                                bank)] * ROUNDS,
    }


def _cpu(measured: Measured) -> dict[str, float]:
    return {"server_us_per_call": round(measured.server_us_per_call),
            "loop_thread_us_per_call": round(measured.loop_us_per_call),
            "loop_thread_busy": round(measured.loop_busy, 3)}


def _report(results: list[Rounds]) -> dict[str, object]:
    print(f"{'call':<12}{'calls/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}{'echo/s':>8}"
          f"{'ratio':>7}{'target':>7}      {'server µs/call (echo)':>22}"
          f"{'loop thread µs/call (echo)':>28}{'loop busy (echo)':>18}")
    calls: dict[str, object] = {}
    for rounds in results:
        paired = rounds.median
        r, target = paired.call.result, TARGETS[paired.call.result.name]
        verdict = "ok" if paired.ratio >= target else "MISS"
        print(f"{r.name:<12}{r.calls_per_s:>9.0f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}{r.errors:>7}"
              f"{paired.echo.result.calls_per_s:>8.0f}{paired.ratio:>7.2f}{target:>7.2f} "
              f"{verdict:<4} {paired.call.server_us_per_call:>12.0f} "
              f"({paired.echo.server_us_per_call:.0f}) {paired.call.loop_us_per_call:>18.0f} "
              f"({paired.echo.loop_us_per_call:.0f}) {paired.call.loop_busy:>10.0%} "
              f"({paired.echo.loop_busy:.0%})")
        calls[r.name] = {**r.as_dict(), **_cpu(paired.call),
                         "echo": {**paired.echo.result.as_dict(), **_cpu(paired.echo)},
                         "ratio": round(paired.ratio, 3), "round_ratios": rounds.ratios,
                         "target": target}
    print("ratio of every round: " + "; ".join(
        f"{rounds.median.call.result.name} {' '.join(f'{x:.2f}' for x in rounds.ratios)}"
        for rounds in results))
    return {"inflight": INFLIGHT, "workers": WORKERS, "seconds": SECONDS, "rounds": ROUNDS,
            "calls": calls}


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
        with _process(["-m", "tests.benchsupport.echo", "127.0.0.1:17100"], env) as echo_server, \
                _process(["-m", "vault"], env) as vault:
            _wait_healthy("127.0.0.1:17100")
            _wait_healthy("127.0.0.1:17101")
            pins = subprocess.run([sys.executable, "-m", "vault", "pins"], env=env,
                                  check=True, capture_output=True, text=True).stdout
            (folder / "pins.json").write_text(pins)
            scenarios = asyncio.run(_vault_scenarios("127.0.0.1:17101", identities,
                                                     folder / "pins.json"))
            echo = Scenario("echo", "127.0.0.1:17100", METHOD, (b"x" * 200,))
            results = [_rounds((echo, echo_server.pid), rounds, vault.pid)
                       for rounds in scenarios.values()]
    finally:
        if redis is not None:
            redis.stop()
    report = _report(results)
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
