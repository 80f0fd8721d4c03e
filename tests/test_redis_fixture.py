"""The test Redis is real and test prefixes do not leak into each other."""

from __future__ import annotations

import redis.asyncio as aioredis


async def test_redis_is_real_and_prefixed(redis_client: aioredis.Redis, key_prefix: str) -> None:
    await redis_client.set(f"{key_prefix}:probe", b"1")
    assert await redis_client.get(f"{key_prefix}:probe") == b"1"
    info = await redis_client.info("server")
    assert info["redis_version"]
