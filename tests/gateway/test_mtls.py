"""Optional mutual TLS on the partner API: with a client CA, no certificate, no call."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.config import ConfigError, Env
from common.tls import ServerTls
from tests.gateway.conftest import Stack

Pem = tuple[bytes, bytes]  # (certificate, private key)


def _issue(subject: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           *, ca: bool = False, san: str | None = None
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer_cert, signer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(signer_cert.subject if signer_cert else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]),
                                        critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key


def _pem(pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> Pem:
    cert, key = pair
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


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
    ca = _issue("CardLink test CA", None, ca=True)
    server = _pem(_issue("gateway", ca, san="gateway.test"))
    partner = _pem(_issue("acme-partner", ca))
    stranger = _pem(_issue("stranger", _issue("Other CA", None, ca=True)))
    files = {"cert": server[0], "key": server[1], "ca": _pem(ca)[0]}
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
