"""Redis failures as what they are to a caller: UNAVAILABLE, retry later.

Redis holds every service's state; when it is unreachable, loading or
failing over, a call can neither finish nor say more than "retry". The
caller sees a stable reason and a message that names no Redis internals.
Any other error reply (a script's runtime error, WRONGTYPE, OOM) is logged
as well: it points at a bug or at Redis's configuration, not at a blip.
(Redis never holds a card number, so its error text cannot carry one.)
"""

from __future__ import annotations

import logging
from types import TracebackType

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import Unavailable

STORE_UNAVAILABLE = "STORE_UNAVAILABLE"

logger = logging.getLogger("cardlink.store")


class redis_errors:
    """Turn Redis failures into UNAVAILABLE ``reason``, without leaking internals.

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
        if not issubclass(kind, RedisConnectionError | RedisTimeoutError):
            logger.error("Redis refused a command: %s: %s", kind.__name__, error)
        raise Unavailable(self._reason, "the data store is unavailable; retry") from None
