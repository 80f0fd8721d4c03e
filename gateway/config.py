"""The gateway's settings, read once from the environment (README, Configuration).

| variable | default | meaning |
| --- | --- | --- |
| CARDLINK_GATEWAY_LISTEN | 127.0.0.1:7002 | address the gateway serves on |
| REDIS_URL | (required) | Redis holding the gateway keyspace |
| CARDLINK_REDIS_PREFIX | cardlink | key prefix; gateway keys are `{prefix}:gw:...` |
| CARDLINK_VAULT_TARGET | 127.0.0.1:7001 | the vault |
| CARDLINK_BANK_TARGET | $CARDLINK_BANKSIM_TARGET or 127.0.0.1:7003 | the bank core (or simulator) |
| CARDLINK_TRUST_FILE | $CARDLINK_STATE_DIR/trust.json | JWT issuers the gateway trusts |
| CARDLINK_GATEWAY_AUDIENCE | cardlink-gateway | `aud` partner and bank tokens must carry |
| CARDLINK_GATEWAY_BANK_ISSUERS | cardlink-bank | issuers allowed to call BankEvents (comma list) |
| CARDLINK_JWT_ISSUER | cardlink-gateway | issuer of the gateway's own tokens (to vault, bank) |
| CARDLINK_JWT_KEY_FILE | $CARDLINK_STATE_DIR/jwt/<issuer>.pem | its signing key (PEM, 0600) |
| CARDLINK_JWT_KEY_ID | RFC 7638 thumbprint of the key | its `kid` |
| CARDLINK_VAULT_AUDIENCE | cardlink-vault | `aud` of tokens sent to the vault |
| CARDLINK_BANK_AUDIENCE | cardlink-bank | `aud` of tokens sent to the bank |
| CARDLINK_GATEWAY_BANK_DEADLINE_S | 2.0 | deadline of each bank call |
| CARDLINK_GATEWAY_BANK_ATTEMPTS | 2 | tries of a bank call that never reached the bank |
| CARDLINK_GATEWAY_VAULT_DEADLINE_S | 2.0 | deadline of each vault call |
| CARDLINK_GATEWAY_IDEMPOTENCY_RETENTION_S | 86400 | how long answers are replayed per request id |
| CARDLINK_GATEWAY_IDEMPOTENCY_WAIT_S | 5.0 | a duplicate's wait before REQUEST_IN_PROGRESS |
| CARDLINK_GATEWAY_FINGERPRINT_SECRET | (required; make run sets one) | HMAC key for codes |
| CARDLINK_GATEWAY_CODE_MAX_ATTEMPTS | 3 | wrong one-time codes before a binding fails |
| CARDLINK_GATEWAY_CODE_TTL_S | 300 | how long a one-time code is accepted |
| CARDLINK_GATEWAY_LOCKOUT_S | 1800 | user+card lockout after too many wrong codes |
| CARDLINK_GATEWAY_MAX_BINDINGS_PER_USER | 5 | live bindings per user |
| CARDLINK_GATEWAY_MAX_CARD_ATTEMPTS | 10 | binding attempts per card per window |
| CARDLINK_GATEWAY_CARD_WINDOW_S | 86400 | that window |
| CARDLINK_GATEWAY_TENANT_THRESHOLDS_FILE | (none) | JSON per-tenant overrides of the six above |
| CARDLINK_GATEWAY_TLS_CERT_FILE | (none: plaintext) | serve TLS: certificate chain (PEM) |
| CARDLINK_GATEWAY_TLS_KEY_FILE | (none) | its private key (PEM) |
| CARDLINK_GATEWAY_TLS_CLIENT_CA_FILE | (none) | mutual TLS: partners need a cert this CA signed |
| CARDLINK_SHUTDOWN_GRACE_S | 5.0 | graceful stop |
| CARDLINK_LOG_LEVEL / CARDLINK_LOG_JSON | INFO / false | logging |

The idempotency lease (how long a claimed request id holds without an answer)
is derived, not set: it must outlast the slowest work a claim covers - a vault
call plus two bank calls (a wait for another code check on the wire, then our
own), each with its retries - plus a margin, or a duplicate could run the same
work concurrently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigError, Env, default_state_dir
from common.tls import VAULT_CLIENT_TLS, ClientTls, ServerTls
from gateway.connectors import CallPolicy
from gateway.idempotency import IdempotencySettings
from gateway.thresholds import Thresholds

LEASE_MARGIN_S = 5.0
MIN_FINGERPRINT_SECRET = 16


def derive_lease_s(bank: CallPolicy, vault: CallPolicy) -> float:
    """An idempotency lease longer than the work one claim can do (see above)."""
    return vault.budget_s + 2 * bank.budget_s + LEASE_MARGIN_S


@dataclass(frozen=True)
class GatewayConfig:
    listen: str
    redis_url: str = field(repr=False)  # may hold a password
    redis_prefix: str
    vault_target: str
    bank_target: str
    trust_file: Path
    audience: str
    bank_issuers: tuple[str, ...]
    jwt_issuer: str
    jwt_key_file: Path
    jwt_key_id: str | None
    vault_audience: str
    bank_audience: str
    bank_policy: CallPolicy
    vault_policy: CallPolicy
    idempotency: IdempotencySettings
    thresholds: Thresholds
    thresholds_file: Path | None
    tls: ServerTls | None = None
    vault_tls: ClientTls | None = None
    grace_shutdown_s: float = 5.0
    log_level: str = "INFO"
    log_json: bool = False
    fingerprint_secret: str = field(default="", repr=False)

    def code_fingerprint_key(self) -> bytes:
        """The HMAC key for one-time codes; refuses a missing or short secret."""
        if len(self.fingerprint_secret) < MIN_FINGERPRINT_SECRET:
            raise ConfigError(
                f"CARDLINK_GATEWAY_FINGERPRINT_SECRET is required (at least "
                f"{MIN_FINGERPRINT_SECRET} characters; make run generates one)"
            )
        return self.fingerprint_secret.encode()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        env = Env(environ)
        state = env.path("CARDLINK_STATE_DIR", default_state_dir())
        redis_url = env.required("REDIS_URL", "make run starts a private Redis")
        issuer = env.text("CARDLINK_JWT_ISSUER", "cardlink-gateway")
        thresholds_file = env.optional("CARDLINK_GATEWAY_TENANT_THRESHOLDS_FILE")
        bank_default = env.text("CARDLINK_BANKSIM_TARGET", "127.0.0.1:7003")
        bank_policy = CallPolicy(
            deadline_s=env.number("CARDLINK_GATEWAY_BANK_DEADLINE_S", 2.0),
            attempts=env.integer("CARDLINK_GATEWAY_BANK_ATTEMPTS", 2, minimum=1),
        )
        vault_policy = CallPolicy(deadline_s=env.number("CARDLINK_GATEWAY_VAULT_DEADLINE_S", 2.0))
        return cls(
            listen=env.text("CARDLINK_GATEWAY_LISTEN", "127.0.0.1:7002"),
            redis_url=redis_url,
            redis_prefix=env.redis_prefix(),
            vault_target=env.text("CARDLINK_VAULT_TARGET", "127.0.0.1:7001"),
            bank_target=env.text("CARDLINK_BANK_TARGET", bank_default),
            trust_file=env.path("CARDLINK_TRUST_FILE", state / "trust.json"),
            audience=env.text("CARDLINK_GATEWAY_AUDIENCE", "cardlink-gateway"),
            bank_issuers=tuple(
                s.strip()
                for s in env.text("CARDLINK_GATEWAY_BANK_ISSUERS", "cardlink-bank").split(",")
                if s.strip()
            ),
            jwt_issuer=issuer,
            jwt_key_file=env.path("CARDLINK_JWT_KEY_FILE", state / "jwt" / f"{issuer}.pem"),
            jwt_key_id=env.optional("CARDLINK_JWT_KEY_ID"),
            vault_audience=env.text("CARDLINK_VAULT_AUDIENCE", "cardlink-vault"),
            bank_audience=env.text("CARDLINK_BANK_AUDIENCE", "cardlink-bank"),
            bank_policy=bank_policy,
            vault_policy=vault_policy,
            idempotency=IdempotencySettings(
                retention_s=env.integer(
                    "CARDLINK_GATEWAY_IDEMPOTENCY_RETENTION_S", 86_400, minimum=1
                ),
                wait_s=env.number("CARDLINK_GATEWAY_IDEMPOTENCY_WAIT_S", 5.0),
                lease_s=derive_lease_s(bank_policy, vault_policy),
            ),
            thresholds=Thresholds(
                code_max_attempts=env.integer("CARDLINK_GATEWAY_CODE_MAX_ATTEMPTS", 3),
                code_ttl_s=env.integer("CARDLINK_GATEWAY_CODE_TTL_S", 300),
                lockout_s=env.integer("CARDLINK_GATEWAY_LOCKOUT_S", 1800),
                max_bindings_per_user=env.integer("CARDLINK_GATEWAY_MAX_BINDINGS_PER_USER", 5),
                max_card_attempts=env.integer("CARDLINK_GATEWAY_MAX_CARD_ATTEMPTS", 10),
                card_attempts_window_s=env.integer("CARDLINK_GATEWAY_CARD_WINDOW_S", 86_400),
            ),
            thresholds_file=Path(thresholds_file) if thresholds_file else None,
            tls=ServerTls.from_env(env, "CARDLINK_GATEWAY"),
            vault_tls=ClientTls.from_env(env, VAULT_CLIENT_TLS),
            grace_shutdown_s=env.number("CARDLINK_SHUTDOWN_GRACE_S", 5.0),
            log_level=env.text("CARDLINK_LOG_LEVEL", "INFO"),
            log_json=env.flag("CARDLINK_LOG_JSON", False),
            fingerprint_secret=env.optional("CARDLINK_GATEWAY_FINGERPRINT_SECRET") or "",
        )
