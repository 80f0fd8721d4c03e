"""The simulator-only control service: switches, one-time codes, counters."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from cardlink.bank.v1 import simulator_pb2 as sim
from cardlink.bank.v1 import simulator_pb2_grpc
from clients.banksim.behavior import Switches
from clients.banksim.core import Books
from common.errors import NotFound, invalid_field

Context = Any


class SimulatorControlServicer(simulator_pb2_grpc.SimulatorControlServicer):
    def __init__(self, switches: Switches, books: Books) -> None:
        self._switches = switches
        self._books = books

    async def SetBehavior(self, request: sim.SetBehaviorRequest,
                          context: Context) -> empty_pb2.Empty:
        if request.kind == sim.CALL_KIND_UNSPECIFIED:
            raise invalid_field("kind", "required", "KIND_INVALID")
        latency = request.added_latency.ToNanoseconds() / 1e9
        self._switches.set(request.kind, request.mode, latency, request.times)
        return empty_pb2.Empty()

    async def ResetBehaviors(self, request: sim.ResetBehaviorsRequest,
                             context: Context) -> empty_pb2.Empty:
        self._switches.reset()
        return empty_pb2.Empty()

    async def GetLastCode(self, request: sim.GetLastCodeRequest,
                          context: Context) -> sim.GetLastCodeResponse:
        code = self._books.last_code.get(request.phone)
        if code is None:
            raise NotFound("CODE_NOT_FOUND", "no code was sent to that phone")
        return sim.GetLastCodeResponse(code=code)

    async def GetStats(self, request: sim.GetStatsRequest,
                       context: Context) -> sim.GetStatsResponse:
        s = self._books.stats
        return sim.GetStatsResponse(
            verifications=s.verifications, codes_sent=s.codes_sent, code_checks=s.code_checks,
            credit_decisions=s.credit_decisions, detokenizations=s.detokenizations,
        )
