"""The bank core's client for the vault: detokenize with the bank's own credential.

The bank is PAN-entitled (it issued the card). It calls the vault directly,
never through the gateway, with a JWT of its own issuer that carries the
``vault.tokens.detokenize`` scope, and states why it needs the card; the
vault audits every call.

    client = BankVaultClient(channel, TokenMinter(key, kid, "cardlink-bank",
                                                  "cardlink-vault", SystemClock()))
    card = (await client.detokenize(token_name, "holder verification")).card
"""

from __future__ import annotations

import uuid

import grpc

from cardlink.vault.v1 import vault_pb2, vault_pb2_grpc
from common.auth import TokenMinter
from common.errors import Unavailable, invalid_field
from common.grpc_errors import rpc_errors
from common.tenants import is_tenant

DETOKENIZE_SCOPE = "vault.tokens.detokenize"
_ATTEMPTS = 2  # a detokenize changes nothing but the audit log: one retry is safe


def _tenant_of(token_name: str) -> str:
    parts = token_name.split("/")
    return parts[1] if len(parts) >= 2 and parts[0] == "tenants" else ""


class BankVaultClient:
    """Detokenizes on behalf of the bank core."""

    def __init__(self, channel: grpc.aio.Channel, minter: TokenMinter, *,
                 subject: str = "bank-core", timeout_s: float = 2.0) -> None:
        self._stub = vault_pb2_grpc.TokenVaultStub(channel)
        self._minter = minter
        self._subject = subject
        self._timeout_s = timeout_s

    async def detokenize(self, token_name: str, reason: str, *,
                         request_id: str | None = None) -> vault_pb2.DetokenizeTokenResponse:
        """The card behind ``token_name``; raises the vault's typed CardLinkError."""
        request = vault_pb2.DetokenizeTokenRequest(
            name=token_name, reason=reason, request_id=request_id or str(uuid.uuid4()))
        tenant = _tenant_of(token_name)
        if not is_tenant(tenant):  # no tenant to mint a token for: the name is wrong
            raise invalid_field("name", "must be tenants/{tenant}/tokens/ctk_...",
                                "TOKEN_NAME_INVALID")
        metadata = self._minter.metadata(self._subject, tenant, [DETOKENIZE_SCOPE])
        attempts_left = _ATTEMPTS
        while True:
            try:
                with rpc_errors():
                    return await self._stub.DetokenizeToken(request, metadata=metadata,
                                                            timeout=self._timeout_s)
            except Unavailable:
                attempts_left -= 1
                if attempts_left == 0:
                    raise
