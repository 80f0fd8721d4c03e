"""`make run` (common.devstack): dev credentials, the token command, supervision.

The supervision tests run the real devstack in a subprocess with a stand-in
service: this very module run as `python -m tests.test_devstack`, a tiny gRPC
server with health checking. So start, ready, Ctrl-C and a crashing child are
exercised without depending on the vault; the full stack has its own test,
skipped until `python -m vault` exists.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import os
import pty
import queue
import random
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import jwt
import pytest
import redis as sync_redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import devstack
from common.auth import JwtVerifier, TrustStore, load_private_key_pem
from common.clock import SystemClock
from common.errors import Unauthenticated
from common.redis_runtime import PrivateRedis

ROOT = Path(__file__).resolve().parent.parent
READY = "CardLink dev stack ready"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv("CARDLINK_STATE_DIR", str(folder))
    return folder


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------


def test_first_run_creates_private_keys_and_trust_store(state: Path) -> None:
    keys = devstack.ensure_credentials(state)

    assert set(keys) == {"cardlink-gateway", "cardlink-bank", "cardlink-security", "demo-partner"}
    assert _mode(state) == 0o700
    assert _mode(state / "jwt") == 0o700
    for caller_key in keys.values():
        assert caller_key.path.parent == state / "jwt"
        assert _mode(caller_key.path) == 0o600
    trust = state / "trust.json"
    assert _mode(trust) == 0o600
    issuers = json.loads(trust.read_text())["issuers"]
    assert issuers["cardlink-gateway"]["tenants"] == ["*"]
    assert issuers["cardlink-bank"]["tenants"] == ["*"]
    assert issuers["demo-partner"]["tenants"] == ["demo"]
    assert "vault.tokens.detokenize" in issuers["cardlink-bank"]["scopes"]
    assert "vault.tokens.detokenize" not in issuers["cardlink-gateway"]["scopes"]
    assert not any(s.startswith("vault.") for s in issuers["demo-partner"]["scopes"])
    # The key tool manages keys and reads the audit log; it never sees card data.
    assert not any(s.startswith("vault.tokens") for s in issuers["cardlink-security"]["scopes"])
    for name, caller_key in keys.items():
        (jwk,) = issuers[name]["jwks"]["keys"]
        assert jwk["kid"] == caller_key.kid
        assert "d" not in jwk  # public half only
    assert len({k.kid for k in keys.values()}) == len(keys)


def test_rerun_keeps_keys_and_leaves_trust_file_untouched(state: Path) -> None:
    first = devstack.ensure_credentials(state)
    trust = state / "trust.json"
    before = trust.stat().st_mtime_ns, trust.stat().st_ino

    second = devstack.ensure_credentials(state)

    assert {k: v.kid for k, v in first.items()} == {k: v.kid for k, v in second.items()}
    assert [p.path.read_bytes() for p in first.values()] == [
        p.path.read_bytes() for p in second.values()
    ]
    # Running services reload trust.json when it changes: no change, no reload.
    assert (trust.stat().st_mtime_ns, trust.stat().st_ino) == before


def test_issuers_added_by_hand_survive_a_rerun(state: Path) -> None:
    devstack.ensure_credentials(state)
    trust = state / "trust.json"
    document = json.loads(trust.read_text())
    document["issuers"]["partner-under-test"] = {"jwks": {"keys": []}, "tenants": ["acme"]}
    trust.write_text(json.dumps(document))

    devstack.ensure_credentials(state)

    issuers = json.loads(trust.read_text())["issuers"]
    assert issuers["partner-under-test"]["tenants"] == ["acme"]
    assert "cardlink-bank" in issuers


def test_malformed_trust_file_is_reported(state: Path) -> None:
    state.mkdir(mode=0o700)
    (state / "trust.json").write_text("{not json")
    with pytest.raises(devstack.DevstackError, match=r"trust\.json.*malformed"):
        devstack.ensure_credentials(state)


# --------------------------------------------------------------------------
# The token command
# --------------------------------------------------------------------------


def _verifier(state: Path, audience: str = "cardlink-vault") -> JwtVerifier:
    return JwtVerifier(TrustStore(state / "trust.json", SystemClock()), audience, SystemClock())


def test_token_command_prints_a_jwt_the_trust_file_verifies(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    devstack.ensure_credentials(state)
    argv = ["token", "--issuer", "cardlink-bank", "--tenant", "demo", "--scope", "vault.tokens.get"]
    assert devstack.main([*argv, "--scope", "vault.tokens.detokenize gateway.bank.events"]) == 0
    token = capsys.readouterr().out.strip()

    principal = _verifier(state).verify(token)

    assert principal.issuer == "cardlink-bank"
    assert principal.subject == "cardlink-bank"
    assert principal.tenant == "demo"
    assert principal.scopes == {
        "vault.tokens.get",
        "vault.tokens.detokenize",
        "gateway.bank.events",
    }
    claims = jwt.decode(token, options={"verify_signature": False})
    assert 0 < claims["exp"] - time.time() <= devstack.DEV_TOKEN_TTL_S
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"


def test_token_honours_audience_and_subject(state: Path) -> None:
    devstack.ensure_credentials(state)
    token = devstack.dev_token(
        "cardlink-gateway", "t1", ["bank.core"], subject="gw-1", audience="cardlink-gateway"
    )
    principal = _verifier(state, audience="cardlink-gateway").verify(token)
    assert (principal.subject, principal.tenant) == ("gw-1", "t1")
    with pytest.raises(Unauthenticated):
        _verifier(state).verify(token)  # minted for another audience


def test_token_refuses_a_tenant_the_issuer_may_not_assert(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    devstack.ensure_credentials(state)
    argv = ["token", "--issuer", "demo-partner", "--tenant", "acme"]
    assert devstack.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "demo" in captured.err


def test_token_refuses_a_scope_the_issuer_is_not_granted(state: Path) -> None:
    devstack.ensure_credentials(state)
    # The gateway relays sealed cards; only the bank may see a PAN.
    with pytest.raises(devstack.DevstackError, match=r"not granted vault\.tokens\.detokenize"):
        devstack.dev_token("cardlink-gateway", "demo", ["vault.tokens.detokenize"])


def test_granted_scopes_are_scopes_the_services_check() -> None:
    checked: set[str] = set()
    for module in ("vault.access", "gateway.servicers"):
        if devstack.module_available(module):
            method_scopes = importlib.import_module(module).METHOD_SCOPES
            checked |= {s for s in method_scopes.values() if s is not None}
    granted = {s for c in devstack.CALLERS for s in c.scopes if s.split(".")[0] != "bank"}
    if devstack.module_available("gateway.servicers"):
        assert granted <= checked, granted - checked
    else:
        assert {s for s in granted if s.startswith("vault.")} <= checked


def test_token_without_credentials_points_to_make_run(state: Path) -> None:
    # A key nobody trusts would only confuse: most likely another state folder.
    with pytest.raises(devstack.DevstackError, match="make run"):
        devstack.dev_token("demo-partner", "demo", ["vault.tokens.create"])
    assert not state.exists()


def test_a_redis_password_is_not_printed() -> None:
    shown = devstack._without_password("redis://app:s3cret@db.example:6379/0")
    assert shown == "redis://app:***@db.example:6379/0"
    assert devstack._without_password("unix:///x/redis.sock?db=0") == "unix:///x/redis.sock?db=0"
    # redis-py reads a password from the query too (the usual way for a socket).
    assert devstack._without_password("unix:///x/redis.sock?db=0&password=s3cret") == (
        "unix:///x/redis.sock?db=0&password=***")
    assert devstack._without_password("redis://db.example:6379/0?Password=s3cret") == (
        "redis://db.example:6379/0?Password=***")


def test_module_available() -> None:
    assert devstack.module_available("common.devstack")
    assert devstack.module_available("tests.test_devstack")
    assert not devstack.module_available("no_such_package.sub")
    assert not devstack.module_available("common.no_such_module")


# --------------------------------------------------------------------------
# Supervision, with a stand-in service
# --------------------------------------------------------------------------


def _ephemeral_ports() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def _free_port() -> int:
    """A free port below the kernel's ephemeral range.

    Servers in other tests bind port 0 and get an ephemeral port, possibly one
    probed free a moment before; gRPC binds with SO_REUSEPORT, so the stack's
    service would then share its port with a stranger, and the stack's health
    check could reach the stranger. Below the range, no bind to port 0 lands.
    """
    below = range(10_000, _ephemeral_ports().start)
    for port in random.sample(below, min(len(below), 100)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
            return port
    with socket.socket() as probe:  # a system whose ephemeral range starts low
        probe.bind(("127.0.0.1", 0))
        ephemeral: int = probe.getsockname()[1]
        return ephemeral


def _devstack_command(services: str) -> list[str]:
    code = (
        "import sys\n"
        "from common.devstack import Service, run\n"
        f"sys.exit(run(services={services}))\n"
    )
    return [sys.executable, "-c", code]


FAKE = "Service('fake', 'tests.test_devstack', '127.0.0.1:1', 'tests')"
MISSING = "Service('later', 'no_such_package', '127.0.0.1:1', 'issue 99')"


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["CARDLINK_STATE_DIR"] = str(tmp_path / "state")
    env["CARDLINK_DEV_REDIS_PORT"] = "0"  # unix socket only: no port to collide on
    env["CARDLINK_FAKE_LISTEN"] = f"127.0.0.1:{_free_port()}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "protos")])
    return env


# Upper bounds, not waits: a loaded CI machine running the suite on every
# core may take many seconds to start Python processes and a Redis server.
START_BOUND_S = 60.0
STOP_BOUND_S = 60.0


class Stack:
    """A devstack subprocess whose output a thread reads line by line, so that a
    wait for a line keeps its deadline even when no line comes."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter
            command,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._fresh: queue.Queue[str | None] = queue.Queue()  # None: output ended
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            self._fresh.put(line)
        self._fresh.put(None)

    def wait_for(self, text: str, timeout: float = START_BOUND_S) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._fresh.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if text in line:
                return
        self.stop()
        pytest.fail(f"no {text!r} in devstack output:\n{self.output()}")

    def finish(self, timeout: float = STOP_BOUND_S) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"the devstack did not exit within {timeout:.0f} s:\n{self.output()}")
        self._reader.join(timeout=STOP_BOUND_S)
        return code, self.output()

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        """Stop a stack still running the way Ctrl-C would, so that it stops its
        own children; killed only if it does not. (A killed supervisor would
        leave its services and Redis running.)"""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    started: list[Stack] = []
    yield started
    for stack in started:  # a failed test must not leave processes behind
        stack.stop()


# The supervisor's wait loop at its tightest, stopped by SIGTERM.
_STOP_LOOP = """
import signal
from common.devstack import StopRequest
stop = StopRequest()
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while not stop.wait(0):
    pass
"""


def test_a_stop_signal_is_seen_wherever_it_lands_in_the_wait(
        stack_env: dict[str, str]) -> None:
    """Wherever in the supervisor's wait a SIGTERM lands, it stops it. (With a
    threading.Event set from the handler, about half of such loops hung: the
    handler had interrupted the main thread while it held the Event's lock.)"""
    for _ in range(10):
        child = subprocess.Popen(  # noqa: S603 - our own interpreter
            [sys.executable, "-c", _STOP_LOOP], env=stack_env, cwd=ROOT,
            stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            child.terminate()
            assert child.wait(timeout=STOP_BOUND_S) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


def _private_redis_of(state: Path) -> sync_redis.Redis:
    """A client of the private Redis a stack on ``state`` runs (its socket and password)."""
    folder = state / "redis"
    return sync_redis.Redis(unix_socket_path=str(folder / "redis.sock"),
                            password=(folder / "password").read_text().strip(),
                            socket_timeout=5, decode_responses=True)


def test_stack_starts_reports_ready_and_stops_cleanly_on_ctrl_c(
    stack_env: dict[str, str], stacks: list[Stack]
) -> None:
    stack_env["FAKE_WRITE_REDIS"] = "1"
    stack_env["CARDLINK_REDIS_PREFIX"] = "aof-test"
    stack = Stack(_devstack_command(f"({MISSING}, {FAKE})"), stack_env)
    stacks.append(stack)
    stack.wait_for(READY)
    listen = stack_env["CARDLINK_FAKE_LISTEN"]
    state = Path(stack_env["CARDLINK_STATE_DIR"])
    # The private Redis keeps an append-only file (the README: "AOF on").
    client = _private_redis_of(state)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.get("aof-test:fake") == "written"  # what the service wrote
    finally:
        client.close()

    stack.process.send_signal(signal.SIGINT)
    code, output = stack.finish()

    assert code == 0, output
    assert "later: module no_such_package not found (arrives with issue 99); skipped" in output
    assert f"fake    {listen}" in output
    assert f"(private redis-server, AOF in {state / 'redis'})" in output
    assert output.index("stopping fake") < output.index("stopping redis")
    # What the services wrote survives a restart of the private Redis (there
    # is no RDB snapshot: only the AOF holds it).
    with PrivateRedis(state / "redis") as again:
        client = sync_redis.Redis.from_url(again.url, decode_responses=True)
        try:
            assert client.get("aof-test:fake") == "written"
        finally:
            client.close()
    assert _mode(state / "devstack.lock") == 0o600
    assert _mode(state / "logs") == 0o700
    log = Path(stack_env["CARDLINK_STATE_DIR"]) / "logs" / "fake.log"
    assert "fake: stopped by SIGTERM" in log.read_text()
    # The fake saw its environment: where Redis is and where the trust store is.
    assert "trust.json" in log.read_text()


def test_with_redis_url_set_the_stack_uses_that_redis_and_starts_none(
        stack_env: dict[str, str], stacks: list[Stack], redis_url: str, key_prefix: str) -> None:
    """REDIS_URL names the Redis to use (here the test worker's, under a key
    prefix of this test's): the services get it, and no private one starts."""
    stack_env["REDIS_URL"] = redis_url
    stack_env["CARDLINK_REDIS_PREFIX"] = key_prefix
    stack_env["FAKE_WRITE_REDIS"] = "1"
    stack = Stack(_devstack_command(f"({FAKE},)"), stack_env)
    stacks.append(stack)
    stack.wait_for(READY)
    given = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert given.get(f"{key_prefix}:fake") == "written", "the service used another Redis"
    finally:
        given.close()

    stack.process.send_signal(signal.SIGINT)
    code, output = stack.finish()

    assert code == 0, output
    assert f"redis   {devstack._without_password(redis_url)}  (from REDIS_URL)" in output
    assert "stopping redis" not in output
    assert not (Path(stack_env["CARDLINK_STATE_DIR"]) / "redis").exists()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_a_lost_terminal_stop_the_stack_too(
        stack_env: dict[str, str], stacks: list[Stack], stop: signal.Signals) -> None:
    """SIGHUP: the terminal window closed or the SSH session dropped. It reaches
    the supervisor only (the services and Redis run in groups of their own),
    which died of it and left them running, holding their ports."""
    stack = Stack(_devstack_command(f"({FAKE},)"), stack_env)
    stacks.append(stack)
    stack.wait_for(READY)
    stack.process.send_signal(stop)
    code, output = stack.finish()
    assert code == 0, output
    assert output.index("stopping fake") < output.index("stopping redis")


# Opening a terminal makes it the controlling terminal of a session leader
# that has none: the child opens the pty by name, then runs the command.
_ON_TERMINAL = ("import os, sys\n"
                "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                "for n in (0, 1, 2):\n"
                "    os.dup2(fd, n)\n"
                "os.execv(sys.argv[2], sys.argv[2:])\n")


def _on_a_terminal(command: list[str],
                   env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int, int]:
    """``command`` in a session of its own whose controlling terminal is a new
    pty, as in a terminal window; the process and the pty's two ends (keep
    the second open until the child has it, or reads of the first fail)."""
    master, slave = pty.openpty()
    process = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", _ON_TERMINAL, os.ttyname(slave), *command], env=env, cwd=ROOT,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    return process, master, slave


def _in_session(session: int) -> list[int]:
    """Processes still in ``session`` (field 6 of /proc/<pid>/stat)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat_file.read_text().rpartition(")")[2].split()
            if int(fields[3]) == session and fields[0] != "Z":
                found.append(int(stat_file.parent.name))
    return found


def test_closing_the_terminal_stops_everything(stack_env: dict[str, str]) -> None:
    """The window closes: SIGHUP, then every write to the terminal fails. The
    first "stopping ..." line raised and left the services and Redis running."""
    process, master, slave = _on_a_terminal(_devstack_command(f"({FAKE},)"), stack_env)
    output = b""
    try:
        deadline = time.monotonic() + START_BOUND_S
        with contextlib.suppress(OSError):  # EIO: the stack ended early
            while READY.encode() not in output and time.monotonic() < deadline:
                if select.select([master], [], [], 1)[0]:
                    output += os.read(master, 4096)
        os.close(slave)
        os.close(master)  # the window closes
        master = slave = -1
        assert READY.encode() in output, output
        assert process.wait(timeout=STOP_BOUND_S) == 0
    finally:
        for end in (slave, master):
            if end >= 0:
                os.close(end)
        if process.poll() is None:
            process.kill()
            process.wait()
        left = _in_session(process.pid)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert left == []
    log = Path(stack_env["CARDLINK_STATE_DIR"]) / "logs" / "fake.log"
    assert "fake: stopped by SIGTERM" in log.read_text()


def test_a_child_that_dies_stops_everything_with_an_error(
    stack_env: dict[str, str], stacks: list[Stack]
) -> None:
    stack_env["FAKE_EXIT_AFTER_S"] = "2"
    stack = Stack(_devstack_command(f"({FAKE},)"), stack_env)
    stacks.append(stack)
    code, output = stack.finish()
    assert code == 1, output
    assert "fake exited unexpectedly (exit code 3)" in output
    assert "fake: crashing on purpose" in output  # the log tail is shown
    assert "stopping redis" in output


def test_a_child_that_fails_to_start_is_reported(
    stack_env: dict[str, str], stacks: list[Stack]
) -> None:
    stack_env["FAKE_EXIT_AFTER_S"] = "0"
    stack = Stack(_devstack_command(f"({FAKE},)"), stack_env)
    stacks.append(stack)
    code, output = stack.finish()
    assert code == 1, output
    assert "fake exited during start-up" in output
    assert READY not in output


def test_a_second_stack_on_the_same_state_is_refused(
    stack_env: dict[str, str], stacks: list[Stack]
) -> None:
    first = Stack(_devstack_command(f"({FAKE},)"), stack_env)
    stacks.append(first)
    first.wait_for(READY)
    second = Stack(_devstack_command("()"), stack_env)
    stacks.append(second)
    code, output = second.finish()
    assert code == 1
    assert "another `make run` is using" in output
    first.process.send_signal(signal.SIGINT)
    assert first.finish()[0] == 0


def test_a_state_folder_inside_the_repository_is_refused(stack_env: dict[str, str]) -> None:
    inside = ROOT / ".state-under-test"
    stack_env["CARDLINK_STATE_DIR"] = str(inside / "cardlink")
    code, output = Stack(_devstack_command("()"), stack_env).finish()
    assert code == 1 and "is inside the repository" in output
    assert not inside.exists()  # refused before anything was written


@pytest.mark.skipif(
    not devstack.module_available("vault"), reason="`python -m vault` does not exist yet"
)
def test_make_run_brings_up_the_real_stack_and_make_demo_runs_on_it_again_and_again(
        stack_env: dict[str, str], stacks: list[Stack]) -> None:
    for name in ("VAULT", "BANKSIM", "GATEWAY"):
        stack_env[f"CARDLINK_{name}_LISTEN"] = f"127.0.0.1:{_free_port()}"
    # One binding attempt per card a day: a rerun of the demo must not try again.
    stack_env["CARDLINK_GATEWAY_MAX_CARD_ATTEMPTS"] = "1"
    # Every level a service logs at is checked for secrets below.
    stack_env["CARDLINK_LOG_LEVEL"] = "DEBUG"
    stack = Stack([sys.executable, "-m", "common.devstack"], stack_env)
    stacks.append(stack)
    stack.wait_for(READY)
    _check_the_hints_work(stack.output(), stack_env)
    demo_output = ""
    demo_env = {**stack_env, **{f"CARDLINK_{name}_TARGET": stack_env[f"CARDLINK_{name}_LISTEN"]
                                for name in ("VAULT", "BANKSIM", "GATEWAY")}}
    for _ in range(2):
        demo = subprocess.run([sys.executable, "-m", "clients.demo"], env=demo_env, cwd=ROOT,
                              capture_output=True, text=True, timeout=START_BOUND_S, check=False)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "state=STATE_ACTIVE" in demo.stdout and "failure=" in demo.stdout
        assert "Demo done." in demo.stdout
        demo_output += demo.stdout + demo.stderr
    stack.process.send_signal(signal.SIGINT)
    code, output = stack.finish()
    assert code == 0, output
    assert f"vault   {stack_env['CARDLINK_VAULT_LISTEN']}" in output
    # No key is ever printed or logged: not the vault's root key, nor any
    # other secret in the state folder, in any form a log line might take.
    state = Path(stack_env["CARDLINK_STATE_DIR"])
    logs = sorted((state / "logs").glob("*.log"))
    assert {log.name for log in logs} == {"vault.log", "banksim.log", "gateway.log"}
    secrets = {name: _pieces(secret) for name, secret in _state_secrets(state).items()}
    for where, text in [("make run", output), ("make demo", demo_output),
                        *((str(log), log.read_bytes().decode("latin-1")) for log in logs)]:
        for name, pieces in secrets.items():
            assert not any(piece in text for piece in pieces), f"{name} shows in {where}"


def _state_secrets(state: Path) -> dict[str, bytes]:
    """Every secret `make run` keeps in ``state``, by name."""
    root_key = json.loads((state / "vault-root.key").read_text())["key"]
    secrets = {
        "the vault's root key": base64.b64decode(root_key),
        "the Redis password": (state / "redis" / "password").read_text().strip().encode(),
        "the gateway's fingerprint secret":
            (state / "gateway-fingerprint.secret").read_text().strip().encode(),
    }
    for pem in (state / "jwt").glob("*.pem"):
        key = load_private_key_pem(pem)
        assert isinstance(key, Ed25519PrivateKey)
        secrets[f"the {pem.stem} signing key"] = key.private_bytes_raw()
    return secrets


def _pieces(secret: bytes, length: int = 20) -> set[str]:
    """Pieces of ``secret`` as a log line might show it (as text, hex, base64 or
    a bytes repr; as is or escaped in a quoted value), each too long to occur
    by chance. Pieces, not the whole: the log filter masks digit runs, which
    can cut a hex string in two."""
    forms = [secret.decode("latin-1"), secret.hex(), secret.hex().upper(),
             base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode(),
             repr(secret)[2:-1]]
    forms += [json.dumps(form)[1:-1] for form in forms]
    return {form[i:i + length] for form in forms for i in range(len(form) - length + 1)}


def _banner_section(output: str, title: str) -> list[str]:
    """The lines of the banner under ``title`` (up to the next blank line)."""
    lines = output.splitlines()
    assert title in lines, f"no {title!r} in the banner:\n{output}"
    start = lines.index(title) + 1
    return lines[start:lines.index("", start)]


def _check_the_hints_work(output: str, env: dict[str, str]) -> None:
    """The banner says how to try each service: a grpcurl line each, and for the
    vault a Python snippet that, pasted into a shell, calls it."""
    for name in ("vault", "banksim", "gateway"):
        listen = env[f"CARDLINK_{name.upper()}_LISTEN"]
        assert f"  grpcurl -plaintext {listen} list" in _banner_section(
            output, f"Try the {name}:"), f"no grpcurl line to try the {name}:\n{output}"
    assert any(line.startswith("  make demo") for line in _banner_section(
        output, "Try the gateway:")), f"no make demo hint:\n{output}"
    vault = _banner_section(output, "Try the vault:")
    listen = env["CARDLINK_VAULT_LISTEN"]
    assert (f"  grpcurl -plaintext {listen} cardlink.vault.v1.TokenVault/GetSealingKeySet"
            in vault), f"no GetSealingKeySet hint:\n{output}"
    assert any(line.endswith("<<'EOF'") for line in vault), f"no Python snippet:\n{output}"
    first = next(i for i, line in enumerate(vault) if line.endswith("<<'EOF'"))
    snippet = "\n".join(vault[first:vault.index("EOF", first) + 1]) + "\n"
    # As pasted into another shell: the printed command names the state folder.
    shell_env = {k: v for k, v in env.items() if k != "CARDLINK_STATE_DIR"}
    ran = subprocess.run(["/bin/sh", "-c", snippet], env=shell_env, cwd=ROOT,  # noqa: S603
                         capture_output=True, text=True, timeout=START_BOUND_S, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "signing_key_id" in ran.stdout, ran.stdout  # the signed sealing key set
    assert "StatusCode.NOT_FOUND" in ran.stdout, ran.stdout  # authorized: no such token


# --------------------------------------------------------------------------
# The stand-in service (`python -m tests.test_devstack`)
# --------------------------------------------------------------------------


def _serve_fake() -> int:
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    listen = os.environ["CARDLINK_FAKE_LISTEN"]
    print(f"fake: trust file {os.environ['CARDLINK_TRUST_FILE']}", flush=True)
    exit_after = os.environ.get("FAKE_EXIT_AFTER_S")
    if exit_after == "0":
        print("fake: crashing on purpose", flush=True)
        return 3
    if os.environ.get("FAKE_WRITE_REDIS"):
        # Before serving: once the stack is ready, the write is in the Redis
        # the stack gave the service.
        client = sync_redis.Redis.from_url(os.environ["REDIS_URL"])
        try:
            client.set(f"{os.environ['CARDLINK_REDIS_PREFIX']}:fake", "written")
        finally:
            client.close()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port(listen)
    server.start()
    stopped: list[str] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append("SIGTERM"))
    deadline = time.monotonic() + float(exit_after) if exit_after else None
    while not stopped:
        if deadline is not None and time.monotonic() > deadline:
            print("fake: crashing on purpose", flush=True)
            return 3
        time.sleep(0.05)
    server.stop(grace=1).wait()
    print("fake: stopped by SIGTERM", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_serve_fake())


def test_the_private_redis_is_closed_to_other_local_accounts(tmp_path: Path) -> None:
    """Loopback TCP is open to every local account: without the password kept
    in the state folder (0600), Redis answers nothing, above all no CONFIG
    SET dir + SAVE, which wrote a file anywhere this user may."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outside = tmp_path / "outside"
    outside.mkdir()
    with PrivateRedis(tmp_path / "redis", port=port) as server:
        stranger = sync_redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        try:
            with pytest.raises(sync_redis.AuthenticationError):
                stranger.config_set("dir", str(outside))
        finally:
            stranger.close()
        assert _mode(tmp_path / "redis" / "password") == 0o600
        assert server._process is not None  # what `ps` shows of it holds no password
        assert server.password not in Path(f"/proc/{server._process.pid}/cmdline").read_text()
        owner = sync_redis.Redis.from_url(server.url)
        try:
            assert owner.ping()
        finally:
            owner.close()
    assert list(outside.iterdir()) == []
