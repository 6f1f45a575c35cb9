"""The memory plan: the estimate against measured peaks, fitting a run to a limit, refusing
what cannot fit, the CUDA-only savers refused elsewhere, and the retry after out-of-memory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from pretune.config import RunConfig
from pretune.errors import ConfigError
from pretune.training import memory
from pretune.training.memory import Limit, Shape
from tests.conftest import SENTIMENT_ROWS, minilm_dir

# The estimate of the whole process's peak (what it held before the run included) is within
# this factor of the measured peak; what the run adds above that, within SHARE_FACTOR.
FACTOR = 1.25
SHARE_FACTOR = 1.5


def _model_dir(path: Path, hidden: int, layers: int) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    if not path.exists():
        torch.manual_seed(0)
        config = BertConfig(hidden_size=hidden, num_hidden_layers=layers,
                            intermediate_size=4 * hidden, num_attention_heads=max(2, hidden // 64),
                            max_position_embeddings=256)
        BertForSequenceClassification(config).save_pretrained(path)
        AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
    return str(path)


def _config(model: str, tmp_path: Path, **settings) -> RunConfig:
    rows = [(" ".join([text] * 30), label) for text, label in SENTIMENT_ROWS] * 4
    data = tmp_path / "long.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(data, index=False)
    return RunConfig().with_settings({
        "model": model, "train": str(data), "valid": str(data), "epochs": 1, "threads": 1,
        "precision": "fp32", "feature_cache": False, "eval_batch_size": 16, **settings})


@pytest.mark.parametrize("hidden, layers, batch, length", [(32, 2, 16, 64), (192, 3, 32, 128)])
def test_estimate_is_close_to_the_measured_peak(tmp_path_factory, tmp_path, hidden, layers,
                                                batch, length):
    from pretune.training.run import fit

    model = _model_dir(tmp_path_factory.getbasetemp() / f"bert-{hidden}-{layers}", hidden, layers)
    result = fit(_config(model, tmp_path, batch_size=batch, max_length=length), None,
                 keep_model=False)
    mem = result.memory
    assert mem["peak_mb"] and mem["estimate_mb"]
    assert 1 / FACTOR <= mem["estimate_mb"] / mem["peak_mb"] <= FACTOR, mem
    base = mem["parts_mb"]["base"]
    if hidden >= 128:  # the run's own share is large enough to judge on its own
        share = (mem["estimate_mb"] - base) / (mem["peak_mb"] - base)
        assert 1 / SHARE_FACTOR <= share <= SHARE_FACTOR, mem


BIG = Shape(param_bytes=4 * 335_000_000, trainable=335_000_000, layers=24, active_layers=24,
            hidden=1024, intermediate=4096, heads=16, vocab=30522, embeddings_train=True)


class _Train:  # the settings plan_run reads
    optimizer, eval_batch_size, checkpoint_soup, grad_accum = "adamw", 64, 1, 1
    gradient_checkpointing = "auto"


def _plan(limit_gib: float, micro: int = 64, **kw):
    settings = _Train()
    for k, v in kw.items():
        setattr(settings, k, v)
    return memory.plan_run(BIG, settings, micro, seq_len=64, precision="fp32",
                           lim=Limit(int(limit_gib * memory.GIB), "a test limit"), base=0,
                           device="cpu", checkpoint_ok=True)


def test_a_run_that_fits_is_left_alone():
    fitted = _plan(64)
    assert (fitted.micro_batch, fitted.grad_accum, fitted.checkpointing) == (64, 1, False)
    assert fitted.adapted is None


def test_a_run_that_does_not_fit_accumulates_to_the_same_batch():
    fitted = _plan(9)
    assert fitted.micro_batch < 64 and fitted.micro_batch * fitted.grad_accum == 64
    assert not fitted.checkpointing
    assert fitted.estimate.total <= memory.HEADROOM * 9 * memory.GIB
    assert "accumulation" in fitted.adapted


def test_checkpointing_comes_after_accumulation_and_only_when_allowed():
    # Between what micro-batch 1 needs with checkpointing and without it.
    need = {ckpt: memory.estimate(BIG, micro_batch=1, seq_len=64, eval_batch=64,
                                  checkpointing=ckpt).total for ckpt in (False, True)}
    assert need[True] < need[False]
    between = (need[True] + need[False]) / 2 / memory.HEADROOM / memory.GIB
    fitted = _plan(between)
    assert fitted.checkpointing and fitted.micro_batch * fitted.grad_accum == 64
    with pytest.raises(memory.DoesNotFit):
        _plan(between, gradient_checkpointing="false")
    assert _plan(64, gradient_checkpointing="true").checkpointing
    assert not _plan(64, gradient_checkpointing="false").checkpointing


def test_a_run_that_cannot_fit_is_refused_with_what_would():
    with pytest.raises(memory.DoesNotFit) as err:
        _plan(4)
    text = str(err.value)
    assert "\n" not in text and "4.0 GiB (a test limit)" in text
    assert "transfer=lora" in text  # LoRA keeps no gradients nor Adam state for the body


def test_fit_run_adapts_the_config_and_turns_checkpointing_on(tiny_model_dir, tmp_path,
                                                             monkeypatch):
    from transformers import AutoModelForSequenceClassification

    held = 500 * memory.MB  # what the process holds, fixed so that the limits below are exact
    monkeypatch.setattr(memory, "rss_bytes", lambda: held)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    config = _config(tiny_model_dir, tmp_path, batch_size=16, max_length=64,
                     gradient_checkpointing="true")
    monkeypatch.setattr(memory, "limit", lambda device=None: Limit(held + 2**40, "test"))
    config2, micro, fitted = memory.fit_run(model, config, 16, torch.device("cpu"))
    assert model.is_gradient_checkpointing and fitted.checkpointing and micro == 16
    # A limit between what micro-batches 4 and 8 need: the run takes 4 x 4.
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    shape = memory.shape_of(model)
    need = {m: memory.estimate(shape, micro_batch=m, seq_len=64, eval_batch=16,
                               base=held - shape.param_bytes).total for m in (4, 8)}
    room = (need[4] + need[8]) / 2 / memory.HEADROOM
    monkeypatch.setattr(memory, "limit", lambda device=None: Limit(int(room), "test"))
    config = _config(tiny_model_dir, tmp_path, batch_size=16, max_length=64)
    config2, micro, fitted = memory.fit_run(model, config, 16, torch.device("cpu"))
    assert micro == 4 and (config2.train.batch_size, config2.train.grad_accum) == (4, 4)
    assert fitted.to_dict()["adapted"] and not model.is_gradient_checkpointing


@pytest.mark.parametrize("settings, words", [
    ({"optimizer_bits": 8}, "needs a CUDA GPU"),
    ({"transfer": "lora", "load_in_4bit": True}, "needs a CUDA GPU"),
    ({"load_in_4bit": True}, "pass --set transfer=lora"),
    ({"optimizer_bits": 8, "optimizer": "sgd"}, "pass --set optimizer=adamw"),
])
def test_cuda_only_savers_are_refused_on_the_cpu(settings, words):
    config = RunConfig().with_settings(settings)
    with pytest.raises(ConfigError) as err:
        memory.check_device_settings(config, torch.device("cpu"))
    assert words.lower() in str(err.value).lower() and "\n" not in str(err.value)


def test_gradient_checkpointing_setting_is_checked():
    from pretune.config import validate

    validate(RunConfig().with_settings({"gradient_checkpointing": "true"}))
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        validate(RunConfig().with_settings({"gradient_checkpointing": "sometimes"}))


def test_out_of_memory_is_retried_once_at_half_the_micro_batch():
    seen = []
    notes = []

    def run(config):
        seen.append((config.train.batch_size, config.train.grad_accum))
        if config.train.batch_size > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"

    config = RunConfig().with_settings({"batch_size": 16})
    assert memory.retry_on_oom(run, config, on_retry=notes.append) == "done"
    assert seen == [(16, 1), (8, 2)] and "micro-batch 8" in notes[0]
    with pytest.raises(torch.cuda.OutOfMemoryError):  # a second one propagates
        memory.retry_on_oom(run, RunConfig().with_settings({"batch_size": 32}))
    with pytest.raises(ValueError):  # other errors are not retried
        memory.retry_on_oom(lambda c: (_ for _ in ()).throw(ValueError("bad")), config)


def test_the_soft_cap_raises_an_out_of_memory_error_the_retry_knows():
    fitted = memory.Fitted(8, 1, False, memory.estimate(BIG, micro_batch=1, seq_len=8),
                           Limit(10 * memory.GIB, memory.ENV_LIMIT, cap=1), device="cpu")
    step = fitted.watch(None)
    with pytest.raises(memory.OutOfMemory) as err:
        step(1, 10, 0.5)
    assert memory.is_oom(err.value) and memory.ENV_LIMIT in str(err.value)


def test_the_cap_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(memory.ENV_LIMIT, "1.5GiB")
    found = memory.limit(torch.device("cpu"))
    assert found.cap == int(1.5 * memory.GIB) and found.bytes <= found.cap
    monkeypatch.setenv(memory.ENV_LIMIT, "lots")
    with pytest.raises(ConfigError, match=memory.ENV_LIMIT):
        memory.limit(torch.device("cpu"))


@pytest.mark.parametrize("setting", ["optimizer_bits=8", "gradient_checkpointing=maybe"])
def test_the_command_refuses_in_one_line(tiny_model_dir, sentiment_csv, tmp_path, setting):
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pretune.cli.main", "train", "--model", tiny_model_dir,
         "--train", str(sentiment_csv), "--out", str(tmp_path / "model"), "--set", setting],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PRETUNE_DEBUG": ""})
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert setting.split("=")[0] in lines[0] and not (tmp_path / "model").exists()
