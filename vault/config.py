"""The vault's settings, read once from the environment (see README, Configuration)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from common.config import ConfigError, Env, default_state_dir
from common.tls import ServerTls


class VaultMode(Enum):
    """Where the root key comes from."""

    DEV = "dev"  # a local key file, for `make run`
    PRODUCTION = "production"  # custodian shares; never on disk in clear


@dataclass(frozen=True)
class VaultConfig:
    listen: str
    redis_url: str = field(repr=False)  # may hold a password
    redis_prefix: str
    mode: VaultMode
    key_file: Path
    trust_file: Path
    audience: str
    sealing_grace_s: int
    keyring_refresh_s: float
    grace_shutdown_s: float
    log_level: str
    log_json: bool
    # How long a superseded KEK/fingerprint version must wait before it may be
    # retired: more than keyring_refresh_s plus the longest call, so no process
    # can still be writing with it.
    key_settle_s: float = 30.0
    tls: ServerTls | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> VaultConfig:
        env = Env(environ)
        state = env.path("CARDLINK_STATE_DIR", default_state_dir())
        redis_url = env.required("REDIS_URL", "make run starts a private Redis")
        mode_name = env.text("CARDLINK_VAULT_MODE", VaultMode.DEV.value)
        try:
            mode = VaultMode(mode_name)
        except ValueError:
            raise ConfigError(
                f"CARDLINK_VAULT_MODE must be dev or production, got {mode_name!r}"
            ) from None
        return cls(
            listen=env.text("CARDLINK_VAULT_LISTEN", "127.0.0.1:7001"),
            redis_url=redis_url,
            redis_prefix=env.redis_prefix(),
            mode=mode,
            key_file=env.path("CARDLINK_VAULT_KEY_FILE", state / "vault-root.key"),
            trust_file=env.path("CARDLINK_TRUST_FILE", state / "trust.json"),
            audience=env.text("CARDLINK_VAULT_AUDIENCE", "cardlink-vault"),
            sealing_grace_s=env.integer("CARDLINK_SEALING_GRACE_S", 86_400, minimum=0),
            keyring_refresh_s=env.number("CARDLINK_KEYRING_REFRESH_S", 0.5),
            grace_shutdown_s=env.number("CARDLINK_SHUTDOWN_GRACE_S", 5.0),
            log_level=env.text("CARDLINK_LOG_LEVEL", "INFO"),
            log_json=env.flag("CARDLINK_LOG_JSON", False),
            key_settle_s=env.number("CARDLINK_KEY_SETTLE_S", 30.0),
            tls=ServerTls.from_env(env, "CARDLINK_VAULT"),
        )
