"""Server-side TLS, optionally mutual, from files named in the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from common.config import ConfigError, Env


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
