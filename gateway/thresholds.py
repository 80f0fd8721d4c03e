"""Risk thresholds, with defaults from the environment and per-tenant overrides.

The overrides file is JSON: ``{"tenants": {"acme": {"code_max_attempts": 5}}}``;
any field of ``Thresholds`` may be set per tenant, the rest come from the
defaults. It is read once at start-up and validated eagerly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import ConfigError


@dataclass(frozen=True)
class Thresholds:
    """One tenant's limits (seconds for durations)."""

    code_max_attempts: int = 3  # wrong codes before the binding fails
    code_ttl_s: int = 300  # how long a one-time code is accepted
    lockout_s: int = 1800  # user+card lockout after too many wrong codes
    max_bindings_per_user: int = 5  # live (pending or active) bindings
    max_card_attempts: int = 10  # binding attempts per card per window, all users
    card_attempts_window_s: int = 86_400

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"threshold {field.name} must be an integer >= 1")


class TenantThresholds:
    """Defaults plus per-tenant overrides."""

    def __init__(self, defaults: Thresholds, overrides: Mapping[str, Thresholds] | None = None):
        self._defaults = defaults
        self._overrides = dict(overrides or {})

    def for_tenant(self, tenant: str) -> Thresholds:
        return self._overrides.get(tenant, self._defaults)

    @classmethod
    def load(cls, defaults: Thresholds, path: Path | None) -> TenantThresholds:
        if path is None:
            return cls(defaults)
        try:
            document: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"tenant thresholds file {path}: {error}") from None
        tenants = document.get("tenants") if isinstance(document, dict) else None
        if not isinstance(tenants, dict):
            raise ConfigError(f'tenant thresholds file {path}: must be {{"tenants": {{...}}}}')
        known = {f.name for f in dataclasses.fields(Thresholds)}
        overrides: dict[str, Thresholds] = {}
        for tenant, values in tenants.items():
            if not isinstance(values, dict) or not set(values) <= known:
                raise ConfigError(f"tenant thresholds for {tenant!r}: unknown or malformed keys")
            overrides[tenant] = dataclasses.replace(defaults, **values)
        return cls(defaults, overrides)
