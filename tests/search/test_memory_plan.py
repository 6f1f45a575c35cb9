"""A search under memory pressure: out-of-memory is retried at half the micro-batch and the
search finishes; a trial that cannot fit is pruned with its reason; the plan says the memory."""

from __future__ import annotations

import pytest
import torch

import pretune
from pretune.training import memory

from .helpers import NARROW, data_files


@pytest.fixture()
def oom_above_8_rows(monkeypatch):
    """A fake allocator limit: any training forward pass over more than 8 rows runs out of
    CUDA memory (evaluation, without gradients, is left alone)."""
    from transformers.models.bert import modeling_bert

    real = modeling_bert.BertModel.forward
    calls = {"oom": 0}

    def forward(self, input_ids=None, *args, **kwargs):
        rows = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[0]
        if torch.is_grad_enabled() and rows > 8:
            calls["oom"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(modeling_bert.BertModel, "forward", forward)
    return calls


def test_out_of_memory_is_retried_and_the_search_finishes(tiny_model_dir, tmp_path,
                                                          oom_above_8_rows):
    train, valid = data_files(tmp_path / "data")
    plans = []
    result = pretune.tune(
        model=tiny_model_dir, train=str(train), valid=str(valid), out=tmp_path / "run",
        budget="2trials", space={**NARROW, "batch_size": {"choices": [16]}},
        fixed={"epochs": 1, "threads": 1}, pruner="none", precision="fp32", priors=False,
        lr_range_test=False, seed_check=0, assemble=False, on_plan=plans.append)
    trials = result.trials
    assert (trials["state"] == "COMPLETE").all() and len(trials) == 2
    assert oom_above_8_rows["oom"] == 2  # once per trial, then the retry at 8 rows ran
    assert trials["memory_retry"].str.contains("retried at micro-batch 8 with 2 accumulation").all()
    assert (trials["memory_estimate_mb"] > 0).all() and (trials["memory_peak_mb"] > 0).all()
    assert "Memory: the largest trial (batch 16" in plans[0].message()


def test_a_trial_that_cannot_fit_is_pruned_with_its_reason(tiny_model_dir, tmp_path, monkeypatch):
    train, valid = data_files(tmp_path / "data")
    fits = {"batch": 8}
    real = memory.plan_run

    def plan_run(shape, settings, micro, **kw):  # a limit between micro-batches 8 and 16
        kw["lim"] = memory.Limit(None, "none")
        if micro > fits["batch"]:
            raise memory.DoesNotFit("this run needs at least 9.9 GiB; with transfer=lora it "
                                    "would need about 1 GiB: pass --set transfer=lora.")
        return real(shape, settings, micro, **kw)

    monkeypatch.setattr(memory, "plan_run", plan_run)
    result = pretune.tune(
        model=tiny_model_dir, train=str(train), valid=str(valid), out=tmp_path / "run",
        budget="4trials", space={**NARROW, "batch_size": {"choices": [8, 16]}},
        fixed={"epochs": 1, "threads": 1}, pruner="none", precision="fp32", priors=False,
        lr_range_test=False, seed_check=0, assemble=False)
    trials = result.trials.set_index("number")
    big = trials[trials["params_batch_size"] == 16]
    small = trials[trials["params_batch_size"] == 8]
    assert len(big) and len(small), trials["params_batch_size"].tolist()
    assert (big["state"] == "PRUNED").all() and (small["state"] == "COMPLETE").all()
    assert big["memory_refused"].str.contains("pass --set transfer=lora").all()
    assert (big["stop_reason"] == "memory").all()


def test_a_search_where_nothing_fits_stops_with_the_reason(tiny_model_dir, tmp_path, monkeypatch):
    train, valid = data_files(tmp_path / "data")

    def plan_run(*args, **kw):
        raise memory.DoesNotFit("this run needs at least 9.9 GiB even at micro-batch 1, but the "
                                "process may use 1.0 GiB (PRETUNE_MEMORY_LIMIT).")

    monkeypatch.setattr(memory, "plan_run", plan_run)
    with pytest.raises(pretune.PretuneError, match="at least 9.9 GiB even at micro-batch 1"):
        pretune.tune(model=tiny_model_dir, train=str(train), valid=str(valid),
                     out=tmp_path / "run", budget="30trials", space=NARROW,
                     fixed={"epochs": 1, "threads": 1}, pruner="none", precision="fp32",
                     priors=False, lr_range_test=False, seed_check=0, assemble=False)
    import pandas as pd

    trials = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert len(trials) == 5 and (trials["state"] == "PRUNED").all()


def test_the_plan_says_how_close_earlier_estimates_came():
    from types import SimpleNamespace

    from pretune.search import memory_plan

    trials = [SimpleNamespace(user_attrs={"memory": {"ratio": r}}) for r in (1.1, 0.95, 1.02)]
    trials.append(SimpleNamespace(user_attrs={}))  # a trial that recorded nothing
    assert memory_plan.calibration(trials) == {"trials": 3, "median": 1.02, "min": 0.95,
                                               "max": 1.1}
    assert memory_plan.calibration([]) is None


HELD = 500 * memory.MB  # what the process holds, fixed so that the limits below are exact


def _tiny_run(model_dir, monkeypatch, batch_size: int, soup: int):
    """A run of the tiny model (length 128, one evaluation) and its shape, with the process
    holding ``HELD``: ``(config, shape, model)``."""
    from transformers import AutoModelForSequenceClassification

    from pretune.config import RunConfig

    monkeypatch.setattr(memory, "rss_bytes", lambda: HELD)
    config = RunConfig().with_settings({
        "model": model_dir, "max_length": 128, "batch_size": batch_size, "epochs": 1,
        "evals_per_epoch": 1, "checkpoint_soup": soup, "gradient_checkpointing": "false",
        "eval_batch_size": 16})
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    return config, memory.shape_of(model), model


def test_the_plan_line_picks_the_micro_batch_the_trial_runs_at(tiny_model_dir, monkeypatch):
    """The line and the trial decide through one function on the same inputs: here a run of
    one evaluation keeps one copy of its weights however large checkpoint_soup is, in both."""
    from types import SimpleNamespace

    from pretune.search import memory_plan

    config, shape, model = _tiny_run(tiny_model_dir, monkeypatch, batch_size=32, soup=5)
    need = {m: memory.estimate(shape, micro_batch=m, seq_len=128, eval_batch=16,
                               base=HELD - shape.param_bytes).total for m in (8, 16)}
    room = (need[8] + need[16]) / 2 / memory.HEADROOM  # micro-batch 8 fits, 16 does not
    monkeypatch.setattr(memory, "limit", lambda device=None: memory.Limit(int(room), "test"))
    _, micro, fitted = memory.fit_run(model, config, 32, torch.device("cpu"))
    task = SimpleNamespace(label_names=["negative", "positive"], fingerprint="toy")
    text = memory_plan.line(config, (), task)
    assert micro == 8 and fitted.estimate.kept == 1
    assert "running with micro-batch 8 with 4 accumulation steps" in text, text


@pytest.mark.parametrize("isolate, said", [("auto", "train in a child process"),
                                           ("always", "isolate_trials=always"),
                                           ("never", None)])
def test_the_plan_line_says_when_trials_train_in_a_child_process(tiny_model_dir, monkeypatch,
                                                                  isolate, said):
    from types import SimpleNamespace

    from pretune.search import memory_plan

    config, shape, _ = _tiny_run(tiny_model_dir, monkeypatch, batch_size=8, soup=1)
    need = memory.estimate(shape, micro_batch=8, seq_len=128, eval_batch=16,
                           base=HELD - shape.param_bytes).total
    # It fits, at 70% of what the process may use: past TIGHT_SHARE.
    room = int(need / 0.7)
    assert need <= memory.HEADROOM * room and need > memory_plan.TIGHT_SHARE * room
    monkeypatch.setattr(memory, "limit", lambda device=None: memory.Limit(room, "test"))
    task = SimpleNamespace(label_names=["negative", "positive"], fingerprint="toy")
    text = memory_plan.line(config, (), task, isolate=isolate)
    assert "so it fits" in text, text
    assert (said in text) if said else ("child process" not in text), text
