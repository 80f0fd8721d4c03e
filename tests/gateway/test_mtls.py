"""Optional mutual TLS on the partner API: with a client CA, no certificate, no call."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ConfigError, Env
from common.tls import ClientTls, ServerTls
from tests.gateway.conftest import Stack
from tests.support.certs import issue, serving, write


async def test_mutual_tls_admits_only_certified_partners(stack: Stack, tmp_path: Path) -> None:
    ca = issue("CardLink test CA", None, ca=True)
    ca_file = write(tmp_path, "ca", ca)[0]
    server = write(tmp_path, "gateway", issue("gateway", ca, san="gateway.test"))
    partner = write(tmp_path, "partner", issue("acme-partner", ca))
    stranger = write(tmp_path, "stranger", issue("stranger", issue("Other CA", None, ca=True)))
    await stack.restart_gateway(tls=ServerTls(*server, ca_file))
    assert await serving(stack.address, ClientTls(ca_file, *partner, "gateway.test"))
    assert not await serving(stack.address, ClientTls(ca_file, server_name="gateway.test"))
    assert not await serving(stack.address, ClientTls(ca_file, *stranger, "gateway.test"))


def test_tls_settings_are_all_or_nothing() -> None:
    assert ServerTls.from_env(Env({}), "X") is None
    with pytest.raises(ConfigError):
        ServerTls.from_env(Env({"X_TLS_CERT_FILE": "c.pem"}), "X")
    with pytest.raises(ConfigError):
        ServerTls.from_env(Env({"X_TLS_CLIENT_CA_FILE": "ca.pem"}), "X")
    both = ServerTls.from_env(Env({"X_TLS_CERT_FILE": "c", "X_TLS_KEY_FILE": "k"}), "X")
    assert both == ServerTls(Path("c"), Path("k"), None)
