"""Credit lines: applied -> active (approved: limit, tier) | declined; active <-> frozen;
closed (by the bank, only with nothing held or outstanding).

The bank decides. A bank that is down or slow leaves the line APPLIED and
raises UNAVAILABLE; activating again (same request id, or a new one on the
same binding) resumes the same line with the same bank idempotency key, so
the bank decides once and no second line appears.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from common.clock import Clock
from common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    invalid_field,
)
from gateway.binding import BindingService, bank_key
from gateway.credit_store import BankEvent, CreditStore
from gateway.idempotency import Codec, IdempotencyStore, fingerprint
from gateway.models import CreditLine, CreditLineState, Money
from gateway.names import ChildName, UserName, credit_line_name, derived_id
from gateway.ports import Bank
from gateway.serialization import credit_line_codec

logger = logging.getLogger("cardlink.gateway.credit")

# Sequences are compared in Redis's Lua, whose numbers are doubles: exact to 2**53.
MAX_EVENT_SEQUENCE = 2**53 - 1
EVENT_SEQUENCE_FIELD = "event_sequence"


def check_event_sequence(sequence: int) -> int:
    """A bank event's sequence: 1 to 2**53 - 1; INVALID_ARGUMENT otherwise."""
    if not 1 <= sequence <= MAX_EVENT_SEQUENCE:
        raise invalid_field(EVENT_SEQUENCE_FIELD, f"must be 1 to {MAX_EVENT_SEQUENCE}",
                            "EVENT_SEQUENCE_INVALID")
    return sequence


class CreditService:
    def __init__(
        self,
        store: CreditStore,
        bindings: BindingService,
        idempotency: IdempotencyStore,
        bank: Bank,
        clock: Clock,
    ) -> None:
        self._store = store
        self._bindings = bindings
        self._idem = idempotency
        self._bank = bank
        self._clock = clock
        self._codec: Codec[CreditLine] = credit_line_codec()

    async def activate(self, user: UserName, binding: ChildName, request_id: str) -> CreditLine:
        if binding.parent != user:
            raise invalid_field("binding", "not a binding of the parent user",
                                "BINDING_OF_OTHER_USER")
        return await self._idem.run(
            user.tenant, "ActivateCreditLine", request_id, fingerprint(str(user), str(binding)),
            lambda: self._activate(user, binding, request_id), self._codec,
        )

    async def _activate(self, user: UserName, binding: ChildName, request_id: str) -> CreditLine:
        token_name = await self._bindings.active_card(binding)
        name = credit_line_name(user, derived_id("cln", str(user), request_id))
        status, line_id = await self._store.open(name, binding, token_name, self._clock.now())
        if status == "BINDING":
            raise FailedPrecondition("BINDING_NOT_ACTIVE", "the binding is not active")
        line_name = credit_line_name(user, line_id)
        if status == "EXISTS":
            raise AlreadyExists("CREDIT_LINE_EXISTS", "the user already has an open credit line",
                                metadata={"credit_line": str(line_name)})
        line, _ = await self._require(line_name)
        if line.state is CreditLineState.APPLIED:
            await self._decide(line_name, token_name)
        return (await self._require(line_name))[0]

    async def _decide(self, name: ChildName, token_name: str) -> None:
        # Keyed by the line: every resume of this application asks the same question.
        decision = await self._bank.decide_credit(
            token_name, str(name.parent), bank_key("credit", str(name))
        )
        now = self._clock.now()
        if decision.approved and decision.limit is not None:
            await self._store.approve(name, now, decision.limit, decision.tier,
                                      decision.account_id)
        else:
            await self._store.decline(name, now, decision.decline_reason or "DECLINED")
            logger.info("credit line %s declined: %s", name, decision.decline_reason)

    async def get(self, name: ChildName) -> CreditLine:
        return (await self._require(name))[0]

    async def _require(self, name: ChildName) -> tuple[CreditLine, str]:
        found = await self._store.load(name)
        if found is None:
            raise NotFound("CREDIT_LINE_NOT_FOUND", "credit line not found")
        return found

    # --- the bank's own events -------------------------------------------
    # Each carries the bank's sequence: events of one kind (limit; status:
    # freeze, unfreeze, close) apply in that order whatever order they arrive
    # in, so a retry that lands after a later event cannot undo it.

    async def _bank_event(self, name: ChildName, method: str, request_id: str, sequence: int,
                          fields: tuple[object, ...],
                          apply: Callable[[BankEvent], Awaitable[CreditLine]]) -> CreditLine:
        """Run ``apply`` once per request id; the event it gets names this very
        event (method, request id and request), so the line can tell its retry
        from another event that reuses its ids."""
        check_event_sequence(sequence)
        request = fingerprint(str(name), *fields, sequence)
        event = BankEvent(sequence, fingerprint(method, request_id, request))
        return await self._idem.run(name.tenant, method, request_id, request,
                                    lambda: apply(event), self._codec)

    async def change_limit(self, name: ChildName, limit: Money, sequence: int,
                           request_id: str) -> CreditLine:
        return await self._bank_event(
            name, "ChangeCreditLimit", request_id, sequence,
            (limit.currency_code, limit.units_minor),
            lambda event: self._change_limit(name, limit, event))

    async def _change_limit(self, name: ChildName, limit: Money, event: BankEvent) -> CreditLine:
        status, value = await self._store.change_limit(name, self._clock.now(), limit, event)
        self._check(status, value)
        if status == "CURRENCY":
            raise InvalidArgument("CURRENCY_MISMATCH", "the limit must be in the line's currency",
                                  metadata={"currency_code": value}, violations=[FieldViolation(
                                      "limit.currency_code", f"must be {value}, the line's",
                                      "CURRENCY_MISMATCH")])
        return await self.get(name)

    async def set_frozen(self, name: ChildName, frozen: bool, sequence: int, request_id: str,
                         reason: str = "") -> CreditLine:
        """Freeze (with the bank's ``reason`` code) or unfreeze."""
        return await self._bank_event(
            name, "FreezeCreditLine" if frozen else "UnfreezeCreditLine", request_id, sequence,
            (frozen, reason), lambda event: self._set_frozen(name, frozen, reason, event))

    async def _set_frozen(self, name: ChildName, frozen: bool, reason: str,
                          event: BankEvent) -> CreditLine:
        active, frozen_state = CreditLineState.ACTIVE, CreditLineState.FROZEN
        source, target = (active, frozen_state) if frozen else (frozen_state, active)
        status, value = await self._store.set_state(name, self._clock.now(), source, target,
                                                    event)
        self._check(status, value)
        if value == "CHANGED":  # this call moved it (not one before)
            logger.info("credit line %s %s by the bank%s", name,
                        "frozen" if frozen else "unfrozen", f": {reason}" if reason else "")
        return await self.get(name)

    async def close(self, name: ChildName, reason: str, sequence: int,
                    request_id: str) -> CreditLine:
        return await self._bank_event(name, "CloseCreditLine", request_id, sequence, (reason,),
                                      lambda event: self._close(name, reason, event))

    async def _close(self, name: ChildName, reason: str, event: BankEvent) -> CreditLine:
        status, value = await self._store.close(name, self._clock.now(), event)
        if status == "IN_USE":
            # As the script saw them: the refusal is the event's answer and is replayed.
            held, outstanding = value.split("/")
            raise FailedPrecondition(
                "CREDIT_LINE_IN_USE", "money is held or outstanding on the credit line",
                metadata={"held_minor": held, "outstanding_minor": outstanding})
        self._check(status, value)
        if value == "CLOSED":  # this call closed it (not one before)
            logger.info("credit line %s closed by the bank: %s", name, reason)
        return await self.get(name)

    @staticmethod
    def _check(status: str, value: str) -> None:
        if status == "NOT_FOUND":
            raise NotFound("CREDIT_LINE_NOT_FOUND", "credit line not found")
        if status == "SUPERSEDED":
            # Definite: stored as the event's answer. A later event of the bank
            # decides the line now (this one may have applied before it did).
            raise FailedPrecondition(
                "BANK_EVENT_SUPERSEDED", "a later event of this kind from the bank was "
                "applied to the credit line already", metadata={"applied_sequence": value})
        if status == "STATE" and value == CreditLineState.APPLIED.value:
            # The bank's decision is not recorded yet (a DecideCredit timeout): the
            # bank's event must be retried once the line is decided, so the refusal
            # is ABORTED - retryable, never stored as the request's answer.
            raise Aborted("CREDIT_LINE_STATE", "the credit line awaits the bank's decision; "
                          "retry", metadata={"state": value})
        if status == "STATE":
            raise FailedPrecondition("CREDIT_LINE_STATE", "the credit line is not in a state "
                                     "that allows this", metadata={"state": value})
