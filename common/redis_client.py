"""The asyncio Redis client every CardLink process uses.

redis-py's asyncio connections pack each command in pure Python, which costs
more than the round trip itself for the vault's scripts (a tokenize sends
some thirty arguments). With ``hiredis`` installed, as it is here, commands
are packed by hiredis's C packer instead; replies were already parsed by it.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection


def _pack(args: tuple[Any, ...]) -> list[bytes]:
    # Like redis-py: a command name with a space ("CLIENT SETNAME") is
    # several words, which Redis expects as separate arguments.
    first = args[0]
    if isinstance(first, str | bytes) and len(first.split()) > 1:
        args = (*first.split(), *args[1:])
    return [hiredis.pack_command(args)]


class _TcpConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return _pack(args)


class _UnixConnection(UnixDomainSocketConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return _pack(args)


def connect(url: str, **options: Any) -> aioredis.Redis:
    """A client for ``url`` (``redis://`` or ``unix://``) that packs with hiredis.

    Values are bytes in and out (``decode_responses`` stays False): ciphertexts
    and wrapped keys are binary.
    """
    pool = aioredis.ConnectionPool.from_url(url, health_check_interval=30, **options)
    unix = pool.connection_class is UnixDomainSocketConnection
    pool.connection_class = _UnixConnection if unix else _TcpConnection
    return aioredis.Redis(connection_pool=pool)
