"""Raw-bytes test services for ``start_server``.

``start_server`` finds a service's methods in the protobuf descriptor pool to
wrap them with guards, so a test service gets a descriptor here (its message
types are placeholders) and a registration that serves raw bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2

from common.server import Service

PLACEHOLDER = "." + empty_pb2.Empty.DESCRIPTOR.full_name


class Kind(Enum):
    """A method's shape: (client streams, server streams) and its handler factory."""

    UNARY_UNARY = (False, False, grpc.unary_unary_rpc_method_handler)
    UNARY_STREAM = (False, True, grpc.unary_stream_rpc_method_handler)
    STREAM_UNARY = (True, False, grpc.stream_unary_rpc_method_handler)
    STREAM_STREAM = (True, True, grpc.stream_stream_rpc_method_handler)


def raw_service(name: str, methods: Mapping[str, Kind], servicer: Any) -> Service:
    """A Service ``name`` ('pkg.Service') whose methods take and return raw bytes.

    ``servicer`` has one attribute per method name.
    """
    _describe(name, methods)

    def register(stand_in: Any, server: grpc.aio.Server) -> None:
        handlers = {
            method: kind.value[2](getattr(stand_in, method)) for method, kind in methods.items()
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(name, handlers),)
        )

    return Service(name, register, servicer)


def _describe(name: str, methods: Mapping[str, Kind]) -> None:
    pool = descriptor_pool.Default()
    try:
        known = pool.FindServiceByName(name)
    except KeyError:
        pass
    else:
        if {m.name for m in known.methods} != set(methods):
            raise ValueError(f"service {name} is already described with other methods")
        return
    package, _, service = name.rpartition(".")
    file = descriptor_pb2.FileDescriptorProto(
        name=f"tests/raw/{name}.proto",
        package=package,
        dependency=[empty_pb2.DESCRIPTOR.name],
        syntax="proto3",
    )
    described = file.service.add(name=service)
    for method, kind in methods.items():
        described.method.add(
            name=method,
            input_type=PLACEHOLDER,
            output_type=PLACEHOLDER,
            client_streaming=kind.value[0],
            server_streaming=kind.value[1],
        )
    pool.Add(file)



# Client side: raw-bytes callables. The serializers are passed as None
# explicitly because the grpc type stubs (older than grpcio) require them.
def unary(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def unary_stream(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_stream(method, request_serializer=None, response_deserializer=None)


def stream_unary(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.stream_unary(method, request_serializer=None, response_deserializer=None)
