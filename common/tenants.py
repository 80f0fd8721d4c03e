"""Tenant ids: one alphabet for the JWT claim, the gateway's names and the vault's.

Tenants end up in resource names and in Redis hash tags, so the alphabet is
plain (AIP-122 style: lowercase letters, digits, hyphens): no braces, colons
or slashes can reach a key, and no id is accepted by one part and refused by
another.
"""

from __future__ import annotations

import re

TENANT_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
TENANT_RULE = "1-63 of a-z 0-9 -, not starting with -"
_TENANT_RE = re.compile(TENANT_PATTERN)


def is_tenant(value: str) -> bool:
    return _TENANT_RE.fullmatch(value) is not None
