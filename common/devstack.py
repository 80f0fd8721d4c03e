"""`make run`: the whole system on one machine, for development and demos.

    python -m common.devstack                    # start everything, Ctrl-C stops it
    python -m common.devstack token --issuer cardlink-bank --tenant demo \\
        --scope vault.tokens.get                 # print a short-lived dev JWT

It keeps its state outside the repository (``CARDLINK_STATE_DIR``, default
``$XDG_STATE_HOME/cardlink``): JWT signing keys for the service callers, the
trust store listing their public keys, the vault's development root key, the
private Redis's data (AOF) and each service's log. With ``REDIS_URL`` unset it
starts a private redis-server; then it starts every service of ``SERVICES``
whose module exists, waits until each answers its gRPC health check, and
prints how to try it. Ctrl-C or SIGTERM stops the services (newest first),
then Redis, and exits 0; a service that dies on its own stops everything and
exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.auth import (
    MAX_TOKEN_LIFETIME_S,
    TokenMinter,
    TrustedIssuer,
    generate_signing_key,
    jwk_thumbprint,
    load_private_key_pem,
    public_jwk,
    save_private_key_pem,
    write_trust_store,
)
from common.clock import SystemClock
from common.config import ConfigError, Env, default_state_dir
from common.redis_runtime import PrivateRedis

DEFAULT_REDIS_PORT = 7379
DEFAULT_VAULT_AUDIENCE = "cardlink-vault"  # what vault/config.py expects by default
START_TIMEOUT_S = 30.0  # first start of a service includes imports and key generation
STOP_GRACE_S = 10.0  # longer than the services' own shutdown grace (5 s by default)
POLL_S = 0.1
DEV_TOKEN_TTL_S = 600
LOG_TAIL_LINES = 20


class DevstackError(RuntimeError):
    """Something stopped the dev stack; the message says what and what to do."""


# --------------------------------------------------------------------------
# Who is who
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """A JWT issuer the dev stack holds a signing key for.

    The trust store grants it ``tenants`` and ``scopes``: a token's scopes are
    cut down to these, so each identity gets what its role needs and no more.
    """

    issuer: str
    tenants: tuple[str, ...]
    scopes: tuple[str, ...]


CALLERS: tuple[Caller, ...] = (
    # The gateway toward the vault (never detokenize) and toward the bank core.
    Caller(
        "cardlink-gateway",
        ("*",),
        ("vault.tokens.create", "vault.tokens.get", "vault.tokens.delete", "bank.core"),
    ),
    # The bank core (simulator): PAN-entitled at the vault; pushes events to the gateway.
    Caller(
        "cardlink-bank",
        ("*",),
        ("vault.tokens.get", "vault.tokens.detokenize", "gateway.bank.events"),
    ),
    # The security team's key tool: key lifecycle, unseal, audit; no card data.
    Caller(
        "cardlink-security",
        ("security",),
        ("vault.keys.admin", "vault.keys.unseal", "vault.audit.read"),
    ),
    # A partner platform for `make demo`: the partner API, one tenant.
    Caller(
        "demo-partner",
        ("demo",),
        (
            "gateway.bindings.read",
            "gateway.bindings.write",
            "gateway.credit.read",
            "gateway.credit.write",
        ),
    ),
)
_ISSUERS = tuple(c.issuer for c in CALLERS)


@dataclass(frozen=True)
class Service:
    """One process `make run` starts.

    The process gets ``CARDLINK_<NAME>_LISTEN`` (the user's value if set, else
    ``default_listen``); every process gets ``CARDLINK_<NAME>_TARGET`` of each
    service started before it, so later services find earlier ones. ``issuer``
    names the caller identity whose key file it signs with. ``env`` values may
    use ``{state}``.
    """

    name: str
    module: str
    default_listen: str
    arrives_with: str
    issuer: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    hints: tuple[str, ...] = ()
    # Once healthy: run `python -m <module> <args>` with the service's
    # environment and write what it prints to `<state>/<file>`.
    publishes: tuple[tuple[str, ...], str] | None = None

    @property
    def env_prefix(self) -> str:
        return f"CARDLINK_{self.name.upper()}"


_VAULT_SNIPPET = """\
{python} - <<'EOF'
import grpc
from cardlink.vault.v1 import vault_pb2, vault_pb2_grpc
from common.devstack import dev_token
vault = vault_pb2_grpc.TokenVaultStub(grpc.insecure_channel("{listen}"))
print(vault.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest()))
auth = [("authorization", "Bearer " + dev_token("cardlink-bank", "demo", ["vault.tokens.get"]))]
try:
    vault.GetToken(vault_pb2.GetTokenRequest(name="tenants/demo/tokens/ctk_{fake}"), metadata=auth)
except grpc.RpcError as error:
    print(error.code(), error.details())  # no such token yet
EOF"""

# Start order is dependency order (the bank simulator calls the vault, the
# gateway calls both); stopping goes the other way.
SERVICES: tuple[Service, ...] = (
    Service(
        name="vault",
        module="vault",
        default_listen="127.0.0.1:7001",
        arrives_with="issue 3",
        env={
            "CARDLINK_VAULT_MODE": "dev",
            "CARDLINK_VAULT_KEY_FILE": "{state}/vault-root.key",
        },
        # The key-set verification keys partners pin (the demo reads them).
        publishes=(("pins",), "vault-pins.json"),
        hints=(
            "grpcurl -plaintext {listen} list",
            "grpcurl -plaintext {listen} cardlink.vault.v1.TokenVault/GetSealingKeySet",
            'grpcurl -plaintext -H "authorization: Bearer $({python} -m common.devstack token'
            ' --issuer cardlink-bank --tenant demo --scope vault.tokens.get)"'
            ' -d \'{{"name": "tenants/demo/tokens/ctk_{fake}"}}\''
            " {listen} cardlink.vault.v1.TokenVault/GetToken",
            _VAULT_SNIPPET,
        ),
    ),
    Service(
        name="banksim",
        module="clients.banksim",
        default_listen="127.0.0.1:7003",
        arrives_with="issue 5",
        issuer="cardlink-bank",
        hints=("grpcurl -plaintext {listen} list",),
    ),
    Service(
        name="gateway",
        module="gateway",
        default_listen="127.0.0.1:7002",
        arrives_with="issue 5",
        issuer="cardlink-gateway",
        hints=("make demo        # in another terminal: bind a card with a one-time code, "
               "activate credit",
               "grpcurl -plaintext {listen} list"),
    ),
)


# --------------------------------------------------------------------------
# State and credentials
# --------------------------------------------------------------------------


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    return Env(environ).path("CARDLINK_STATE_DIR", default_state_dir())


REPOSITORY = Path(__file__).resolve().parents[1]


def _outside_repository(state: Path) -> Path:
    """The state folder, refused inside the working tree: keys and secrets there
    are one `git add` away from a commit."""
    resolved = state.resolve()
    if resolved == REPOSITORY or REPOSITORY in resolved.parents:
        raise DevstackError(f"the state folder {state} is inside the repository "
                            f"({REPOSITORY}); set CARDLINK_STATE_DIR to a folder outside it")
    return state


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is masked by umask, and the folder may predate us
    return path


@dataclass(frozen=True)
class CallerKey:
    """A caller's signing key as kept in the state folder."""

    caller: Caller
    path: Path
    key: Ed25519PrivateKey
    kid: str


def _create_once(path: Path, write: Callable[[Path], object]) -> None:
    """Create a 0600 secret file unless it exists. Written aside, then linked into
    place: link fails if the file exists, so processes racing here (`make run`
    and `... token`) agree on one secret."""
    if not path.exists():
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write(temp)
        os.chmod(temp, 0o600)
        try:
            os.link(temp, path)
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    os.chmod(path, 0o600)


def _load_or_create_key(path: Path) -> Ed25519PrivateKey:
    _create_once(path, lambda temp: save_private_key_pem(generate_signing_key(), temp))
    key = load_private_key_pem(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise DevstackError(f"{path} is not an Ed25519 key; delete it to get a new one")
    return key


def dev_fingerprint_secret(state: Path) -> str:
    """The gateway's code-fingerprint HMAC secret for `make run` (created once, 0600)."""
    path = _private_dir(state) / "gateway-fingerprint.secret"
    _create_once(path, lambda temp: temp.write_text(secrets.token_hex(32)))
    return path.read_text().strip()


def _key_path(state: Path, issuer: str) -> Path:
    return state / "jwt" / f"{issuer}.pem"


def ensure_credentials(state: Path) -> dict[str, CallerKey]:
    """The callers' signing keys (created on first use) and an up-to-date trust.json."""
    _private_dir(_private_dir(state) / "jwt")
    keys: dict[str, CallerKey] = {}
    for caller in CALLERS:
        path = _key_path(state, caller.issuer)
        key = _load_or_create_key(path)
        keys[caller.issuer] = CallerKey(caller, path, key, jwk_thumbprint(key))
    _update_trust_store(state / "trust.json", keys.values())
    return keys


def _update_trust_store(path: Path, keys: Iterable[CallerKey]) -> None:
    ours = {
        k.caller.issuer: TrustedIssuer(
            [public_jwk(k.key, k.kid)], k.caller.tenants, k.caller.scopes
        )
        for k in keys
    }
    issuers: dict[str, TrustedIssuer] = {}
    if path.exists():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            # Issuers someone added by hand (a partner under test) are kept.
            issuers = {
                name: TrustedIssuer(
                    entry["jwks"]["keys"], entry["tenants"], entry.get("scopes", [])
                )
                for name, entry in document["issuers"].items()
            }
        except (ValueError, KeyError, TypeError) as error:
            raise DevstackError(f"{path} is malformed ({error}); fix or delete it") from None
    wanted = {**issuers, **ours}
    if _as_document(wanted) != _as_document(issuers):
        # Only write on change: running services reload the file when it changes.
        write_trust_store(path, wanted)
    os.chmod(path, 0o600)


def _as_document(issuers: Mapping[str, TrustedIssuer]) -> dict[str, Any]:
    return {
        name: {
            "keys": [dict(k) for k in entry.keys],
            "tenants": list(entry.tenants),
            "scopes": list(entry.scopes),
        }
        for name, entry in issuers.items()
    }


def dev_token(
    issuer: str,
    tenant: str,
    scopes: Sequence[str],
    *,
    subject: str | None = None,
    audience: str | None = None,
    ttl: int = DEV_TOKEN_TTL_S,
    environ: Mapping[str, str] | None = None,
) -> str:
    """A short-lived JWT signed with a dev caller's key from the state folder."""
    env = Env(environ)
    state = state_dir(environ)
    if issuer not in _ISSUERS:
        raise DevstackError(f"unknown issuer {issuer!r}; dev issuers: {', '.join(_ISSUERS)}")
    if not _key_path(state, issuer).exists():
        # Minting with a new key that no running service trusts would only
        # confuse; most likely `make run` uses another state folder.
        raise DevstackError(
            f"no development keys in {state}: run `make run` first, with the same "
            "CARDLINK_STATE_DIR"
        )
    keys = ensure_credentials(state)
    caller_key = keys[issuer]
    allowed = caller_key.caller.tenants
    if "*" not in allowed and tenant not in allowed:
        raise DevstackError(f"{issuer} may only assert tenant(s) {', '.join(allowed)}")
    # The verifier would silently drop a scope the issuer is not granted, and
    # the call would then fail with PERMISSION_DENIED; say so here instead.
    refused = sorted(set(scopes) - set(caller_key.caller.scopes))
    if refused:
        raise DevstackError(
            f"{issuer} is not granted {', '.join(refused)}; "
            f"its scopes: {', '.join(caller_key.caller.scopes)}"
        )
    minter = TokenMinter(
        caller_key.key,
        caller_key.kid,
        issuer,
        audience or env.text("CARDLINK_VAULT_AUDIENCE", DEFAULT_VAULT_AUDIENCE),
        SystemClock(),
    )
    return minter.mint(subject or issuer, tenant, scopes, ttl=ttl)


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def module_available(module: str) -> bool:
    """Whether `python -m module` would find something to run."""
    try:
        spec = importlib.util.find_spec(module)
        # A package runs its __main__; an empty folder is a namespace package.
        if spec is not None and spec.submodule_search_locations is not None:
            spec = importlib.util.find_spec(f"{module}.__main__")
    except ModuleNotFoundError as error:
        if error.name is not None and module.startswith(error.name):
            return False
        raise
    return spec is not None


@dataclass
class Child:
    service: Service
    listen: str
    env: Mapping[str, str]
    log_path: Path
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def log_tail(self) -> str:
        self.log.flush()
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        tail = lines[-LOG_TAIL_LINES:] or ["(empty)"]
        return "\n".join(f"    {line}" for line in tail)

    def died(self, when: str) -> DevstackError:
        code = self.process.returncode
        return DevstackError(
            f"{self.service.name} exited {when} (exit code {code}); last lines of "
            f"{self.log_path}:\n{self.log_tail()}"
        )


def _spawn(service: Service, listen: str, env: Mapping[str, str], logs: Path) -> Child:
    log_path = logs / f"{service.name}.log"
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    log = os.fdopen(descriptor, "wb")  # closed when the child is stopped
    process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        [sys.executable, "-m", service.module],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        # Own process group: Ctrl-C reaches only us, so we stop children in order.
        process_group=0,
    )
    return Child(service, listen, env, log_path, process, log)


def _publish(child: Child, state: Path) -> None:
    """Write what a service publishes for others (the vault: its key-set pins)."""
    if child.service.publishes is None:
        return
    args, file_name = child.service.publishes
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [sys.executable, "-m", child.service.module, *args],
        env=dict(child.env), capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise DevstackError(f"{child.service.name} {' '.join(args)} failed:\n{result.stderr}")
    (state / file_name).write_text(result.stdout)


class StopRequest:
    """Set by the SIGINT/SIGTERM handler, waited on by the supervisor's loops.

    Not a threading.Event: a handler runs in the main thread between two
    bytecodes, and one that lands while that thread holds the Event's own lock
    (inside ``wait``) deadlocks on it in ``set``, leaving `make run` deaf to
    Ctrl-C. A plain attribute needs no lock, and ``time.sleep`` returns within
    its period after a handler has run.
    """

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` unless a stop is already requested; whether one is."""
        if not self.requested:
            time.sleep(seconds)
        return self.requested


def _wait_healthy(child: Child, stopping: StopRequest) -> bool:
    """True once the child reports SERVING; False if a stop was requested meanwhile."""
    deadline = time.monotonic() + START_TIMEOUT_S
    options = [
        # A loopback check must never go through an http_proxy from the environment.
        ("grpc.enable_http_proxy", 0),
        # The first attempts fail while the child imports; gRPC's default 1 s
        # reconnect backoff would then add up to a second to every start.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]
    with grpc.insecure_channel(child.listen, options=options) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while not stopping.requested:
            if child.process.poll() is not None:
                raise child.died("during start-up")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise DevstackError(
                    f"{child.service.name} not healthy on {child.listen} after "
                    f"{START_TIMEOUT_S:.0f} s; last lines of {child.log_path}:\n{child.log_tail()}"
                )
            stopping.wait(POLL_S)
    return False


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _stop_children(children: list[Child]) -> None:
    for child in reversed(children):
        if child.process.poll() is None:
            _say(f"stopping {child.service.name} ...")
            _signal_group(child.process, signal.SIGTERM)
            try:
                child.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _say(f"{child.service.name} ignored SIGTERM for {STOP_GRACE_S:.0f} s; killing it")
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()
        else:
            # It may have exited already but left grandchildren behind.
            _signal_group(child.process, signal.SIGKILL)
        child.log.close()
    children.clear()


@contextlib.contextmanager
def _exclusive(state: Path) -> Iterator[None]:
    """One `make run` per state folder: a second would take over the Redis socket."""
    descriptor = os.open(state / "devstack.lock", os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DevstackError(
                f"another `make run` is using {state}; stop it, or set CARDLINK_STATE_DIR"
            ) from None
        yield


def _redis(env: Env, state: Path, cleanup: contextlib.ExitStack) -> tuple[str, str]:
    """The Redis URL to use and a line describing it."""
    given = env.optional("REDIS_URL")
    if given is not None:
        return given, "from REDIS_URL"
    port = env.integer("CARDLINK_DEV_REDIS_PORT", DEFAULT_REDIS_PORT, minimum=0)
    server = PrivateRedis(state / "redis", port=port or None, appendonly=True)
    try:
        server.start()
    except RuntimeError as error:
        raise DevstackError(
            f"private Redis did not start ({error}); is port {port} taken? "
            "Set CARDLINK_DEV_REDIS_PORT (0: unix socket only) or REDIS_URL"
        ) from None
    cleanup.callback(_stop_redis, server)
    return server.url, f"private redis-server, AOF in {server.data_dir}"


def _stop_redis(server: PrivateRedis) -> None:
    _say("stopping redis ...")
    server.stop()


def _say(text: str, *, file: TextIO | None = None) -> None:
    """Print a line of the supervisor's; a terminal that is gone (SIGHUP, then
    EIO on every write, even amid a line) must not keep the supervisor from
    stopping the services."""
    with contextlib.suppress(OSError):
        print(text, file=file or sys.stdout, flush=True)


def _python_command() -> str:
    """How the user can run our interpreter: `.venv/bin/python` from the repository."""
    relative = os.path.relpath(sys.executable)
    return relative if not relative.startswith("..") else sys.executable


_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def _without_password(url: str) -> str:
    """``url`` with its password masked, in the address or in the query
    (``?password=``, which redis-py reads too: the usual way for a socket)."""
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _banner(state: Path, redis_line: str, redis_url: str, children: Sequence[Child]) -> str:
    python = _python_command()
    if state != default_state_dir():
        # The printed commands mint tokens from this stack's keys, in any shell.
        python = f"CARDLINK_STATE_DIR={shlex.quote(str(state))} {python}"
    lines = [
        "",
        f"state   {state}",
        f"redis   {_without_password(redis_url)}  ({redis_line})",
    ]
    lines += [f"{c.service.name:<8}{c.listen}  (log: {c.log_path})" for c in children]
    for child in children:
        if child.service.hints:
            lines += ["", f"Try the {child.service.name}:"]
        for hint in child.service.hints:
            text = hint.format(listen=child.listen, python=python, fake="a" * 26)
            # Multi-line snippets (a heredoc) must stay at column 0 to paste.
            lines += [text] if "\n" in text else [f"  {text}"]
    lines += ["", "CardLink dev stack ready. Ctrl-C stops it."]
    return "\n".join(lines)


def run(environ: Mapping[str, str] | None = None, services: Sequence[Service] = SERVICES) -> int:
    """Start the stack and supervise it until a signal (0) or a failure (1)."""
    base_env = dict(os.environ if environ is None else environ)
    env = Env(base_env)
    stopping = StopRequest()
    signal.signal(signal.SIGINT, stopping)
    signal.signal(signal.SIGTERM, stopping)
    # SIGHUP: the terminal went away (window closed, SSH dropped). The services
    # and Redis run in process groups of their own, so it reaches only us.
    # Under nohup it stays ignored: that stack is meant to outlive the session.
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, stopping)

    children: list[Child] = []
    with contextlib.ExitStack() as cleanup:
        try:
            state = _private_dir(_outside_repository(state_dir(base_env)))
            cleanup.enter_context(_exclusive(state))
            keys = ensure_credentials(state)
            redis_url, redis_line = _redis(env, state, cleanup)
            cleanup.callback(_stop_children, children)
            child_env = {
                **base_env,
                "CARDLINK_STATE_DIR": str(state),
                "REDIS_URL": redis_url,
                "CARDLINK_REDIS_PREFIX": env.redis_prefix(),
                "CARDLINK_TRUST_FILE": str(state / "trust.json"),
            }
            for service in services:
                if stopping.requested:
                    return 0
                if not module_available(service.module):
                    _say(f"{service.name}: module {service.module} not found "
                         f"(arrives with {service.arrives_with}); skipped")
                    continue
                child = _start(service, env, child_env, keys, state)
                children.append(child)
                if not _wait_healthy(child, stopping):
                    return 0
                _publish(child, state)
                child_env[f"{service.env_prefix}_TARGET"] = child.listen
            _say(_banner(state, redis_line, redis_url, children))
            while not stopping.wait(POLL_S * 2):
                for child in children:
                    if child.process.poll() is not None:
                        raise child.died("unexpectedly")
            _say("\nstopping on request")
            return 0
        except (DevstackError, ConfigError) as error:
            # Said before the cleanup's "stopping ..." lines, so it is not missed.
            _say(f"make run: {error}", file=sys.stderr)
            return 1


def _start(
    service: Service,
    env: Env,
    child_env: Mapping[str, str],
    keys: Mapping[str, CallerKey],
    state: Path,
) -> Child:
    listen = env.text(f"{service.env_prefix}_LISTEN", service.default_listen)
    own_env = {
        **child_env,
        **{k: v.format(state=state) for k, v in service.env.items()},
        f"{service.env_prefix}_LISTEN": listen,
    }
    if service.issuer is not None:
        own_env["CARDLINK_JWT_ISSUER"] = service.issuer
        own_env["CARDLINK_JWT_KEY_FILE"] = str(keys[service.issuer].path)
        # The kid published in trust.json, so the service need not recompute it.
        own_env["CARDLINK_JWT_KEY_ID"] = keys[service.issuer].kid
    if service.name == "gateway" and "CARDLINK_GATEWAY_FINGERPRINT_SECRET" not in own_env:
        own_env["CARDLINK_GATEWAY_FINGERPRINT_SECRET"] = dev_fingerprint_secret(state)
    _say(f"starting {service.name} on {listen} ...")
    return _spawn(service, listen, own_env, _private_dir(state / "logs"))


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _token_command(options: argparse.Namespace) -> int:
    scopes = [s for group in options.scope for s in group.split()]
    try:
        token = dev_token(
            options.issuer,
            options.tenant,
            scopes,
            subject=options.subject,
            audience=options.audience,
            ttl=options.ttl,
        )
    except (DevstackError, ConfigError) as error:
        print(f"token: {error}", file=sys.stderr)
        return 1
    print(token)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cardlink-dev", description="Run CardLink locally (`make run`)."
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="start the dev stack (the default)")
    token = commands.add_parser("token", help="print a short-lived dev JWT")
    token.add_argument("--issuer", required=True, choices=_ISSUERS)
    token.add_argument("--tenant", required=True)
    token.add_argument("--scope", action="append", default=[], help="repeat, or space-separate")
    token.add_argument("--subject", help="caller name (default: the issuer)")
    token.add_argument(
        "--audience", help=f"default: $CARDLINK_VAULT_AUDIENCE or {DEFAULT_VAULT_AUDIENCE}"
    )
    token.add_argument("--ttl", type=int, default=DEV_TOKEN_TTL_S,
                       help=f"seconds (default 600, at most {MAX_TOKEN_LIFETIME_S})")
    options = parser.parse_args(argv)
    if options.command == "token" and not 1 <= options.ttl <= MAX_TOKEN_LIFETIME_S:
        parser.error(f"--ttl must be 1 to {MAX_TOKEN_LIFETIME_S} seconds: servers refuse "
                     "longer-lived tokens")
    if options.command == "token":
        return _token_command(options)
    return run()


if __name__ == "__main__":
    sys.exit(main())
