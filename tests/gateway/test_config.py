"""Settings: defaults, env parsing and per-tenant threshold overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.banksim.app import BanksimConfig
from common.config import ConfigError
from gateway.config import GatewayConfig
from gateway.thresholds import TenantThresholds, Thresholds
from vault.config import VaultConfig


def test_gateway_defaults_and_overrides(tmp_path: Path) -> None:
    config = GatewayConfig.from_env({"REDIS_URL": "redis://x", "CARDLINK_STATE_DIR": str(tmp_path),
                                     "CARDLINK_BANKSIM_TARGET": "127.0.0.1:9003",
                                     "CARDLINK_GATEWAY_CODE_MAX_ATTEMPTS": "5",
                                     "CARDLINK_GATEWAY_BANK_ISSUERS": "bank-a, bank-b"})
    assert config.listen == "127.0.0.1:7002"
    assert config.bank_target == "127.0.0.1:9003"
    assert config.thresholds.code_max_attempts == 5
    assert config.bank_issuers == ("bank-a", "bank-b")
    assert config.jwt_key_file == tmp_path / "jwt" / "cardlink-gateway.pem"
    with pytest.raises(ConfigError):
        GatewayConfig.from_env({})
    with pytest.raises(ConfigError):
        GatewayConfig.from_env({"REDIS_URL": "redis://x", "CARDLINK_GATEWAY_LOCKOUT_S": "0"})


def test_banksim_defaults() -> None:
    assert BanksimConfig.from_env({}).listen == "127.0.0.1:7003"


def test_tenant_threshold_file(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"tenants": {"acme": {"lockout_s": 60}}}))
    loaded = TenantThresholds.load(Thresholds(), path)
    assert loaded.for_tenant("acme").lockout_s == 60
    assert loaded.for_tenant("acme").code_max_attempts == 3
    assert loaded.for_tenant("globex") == Thresholds()
    bad_files: list[object] = [
        {"tenants": {"acme": {"nope": 1}}}, {"tenants": {"acme": {"lockout_s": 0}}}, [],
    ]
    for bad in bad_files:
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError):
            TenantThresholds.load(Thresholds(), path)


def test_a_config_s_repr_shows_no_secret(tmp_path: Path) -> None:
    """A traceback or a debug print of a config must not carry the Redis
    password or the code fingerprint secret."""
    env = {"REDIS_URL": "redis://:redis-pass-0123@127.0.0.1:6379/0",
           "CARDLINK_GATEWAY_FINGERPRINT_SECRET": "fp-secret-0123456789abcdef",
           "CARDLINK_STATE_DIR": str(tmp_path)}
    for config in (GatewayConfig.from_env(env), VaultConfig.from_env(env)):
        shown = repr(config)
        assert "redis-pass-0123" not in shown and "fp-secret-0123456789abcdef" not in shown
