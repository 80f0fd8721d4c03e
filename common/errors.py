"""One exception tree for every domain error in CardLink.

Domain code raises these; it never imports grpc. The transport layer maps each
class to a canonical gRPC status plus google.rpc details (see
``common.grpc_errors``). ``reason`` is a stable UPPER_SNAKE identifier that
clients branch on; ``message`` is for humans and must never contain a PAN or
an identity element.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

DOMAIN = "cardlink.dev"


class Code(Enum):
    """The canonical status codes CardLink uses (names match google.rpc.Code)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str
    reason: str = ""


class CardLinkError(Exception):
    """Root of every error CardLink reports to a caller."""

    code: Code = Code.INTERNAL

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"


class InvalidArgument(CardLinkError):
    """The request itself is malformed; retrying it unchanged will fail again."""

    code = Code.INVALID_ARGUMENT


class FailedPrecondition(CardLinkError):
    """The request is well-formed but the system is not in a state to accept it."""

    code = Code.FAILED_PRECONDITION


class OutOfRange(CardLinkError):
    """A value is outside what the current state allows (e.g. over the limit)."""

    code = Code.OUT_OF_RANGE


class NotFound(CardLinkError):
    """The resource does not exist, or the caller may not know that it exists."""

    code = Code.NOT_FOUND


class AlreadyExists(CardLinkError):
    """A resource the caller tried to create exists already."""

    code = Code.ALREADY_EXISTS


class PermissionDenied(CardLinkError):
    """The caller is known but lacks the scope for this call."""

    code = Code.PERMISSION_DENIED


class Unauthenticated(CardLinkError):
    """The caller presented no valid credential."""

    code = Code.UNAUTHENTICATED


class ResourceExhausted(CardLinkError):
    """A quota, rate limit or lockout applies."""

    code = Code.RESOURCE_EXHAUSTED


class Aborted(CardLinkError):
    """A concurrency conflict (e.g. the same request id is in flight)."""

    code = Code.ABORTED


class Unavailable(CardLinkError):
    """A dependency (Redis, the bank, the vault) cannot be reached; safe to retry."""

    code = Code.UNAVAILABLE


class DeadlineExceeded(CardLinkError):
    """A dependency did not answer in time; the outcome is being resolved."""

    code = Code.DEADLINE_EXCEEDED


class Internal(CardLinkError):
    """A bug or broken invariant; details are in the server log, never in the reply."""

    code = Code.INTERNAL


def invalid_field(field: str, description: str, reason: str) -> InvalidArgument:
    """Shorthand for the common single-field INVALID_ARGUMENT."""
    return InvalidArgument(
        reason,
        f"invalid {field}: {description}",
        violations=[FieldViolation(field, description, reason)],
    )
