"""CardLinkError <-> gRPC status with google.rpc details (AIP-193).

Server side: ``error_guard`` wraps every servicer method so a raised
``CardLinkError`` leaves as its canonical code plus an ``ErrorInfo``
(domain ``cardlink.dev``, stable reason, metadata) and ``BadRequest`` field
violations, and anything else leaves as a bare INTERNAL (logged here, never
echoed). Client side: ``error_from_rpc`` / ``rpc_errors`` turn an
``AioRpcError`` back into the typed exception so SDKs and the gateway branch
on (domain, reason), never on message text.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from common import errors
from common.errors import DOMAIN, CardLinkError, Code, FieldViolation
from common.server import Behavior, MalformedRequest
from common.store_errors import redis_errors

__all__ = [
    "ERROR_CLASSES",
    "GENERIC_INTERNAL_MESSAGE",
    "error_from_rpc",
    "error_from_status",
    "error_guard",
    "grpc_code",
    "rpc_errors",
    "status_from_error",
]

logger = logging.getLogger("cardlink.grpc")

DETAILS_KEY = "grpc-status-details-bin"

GENERIC_INTERNAL_MESSAGE = "internal error"

# One class per canonical code: the table error_from_rpc uses to rebuild the
# typed exception. Codes CardLink never raises itself (UNKNOWN, UNIMPLEMENTED,
# CANCELLED, DATA_LOSS) come back as Internal.
ERROR_CLASSES: dict[Code, type[CardLinkError]] = {
    Code.INVALID_ARGUMENT: errors.InvalidArgument,
    Code.FAILED_PRECONDITION: errors.FailedPrecondition,
    Code.OUT_OF_RANGE: errors.OutOfRange,
    Code.NOT_FOUND: errors.NotFound,
    Code.ALREADY_EXISTS: errors.AlreadyExists,
    Code.PERMISSION_DENIED: errors.PermissionDenied,
    Code.UNAUTHENTICATED: errors.Unauthenticated,
    Code.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    Code.ABORTED: errors.Aborted,
    Code.UNAVAILABLE: errors.Unavailable,
    Code.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    Code.INTERNAL: errors.Internal,
}


def grpc_code(code: Code) -> grpc.StatusCode:
    """The grpc.StatusCode of a CardLink Code (the names are the same)."""
    return grpc.StatusCode[code.value]


def status_from_error(error: CardLinkError) -> status_pb2.Status:
    """The google.rpc.Status a CardLinkError is reported as."""
    if isinstance(error, errors.Internal):
        # Internal errors carry their story to the server log only; the
        # caller learns the stable reason and nothing else.
        info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
        return _status(Code.INTERNAL, GENERIC_INTERNAL_MESSAGE, [info])
    details: list[Any] = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    ]
    if error.violations:
        details.append(_bad_request(error.violations))
    return _status(error.code, error.message, details)


def _status(code: Code, message: str, details: list[Any]) -> status_pb2.Status:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=_rpc_code(code), message=message, details=packed)


def _rpc_code(code: Code) -> int:
    return int(code_pb2.Code.Value(code.value))


def _bad_request(violations: tuple[FieldViolation, ...]) -> Any:
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=v.field, description=v.description, reason=v.reason
            )
            for v in violations
        ]
    )


# --------------------------------------------------------------------------
# Server side
# --------------------------------------------------------------------------


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> None:
    """Abort the call with the status for ``error``; always raises AbortError."""
    if isinstance(error, CardLinkError):
        if isinstance(error, errors.Internal):
            logger.error("internal error %s: %s", error.reason, error.message)
        status = _to_grpc_status(error)
        if status is not None:
            await context.abort(status.code, status.details, status.trailing_metadata)
    logger.exception("unhandled exception in handler", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, GENERIC_INTERNAL_MESSAGE)


def _to_grpc_status(error: CardLinkError) -> grpc.Status | None:
    # A malformed error (say a non-str metadata value) must still end as a
    # clean INTERNAL, not as grpc's UNKNOWN carrying the exception text.
    try:
        return rpc_status.to_status(status_from_error(error))
    except (TypeError, ValueError):
        return None


def _malformed() -> errors.InvalidArgument:
    return errors.InvalidArgument("REQUEST_MALFORMED", "the request does not parse as this "
                                  "method's message (corrupt bytes, or a string that is not "
                                  "UTF-8)")


def error_guard(method: str, behavior: Behavior) -> Behavior:
    """Turns exceptions raised by ``behavior`` (and inner guards) into statuses.

    A guard for ``common.server.start_server``; install it first (outermost)
    so errors raised by the auth guard get rich details too. grpc.aio accepts
    either an async generator or a coroutine that calls context.write() for a
    streamed response, and refuses a mix in one call, so the wrapper keeps
    whichever kind ``behavior`` is.
    """
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, MalformedRequest):
                await _abort(context, _malformed())
            try:
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise  # the handler aborted on purpose: its status is already set
            except Exception as error:
                await _abort(context, error)

        return generator

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, MalformedRequest):
            await _abort(context, _malformed())
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise  # the handler aborted on purpose: its status is already set
        except Exception as error:
            await _abort(context, error)

    return unary


def store_guard(method: str, behavior: Behavior) -> Behavior:
    """A guard for a service whose domain lets Redis errors through: they leave
    the call as UNAVAILABLE ``STORE_UNAVAILABLE`` (retry later), not INTERNAL.
    Install it inside ``error_guard``."""
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with redis_errors():
                async for response in behavior(request, context):
                    yield response

        return generator

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with redis_errors():
            return await behavior(request, context)

    return unary


# --------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------


def error_from_status(code: grpc.StatusCode, message: str, status: Any | None) -> CardLinkError:
    """The typed CardLinkError for a status code, its message and optional details.

    Without CardLink details (a transport failure, another domain) the reason
    is the code's name, e.g. ``UNAVAILABLE``.
    """
    cls = _class_for(code)
    reason, metadata = code.name, dict[str, str]()
    violations: list[FieldViolation] = []
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                if info.domain == DOMAIN:
                    reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                violations.extend(_violations(detail))
    return cls(reason, message, metadata=metadata, violations=violations)


def _class_for(code: grpc.StatusCode) -> type[CardLinkError]:
    try:
        return ERROR_CLASSES[Code(code.name)]
    except ValueError:
        return errors.Internal


def _violations(detail: Any) -> Iterator[FieldViolation]:
    bad_request = error_details_pb2.BadRequest()
    detail.Unpack(bad_request)
    for v in bad_request.field_violations:
        yield FieldViolation(v.field, v.description, v.reason)


def error_from_rpc(error: grpc.aio.AioRpcError) -> CardLinkError:
    """Recover the typed CardLinkError (reason, metadata, violations) of a failed call."""
    code, message = error.code(), error.details() or ""
    return error_from_status(code, message, _rich_status(error))


def _rich_status(error: grpc.aio.AioRpcError) -> Any | None:
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except Exception:  # a peer's garbage must not mask the code
                return None
            # Trust the details only when they describe this very status.
            return status if status.code == error.code().value[0] else None
    return None


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Re-raise a failed call's AioRpcError as its typed CardLinkError.

    ``with rpc_errors(): reply = await stub.GetToken(request)``
    """
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from None
