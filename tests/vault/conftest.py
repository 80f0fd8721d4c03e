"""Fixtures of the vault's domain tests: a VaultService on the test Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from common.clock import ManualClock
from tests.vault.test_store_service import START, make_service
from vault import VaultService


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "vault-root.key"


@pytest.fixture
async def service(redis_client: aioredis.Redis, key_prefix: str, clock: ManualClock,
                  key_file: Path) -> VaultService:
    vault = make_service(redis_client, key_prefix, clock, key_file)
    await vault.sealing_key_set()  # initializes the keyring
    return vault
