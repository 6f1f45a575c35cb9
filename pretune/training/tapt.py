"""Task-adaptive pretraining (TAPT; Gururangan et al., 2020, "Don't Stop Pretraining").

Before fine-tuning, the encoder continues its masked-language-model training on the task's own
texts: the training texts and any ``--unlabeled`` texts (never the validation texts, which judge
the search), both with the run's text preprocessing (lowercase, stopwords, stem) applied.
``tapt_steps`` (0: off) sets its length, and the search may choose it.

The adaptation has a fixed recipe (below) and runs under the data's seed, so it depends only on
the model, the texts and the number of steps: one adapted encoder serves every trial that asks
for that length. It is kept in the run's ``cache/`` as a model directory (safetensors) under a
lock, so parallel workers compute it once. The adapted encoder replaces the pretrained one's
weights and keeps its pooler (a masked-LM model has none), so fine-tuning starts from the same
architecture; the masked-LM head is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pretune.config import RunConfig

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the recipe or the saved layout changes
BATCH = 32
LR = 1e-4  # Gururangan et al. use 1e-4 for TAPT
WARMUP = 0.06
WEIGHT_DECAY = 0.01
MASK_PROBABILITY = 0.15  # BERT's
MAX_LENGTH = 128
INFO_FILE = "tapt.json"


def corpus(config: RunConfig, task) -> tuple[list[str], list[str] | None]:
    """The texts TAPT reads: the training split's (and its pairs) and the unlabeled file's.

    ``task`` is the task as the run sees it, its texts already preprocessed
    (``text_prep.apply_to_task``); the unlabeled texts get the same preprocessing here
    (lowercasing, stop words, stems), so the encoder adapts to the texts it will fine-tune on.
    The adaptation's key hashes these texts, so each preprocessing has its own adaptation."""
    texts = list(task.train.texts)
    pairs = list(task.train.pairs) if task.train.pairs is not None else None
    if config.data.unlabeled:
        from pretune.data.text_prep import TextOptions, preprocess
        from pretune.data.unlabeled import read_unlabeled

        extra = read_unlabeled(config.data.unlabeled, config.data.text_column)
        extra = preprocess(extra, TextOptions.from_config(config.data))
        texts += extra
        if pairs is not None:
            pairs += [""] * len(extra)
    return texts, pairs


def adaptation_key(config: RunConfig, texts: list[str], pairs: list[str] | None, seed: int) -> str:
    from pretune.models.features import model_fingerprint

    content = hashlib.sha256()
    for i, text in enumerate(texts):
        content.update(text.encode("utf-8", "replace") + b"\0")
        if pairs is not None:
            content.update(pairs[i].encode("utf-8", "replace") + b"\1")
    parts = [FORMAT, model_fingerprint(config.model.model, config.model.revision),
             config.model.tapt_steps, BATCH, LR, WARMUP, WEIGHT_DECAY, MASK_PROBABILITY,
             MAX_LENGTH, seed, content.hexdigest()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


@contextlib.contextmanager
def adapted_source(config: RunConfig, task, seed: int, directory: Path | None
                   ) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """``(model directory, info)`` of the encoder adapted for ``config.model.tapt_steps`` steps
    (``(None, {})`` when TAPT is off). From ``directory`` (a run's cache) when it holds it, else
    computed and kept there; without a directory, kept in a temporary one while in use."""
    steps = config.model.tapt_steps
    if not steps:
        yield None, {}
        return
    texts, pairs = corpus(config, task)
    key = adaptation_key(config, texts, pairs, seed)
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="pretune-tapt-") as tmp:
            target = Path(tmp) / "model"
            info = _adapt(config, texts, pairs, seed, target)
            yield str(target), info
        return
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"tapt-{key}"
    with _locked(directory / f".tapt-{key}.lock"):
        if not (target / INFO_FILE).is_file():
            shutil.rmtree(target, ignore_errors=True)
            tmp = directory / f".tapt-{key}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            _adapt(config, texts, pairs, seed, tmp)
            os.replace(tmp, target)
    yield str(target), json.loads((target / INFO_FILE).read_text())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        yield


def _adapt(config: RunConfig, texts: list[str], pairs: list[str] | None, seed: int,
           target: Path) -> dict[str, Any]:
    """Train the masked-LM objective for ``tapt_steps`` steps and save the adapted encoder
    (with the pretrained pooler) and the tokenizer in ``target``."""
    from transformers import DataCollatorForLanguageModeling, get_linear_schedule_with_warmup

    from pretune.models.load import load_auto
    from pretune.training import cpu_speed
    from pretune.training.device import autocast, pick_device, resolve_precision, set_threads
    from pretune.training.optimizers import fusable

    started = time.perf_counter()
    set_threads(config.train.threads)
    steps = int(config.model.tapt_steps)
    model, tokenizer = load_auto(config.model, "masked_lm")
    if tokenizer.mask_token is None:
        from pretune.errors import ConfigError

        raise ConfigError(
            f"tapt_steps needs a model trained with masked language modeling, but "
            f"{config.model.model} has no mask token. Set tapt_steps to 0 for this model."
        )
    length = min(MAX_LENGTH, int(getattr(tokenizer, "model_max_length", MAX_LENGTH) or MAX_LENGTH))
    encoded = tokenizer(texts, pairs, truncation=True, max_length=length)
    examples = [{k: encoded[k][i] for k in encoded} for i in range(len(texts))]
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MASK_PROBABILITY)

    torch.manual_seed(seed)
    order = np.random.default_rng(seed)
    device = pick_device()
    precision = resolve_precision(config.train.precision, device)
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    other = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY},
              {"params": other, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR, fused=fusable(groups))
    schedule = get_linear_schedule_with_warmup(optimizer, int(WARMUP * steps), steps)
    losses: list[float] = []
    queue: list[int] = []
    with cpu_speed.training(model, device):
        for _ in range(steps):
            if len(queue) < BATCH:
                queue += order.permutation(len(examples)).tolist()
            idx, queue = queue[:BATCH], queue[BATCH:]
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx]).items()}
            with autocast(precision, device):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))

    base, _ = load_auto(config.model, "base")
    missing, unexpected = base.load_state_dict(model.base_model.state_dict(), strict=False)
    kept = [k for k in missing if not k.startswith("pooler.")]
    if kept or unexpected:
        log.warning("TAPT: encoder weights that did not carry over: missing %s, unexpected %s",
                    kept[:5], list(unexpected)[:5])
    window = max(1, min(10, len(losses) // 4))
    info = {"steps": steps, "texts": len(texts), "seconds": round(time.perf_counter() - started, 2),
            "loss_first": float(np.mean(losses[:window])), "loss_last": float(np.mean(losses[-window:])),
            "precision": precision, "model": config.model.model}
    target.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / INFO_FILE).write_text(json.dumps(info, indent=1))  # written last: complete
    log.info("TAPT: %d steps on %d texts, masked-LM loss %.3f -> %.3f (%.0fs)", steps, len(texts),
             info["loss_first"], info["loss_last"], info["seconds"])
    return info


def with_source(config: RunConfig, source: str | None) -> RunConfig:
    """``config`` whose model loads from the adapted directory ``source`` (when given)."""
    if source is None:
        return config
    return replace(config, model=replace(config.model, model=source, revision=None))
