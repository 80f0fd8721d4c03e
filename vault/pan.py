"""Cards: PAN checks, brand detection, display masking and the card-secret value.

Nothing here ever puts a PAN or identity element in an exception message:
violations name the field and the rule, never the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from common.errors import FieldViolation, InvalidArgument

PAN_MIN_DIGITS = 12
PAN_MAX_DIGITS = 19
HOLDER_NAME_MAX_CHARS = 100
NATIONAL_ID_MAX_CHARS = 32
# Expiry years further out than this are typos, not cards.
MAX_EXPIRY_YEARS_AHEAD = 50

PAN_INVALID = "PAN_INVALID"
EXPIRY_INVALID = "EXPIRY_INVALID"
CARD_EXPIRED = "CARD_EXPIRED"
HOLDER_NAME_INVALID = "HOLDER_NAME_INVALID"
NATIONAL_ID_INVALID = "NATIONAL_ID_INVALID"
PHONE_INVALID = "PHONE_INVALID"

_PAN_RE = re.compile(rf"[0-9]{{{PAN_MIN_DIGITS},{PAN_MAX_DIGITS}}}")
_NATIONAL_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9./ -]{{0,{NATIONAL_ID_MAX_CHARS - 1}}}")
_E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")


class CardBrand(Enum):
    """Card networks; names match the proto's ``CARD_BRAND_*`` suffixes."""

    UNSPECIFIED = "UNSPECIFIED"
    VISA = "VISA"
    MASTERCARD = "MASTERCARD"
    AMEX = "AMEX"
    DISCOVER = "DISCOVER"
    JCB = "JCB"
    UNIONPAY = "UNIONPAY"
    DINERS = "DINERS"
    MAESTRO = "MAESTRO"
    MIR = "MIR"


# (first prefix, last prefix, brand), all prefixes of one length per row.
# Checked longest prefix first, so a narrow range wins over a broad one
# (Discover's 6011 before UnionPay's 62, Mir's 2200 before Mastercard's 2221).
_IIN_RANGES: tuple[tuple[int, int, CardBrand], ...] = (
    (622126, 622925, CardBrand.DISCOVER),
    (2200, 2204, CardBrand.MIR),
    (2221, 2720, CardBrand.MASTERCARD),
    (3528, 3589, CardBrand.JCB),
    (3095, 3095, CardBrand.DINERS),
    (6011, 6011, CardBrand.DISCOVER),
    (5018, 5018, CardBrand.MAESTRO),
    (5020, 5020, CardBrand.MAESTRO),
    (5038, 5038, CardBrand.MAESTRO),
    (5893, 5893, CardBrand.MAESTRO),
    (6304, 6304, CardBrand.MAESTRO),
    (6759, 6759, CardBrand.MAESTRO),
    (6761, 6763, CardBrand.MAESTRO),
    (300, 305, CardBrand.DINERS),
    (644, 649, CardBrand.DISCOVER),
    (34, 34, CardBrand.AMEX),
    (37, 37, CardBrand.AMEX),
    (36, 36, CardBrand.DINERS),
    (38, 39, CardBrand.DINERS),
    (51, 55, CardBrand.MASTERCARD),
    (65, 65, CardBrand.DISCOVER),
    (62, 62, CardBrand.UNIONPAY),
    (81, 81, CardBrand.UNIONPAY),
    (4, 4, CardBrand.VISA),
)
# Every prefix each range covers, by its digits ("2221" ... "2720"): a
# lookup is one dict probe per prefix length, longest first, so a narrow
# range wins over a broad one. About 1,400 entries.
_BRAND_BY_PREFIX: dict[str, CardBrand] = {
    str(prefix): brand for low, high, brand in _IIN_RANGES for prefix in range(low, high + 1)
}
_PREFIX_WIDTHS = tuple(sorted({len(prefix) for prefix in _BRAND_BY_PREFIX}, reverse=True))
# Luhn's contribution of each digit character in an even position from the
# right (doubled, minus 9 when that exceeds 9) and in an odd one (itself).
_LUHN_DOUBLED = {str(d): 2 * d - 9 if d > 4 else 2 * d for d in range(10)}
_LUHN_PLAIN = {str(d): d for d in range(10)}


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` is ASCII digits passing the Luhn (mod 10) check."""
    if not digits.isascii() or not digits.isdigit():
        return False
    from_right = digits[::-1]
    total = sum(map(_LUHN_PLAIN.__getitem__, from_right[0::2]))
    total += sum(map(_LUHN_DOUBLED.__getitem__, from_right[1::2]))
    return total % 10 == 0


def pan_valid(pan: str) -> bool:
    """12 to 19 ASCII digits with a valid Luhn check digit."""
    return _PAN_RE.fullmatch(pan) is not None and luhn_valid(pan)


def card_brand(pan: str) -> CardBrand:
    """The network from the PAN's leading digits (IIN ranges); UNSPECIFIED if unknown."""
    for width in _PREFIX_WIDTHS:
        brand = _BRAND_BY_PREFIX.get(pan[:width]) if len(pan) >= width else None
        if brand is not None:
            return brand
    return CardBrand.UNSPECIFIED


# Digits of a PAN that display data (and reprs) never show: BIN + last four
# of a short PAN would otherwise leave one or two digits (one fixed by Luhn).
MIN_HIDDEN_DIGITS = 6
BIN_MAX_DIGITS = 6


def bin_length(pan: str) -> int:
    """Leading digits that may be shown: 6, fewer for PANs under 16 digits so
    that at least six digits (besides the last four) stay hidden."""
    return max(0, min(BIN_MAX_DIGITS, len(pan) - 4 - MIN_HIDDEN_DIGITS))


def mask_holder_name(name: str) -> str:
    """Keep each word's first character: 'John Doe' -> 'J*** D**'."""
    return " ".join(word[0] + "*" * (len(word) - 1) for word in name.split())


def mask_phone(phone: str) -> str:
    """Keep the last four digits: '+14155551234' -> '*******1234'."""
    digits = [c for c in phone if c.isdigit()]
    return "*" * (len(digits) - 4) + "".join(digits[-4:])


@dataclass(frozen=True, slots=True)
class CardDisplay:
    """What may be shown of a card: never enough to rebuild the PAN."""

    bin: str
    last_four: str
    brand: CardBrand
    expiry_month: int
    expiry_year: int
    masked_holder_name: str
    masked_phone: str


@dataclass(frozen=True, slots=True, repr=False)
class CardSecret:
    """A card in clear. Its repr never shows the PAN or an identity element."""

    pan: str
    expiry_month: int
    expiry_year: int
    holder_name: str
    national_id: str
    phone: str

    def __repr__(self) -> str:
        return (f"CardSecret(pan='{self.pan[:bin_length(self.pan)]}...{self.pan[-4:]}', "
                "<identity hidden>)")

    __str__ = __repr__

    def display(self) -> CardDisplay:
        return CardDisplay(
            bin=self.pan[:bin_length(self.pan)],
            last_four=self.pan[-4:],
            brand=card_brand(self.pan),
            expiry_month=self.expiry_month,
            expiry_year=self.expiry_year,
            masked_holder_name=mask_holder_name(self.holder_name),
            masked_phone=mask_phone(self.phone),
        )


def expiry_problem(month: int, year: int, now: float) -> tuple[str, str] | None:
    """(reason, description) when the expiry is invalid or past; None when fine.

    A card is valid through the last day of its expiry month (UTC).
    """
    today = datetime.fromtimestamp(now, UTC)
    if not 1 <= month <= 12 or not 1000 <= year <= 9999:
        return EXPIRY_INVALID, "expiry month must be 1-12 and year four digits"
    if (year, month) < (today.year, today.month):
        return CARD_EXPIRED, "the card has expired"
    if year > today.year + MAX_EXPIRY_YEARS_AHEAD:
        return EXPIRY_INVALID, "expiry year is too far in the future"
    return None


def _text_ok(value: str, limit: int) -> bool:
    return 0 < len(value) <= limit and value.strip() == value and value.isprintable()


def card_violations(card: CardSecret, now: float, *, field: str) -> list[FieldViolation]:
    """Every rule the card breaks, reported against request field ``field``.

    Descriptions name the card's inner field ('card.pan') and the rule only.
    """
    found: list[FieldViolation] = []

    def add(inner: str, description: str, reason: str) -> None:
        found.append(FieldViolation(field, f"card.{inner}: {description}", reason))

    if not pan_valid(card.pan):
        add("pan", f"must be {PAN_MIN_DIGITS}-{PAN_MAX_DIGITS} digits with a valid check digit",
            PAN_INVALID)
    problem = expiry_problem(card.expiry_month, card.expiry_year, now)
    if problem is not None:
        add("expiry", problem[1], problem[0])
    if not _text_ok(card.holder_name, HOLDER_NAME_MAX_CHARS) or not card.holder_name.split():
        add("holder_name", f"must be 1-{HOLDER_NAME_MAX_CHARS} printable characters",
            HOLDER_NAME_INVALID)
    if _NATIONAL_ID_RE.fullmatch(card.national_id) is None or card.national_id.endswith(" "):
        add("national_id", f"must be 1-{NATIONAL_ID_MAX_CHARS} letters, digits, '.', '/', '-'",
            NATIONAL_ID_INVALID)
    if _E164_RE.fullmatch(card.phone) is None:
        add("phone", "must be an E.164 number such as +14155550123", PHONE_INVALID)
    return found


def validate_card(card: CardSecret, now: float, *, field: str) -> CardSecret:
    """Return ``card`` if it breaks no rule; raise INVALID_ARGUMENT listing all otherwise."""
    violations = card_violations(card, now, field=field)
    if violations:
        first = violations[0]
        raise InvalidArgument(first.reason, f"invalid {field}: {first.description}",
                              violations=violations)
    return card
