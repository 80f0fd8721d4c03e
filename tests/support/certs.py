"""TLS test helpers: a throwaway certificate authority, and a health probe."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.tls import ClientTls, open_channel

Pem = tuple[bytes, bytes]  # (certificate, private key)
Issued = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def issue(subject: str, issuer: Issued | None, *, ca: bool = False,
          san: str | None = None) -> Issued:
    """A certificate for ``subject``, signed by ``issuer`` (self-signed without one)."""
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


def pem(pair: Issued) -> Pem:
    cert, key = pair
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def write(folder: Path, name: str, pair: Issued) -> tuple[Path, Path]:
    """``name.crt`` and ``name.key`` in ``folder``."""
    cert, key = pem(pair)
    (folder / f"{name}.crt").write_bytes(cert)
    (folder / f"{name}.key").write_bytes(key)
    return folder / f"{name}.crt", folder / f"{name}.key"


async def serving(address: str, tls: ClientTls | None) -> bool:
    """True if a health check over ``tls`` (plaintext: None) gets SERVING."""
    async with open_channel(address, tls) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
