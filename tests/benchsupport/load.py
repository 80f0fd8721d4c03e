"""Closed-loop load: N calls in flight for a fixed time, latencies recorded."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass


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


async def run_load(
    name: str,
    call: Callable[[int], Awaitable[object]],
    *,
    inflight: int = 64,
    seconds: float = 3.0,
    warmup_s: float = 0.5,
) -> Result:
    """Keep ``inflight`` calls running; ``call(i)`` gets a running sequence number."""
    latencies: list[float] = []
    errors = 0
    counter = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + seconds

    async def worker() -> None:
        nonlocal errors, counter
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            counter += 1
            try:
                await call(counter)
            except Exception:  # noqa: BLE001 - a failed call is counted, not fatal
                if began >= measure_from:
                    errors += 1
                continue
            if began >= measure_from:
                latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(worker() for _ in range(inflight)))
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
    return Result(
        name=name,
        calls=len(latencies),
        errors=errors,
        seconds=seconds,
        calls_per_s=len(latencies) / seconds,
        p50_ms=(statistics.median(ordered) if ordered else 0.0) * 1000,
        p99_ms=p99 * 1000,
    )
