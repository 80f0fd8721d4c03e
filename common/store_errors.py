"""Redis failures as what they are to a caller and to an operator.

Redis holds every service's state. What a failure means decides the answer:

- a blip or a failover (unreachable, loading, timing out, read-only replica,
  cluster reconfiguring): UNAVAILABLE, retry later; nothing is logged, as
  it is expected in operation and a retry succeeds once Redis is back;
- Redis refusing this service (a wrong password or ACL, no memory left):
  UNAVAILABLE as well, but logged at ERROR, since nothing changes until an
  operator acts;
- any other error reply (a script's runtime error, WRONGTYPE, a malformed
  command): a bug, INTERNAL and logged. Telling the caller to retry would
  only run the same failing work again.

The caller gets a stable reason and a message that names no Redis internals.
The log gets the exception class and the reply's error code, never the
reply's text, which can quote the command (key names carry tokens).
"""

from __future__ import annotations

import logging
from types import TracebackType

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import Internal, Unavailable

STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
STORE_ERROR = "STORE_ERROR"

logger = logging.getLogger("cardlink.store")

_REFUSES_US = (AuthenticationError, AuthorizationError, NoPermissionError, OutOfMemoryError)
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, TryAgainError,
              ClusterDownError)


def _code(error: BaseException | None) -> str:
    """The reply's error code (NOAUTH, WRONGTYPE, ERR, ...), if it shows one.
    redis-py keeps it aside for the replies it maps to their own class."""
    code = getattr(error, "status_code", None)
    if isinstance(code, str) and code:
        return code
    words = str(error).split(maxsplit=1)
    return words[0] if words and words[0].isalpha() and words[0].isupper() else "?"


class redis_errors:
    """Translate Redis failures raised inside the block (see the module doc);
    ``reason`` names what was unavailable.

    A class, not @contextmanager: it wraps every Redis call of the vault's hot
    path, and a generator-based one costs four times as much (2.6 against
    0.6 µs). Lowercase: it reads like contextlib's helpers, ``with
    redis_errors():``.
    """

    __slots__ = ("_reason",)

    def __init__(self, reason: str = STORE_UNAVAILABLE) -> None:
        self._reason = reason

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None or not issubclass(kind, RedisError):
            return
        if issubclass(kind, _REFUSES_US):
            logger.error("Redis refuses this service (%s, %s): check its credentials, ACL "
                         "and memory", kind.__name__, _code(error))
        elif not issubclass(kind, _TRANSIENT):
            logger.error("Redis refused a command (%s, %s)", kind.__name__, _code(error))
            raise Internal(STORE_ERROR, "the data store refused the operation") from None
        raise Unavailable(self._reason, "the data store is unavailable; retry") from None
