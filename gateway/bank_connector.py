"""The bank port over the cardlink.bank.v1 contract.

Every call carries an idempotency key (the bank does the work once per key),
a deadline, and the gateway's JWT for the tenant of the card. A call whose
outcome is unknown raises ``Unavailable("BANK_UNAVAILABLE")``; the domain
leaves its record retryable and the next try reuses the key.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from cardlink.bank.v1 import bank_core_pb2 as pb
from cardlink.bank.v1 import bank_core_pb2_grpc
from common.errors import Internal, InvalidArgument
from gateway.connectors import CallPolicy, call_with_policy
from gateway.models import Money, is_stable_reason
from gateway.ports import CodeResult, CreditDecision, Verification

Metadata = tuple[tuple[str, str], ...]
REASON = "BANK_UNAVAILABLE"
logger = logging.getLogger("cardlink.gateway.bank")

R = TypeVar("R")


def _decline_reason(reason: str) -> str:
    """The bank's decline reason if it is the stable code the contract asks
    for; DECLINED otherwise (free text is stored and shown to the partner,
    and could carry a PAN). The decision itself stands."""
    if is_stable_reason(reason):
        return reason
    if reason:
        logger.warning("the bank's decline reason is no stable code; recorded as DECLINED")
    return "DECLINED"


def tenant_of(resource_name: str) -> str:
    return resource_name.split("/")[1]


class GrpcBank:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        credentials: Callable[[str], Metadata],
        policy: CallPolicy,
    ) -> None:
        self._stub = bank_core_pb2_grpc.BankCoreStub(channel)
        self._credentials = credentials
        self._policy = policy

    async def _call(self, tenant: str, rpc: Callable[..., Awaitable[R]], request: Any) -> R:
        """One bank call as the tenant's gateway identity, under the call policy."""
        metadata = self._credentials(tenant)
        # A bank refusal is no verdict on the partner's request (it sent none
        # of this one): an error of ours or the bank's, retried under the key.
        return await call_with_policy(
            "bank", REASON, self._policy,
            lambda timeout: rpc(request, timeout=timeout, metadata=metadata),
            pass_refusals=False,
        )

    async def verify_holder(self, card_token: str, user: str, key: str) -> Verification:
        request = pb.VerifyHolderRequest(card_token=card_token, user=user, idempotency_key=key)
        reply = await self._call(tenant_of(user), self._stub.VerifyHolder, request)
        if reply.outcome == pb.VerifyHolderResponse.OUTCOME_CODE_SENT:
            return Verification(True, reply.verification_id, "")
        if reply.outcome == pb.VerifyHolderResponse.OUTCOME_DECLINED:
            return Verification(False, "", _decline_reason(reply.decline_reason))
        raise Internal("BANK_PROTOCOL", "the bank answered VerifyHolder without an outcome")

    async def check_code(
        self, tenant: str, verification_id: str, code: str, key: str
    ) -> CodeResult:
        request = pb.CheckCodeRequest(verification_id=verification_id, code=code,
                                      idempotency_key=key)
        reply = await self._call(tenant, self._stub.CheckCode, request)
        results = {
            pb.CheckCodeResponse.RESULT_MATCH: CodeResult.MATCH,
            pb.CheckCodeResponse.RESULT_MISMATCH: CodeResult.MISMATCH,
            pb.CheckCodeResponse.RESULT_EXPIRED: CodeResult.EXPIRED,
        }
        if reply.result not in results:
            raise Internal("BANK_PROTOCOL", "the bank answered CheckCode without a result")
        return results[reply.result]

    async def decide_credit(self, card_token: str, user: str, key: str) -> CreditDecision:
        request = pb.DecideCreditRequest(card_token=card_token, user=user, idempotency_key=key)
        reply = await self._call(tenant_of(user), self._stub.DecideCredit, request)
        if reply.outcome == pb.DecideCreditResponse.OUTCOME_APPROVED:
            try:
                limit = Money.parse(reply.limit.currency_code, reply.limit.units_minor, "limit")
            except InvalidArgument:  # the bank's fault, not the caller's: nothing is stored
                limit = None
            if limit is None or limit.units_minor == 0 or not reply.account_id:
                raise Internal("BANK_PROTOCOL", "the bank approved without a valid limit "
                               "and account")
            return CreditDecision(True, reply.account_id, limit, reply.tier, "")
        if reply.outcome == pb.DecideCreditResponse.OUTCOME_DECLINED:
            return CreditDecision(False, "", None, "", _decline_reason(reply.decline_reason))
        raise Internal("BANK_PROTOCOL", "the bank answered DecideCredit without an outcome")
