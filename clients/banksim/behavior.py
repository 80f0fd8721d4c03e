"""Per-call-kind switches: decline, added latency, error, timeout, unavailable."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cardlink.bank.v1 import simulator_pb2 as sim


@dataclass
class Behavior:
    mode: int = sim.MODE_NORMAL
    latency_s: float = 0.0
    times: int = 0  # 0: until changed


class Switches:
    def __init__(self) -> None:
        self._by_kind: dict[int, Behavior] = {}

    def set(self, kind: int, mode: int, latency_s: float, times: int) -> None:
        self._by_kind[kind] = Behavior(mode or sim.MODE_NORMAL, latency_s, times)

    def reset(self) -> None:
        self._by_kind.clear()

    async def next(self, kind: int) -> int:
        """The mode for this call (after its added latency); counts down ``times``."""
        behavior = self._by_kind.get(kind)
        if behavior is None:
            return sim.MODE_NORMAL
        if behavior.times > 0:
            behavior.times -= 1
            if behavior.times == 0:
                del self._by_kind[kind]
        if behavior.latency_s > 0:
            await asyncio.sleep(behavior.latency_s)
        return behavior.mode
