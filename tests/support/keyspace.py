"""Reading a Redis keyspace whole: to prove nothing changed, and that no secret is in it."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis


async def snapshot(client: aioredis.Redis, match: str) -> dict[bytes, bytes]:
    """Every key matching ``match`` with its serialized value (DUMP): equal
    snapshots mean nothing under the pattern was written."""
    redis: Any = client
    return {key: await redis.dump(key) async for key in redis.scan_iter(match=match, count=1000)}


async def contents(client: aioredis.Redis, match: str = "*") -> bytes:
    """Every key name, field and value matching ``match``, as one blob to search."""
    redis: Any = client
    parts: list[bytes] = []
    async for key in redis.scan_iter(match=match, count=1000):
        parts.append(key)
        kind = await redis.type(key)
        if kind == b"hash":
            parts.extend(v for kv in (await redis.hgetall(key)).items() for v in kv)
        elif kind == b"string":
            parts.append(await redis.get(key) or b"")
        elif kind in (b"set",):
            parts.extend(await redis.smembers(key))
        elif kind == b"zset":
            parts.extend(await redis.zrange(key, 0, -1))
        elif kind == b"list":
            parts.extend(await redis.lrange(key, 0, -1))
        elif kind == b"stream":
            for _, entry in await redis.xrange(key):
                parts.extend(v for kv in entry.items() for v in kv)
    return b"\n".join(parts)
