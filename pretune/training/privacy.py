"""Differentially private training: DP-SGD through Opacus.

With ``dp_epsilon`` set, a run trains so that its weights are (epsilon, delta)-differentially
private with respect to the rows of its training set (Abadi et al., 2016):

- each example's gradient is clipped to ``dp_max_grad_norm`` (Opacus' ``GradSampleModule``
  computes per-example gradients from hooks on the layers; Linear, Embedding and LayerNorm, all
  that a BERT-style encoder and pretune's heads hold, are supported);
- Gaussian noise of ``noise_multiplier * dp_max_grad_norm`` is added to their sum
  (Opacus' ``DPOptimizer`` around the run's own optimizer);
- batches are drawn by Poisson sampling: at each step every training row joins the batch with
  probability ``q = batch_size / rows`` (``PoissonBatches``), independently of other rows and
  steps. That is the sampling the RDP accountant assumes, so the epsilon reported is the one
  the accountant proves for this run. The price: batch sizes vary around ``batch_size``, and
  the length bucketing of ordinary batches is lost (more padding, slower steps);
- the noise multiplier is computed before training, from the accountant (Opacus'
  ``get_noise_multiplier``, RDP) for the steps the whole run is planned to take at that ``q``,
  so the run spends at most ``dp_epsilon``. A run that stops early spends less; the epsilon
  actually spent is computed at the end from the steps drawn.

``dp_delta`` defaults to 1 / rows. Validation data is not protected: early stopping and the
kept checkpoint are chosen on it. What else a run learns from the training rows outside the
gradient steps (their number, the label names, ``max_length`` when measured on the data) is not
covered either; pass ``max_length`` to keep the texts' lengths out of it.

Settings that would break the per-example accounting are refused by ``refusal`` with the fix:
gradient accumulation and "full" batches (the loop scales micro-batch losses, which the
per-example clipping would not see), fp16/bf16 autocast, penalties added to the loss (their
gradient bypasses the per-example path and would be dropped), class weights (a weighted mean
ties each example's gradient to the batch's labels), token classification (its loss averages
over the batch's tokens, with the same effect), lp_ft, TAPT and distillation (they learn
from the training rows outside DP-SGD), and batch-norm heads (they mix examples).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pretune.errors import ConfigError, MissingExtraError

log = logging.getLogger(__name__)

ACCOUNTANT = "rdp"


def enabled(settings: Any) -> bool:
    """Whether ``settings`` (a TrainConfig) asks for differentially private training."""
    return getattr(settings, "dp_epsilon", None) is not None


def refusal(config: Any, kind: str | None = None) -> str | None:
    """Why a ``RunConfig`` with ``dp_epsilon`` cannot train privately, with the fix; None when it
    can (or when DP is off). ``kind`` is the task's kind, once the data is read."""
    t, m = config.train, config.model
    if not enabled(t):
        return None
    flag = f"--dp-epsilon {t.dp_epsilon:g}"
    if kind == "token":
        return (f"{flag} needs each example's loss independent of the batch, but token "
                f"classification averages over the batch's tokens. Train it without --dp-epsilon.")
    if t.batch_size == "full" or t.grad_accum > 1:
        what = "batch_size full" if t.batch_size == "full" else f"grad_accum {t.grad_accum}"
        return (f"{flag} draws each batch by Poisson sampling and cannot accumulate micro-batches, "
                f"but {what} was given. Pass an integer --batch-size (e.g. 64) and grad_accum 1.")
    if t.precision in ("bf16", "fp16"):
        return (f"{flag} computes per-example gradients in fp32 only, but precision "
                f"{t.precision} was given. Pass --precision fp32 (or auto).")
    if t.penalty != "none":
        return (f"{flag} clips per-example gradients, which a loss penalty bypasses, but penalty "
                f"{t.penalty} was given. Use weight_decay instead, or penalty none.")
    if t.class_weights != "none":
        return (f"{flag} needs each example's loss independent of the batch, but class_weights "
                f"{t.class_weights} weights it by the batch's labels. Pass class_weights none.")
    if t.distill_logits:
        return (f"{flag} protects only what DP-SGD learns, but distill_logits adds a teacher's "
                f"outputs on the training rows. Drop distill_logits.")
    if m.transfer == "lp_ft":
        return (f"{flag} covers one training run, but transfer lp_ft first trains a probe "
                f"without DP. Pass --transfer full, freeze_bottom, linear_probe or lora.")
    if m.tapt_steps:
        return (f"{flag} protects only what DP-SGD learns, but tapt_steps {m.tapt_steps} "
                f"pretrains on the training texts without DP. Set tapt_steps 0.")
    if m.head_norm == "batch":
        return (f"{flag} needs examples kept apart, but head_norm batch mixes them across the "
                f"batch (Opacus cannot clip it). Pass head_norm layer or none.")
    return None


def check(config: Any, kind: str | None = None) -> None:
    """Raise ``ConfigError`` when ``config`` asks for DP with settings it cannot train with."""
    reason = refusal(config, kind)
    if reason is not None:
        raise ConfigError(reason)


def _opacus():
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise MissingExtraError("opacus", "dp", "dp_epsilon") from None
    return opacus


def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise (as a multiple of the clipping norm) that keeps ``steps`` Poisson-sampled steps
    at rate ``sample_rate`` within (``epsilon``, ``delta``), by the RDP accountant."""
    _opacus()
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=max(int(steps), 1),
                                          accountant=ACCOUNTANT))
    except ValueError:
        raise ConfigError(
            f"--dp-epsilon must be reachable with some noise, but {epsilon:g} at delta "
            f"{delta:g} over {steps} steps is not. Raise --dp-epsilon or train fewer epochs."
        ) from None


def spent_epsilon(sigma: float, sample_rate: float, steps: int, delta: float) -> float:
    """The epsilon the RDP accountant proves for ``steps`` steps at this noise and rate."""
    _opacus()
    from opacus.accountants import create_accountant

    if steps <= 0:
        return 0.0
    accountant = create_accountant(mechanism=ACCOUNTANT)
    accountant.history = [(sigma, sample_rate, int(steps))]
    return float(accountant.get_epsilon(delta=delta))


class PoissonBatches:
    """Training batches drawn by Poisson sampling from the rows of ordinary ``batches``.

    Each step takes every row with probability ``sample_rate``; an epoch is ``len(batches)``
    draws. A draw that takes no row yields nothing (the step is skipped, and still counted in
    ``draws``, which the epsilon is computed from: counting it only overstates the spending).
    ``batches`` is a ``pretune.data.collate.Batches`` (or one of its kind: feature batches,
    augmented text batches), whose collation builds each batch from its row indices."""

    def __init__(self, batches: Any, sample_rate: float, seed: int):
        self.base, self.sample_rate, self.seed = batches, float(sample_rate), int(seed)
        self.epoch, self.draws = 0, 0
        self.rows = _rows(batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch, 0xD5])
        collate = _collator(self.base)
        for _ in range(len(self)):
            self.draws += 1
            idx = np.flatnonzero(rng.random(self.rows) < self.sample_rate)
            if len(idx):
                yield collate(idx)


def _rows(batches: Any) -> int:
    if hasattr(batches, "encoded"):
        return len(batches.encoded)
    if hasattr(batches, "split"):  # augmented texts
        return len(batches.split.texts)
    raise ConfigError(
        f"--dp-epsilon samples rows itself, but this data ({type(batches).__name__}) gives only "
        f"whole batches. Train without --dp-epsilon, or on text data."
    )


def _collator(batches: Any):
    """A function from row indices to a collated batch of ``batches``' current epoch."""
    if hasattr(batches, "batches"):  # augmented texts: the edited texts of this epoch
        return batches.batches()._collate
    return batches._collate


@dataclass
class PrivateTraining:
    """What ``attach`` set up: the optimizer and batches to train with, and the accounting."""

    optimizer: Any
    batches: PoissonBatches
    epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    sample_rate: float
    planned_steps: int
    module: Any = field(default=None, repr=False)  # the GradSampleModule holding the hooks
    handles: list = field(default_factory=list, repr=False)  # our own hooks on the model

    def report(self) -> dict[str, Any]:
        """What pretune.yaml records of the run's privacy: the budget, and what was spent."""
        spent = spent_epsilon(self.noise_multiplier, self.sample_rate, self.batches.draws,
                              self.delta)
        return {"epsilon": round(spent, 4), "target_epsilon": self.epsilon, "delta": self.delta,
                "max_grad_norm": self.max_grad_norm,
                "noise_multiplier": round(self.noise_multiplier, 6),
                "sample_rate": round(self.sample_rate, 6), "steps": self.batches.draws,
                "planned_steps": self.planned_steps, "accountant": ACCOUNTANT,
                "sampling": "poisson"}

    def detach(self) -> None:
        """Remove the per-example hooks and gradients from the model."""
        if self.module is not None:
            self.module._close()
            self.module = None
        for handle in self.handles:
            handle.remove()
        self.handles = []


def attach(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Any, settings: Any,
           total_steps: int) -> PrivateTraining:
    """Make ``model``'s training private as ``settings`` ask: per-example gradient hooks on
    ``model`` (which keeps its own forward), ``optimizer`` wrapped to clip and add noise, and
    Poisson-sampled batches of ``batches``' rows, for a run of ``total_steps`` steps."""
    _opacus()
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    rows = _rows(batches)
    batch_size = int(settings.batch_size)
    rate = min(1.0, batch_size / max(rows, 1))
    delta = settings.dp_delta if settings.dp_delta is not None else 1.0 / max(rows, 1)
    sigma = noise_multiplier(settings.dp_epsilon, delta, rate, total_steps)
    handles = _per_example_embeddings(model)
    try:
        module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
    except NotImplementedError as err:
        for handle in handles:
            handle.remove()
        raise ConfigError(
            f"--dp-epsilon needs per-example gradients of every trained layer, but Opacus cannot "
            f"compute them for this model ({err}). Freeze that layer (--transfer freeze_bottom "
            f"or linear_probe) or train without --dp-epsilon."
        ) from None
    generator = torch.Generator(device=next(model.parameters()).device)
    generator.manual_seed(int(settings.seed))
    private = DPOptimizer(optimizer, noise_multiplier=sigma,
                          max_grad_norm=settings.dp_max_grad_norm,
                          expected_batch_size=max(1, round(rate * rows)),
                          loss_reduction="mean", generator=generator)
    log.info("DP-SGD: epsilon %g, delta %.3g, noise multiplier %.4f, sample rate %.4f, %d steps",
             settings.dp_epsilon, delta, sigma, rate, total_steps)
    return PrivateTraining(optimizer=private, batches=PoissonBatches(batches, rate, settings.seed),
                           epsilon=float(settings.dp_epsilon), delta=float(delta),
                           max_grad_norm=float(settings.dp_max_grad_norm), noise_multiplier=sigma,
                           sample_rate=rate, planned_steps=int(total_steps), module=module,
                           handles=handles)


def _per_example_embeddings(model: nn.Module) -> list:
    """Hooks that give every trained embedding one row of indices per example.

    BERT-style models look up their position embeddings with one row of positions shared by
    the batch (shape 1 x length); Opacus would then see one "example" there, and fail. The
    hooks expand such an index to the batch's size (the batch size is read from the model's
    inputs), which changes no output (the sum broadcasts either way) but lets each example's
    gradient of those embeddings be computed and clipped."""
    seen = {"batch": None}

    def note_batch(_module, args, kwargs):
        x = next((kwargs[k] for k in ("input_ids", "inputs_embeds", "pixel_values")
                  if kwargs.get(k) is not None), args[0] if args else None)
        seen["batch"] = None if x is None else int(x.shape[0])

    def expand(_module, args):
        batch = seen["batch"]
        if not args or not torch.is_tensor(args[0]) or args[0].dim() < 2 or batch is None:
            return None
        if args[0].shape[0] == 1 and batch > 1:
            return (args[0].expand(batch, *args[0].shape[1:]),) + tuple(args[1:])
        return None

    handles = [model.register_forward_pre_hook(note_batch, with_kwargs=True)]
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight.requires_grad:
            handles.append(module.register_forward_pre_hook(expand))
    return handles


def describe(report: dict[str, Any] | None) -> str:
    """One line for a person: the epsilon spent of the budget, at which delta."""
    if not report:
        return ""
    return (f"differential privacy: epsilon {report['epsilon']:.3g} spent of "
            f"{report['target_epsilon']:g} (delta {report['delta']:.2g}, {report['steps']} "
            f"Poisson-sampled steps, noise multiplier {report['noise_multiplier']:.3g})")


SEARCH_NOTE = (
    "Under DP a search keeps the budget per trial: each trial is (epsilon, delta)-DP on its own. "
    "Choosing the best trial looks at every trial's model, so that choice leaks too: the search "
    "as a whole is covered only by the trials' budgets added up (basic composition), which the "
    "report shows. The learning-rate range test and the final ensemble are off under DP."
)


def search_options(config: Any, lr_range_test: bool | None, assemble: bool | None
                   ) -> tuple[bool | None, bool | None]:
    """The ``lr_range_test`` and ``assemble`` options of a search of ``config``: both off under
    DP (the range test trains without DP; an ensemble joins several trials' budgets); asking
    for either under DP is refused."""
    if not enabled(config.train):
        return lr_range_test, assemble
    check(config)
    for name, value, flag in (("the learning-rate range test", lr_range_test, "--no-lr-range-test"),
                              ("the final assembly", assemble, "--no-assemble")):
        if value:
            raise ConfigError(
                f"--dp-epsilon keeps each trial private, but {name} was asked for, which learns "
                f"from the training rows outside DP-SGD (or joins several trials). Pass {flag}."
            )
    return False, False


def search_bound(epsilon: float, trials: int) -> str:
    """One line: the per-trial budget, and the bound on a whole search of ``trials`` runs."""
    total, _ = composed([epsilon] * trials, [])
    return (f"differential privacy: each trial within epsilon {epsilon:g}; the search as a whole "
            f"(the choice of the best among {trials} trials included) within epsilon "
            f"{total:g} and {trials} x delta, by basic composition")


def composed(epsilons: list[float], deltas: list[float]) -> tuple[float, float]:
    """(sum of epsilons, sum of deltas): the basic-composition bound of several DP runs on the
    same rows, which covers any choice made from all of them."""
    return float(sum(epsilons)), float(sum(deltas))


__all__ = ["enabled", "refusal", "check", "attach", "PrivateTraining", "PoissonBatches",
           "noise_multiplier", "spent_epsilon", "describe", "composed", "search_options",
           "search_bound", "SEARCH_NOTE"]
