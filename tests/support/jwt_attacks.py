"""Forged and misused JWTs, each with the reason a CardLink server must refuse it for.

Shared by the vault's and the gateway's tests: both must refuse the same
attacks the same way, whatever the method.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from common.auth import generate_signing_key
from tests.support.identities import Identities


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Attacks:
    """Tokens of ``issuer`` for ``tenant``, each broken in one way."""

    def __init__(self, identities: Identities, issuer: str, audience: str, tenant: str,
                 scopes: tuple[str, ...]) -> None:
        self._entry = identities.issuers[issuer]
        self._issuer, self._audience, self._tenant = issuer, audience, tenant
        self._scopes = scopes
        self._now = int(identities.clock.now())

    def claims(self, **changes: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self._issuer, "sub": "attacker", "aud": self._audience, "iat": self._now,
            "nbf": self._now, "exp": self._now + 300, "tenant": self._tenant,
            "scope": " ".join(self._scopes),
        }
        claims.update(changes)
        return claims

    def signed(self, claims: dict[str, Any], kid: str | None = None) -> str:
        return jwt.encode(claims, self._entry.key, algorithm="EdDSA",
                          headers={"kid": kid or self._entry.kid})

    def _hs256_with_public_key(self) -> str:
        # The classic key-confusion attack: HMAC keyed with the issuer's public key.
        public_pem = self._entry.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        header = {"alg": "HS256", "kid": self._entry.kid, "typ": "JWT"}
        body = _b64(json.dumps(self.claims()).encode())
        signing_input = f"{_b64(json.dumps(header).encode())}.{body}"
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"

    def _unsigned(self) -> str:
        header = {"alg": "none", "kid": self._entry.kid, "typ": "JWT"}
        body = _b64(json.dumps(self.claims()).encode())
        return f"{_b64(json.dumps(header).encode())}.{body}."

    def _forged(self) -> str:
        # Right kid, right claims, signed by a key that is not the issuer's.
        return jwt.encode(self.claims(), generate_signing_key(), algorithm="EdDSA",
                          headers={"kid": self._entry.kid})

    def all(self) -> dict[str, tuple[str, str]]:
        """name -> (token, the UNAUTHENTICATED reason it must be refused with)."""
        now = self._now
        other_tenant = "globex" if self._tenant != "globex" else "acme"
        return {
            "alg_none": (self._unsigned(), "ALGORITHM_NOT_ALLOWED"),
            "hs256_public_key": (self._hs256_with_public_key(), "ALGORITHM_NOT_ALLOWED"),
            "forged_signature": (self._forged(), "TOKEN_INVALID"),
            "expired": (self.signed(self.claims(iat=now - 900, nbf=now - 900, exp=now - 600)),
                        "TOKEN_EXPIRED"),
            "not_yet_valid": (self.signed(self.claims(nbf=now + 600, iat=now + 600,
                                                      exp=now + 900)), "TOKEN_NOT_YET_VALID"),
            "wrong_issuer": (self.signed(self.claims(iss="evil-partner")), "ISSUER_UNKNOWN"),
            "wrong_audience": (self.signed(self.claims(aud="somebody-else")),
                               "AUDIENCE_MISMATCH"),
            "unknown_kid": (self.signed(self.claims(), kid="k99"), "KEY_UNKNOWN"),
            "path_kid": (self.signed(self.claims(), kid="../../etc/passwd"), "KEY_UNKNOWN"),
            "sql_kid": (self.signed(self.claims(), kid="x' OR '1'='1"), "KEY_UNKNOWN"),
            "other_tenant_claim": (self.signed(self.claims(tenant=other_tenant)),
                                   "TENANT_NOT_ALLOWED"),
        }


NAMES = ("alg_none", "hs256_public_key", "forged_signature", "expired", "not_yet_valid",
         "wrong_issuer", "wrong_audience", "unknown_kid", "path_kid", "sql_kid",
         "other_tenant_claim")
