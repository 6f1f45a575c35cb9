"""A search with differential privacy: budget per trial, what it turns off, what it reports."""

from __future__ import annotations

import os
import stat

import pytest
import yaml

import pretune
from pretune.errors import ConfigError

from .helpers import NARROW, cli, data_files, space_file

pytest.importorskip("opacus", reason="the dp extra is needed: pip install 'pretune[dp]'")


def test_a_dp_search_keeps_each_trial_within_epsilon_and_its_run_directory_private(
        tiny_model_dir, tmp_path):
    pytest.importorskip("plotly")
    train, valid = data_files(tmp_path / "data")
    out = tmp_path / "run"
    space = space_file(tmp_path / "space.yaml", NARROW)
    before = os.umask(0o022)
    try:
        result = cli("tune", "--model", tiny_model_dir, "--train", train, "--valid", valid,
                     "--budget", "2trials", "--out", out, "--space", space, "--fixed", "epochs=1",
                     "--fixed", "threads=1", "--pruner", "none", "--precision", "fp32",
                     "--dp-epsilon", "4")
    finally:
        os.umask(before)
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "each trial within epsilon 4" in printed and "basic composition" in printed
    assert "choice" in printed  # it says the choice among trials leaks too
    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert 0 < meta["privacy"]["epsilon"] <= 4.0
    assert meta["privacy"]["delta"] == pytest.approx(1 / 48)
    plan = yaml.safe_load((out / "plan.yaml").read_text()) if (out / "plan.yaml").is_file() else {}
    assert not plan.get("lr_range") and not (out / "ensemble.yaml").exists()  # off under DP
    page = (out / "report.html").read_text()
    assert "Differential privacy" in page and "basic composition" in page
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    for folder, dirs, files in os.walk(out):
        for name in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o700, name
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600, name


@pytest.mark.parametrize("option", ["lr_range_test", "assemble"])
def test_a_dp_search_refuses_what_learns_outside_dp_sgd(option, tiny_model_dir, tmp_path):
    train, valid = data_files(tmp_path / "data")
    with pytest.raises(ConfigError, match="--no-"):
        pretune.tune(model=tiny_model_dir, train=str(train), valid=str(valid),
                     out=tmp_path / "run", budget="1trials", dp_epsilon=4.0, **{option: True})
