"""TLS, optionally mutual, from files named in the environment: a server's
certificate, and a client's trust roots (and certificate) for reaching one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from common.config import ConfigError, Env

# The settings every client of the vault (gateway, bank simulator, key tool)
# reads: CARDLINK_VAULT_CLIENT_TLS_CA_FILE, ..._CERT_FILE, ..._KEY_FILE, ..._SERVER_NAME.
VAULT_CLIENT_TLS = "CARDLINK_VAULT_CLIENT"


@dataclass(frozen=True)
class ServerTls:
    """A certificate chain and key to serve with; with ``client_ca_file`` every
    client must present a certificate that CA signed (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        client_ca = self.client_ca_file.read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    @classmethod
    def from_env(cls, env: Env, prefix: str) -> ServerTls | None:
        """``{prefix}_TLS_CERT_FILE``, ``_TLS_KEY_FILE`` and optional ``_TLS_CLIENT_CA_FILE``;
        None (plaintext) when neither certificate nor key is set."""
        cert = env.optional(f"{prefix}_TLS_CERT_FILE")
        key = env.optional(f"{prefix}_TLS_KEY_FILE")
        client_ca = env.optional(f"{prefix}_TLS_CLIENT_CA_FILE")
        if cert is None and key is None:
            if client_ca is not None:
                raise ConfigError(f"{prefix}_TLS_CLIENT_CA_FILE needs a certificate and key")
            return None
        if cert is None or key is None:
            raise ConfigError(f"set both {prefix}_TLS_CERT_FILE and {prefix}_TLS_KEY_FILE")
        return cls(Path(cert), Path(key), Path(client_ca) if client_ca else None)


@dataclass(frozen=True)
class ClientTls:
    """How a client reaches a TLS server: the CA that signed the server's
    certificate; with ``cert_file`` and ``key_file``, this client's own
    certificate (for a server that asks for one); ``server_name``: the name to
    check the server's certificate against, when not the target's host."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.ca_file.read_bytes(),
            self.key_file.read_bytes() if self.key_file else None,
            self.cert_file.read_bytes() if self.cert_file else None,
        )

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    @classmethod
    def from_env(cls, env: Env, prefix: str) -> ClientTls | None:
        """``{prefix}_TLS_CA_FILE`` (TLS on), optional ``_TLS_CERT_FILE`` with
        ``_TLS_KEY_FILE``, and ``_TLS_SERVER_NAME``; None (plaintext) without a CA."""
        ca = env.optional(f"{prefix}_TLS_CA_FILE")
        cert = env.optional(f"{prefix}_TLS_CERT_FILE")
        key = env.optional(f"{prefix}_TLS_KEY_FILE")
        name = env.optional(f"{prefix}_TLS_SERVER_NAME")
        if ca is None:
            if cert or key or name:
                raise ConfigError(f"{prefix}_TLS_* settings need {prefix}_TLS_CA_FILE")
            return None
        if (cert is None) != (key is None):
            raise ConfigError(f"set both {prefix}_TLS_CERT_FILE and {prefix}_TLS_KEY_FILE, "
                              "or neither")
        return cls(Path(ca), Path(cert) if cert else None, Path(key) if key else None, name)


def open_channel(target: str, tls: ClientTls | None, *,
                 options: Sequence[tuple[str, Any]] = (),
                 interceptors: Sequence[Any] | None = None) -> grpc.aio.Channel:
    """A channel to ``target``: TLS with ``tls``, plaintext without."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options),
                                         interceptors=interceptors)
    return grpc.aio.secure_channel(target, tls.credentials(),
                                   options=[*options, *tls.options()],
                                   interceptors=interceptors)
