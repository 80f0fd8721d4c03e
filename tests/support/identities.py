"""JWT issuers for tests: partners bound to one tenant, services trusted for all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.auth import (
    TokenMinter,
    TrustedIssuer,
    bearer_metadata,
    generate_signing_key,
    public_jwk,
    write_trust_store,
)
from common.clock import Clock

VAULT_PARTNER_SCOPES = ("vault.tokens.create", "vault.tokens.get", "vault.tokens.delete")
GATEWAY_PARTNER_SCOPES = (
    "gateway.bindings.write", "gateway.bindings.read", "gateway.credit.write",
    "gateway.credit.read",
)
# issuer -> (tenants it may assert, scopes it may grant): the roles `make run` gives.
ISSUERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "acme-partner": (("acme",), VAULT_PARTNER_SCOPES + GATEWAY_PARTNER_SCOPES),
    "globex-partner": (("globex",), VAULT_PARTNER_SCOPES + GATEWAY_PARTNER_SCOPES),
    "cardlink-gateway": (("*",), (*VAULT_PARTNER_SCOPES, "bank.core")),
    "cardlink-bank": (("*",), ("vault.tokens.get", "vault.tokens.detokenize",
                               "gateway.bank.events")),
    # The bank's security team (the key tool): key administration, custodian
    # shares, audit reads.
    "cardlink-security": (("*",), ("vault.keys.admin", "vault.keys.unseal", "vault.audit.read")),
}
SECURITY_SCOPES = ISSUERS["cardlink-security"][1]


@dataclass
class Issuer:
    name: str
    key: Ed25519PrivateKey
    kid: str


@dataclass
class Identities:
    """Signing keys for each test issuer, published in a trust-store file."""

    trust_file: Path
    clock: Clock
    issuers: dict[str, Issuer] = field(default_factory=dict)
    # Further published keys per issuer (a signing key rotation in progress).
    extra_keys: dict[str, list[Issuer]] = field(default_factory=dict)

    @classmethod
    def create(cls, folder: Path, clock: Clock) -> Identities:
        identities = cls(folder / "trust.json", clock)
        for index, name in enumerate(ISSUERS):
            identities.issuers[name] = Issuer(name, generate_signing_key(), f"{name}-k{index}")
        identities.publish()
        return identities

    def publish(self) -> None:
        write_trust_store(
            self.trust_file,
            {
                name: TrustedIssuer(
                    [public_jwk(k.key, k.kid) for k in [i, *self.extra_keys.get(name, [])]],
                    *ISSUERS[name])
                for name, i in self.issuers.items()
            },
        )

    def minter(self, issuer: str, audience: str) -> TokenMinter:
        entry = self.issuers[issuer]
        return TokenMinter(entry.key, entry.kid, issuer, audience, self.clock)

    def token(self, issuer: str, tenant: str, scopes: Iterable[str], *,
              audience: str = "cardlink-vault", ttl: float = 300.0) -> str:
        return self.minter(issuer, audience).mint(f"{issuer}-svc", tenant, scopes, ttl)

    def metadata(self, issuer: str, tenant: str, scopes: Iterable[str], *,
                 audience: str = "cardlink-vault") -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self.token(issuer, tenant, scopes, audience=audience))
