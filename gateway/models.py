"""Domain types of the gateway (no protobuf, no grpc)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from common.errors import invalid_field

_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_STABLE_REASON_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


# A code with this many digits, however they are split up, could spell a PAN.
_MAX_REASON_DIGITS = 11


def is_stable_reason(text: str) -> bool:
    """A reason code as the bank contract spells it: 1-64 of A-Z, 0-9 and _,
    starting with a letter, and too few digits to hold a card number. Reasons
    are stored, logged and shown to partners, so free text never passes."""
    return (_STABLE_REASON_RE.fullmatch(text) is not None
            and sum(c.isdigit() for c in text) <= _MAX_REASON_DIGITS)


@dataclass(frozen=True)
class Money:
    """Integer minor units of an ISO 4217 currency; never a float."""

    currency_code: str
    units_minor: int

    @classmethod
    def parse(cls, currency_code: str, units_minor: int, field: str) -> Money:
        if not _CURRENCY_RE.fullmatch(currency_code):
            raise invalid_field(f"{field}.currency_code", "must be ISO 4217", "CURRENCY_INVALID")
        if units_minor < 0:
            raise invalid_field(f"{field}.units_minor", "must not be negative", "AMOUNT_INVALID")
        return cls(currency_code, units_minor)


class BindingState(StrEnum):
    PENDING_VERIFICATION = "PENDING_VERIFICATION"
    PENDING_CODE = "PENDING_CODE"
    ACTIVE = "ACTIVE"
    UNBOUND = "UNBOUND"
    FAILED = "FAILED"


LIVE_BINDING_STATES = frozenset(
    {BindingState.PENDING_VERIFICATION, BindingState.PENDING_CODE, BindingState.ACTIVE}
)


@dataclass(frozen=True)
class Consent:
    """Which terms the user accepted, when (epoch seconds) and where."""

    terms_id: str
    terms_version: str
    accept_time: float
    channel: str


@dataclass(frozen=True)
class CardDisplay:
    """What may be shown of a card (as the vault returns it); never the PAN."""

    bin: str
    last_four: str
    brand: int
    expiry_month: int
    expiry_year: int
    masked_holder_name: str
    masked_phone: str


@dataclass(frozen=True)
class Binding:
    name: str
    state: BindingState
    card: CardDisplay
    consent: Consent
    failure_reason: str
    code_expire_time: float | None
    code_attempts_left: int
    create_time: float
    update_time: float


class CreditLineState(StrEnum):
    APPLIED = "APPLIED"
    ACTIVE = "ACTIVE"
    DECLINED = "DECLINED"
    FROZEN = "FROZEN"
    CLOSED = "CLOSED"


@dataclass(frozen=True)
class CreditLine:
    name: str
    binding: str
    state: CreditLineState
    currency_code: str
    limit: int
    held: int
    outstanding: int
    tier: str
    decline_reason: str
    create_time: float
    update_time: float

    @property
    def available(self) -> int:
        """What can be spent now: nothing unless the line is active, and a limit
        cut below usage leaves nothing, never a negative."""
        if self.state is not CreditLineState.ACTIVE:
            return 0
        return max(0, self.limit - self.held - self.outstanding)
