"""The gateway's Redis key names (docs/ARCHITECTURE.md, Redis keys).

Everything one atomic script touches shares a hash tag, so Redis Cluster
keeps it on one slot:

- ``{p}:gw:{t/u}:...``  one user of one tenant: bindings, the binding index,
  the per-card pointers, lockouts, credit lines. Scripts on one user's
  bindings and credit lines are atomic together.
- ``{p}:gw:{t/card/<token>}:...``  one card of one tenant: which user holds
  it, binding attempts per window. Card ownership spans users, so it lives on
  its own slot and is changed by compare-and-set scripts.
- ``{p}:gw:{t/idem/<request id>}:<method>``  idempotency records, spread over
  slots by request id (one tenant's traffic is not one hot slot).

Ids reaching here are validated (``names.ID_RE``, vault token syntax), so no
brace can end a hash tag early.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.names import UserName


@dataclass(frozen=True)
class UserKeys:
    """Keys of one user (one hash slot)."""

    base: str

    def binding(self, binding_id: str) -> str:
        return f"{self.base}:b:{binding_id}"

    @property
    def binding_prefix(self) -> str:
        return f"{self.base}:b:"

    @property
    def binding_index(self) -> str:
        return f"{self.base}:bidx"

    @property
    def live_bindings(self) -> str:
        return f"{self.base}:blive"

    @property
    def sequence(self) -> str:
        return f"{self.base}:seq"

    def card_binding(self, token: str) -> str:
        return f"{self.base}:bcard:{token}"

    def lockout(self, token: str) -> str:
        return f"{self.base}:lock:{token}"

    def credit_line(self, line_id: str) -> str:
        return f"{self.base}:cl:{line_id}"

    @property
    def credit_line_prefix(self) -> str:
        return f"{self.base}:cl:"

    @property
    def open_credit_line(self) -> str:
        return f"{self.base}:clopen"


@dataclass(frozen=True)
class CardKeys:
    """Keys of one card of one tenant (one hash slot)."""

    base: str

    @property
    def owner(self) -> str:
        return f"{self.base}:owner"

    def attempts(self, window: int) -> str:
        return f"{self.base}:att:{window}"


@dataclass(frozen=True)
class Keyspace:
    """Builds key names under ``{prefix}:gw``."""

    prefix: str

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{}"):
            raise ValueError("the Redis prefix must be non-empty and free of braces")

    def user(self, user: UserName) -> UserKeys:
        return UserKeys(f"{self.prefix}:gw:{{{user.tenant}/{user.user}}}")

    def card(self, tenant: str, token: str) -> CardKeys:
        return CardKeys(f"{self.prefix}:gw:{{{tenant}/card/{token}}}")

    def idempotency(self, tenant: str, method: str, request_id: str) -> str:
        return f"{self.prefix}:gw:{{{tenant}/idem/{request_id}}}:{method}"

    @property
    def pattern(self) -> str:
        """Glob matching every gateway key (for scans in tests and tools)."""
        return f"{self.prefix}:gw:*"
