"""The hiredis-packing client speaks to a real Redis exactly like redis-py's own."""

from __future__ import annotations

from typing import Any

from common.redis_client import connect


async def test_commands_scripts_and_pipelines_round_trip(redis_url: str, key_prefix: str) -> None:
    client: Any = connect(redis_url)
    try:
        key = f"{key_prefix}:h"
        await client.hset(key, mapping={"text": "é✓", "bytes": b"\x00\xff\r\n", "int": 42,
                                        "float": 1.5})
        assert await client.hgetall(key) == {
            b"text": "é✓".encode(), b"bytes": b"\x00\xff\r\n", b"int": b"42", b"float": b"1.5"}
        script = client.register_script("return redis.call('HGET', KEYS[1], ARGV[1])")
        assert await script(keys=[key], args=["int"]) == b"42"
        await client.execute_command("CLIENT SETNAME", "cardlink-test")  # a two-word command
        assert await client.client_getname() in ("cardlink-test", b"cardlink-test")
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr(f"{key_prefix}:n")
            pipe.incr(f"{key_prefix}:n")
            assert await pipe.execute() == [1, 2]
    finally:
        await client.aclose()
