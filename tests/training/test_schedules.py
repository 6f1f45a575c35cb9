import pytest

from pretune.config import SCHEDULES, TrainConfig
from pretune.errors import ConfigError
from pretune.training.schedules import lr_multiplier


def curve(schedule, total=100, **kw):
    s = TrainConfig(schedule=schedule, **kw)
    return [lr_multiplier(step, total, s) for step in range(total)]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_warmup_rises_linearly_then_never_exceeds_one(schedule):
    c = curve(schedule, warmup_ratio=0.1)
    assert c[:10] == pytest.approx([(i + 1) / 11 for i in range(10)])
    assert c[10] == pytest.approx(1.0)
    assert max(c) <= 1.0 + 1e-12


@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s != "constant"])
def test_decays_end_at_the_floor_or_above(schedule):
    c = curve(schedule, warmup_ratio=0.0, min_lr_ratio=0.2, decay_gamma=0.1)
    assert min(c) >= 0.2 - 1e-12
    assert c[-1] < c[0]
    assert all(b <= a + 1e-12 for a, b in zip(c, c[1:]))  # monotone after warmup


def test_shapes():
    assert curve("constant", warmup_ratio=0.0) == [1.0] * 100
    lin = curve("linear", warmup_ratio=0.0)
    assert lin[50] == pytest.approx(0.5, abs=0.01)
    cos = curve("cosine", warmup_ratio=0.0)
    assert cos[50] == pytest.approx(0.5, abs=0.02) and cos[10] > lin[10]
    exp = curve("exponential", warmup_ratio=0.0, decay_gamma=0.01)
    assert exp[50] == pytest.approx(0.1, rel=0.05)
    step = curve("step", warmup_ratio=0.0, decay_gamma=0.5, decay_drops=2)
    assert sorted(set(step), reverse=True) == [1.0, 0.5, 0.25]


def test_unknown_schedule_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="cosine"):
        lr_multiplier(0, 10, TrainConfig(schedule="triangle"))
