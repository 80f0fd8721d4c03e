"""JWT verification, trust-store rotation and the auth guard on a real server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common import auth
from common.auth import (
    AuthGuard,
    JwtVerifier,
    Principal,
    TokenMinter,
    TrustedIssuer,
    TrustStore,
    TrustStoreError,
    current_principal,
    generate_signing_key,
    jwk_thumbprint,
    public_jwk,
    save_private_key_pem,
    write_trust_store,
)
from common.clock import ManualClock
from common.errors import Unauthenticated
from common.grpc_errors import error_from_rpc, error_guard
from common.server import Guard, start_server
from tests.support.rawservice import Kind, raw_service, unary, unary_stream

AUDIENCE = "cardlink-vault"
GATEWAY = "https://gateway.test"
PARTNER = "https://partner-a.test"
GATEWAY_SCOPES = ["tokens.read", "tokens.write"]
PARTNER_SCOPES = ["bindings.write", "tokens.read"]
SERVICE = "test.Secured"
SCOPES = {
    f"/{SERVICE}/Whoami": "tokens.read",
    f"/{SERVICE}/Public": None,
}


@dataclass
class World:
    """Two issuers in a trust file: the gateway (any tenant) and partner A (acme only)."""

    path: Path
    clock: ManualClock
    gateway_key: ed25519.Ed25519PrivateKey
    partner_key: ec.EllipticCurvePrivateKey
    store: TrustStore
    verifier: JwtVerifier

    def minter(self, issuer: str = GATEWAY, **overrides: Any) -> TokenMinter:
        key: Any = self.gateway_key if issuer == GATEWAY else self.partner_key
        kid = "gw-1" if issuer == GATEWAY else "pa-1"
        private_key = overrides.pop("private_key", key)
        args: dict[str, Any] = {"kid": kid, "issuer": issuer, "audience": AUDIENCE, **overrides}
        return TokenMinter(private_key, clock=self.clock, **args)

    def publish(self, gateway_keys: list[dict[str, Any]]) -> None:
        write_trust_store(
            self.path,
            {
                GATEWAY: TrustedIssuer(gateway_keys, ["*"], GATEWAY_SCOPES),
                PARTNER: TrustedIssuer(
                    [public_jwk(self.partner_key, "pa-1")], ["acme"], PARTNER_SCOPES
                ),
            },
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    clock = ManualClock()
    gateway_key = generate_signing_key()
    partner_key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "trust.json"
    w = World(path, clock, gateway_key, partner_key, None, None)  # type: ignore[arg-type]
    w.publish([public_jwk(gateway_key, "gw-1")])
    w.store = TrustStore(path, clock)
    w.verifier = JwtVerifier(w.store, AUDIENCE, clock)
    return w


def _good(world: World, tenant: str = "acme", scopes: tuple[str, ...] = ("tokens.read",)) -> str:
    return world.minter().mint("gateway", tenant, scopes, ttl=300)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(world: World, **overrides: Any) -> dict[str, Any]:
    now = int(world.clock.now())
    claims: dict[str, Any] = {
        "iss": GATEWAY,
        "sub": "gateway",
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "tenant": "acme",
        "scope": "tokens.read",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _hand_signed(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _signed(world: World, claims: dict[str, Any], kid: str = "gw-1", key: Any = None) -> str:
    return jwt.encode(claims, key or world.gateway_key, algorithm="EdDSA", headers={"kid": kid})


# --------------------------------------------------------------------------
# Verifier: the accepted path
# --------------------------------------------------------------------------


def test_good_token_gives_its_principal(world: World) -> None:
    principal = world.verifier.verify(_good(world, scopes=("tokens.read", "tokens.write")))
    assert principal == Principal(
        GATEWAY, "gateway", "acme", frozenset({"tokens.read", "tokens.write"})
    )
    assert principal.has_scope("tokens.write")
    assert not principal.has_scope("tokens.detokenize")


def test_issuer_cannot_grant_itself_scopes_the_trust_store_withholds(world: World) -> None:
    # Partners sign their own tokens: a partner claiming the bank's
    # detokenize scope must not get it.
    token = world.minter(PARTNER).mint("shop", "acme", ["bindings.write", "tokens.detokenize"])
    assert world.verifier.verify(token).scopes == frozenset({"bindings.write"})


def test_es256_partner_token_for_an_allowed_tenant(world: World) -> None:
    token = world.minter(PARTNER).mint("shop", "acme", ["bindings.write"])
    assert world.verifier.verify(token).tenant == "acme"


def test_rsa_pss_key_with_explicit_alg(world: World, tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    world.publish([public_jwk(rsa_key, "rsa-1", algorithm="PS256")])
    world.clock.advance(1)
    token = world.minter(private_key=rsa_key, kid="rsa-1", algorithm="PS256").mint(
        "gateway", "acme", ["tokens.read"]
    )
    assert world.verifier.verify(token).subject == "gateway"


# --------------------------------------------------------------------------
# Verifier: attacks and bad tokens, each with its stable reason
# --------------------------------------------------------------------------


def _refused(world: World, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        world.verifier.verify(token)
    if len(token) > 3:  # the token is never echoed back
        assert token not in caught.value.message
        assert all(token not in v for v in caught.value.metadata.values())
    return caught.value


def test_alg_none_is_refused(world: World) -> None:
    token = jwt.encode(_claims(world), "", algorithm="none", headers={"kid": "gw-1"})
    assert _refused(world, token).reason == "ALGORITHM_NOT_ALLOWED"


@pytest.mark.parametrize("encoding", ["pem", "raw"])
def test_hs256_signed_with_the_public_key_is_refused(world: World, encoding: str) -> None:
    public = world.gateway_key.public_key()
    secret = (
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if encoding == "pem"
        else public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    token = _hand_signed({"alg": "HS256", "typ": "JWT", "kid": "gw-1"}, _claims(world), secret)
    assert _refused(world, token).reason == "ALGORITHM_NOT_ALLOWED"


def test_header_alg_that_does_not_match_the_key_is_refused(world: World) -> None:
    # An ES256 header on an Ed25519 key: algorithm confusion.
    good = _good(world)
    header = json.loads(base64.urlsafe_b64decode(good.split(".")[0] + "=="))
    header["alg"] = "ES256"
    forged = ".".join([_b64(json.dumps(header).encode()), *good.split(".")[1:]])
    assert _refused(world, forged).reason == "ALGORITHM_NOT_ALLOWED"


def test_expired_token(world: World) -> None:
    token = _good(world)
    world.clock.advance(300 + 30 + 1)
    assert _refused(world, token).reason == "TOKEN_EXPIRED"


def test_expired_within_leeway_is_still_accepted(world: World) -> None:
    token = _good(world)
    world.clock.advance(300 + 10)
    assert world.verifier.verify(token).subject == "gateway"


def test_a_token_valid_for_too_long_or_forever_is_refused(world: World) -> None:
    now = int(world.clock.now())
    for exp in (now + 10 * 365 * 86_400, float("nan"), float("inf"), 10**400):
        token = _signed(world, _claims(world, exp=exp))
        refusal = _refused(world, token)
        assert (refusal.reason, refusal.metadata["claim"]) == ("TOKEN_INVALID", "exp")
    assert world.verifier.verify(_signed(world, _claims(world, exp=now + 86_400)))


def test_not_yet_valid_token(world: World) -> None:
    now = int(world.clock.now())
    token = _signed(world, _claims(world, nbf=now + 120, iat=now))
    assert _refused(world, token).reason == "TOKEN_NOT_YET_VALID"


def test_issued_in_the_future(world: World) -> None:
    now = int(world.clock.now())
    token = _signed(world, _claims(world, iat=now + 120))
    assert _refused(world, token).reason == "TOKEN_NOT_YET_VALID"


def test_wrong_issuer(world: World) -> None:
    token = world.minter(issuer="https://evil.test", kid="gw-1").mint("x", "acme", ["tokens.read"])
    assert _refused(world, token).reason == "ISSUER_UNKNOWN"


def test_wrong_audience(world: World) -> None:
    token = world.minter(audience="cardlink-gateway").mint("x", "acme", ["tokens.read"])
    assert _refused(world, token).reason == "AUDIENCE_MISMATCH"


def test_unknown_kid(world: World) -> None:
    assert _refused(world, _signed(world, _claims(world), kid="gw-9")).reason == "KEY_UNKNOWN"


@pytest.mark.parametrize(
    "kid",
    ["../../etc/passwd", "/dev/zero", "' OR '1'='1' --", "gw-1\x00", "gw-1/../gw-1", "k" * 4000],
)
def test_kid_with_path_or_sql_characters_is_just_unknown(world: World, kid: str) -> None:
    assert _refused(world, _signed(world, _claims(world), kid=kid)).reason in {
        "KEY_UNKNOWN",
        "TOKEN_INVALID",
    }


def test_kid_of_another_issuers_key_is_not_found_for_this_issuer(world: World) -> None:
    # Partner A names the gateway's kid and signs with the gateway's key it
    # somehow got a signature from: keys are looked up only under partner A.
    token = _signed(world, _claims(world, iss=PARTNER), kid="gw-1")
    assert _refused(world, token).reason == "KEY_UNKNOWN"


def test_missing_kid(world: World) -> None:
    token = jwt.encode(_claims(world), world.gateway_key, algorithm="EdDSA")
    assert _refused(world, token).reason == "TOKEN_INVALID"


def test_forged_signature_from_another_key(world: World) -> None:
    attacker = generate_signing_key()
    assert _refused(world, _signed(world, _claims(world), key=attacker)).reason == "TOKEN_INVALID"


def test_tampered_payload(world: World) -> None:
    header, _, signature = _good(world).split(".")
    payload = _b64(json.dumps(_claims(world, scope="tokens.read tokens.detokenize")).encode())
    assert _refused(world, f"{header}.{payload}.{signature}").reason == "TOKEN_INVALID"


def test_tenant_not_allowed_for_issuer(world: World) -> None:
    token = world.minter(PARTNER).mint("shop", "globex", ["bindings.write"])
    assert _refused(world, token).reason == "TENANT_NOT_ALLOWED"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat", "sub", "tenant", "scope", "aud"])
def test_each_required_claim(world: World, claim: str) -> None:
    error = _refused(world, _signed(world, _claims(world, **{claim: None})))
    assert (error.reason, error.metadata.get("claim")) == ("TOKEN_INVALID", claim)


@pytest.mark.parametrize("tenant", ["a:b", "acme}", "", "x" * 64, "ac me", "Acme", "acme_co",
                                    "-acme"])
def test_tenant_outside_the_shared_alphabet_is_refused(world: World, tenant: str) -> None:
    """The vault's names take lowercase letters, digits and hyphens only: a tenant
    the gateway accepted and the vault refused would fail every binding."""
    assert _refused(world, _signed(world, _claims(world, tenant=tenant))).reason == "TOKEN_INVALID"


def test_a_trust_store_naming_an_impossible_tenant_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    write_trust_store(path, {GATEWAY: TrustedIssuer(
        [public_jwk(generate_signing_key(), "k")], ["acme", "Acme_Co"], GATEWAY_SCOPES)})
    with pytest.raises(TrustStoreError, match="Acme_Co"):
        TrustStore(path, ManualClock()).snapshot()


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "e30.e30.", "x" * 9000])
def test_garbage_tokens(world: World, token: str) -> None:
    assert _refused(world, token).reason in {"TOKEN_INVALID", "ALGORITHM_NOT_ALLOWED"}


# --------------------------------------------------------------------------
# Rotation and the verification cache
# --------------------------------------------------------------------------


def test_key_rotation_without_restart_or_failed_call(world: World) -> None:
    old = _good(world)
    assert world.verifier.verify(old).subject == "gateway"
    key2 = generate_signing_key()
    # 1. publish the new key beside the old one; the very first token signed
    #    with it works at once (unknown kid forces a re-read), no clock move.
    world.publish([public_jwk(world.gateway_key, "gw-1"), public_jwk(key2, "gw-2")])
    new = world.minter(private_key=key2, kid="gw-2").mint("gateway", "acme", ["tokens.read"])
    assert world.verifier.verify(new).subject == "gateway"
    assert world.verifier.verify(old).subject == "gateway"
    # 2. withdraw the old key: once the store re-checks (1 s), old tokens fail
    #    even though they were cached.
    world.publish([public_jwk(key2, "gw-2")])
    world.clock.advance(1.0)
    assert _refused(world, old).reason == "KEY_UNKNOWN"
    assert world.verifier.verify(new).subject == "gateway"


def test_tenant_withdrawn_from_issuer_applies_to_cached_tokens(world: World) -> None:
    token = world.minter(PARTNER).mint("shop", "acme", ["bindings.write"])
    assert world.verifier.verify(token).tenant == "acme"
    write_trust_store(
        world.path,
        {
            GATEWAY: TrustedIssuer(
                [public_jwk(world.gateway_key, "gw-1")], ["*"], GATEWAY_SCOPES
            ),
            PARTNER: TrustedIssuer(
                [public_jwk(world.partner_key, "pa-1")], ["initech"], PARTNER_SCOPES
            ),
        },
    )
    world.clock.advance(1.0)
    assert _refused(world, token).reason == "TENANT_NOT_ALLOWED"


def test_broken_trust_file_keeps_the_previous_keys(world: World) -> None:
    token = _good(world)
    world.path.write_text("{not json", encoding="utf-8")
    world.clock.advance(5)
    assert world.verifier.verify(token).subject == "gateway"


def test_cache_never_outlives_exp(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("key") is not None:
            decoded.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)  # the module common.auth uses
    token = world.minter().mint("gateway", "acme", ["tokens.read"], ttl=60)
    for _ in range(1000):
        world.verifier.verify(token)
    assert len(decoded) == 1  # one signature check serves a thousand calls
    world.clock.advance(59)
    world.verifier.verify(token)
    world.clock.advance(1 + 30 + 1)  # past exp and the leeway
    assert _refused(world, token).reason == "TOKEN_EXPIRED"


def test_cache_is_bounded(world: World) -> None:
    verifier = JwtVerifier(world.store, AUDIENCE, world.clock, cache_size=3)
    minter = world.minter()
    tokens = [minter.mint(f"svc-{i}", "acme", ["tokens.read"]) for i in range(10)]
    for token in tokens:
        verifier.verify(token)
    assert len(verifier._cache) == 3


# --------------------------------------------------------------------------
# Minting
# --------------------------------------------------------------------------


def test_minter_caches_and_refreshes_before_expiry(world: World) -> None:
    minter = world.minter()
    first = minter.token("gateway", "acme", ["tokens.read"], ttl=300)
    world.clock.advance(200)
    assert minter.token("gateway", "acme", ["tokens.read"], ttl=300) == first
    world.clock.advance(50)  # 50 s left < 60 s margin
    second = minter.token("gateway", "acme", ["tokens.read"], ttl=300)
    assert second != first
    assert world.verifier.verify(second).tenant == "acme"
    assert minter.metadata("gateway", "acme", ["tokens.read"]) == (
        ("authorization", f"Bearer {second}"),
    )


def test_minter_refuses_hmac() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        TokenMinter(
            generate_signing_key(), "k", GATEWAY, AUDIENCE, ManualClock(), algorithm="HS256"
        )


def test_pem_round_trip_is_owner_only(tmp_path: Path) -> None:
    key = generate_signing_key()
    path = tmp_path / "signing.pem"
    auth.save_private_key_pem(key, path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = auth.load_private_key_pem(path)
    assert public_jwk(loaded, "k") == public_jwk(key, "k")


def test_private_and_hmac_keys_in_the_trust_file_are_ignored(tmp_path: Path) -> None:
    key = generate_signing_key()
    private_jwk = {**public_jwk(key, "priv"), "d": _b64(b"x" * 32)}
    hmac_jwk = {"kty": "oct", "kid": "hs", "k": _b64(b"secret")}
    path = tmp_path / "trust.json"
    write_trust_store(
        path,
        {GATEWAY: TrustedIssuer([private_jwk, hmac_jwk, public_jwk(key, "ok")], ["*"], [])},
    )
    keys = TrustStore(path, ManualClock()).snapshot().issuers[GATEWAY].keys
    assert set(keys) == {"ok"}


# --------------------------------------------------------------------------
# The guard on a real server
# --------------------------------------------------------------------------


async def _whoami(request: bytes, context: Any) -> bytes:
    p = current_principal()
    return json.dumps([p.issuer, p.subject, p.tenant, sorted(p.scopes)]).encode()


async def _public(request: bytes, context: Any) -> bytes:
    return b"public"


async def _stream_whoami(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield current_principal().tenant.encode()


SERVED = raw_service(
    SERVICE,
    {
        "Whoami": Kind.UNARY_UNARY,
        "Public": Kind.UNARY_UNARY,
        "Unmapped": Kind.UNARY_UNARY,
        "StreamWhoami": Kind.UNARY_STREAM,
    },
    types.SimpleNamespace(
        Whoami=_whoami, Public=_public, Unmapped=_public, StreamWhoami=_stream_whoami
    ),
)


@pytest.fixture
async def address(world: World) -> AsyncIterator[str]:
    scopes = {**SCOPES, f"/{SERVICE}/StreamWhoami": "tokens.read"}
    guards: list[Guard] = [error_guard, AuthGuard(world.verifier, scopes)]
    running = await start_server([SERVED], "127.0.0.1:0", guards=guards)
    yield f"127.0.0.1:{running.port}"
    await running.stop(None)


async def _call(address: str, method: str, metadata: Any = None) -> bytes:
    async with grpc.aio.insecure_channel(address) as channel:
        reply: bytes = await unary(channel, f"/{SERVICE}/{method}")(b"", metadata=metadata)
        return reply


async def _refused_call(address: str, method: str, metadata: Any) -> tuple[grpc.StatusCode, Any]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(address, method, metadata)
    return caught.value.code(), error_from_rpc(caught.value)


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_authorized_call_sees_its_principal(world: World, address: str) -> None:
    reply = await _call(address, "Whoami", _bearer(_good(world)))
    assert json.loads(reply) == [GATEWAY, "gateway", "acme", ["tokens.read"]]


async def test_streaming_handler_sees_its_principal(world: World, address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stream = unary_stream(channel, f"/{SERVICE}/StreamWhoami")
        call = stream(b"", metadata=_bearer(_good(world)))
        assert [m async for m in call] == [b"acme"]


async def test_no_credential_is_unauthenticated(address: str) -> None:
    code, error = await _refused_call(address, "Whoami", None)
    assert (code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer not.a.jwt", "bearer@@@", "Token x"],
)
async def test_malformed_authorization_header(address: str, header: str) -> None:
    code, error = await _refused_call(address, "Whoami", (("authorization", header),))
    assert (code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


def _attack_tokens(world: World) -> dict[str, tuple[str, str]]:
    now = int(world.clock.now())
    public_pem = world.gateway_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expired_claims = _claims(world, iat=now - 1000, nbf=now - 1000, exp=now - 500)
    return {
        "alg_none": (
            jwt.encode(_claims(world), "", algorithm="none", headers={"kid": "gw-1"}),
            "ALGORITHM_NOT_ALLOWED",
        ),
        "hs256_public_key": (
            _hand_signed({"alg": "HS256", "kid": "gw-1"}, _claims(world), public_pem),
            "ALGORITHM_NOT_ALLOWED",
        ),
        "expired": (_signed(world, expired_claims), "TOKEN_EXPIRED"),
        "not_yet_valid": (_signed(world, _claims(world, nbf=now + 600)), "TOKEN_NOT_YET_VALID"),
        "wrong_issuer": (_signed(world, _claims(world, iss="https://evil.test")), "ISSUER_UNKNOWN"),
        "wrong_audience": (_signed(world, _claims(world, aud="other")), "AUDIENCE_MISMATCH"),
        "unknown_kid": (_signed(world, _claims(world), kid="nope"), "KEY_UNKNOWN"),
        "path_kid": (_signed(world, _claims(world), kid="../../../etc/passwd"), "KEY_UNKNOWN"),
        "sql_kid": (_signed(world, _claims(world), kid="x' UNION SELECT 1 --"), "KEY_UNKNOWN"),
        "other_tenant": (
            world.minter(PARTNER).mint("shop", "globex", ["tokens.read"]),
            "TENANT_NOT_ALLOWED",
        ),
    }


ATTACKS = [
    "alg_none",
    "hs256_public_key",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "unknown_kid",
    "path_kid",
    "sql_kid",
    "other_tenant",
]


@pytest.mark.parametrize("attack", ATTACKS)
async def test_jwt_attacks_are_refused_on_the_wire(world: World, address: str, attack: str) -> None:
    token, reason = _attack_tokens(world)[attack]
    code, error = await _refused_call(address, "Whoami", _bearer(token))
    assert (code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    assert token not in error.message


async def test_missing_scope_is_permission_denied(world: World, address: str) -> None:
    token = _good(world, scopes=("bindings.write",))
    code, error = await _refused_call(address, "Whoami", _bearer(token))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert (error.reason, error.metadata) == ("SCOPE_MISSING", {"scope": "tokens.read"})


async def test_unmapped_method_fails_closed(world: World, address: str) -> None:
    code, error = await _refused_call(address, "Unmapped", _bearer(_good(world)))
    assert (code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_ALLOWED")


async def test_public_method_needs_no_credential(address: str) -> None:
    assert await _call(address, "Public") == b"public"


async def test_health_and_reflection_need_no_credential(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE)
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert SERVICE in {s.name for s in replies[0].list_services_response.service}


async def test_client_interceptor_adds_the_bearer(world: World, address: str) -> None:
    minter = world.minter()
    interceptors = auth.bearer_interceptors(
        lambda: minter.token("gateway", "acme", ["tokens.read"])
    )
    async with grpc.aio.insecure_channel(address, interceptors=interceptors) as channel:
        reply = await unary(channel, f"/{SERVICE}/Whoami")(b"")
        streamed = unary_stream(channel, f"/{SERVICE}/StreamWhoami")(b"")
        assert json.loads(reply)[2] == "acme"
        assert [m async for m in streamed] == [b"acme"]


async def test_principal_does_not_leak_between_calls(world: World, address: str) -> None:
    assert auth.optional_principal() is None
    await _call(address, "Whoami", _bearer(_good(world)))
    assert auth.optional_principal() is None
    with pytest.raises(Unauthenticated):
        current_principal()


# RFC 7638 section 3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJ"
    "ECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FD"
    "W2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4v"
    "MQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)


def _b64int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def test_jwk_thumbprint_matches_rfc7638() -> None:
    key = rsa.RSAPublicNumbers(_b64int("AQAB"), _b64int(RFC7638_N)).public_key()
    assert jwk_thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"[:16]
    ed = generate_signing_key()
    assert jwk_thumbprint(ed) == jwk_thumbprint(ed.public_key())
    assert jwk_thumbprint(ed) != jwk_thumbprint(generate_signing_key())


def test_a_private_key_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (tmp_path / "key.pem").symlink_to(victim)  # dangling: the write would create it
    with pytest.raises(OSError):
        save_private_key_pem(generate_signing_key(), tmp_path / "key.pem")
    assert not victim.exists()
    save_private_key_pem(generate_signing_key(), tmp_path / "real.pem")
    assert (tmp_path / "real.pem").stat().st_mode & 0o777 == 0o600
