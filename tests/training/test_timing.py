from pretune.config import TrainConfig
from pretune.training import timing
from pretune.training.loop import train

from .toy import ToyBatches, separable, tiny_bert


def settings(**kw) -> TrainConfig:
    base = dict(precision="fp32", schedule="constant", warmup_ratio=0.0, patience=None,
                threads=1, checkpoint_soup=1, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_the_clock_is_off_unless_a_caller_measures():
    assert timing.current() is timing.OFF


def test_measuring_times_every_phase_and_counts_the_tokens_seen():
    ids, labels = separable(24)
    batches = ToyBatches(ids, labels, 8)
    with timing.measure() as clock:
        result = train(tiny_bert(), batches, ToyBatches(ids, labels, 12), settings(epochs=2))
    assert timing.current() is timing.OFF  # back off after the block
    assert set(clock.shares()) == set(timing.PHASES)
    assert all(clock.seconds[p] > 0 for p in timing.PHASES)
    assert abs(sum(clock.shares().values()) - 1) < 1e-9
    trained = clock.batches["train"]
    assert len(trained) == result.steps == 6
    assert sum(b.rows for b in trained) == 2 * len(ids)
    assert sum(b.tokens for b in trained) == 2 * sum(len(i) for i in ids)
    assert all(b.padded >= b.tokens for b in trained)
    evaluated = clock.batches["eval"]  # one evaluation per epoch, two batches each
    assert len(evaluated) == 4 and sum(b.tokens for b in evaluated) == 2 * sum(len(i) for i in ids)


def test_measuring_does_not_change_training():
    ids, labels = separable(16)
    plain = train(tiny_bert(), ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 16),
                  settings(epochs=2))
    with timing.measure():
        timed = train(tiny_bert(), ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 16),
                      settings(epochs=2))
    assert [h["train_loss"] for h in timed.history] == [h["train_loss"] for h in plain.history]
