"""Argument parsing, credentials and the error boundary of the key tool."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from clients.keytool import _commands, _exit
from clients.keytool._output import Output
from common.auth import TokenMinter, bearer_interceptors, jwk_thumbprint, load_private_key_pem
from common.clock import SystemClock
from common.config import ConfigError, Env
from common.devstack import state_dir
from common.grpc_errors import error_from_rpc
from common.tls import VAULT_CLIENT_TLS, ClientTls, open_channel

SCOPES = ("vault.keys.admin", "vault.keys.unseal", "vault.audit.read")
KINDS = {"kek": 1, "fp": 2, "fingerprint": 2, "seal": 3, "sealing": 3, "sign": 4, "signing": 4}

ENVIRONMENT = """environment (flags win):
  CARDLINK_KEYTOOL_ADDRESS   vault address (default 127.0.0.1:7001)
  CARDLINK_KEYTOOL_KEY_FILE  PEM private key the tool signs its JWTs with
                             (default: make run's <state>/jwt/cardlink-security.pem)
  CARDLINK_KEYTOOL_KID       key id of that key in the vault's trust store
                             (default: the key's RFC 7638 thumbprint)
  CARDLINK_KEYTOOL_ISSUER    issuer name in the trust store (default cardlink-security)
  CARDLINK_KEYTOOL_SUBJECT   who you are, recorded in the audit log (default $USER)
  CARDLINK_KEYTOOL_TOKEN     a ready-made bearer JWT instead of the key file
  CARDLINK_VAULT_AUDIENCE    JWT audience (default cardlink-vault)

exit codes: 0 ok, 1 refused by the vault, 2 usage, 3 vault unreachable,
4 vault sealed, 5 audit chain broken, 6 not confirmed, 7 credential refused,
8 rewrap incomplete"""


TOKEN_ENV = "CARDLINK_KEYTOOL_TOKEN"  # noqa: S105 (a variable name, not a secret)


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    env = environ.get
    parser = argparse.ArgumentParser(
        prog="cardlink-keytool", description="CardLink vault key administration.",
        epilog=ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=env("CARDLINK_KEYTOOL_ADDRESS", "127.0.0.1:7001"))
    parser.add_argument("--key-file", default=env("CARDLINK_KEYTOOL_KEY_FILE"))
    parser.add_argument("--kid", default=env("CARDLINK_KEYTOOL_KID"))
    parser.add_argument("--issuer", default=env("CARDLINK_KEYTOOL_ISSUER", "cardlink-security"))
    parser.add_argument("--subject", default=env("CARDLINK_KEYTOOL_SUBJECT",
                                                 env("USER", "security-officer")))
    parser.add_argument("--audience", default=env("CARDLINK_VAULT_AUDIENCE", "cardlink-vault"))
    # From the environment only: a command line is readable by every local
    # user (ps, /proc), and this token may unseal the vault.
    parser.set_defaults(token=env(TOKEN_ENV), environ=environ)
    tls = f"{VAULT_CLIENT_TLS}_TLS"
    parser.add_argument("--tls-ca", default=env(f"{tls}_CA_FILE"),
                        help="TLS to the vault: the CA file that signed its certificate")
    parser.add_argument("--tls-cert", default=env(f"{tls}_CERT_FILE"),
                        help="with --tls-key: this client's certificate, for mutual TLS")
    parser.add_argument("--tls-key", default=env(f"{tls}_KEY_FILE"))
    parser.add_argument("--tls-server-name", default=env(f"{tls}_SERVER_NAME"),
                        help="the name the vault's certificate carries, if not its host")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--yes", action="store_true", help="confirm destructive steps")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("status", help="key versions, records per version, seal and rewrap state")
    rotate = sub.add_parser("rotate", help="make a new version of KIND current")
    rotate.add_argument("kind", choices=sorted(KINDS))
    rewrap = sub.add_parser("rewrap", help="move records to the current keys (resumable)")
    rewrap.add_argument("--batch", type=int, default=500)
    rewrap.add_argument("--limit", type=int, default=0, help="stop after this many records")
    retire = sub.add_parser("retire", help="destroy KIND VERSION (refused while needed)")
    retire.add_argument("kind", choices=sorted(KINDS))
    retire.add_argument("version", type=int)
    init = sub.add_parser("init", help="production: create the root key and its shares, "
                          "each sealed to a custodian key")
    _share_parameters(init)
    unseal = sub.add_parser("unseal", help="submit your share (prompted if no file)")
    _own_share(unseal)
    rekey = sub.add_parser("rekey", help="submit your share toward new shares (same root)")
    _share_parameters(rekey)
    rekey.add_argument("--rotate-root", action="store_true",
                       help="also replace the root key (the keyring is rewrapped)")
    _own_share(rekey)
    audit = sub.add_parser("audit", help="verify or export the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the keyed hash chain")
    verify.add_argument("--checkpoint", type=_commands.checkpoint, metavar="SEQ:MAC",
                        help="a head an earlier verify printed: the log must still hold it")
    export = audit_sub.add_parser("export", help="JSON lines, to --out or stdout")
    export.add_argument("--out", type=Path)
    export.add_argument("--from-seq", type=int, default=0)
    keygen = sub.add_parser("keygen", help="new tool key pair; prints the JWK to publish")
    keygen.add_argument("--out", type=Path, required=True)
    custodian = sub.add_parser("keygen-custodian",
                               help="a custodian's X25519 key pair: NAME.key and NAME.pub")
    custodian.add_argument("--out", type=Path, required=True, metavar="NAME",
                           help="writes NAME.key (0600, private) and NAME.pub (base64)")
    check = sub.add_parser("check-share", help="open your sealed share file locally (no "
                           "vault) and check that it holds a share")
    check.add_argument("--share-file", type=Path, required=True)
    check.add_argument("--custodian-key", type=Path, required=True, metavar="NAME.key",
                       help="your custodian private key")
    return parser


def _share_parameters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", "-k", type=int, required=True, help="shares needed")
    parser.add_argument("--shares", "-n", type=int, required=True, help="shares issued")
    parser.add_argument("--custodian", type=Path, action="append", metavar="NAME.pub",
                        help="a custodian's public key file, once per share (n in all); "
                        "that custodian's share is sealed to it")
    parser.add_argument("--out-dir", type=Path, help="where the sealed share files go, one "
                        "per custodian named after the key file (default: here)")


def _own_share(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--share-file", type=Path,
                        help="your sealed share file (with --custodian-key), or a clear one")
    parser.add_argument("--custodian-key", type=Path, metavar="NAME.key",
                        help="your custodian private key: opens your sealed share locally")


def _key_file(args: argparse.Namespace) -> Path:
    if args.key_file:
        return Path(args.key_file)
    # `make run` keeps a development key for the security team in its state folder.
    dev_key = state_dir(args.environ) / "jwt" / f"{args.issuer}.pem"
    if dev_key.exists():
        return dev_key
    raise _commands.UsageError("give --key-file (or CARDLINK_KEYTOOL_KEY_FILE), or run "
                               "`make run` first for a development key")


# Commands that need no vault (and so no credential).
_OFFLINE = {"keygen": _commands.keygen, "keygen-custodian": _commands.keygen_custodian,
            "check-share": _commands.check_share}


def _bearer(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    key = load_private_key_pem(_key_file(args))
    minter = TokenMinter(key, args.kid or jwk_thumbprint(key), args.issuer, args.audience,
                         SystemClock())
    return minter.mint(args.subject, "security", SCOPES, ttl=600)


async def _run(args: argparse.Namespace, out: Output) -> int:
    offline = _OFFLINE.get(args.command)
    if offline is not None:
        return offline(args, out)
    token = _bearer(args)
    async with open_channel(args.address, _tls(args),
                            interceptors=bearer_interceptors(lambda: token)) as channel:
        return await _commands.dispatch(args, channel, out)


def _tls(args: argparse.Namespace) -> ClientTls | None:
    """The --tls-* flags, checked as the settings they default to."""
    given = {"CA_FILE": args.tls_ca, "CERT_FILE": args.tls_cert, "KEY_FILE": args.tls_key,
             "SERVER_NAME": args.tls_server_name}
    try:
        return ClientTls.from_env(Env({f"{VAULT_CLIENT_TLS}_TLS_{name}": value
                                       for name, value in given.items() if value}),
                                  VAULT_CLIENT_TLS)
    except ConfigError as error:
        raise _commands.UsageError(f"{error} (or the --tls-* flags)") from None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; ``environ`` stands in for the process environment."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg == "--token" or arg.startswith("--token=") for arg in argv):
        # argparse would echo the value back in its error message.
        print(f"cardlink-keytool: error: --token is not accepted (a command line is "
              f"readable by every local user); set {TOKEN_ENV}", file=sys.stderr)
        return _exit.USAGE
    args = _parser(os.environ if environ is None else environ).parse_args(argv)
    out = Output(json_mode=args.json)
    args.kind_value = KINDS.get(getattr(args, "kind", ""), 0)
    try:
        return asyncio.run(_run(args, out))
    except _commands.UsageError as error:
        out.error(str(error))
        return _exit.USAGE
    except _commands.SharesNotSaved as error:
        out.error(str(error))
        return _exit.SHARES_NOT_SAVED
    except grpc.aio.AioRpcError as rpc:
        refusal = error_from_rpc(rpc)
        out.error(f"{refusal.reason}: {rpc.details()}", code=rpc.code().name,
                  reason=refusal.reason, metadata=dict(refusal.metadata))
        return _exit.for_status(rpc.code(), refusal.reason)
    except KeyboardInterrupt:
        if args.command != "rewrap":
            out.error("interrupted")
            return _exit.FAILED
        out.error("interrupted (a rewrap resumes where it stopped when run again)")
        return _exit.INCOMPLETE
    except OSError as error:
        out.error(str(error))
        return _exit.USAGE
