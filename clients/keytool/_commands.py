"""One coroutine per key tool command; each returns an exit code."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from cardlink.vault.v1 import admin_pb2, admin_pb2_grpc
from clients.keytool import _exit
from clients.keytool._output import Output, as_dict
from common.auth import generate_signing_key, public_jwk, save_private_key_pem

KIND_NAMES = {1: "kek", 2: "fp", 3: "seal", 4: "sign"}


class UsageError(Exception):
    """Bad or missing arguments the parser cannot catch."""


def read_share(path: Path | None) -> str:
    """A share from a file, or typed at a prompt without echo."""
    if path is not None:
        return path.read_text(encoding="utf-8").strip()
    return getpass.getpass("your share (words, not echoed): ").strip()


def confirm(args: argparse.Namespace, what: str, out: Output) -> bool:
    """True with --yes or a typed 'yes'; refuses when nobody can answer."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        out.error(f"refusing to {what} without confirmation: add --yes")
        return False
    return input(f"{what}? type 'yes' to go on: ").strip().lower() == "yes"


def write_shares(shares: Sequence[str], out_dir: Path | None, out: Output) -> list[str]:
    """One 0600 file per share in ``out_dir``; the file names."""
    if out_dir is None:
        return []
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    names = []
    for index, share in enumerate(shares, start=1):
        path = out_dir / f"share-{index}.txt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(share + "\n")
        names.append(str(path))
    out.info(f"wrote {len(names)} share files to {out_dir}: hand one to each custodian, "
             "then delete them here")
    return names


def _shares_text(shares: Sequence[str], files: Sequence[str]) -> str:
    if files:
        return "\n".join(files)
    return "\n".join(f"share {i}: {s}" for i, s in enumerate(shares, start=1))


async def status(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                 out: Output) -> int:
    reply = await stub.GetKeyStatus(admin_pb2.GetKeyStatusRequest(), timeout=args.timeout)
    lines = [f"mode {reply.seal.mode}, {'SEALED' if reply.seal.sealed else 'unsealed'}, "
             f"keyring generation {reply.generation}"]
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
            2: "; run `rewrap`, then `retire fp <old>`",
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
    reply = await stub.InitRoot(admin_pb2.InitRootRequest(
        threshold=args.threshold, share_count=args.shares), timeout=args.timeout)
    files = write_shares(reply.shares, args.out_dir, out)
    document: dict[str, Any] = {"seal": as_dict(reply.seal)}
    document["share_files" if files else "shares"] = files or list(reply.shares)
    out.result(document, f"initialized: {args.threshold} of {args.shares} shares unseal the "
               f"vault (sealed now)\n{_shares_text(reply.shares, files)}")
    return _exit.OK


async def unseal(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                 out: Output) -> int:
    reply = await stub.Unseal(admin_pb2.UnsealRequest(share=read_share(args.share_file)),
                              timeout=args.timeout)
    text = ("unsealed" if not reply.sealed else
            f"share accepted: {reply.progress} of {reply.threshold}; still sealed")
    out.result(as_dict(reply), text)
    return _exit.SEALED if reply.sealed else _exit.OK


async def rekey(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                out: Output) -> int:
    what = "replace the root key and every share" if args.rotate_root else "replace every share"
    if not confirm(args, what, out):
        return _exit.NOT_CONFIRMED
    share = read_share(args.share_file)
    if args.rotate_root:
        reply = await stub.RotateRoot(admin_pb2.RotateRootRequest(
            share=share, threshold=args.threshold, share_count=args.shares), timeout=args.timeout)
    else:
        reply = await stub.RekeyRoot(admin_pb2.RekeyRootRequest(
            share=share, threshold=args.threshold, share_count=args.shares), timeout=args.timeout)
    if not reply.complete:
        out.result(as_dict(reply), f"share accepted: {reply.progress} of {reply.threshold}")
        return _exit.OK
    files = write_shares(reply.shares, args.out_dir, out)
    document = as_dict(reply)
    if files:
        document["shares"], document["share_files"] = [], files
    out.result(document, f"done: new {args.threshold}-of-{args.shares} shares (root "
               f"{reply.root_key_id}); the old shares no longer work\n"
               + _shares_text(reply.shares, files))
    return _exit.OK


async def audit_verify(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                       out: Output) -> int:
    reply = await stub.VerifyAudit(admin_pb2.VerifyAuditRequest(), timeout=args.timeout)
    if reply.ok:
        text = (f"audit log intact: {reply.verified} entries verified; head seq "
                f"{reply.head_seq} mac {reply.head_mac} (keep this to detect truncation)")
    else:
        text = (f"audit log BROKEN: {reply.problem} at entry {reply.entry_id or '(end)'} "
                f"(expected seq {reply.expected_seq}); {reply.verified} entries verified "
                "before it")
    out.result(as_dict(reply), text)
    return _exit.OK if reply.ok else _exit.AUDIT_BROKEN


async def audit_export(stub: admin_pb2_grpc.KeyAdminAsyncStub, args: argparse.Namespace,
                       out: Output) -> int:
    call = stub.ExportAudit(admin_pb2.ExportAuditRequest(start_seq=args.from_seq))
    target = args.out.open("w", encoding="utf-8") if args.out else sys.stdout
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
    if args.out.exists():
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
