"""Shared fixtures: a real Redis per test worker and a private key prefix per test.

With ``REDIS_URL`` unset each xdist worker starts its own private
redis-server (no AOF, unix socket). With ``REDIS_URL`` set, tests use that
server's DB ``CARDLINK_TEST_REDIS_DB`` (default 9) and only ever delete keys
under their own prefix.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio as aioredis

from common.redis_runtime import PrivateRedis
from tests.support.vault import VaultHandle, running_vault


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A test never reads the state folder `make run` left on this machine
    # (the key tool falls back to its development key there).
    monkeypatch.setenv("CARDLINK_STATE_DIR", str(tmp_path / "state"))


def _with_db(url: str, db: int) -> str:
    parse_url: Any = redis.connection.parse_url  # untyped in redis-py
    pool_kwargs = parse_url(url)
    auth = ""
    if pool_kwargs.get("password"):
        user = quote(pool_kwargs.get("username") or "", safe="")
        auth = f"{user}:{quote(pool_kwargs['password'], safe='')}@"
    if "path" in pool_kwargs:
        return f"unix://{auth}{pool_kwargs['path']}?db={db}"
    host = pool_kwargs.get("host", "127.0.0.1")
    port = pool_kwargs.get("port", 6379)
    return f"redis://{auth}{host}:{port}/{db}"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    shared = os.environ.get("REDIS_URL")
    if shared:
        yield _with_db(shared, int(os.environ.get("CARDLINK_TEST_REDIS_DB", "9")))
        return
    server = PrivateRedis(Path(tmp_path_factory.mktemp("redis")), appendonly=False).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A prefix no other test uses; everything under it is deleted afterwards."""
    prefix = f"cltest:{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def vault(redis_url: str, key_prefix: str, tmp_path: Path) -> AsyncIterator[VaultHandle]:
    """A real vault on 127.0.0.1:0 with its own keys, trust file and key prefix."""
    async with running_vault(redis_url, key_prefix, tmp_path) as handle:
        yield handle
