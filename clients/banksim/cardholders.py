"""The simulator's documented test cardholders (README, "Test cards").

Every holder below: expiry any future date. VerifyHolder / DecideCredit:

- 4111 1111 1111 1111, Alice Approved, ID-ALICE-0001, +15550100001:
  code sent / approved, EUR 5000.00, tier A.
- 5200 8282 8282 8210, Erin Tierb, ID-ERIN-0005, +15550100005:
  code sent / approved, EUR 1000.00, tier B.
- 4000 0000 0000 0002, Carol Nocredit, ID-CAROL-0003, +15550100003:
  code sent / declined INSUFFICIENT_CREDIT_HISTORY.
- 5555 5555 5555 4444, Bob Blocked, ID-BOB-0002, +15550100002:
  declined CARD_BLOCKED.
- 4000 0000 0000 0119, Dave Slowbank, ID-DAVE-0004, +15550100004:
  verifies and sends a code, but the first answer per idempotency key comes
  after the caller's deadline (a retry with the same key gets it at once) /
  approved, EUR 2000.00, tier A.

Any other card is declined with CARD_UNKNOWN; a known card whose sealed name,
national ID or phone differ from the table is declined with HOLDER_MISMATCH.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cardholder:
    pan: str
    holder_name: str
    national_id: str
    phone: str
    verify: str  # "ok", "decline:<REASON>", "slow"
    credit: str  # "approve:<units_minor>:<tier>" or "decline:<REASON>"


CARDHOLDERS: tuple[Cardholder, ...] = (
    Cardholder("4111111111111111", "Alice Approved", "ID-ALICE-0001", "+15550100001",
               "ok", "approve:500000:A"),
    Cardholder("5200828282828210", "Erin Tierb", "ID-ERIN-0005", "+15550100005",
               "ok", "approve:100000:B"),
    Cardholder("4000000000000002", "Carol Nocredit", "ID-CAROL-0003", "+15550100003",
               "ok", "decline:INSUFFICIENT_CREDIT_HISTORY"),
    Cardholder("5555555555554444", "Bob Blocked", "ID-BOB-0002", "+15550100002",
               "decline:CARD_BLOCKED", "decline:CARD_BLOCKED"),
    Cardholder("4000000000000119", "Dave Slowbank", "ID-DAVE-0004", "+15550100004",
               "slow", "approve:200000:A"),
)
CURRENCY = "EUR"

BY_PAN = {c.pan: c for c in CARDHOLDERS}


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def matches(holder: Cardholder, name: str, national_id: str, phone: str) -> bool:
    return (
        _normal(holder.holder_name) == _normal(name)
        and holder.national_id == national_id.strip()
        and holder.phone == phone.strip()
    )
