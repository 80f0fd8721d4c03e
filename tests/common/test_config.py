"""Settings from the environment: parsed once, refused clearly when malformed."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import devstack
from common.config import ConfigError, Env, Secret, default_state_dir

REPOSITORY = Path(__file__).resolve().parents[2]


def test_redis_prefix_defaults_and_refuses_braces() -> None:
    assert Env({}).redis_prefix() == "cardlink"
    assert Env({"CARDLINK_REDIS_PREFIX": "shop-a"}).redis_prefix() == "shop-a"
    # A brace would change the hash tag that keeps a script's keys on one slot.
    for bad in ("a{b", "a}b", "{x}"):
        with pytest.raises(ConfigError):
            Env({"CARDLINK_REDIS_PREFIX": bad}).redis_prefix()


def test_typed_values_and_secrets() -> None:
    env = Env({"N": "5", "F": "0.5", "B": "yes", "S": "hunter2"})
    assert (env.integer("N", 1), env.number("F", 1.0), env.flag("B", False)) == (5, 0.5, True)
    with pytest.raises(ConfigError):
        Env({"N": "five"}).integer("N", 1)
    with pytest.raises(ConfigError):
        Env({"N": "0"}).integer("N", 1, minimum=1)
    secret = env.secret("S")
    assert secret is not None and secret.reveal() == "hunter2"
    assert "hunter2" not in repr(secret) + str(secret)
    assert Secret("x") != Secret("y")


def _outside_the_repository(path: Path) -> bool:
    path = path.resolve()
    return path != REPOSITORY and REPOSITORY not in path.parents


def test_the_default_state_folder_is_outside_the_repository(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys and Redis data must never land where `git add` could pick them up."""
    monkeypatch.chdir(REPOSITORY)  # where `make run` runs: a relative default lands here
    # As this machine has it, and as `make run` and the services fall back to it.
    monkeypatch.delenv("CARDLINK_STATE_DIR", raising=False)
    assert _outside_the_repository(default_state_dir()), default_state_dir()
    assert devstack.state_dir() == default_state_dir()
    # $XDG_STATE_HOME/cardlink, else ~/.local/state/cardlink.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "cardlink"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "cardlink"
    # A relative one would be relative to the repository: ignored, as XDG says.
    monkeypatch.setenv("XDG_STATE_HOME", "state")
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "cardlink"
