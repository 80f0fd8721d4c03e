"""Building and running a CardLink grpc.aio server.

Every server gets health checking (each service SERVING, NOT_SERVING during
shutdown) and server reflection, the shared guards, and a graceful stop on
SIGTERM/SIGINT: health flips first so load balancers drain the process, then
``server.stop(grace)`` lets in-flight calls finish.

Guards replace server interceptors: a guard wraps one servicer method and is
applied once per method at start-up, so a call pays only for the wrappers
themselves (an interceptor runs, and builds a new handler, on every call).
Health and reflection are not guarded: they are public.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

__all__ = [
    "DEFAULT_OPTIONS",
    "Behavior",
    "Guard",
    "MalformedRequest",
    "RunningServer",
    "Service",
    "install_uvloop",
    "run_until_signal",
    "start_server",
]

logger = logging.getLogger("cardlink.server")

MiB = 1024 * 1024

# A servicer method: a coroutine function, or an async generator function for
# a method that streams its responses.
Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]
# Given the full method name ('/pkg.Service/Method') and its behavior, the
# behavior to serve instead. Called once per method at start-up; a guard must
# keep an async generator function an async generator function.
Guard = Callable[[str, Behavior], Behavior]

# Requests are small (sealed cards, ids); a 4 MiB cap bounds memory per call.
# Keepalive pings detect dead peers behind NATs and load balancers; the
# server tolerates client pings every 10 s even without calls so pooled
# client channels are not punished with GOAWAY. Connections are recycled
# after 30 min so clients rebalance across processes behind an L4 balancer.
DEFAULT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", 4 * MiB),
    ("grpc.max_send_message_length", 4 * MiB),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_connection_age_ms", 30 * 60_000),
    ("grpc.max_connection_age_grace_ms", 30_000),
)


@dataclass(frozen=True)
class Service:
    """One service to serve: its generated ``add_*_to_server`` function, servicer and name.

    ``name`` is the full service name ('cardlink.vault.v1.TokenVault'), used
    for health and reflection and to find the service's methods in the
    protobuf descriptor pool (its generated ``_pb2`` module must be imported).
    """

    name: str
    register: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


@dataclass(frozen=True)
class RunningServer:
    """A started server, the port it bound and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer  # type: ignore[name-defined]

    async def stop(self, grace: float | None = 5.0) -> None:
        """NOT_SERVING for every service, then stop within ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(
    services: Sequence[Service],
    address: str,
    *,
    guards: Sequence[Guard] = (),
    options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS,
    credentials: grpc.ServerCredentials | None = None,
    maximum_concurrent_rpcs: int | None = None,
) -> RunningServer:
    """Start serving ``services`` on ``address`` ('127.0.0.1:0' picks a free port).

    Pass guards outermost first: ``[error_guard, AuthGuard(...)]`` so that
    auth failures get rich error details too.
    """
    server = grpc.aio.server(
        options=list(options),
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    # Registration functions only call the two methods _GenericOnly has.
    generic = cast(grpc.aio.Server, _GenericOnly(server))
    for service in services:
        service.register(_guarded_servicer(service, guards), generic)
    health_servicer = await _add_health(generic, [s.name for s in services])
    names = [s.name for s in services] + [health.SERVICE_NAME, reflection.SERVICE_NAME]
    # The aio servicer, chosen by hand: enable_server_reflection() would see
    # that ``generic`` is no grpc.aio.Server and pick the sync one, which
    # grpc.aio runs on executor threads, one held per open stream.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(names), generic)  # type: ignore[attr-defined]
    port = _bind(server, address, credentials)
    await server.start()
    logger.info("serving %s on port %d", ", ".join(s.name for s in services), port)
    return RunningServer(server, port, health_servicer)


@dataclass(frozen=True)
class MalformedRequest:
    """What a method gets for request bytes that do not parse as its message.
    ``error_guard`` answers it with INVALID_ARGUMENT; grpc alone would answer
    UNKNOWN carrying the parser's exception text."""


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def tolerant_parse(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:  # corrupt wire bytes, or a string field that is not UTF-8
            return MalformedRequest()

    return tolerant_parse


class _TolerantHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A service's generic handler whose single-request methods parse with
    ``_tolerant``; each method's handler is built once, on its first call."""

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any]) -> None:
        self._inner = inner
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        handler = self._handlers.get(details.method)
        if handler is None:
            handler = self._inner.service(details)
            if handler is None:
                return None  # not one of this service's methods (not kept: any name may come)
            if not handler.request_streaming and handler.request_deserializer is not None:
                # grpc's method handlers are namedtuples (the stubs do not say so).
                handler = handler._replace(  # type: ignore[attr-defined]
                    request_deserializer=_tolerant(handler.request_deserializer))
            self._handlers[details.method] = handler
        return handler


class _GenericOnly:
    """The server as the generated ``add_*_to_server`` functions see it: their
    generic handlers are kept, their registered-method handlers dropped.

    grpc.aio (1.85) keeps one pending request per registered method and, for
    every call it accepts, runs ``asyncio.wait`` over all of them: with the
    vault's twenty-odd methods that cost about 10% of a DetokenizeToken's
    event-loop time under `make bench`'s load. Generic handlers are matched
    by one dictionary lookup per service, the way the bare echo is served.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(
            self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._server.add_generic_rpc_handlers([_TolerantHandler(h) for h in handlers])

    def add_registered_method_handlers(
            self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        """Dropped: the same methods are served through the generic handlers."""


def _guarded_servicer(service: Service, guards: Sequence[Guard]) -> Any:
    """A stand-in for ``service.servicer`` whose every method is wrapped by ``guards``.

    The methods are those the descriptor pool lists for ``service.name``;
    ``guards[0]`` ends up outermost.
    """
    if not guards:
        return service.servicer
    descriptor = descriptor_pool.Default().FindServiceByName(service.name)
    methods: dict[str, Behavior] = {}
    for method in descriptor.methods:
        full_name = f"/{service.name}/{method.name}"
        behavior: Behavior = getattr(service.servicer, method.name)
        for guard in reversed(guards):
            behavior = guard(full_name, behavior)
        methods[method.name] = behavior
    return types.SimpleNamespace(**methods)


async def _add_health(server: grpc.aio.Server, names: Sequence[str]) -> Any:
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in names:  # "" (the whole server) is SERVING by default
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return servicer


def _loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    if credentials is None:
        if not _loopback(address):
            # Allowed (a service mesh may carry TLS), but never silently.
            logger.warning("serving plaintext on %s: bearer tokens and replies cross the "
                           "network in clear unless something else encrypts it; set the "
                           "*_TLS_CERT_FILE and *_TLS_KEY_FILE settings", address)
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:  # older grpc versions report a failed bind this way
        raise RuntimeError(f"could not bind {address}")
    return port


async def run_until_signal(
    server: grpc.aio.Server,
    health_servicer: Any,
    grace: float = 10.0,
    *,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Serve until SIGTERM/SIGINT (or the server ends), then drain and stop gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    signalled = asyncio.ensure_future(stop.wait())
    # Never cancel wait_for_termination(): grpc.aio then cancels the server's
    # own shutdown future and the stop() below fails with CancelledError.
    terminated = asyncio.ensure_future(server.wait_for_termination())
    try:
        await asyncio.wait({signalled, terminated}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        signalled.cancel()
        logger.info("shutting down (grace %s s)", grace)
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace)
        await terminated


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when it is installed; True if it was."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
