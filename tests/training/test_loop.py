import copy
import math

import numpy as np
import pytest
import torch

from pretune.config import TrainConfig
from pretune.training import loop
from pretune.training.loop import train

from .toy import ToyBatches, separable, tiny_bert


def settings(**kw) -> TrainConfig:
    base = dict(precision="fp32", schedule="constant", warmup_ratio=0.0, max_grad_norm=None,
                weight_decay=0.0, patience=None, threads=1, checkpoint_soup=1)
    base.update(kw)
    return TrainConfig(**base)


def test_one_step_equals_a_hand_written_pytorch_step():
    ids, labels = separable(32)
    batches = ToyBatches(ids, labels, batch_size=None)  # the whole set in one batch
    ours = tiny_bert()
    reference = copy.deepcopy(ours)

    # The hand-written step: forward, cross-entropy, backward, AdamW step.
    batch = next(iter(batches))
    reference.train()
    logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref_loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
    ref_loss.backward()
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=0.0)
    opt.step()

    result = train(ours, batches, batches, settings(lr=1e-3, max_steps=1))

    assert result.steps == 1
    assert result.history[0]["train_loss"] == pytest.approx(ref_loss.item(), rel=1e-6)
    for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
        assert torch.allclose(p.detach(), q.detach(), atol=1e-6), name


def test_gradient_accumulation_equals_one_big_batch():
    ids, labels = separable(32)
    big, small = tiny_bert(), tiny_bert()
    kw = dict(lr=1e-3, max_steps=1, optimizer="sgd")
    train(big, ToyBatches(ids, labels, 32), ToyBatches(ids, labels, 32), settings(batch_size=32, **kw))
    train(small, ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 32),
          settings(batch_size=8, grad_accum=4, **kw))
    for p, q in zip(big.parameters(), small.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_full_batch_is_one_step_per_epoch():
    ids, labels = separable(40)
    result = train(tiny_bert(), ToyBatches(ids, labels, 8, shuffle=True), ToyBatches(ids, labels, 40),
                   settings(batch_size="full", epochs=3, lr=1e-2))
    assert result.steps == 3
    assert [h["step"] for h in result.history] == [1, 2, 3]


class _Scripted:
    """Evaluation results scripted in advance, to test early stopping exactly."""

    def __init__(self, scores):
        self.scores = list(scores)

    def __call__(self, model, batches, **kw):
        score = self.scores.pop(0)
        return {"accuracy": score, "loss": 1 - score}


def test_early_stopping_stops_after_patience_evaluations_without_improvement(monkeypatch):
    ids, labels = separable(16)
    monkeypatch.setattr(loop, "evaluate_model", _Scripted([0.5, 0.7, 0.69, 0.7, 0.65, 0.9, 0.9]))
    result = train(tiny_bert(), ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 16),
                   settings(epochs=10, eval_steps=1, patience=3, metric="accuracy"))
    # Best 0.7 at step 2; steps 3, 4, 5 do not beat it (0.7 is not > 0.7): stop after step 5.
    assert result.stop_reason == "early_stopping"
    assert result.steps == 5
    assert result.best_step == 2
    assert result.best_metrics["accuracy"] == 0.7


def test_min_delta_counts_small_gains_as_no_improvement(monkeypatch):
    ids, labels = separable(16)
    monkeypatch.setattr(loop, "evaluate_model", _Scripted([0.5, 0.505, 0.509, 0.6]))
    result = train(tiny_bert(), ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 16),
                   settings(epochs=10, eval_steps=1, patience=2, min_delta=0.01))
    assert result.stop_reason == "early_stopping" and result.steps == 3 and result.best_step == 1


def test_early_stopping_on_a_loss_metric_minimizes(monkeypatch):
    ids, labels = separable(16)
    losses = iter([0.5, 0.4, 0.45, 0.41, 0.1])
    monkeypatch.setattr(loop, "evaluate_model", lambda *a, **k: {"loss": next(losses)})
    result = train(tiny_bert(), ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 16),
                   settings(epochs=10, eval_steps=1, patience=2, metric="loss"))
    assert result.stop_reason == "early_stopping"
    assert result.best_step == 2 and result.steps == 4
    assert result.best_metrics["loss"] == 0.4


def test_best_weights_are_restored_at_the_end(monkeypatch):
    ids, labels = separable(16)
    snapshots = []
    scores = iter([0.2, 0.9, 0.1, 0.1])

    def scripted(model, batches, **kw):
        snapshots.append(copy.deepcopy(model.classifier.weight.detach()))
        return {"accuracy": next(scores)}

    monkeypatch.setattr(loop, "evaluate_model", scripted)
    model = tiny_bert()
    train(model, ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 16),
          settings(max_steps=4, eval_steps=1, lr=1e-2))
    assert torch.equal(model.classifier.weight.detach(), snapshots[1])
    assert not torch.equal(snapshots[1], snapshots[3])


def test_nan_loss_stops_with_that_reason():
    ids, labels = separable(16)
    model = tiny_bert()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    result = train(model, ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 16), settings(epochs=2))
    assert result.stop_reason == "nan_loss"
    assert result.failed and result.steps == 0


def test_exploding_and_vanishing_gradients_stop_the_run():
    ids, labels = separable(16)
    batches = ToyBatches(ids, labels, 8)
    exploding = train(tiny_bert(), batches, batches, settings(epochs=2, grad_norm_max=1e-6))
    assert exploding.stop_reason == "exploding_gradient"
    vanishing = train(tiny_bert(), batches, batches, settings(epochs=2, grad_norm_min=1e6, grad_norm_max=1e9))
    assert vanishing.stop_reason == "vanishing_gradient"


def test_on_eval_sees_each_evaluation_and_can_abort():
    ids, labels = separable(16)
    seen = []

    class Abort(Exception):
        pass

    def on_eval(step, metrics):
        seen.append((step, metrics["accuracy"]))
        if step == 2:
            raise Abort

    with pytest.raises(Abort):
        train(tiny_bert(), ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 16),
              settings(epochs=5, eval_steps=1), on_eval=on_eval)
    assert [s for s, _ in seen] == [1, 2]


def test_should_stop_ends_the_run_and_keeps_an_evaluated_checkpoint():
    ids, labels = separable(32)
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] >= 3

    result = train(tiny_bert(), ToyBatches(ids, labels, 4), ToyBatches(ids, labels, 32),
                   settings(epochs=5), should_stop=should_stop)
    assert result.stop_reason == "stopped"
    assert result.steps == 3
    assert result.best_metrics  # evaluated at the stop, so the run has a checkpoint


def test_fractional_epochs_and_eval_each_epoch():
    ids, labels = separable(32)
    result = train(tiny_bert(), ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 32),
                   settings(epochs=2.5))
    assert result.steps == 10  # 4 steps per epoch
    assert [h["step"] for h in result.history] == [4, 8, 10]


def test_training_learns_the_separable_task():
    ids, labels = separable(64)
    result = train(tiny_bert(), ToyBatches(ids, labels, 16, shuffle=True), ToyBatches(ids, labels, 64),
                   settings(epochs=8, lr=3e-3))
    assert result.best_metrics["accuracy"] >= 0.95


def test_class_weights_and_label_smoothing_change_the_loss():
    ids, labels = separable(24)
    labels = labels.copy()
    labels[:18] = 0  # imbalanced: 18 vs 6... and keep class 1 in the tail
    losses = {}
    for name, kw in {"plain": {}, "balanced": {"class_weights": "balanced"},
                     "smooth": {"label_smoothing": 0.2}}.items():
        r = train(tiny_bert(), ToyBatches(ids, labels, 24), ToyBatches(ids, labels, 24),
                  settings(max_steps=1, **kw), class_counts=np.bincount(labels))
        losses[name] = r.history[0]["train_loss"]
    assert losses["balanced"] != pytest.approx(losses["plain"])
    assert losses["smooth"] != pytest.approx(losses["plain"])


def test_bf16_autocast_still_lowers_the_loss():
    ids, labels = separable(64)
    batches = ToyBatches(ids, labels, 16, shuffle=True)
    result = train(tiny_bert(), batches, ToyBatches(ids, labels, 64),
                   settings(epochs=6, lr=3e-3, precision="bf16", eval_steps=4))
    assert result.precision == "bf16"
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert all(math.isfinite(h["loss"]) for h in result.history)


def test_evals_per_epoch_are_evenly_spaced_within_each_epoch():
    ids, labels = separable(40)
    result = train(tiny_bert(), ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 40),
                   settings(epochs=2, evals_per_epoch=2))
    # 5 steps an epoch: halfway (rounded up) and at the end of each epoch, never drifting.
    assert [h["step"] for h in result.history] == [3, 5, 8, 10]


class CountingBatches(ToyBatches):
    """ToyBatches that record the rows of every batch they hand out, and each set_epoch."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.seen, self.epochs = [], []

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.epochs.append(epoch)

    def __iter__(self):
        for batch in super().__iter__():
            self.seen.append(batch["index"].tolist())
            yield batch


def test_a_data_fraction_epoch_is_the_next_part_of_a_pass():
    ids, labels = separable(40)
    batches = CountingBatches(ids, labels, 4, shuffle=True)  # 10 batches a pass
    result = train(tiny_bert(), batches, ToyBatches(ids, labels, 40),
                   settings(epochs=2, data_fraction=0.3, evals_per_epoch=1))
    # An epoch is 3 steps (0.3 of 10 batches); 2 epochs are the first 6 batches of pass 0, so no
    # row is seen twice, and the history counts epochs of the fraction.
    assert result.steps == 6 and result.epochs == 2
    assert [h["step"] for h in result.history] == [3, 6]
    rows = [i for batch in batches.seen[:6] for i in batch]
    assert len(rows) == len(set(rows)) == 24
    assert batches.epochs == [0]
    longer = CountingBatches(ids, labels, 4, shuffle=True)
    again = train(tiny_bert(), longer, ToyBatches(ids, labels, 40),
                  settings(epochs=4, data_fraction=0.3, evals_per_epoch=1))
    # 12 steps run past the end of pass 0 into pass 1, which is reshuffled.
    assert again.steps == 12 and longer.epochs == [0, 1]
    assert sorted(i for b in longer.seen[:10] for i in b) == list(range(40))
    assert longer.seen[10] != longer.seen[0]



def test_checkpoint_soup_averages_the_best_evaluations_while_the_score_holds(monkeypatch):
    ids, labels = separable(16)
    # Evaluations at steps 1..4 score 0.6, 0.8, 0.7, 0.75; then the soup is tasted: best (step
    # 2) + step 4 scores 0.82 (joins), + step 3 scores 0.79 (a drop: left out).
    monkeypatch.setattr(loop, "evaluate_model", _Scripted([0.6, 0.8, 0.7, 0.75, 0.82, 0.79]))
    model = tiny_bert()
    states = {}
    real_state = loop._trainable_state

    def spy(m):
        states[len(states) + 1] = real_state(m)
        return states[len(states)]

    monkeypatch.setattr(loop, "_trainable_state", spy)
    result = train(model, ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 16),
                   settings(epochs=2, eval_steps=1, metric="accuracy", checkpoint_soup=3))
    assert result.soup == [2, 4]
    assert result.best_metrics["accuracy"] == 0.82
    assert result.best_step == 2
    # The kept weights are the mean of the copies taken at steps 2 and 4 (the 2nd and 4th
    # evaluations were copied: each was among the 3 best when it came).
    copies = {2: states[2], 4: states[4]}
    for name, p in model.named_parameters():
        expected = (copies[2][name] + copies[4][name]) / 2
        assert torch.allclose(p.detach(), expected, atol=1e-6), name


def test_checkpoint_soup_of_one_keeps_the_best_evaluation(monkeypatch):
    ids, labels = separable(16)
    monkeypatch.setattr(loop, "evaluate_model", _Scripted([0.6, 0.8, 0.7, 0.75]))
    result = train(tiny_bert(), ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 16),
                   settings(epochs=2, eval_steps=1, metric="accuracy", checkpoint_soup=1))
    assert result.soup is None
    assert result.best_metrics["accuracy"] == 0.8


class _Clock:
    """A clock that moves only when told: a training step takes ``step`` seconds, an evaluation
    ``evaluation`` seconds (both on the run's own clock, which the loop reads)."""

    def __init__(self, step: float, evaluation: float = 0.0):
        self.now, self.step, self.evaluation = 0.0, step, evaluation

    def __call__(self) -> float:
        return self.now


def test_a_time_limit_fits_the_schedule_to_the_steps_that_fit(monkeypatch):
    ids, labels = separable(64)
    clock = _Clock(step=1.0, evaluation=2.0)
    monkeypatch.setattr(loop.time, "perf_counter", clock)
    real_evaluate = loop.evaluate_model

    def slow_evaluate(*args, **kwargs):
        clock.now += clock.evaluation
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_model", slow_evaluate)

    def on_step(step, total, loss):
        clock.now += clock.step

    # 4 epochs of 8 steps, evaluated twice an epoch: 32 steps and 8 evaluations, 48s; 24s given.
    result = train(tiny_bert(), ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 64),
                   settings(epochs=4, evals_per_epoch=2, schedule="linear"), on_step=on_step,
                   seconds=24.0)
    assert result.planned_steps == 32
    assert result.stop_reason == "completed"  # ended, not cut
    # 1s a step and 2s an evaluation every 4 steps: about 16 steps, with their evaluations and
    # the last one, fit the 24s.
    assert 14 <= result.steps <= 17
    assert result.seconds <= 24.0 + clock.step
    assert result.history[-1]["step"] == result.steps  # evaluated at its end
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the decay ran out

    # Time enough: the plan stands.
    clock.now = 0.0
    whole = train(tiny_bert(), ToyBatches(ids, labels, 8), ToyBatches(ids, labels, 64),
                  settings(epochs=4, evals_per_epoch=2, schedule="linear"), on_step=on_step,
                  seconds=100.0)
    assert whole.planned_steps is None
    assert whole.steps == 32
