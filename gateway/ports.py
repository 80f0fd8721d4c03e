"""What the domain needs from the vault and the bank core, as plain types.

The gRPC adapters (``vault_connector``, ``bank_connector``) implement these;
the domain never sees a stub, a channel or a status code. Adapters raise
``common.errors`` classes: ``Unavailable`` (reason BANK_UNAVAILABLE /
VAULT_UNAVAILABLE) when the outcome is unknown and a retry with the same
idempotency key will resolve it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from gateway.models import CardDisplay, Money


@dataclass(frozen=True)
class TokenizedCard:
    """The vault's answer to a sealed card: the token's resource name and display data."""

    token_name: str  # tenants/{t}/tokens/{token}
    display: CardDisplay

    @property
    def token(self) -> str:
        return self.token_name.rsplit("/", 1)[-1]


class Vault(Protocol):
    async def tokenize(
        self, tenant: str, key_id: str, ciphertext: bytes, request_id: str
    ) -> TokenizedCard:
        """Swap sealed bytes for a token; the gateway never opens them."""
        ...


@dataclass(frozen=True)
class Verification:
    code_sent: bool
    verification_id: str
    decline_reason: str


class CodeResult(Enum):
    MATCH = "MATCH"
    MISMATCH = "MISMATCH"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class CreditDecision:
    approved: bool
    account_id: str
    limit: Money | None
    tier: str
    decline_reason: str


class Bank(Protocol):
    async def verify_holder(self, card_token: str, user: str, key: str) -> Verification:
        """Verify the holder's elements and send a code; done once per ``key``."""
        ...

    async def check_code(
        self, tenant: str, verification_id: str, code: str, key: str
    ) -> CodeResult:
        """Check a one-time code; done once per ``key``."""
        ...

    async def decide_credit(self, card_token: str, user: str, key: str) -> CreditDecision:
        """Decide a credit application; decided once per ``key``."""
        ...
