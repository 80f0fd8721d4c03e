"""One coroutine per key tool command; each returns an exit code."""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from shamir_mnemonic import MnemonicError, Share

from cardlink.vault.v1 import admin_pb2, admin_pb2_grpc
from clients.keytool import _custodian, _exit
from clients.keytool._output import Output, as_dict
from common.auth import generate_signing_key, public_jwk, save_private_key_pem

KIND_NAMES = {1: "kek", 2: "fp", 3: "seal", 4: "sign"}
# For scripted ceremonies; a person at a terminal is asked instead.
PASSPHRASE_ENV = "CARDLINK_CUSTODIAN_PASSPHRASE"  # noqa: S105 (a variable name)


class SharesNotSaved(Exception):
    """New sealed shares came back but their files could not be written."""


class UsageError(Exception):
    """Bad or missing arguments the parser cannot catch."""


def passphrase(*, new: bool = False) -> str:
    """The custodian key's passphrase: from CARDLINK_CUSTODIAN_PASSPHRASE, else typed
    at the terminal without echo (twice for a ``new`` one)."""
    given = os.environ.get(PASSPHRASE_ENV)
    if given:
        return given
    if not sys.stdin.isatty():
        raise UsageError(f"the custodian key needs its passphrase: run at a terminal or set "
                         f"{PASSPHRASE_ENV}")
    typed = getpass.getpass("custodian key passphrase (not echoed): ")
    if new and getpass.getpass("again: ") != typed:
        raise UsageError("the two passphrases differ")
    return typed


def read_share(path: Path | None, custodian_key: Path | None, out: Output) -> str:
    """Your share: a sealed share file opened locally with your custodian key, a
    clear mnemonic file, or words typed at a prompt without echo."""
    if path is None:
        if custodian_key is not None:
            raise UsageError("--custodian-key opens a sealed share: give it with --share-file")
        return getpass.getpass("your share (words, not echoed): ").strip()
    text = path.read_text(encoding="utf-8")
    try:
        sealed = _custodian.parse_sealed_share(text)
        if custodian_key is None:
            if sealed is not None:
                raise UsageError(f"{path} is sealed to a custodian key: add --custodian-key "
                                 "YOUR.key to open it")
            return text.strip()
        if sealed is None:
            raise UsageError(f"{path} is not a sealed share file")
        key_file = _custodian.read_private_key(custodian_key, passphrase)
        if not key_file.encrypted:
            out.warning(f"{custodian_key} has no passphrase: whoever copies it can open your "
                        "shares. Make a new key pair with keygen-custodian and have the "
                        "shares rekeyed to it.")
        return _custodian.open_share(sealed, key_file.key)
    except _custodian.CustodianError as error:
        raise UsageError(f"{path}: {error}") from None


@dataclass(frozen=True)
class Custodian:
    """One --custodian public key file and the sealed share file it gets."""

    public_key_file: Path
    public_key: bytes
    share_file: Path


def custodians(args: argparse.Namespace) -> list[Custodian]:
    """The --custodian keys (one per share, in order), checked before the vault is called,
    with their share file names (after the key file: alice.pub -> alice.share)."""
    files: list[Path] = list(args.custodian or [])
    if len(files) != args.shares:
        raise UsageError(f"give one --custodian public key file per share: -n {args.shares}, "
                         f"got {len(files)} (make them with `keygen-custodian`)")
    out_dir: Path = args.out_dir or Path(".")
    result = []
    for path in files:
        try:
            public = _custodian.read_public_key(path)
        except _custodian.CustodianError as error:
            raise UsageError(str(error)) from None
        result.append(Custodian(path, public, out_dir / f"{path.stem}.share"))
    names = [c.share_file for c in result]
    if len(set(names)) != len(names):
        raise UsageError("two --custodian files share a name; name each custodian's key "
                         "file differently")
    # Checked before the vault is asked: its reply holds the only copy of the
    # new shares, so nothing about the files may fail after it.
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create {out_dir} for the share files: {error}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write share files into {out_dir}")
    for name in names:
        if os.path.lexists(name):  # a dangling symlink too
            raise UsageError(f"{name} exists; not overwriting a share file")
    return result


def write_sealed_shares(shares: Sequence[admin_pb2.SealedShare], custody: Sequence[Custodian],
                        out: Output) -> list[str]:
    """One 0600 sealed share file per custodian; the file names."""
    if len(shares) != len(custody) or any(
            s.custodian_public_key != c.public_key for s, c in zip(shares, custody, strict=False)):
        raise UsageError("the vault's reply does not match the custodian keys given")
    sealed = [_custodian.SealedShareFile(s.custodian_public_key, s.ciphertext) for s in shares]
    try:
        for share, custodian in zip(sealed, custody, strict=True):
            _custodian.write_sealed_share(custodian.share_file, share)
    except OSError as error:
        # None of these names existed (checked before the vault was asked): the
        # files there are this run's, some maybe cut short. Removed, so that
        # the same command can run again.
        for custodian in custody:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(custodian.share_file)
        # The shares must not be lost with the files: print them (each opens
        # only with its custodian's private key) for the operator to save.
        documents = {str(c.share_file): _custodian.sealed_share_text(share)
                     for share, c in zip(sealed, custody, strict=True)}
        out.result({"unsaved_share_files": documents}, "\n".join(
            f"--- save as {name} ---\n{text}" for name, text in documents.items()))
        raise SharesNotSaved(f"could not write the share files ({error}); they are printed "
                             "above: save each as named, or run the same command again "
                             "against the same vault process") from None
    out.info(f"wrote {len(custody)} sealed share files: hand each custodian theirs; only "
             "their private key opens it")
    return [str(c.share_file) for c in custody]


def _custody_text(custody: Sequence[Custodian]) -> str:
    return "\n".join(f"{c.share_file} (sealed to {c.public_key_file}, "
                     f"{_custodian.fingerprint(c.public_key)})" for c in custody)


def confirm(args: argparse.Namespace, what: str, out: Output) -> bool:
    """True with --yes or a typed 'yes'; refuses when nobody can answer."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        out.error(f"refusing to {what} without confirmation: add --yes")
        return False
    return input(f"{what}? type 'yes' to go on: ").strip().lower() == "yes"


async def status(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                 out: Output) -> int:
    reply = await stub.GetKeyStatus(admin_pb2.GetKeyStatusRequest(), timeout=args.timeout)
    refused = (f", {reply.seal.refused_shares} refused unseal shares"
               if reply.seal.mode == "production" else "")
    lines = [f"mode {reply.seal.mode}, {'SEALED' if reply.seal.sealed else 'unsealed'}"
             f"{refused}, keyring generation {reply.generation}"]
    for v in reply.versions:
        extra = f" records={v.record_count}" if v.kind in (1, 2) else ""
        if v.HasField("expire_time"):
            extra += f" expires={v.expire_time.ToJsonString()}"
        lines.append(f"  {KIND_NAMES.get(v.kind, '?'):5} v{v.version:<3} "
                     f"{'current ' if v.current else 'previous'} {v.key_id}{extra}")
    r = reply.rewrap
    lines.append(f"rewrap: {r.done}/{r.total} to kek v{r.target_kek_version} "
                 f"fp v{r.target_fingerprint_version}, "
                 f"{'complete' if r.complete else 'records still on old versions'}")
    out.result(as_dict(reply), "\n".join(lines))
    return _exit.SEALED if reply.seal.sealed else _exit.OK


async def rotate(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                 out: Output) -> int:
    reply = await stub.RotateKey(admin_pb2.RotateKeyRequest(kind=args.kind_value),
                                 timeout=args.timeout)
    hint = {1: "; run `rewrap`, then `retire kek <old>`",
            2: "; new mappings go to it once it has settled (CARDLINK_KEY_SETTLE_S, 30 s by "
               "default, so every vault process knows it): run `rewrap` after that, then "
               "`retire fp <old>`",
            3: "; the previous key keeps opening cards until its grace period ends",
            4: "; publish the new public key to pinned clients, then `retire sign <old>`"}
    out.result(as_dict(reply), f"{args.kind} v{reply.version} ({reply.key_id}) is current"
               + hint.get(args.kind_value, ""))
    return _exit.OK


async def rewrap(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                 out: Output) -> int:
    call = stub.RewrapRecords(admin_pb2.RewrapRecordsRequest(batch_size=args.batch,
                                                             limit=args.limit))
    last = admin_pb2.RewrapProgress()
    async for progress in call:
        last = progress
        out.progress(progress.done, progress.total, progress.rate, progress.eta_seconds)
    out.end_progress()
    state = "complete" if last.complete else "stopped; run again to resume"
    out.result(as_dict(last), f"rewrap {state}: {last.done}/{last.total} records on kek "
               f"v{last.target_kek_version}, fp v{last.target_fingerprint_version}"
               + (f", {last.skipped} skipped" if last.skipped else ""))
    return _exit.OK if last.complete else _exit.INCOMPLETE


async def retire(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                 out: Output) -> int:
    if not confirm(args, f"destroy {args.kind} version {args.version} for good", out):
        return _exit.NOT_CONFIRMED
    reply = await stub.RetireKeyVersion(admin_pb2.RetireKeyVersionRequest(
        kind=args.kind_value, version=args.version), timeout=args.timeout)
    out.result(as_dict(reply), f"{args.kind} v{reply.version} retired; its material is "
               "destroyed")
    return _exit.OK


async def init(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
               out: Output) -> int:
    custody = custodians(args)
    reply = await stub.InitRoot(admin_pb2.InitRootRequest(
        threshold=args.threshold, share_count=args.shares,
        custodian_public_keys=[c.public_key for c in custody]), timeout=args.timeout)
    files = write_sealed_shares(reply.sealed_shares, custody, out)
    document: dict[str, Any] = {"seal": as_dict(reply.seal), "share_files": files}
    out.result(document, f"initialized: {args.threshold} of {args.shares} shares unseal the "
               f"vault (sealed now)\n{_custody_text(custody)}")
    return _exit.OK


async def unseal(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                 out: Output) -> int:
    share = read_share(args.share_file, args.custodian_key, out)
    reply = await stub.Unseal(admin_pb2.UnsealRequest(share=share), timeout=args.timeout)
    text = ("unsealed" if not reply.sealed else
            f"share accepted: {reply.progress} of {reply.threshold}; still sealed")
    out.result(as_dict(reply), text)
    return _exit.SEALED if reply.sealed else _exit.OK


async def rekey(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                out: Output) -> int:
    custody = custodians(args)
    keys = [c.public_key for c in custody]
    what = "replace the root key and every share" if args.rotate_root else "replace every share"
    if not confirm(args, what, out):
        return _exit.NOT_CONFIRMED
    share = read_share(args.share_file, args.custodian_key, out)
    if args.rotate_root:
        reply = await stub.RotateRoot(admin_pb2.RotateRootRequest(
            share=share, threshold=args.threshold, share_count=args.shares,
            custodian_public_keys=keys), timeout=args.timeout)
    else:
        reply = await stub.RekeyRoot(admin_pb2.RekeyRootRequest(
            share=share, threshold=args.threshold, share_count=args.shares,
            custodian_public_keys=keys), timeout=args.timeout)
    if not reply.complete:
        out.result(as_dict(reply), f"share accepted: {reply.progress} of {reply.threshold}")
        return _exit.OK
    files = write_sealed_shares(reply.sealed_shares, custody, out)
    document = as_dict(reply)
    document.pop("sealed_shares", None)
    document["share_files"] = files
    out.result(document, f"done: new {args.threshold}-of-{args.shares} shares (root "
               f"{reply.root_key_id}); the old shares no longer work\n"
               + _custody_text(custody))
    return _exit.OK


def keygen_custodian(args: argparse.Namespace, out: Output) -> int:
    """A custodian's X25519 key pair: NAME.key stays with them, NAME.pub goes to init/rekey."""
    try:
        key_file, pub_file, public = _custodian.generate(args.out,
                                                         lambda: passphrase(new=True))
    except _custodian.CustodianError as error:
        raise UsageError(str(error)) from None
    encoded = base64.b64encode(public).decode()
    fp = _custodian.fingerprint(public)
    out.result({"key_file": str(key_file), "public_key_file": str(pub_file),
                "public_key": encoded, "fingerprint": fp},
               f"wrote {key_file} (0600, keep it; it opens your share) and {pub_file}:\n"
               f"{encoded}\nfingerprint {fp}: check it in the audit log of init/rekey")
    return _exit.OK


def check_share(args: argparse.Namespace, out: Output) -> int:
    """Open your sealed share locally and check that it holds a share; no vault
    needed. Run when the file reaches you: a share sealed to a key that is not
    yours (a substituted public key at init or rekey) shows at once, not at the
    next unseal."""
    mnemonic = read_share(args.share_file, args.custodian_key, out)
    try:
        share = Share.from_mnemonic(mnemonic)
    except (MnemonicError, ValueError):
        raise UsageError(f"{args.share_file} opens with your key but holds no valid share "
                         "(damaged)") from None
    number = share.index + 1  # SLIP-39 numbers members from 0
    out.result({"opens": True, "share_set": share.identifier, "share": number,
                "threshold": share.member_threshold},
               f"{args.share_file} opens with your key: share {number} of share set "
               f"{share.identifier}, which opens the vault with {share.member_threshold} "
               "shares. Compare the share set with the other custodians'.")
    return _exit.OK


_CHECKPOINT = re.compile(r"([0-9]+):([0-9a-f]{64})")


def checkpoint(text: str) -> admin_pb2.AuditCheckpoint:
    """``--checkpoint SEQ:MAC``, as ``audit verify`` prints a head (pasted copies
    may carry spaces or capitals)."""
    match = _CHECKPOINT.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError("expected SEQ:MAC (a number, a colon and 64 hex "
                                         "characters), as `audit verify` prints it")
    return admin_pb2.AuditCheckpoint(seq=int(match[1]), mac=match[2])


async def audit_verify(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                       out: Output) -> int:
    request = admin_pb2.VerifyAuditRequest(checkpoint=args.checkpoint)
    reply = await stub.VerifyAudit(request, timeout=args.timeout)
    if reply.ok:
        held = (f"; still holds checkpoint {args.checkpoint.seq}"
                if args.checkpoint is not None else "")
        text = f"audit log intact: {reply.verified} entries verified{held}"
        if reply.head_seq:
            text += (f"; checkpoint {reply.head_seq}:{reply.head_mac} (record it outside "
                     "Redis and pass it to --checkpoint later: only that shows a tail cut "
                     "off together with its head)")
    else:
        text = (f"audit log BROKEN: {reply.problem} at entry {reply.entry_id or '(end)'} "
                f"(expected seq {reply.expected_seq}); {reply.verified} entries verified "
                "before it")
        if reply.problem == "ROLLED_BACK":
            text += ("; the log no longer holds that checkpoint: entries after it were cut "
                     "off, or the checkpoint is not from this log")
    out.result(as_dict(reply), text)
    return _exit.OK if reply.ok else _exit.AUDIT_BROKEN


async def audit_export(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                       out: Output) -> int:
    call = stub.ExportAudit(admin_pb2.ExportAuditRequest(start_seq=args.from_seq))
    # Never through a symlink planted at the name; the log is 0600 like the others.
    target = (os.fdopen(os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                                0o600), "w", encoding="utf-8") if args.out else sys.stdout)
    count = 0
    try:
        async for record in call:
            line = {"entry_id": record.entry_id, **dict(record.fields)}
            target.write(json.dumps(line, sort_keys=True) + "\n")
            count += 1
    finally:
        if args.out:
            target.close()
    if args.out:
        out.result({"exported": count, "file": str(args.out)},
                   f"exported {count} entries to {args.out}")
    return _exit.OK


def keygen(args: argparse.Namespace, out: Output) -> int:
    """A new Ed25519 key for the tool, and the JWK to add to the trust store."""
    if os.path.lexists(args.out):  # a dangling symlink too
        raise UsageError(f"{args.out} exists; not overwriting a key")
    key = generate_signing_key()
    save_private_key_pem(key, args.out)
    kid = args.kid or f"{args.issuer}-{os.urandom(4).hex()}"
    jwk = public_jwk(key, kid)
    out.result({"kid": kid, "jwk": jwk, "key_file": str(args.out)},
               f"wrote {args.out} (0600). Publish under issuer {args.issuer!r} in the trust "
               f"store with scopes vault.keys.admin vault.keys.unseal vault.audit.read:\n"
               + json.dumps(jwk) + f"\nthen set CARDLINK_KEYTOOL_KEY_FILE={args.out} "
               f"CARDLINK_KEYTOOL_KID={kid}")
    return _exit.OK


_COMMANDS = {"status": status, "rotate": rotate, "rewrap": rewrap, "retire": retire,
             "init": init, "unseal": unseal, "rekey": rekey}


async def dispatch(args: argparse.Namespace, channel: grpc.aio.Channel, out: Output) -> int:
    stub = admin_pb2_grpc.KeyAdminStub(channel)
    if args.command == "audit":
        command = audit_verify if args.audit_command == "verify" else audit_export
        return await command(stub, args, out)
    return await _COMMANDS[args.command](stub, args, out)
