"""Validation of the settings: once per config, at the boundary."""

from __future__ import annotations

import pytest

from pretune import config as config_module
from pretune.config import RunConfig, validate
from pretune.errors import ConfigError


def test_a_config_is_checked_once_however_many_layers_validate_it(monkeypatch):
    checked = []
    real = config_module._validate_data
    monkeypatch.setattr(config_module, "_validate_data", lambda d: checked.append(d) or real(d))
    config = RunConfig().with_settings({"lr": 3e-5})
    assert validate(config) is config
    assert validate(config) is config and validate(config) is config
    assert len(checked) == 1
    other = config.with_settings({"lr": 1e-4})  # a new config is checked anew
    validate(other)
    assert len(checked) == 2


def test_a_config_that_fails_is_checked_again_and_fails_again():
    bad = RunConfig().with_settings({"lr": -1.0})
    for _ in range(2):
        with pytest.raises(ConfigError, match="lr must be in"):
            validate(bad)
