"""The CardLink partner SDK: a typed async client for the gateway.

    client = PartnerClient(channel, tenant="acme", token=lambda: my_jwt(), sealing=cache)
    binding = await client.create_binding("u-42", card_secret, consent)
    binding = await client.confirm_binding(binding.name, code_from_user)
    line = await client.activate_credit_line("u-42", binding.name)

It seals cards itself (the card never reaches the partner's servers' logs or
the gateway in clear), sets a UUID4 request id and a deadline on every
mutation, retries only what is safe - the same request with the same request
id, after UNAVAILABLE, a lost deadline or REQUEST_IN_PROGRESS - and raises
the typed ``CardLinkError`` subclasses of ``common.errors``, rebuilt from the
status details, so callers branch on ``error.reason``.
"""

from clients.sdk._client import PartnerClient, RetryPolicy, consent
from common.errors import (
    Aborted,
    AlreadyExists,
    CardLinkError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "Aborted",
    "AlreadyExists",
    "CardLinkError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PartnerClient",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "consent",
]
