"""The simulated bank core: the BankCore servicer and its in-memory books.

The simulator detokenizes at the vault with the bank's own credential
(issuer cardlink-bank, scope vault.tokens.detokenize) and a stated reason,
as a real bank would, and never logs a card number, identity element or
one-time code.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import grpc

from cardlink.bank.v1 import bank_core_pb2 as pb
from cardlink.bank.v1 import bank_core_pb2_grpc
from cardlink.bank.v1 import simulator_pb2 as sim
from cardlink.vault.v1 import vault_pb2
from clients.bank import BankVaultClient
from clients.banksim.behavior import Switches
from clients.banksim.cardholders import BY_PAN, CURRENCY, Cardholder, matches
from clients.banksim.once import Once
from common.clock import Clock
from common.errors import Unavailable, invalid_field

logger = logging.getLogger("cardlink.banksim")
Context = Any
R = TypeVar("R")


@dataclass
class Code:
    code: str
    phone: str
    expire: float


@dataclass
class Stats:
    verifications: int = 0
    codes_sent: int = 0
    code_checks: int = 0
    credit_decisions: int = 0
    detokenizations: int = 0


@dataclass
class Books:
    """Everything the simulated bank remembers (in memory; a restart forgets)."""

    codes: dict[str, Code] = field(default_factory=dict)  # verification id -> code
    last_code: dict[str, str] = field(default_factory=dict)  # phone -> code
    accounts: dict[str, pb.CreditAccountState] = field(default_factory=dict)
    debits: dict[str, pb.DebitResult] = field(default_factory=dict)  # key -> result
    stats: Stats = field(default_factory=Stats)


def _in_breach(reply: R) -> R:
    """``reply`` as a bank in breach of the contract sends it (MODE_MALFORMED)."""
    if isinstance(reply, pb.DecideCreditResponse) and reply.HasField("limit"):
        broken = pb.DecideCreditResponse()
        broken.CopyFrom(reply)
        broken.limit.currency_code = ""
        return cast(R, broken)
    return type(reply)()


class BankCoreServicer(bank_core_pb2_grpc.BankCoreServicer):
    def __init__(
        self,
        vault: BankVaultClient,
        switches: Switches,
        books: Books,
        clock: Clock,
        code_ttl_s: float = 300.0,
        timeout_hold_s: float = 30.0,
    ) -> None:
        self._vault = vault
        self._switches = switches
        self._books = books
        self._clock = clock
        self._code_ttl_s = code_ttl_s
        self._hold_s = timeout_hold_s
        self._once = Once()

    # --- plumbing --------------------------------------------------------

    async def _mode(self, kind: int, context: Context) -> int:
        mode = await self._switches.next(kind)
        if mode == sim.MODE_ERROR:
            await context.abort(grpc.StatusCode.INTERNAL, "simulated bank error")
        if mode == sim.MODE_UNAVAILABLE:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "simulated bank outage")
        return mode

    async def _switched_once(
        self, kind: int, name: str, idempotency_key: str, context: Context,
        work: Callable[[int], Awaitable[R]],
        hold_also: Callable[[R], Awaitable[bool]] | None = None,
    ) -> R:
        """One bank call: check its key, apply its kind's switch, do ``work(mode)``
        once per key (a repeat gets the first answer), and on a first call hold
        the answer past the caller's deadline when switched to time out (or when
        ``hold_also`` says so), as a slow bank that did the work would."""
        key = self._check_key(idempotency_key)
        mode = await self._mode(kind, context)
        replay = self._once.seen(name, key)
        reply: R = await self._once.run(name, key, lambda: work(mode))
        if not replay and (mode == sim.MODE_TIMEOUT
                           or (hold_also is not None and await hold_also(reply))):
            await self._hold(context)
        return _in_breach(reply) if mode == sim.MODE_MALFORMED else reply

    async def _hold(self, context: Context) -> None:
        """Answer only after the caller has given up (the work is already done)."""
        remaining = context.time_remaining()
        await asyncio.sleep(self._hold_s if remaining is None else remaining + 0.2)

    async def _card(self, token_name: str, reason: str) -> vault_pb2.CardSecret:
        parts = token_name.split("/")
        if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "tokens":
            raise invalid_field("card_token", "must be tenants/{t}/tokens/{token}",
                                "NAME_INVALID")
        self._books.stats.detokenizations += 1
        try:
            return (await self._vault.detokenize(token_name, reason)).card
        except Unavailable:
            raise Unavailable("VAULT_UNAVAILABLE", "the vault did not answer") from None

    @staticmethod
    def _check_key(key: str) -> str:
        if not 1 <= len(key) <= 128:
            raise invalid_field("idempotency_key", "1 to 128 characters", "KEY_INVALID")
        return key

    # --- verification and codes -----------------------------------------

    async def VerifyHolder(self, request: pb.VerifyHolderRequest,
                           context: Context) -> pb.VerifyHolderResponse:
        async def slow_holder(reply: pb.VerifyHolderResponse) -> bool:
            holder = await self._holder_of(reply)
            return holder is not None and holder.verify == "slow"

        return await self._switched_once(
            sim.CALL_KIND_VERIFY_HOLDER, "verify", request.idempotency_key, context,
            lambda mode: self._verify(request, mode), hold_also=slow_holder,
        )

    async def _holder_of(self, reply: pb.VerifyHolderResponse) -> Cardholder | None:
        code = self._books.codes.get(reply.verification_id)
        if code is None:
            return None
        return next((h for h in BY_PAN.values() if h.phone == code.phone), None)

    async def _verify(self, request: pb.VerifyHolderRequest, mode: int) -> pb.VerifyHolderResponse:
        card = await self._card(request.card_token, "holder verification")
        self._books.stats.verifications += 1
        holder = BY_PAN.get(card.pan)
        declined = pb.VerifyHolderResponse.OUTCOME_DECLINED
        if mode == sim.MODE_DECLINE:
            return pb.VerifyHolderResponse(outcome=declined, decline_reason="SIMULATED_DECLINE")
        if holder is None:
            return pb.VerifyHolderResponse(outcome=declined, decline_reason="CARD_UNKNOWN")
        if not matches(holder, card.holder_name, card.national_id, card.phone):
            return pb.VerifyHolderResponse(outcome=declined, decline_reason="HOLDER_MISMATCH")
        if holder.verify.startswith("decline:"):
            return pb.VerifyHolderResponse(outcome=declined,
                                           decline_reason=holder.verify.split(":", 1)[1])
        return self._send_code(holder)

    def _send_code(self, holder: Cardholder) -> pb.VerifyHolderResponse:
        verification_id = f"vrf_{secrets.token_hex(12)}"
        code = f"{secrets.randbelow(1_000_000):06d}"
        expire = self._clock.now() + self._code_ttl_s
        self._books.codes[verification_id] = Code(code, holder.phone, expire)
        self._books.last_code[holder.phone] = code  # "texted" to the reserved phone
        self._books.stats.codes_sent += 1
        reply = pb.VerifyHolderResponse(
            outcome=pb.VerifyHolderResponse.OUTCOME_CODE_SENT, verification_id=verification_id
        )
        reply.code_expire_time.FromNanoseconds(int(expire * 1e9))
        return reply

    async def CheckCode(self, request: pb.CheckCodeRequest,
                        context: Context) -> pb.CheckCodeResponse:
        return await self._switched_once(
            sim.CALL_KIND_CHECK_CODE, "code", request.idempotency_key, context,
            lambda mode: self._check(request, mode),
        )

    async def _check(self, request: pb.CheckCodeRequest, mode: int) -> pb.CheckCodeResponse:
        self._books.stats.code_checks += 1
        sent = self._books.codes.get(request.verification_id)
        result = pb.CheckCodeResponse
        if sent is None or self._clock.now() >= sent.expire:
            return result(result=result.RESULT_EXPIRED)
        if mode == sim.MODE_DECLINE or not hmac.compare_digest(sent.code, request.code):
            return result(result=result.RESULT_MISMATCH)
        del self._books.codes[request.verification_id]  # a code works once
        return result(result=result.RESULT_MATCH)

    # --- credit --------------------------------------------------------

    async def DecideCredit(self, request: pb.DecideCreditRequest,
                           context: Context) -> pb.DecideCreditResponse:
        return await self._switched_once(
            sim.CALL_KIND_DECIDE_CREDIT, "credit", request.idempotency_key, context,
            lambda mode: self._decide(request, mode),
        )

    async def _decide(self, request: pb.DecideCreditRequest,
                      mode: int) -> pb.DecideCreditResponse:
        card = await self._card(request.card_token, "credit decision")
        self._books.stats.credit_decisions += 1
        holder = BY_PAN.get(card.pan)
        declined = pb.DecideCreditResponse.OUTCOME_DECLINED
        if mode == sim.MODE_DECLINE:
            return pb.DecideCreditResponse(outcome=declined, decline_reason="SIMULATED_DECLINE")
        if holder is None:
            return pb.DecideCreditResponse(outcome=declined, decline_reason="CARD_UNKNOWN")
        verdict, _, rest = holder.credit.partition(":")
        if verdict == "decline":
            return pb.DecideCreditResponse(outcome=declined, decline_reason=rest)
        units, _, tier = rest.partition(":")
        account_id = f"acc_{secrets.token_hex(8)}"
        limit = pb.Money(currency_code=CURRENCY, units_minor=int(units))
        self._books.accounts[account_id] = pb.CreditAccountState(
            account_id=account_id, limit=limit
        )
        return pb.DecideCreditResponse(outcome=pb.DecideCreditResponse.OUTCOME_APPROVED,
                                       account_id=account_id, limit=limit, tier=tier)

    async def ChangeLimit(self, request: pb.ChangeLimitRequest,
                          context: Context) -> pb.CreditAccountState:
        account = self._account(request.account_id)
        account.limit.CopyFrom(request.limit)
        return account

    async def SetFrozen(self, request: pb.SetFrozenRequest,
                        context: Context) -> pb.CreditAccountState:
        account = self._account(request.account_id)
        account.frozen = request.frozen
        return account

    def _account(self, account_id: str) -> pb.CreditAccountState:
        account = self._books.accounts.get(account_id)
        if account is None:
            raise invalid_field("account_id", "unknown account", "ACCOUNT_UNKNOWN")
        return account

    # --- money placeholders (the money issues extend these) --------------

    async def Debit(self, request: pb.DebitRequest, context: Context) -> pb.DebitResult:
        key = self._check_key(request.idempotency_key)
        mode = await self._mode(sim.CALL_KIND_DEBIT, context)

        async def debit() -> pb.DebitResult:
            if mode == sim.MODE_DECLINE:
                result = pb.DebitResult(debit_id=f"dbt_{secrets.token_hex(8)}",
                                        status=pb.DebitResult.STATUS_FAILED,
                                        amount=request.amount,
                                        failure_reason="INSUFFICIENT_FUNDS")
            else:
                result = pb.DebitResult(debit_id=f"dbt_{secrets.token_hex(8)}",
                                        status=pb.DebitResult.STATUS_SUCCEEDED,
                                        amount=request.amount)
            self._books.debits[key] = result
            return result

        reply: pb.DebitResult = await self._once.run("debit", key, debit)
        return reply

    async def GetDebitStatus(self, request: pb.GetDebitStatusRequest,
                             context: Context) -> pb.DebitResult:
        await self._mode(sim.CALL_KIND_DEBIT, context)
        found = self._books.debits.get(request.idempotency_key)
        return found or pb.DebitResult(status=pb.DebitResult.STATUS_NOT_FOUND)

    async def ReverseDebit(self, request: pb.ReverseDebitRequest,
                           context: Context) -> pb.DebitResult:
        self._check_key(request.idempotency_key)
        found = self._books.debits.get(request.debit_idempotency_key)
        if found is None:
            return pb.DebitResult(status=pb.DebitResult.STATUS_NOT_FOUND)
        if found.status == pb.DebitResult.STATUS_SUCCEEDED:
            found.status = pb.DebitResult.STATUS_REVERSED
        return found

    async def ConfirmSettlement(self, request: pb.ConfirmSettlementRequest,
                                context: Context) -> pb.ConfirmSettlementResponse:
        self._check_key(request.idempotency_key)
        return pb.ConfirmSettlementResponse(
            confirmation_id=f"stl_{request.batch_id}", accepted=True
        )

    async def GetStatement(self, request: pb.GetStatementRequest,
                           context: Context) -> pb.GetStatementResponse:
        return pb.GetStatementResponse()
