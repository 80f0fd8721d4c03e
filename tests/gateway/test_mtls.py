"""Optional mutual TLS on the partner API: with a client CA, no certificate, no call."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.config import ConfigError, Env
from common.tls import ServerTls
from tests.gateway.conftest import Stack
from tests.support.certs import issue, pem


async def _healthy(address: str, credentials: grpc.ChannelCredentials) -> bool:
    options = [("grpc.ssl_target_name_override", "gateway.test")]
    async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def test_mutual_tls_admits_only_certified_partners(stack: Stack, tmp_path: Path) -> None:
    ca = issue("CardLink test CA", None, ca=True)
    server = pem(issue("gateway", ca, san="gateway.test"))
    partner = pem(issue("acme-partner", ca))
    stranger = pem(issue("stranger", issue("Other CA", None, ca=True)))
    files = {"cert": server[0], "key": server[1], "ca": pem(ca)[0]}
    for name, data in files.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
    await stack.restart_gateway(tls=ServerTls(tmp_path / "cert.pem", tmp_path / "key.pem",
                                              tmp_path / "ca.pem"))
    root = files["ca"]
    assert await _healthy(stack.address, grpc.ssl_channel_credentials(root, partner[1],
                                                                      partner[0]))
    assert not await _healthy(stack.address, grpc.ssl_channel_credentials(root))
    assert not await _healthy(stack.address, grpc.ssl_channel_credentials(
        root, stranger[1], stranger[0]))


def test_tls_settings_are_all_or_nothing() -> None:
    assert ServerTls.from_env(Env({}), "X") is None
    with pytest.raises(ConfigError):
        ServerTls.from_env(Env({"X_TLS_CERT_FILE": "c.pem"}), "X")
    with pytest.raises(ConfigError):
        ServerTls.from_env(Env({"X_TLS_CLIENT_CA_FILE": "ca.pem"}), "X")
    both = ServerTls.from_env(Env({"X_TLS_CERT_FILE": "c", "X_TLS_KEY_FILE": "k"}), "X")
    assert both == ServerTls(Path("c"), Path("k"), None)
