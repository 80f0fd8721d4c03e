"""Caller authentication: JWT verification, trust store, principal, scopes, minting.

Every caller presents ``authorization: Bearer <JWT>`` (docs/ARCHITECTURE.md,
Authentication). The trust store is a JSON file listing each issuer's JWKS and
the tenants and scopes it may assert::

    {"issuers": {"https://bank.example": {"jwks": {"keys": [...]},
                                          "tenants": ["*"],
                                          "scopes": ["vault.tokens.detokenize"]}}}

It is re-read when the file changes, so an issuer rotates its signing key by
(1) publishing the new key next to the old, (2) signing with the new key,
(3) withdrawing the old one - with no restart and no failed call.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import inspect
import json
import logging
import math
import os
import tempfile
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from common.clock import Clock
from common.errors import PermissionDenied, Unauthenticated
from common.server import Behavior
from common.tenants import TENANT_RULE, is_tenant

__all__ = [
    "ALLOWED_ALGORITHMS",
    "MAX_TOKEN_LIFETIME_S",
    "PUBLIC_METHOD_PREFIXES",
    "AuthGuard",
    "JwtVerifier",
    "Principal",
    "ScopeMissing",
    "TokenMinter",
    "TrustStore",
    "TrustStoreError",
    "TrustedIssuer",
    "bearer_interceptors",
    "bearer_metadata",
    "bearer_token",
    "current_principal",
    "generate_signing_key",
    "jwk_thumbprint",
    "load_private_key_pem",
    "optional_principal",
    "public_jwk",
    "save_private_key_pem",
    "write_trust_store",
]

logger = logging.getLogger("cardlink.auth")

# Asymmetric only: "none" and HMAC are never accepted, whatever a key says.
ALLOWED_ALGORITHMS: tuple[str, ...] = ("EdDSA", "ES256", "ES384", "RS256", "PS256")
REQUIRED_CLAIMS = ("exp", "nbf", "iat", "iss", "aud", "sub", "tenant", "scope")

# Health and reflection answer without a credential (load balancers, grpcurl).
PUBLIC_METHOD_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

# gRPC caps metadata at 8 KiB by default; anything larger is not a real token
# and would only cost parsing time and cache memory.
MAX_TOKEN_BYTES = 8192
# A token valid for longer is refused: a leaked one would work for that long,
# and the verification cache would keep it as long.
MAX_TOKEN_LIFETIME_S = 86_400

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


# --------------------------------------------------------------------------
# Principal
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: who signed for it, who it is, its tenant and scopes."""

    issuer: str
    subject: str
    tenant: str
    scopes: frozenset[str]

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "cardlink_principal", default=None
)


def optional_principal() -> Principal | None:
    """The caller of the current RPC, or None on a public method."""
    return _principal.get()


def current_principal() -> Principal:
    """The caller of the current RPC; Unauthenticated when there is none."""
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("TOKEN_MISSING", "this call requires a credential")
    return principal


# --------------------------------------------------------------------------
# Trust store
# --------------------------------------------------------------------------


class TrustStoreError(ValueError):
    """The trust store file is missing or malformed."""


@dataclass(frozen=True)
class IssuerTrust:
    """One issuer's verification keys (by kid), the tenants and the scopes it may assert.

    Issuers sign their own tokens, so a partner could claim any scope; only
    the scopes the trust store grants its issuer take effect.
    """

    keys: Mapping[str, jwt.PyJWK]
    tenants: frozenset[str]
    scopes: frozenset[str]

    def allows(self, tenant: str) -> bool:
        return "*" in self.tenants or tenant in self.tenants


@dataclass(frozen=True)
class TrustSnapshot:
    """The trust store as loaded; ``generation`` changes on every reload."""

    generation: int
    issuers: Mapping[str, IssuerTrust]


def parse_trust_document(document: Any) -> dict[str, IssuerTrust]:
    """Issuers from a trust-store JSON document; unusable keys are skipped with a warning."""
    if not isinstance(document, dict) or not isinstance(document.get("issuers"), dict):
        raise TrustStoreError('trust store must be {"issuers": {...}}')
    issuers: dict[str, IssuerTrust] = {}
    for name, entry in document["issuers"].items():
        if not isinstance(entry, dict):
            raise TrustStoreError(f"issuer {name!r}: entry must be an object")
        tenants = entry.get("tenants")
        if not isinstance(tenants, list) or not all(isinstance(t, str) for t in tenants):
            raise TrustStoreError(f"issuer {name!r}: tenants must be a list of strings")
        if bad := [t for t in tenants if t != "*" and not is_tenant(t)]:
            raise TrustStoreError(f"issuer {name!r}: tenant ids must be {TENANT_RULE}, "
                                  f"not {bad[0]!r}")
        scopes = entry.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise TrustStoreError(f"issuer {name!r}: scopes must be a list of strings")
        jwks = entry.get("jwks")
        keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(keys, list):
            raise TrustStoreError(f"issuer {name!r}: jwks.keys must be a list")
        issuers[name] = IssuerTrust(
            dict(_usable_keys(name, keys)), frozenset(tenants), frozenset(scopes)
        )
    return issuers


def _usable_keys(issuer: str, keys: list[Any]) -> Iterator[tuple[str, jwt.PyJWK]]:
    # One bad key must not take the issuer's other keys down mid-rotation,
    # so it is skipped and logged rather than failing the whole file.
    for raw in keys:
        kid = raw.get("kid") if isinstance(raw, dict) else None
        if not isinstance(kid, str) or not kid:
            logger.warning("trust store: issuer %r has a key without kid; skipped", issuer)
            continue
        if "d" in raw:
            logger.warning("trust store: issuer %r key %r is private; skipped", issuer, kid)
            continue
        try:
            key = jwt.PyJWK(raw)
        except jwt.PyJWTError as error:
            logger.warning("trust store: issuer %r key %r unusable: %s", issuer, kid, error)
            continue
        if key.algorithm_name not in ALLOWED_ALGORITHMS:
            logger.warning("trust store: issuer %r key %r algorithm refused", issuer, kid)
            continue
        yield kid, key


class TrustStore:
    """The trusted issuers, re-read from ``path`` when the file changes.

    The file is checked at most once per ``check_interval`` seconds of the
    injected clock; ``refresh()`` checks at once (the verifier does
    that when it meets an unknown kid, so a freshly published key works on the
    very first call). A file that fails to parse keeps the previous contents.
    """

    def __init__(
        self, path: str | os.PathLike[str], clock: Clock, *, check_interval: float = 1.0
    ) -> None:
        self._path = Path(path)
        self._clock = clock
        self._interval = check_interval
        self._signature = self._stat()
        if self._signature is None:
            raise TrustStoreError(f"trust store {self._path} does not exist")
        self._snapshot = TrustSnapshot(1, self._load())
        self._checked_at = clock.now()

    def snapshot(self) -> TrustSnapshot:
        """The current issuers, re-reading the file if it changed (throttled)."""
        if self._clock.now() - self._checked_at >= self._interval:
            return self.refresh()
        return self._snapshot

    def refresh(self) -> TrustSnapshot:
        """Check the file now, unthrottled, and reload it if it changed."""
        self._checked_at = self._clock.now()
        signature = self._stat()
        if signature is None or signature == self._signature:
            return self._snapshot
        try:
            issuers = self._load()
        except (OSError, ValueError) as error:
            logger.error("trust store %s not reloaded, keeping previous: %s", self._path, error)
            return self._snapshot
        self._signature = signature
        self._snapshot = TrustSnapshot(self._snapshot.generation + 1, issuers)
        logger.info("trust store reloaded: %d issuers", len(issuers))
        return self._snapshot

    def _stat(self) -> tuple[int, int, int] | None:
        # mtime alone can miss two writes within the filesystem's timestamp
        # granularity; an atomic replace also changes the inode.
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> dict[str, IssuerTrust]:
        try:
            document = json.loads(self._path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise TrustStoreError(f"trust store {self._path} is not JSON: {error}") from None
        return parse_trust_document(document)


# --------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------


def _refuse(reason: str, message: str, **metadata: str) -> Unauthenticated:
    # Messages are fixed strings: the token is never echoed back.
    return Unauthenticated(reason, message, metadata=metadata)


class JwtVerifier:
    """Verifies bearer JWTs against a TrustStore and caches what it accepted.

    Service callers reuse one token for thousands of calls, so an accepted
    token is cached (bounded LRU, keyed by the token string) until its
    ``exp``; the cache is dropped whenever the trust store reloads, so a
    withdrawn key or tenant stops working at once.
    """

    def __init__(
        self,
        trust_store: TrustStore,
        audience: str,
        clock: Clock,
        leeway: float = 30.0,
        *,
        cache_size: int = 10_000,
    ) -> None:
        self._store = trust_store
        self._audience = audience
        self._clock = clock
        self._leeway = leeway
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._generation = 0

    def verify(self, token: str) -> Principal:
        """The Principal a token proves; raises Unauthenticated with a stable reason."""
        snapshot = self._store.snapshot()
        if snapshot.generation != self._generation:
            self._cache.clear()
            self._generation = snapshot.generation
        cached = self._cached(token)
        if cached is not None:
            return cached
        principal, expires = self._verify(token, snapshot)
        self._remember(token, principal, expires)
        return principal

    def _cached(self, token: str) -> Principal | None:
        entry = self._cache.get(token)
        if entry is None:
            return None
        principal, expires = entry
        if self._clock.now() >= expires:
            # Past exp: drop it and let full verification (with leeway) decide.
            del self._cache[token]
            return None
        self._cache.move_to_end(token)
        return principal

    def _remember(self, token: str, principal: Principal, expires: float) -> None:
        self._cache[token] = (principal, expires)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _verify(self, token: str, snapshot: TrustSnapshot) -> tuple[Principal, float]:
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise _refuse("TOKEN_INVALID", "the bearer token is malformed")
        alg, kid = _header(token)
        issuer_name = _unverified_issuer(token)
        key, issuer = self._key(snapshot, issuer_name, kid)
        if key.algorithm_name != alg:
            raise _refuse("ALGORITHM_NOT_ALLOWED", "the token's algorithm does not match its key")
        claims = self._decode(token, key, issuer_name)
        expires = self._check_times(claims)
        return _principal_from(claims, issuer_name, issuer), expires

    def _key(
        self, snapshot: TrustSnapshot, issuer_name: str, kid: str
    ) -> tuple[jwt.PyJWK, IssuerTrust]:
        issuer = snapshot.issuers.get(issuer_name)
        if issuer is None or kid not in issuer.keys:
            # Maybe the issuer just published it: look at the file now.
            issuer = self._store.refresh().issuers.get(issuer_name)
        if issuer is None:
            raise _refuse("ISSUER_UNKNOWN", "the token's issuer is not trusted")
        key = issuer.keys.get(kid)  # a plain dict lookup: any kid string is safe
        if key is None:
            raise _refuse("KEY_UNKNOWN", "the token's signing key is not known for its issuer")
        return key, issuer

    def _decode(self, token: str, key: jwt.PyJWK, issuer: str) -> dict[str, Any]:
        # Times are checked by _check_times against the injected clock;
        # PyJWT would read the system clock.
        options: Any = {
            "require": list(REQUIRED_CLAIMS),
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        }
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                issuer=issuer,
                options=options,
            )
        except jwt.InvalidAudienceError:
            raise _refuse("AUDIENCE_MISMATCH", "the token is not for this service") from None
        except jwt.InvalidAlgorithmError:
            raise _refuse("ALGORITHM_NOT_ALLOWED", "the token's algorithm is refused") from None
        except jwt.MissingRequiredClaimError as error:
            raise _refuse("TOKEN_INVALID", "the token lacks a claim", claim=error.claim) from None
        except jwt.PyJWTError:
            raise _refuse("TOKEN_INVALID", "the token is invalid") from None
        return claims

    def _check_times(self, claims: Mapping[str, Any]) -> float:
        exp, nbf, iat = (_number(claims, name) for name in ("exp", "nbf", "iat"))
        now = self._clock.now()
        if exp - max(iat, nbf) > MAX_TOKEN_LIFETIME_S:
            raise _refuse("TOKEN_INVALID", "the token is valid for too long", claim="exp")
        if now > exp + self._leeway:
            raise _refuse("TOKEN_EXPIRED", "the token has expired")
        if now + self._leeway < nbf or now + self._leeway < iat:
            raise _refuse("TOKEN_NOT_YET_VALID", "the token is not valid yet")
        return exp


def _header(token: str) -> tuple[str, str]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _refuse("TOKEN_INVALID", "the bearer token is malformed") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise _refuse("ALGORITHM_NOT_ALLOWED", "the token's algorithm is refused")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _refuse("TOKEN_INVALID", "the token header names no key id", claim="kid")
    return alg, kid


def _unverified_issuer(token: str) -> str:
    # Read before verification only to pick the issuer's keys; every claim is
    # verified afterwards with that key.
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _refuse("TOKEN_INVALID", "the bearer token is malformed") from None
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise _refuse("TOKEN_INVALID", "the token names no issuer", claim="iss")
    return issuer


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    try:
        number = float(value) if isinstance(value, int | float) else math.nan
    except OverflowError:  # an integer beyond any float
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise _refuse("TOKEN_INVALID", "a time claim is not a number", claim=name)
    return number


def _principal_from(claims: Mapping[str, Any], issuer_name: str, issuer: IssuerTrust) -> Principal:
    subject, tenant, scope = claims.get("sub"), claims.get("tenant"), claims.get("scope")
    if not isinstance(subject, str) or not subject:
        raise _refuse("TOKEN_INVALID", "the token's subject is invalid", claim="sub")
    if not isinstance(tenant, str) or not is_tenant(tenant):
        raise _refuse("TOKEN_INVALID", "the token's tenant is invalid", claim="tenant")
    if not isinstance(scope, str):
        raise _refuse("TOKEN_INVALID", "the token's scope is invalid", claim="scope")
    if not issuer.allows(tenant):
        raise _refuse("TENANT_NOT_ALLOWED", "the issuer may not assert this tenant")
    return Principal(issuer_name, subject, tenant, frozenset(scope.split()) & issuer.scopes)


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The JWT of an ``authorization: Bearer <jwt>`` header; Unauthenticated if absent/bad."""
    values = [v for k, v in metadata or () if k == "authorization"]
    if not values:
        raise _refuse("TOKEN_MISSING", "this call requires a bearer token")
    if len(values) > 1 or not isinstance(values[0], str):
        raise _refuse("TOKEN_INVALID", "the authorization header is malformed")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _refuse("TOKEN_INVALID", "the authorization header is malformed")
    return token.strip()


# --------------------------------------------------------------------------
# Server guard
# --------------------------------------------------------------------------


Context = grpc.aio.ServicerContext[Any, Any]
# Who the caller of a call is; raises the refusal instead.
Authorize = Callable[[Context], Principal]


class AuthGuard:
    """Authenticates every call and checks the method's scope; fails closed.

    A guard for ``common.server.start_server``: ``method_scopes`` maps a full
    method name ('/pkg.Service/Method') to the scope it needs, or None for a
    public method (served unwrapped). Health and reflection are public. A
    method missing from the map is refused, so a new RPC cannot ship
    unprotected by accident. Install after ``error_guard``.

    The handler runs with the caller's Principal in the contextvar read by
    ``current_principal()``.
    """

    def __init__(self, verifier: JwtVerifier, method_scopes: Mapping[str, str | None]) -> None:
        self._verifier = verifier
        self._scopes = dict(method_scopes)

    def __call__(self, method: str, behavior: Behavior) -> Behavior:
        if method.startswith(PUBLIC_METHOD_PREFIXES):
            return behavior
        if method not in self._scopes:
            logger.warning("method %s has no scope mapping: its calls are refused", method)
            return _run_as(_refuse_unmapped(method), behavior)
        scope = self._scopes[method]
        if scope is None:
            return behavior
        return _run_as(self._authorizer(scope), behavior)

    def _authorizer(self, scope: str) -> Authorize:
        verify = self._verifier.verify

        def authorize(context: Context) -> Principal:
            principal = verify(bearer_token(context.invocation_metadata()))
            if scope not in principal.scopes:
                raise ScopeMissing(principal, scope)
            return principal

        return authorize


class ScopeMissing(PermissionDenied):
    """A verified caller without the scope a call needs. Carries the caller, so
    an audit of the refusal names who it was, not who it claimed to be."""

    def __init__(self, principal: Principal, scope: str) -> None:
        super().__init__("SCOPE_MISSING", "the caller lacks the scope this call needs",
                         metadata={"scope": scope})
        self.principal = principal


def _refuse_unmapped(method: str) -> Authorize:
    def refuse(context: Context) -> Principal:
        logger.warning("refused call to %s: method has no scope mapping", method)
        raise PermissionDenied(
            "METHOD_NOT_ALLOWED", "this method is not open to callers", metadata={"method": method}
        )

    return refuse


def _run_as(authorize: Authorize, behavior: Behavior) -> Behavior:
    """``behavior`` run as the principal ``authorize`` returns (same kind: coroutine or
    async generator). The contextvar is set directly: a context manager per call
    costs more than the rest of the guard."""
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: Context) -> AsyncIterator[Any]:
            token = _principal.set(authorize(context))
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                with contextlib.suppress(ValueError):  # finalized in another context
                    _principal.reset(token)

        return generator

    async def unary(request: Any, context: Context) -> Any:
        token = _principal.set(authorize(context))
        try:
            return await behavior(request, context)
        finally:
            _principal.reset(token)

    return unary


# --------------------------------------------------------------------------
# Service callers: keys, minting, call metadata
# --------------------------------------------------------------------------


def generate_signing_key() -> ed25519.Ed25519PrivateKey:
    """A fresh Ed25519 signing key (EdDSA), from the OS CSPRNG."""
    return ed25519.Ed25519PrivateKey.generate()


def _algorithm_of(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384"}
        if key.curve.name not in by_curve:
            raise ValueError(f"unsupported curve {key.curve.name}")
        return by_curve[key.curve.name]
    return "RS256"


def public_jwk(
    key: PrivateKey | PublicKey, kid: str, *, algorithm: str | None = None
) -> dict[str, Any]:
    """The public JWK (with kid, alg, use=sig) to publish in a trust store."""
    public = key.public_key() if hasattr(key, "public_key") else key
    alg = algorithm or _algorithm_of(public)
    if alg not in ALLOWED_ALGORITHMS:
        raise ValueError(f"algorithm {alg} is not allowed")
    if isinstance(public, ed25519.Ed25519PublicKey):
        jwk: dict[str, Any] = OKPAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def jwk_thumbprint(key: PrivateKey | PublicKey) -> str:
    """A short RFC 7638 JWK thumbprint: the kid `make run` publishes for a key.

    Stable for a key and different between keys, so a service can find its
    own kid from its key file alone.
    """
    jwk = public_jwk(key, kid="")
    members = {m: jwk[m] for m in sorted(jwk) if m in ("crv", "e", "kty", "n", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:16]


def save_private_key_pem(key: PrivateKey, path: str | os.PathLike[str]) -> None:
    """Write a private key as unencrypted PKCS#8 PEM, readable by the owner only (0600)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_NOFOLLOW: never written through a symlink planted at the name.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # the file may have existed with wider rights
        out.write(pem)


def load_private_key_pem(path: str | os.PathLike[str]) -> PrivateKey:
    """Load a PEM private key written by save_private_key_pem (or any PKCS#8 PEM)."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(
        key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ):
        raise ValueError("unsupported private key type")
    return key


@dataclass(frozen=True)
class TrustedIssuer:
    """One issuer entry of a trust-store file: its public keys, and the tenants
    and scopes its tokens may claim (``"*"`` in tenants: any tenant)."""

    keys: Sequence[Mapping[str, Any]]
    tenants: Sequence[str]
    scopes: Sequence[str]


def write_trust_store(path: str | os.PathLike[str], issuers: Mapping[str, TrustedIssuer]) -> None:
    """Write a trust-store file atomically (readers never see half a file)."""
    document = {
        "issuers": {
            name: {
                "jwks": {"keys": [dict(k) for k in entry.keys]},
                "tenants": list(entry.tenants),
                "scopes": list(entry.scopes),
            }
            for name, entry in issuers.items()
        }
    }
    target = Path(path)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2, sort_keys=True)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


class TokenMinter:
    """Signs JWTs for service callers (gateway->vault, bank->vault) and tests.

    ``token()`` hands out a cached token per (subject, tenant, scopes) and
    mints a new one once less than a fifth of its life (at least 30 s) is
    left, so a call never leaves with a token about to expire.
    """

    def __init__(
        self,
        private_key: PrivateKey,
        kid: str,
        issuer: str,
        audience: str,
        clock: Clock,
        *,
        algorithm: str | None = None,
    ) -> None:
        self._key = private_key
        self._algorithm = algorithm or _algorithm_of(private_key)
        if self._algorithm not in ALLOWED_ALGORITHMS:
            raise ValueError(f"algorithm {self._algorithm} is not allowed")
        self._kid = kid
        self._issuer = issuer
        self._audience = audience
        self._clock = clock
        self._cache: dict[tuple[str, str, frozenset[str], float], tuple[str, float]] = {}

    def mint(self, subject: str, tenant: str, scopes: Iterable[str], ttl: float = 300.0) -> str:
        """A new signed token valid from now for ``ttl`` seconds."""
        now = int(self._clock.now())
        claims = {
            "iss": self._issuer,
            "sub": subject,
            "aud": self._audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
            "tenant": tenant,
            "scope": " ".join(sorted(set(scopes))),
        }
        return jwt.encode(claims, self._key, algorithm=self._algorithm, headers={"kid": self._kid})

    def token(self, subject: str, tenant: str, scopes: Iterable[str], ttl: float = 300.0) -> str:
        """A cached token for these claims, re-minted before it gets close to expiry."""
        key = (subject, tenant, frozenset(scopes), ttl)
        cached = self._cache.get(key)
        margin = max(ttl / 5, min(30.0, ttl / 2))
        if cached is not None and self._clock.now() < cached[1] - margin:
            return cached[0]
        token = self.mint(subject, tenant, key[2], ttl)
        self._cache[key] = (token, int(self._clock.now()) + int(ttl))
        return token

    def metadata(
        self, subject: str, tenant: str, scopes: Iterable[str], ttl: float = 300.0
    ) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying a cached token: ``stub.M(req, metadata=...)``."""
        return bearer_metadata(self.token(subject, tenant, scopes, ttl))


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """``(("authorization", "Bearer <token>"),)`` for a call's metadata."""
    return (("authorization", f"Bearer {token}"),)


class _Bearer:
    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def _details(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata["authorization"] = f"Bearer {self._token()}"
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _BearerUnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _BearerUnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _BearerStreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _BearerStreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def bearer_interceptors(token: Callable[[], str]) -> list[Any]:
    """Client interceptors adding ``authorization: Bearer <token()>`` to every call.

    ``grpc.aio.insecure_channel(addr, interceptors=bearer_interceptors(get_token))``.
    ``token`` is called per call (e.g. ``lambda: minter.token(...)``) so a
    refreshed token is picked up. grpc.aio files each interceptor under one
    call kind only, hence one object per kind.
    """
    kinds = (_BearerUnaryUnary, _BearerUnaryStream, _BearerStreamUnary, _BearerStreamStream)
    return [kind(token) for kind in kinds]
