"""Resource names (AIP-122) of the gateway and the ids inside them.

Tenant and user ids end up inside Redis key names and hash tags, so they are
restricted to plain alphabets (tenants: the one every part shares,
``common.tenants``): no braces, colons or slashes can reach a key.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from common.errors import invalid_field
from common.request_ids import is_uuid4
from common.tenants import TENANT_RULE, is_tenant

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_BINDING_RE = re.compile(r"bnd_[a-z2-7]{26}")
_LINE_RE = re.compile(r"cln_[a-z2-7]{26}")


@dataclass(frozen=True)
class UserName:
    """``tenants/{tenant}/users/{user}``."""

    tenant: str
    user: str

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/users/{self.user}"


@dataclass(frozen=True)
class ChildName:
    """A binding or credit line: ``tenants/{t}/users/{u}/<collection>/{id}``."""

    parent: UserName
    collection: str
    id: str

    @property
    def tenant(self) -> str:
        return self.parent.tenant

    @property
    def user(self) -> str:
        return self.parent.user

    def __str__(self) -> str:
        return f"{self.parent}/{self.collection}/{self.id}"


def parse_user(value: str, field: str = "parent") -> UserName:
    parts = value.split("/")
    if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "users":
        raise invalid_field(field, "must be tenants/{tenant}/users/{user}", "NAME_INVALID")
    tenant, user = parts[1], parts[3]
    if not is_tenant(tenant) or not ID_RE.fullmatch(user):
        raise invalid_field(field, f"tenant id: {TENANT_RULE}; user id: 1-64 of A-Z a-z 0-9 _ -",
                            "NAME_INVALID")
    return UserName(tenant, user)


def _parse_child(value: str, field: str, collection: str, id_re: re.Pattern[str]) -> ChildName:
    head, _, tail = value.rpartition(f"/{collection}/")
    if not head or not id_re.fullmatch(tail):
        raise invalid_field(
            field, f"must be tenants/{{t}}/users/{{u}}/{collection}/{{id}}", "NAME_INVALID"
        )
    return ChildName(parse_user(head, field), collection, tail)


def parse_binding(value: str, field: str = "name") -> ChildName:
    return _parse_child(value, field, "bindings", _BINDING_RE)


def parse_credit_line(value: str, field: str = "name") -> ChildName:
    return _parse_child(value, field, "creditLines", _LINE_RE)


def binding_name(user: UserName, binding_id: str) -> ChildName:
    return ChildName(user, "bindings", binding_id)


def credit_line_name(user: UserName, line_id: str) -> ChildName:
    return ChildName(user, "creditLines", line_id)


def derived_id(kind: str, *parts: str) -> str:
    """A resource id derived from the request that creates it.

    Deriving it (rather than drawing it at random) is what makes a retried
    create land on the same record even when the first attempt's answer was
    lost: no second binding or credit line can appear for one request id.
    """
    digest = hashlib.sha256("\x00".join((kind, *parts)).encode()).digest()
    return f"{kind}_" + base64.b32encode(digest).decode().lower()[:26]


def check_request_id(value: str, field: str = "request_id") -> str:
    """A UUID4 in canonical form (AIP-155), lowercased, or INVALID_ARGUMENT."""
    if not is_uuid4(value):
        raise invalid_field(field, "must be a UUID4", "REQUEST_ID_INVALID")
    return value.lower()
