"""Reading configuration from the environment, once, with safe defaults.

Every setting CardLink reads is documented in the README's configuration
table. Values are parsed eagerly so a bad setting fails at start-up, not on
first use, and secrets are wrapped so they never show in a repr or a log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_REDIS_PREFIX = "cardlink"


class ConfigError(ValueError):
    """A setting is missing or malformed."""


@dataclass(frozen=True)
class Secret:
    """A configuration value that must never be printed."""

    _value: str

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


class Env:
    """Typed access to environment variables (a mapping, so tests pass a dict)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def text(self, name: str, default: str) -> str:
        return self._environ.get(name, default)

    def required(self, name: str, hint: str) -> str:
        """A setting with no safe default; ``hint`` tells the user where it comes from."""
        value = self.optional(name)
        if value is None:
            raise ConfigError(f"{name} is required ({hint})")
        return value

    def optional(self, name: str) -> str | None:
        value = self._environ.get(name, "")
        return value or None

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        raw = self._environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {value}")
        return value

    def number(self, name: str, default: float) -> float:
        raw = self._environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None

    def flag(self, name: str, default: bool) -> bool:
        raw = self._environ.get(name)
        if raw is None or raw == "":
            return default
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name} must be a boolean, got {raw!r}")

    def redis_prefix(self) -> str:
        """``CARDLINK_REDIS_PREFIX``: the start of every key. Braces would break
        the hash tags that keep one script's keys on one Redis Cluster slot."""
        prefix = self.text("CARDLINK_REDIS_PREFIX", DEFAULT_REDIS_PREFIX)
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(f"CARDLINK_REDIS_PREFIX must be non-empty without braces, "
                              f"got {prefix!r}")
        return prefix

    def path(self, name: str, default: Path) -> Path:
        raw = self._environ.get(name)
        return Path(raw).expanduser() if raw else default

    def secret(self, name: str) -> Secret | None:
        raw = self._environ.get(name)
        return Secret(raw) if raw else None


def default_state_dir() -> Path:
    """Where development state (keys, Redis data) lives: outside the repository.

    A relative XDG_STATE_HOME is ignored, as the XDG spec says: it would put
    keys under whatever folder ``make`` runs in, the repository itself."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):
        base = str(Path.home() / ".local" / "state")
    return Path(base) / "cardlink"
