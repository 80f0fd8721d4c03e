"""Tokens and resource names: `ctk_` tokens, `tenants/{tenant}/tokens/{token}`.

A token is 16 random bytes from ``secrets`` in lowercase base32: it carries
nothing about the PAN, and its `ctk_` prefix means it is never all digits,
so it can never pass for (or Luhn-check as) a card number.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from common.errors import invalid_field
from common.tenants import TENANT_PATTERN

TOKEN_PREFIX = "ctk_"  # noqa: S105 (a format prefix, not a secret)
TOKEN_RANDOM_BYTES = 16
# 26 base32 characters carry 130 bits for 128 random ones: the last
# character's two low bits are zero, so it is one of a, e, i, m, q, u, y, 4.
# One canonical spelling per token; checked by the pattern alone, no decoding.
TOKEN_PATTERN = TOKEN_PREFIX + r"[a-z2-7]{25}[aeimquy4]"

TENANT_INVALID = "TENANT_INVALID"
TOKEN_NAME_INVALID = "TOKEN_NAME_INVALID"  # noqa: S105 (an error reason)

_TENANT_RE = re.compile(TENANT_PATTERN)
_TOKEN_RE = re.compile(TOKEN_PATTERN)
_PARENT_RE = re.compile(rf"tenants/({TENANT_PATTERN})")
_NAME_RE = re.compile(rf"tenants/({TENANT_PATTERN})/tokens/({TOKEN_PATTERN})")


# Lowercase RFC 4648 base32, ten bits (two characters) at a time.
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
_BASE32_PAIRS = tuple(a + b for a in _BASE32 for b in _BASE32)
# 128 random bits and two zero bits of padding make 13 pairs, first pair first.
_PAIR_SHIFTS = tuple(range(120, -1, -10))


def new_token() -> str:
    """A fresh random token: `ctk_` + 26 lowercase base32 characters."""
    return TOKEN_PREFIX + base32_lower(secrets.token_bytes(TOKEN_RANDOM_BYTES))


def base32_lower(raw: bytes) -> str:
    """16 bytes as base64.b32encode spells them, lowercase, without padding.

    Spelled out here because base64's encoder is pure Python on 3.11 and
    about half of a token's cost.
    """
    if len(raw) != TOKEN_RANDOM_BYTES:
        raise ValueError(f"a token carries {TOKEN_RANDOM_BYTES} bytes")
    bits = int.from_bytes(raw) << 2
    return "".join([_BASE32_PAIRS[(bits >> shift) & 1023] for shift in _PAIR_SHIFTS])


def is_token(value: str) -> bool:
    """True for a well-formed token in its one canonical spelling."""
    return _TOKEN_RE.fullmatch(value) is not None


def is_tenant(value: str) -> bool:
    return _TENANT_RE.fullmatch(value) is not None


def tenant_name(tenant: str) -> str:
    return f"tenants/{tenant}"


def token_name(tenant: str, token: str) -> str:
    return f"tenants/{tenant}/tokens/{token}"


@dataclass(frozen=True, slots=True)
class TokenName:
    """A parsed `tenants/{tenant}/tokens/{token}`."""

    tenant: str
    token: str

    def __str__(self) -> str:
        return token_name(self.tenant, self.token)


def parse_parent(parent: str, *, field: str = "parent") -> str:
    """The tenant id of `tenants/{tenant}`; INVALID_ARGUMENT otherwise."""
    match = _PARENT_RE.fullmatch(parent)
    if match is None:
        raise invalid_field(field, "must be tenants/{tenant}", TENANT_INVALID)
    return match.group(1)


def parse_token_name(name: str, *, field: str = "name") -> TokenName:
    """Parse `tenants/{tenant}/tokens/{token}`; INVALID_ARGUMENT otherwise."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        raise invalid_field(field, "must be tenants/{tenant}/tokens/ctk_...", TOKEN_NAME_INVALID)
    return TokenName(match.group(1), match.group(2))


def check_tenant(tenant: str, *, field: str) -> str:
    if not is_tenant(tenant):
        raise invalid_field(field, "tenant id must match " + TENANT_PATTERN, TENANT_INVALID)
    return tenant


def check_token(token: str, *, field: str) -> str:
    if not is_token(token):
        raise invalid_field(field, "token must be ctk_ and 26 base32 characters",
                            TOKEN_NAME_INVALID)
    return token
