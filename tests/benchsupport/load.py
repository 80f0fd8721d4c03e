"""Closed-loop load from several worker processes, latencies recorded.

Every scenario, the echo baseline included, is driven the same way: requests
are serialized before the clock starts and sent as raw bytes on a generic
method, so the client costs the same per call whatever the server does and
the ratio to the echo measures the server.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context

import grpc


@dataclass(frozen=True)
class Scenario:
    name: str
    address: str
    method: str
    requests: tuple[bytes, ...]  # sent round-robin
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Result:
    name: str
    calls: int
    errors: int
    seconds: float
    calls_per_s: float
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


async def _drive(scenario: Scenario, offset: int, inflight: int, seconds: float,
                 warmup_s: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    counter = offset
    requests = scenario.requests
    async with grpc.aio.insecure_channel(scenario.address) as channel:
        call = channel.unary_unary(scenario.method, request_serializer=None,
                                   response_deserializer=None)
        start = time.perf_counter()
        measure_from, stop_at = start + warmup_s, start + warmup_s + seconds

        async def worker() -> None:
            nonlocal errors, counter
            while (began := time.perf_counter()) < stop_at:
                counter += 1
                try:
                    await call(requests[counter % len(requests)], metadata=scenario.metadata)
                except grpc.aio.AioRpcError:
                    errors += began >= measure_from
                    continue
                if began >= measure_from:
                    latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(worker() for _ in range(inflight)))
    return latencies, errors


def _worker(scenario: Scenario, index: int, inflight: int, seconds: float,
            warmup_s: float) -> tuple[list[float], int]:
    import uvloop

    # Each worker starts at its own place in the request list, so no two
    # send the same new card at the same time.
    offset = index * (len(scenario.requests) // 2)
    return uvloop.run(_drive(scenario, offset, inflight, seconds, warmup_s))


def run_load(scenario: Scenario, *, workers: int, inflight: int, seconds: float,
             warmup_s: float = 0.5) -> Result:
    """``inflight`` calls in flight in all, shared by ``workers`` processes."""
    per_worker = max(1, inflight // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_worker, scenario, i, per_worker, seconds, warmup_s)
                   for i in range(workers)]
        parts = [f.result() for f in futures]
    latencies = sorted(x for part, _ in parts for x in part)
    errors = sum(e for _, e in parts)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return Result(
        name=scenario.name,
        calls=len(latencies),
        errors=errors,
        seconds=seconds,
        calls_per_s=len(latencies) / seconds,
        p50_ms=(statistics.median(latencies) if latencies else 0.0) * 1000,
        p99_ms=p99 * 1000,
    )
