"""The asyncio Redis client every CardLink process uses.

It is redis-py's asyncio client (every command method, scripts, pipelines)
with two changes, both measured inside a grpc.aio handler on the 2-core
bench machine:

- Packing: commands are packed by hiredis's C packer, not redis-py's pure
  Python one, which costs more than the round trip itself for the vault's
  scripts (a tokenize sends some thirty arguments).
- Multiplexing: a plain command (``await client.hmget(...)``, a script call)
  does not check a connection out of the pool. Commands share one
  connection: those issued while earlier ones await their replies go out
  together in one write (see ``_schedule_flush``), and the replies, parsed by
  hiredis as they arrive, are handed to their callers in order (Redis
  answers a connection's commands in the order sent). No pool checkout,
  task, stream reader or timeout context per command: the vault's
  event-loop thread went from 550 to 373 µs of CPU per GetToken (766 to 571
  per TokenizeCard), measured back to back under `make bench`'s load.
- Batch window: under concurrency, a write waits up to 2 ms for more
  commands; a caller alone, awaiting each reply, never waits. Under
  `make bench`'s load this cut the whole machine's CPU per DetokenizeToken
  from about 820 to 510 µs (Redis's own share from 60 to 22 µs), and per
  GetToken from 500 to 340.

- Scripts: ``register_script`` gives redis-py's script object, whose own
  call goes straight to EVALSHA on the shared connection (loading the
  script on NOSCRIPT, as redis-py does). redis-py's path (an import and a
  typing-Protocol ``isinstance`` per call, then two more calls deep) cost a
  third of a script call's client CPU: 15.5 against 10 µs per call at 64
  concurrent. A script run inside a pipeline still takes redis-py's path.

Pipelines and transactions (MULTI/EXEC, WATCH) still take a pooled
connection. ``rediss://`` (TLS) URLs are served by the pool alone.

Failure semantics: when the shared connection breaks, or Redis sends no
reply for ``socket_timeout`` (5 s unless the URL says otherwise) while
commands wait (a stall detector: a Redis that keeps answering, however
slowly, is waited for), every
command waiting on it fails with ``ConnectionError``/``TimeoutError``, its
outcome unknown exactly as with a pooled connection that breaks
mid-command, and the next command reconnects. Nothing is retried behind the
caller's back, so a script is never applied twice. Blocking commands (BLPOP,
XREAD BLOCK, ...) would stall every caller behind them: CardLink sends none.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode

import hiredis
import redis.asyncio as aioredis
from redis._parsers import BaseParser  # redis-py's map of error replies to exception classes
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import DEFAULT_RESP_VERSION

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_BATCH_WINDOW_S = 0.002
MAX_BATCH_WINDOW_S = 0.1  # more would only add latency
_BATCH_WINDOW_OPTION = "batch_window"
# redis-py's per-call options that only shape how a reply is parsed.
_EMPTY_RESPONSE = "EMPTY_RESPONSE"
_PARSE_ONLY_OPTIONS = ("NEVER_DECODE", "keys")
_INCOMPLETE = object()  # hiredis returns False for RESP3 `#f`: a real reply


def _pack(args: tuple[Any, ...]) -> bytes:
    # Like redis-py: a command name with a space ("CLIENT SETNAME") is
    # several words, which Redis expects as separate arguments.
    first = args[0]
    if isinstance(first, str | bytes) and len(first.split()) > 1:
        args = (*first.split(), *args[1:])
    packed: bytes = hiredis.pack_command(args)
    return packed


class _TcpConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return [_pack(args)]


class _UnixConnection(UnixDomainSocketConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return [_pack(args)]


class _SharedConnection(asyncio.Protocol):
    """One Redis connection: commands written in order, replies matched in order."""

    def __init__(self, timeout: float | None, batch_window: float) -> None:
        self._reader = hiredis.Reader(protocolError=InvalidResponse,
                                      replyError=BaseParser.parse_error,
                                      notEnoughData=_INCOMPLETE)
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[asyncio.Future[Any]] = deque()  # in the order sent
        self._outgoing: list[bytes] = []  # queued, not yet written
        self._unanswered = 0  # written, reply not yet read
        self._flush_scheduled = False
        self._batch_window = batch_window
        self._corked = False  # the last write carried several commands
        self._last_write = 0.0  # loop time
        self._timeout = timeout
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost: RedisError | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply."""
        if self.lost is not None:
            raise self._error()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._outgoing.append(packed)
        self._waiting.append(future)
        if not self._unanswered:
            self._schedule_flush()
        return future

    def _schedule_flush(self) -> None:
        # Like Nagle's algorithm: with nothing in flight, write on the next
        # loop turn (every command issued meanwhile joins the write); with
        # commands in flight, write when their replies are all in. Under load
        # a write then carries everything issued during one round trip, so
        # writes, wake-ups and reads per command fall as load rises, and an
        # idle connection adds no delay.
        #
        # Local Redis answers within tens of µs, faster than a loaded server's
        # calls reach their next command, so that alone still sends nearly
        # every command on its own. Hence the batch window: once a write has
        # carried two or more commands (so several callers are active), the
        # next one waits until ``batch_window`` after it. A lone sequential
        # caller never fills a write with two commands, so it never waits,
        # and a window that gathers just one command ends the waiting.
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        loop = asyncio.get_running_loop()
        delay = self._last_write + self._batch_window - loop.time() if self._corked else 0.0
        if delay > 0:
            loop.call_later(delay, self._flush)
        else:
            loop.call_soon(self._flush)

    def uncork(self) -> None:
        """Let the next write go at once (as if the last one carried one command)."""
        self._corked = False

    def _flush(self) -> None:
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, []
        if self.lost is None and self._transport is not None and outgoing:
            self._transport.writelines(outgoing)
            self._unanswered += len(outgoing)
            self._corked = len(outgoing) > 1
            self._last_write = asyncio.get_running_loop().time()
            if self._watchdog is None and self._timeout is not None:
                self._arm(self._waiting[0])

    def _arm(self, oldest: asyncio.Future[Any]) -> None:
        assert self._timeout is not None
        self._watchdog = asyncio.get_running_loop().call_later(self._timeout, self._watch,
                                                               oldest)

    def _watch(self, oldest: asyncio.Future[Any]) -> None:
        # No reply at all for a whole period while commands wait: Redis is
        # hung or the network is; give up on this connection.
        self._watchdog = None
        if not self._unanswered:
            return  # those waiting are not written yet (batch window): _flush re-arms
        if self._waiting[0] is oldest:
            self.abort(RedisTimeoutError("Redis did not answer in time"))
        else:
            self._arm(self._waiting[0])

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not _INCOMPLETE:
                if isinstance(reply, hiredis.PushNotification):
                    continue  # out-of-band (RESP3 push); no command waits for it
                future = self._waiting.popleft()
                self._unanswered -= 1
                if future.done():  # its caller was cancelled; the reply is dropped
                    continue
                # An error reply is that caller's alone. redis-py's parser maps
                # some to ConnectionError subclasses (LOADING, NOAUTH, WRONGPASS),
                # not ResponseError: they are errors all the same.
                if isinstance(reply, RedisError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except InvalidResponse as error:
            self.abort(RedisConnectionError(f"unreadable reply from Redis: {error}"))
            return
        if not self._unanswered and self._outgoing:
            # After the callers just answered have run, so their next
            # commands join this write.
            self._schedule_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError("the Redis connection was lost"))

    def abort(self, error: RedisError) -> None:
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, error: RedisError) -> None:
        if self.lost is None:
            self.lost = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self._waiting, self._outgoing = self._waiting, deque(), []
        self._unanswered = 0
        for future in waiting:
            if not future.done():
                future.set_exception(self._error())

    def _error(self) -> RedisError:
        # A fresh exception per caller: one instance raised in many tasks
        # would collect all their tracebacks.
        assert self.lost is not None
        return type(self.lost)(*self.lost.args)


class _Multiplexer:
    """Opens (and after a failure re-opens) the shared connection of one client."""

    def __init__(self, options: dict[str, Any], batch_window: float) -> None:
        self._options = options
        self._batch_window = batch_window
        self._connection: _SharedConnection | None = None
        self._connecting = asyncio.Lock()

    async def call(self, packed: bytes) -> Any:
        connection = self._connection
        if connection is None or connection.lost is not None:
            connection = await self._connect()
        return await connection.send(packed)

    async def _connect(self) -> _SharedConnection:
        async with self._connecting:
            if self._connection is None or self._connection.lost is not None:
                self._connection = await self._open()
            return self._connection

    async def _open(self) -> _SharedConnection:
        options, loop = self._options, asyncio.get_running_loop()
        timeout = options.get("socket_timeout", DEFAULT_TIMEOUT_S)
        connect_timeout = options.get("socket_connect_timeout") or timeout

        def protocol() -> _SharedConnection:
            return _SharedConnection(timeout, self._batch_window)

        try:
            async with asyncio.timeout(connect_timeout):
                if "path" in options:
                    _, connection = await loop.create_unix_connection(protocol, options["path"])
                else:
                    _, connection = await loop.create_connection(
                        protocol, options.get("host", "localhost"), options.get("port", 6379))
        except (OSError, TimeoutError) as error:
            raise RedisConnectionError(f"cannot connect to Redis: {error}") from None
        try:
            await asyncio.gather(*(connection.send(_pack(command))
                                   for command in self._handshake()))
        except BaseException:
            connection.abort(RedisConnectionError("the Redis handshake failed"))
            raise
        connection.uncork()  # the handshake's commands share a write, but no callers wait
        return connection

    def _handshake(self) -> list[tuple[Any, ...]]:
        # What redis-py's own connections send, so replies have the shapes its
        # response callbacks expect (RESP3 unless the URL asks for 2).
        options = self._options
        password, user = options.get("password"), options.get("username") or "default"
        commands: list[tuple[Any, ...]] = []
        if int(options.get("protocol") or DEFAULT_RESP_VERSION) == 3:
            commands.append(("HELLO", 3, *(("AUTH", user, password) if password else ())))
        elif password:
            commands.append(("AUTH", user, password))
        if options.get("db"):
            commands.append(("SELECT", options["db"]))
        if options.get("client_name"):
            commands.append(("CLIENT", "SETNAME", options["client_name"]))
        return commands

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.abort(RedisConnectionError("the client was closed"))
            self._connection = None


class _Script(AsyncScript):
    """A script registered on a MultiplexedRedis (see the module doc)."""

    async def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        if client is not None and client is not self.registered_client:
            return await super().__call__(keys, args, client)  # a pipeline
        keys, args, redis = keys or (), args or (), self.registered_client
        try:
            return await redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted or its script cache was flushed since the last call.
            self.sha = await redis.script_load(self.script)
            return await redis.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


class MultiplexedRedis(aioredis.Redis):
    """redis-py's asyncio client with plain commands multiplexed (see the module doc)."""

    def __init__(self, *, connection_pool: aioredis.ConnectionPool, batch_window: float) -> None:
        super().__init__(connection_pool=connection_pool)
        # The pool is this client's own (made by connect()): closing the
        # client disconnects its pooled connections too.
        self.auto_close_connection_pool = True
        self._multiplexer = _Multiplexer(dict(connection_pool.connection_kwargs), batch_window)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            reply = await self._multiplexer.call(_pack(args))
        except ResponseError:
            if _EMPTY_RESPONSE in options:
                return options[_EMPTY_RESPONSE]
            raise
        options.pop(_EMPTY_RESPONSE, None)
        for name in _PARSE_ONLY_OPTIONS:
            options.pop(name, None)
        if args[0] not in self.response_callbacks:  # a case-insensitive dict
            return reply
        parsed = self.response_callbacks[args[0]](reply, **options)
        return await parsed if asyncio.iscoroutine(parsed) else parsed

    # redis-py's asyncio client narrows the sync Script type the same way.
    def register_script(self, script: Any) -> AsyncScript:  # type: ignore[override]
        return _Script(self, script)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self._multiplexer.aclose()
        await super().aclose(close_connection_pool)


def connect(url: str, **options: Any) -> aioredis.Redis:
    """A client for ``url`` (``redis://``, ``unix://`` or ``rediss://``).

    Values are bytes in and out (``decode_responses`` stays False): ciphertexts
    and wrapped keys are binary. Besides redis-py's URL options, the URL may
    carry ``batch_window`` (seconds, default 0.002; 0 turns it off): how long
    a command may wait for others to share its write (see
    ``_SharedConnection._schedule_flush``).
    """
    url, batch_window = _take_batch_window(url)
    pool = aioredis.ConnectionPool.from_url(url, health_check_interval=30, **options)
    if pool.connection_class is UnixDomainSocketConnection:
        pool.connection_class = _UnixConnection
    elif pool.connection_class is Connection:
        pool.connection_class = _TcpConnection
    else:  # TLS: redis-py's own connections, pooled
        return aioredis.Redis.from_pool(pool)
    return MultiplexedRedis(connection_pool=pool, batch_window=batch_window)


def _take_batch_window(url: str) -> tuple[str, float]:
    """``url`` without its ``batch_window`` option (redis-py would refuse it), and its value."""
    base, _, query_text = url.partition("?")
    query = parse_qsl(query_text, keep_blank_values=True)
    values = [value for name, value in query if name == _BATCH_WINDOW_OPTION]
    if not values:
        return url, DEFAULT_BATCH_WINDOW_S
    try:
        window = float(values[-1])
    except ValueError:
        window = -1.0
    if not 0 <= window <= MAX_BATCH_WINDOW_S:
        raise ValueError(f"the Redis URL option {_BATCH_WINDOW_OPTION} must be 0 to "
                         f"{MAX_BATCH_WINDOW_S} seconds, got {values[-1]!r}")
    rest = urlencode([(name, value) for name, value in query if name != _BATCH_WINDOW_OPTION])
    return f"{base}?{rest}" if rest else base, window
