"""Exit codes a script can branch on."""

from __future__ import annotations

import grpc

OK = 0
FAILED = 1  # the vault refused the operation (reason printed)
USAGE = 2  # bad arguments (argparse's own code)
UNREACHABLE = 3  # no vault at the address, or it is unavailable
SEALED = 4  # the vault is sealed
AUDIT_BROKEN = 5  # `audit verify` found a problem
NOT_CONFIRMED = 6  # a destructive step was not confirmed (use --yes)
DENIED = 7  # missing or rejected credential, or missing scope
INCOMPLETE = 8  # rewrap stopped before every record was moved
SHARES_NOT_SAVED = 9  # new sealed shares came back but were printed, not written

_BY_CODE = {
    grpc.StatusCode.UNAVAILABLE: UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: UNREACHABLE,
    grpc.StatusCode.UNAUTHENTICATED: DENIED,
    grpc.StatusCode.PERMISSION_DENIED: DENIED,
}


def for_status(code: grpc.StatusCode, reason: str) -> int:
    if reason == "VAULT_SEALED":
        return SEALED
    return _BY_CODE.get(code, FAILED)
