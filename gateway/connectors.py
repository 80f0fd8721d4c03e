"""Shared plumbing of the gRPC adapters to the vault and the bank core.

Each call gets a deadline. Only a call the peer provably did not process
(UNAVAILABLE: no connection) is retried here, a bounded number of times;
any other failure - above all a deadline - has an unknown outcome and is
reported as UNAVAILABLE with a stable reason, for the caller to retry with
the same idempotency key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from common import errors
from common.errors import CardLinkError
from common.grpc_errors import error_from_rpc

logger = logging.getLogger("cardlink.gateway.connectors")

R = TypeVar("R")

# Codes that mean "the peer did not run the call": safe to send it again.
_NOT_PROCESSED = frozenset({grpc.StatusCode.UNAVAILABLE})
# Errors that are no refusal of the request: its outcome is unknown.
_UNKNOWN_OUTCOME = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
                              grpc.StatusCode.CANCELLED})


@dataclass(frozen=True)
class CallPolicy:
    deadline_s: float = 2.0
    attempts: int = 2  # total tries when the peer was unreachable
    backoff_s: float = 0.05

    @property
    def budget_s(self) -> float:
        """The longest one call can take: every try's deadline plus the backoffs."""
        backoffs: float = sum(self.backoff_s * 2.0**i for i in range(self.attempts - 1))
        return self.attempts * self.deadline_s + backoffs


async def call_with_policy(
    peer: str,
    unavailable_reason: str,
    policy: CallPolicy,
    call: Callable[[float], Awaitable[R]],
    *,
    pass_refusals: bool,
) -> R:
    """Run ``call(timeout)``; translate failures; retry only what was never processed.

    An unknown outcome becomes ``Unavailable(unavailable_reason)``. With
    ``pass_refusals``, the peer's refusals of what our caller sent
    (INVALID_ARGUMENT, FAILED_PRECONDITION, ...) come back as their typed
    CardLinkError; without, they too become ``Unavailable``: the caller sent
    none of the request, and the peer's own reason and text are not its to see.
    A refusal of the gateway's credential is ``Internal`` either way.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return await call(policy.deadline_s)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in _NOT_PROCESSED and attempt < policy.attempts:
                await asyncio.sleep(policy.backoff_s * 2 ** (attempt - 1))
                continue
            raise _translate(peer, unavailable_reason, error, pass_refusals) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _translate(peer: str, reason: str, error: grpc.aio.AioRpcError,
               pass_refusals: bool) -> CardLinkError:
    code = error.code()
    cause = {
        grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
        grpc.StatusCode.UNAVAILABLE: "unreachable",
    }.get(code, "error")
    if cause == "error" and code not in _UNKNOWN_OUTCOME:
        typed = error_from_rpc(error)
        if isinstance(typed, errors.Unauthenticated | errors.PermissionDenied):
            # Our own credential was refused: a deployment fault, not the caller's.
            logger.error("%s refused the gateway's credential: %s", peer, typed.reason)
            return errors.Internal(f"{peer.upper()}_AUTH_FAILED", f"{peer} refused the gateway")
        if pass_refusals:
            return typed
    logger.warning("%s call failed: %s (%s)", peer, code.name, cause)
    return errors.Unavailable(
        reason, f"the {peer} did not answer; retry with the same request_id",
        metadata={"cause": cause, "status": code.name},
    )
