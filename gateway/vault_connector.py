"""The vault port over gRPC, with the gateway's own JWT (issuer cardlink-gateway).

The token carries the partner's tenant, so the vault scopes the card to it;
the gateway asks for ``vault.tokens.create`` only.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from cardlink.vault.v1 import vault_pb2, vault_pb2_grpc
from gateway.connectors import CallPolicy, call_with_policy
from gateway.models import CardDisplay
from gateway.ports import TokenizedCard

Metadata = tuple[tuple[str, str], ...]
TENANT_SCOPES = ("vault.tokens.create",)


class GrpcVault:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        credentials: Callable[[str], Metadata],
        policy: CallPolicy,
    ) -> None:
        self._stub = vault_pb2_grpc.TokenVaultStub(channel)
        self._credentials = credentials
        self._policy = policy

    async def tokenize(
        self, tenant: str, key_id: str, ciphertext: bytes, request_id: str
    ) -> TokenizedCard:
        request = vault_pb2.TokenizeCardRequest(
            parent=f"tenants/{tenant}",
            sealed_card=vault_pb2.SealedCard(key_id=key_id, ciphertext=ciphertext),
            request_id=request_id,
        )
        reply = await call_with_policy(
            "vault", "VAULT_UNAVAILABLE", self._policy,
            lambda timeout: self._stub.TokenizeCard(
                request, timeout=timeout, metadata=self._credentials(tenant)
            ),
            pass_refusals=True,  # a sealed card the vault refuses is the partner's to fix
        )
        card = reply.token.card
        display = CardDisplay(
            bin=card.bin,
            last_four=card.last_four,
            brand=int(card.brand),
            expiry_month=card.expiry_month,
            expiry_year=card.expiry_year,
            masked_holder_name=card.masked_holder_name,
            masked_phone=card.masked_phone,
        )
        return TokenizedCard(reply.token.name, display)
