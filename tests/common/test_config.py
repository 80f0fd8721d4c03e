"""Settings from the environment: parsed once, refused clearly when malformed."""

from __future__ import annotations

import pytest

from common.config import ConfigError, Env, Secret


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
