"""TLS to the vault: card data, bearer tokens and custodian shares never cross
a network in clear when the vault serves TLS; with a client CA, only clients
holding a certificate that CA signed get a connection at all."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cardlink.vault.v1 import vault_pb2
from common.config import ConfigError, Env
from common.tls import VAULT_CLIENT_TLS, ClientTls, ServerTls
from gateway.config import GatewayConfig
from tests.support.cards import card
from tests.support.certs import issue, serving, write
from tests.support.identities import SECURITY_SCOPES
from tests.support.keytool import with_token
from tests.support.vault import running_vault


async def test_a_vault_with_mutual_tls_serves_only_certified_clients(
        redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    ca = issue("CardLink test CA", None, ca=True)
    ca_file = write(tmp_path, "ca", ca)[0]
    vault_cert, vault_key = write(tmp_path, "vault", issue("vault", ca, san="vault.test"))
    gateway_cert, gateway_key = write(tmp_path, "gateway", issue("gateway", ca))
    stranger = write(tmp_path, "stranger", issue("x", issue("Other CA", None, ca=True)))
    client = ClientTls(ca_file, gateway_cert, gateway_key, "vault.test")
    server = ServerTls(vault_cert, vault_key, ca_file)
    async with running_vault(redis_url, key_prefix, tmp_path, tls=(server, client)) as vault:
        reply = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
            parent="tenants/acme", sealed_card=await vault.seal(card())),
            metadata=vault.partner())
        assert reply.token.card.last_four == card().pan[-4:]
        assert await serving(vault.address, client)
        assert not await serving(vault.address, None)  # plaintext
        assert not await serving(vault.address, ClientTls(ca_file, server_name="vault.test"))
        assert not await serving(vault.address, ClientTls(ca_file, *stranger, "vault.test"))

        # The key tool, with the same settings as flags.
        token = vault.identities.token("cardlink-security", "security", SECURITY_SCOPES)
        base = ["--address", vault.address]
        tls = ["--tls-ca", str(ca_file), "--tls-cert", str(gateway_cert), "--tls-key",
               str(gateway_key), "--tls-server-name", "vault.test"]
        assert await asyncio.to_thread(with_token, token, [*base, *tls, "status"]) == 0
        assert await asyncio.to_thread(with_token, token, [*base, "--timeout", "2", "status"]) == 3
        assert await asyncio.to_thread(with_token, token, [*base, "--tls-cert", "c", "status"]) == 2


def test_vault_clients_read_their_tls_settings_from_one_place() -> None:
    prefix = f"{VAULT_CLIENT_TLS}_TLS"
    assert ClientTls.from_env(Env({}), VAULT_CLIENT_TLS) is None
    for partial in ({f"{prefix}_CERT_FILE": "c"},
                    {f"{prefix}_CA_FILE": "ca", f"{prefix}_KEY_FILE": "k"}):
        with pytest.raises(ConfigError):
            ClientTls.from_env(Env(partial), VAULT_CLIENT_TLS)
    environ = {"REDIS_URL": "redis://127.0.0.1:1/0", f"{prefix}_CA_FILE": "ca.pem",
               f"{prefix}_SERVER_NAME": "vault.internal",
               "CARDLINK_GATEWAY_FINGERPRINT_SECRET": "x" * 32}
    config = GatewayConfig.from_env(environ)
    assert config.vault_tls == ClientTls(Path("ca.pem"), None, None, "vault.internal")
