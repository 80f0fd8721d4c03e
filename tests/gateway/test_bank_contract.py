"""The gateway's bank port against answers that break the bank contract.

A scripted BankCore serves on loopback (real gRPC) and answers DecideCredit
with exactly the reply a test gives it, so each breach is tried on its own:
an approval must carry a positive limit in a valid currency and an account,
or it is the bank's error (INTERNAL BANK_PROTOCOL, no field violations: the
caller sent nothing wrong), never a credit line nor the caller's
INVALID_ARGUMENT. A refusal (any error status) is no verdict on the
partner's request either: UNAVAILABLE BANK_UNAVAILABLE, retried under the
same key, with none of the bank's text. A decline reason that is not a
stable code reads DECLINED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from cardlink.bank.v1 import bank_core_pb2 as pb
from common.errors import Internal, Unavailable
from gateway.bank_connector import GrpcBank
from gateway.connectors import CallPolicy
from gateway.models import Money

USER = "tenants/acme/users/u-1"
PAN = "4111111111111111"


@dataclass
class ScriptedBank:
    """Answers every DecideCredit with ``reply``; keeps the requests it got.
    (No other method: the port is asked for a decision only.)"""

    reply: pb.DecideCreditResponse = field(default_factory=pb.DecideCreditResponse)
    refusal: grpc.StatusCode | None = None  # answer with this status instead
    requests: list[pb.DecideCreditRequest] = field(default_factory=list)
    metadata: list[dict[str, str | bytes]] = field(default_factory=list)

    async def DecideCredit(self, request: pb.DecideCreditRequest,
                           context: grpc.aio.ServicerContext[object, object]
                           ) -> pb.DecideCreditResponse:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata() or ()))
        if self.refusal is not None:
            await context.abort(self.refusal, f"card {PAN} is restricted")
        return self.reply


@pytest.fixture
async def bank() -> AsyncIterator[tuple[ScriptedBank, GrpcBank]]:
    scripted = ScriptedBank()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        pb.DESCRIPTOR.services_by_name["BankCore"].full_name,
        {"DecideCredit": grpc.unary_unary_rpc_method_handler(
            scripted.DecideCredit, request_deserializer=pb.DecideCreditRequest.FromString,
            response_serializer=pb.DecideCreditResponse.SerializeToString)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield scripted, GrpcBank(channel, lambda tenant: (("tenant", tenant),),
                                     CallPolicy(deadline_s=2.0, attempts=1))
    finally:
        await server.stop(None)


def approval(currency: str = "EUR", units: int = 50_000,
             account: str = "acct-1") -> pb.DecideCreditResponse:
    return pb.DecideCreditResponse(
        outcome=pb.DecideCreditResponse.OUTCOME_APPROVED, account_id=account,
        limit=pb.Money(currency_code=currency, units_minor=units), tier="standard")


async def test_a_well_formed_approval_and_decline_come_through(
        bank: tuple[ScriptedBank, GrpcBank]) -> None:
    scripted, port = bank
    scripted.reply = approval()
    decision = await port.decide_credit("ctk_x", USER, "key-1")
    assert decision.approved and decision.account_id == "acct-1"
    assert decision.limit == Money("EUR", 50_000) and decision.tier == "standard"
    asked = scripted.requests[-1]
    assert (asked.card_token, asked.user, asked.idempotency_key) == ("ctk_x", USER, "key-1")
    assert scripted.metadata[-1]["tenant"] == "acme"  # the card's tenant's credential

    scripted.reply = pb.DecideCreditResponse(outcome=pb.DecideCreditResponse.OUTCOME_DECLINED,
                                             decline_reason="LOW_SCORE")
    declined = await port.decide_credit("ctk_x", USER, "key-2")
    assert not declined.approved and declined.decline_reason == "LOW_SCORE"
    assert declined.limit is None

    scripted.reply = pb.DecideCreditResponse(outcome=pb.DecideCreditResponse.OUTCOME_DECLINED)
    unexplained = await port.decide_credit("ctk_x", USER, "key-3")
    assert not unexplained.approved and unexplained.decline_reason == "DECLINED"


@pytest.mark.parametrize("reply", [
    approval(units=0),  # a zero limit
    approval(units=-100),  # a negative one
    approval(currency=""),  # no currency
    approval(currency="eur"),  # not ISO 4217
    approval(account=""),  # no account to book against
    pb.DecideCreditResponse(outcome=pb.DecideCreditResponse.OUTCOME_APPROVED,
                            account_id="acct-1", tier="standard"),  # no limit at all
    pb.DecideCreditResponse(),  # no outcome
], ids=["zero-limit", "negative-limit", "no-currency", "bad-currency", "no-account",
        "no-limit", "no-outcome"])
async def test_an_approval_in_breach_of_the_contract_is_the_bank_s_error(
        bank: tuple[ScriptedBank, GrpcBank], reply: pb.DecideCreditResponse) -> None:
    scripted, port = bank
    scripted.reply = reply
    with pytest.raises(Internal) as raised:
        await port.decide_credit("ctk_x", USER, "key-1")
    assert raised.value.reason == "BANK_PROTOCOL"
    assert not raised.value.violations


@pytest.mark.parametrize("status", [
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE,
], ids=lambda status: status.name)
async def test_a_bank_refusal_is_bank_unavailable_without_the_bank_s_text(
        bank: tuple[ScriptedBank, GrpcBank], status: grpc.StatusCode) -> None:
    """Passed through, it read as the partner's own error (with the bank's
    message, here a PAN), was stored as the request's final answer, and left
    the line APPLIED for good under that request id."""
    scripted, port = bank
    scripted.refusal = status
    with pytest.raises(Unavailable) as raised:
        await port.decide_credit("ctk_x", USER, "key-1")
    assert raised.value.reason == "BANK_UNAVAILABLE"
    assert raised.value.metadata == {"cause": "error", "status": status.name}
    assert PAN not in str(raised.value) and "restricted" not in raised.value.message


async def test_a_refused_gateway_credential_is_the_gateway_s_fault(
        bank: tuple[ScriptedBank, GrpcBank]) -> None:
    scripted, port = bank
    scripted.refusal = grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(Internal) as raised:
        await port.decide_credit("ctk_x", USER, "key-1")
    assert raised.value.reason == "BANK_AUTH_FAILED"


@pytest.mark.parametrize("reason", [
    f"card {PAN} is over its limit",  # free text, with a PAN in it
    f"CLOSED_{PAN}",  # the code's spelling, a PAN all the same
    "CLOSED_4111_1111_1111_1111",  # split up by the one separator a code allows
    "low score",
    "X" * 65,
])
async def test_a_decline_reason_that_is_no_stable_code_reads_declined(
        bank: tuple[ScriptedBank, GrpcBank], reason: str) -> None:
    """The reason is stored on the line and shown to the partner: the decline
    stands, the bank's free text goes nowhere."""
    scripted, port = bank
    scripted.reply = pb.DecideCreditResponse(outcome=pb.DecideCreditResponse.OUTCOME_DECLINED,
                                             decline_reason=reason)
    declined = await port.decide_credit("ctk_x", USER, "key-1")
    assert not declined.approved and declined.decline_reason == "DECLINED"
