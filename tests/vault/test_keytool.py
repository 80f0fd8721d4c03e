"""cardlink-keytool against a real vault: output, --json, exit codes, confirmations."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from clients.keytool import main
from common.clock import ManualClock
from tests.support.identities import SECURITY_SCOPES, Identities
from tests.support.vault import VaultHandle, running_vault
from tests.vault.test_lifecycle_rewrap import fill
from vault.audit import audit_key
from vault.config import VaultMode


async def keytool(vault: VaultHandle, *argv: str, token: str | None = None) -> int:
    """Run the tool in a thread (it has its own event loop), as the security team."""
    bearer = token if token is not None else vault.identities.token(
        "cardlink-security", "security", SECURITY_SCOPES)
    args = ["--address", vault.address, "--token", bearer, *argv]
    return await asyncio.to_thread(main, args)


def last_json(text: str) -> dict[str, object]:
    document: dict[str, object] = json.loads(text.strip().splitlines()[-1])
    return document


async def test_status_rotate_rewrap_retire(vault: VaultHandle,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    await fill(vault, 120)
    assert await keytool(vault, "--json", "status") == 0
    status = last_json(capsys.readouterr().out)
    kinds = {(v["kind"], v["version"]) for v in status["versions"]}  # type: ignore[attr-defined]
    assert ("KEY_KIND_KEK", 1) in kinds and ("KEY_KIND_SIGNING", 1) in kinds

    assert await keytool(vault, "rotate", "kek") == 0
    assert "kek v2" in capsys.readouterr().out
    # Destructive without --yes and without a terminal: refused.
    assert await keytool(vault, "retire", "kek", "1") == 6
    assert "--yes" in capsys.readouterr().err
    # Still needed by 120 records: refused by the vault, reason printed.
    assert await keytool(vault, "--yes", "retire", "kek", "1") == 1
    assert "KEY_VERSION_IN_USE" in capsys.readouterr().err

    assert await keytool(vault, "rewrap", "--batch", "25", "--limit", "30") == 8
    assert "run again to resume" in capsys.readouterr().out
    assert await keytool(vault, "rewrap", "--batch", "25") == 0
    captured = capsys.readouterr()
    assert "rewrap complete: 120/120" in captured.out
    assert "rec/s" in captured.err and "ETA" in captured.err  # the progress bar
    vault.clock.advance(31)
    assert await keytool(vault, "--yes", "--json", "retire", "kek", "1") == 0
    assert last_json(capsys.readouterr().out)["destroyed"] is True


async def test_audit_verify_and_export(vault: VaultHandle, redis_client: aioredis.Redis,
                                       tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    await keytool(vault, "rotate", "seal")
    await keytool(vault, "rotate", "sign")
    assert await keytool(vault, "audit", "verify") == 0
    assert "4 entries verified" in capsys.readouterr().out  # intent + outcome per rotate
    out = tmp_path / "audit.jsonl"
    assert await keytool(vault, "audit", "export", "--out", str(out)) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["action"], line["result"]) for line in lines] == [
        ("key.rotate", "INTENT"), ("key.rotate", "OK")] * 2
    assert {"seq", "mac", "caller", "time"} <= set(lines[0])

    key = audit_key(vault.config.redis_prefix)
    entries: Any = await redis_client.xrange(key)
    first_id = entries[0][0]
    await redis_client.xdel(key, first_id)
    capsys.readouterr()
    assert await keytool(vault, "--json", "audit", "verify") == 5
    result = last_json(capsys.readouterr().out)
    assert result["problem"] == "MISSING_OR_REORDERED" and result["verified"] == "0"


async def test_credentials_and_reachability(vault: VaultHandle,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    partner = vault.identities.token("acme-partner", "acme", ["vault.tokens.get"])
    assert await keytool(vault, "status", token=partner) == 7
    assert "SCOPE_MISSING" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["--address", "127.0.0.1:1", "--token", "x",
                                          "--timeout", "1", "status"]) == 3
    assert await asyncio.to_thread(main, ["--address", vault.address, "status"]) == 2


async def test_production_ceremony_with_the_tool(redis_url: str, key_prefix: str,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    clock = ManualClock(start=1_800_000_000.0)
    identities = Identities.create(tmp_path, clock)
    async with running_vault(redis_url, key_prefix, tmp_path, mode=VaultMode.PRODUCTION,
                             clock=clock, identities=identities) as vault:
        assert await keytool(vault, "status") == 4  # sealed (status answers nothing else)
        shares = tmp_path / "shares"
        assert await keytool(vault, "init", "-k", "2", "-n", "3", "--out-dir", str(shares)) == 0
        files = sorted(shares.iterdir())
        assert len(files) == 3 and all(f.stat().st_mode & 0o077 == 0 for f in files)
        assert await keytool(vault, "unseal", "--share-file", str(files[0])) == 4
        assert "1 of 2" in capsys.readouterr().out
        assert await keytool(vault, "--json", "unseal", "--share-file", str(files[2])) == 0
        assert last_json(capsys.readouterr().out)["sealed"] is False
        assert await keytool(vault, "status") == 0
        # Rekey: each custodian confirms and submits a share; the last gets the new set.
        new = tmp_path / "new-shares"
        assert await keytool(vault, "--yes", "rekey", "-k", "2", "-n", "2",
                             "--share-file", str(files[1])) == 0
        assert await keytool(vault, "--yes", "rekey", "-k", "2", "-n", "2",
                             "--share-file", str(files[0]), "--out-dir", str(new)) == 0
        assert len(list(new.iterdir())) == 2
