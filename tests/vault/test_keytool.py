"""cardlink-keytool against a real vault: output, --json, exit codes, confirmations."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cardlink.vault.v1 import admin_pb2
from clients.keytool import main
from clients.keytool._custodian import (
    CustodianError,
    generate,
    open_share,
    parse_sealed_share,
    read_private_key,
    write_sealed_share,
)
from common.clock import ManualClock
from tests.support.identities import SECURITY_SCOPES, Identities
from tests.support.keytool import with_token
from tests.support.vault import VaultHandle, running_vault
from tests.vault.test_audit_chain import cut_back_to
from tests.vault.test_lifecycle_rewrap import fill
from vault.audit import audit_key
from vault.config import VaultMode


async def keytool(vault: VaultHandle, *argv: str, token: str | None = None) -> int:
    """Run the tool in a thread (it has its own event loop), as the security team."""
    bearer = token if token is not None else vault.identities.token(
        "cardlink-security", "security", SECURITY_SCOPES)
    return await asyncio.to_thread(with_token, bearer, ["--address", vault.address, *argv])



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
    assert await keytool(vault, "--json", "audit", "verify") == 0
    head = last_json(capsys.readouterr().out)
    checkpoint = f"{head['head_seq']}:{head['head_mac']}"
    assert await keytool(vault, "audit", "verify", "--checkpoint", checkpoint) == 0
    assert "still holds checkpoint 4; checkpoint 4:" in capsys.readouterr().out
    pasted = f"  {head['head_seq']}:{str(head['head_mac']).upper()}\n"
    assert await keytool(vault, "audit", "verify", "--checkpoint", pasted) == 0
    for bad in ("four", "4", "4:nothex", "٤:" + "a" * 64, "4:" + "a" * 63):
        with pytest.raises(SystemExit) as usage:
            await keytool(vault, "audit", "verify", "--checkpoint", bad)
        assert usage.value.code == 2 and "SEQ:MAC" in capsys.readouterr().err
    out = tmp_path / "audit.jsonl"
    assert await keytool(vault, "audit", "export", "--out", str(out)) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["action"], line["result"]) for line in lines] == [
        ("key.rotate", "INTENT"), ("key.rotate", "OK")] * 2
    assert {"seq", "mac", "caller", "time"} <= set(lines[0])
    assert out.stat().st_mode & 0o077 == 0
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "planted").symlink_to(victim)
    assert await keytool(vault, "audit", "export", "--out", str(tmp_path / "planted")) == 2
    assert victim.read_text() == "precious"  # never written through the symlink

    await cut_back_to(redis_client, vault.config.redis_prefix, 2)
    assert await keytool(vault, "audit", "verify") == 0  # consistent as far as Redis can tell
    assert await keytool(vault, "audit", "verify", "--checkpoint", checkpoint) == 5
    assert "ROLLED_BACK" in capsys.readouterr().out

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
    assert await asyncio.to_thread(with_token, "x", ["--address", "127.0.0.1:1",
                                                     "--timeout", "1", "status"]) == 3
    assert await asyncio.to_thread(main, ["--address", vault.address, "status"]) == 2
    # A bearer token on the command line would be readable by every local user.
    security = vault.identities.token("cardlink-security", "security", SECURITY_SCOPES)
    capsys.readouterr()
    for flag in (["--token", security], [f"--token={security}"]):
        assert await asyncio.to_thread(main, ["--address", vault.address, *flag,
                                              "status"]) == 2
        assert security not in "".join(capsys.readouterr())


PASSPHRASE = "correct horse battery staple"


def _write_unencrypted_key(name: Path) -> None:
    """A custodian key pair as the tool wrote them before passphrases."""
    key = X25519PrivateKey.generate()
    name.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    name.with_suffix(".pub").write_text(
        base64.b64encode(key.public_key().public_bytes_raw()).decode() + "\n")


async def test_production_ceremony_with_the_tool(redis_url: str, key_prefix: str,
                                                 tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CARDLINK_CUSTODIAN_PASSPHRASE", PASSPHRASE)
    clock = ManualClock(start=1_800_000_000.0)
    identities = Identities.create(tmp_path, clock)
    async with running_vault(redis_url, key_prefix, tmp_path, mode=VaultMode.PRODUCTION,
                             clock=clock, identities=identities) as vault:
        assert await keytool(vault, "status") == 4  # sealed (status answers nothing else)
        # Each custodian makes a key pair and hands over only the public half.
        custody = tmp_path / "custodians"
        custody.mkdir()
        names = ["alice", "bob", "carol"]
        for name in names[:2]:
            assert await keytool(vault, "--json", "keygen-custodian",
                                 "--out", str(custody / name)) == 0
            made = last_json(capsys.readouterr().out)
            key_file = custody / f"{name}.key"
            assert key_file.stat().st_mode & 0o077 == 0
            stored = json.loads(key_file.read_text())  # under the passphrase, scrypt-keyed
            assert (stored["kdf"], stored["n"], stored["r"]) == ("scrypt", 2**17, 8)
            assert stored["public_key"] == (custody / f"{name}.pub").read_text().strip()
            assert made["public_key"] == (custody / f"{name}.pub").read_text().strip()
        _write_unencrypted_key(custody / "carol")  # made by an older tool
        assert await keytool(vault, "keygen-custodian", "--out", str(custody / "bob")) == 2
        assert "exists" in capsys.readouterr().err
        monkeypatch.setenv("CARDLINK_CUSTODIAN_PASSPHRASE", "too short")
        assert await keytool(vault, "keygen-custodian", "--out", str(custody / "dave")) == 2
        assert "at least 12" in capsys.readouterr().err
        assert not list(custody.glob("dave*"))
        monkeypatch.setenv("CARDLINK_CUSTODIAN_PASSPHRASE", PASSPHRASE)
        pubs = [arg for n in names for arg in ("--custodian", str(custody / f"{n}.pub"))]

        shares = tmp_path / "shares"
        assert await keytool(vault, "init", "-k", "2", "-n", "3", *pubs[:4],
                             "--out-dir", str(shares)) == 2  # one key per share
        assert "one --custodian" in capsys.readouterr().err
        assert await keytool(vault, "init", "-k", "2", "-n", "3", *pubs,
                             "--out-dir", str(shares)) == 0
        init_out = capsys.readouterr().out
        files = {f.name: f for f in shares.iterdir()}
        assert sorted(files) == ["alice.share", "bob.share", "carol.share"]
        assert all(f.stat().st_mode & 0o077 == 0 for f in files.values())
        # Each custodian checks the file that reached them, offline (no address, no
        # credential): theirs opens, all from one share set; another's key is named.
        checked, check_out = [], ""
        for name in names:
            assert await asyncio.to_thread(main, [
                "--address", "127.0.0.1:9", "--json", "check-share", "--share-file",
                str(files[f"{name}.share"]), "--custodian-key", str(custody / f"{name}.key")
            ]) == 0
            check = capsys.readouterr()
            check_out += check.out + check.err
            checked.append(last_json(check.out))
        assert {c["share_set"] for c in checked} == {checked[0]["share_set"]}
        assert sorted(c["share"] for c in checked) == [1, 2, 3]  # type: ignore[type-var]
        assert {c["threshold"] for c in checked} == {2}
        assert await keytool(vault, "check-share", "--share-file", str(files["alice.share"]),
                             "--custodian-key", str(custody / "alice.key")) == 0
        check = capsys.readouterr()
        assert f"share set {checked[0]['share_set']}" in check.out
        check_out += check.out + check.err
        alice_share = parse_sealed_share(files["alice.share"].read_text())
        assert alice_share is not None
        words = open_share(alice_share, read_private_key(custody / "alice.key",
                                                         lambda: PASSPHRASE).key).split()
        assert " ".join(words[:4]) not in check_out  # the check never shows the share
        assert await keytool(vault, "check-share", "--share-file", str(files["alice.share"]),
                             "--custodian-key", str(custody / "bob.key")) == 2
        assert "another custodian" in capsys.readouterr().err
        damaged = tmp_path / "damaged.share"
        damaged.write_text(files["alice.share"].read_text().replace('"ciphertext": "',
                                                                    '"ciphertext": "AAAA'))
        assert await keytool(vault, "check-share", "--share-file", str(damaged),
                             "--custodian-key", str(custody / "alice.key")) == 2
        assert "did not open" in capsys.readouterr().err
        # A sealed share needs its custodian's key: without one, or with another's, refused.
        assert await keytool(vault, "unseal", "--share-file", str(files["alice.share"])) == 2
        assert "--custodian-key" in capsys.readouterr().err
        assert await keytool(vault, "unseal", "--share-file", str(files["alice.share"]),
                             "--custodian-key", str(custody / "bob.key")) == 2
        assert "another custodian" in capsys.readouterr().err
        # A stolen key file alone opens nothing: the passphrase is needed too.
        monkeypatch.setenv("CARDLINK_CUSTODIAN_PASSPHRASE", "not alice's passphrase")
        assert await keytool(vault, "unseal", "--share-file", str(files["alice.share"]),
                             "--custodian-key", str(custody / "alice.key")) == 2
        assert "wrong passphrase" in capsys.readouterr().err
        monkeypatch.setenv("CARDLINK_CUSTODIAN_PASSPHRASE", PASSPHRASE)
        assert await keytool(vault, "unseal", "--share-file", str(files["alice.share"]),
                             "--custodian-key", str(custody / "alice.key")) == 4
        assert "1 of 2" in capsys.readouterr().out  # the refused attempt counted nothing
        # An older key without a passphrase still opens its share, with a warning.
        assert await keytool(vault, "--json", "unseal", "--share-file",
                             str(files["carol.share"]), "--custodian-key",
                             str(custody / "carol.key")) == 0
        unsealed = capsys.readouterr()
        assert last_json(unsealed.out)["sealed"] is False
        assert "no passphrase" in last_json(unsealed.err)["warning"]  # type: ignore[operator]
        assert await keytool(vault, "status") == 0
        # Shares refused locally (wrong key, wrong passphrase) never reached the vault.
        assert "mode production, unsealed, 0 refused unseal shares" in capsys.readouterr().out
        # Rekey: each custodian confirms and submits a share; the last gets the new set,
        # sealed to the new custodians' keys.
        new = tmp_path / "new-shares"
        new_pubs = pubs[:4]  # alice and bob
        assert await keytool(vault, "--yes", "rekey", "-k", "2", "-n", "2", *new_pubs,
                             "--share-file", str(files["bob.share"]), "--custodian-key",
                             str(custody / "bob.key"), "--out-dir", str(new)) == 0
        assert await keytool(vault, "--yes", "--json", "rekey", "-k", "2", "-n", "2",
                             *new_pubs, "--share-file", str(files["alice.share"]),
                             "--custodian-key", str(custody / "alice.key"),
                             "--out-dir", str(new)) == 0
        done = last_json(capsys.readouterr().out)
        assert done["complete"] is True and not done.get("shares")
        assert sorted(p.name for p in new.iterdir()) == ["alice.share", "bob.share"]
    # Restarted, the vault opens with the new sealed shares; a clear mnemonic file works too.
    async with running_vault(redis_url, key_prefix, tmp_path, mode=VaultMode.PRODUCTION,
                             clock=clock, identities=identities) as vault:
        assert await keytool(vault, "unseal", "--share-file", str(new / "bob.share"),
                             "--custodian-key", str(custody / "bob.key")) == 4
        sealed = parse_sealed_share((new / "alice.share").read_text())
        key = read_private_key(custody / "alice.key", lambda: PASSPHRASE).key
        assert sealed is not None
        mnemonic = open_share(sealed, key)
        clear = tmp_path / "alice-clear.txt"
        clear.write_text(mnemonic + "\n")
        assert await keytool(vault, "unseal", "--share-file", str(clear)) == 0
        captured = capsys.readouterr()
        logs = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
        for text in (init_out, captured.out, captured.err, logs):
            assert " ".join(mnemonic.split()[:6]) not in text
            assert PASSPHRASE not in text


async def test_init_never_loses_the_shares_it_asked_for(
        redis_url: str, key_prefix: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The vault's reply holds the only copy of the new shares: a folder that
    cannot take them is refused before the vault is asked, and files that still
    fail to write leave the shares printed and fetchable again."""
    clock = ManualClock(start=1_800_000_000.0)
    identities = Identities.create(tmp_path, clock)
    keys = {name: X25519PrivateKey.generate() for name in ("alice", "bob")}
    pubs: list[str] = []
    for name, key in keys.items():
        pub = tmp_path / f"{name}.pub"
        pub.write_text(base64.b64encode(key.public_key().public_bytes_raw()).decode() + "\n")
        pubs += ["--custodian", str(pub)]
    async with running_vault(redis_url, key_prefix, tmp_path, mode=VaultMode.PRODUCTION,
                             clock=clock, identities=identities) as vault:
        trap = tmp_path / "trap"
        trap.mkdir()
        (trap / "alice.share").symlink_to(tmp_path / "elsewhere")  # dangling
        init = ["--json", "init", "-k", "2", "-n", "2", *pubs, "--out-dir"]
        assert await keytool(vault, *init, str(trap)) == 2
        assert "exists" in capsys.readouterr().err
        seal = await vault.admin.GetSealStatus(admin_pb2.GetSealStatusRequest(),
                                               metadata=vault.security())
        assert not seal.initialized  # the vault was never asked

        def disk_full(path: Path, share: Any) -> None:  # after the first file
            if any((tmp_path / "full").iterdir()):
                path.write_text("{cut sh")  # a file cut short, as a full disk leaves it
                raise OSError(28, "No space left on device")
            write_sealed_share(path, share)

        monkeypatch.setattr("clients.keytool._custodian.write_sealed_share", disk_full)
        assert await keytool(vault, *init, str(tmp_path / "full")) == 9
        printed = capsys.readouterr()
        assert "run the same command again" in printed.err
        unsaved = last_json(printed.out)["unsaved_share_files"]
        assert isinstance(unsaved, dict) and len(unsaved) == 2
        monkeypatch.undo()

        assert not list((tmp_path / "full").iterdir())  # its own partial files removed
        assert await keytool(vault, *init, str(tmp_path / "full")) == 0  # the same again
        for name, key in keys.items():
            text = (tmp_path / "full" / f"{name}.share").read_text()
            assert text == unsaved[str(tmp_path / "full" / f"{name}.share")]
            sealed = parse_sealed_share(text)
            assert sealed is not None and open_share(sealed, key)  # theirs opens


def test_custodian_key_files_of_every_version_open(tmp_path: Path) -> None:
    """Key files from earlier tool versions (PKCS#8 PEM, passphrase-encrypted or
    not) still open; a wrong passphrase or a doctored file is refused."""
    new_key, _, public = generate(tmp_path / "new", lambda: PASSPHRASE)
    opened = read_private_key(new_key, lambda: PASSPHRASE)
    assert opened.encrypted and opened.key.public_key().public_bytes_raw() == public
    with pytest.raises(CustodianError, match="wrong passphrase"):
        read_private_key(new_key, lambda: "not the passphrase")
    for name, value in (("n", 2**40), ("n", 1e400), ("n", True), ("r", "8"), ("p", 3)):
        doctored = json.loads(new_key.read_text())
        doctored[name] = value  # would allocate without bound, or is not a number
        (tmp_path / "doctored.key").write_text(json.dumps(doctored))
        with pytest.raises(CustodianError, match="not a custodian private key"):
            read_private_key(tmp_path / "doctored.key", lambda: PASSPHRASE)
    swapped = json.loads(new_key.read_text())
    swapped["public_key"] = base64.b64encode(X25519PrivateKey.generate().public_key()
                                             .public_bytes_raw()).decode()
    (tmp_path / "swapped.key").write_text(json.dumps(swapped))
    with pytest.raises(CustodianError, match="wrong passphrase"):
        read_private_key(tmp_path / "swapped.key", lambda: PASSPHRASE)

    old = X25519PrivateKey.generate()
    (tmp_path / "old.key").write_bytes(old.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.encode())))
    assert read_private_key(tmp_path / "old.key", lambda: PASSPHRASE).key.private_bytes_raw() \
        == old.private_bytes_raw()
