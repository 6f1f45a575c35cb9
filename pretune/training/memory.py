"""Memory: estimate a run's peak before it starts, fit it to what the process may use, and
recover from running out anyway.

**The estimate** adds up what a training run holds at its peak: the weights; a gradient for
each trainable parameter; the optimizer's state (Adam keeps two numbers per trainable
parameter, momentum one); the activations autograd keeps for the backward pass of every layer
from the lowest trainable one up (per token and layer about ``13h + 2i`` numbers for hidden size
``h`` and feed-forward size ``i``, plus ``2as`` attention probabilities for ``a`` heads at
sequence length ``s``), and a workspace of about two layers' worth while the backward pass runs;
on the CPU also the copies of the trainable weights the loop keeps of its best evaluations
(``checkpoint_soup``). Gradient checkpointing keeps only each layer's input and recomputes the
rest one layer at a time. On the CPU the estimate is of the process's resident memory (it starts
from what the process holds already); on a GPU of what torch allocates there.

**The limit** is the least of: ``PRETUNE_MEMORY_LIMIT`` (a cap the process is told about, such
as ``8GiB``), the cgroup's memory limit, the free RAM plus what the process holds, and
``RLIMIT_AS``; on a GPU, its free memory plus what torch holds there.

**Fitting** (``fit_run``): a run that would not fit runs with a smaller micro-batch and
gradient accumulation (the same effective batch), then with gradient checkpointing where the
model supports it (``gradient_checkpointing: auto``), and is refused (``DoesNotFit``, one line
naming what would fit) when even a micro-batch of 1 with checkpointing would not.

**Recovering** (``retry_on_oom``): an out-of-memory error that happens anyway (a CUDA
allocation, ``MemoryError``, or the soft cap: the peak resident memory above
``PRETUNE_MEMORY_LIMIT`` after a step) frees what the run held and runs it once more at half the
micro-batch, accumulating to the same batch.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from pretune.errors import ConfigError, PretuneError

log = logging.getLogger(__name__)

ENV_LIMIT = "PRETUNE_MEMORY_LIMIT"
CHECKPOINTING = ("auto", "true", "false")
MB = 2**20
GIB = 2**30
# Numbers of optimizer state per trainable parameter (fp32 each).
OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1,
                    "adam": 2, "adamw": 2}


class DoesNotFit(PretuneError):
    """The run needs more memory than the process may use, in every form it could take."""


class OutOfMemory(RuntimeError):
    """The process went past its memory cap (``PRETUNE_MEMORY_LIMIT``) during a run."""


# --- sizes ------------------------------------------------------------------------------------


def parse_size(text: str | int | float | None) -> int | None:
    """Bytes from ``8GiB``, ``8G``, ``512MB``, ``1.5e9`` (None stays None)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return int(text)
    found = re.fullmatch(r"\s*([\d.eE+]+)\s*([kmgt]?)(i?b?)\s*", str(text), re.IGNORECASE)
    if not found:
        raise ConfigError(f"a memory size must be a number with an optional unit (8GiB, 512MB), "
                          f"but got {text!r}. Set {ENV_LIMIT} to something like 8GiB.")
    power = "kmgt".find(found.group(2).lower()) + 1 if found.group(2) else 0
    return int(float(found.group(1)) * 1024**power)


def gib(n: float | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


# --- the shape of a model, as the estimate needs it ---------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What the estimate needs to know of a model and of which parts of it train."""

    param_bytes: int  # weights and buffers
    trainable: int  # trainable parameters
    layers: int  # transformer layers
    active_layers: int  # layers whose activations are kept for the backward pass
    hidden: int
    intermediate: int
    heads: int
    vocab: int = 0
    embeddings_train: bool = False
    lora_modules: int = 0  # LoRA adapters per layer (each keeps its dropped-out input)


def _dims(config: Any) -> tuple[int, int, int, int, int]:
    """(layers, hidden, intermediate, heads, vocab) from a transformers config, 0 when unknown."""
    get = lambda *names: next((int(getattr(config, n)) for n in names  # noqa: E731
                               if isinstance(getattr(config, n, None), int)), 0)
    hidden = get("hidden_size", "d_model", "dim", "n_embd")
    return (get("num_hidden_layers", "n_layers", "num_layers", "n_layer"), hidden,
            get("intermediate_size", "hidden_dim", "ffn_dim", "n_inner") or 4 * hidden,
            get("num_attention_heads", "n_heads", "num_heads", "n_head") or 1,
            get("vocab_size"))


def shape_of(model: nn.Module, frozen_depth: int | None = None) -> Shape:
    """The shape of a built model, from which of its parameters train; ``frozen_depth``: the
    bottom layers the frozen-feature cache stands in for (never run)."""
    from pretune.models.transfer import find_layers

    layers, hidden, inter, heads, vocab = _dims(getattr(model, "config", None))
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    param_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        _, blocks = find_layers(model)
        lowest = next((i for i, block in enumerate(blocks)
                       if any(p.requires_grad for p in block.parameters())), len(blocks))
        layers = len(blocks)
    except Exception:  # noqa: BLE001 - a model pretune cannot take apart: assume all layers train
        lowest = 0 if trainable else layers
    embeddings = any(p.requires_grad for n, p in model.named_parameters() if "embed" in n)
    adapters = sum(1 for n, _ in model.named_modules() if n.endswith("lora_A"))
    active = layers if embeddings else layers - lowest
    if frozen_depth:
        active = min(active, layers - frozen_depth)
    return Shape(param_bytes, trainable, layers, active, hidden, inter, heads, vocab, embeddings,
                 adapters // max(layers, 1))


def shape_from_config(config: Any, *, transfer: str = "full", freeze_layers: int = 0,
                      lora_r: int = 8, num_labels: int = 2) -> Shape:
    """The shape of a model from its transformers config alone (no weights are made): the
    parameters are counted on the meta device, the trainable ones from the transfer strategy."""
    from transformers import AutoModelForSequenceClassification

    layers, hidden, inter, heads, vocab = _dims(config)
    try:
        config = replace_config(config, num_labels=num_labels)
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
        params = sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - a rough count: embeddings and 12h^2 per layer
        params = vocab * hidden + layers * (4 * hidden * hidden + 2 * hidden * inter)
    head = hidden * hidden + hidden * num_labels
    trainable, active, embeds = params, layers, True
    if transfer == "linear_probe":
        trainable, active, embeds = head, 0, False
    elif transfer == "freeze_bottom":
        frozen = min(freeze_layers, layers)
        trainable = head + (params - vocab * hidden) * (layers - frozen) // max(layers, 1)
        active, embeds = layers - frozen, False
    elif transfer == "lora":
        trainable, embeds = head + layers * 2 * lora_r * 2 * hidden, False
    adapters = 2 if transfer == "lora" else 0
    return Shape(params * 4, trainable, layers, active, hidden, inter, heads, vocab, embeds,
                 adapters)


def replace_config(config: Any, **changes: Any) -> Any:
    import copy

    config = copy.deepcopy(config)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


# --- the estimate -------------------------------------------------------------------------------


@dataclass
class Estimate:
    """Peak memory of a training run, in bytes, by what holds it."""

    base: int  # what the process holds besides the model (CPU: its resident memory)
    weights: int
    gradients: int
    optimizer: int
    activations: int
    workspace: int  # the backward pass's gradients of activations
    checkpoints: int  # CPU copies of the best evaluations' trainable weights (all of them)
    evaluation: int = 0  # an evaluation's activations (no gradients: one layer at a time)
    kept: int = 1  # how many copies ``checkpoints`` holds
    device: str = "cpu"

    @property
    def total(self) -> int:
        """All parts added up, the larger of the training step's workspace and an evaluation's
        counted once. Adding (rather than taking the higher of a step and an evaluation) is what
        the measured peaks agree with: the allocator does not hand freed memory back at once."""
        return (self.base + self.weights + self.gradients + self.optimizer + self.activations
                + max(self.workspace, self.evaluation) + self.checkpoints)

    def to_dict(self) -> dict[str, float]:
        parts = {k: round(v / MB, 1) for k, v in asdict(self).items()
                 if k not in ("device", "kept")}
        return {**parts, "total": round(self.total / MB, 1)}

    def describe(self) -> str:
        parts = ", ".join(f"{k} {gib(v)}" for k, v in asdict(self).items()
                          if k not in ("device", "base", "kept") and v >= 0.05 * GIB)
        return f"{gib(self.total)} ({parts or 'all small'})"


def estimate(shape: Shape, *, micro_batch: int, seq_len: int, precision: str = "fp32",
             optimizer: str = "adamw", checkpointing: bool = False, eval_batch: int = 128,
             kept_checkpoints: int = 1, base: int = 0, device: str = "cpu",
             optimizer_bits: int = 32) -> Estimate:
    """The peak memory of training a model of ``shape`` with these settings (see the module's
    docstring for what is counted)."""
    h, i, a, s = shape.hidden, shape.intermediate, shape.heads, seq_len
    half = precision in ("bf16", "fp16")
    elt = 3 if half else 4  # mixed precision keeps some tensors (norms, softmax) in fp32
    # The layer's input, Q, K, V and their per-head copies, the context, the norms' inputs,
    # the feed-forward's two activations, the attention probabilities before and after
    # dropout, and the dropout masks (a byte each).
    per_token_layer = elt * (13 * h + 2 * i + 2 * a * s) + (a * s + 2 * h)
    per_token_layer += shape.lora_modules * (2 * elt * h + h)  # an adapter's input and mask
    tokens = micro_batch * s
    if checkpointing:  # each layer's input, and one layer recomputed at a time
        kept = shape.active_layers * tokens * h * elt + tokens * per_token_layer
    else:
        kept = shape.active_layers * tokens * per_token_layer
    embed = tokens * h * elt * 3 if shape.embeddings_train else 0
    activations = kept + embed
    # The backward pass of a layer holds the gradients of its activations beside them.
    train_work = 2 * tokens * per_token_layer if shape.active_layers else tokens * h * elt
    eval_work = eval_batch * s * (elt * (i + a * s + 4 * h))  # no_grad: one layer at a time
    gradients = shape.trainable * 4
    states = OPTIMIZER_STATES.get(optimizer, 2) * shape.trainable
    optimizer_bytes = states * (1 if optimizer_bits == 8 else 4)
    if half:  # autocast keeps a half-precision copy of each trainable weight during a step
        optimizer_bytes += 2 * shape.trainable
    kept = max(1, kept_checkpoints)
    checkpoints = 4 * shape.trainable * kept if device == "cpu" else 0
    return Estimate(base=int(base), weights=shape.param_bytes, gradients=gradients,
                    optimizer=optimizer_bytes, activations=int(activations),
                    workspace=int(train_work), checkpoints=checkpoints,
                    evaluation=int(eval_work), kept=kept, device=device)


# --- what the process may use -------------------------------------------------------------------


@dataclass
class Limit:
    """The memory a run may reach, in bytes (None: unknown), and where that number comes from."""

    bytes: int | None
    source: str
    cap: int | None = None  # PRETUNE_MEMORY_LIMIT, enforced after each step (the soft cap)

    def describe(self) -> str:
        return "no known limit" if self.bytes is None else f"{gib(self.bytes)} ({self.source})"


def rss_bytes() -> int:
    """Resident memory of this process now."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 0


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):  # pragma: no cover - not Linux
        pass
    return None


def reset_peak(device: torch.device | None = None) -> None:
    """Start measuring the peak anew (Linux: the resident high-water mark; CUDA: torch's)."""
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # pragma: no cover - an old kernel: the peak is that of the process
        pass


def peak_bytes(device: torch.device | None = None) -> int:
    """The peak since ``reset_peak``: resident memory (CPU) or torch's allocations (CUDA)."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return _status_kb("VmHWM") or rss_bytes()


def _cgroup_room() -> tuple[int | None, str]:
    """How much more this process's cgroup may take beyond what this process holds now."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = open(limit_file).read().strip()
            if text == "max" or int(text) >= 2**60:
                continue
            used = int(open(usage_file).read().strip())
            return int(text) - used + rss_bytes(), "the cgroup's memory limit"
        except (OSError, ValueError):
            continue
    return None, ""


def limit(device: torch.device | None = None) -> Limit:
    """What a run in this process may reach (see the module's docstring)."""
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return Limit(int(free + torch.cuda.memory_allocated(device)), "free GPU memory")
    cap = parse_size(os.environ.get(ENV_LIMIT))
    found: list[tuple[int, str]] = []
    if cap is not None:
        found.append((cap, ENV_LIMIT))
    room, source = _cgroup_room()
    if room is not None:
        found.append((room, source))
    available = _meminfo_available()
    if available is not None:
        found.append((available + rss_bytes(), "free RAM"))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1):
            found.append((soft, "RLIMIT_AS"))
    except (ImportError, ValueError):  # pragma: no cover - not POSIX
        pass
    if not found:
        return Limit(None, "unknown", cap)
    n, source = min(found)
    return Limit(int(n), source, cap)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):  # pragma: no cover - not Linux
        pass
    return None


# --- fitting a run to the limit -------------------------------------------------------------------

HEADROOM = 0.9  # a run is planned to reach at most this share of its limit


@dataclass
class Fitted:
    """How a run was fitted to memory: its micro-batch, accumulation and checkpointing, the
    estimate of its peak and the limit, and (after it ran) the measured peak."""

    micro_batch: int
    grad_accum: int
    checkpointing: bool
    estimate: Estimate
    limit: Limit
    adapted: str | None = None  # a sentence when the run was changed to fit
    device: str = "cpu"
    measured: int | None = None  # peak bytes of the run (set by ``finish``)

    def watch(self, on_step: Callable | None) -> Callable | None:
        """``on_step`` that also raises ``OutOfMemory`` once the peak resident memory passed
        the cap the process was told about (``PRETUNE_MEMORY_LIMIT``; CPU only)."""
        cap = self.limit.cap
        if cap is None or self.device != "cpu":
            return on_step

        def checked(step: int, total: int, loss: float) -> None:
            peak = peak_bytes()
            if peak > cap:
                raise OutOfMemory(f"the process reached {gib(peak)}, past {ENV_LIMIT}="
                                  f"{gib(cap)}, at step {step}")
            if on_step is not None:
                on_step(step, total, loss)
        return checked

    def finish(self, device: torch.device) -> None:
        self.measured = peak_bytes(device)

    def to_dict(self) -> dict[str, Any]:
        measured = None if self.measured is None else round(self.measured / MB, 1)
        total = self.estimate.total
        return {"estimate_mb": round(total / MB, 1), "peak_mb": measured,
                "ratio": None if not self.measured else round(total / self.measured, 3),
                "limit_mb": None if self.limit.bytes is None else round(self.limit.bytes / MB, 1),
                "limit_source": self.limit.source, "micro_batch": self.micro_batch,
                "grad_accum": self.grad_accum, "checkpointing": self.checkpointing,
                "adapted": self.adapted, "device": self.device,
                "parts_mb": self.estimate.to_dict()}


def checkpointing_setting(value: Any) -> str:
    """``gradient_checkpointing`` as auto | true | false."""
    text = str(value).strip().lower()
    if text in ("1", "yes", "on"):
        text = "true"
    if text in ("0", "no", "off", "none"):
        text = "false"
    if text not in CHECKPOINTING:
        raise ConfigError(f"gradient_checkpointing must be auto, true or false, but got "
                          f"{value!r}. Pass --set gradient_checkpointing=auto.")
    return text


def can_checkpoint(model: nn.Module) -> bool:
    base = getattr(getattr(model, "base_model", model), "model", None)  # LoRA wraps the model
    supports = (getattr(model, "supports_gradient_checkpointing", False)
                or getattr(base, "supports_gradient_checkpointing", False))
    return bool(supports) and hasattr(model, "gradient_checkpointing_enable")


def _divisors(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def plan_run(shape: Shape, settings: Any, micro: int, *, seq_len: int, precision: str,
             lim: Limit, base: int, device: str, checkpoint_ok: bool,
             full_batch: bool = False) -> Fitted:
    """The first way of running that fits ``lim``: the micro-batch as given, then smaller ones
    with accumulation, then (where allowed) the same with gradient checkpointing. Raises
    ``DoesNotFit`` naming what would fit when none does."""
    mode = checkpointing_setting(getattr(settings, "gradient_checkpointing", "auto"))
    if mode == "true" and not checkpoint_ok:
        log.info("the model does not support gradient checkpointing; training without it")
    options = {"auto": [False, True], "true": [True], "false": [False]}[mode]
    options = [c for c in options if checkpoint_ok or not c] or [False]
    common = dict(seq_len=seq_len, precision=precision, optimizer=settings.optimizer,
                  eval_batch=settings.eval_batch_size, base=base, device=device,
                  kept_checkpoints=settings.checkpoint_soup,
                  optimizer_bits=getattr(settings, "optimizer_bits", 32))
    accum = 1 if full_batch else settings.grad_accum

    def make(m: int, ckpt: bool, est: Estimate, adapted: str | None) -> Fitted:
        return Fitted(m, accum * (micro // m), ckpt, est, lim, adapted, device)

    first = estimate(shape, micro_batch=micro, checkpointing=options[0], **common)
    if lim.bytes is None or first.total <= HEADROOM * lim.bytes:
        return make(micro, options[0], first, None)
    for ckpt in options:
        for m in _divisors(micro):
            est = estimate(shape, micro_batch=m, checkpointing=ckpt, **common)
            if est.total <= HEADROOM * lim.bytes:
                how = [f"micro-batch {m} with {accum * (micro // m)} accumulation steps"
                       if m < micro else f"micro-batch {m}"]
                if ckpt:
                    how.append("gradient checkpointing")
                return make(m, ckpt, est, (f"batch {micro} needs about {gib(first.total)} of "
                                           f"{lim.describe()}; running with {' and '.join(how)} "
                                           f"(about {gib(est.total)})"))
    least = estimate(shape, micro_batch=1, checkpointing=options[-1], **common)
    raise DoesNotFit(
        f"this run needs at least {gib(least.total)} even at micro-batch 1"
        f"{' with gradient checkpointing' if options[-1] else ''} "
        f"({least.describe()}), but the process may use {lim.describe()}. "
        f"{_what_fits(shape, least, lim, common, checkpoint_ok)}")


def _what_fits(shape: Shape, least: Estimate, lim: Limit, common: dict, ckpt: bool) -> str:
    """One sentence naming a change that would fit, or the memory it would take."""
    budget = HEADROOM * (lim.bytes or 0)
    tries = []
    if common["seq_len"] > 32:
        tries.append((f"max_length={common['seq_len'] // 4}",
                      shape, {**common, "seq_len": common["seq_len"] // 4}))
    lora = replace(shape, trainable=max(1, shape.trainable // 100), embeddings_train=False)
    tries.append(("transfer=lora", lora, common))
    probe = replace(lora, active_layers=0)
    tries.append(("transfer=linear_probe", probe, common))
    for name, s, c in tries:
        est = estimate(s, micro_batch=1, checkpointing=ckpt, **c)
        if est.total <= budget:
            return f"With {name} it would need about {gib(est.total)}: pass --set {name}."
    return (f"Run it where about {gib(least.total / HEADROOM)} is free, or set "
            f"{ENV_LIMIT} higher if the process may use more.")


def plan_config(shape: Shape, config: Any, micro: int, device: torch.device, *, lim: Limit,
                base: int, checkpoint_ok: bool) -> Fitted:
    """How a run of ``config`` at micro-batch ``micro`` fits ``lim`` (``plan_run``), from the
    settings as a run applies them: its precision on ``device``, its sequence length, a full
    batch, and only as many checkpoint copies as it has evaluations. A trial (``fit_run``) and
    the search's plan line both call this, so that they decide alike."""
    from pretune.training.device import resolve_precision

    t = config.train
    evals = (math.ceil(t.epochs * t.evals_per_epoch) if not t.eval_steps else t.checkpoint_soup)
    planned = replace(t, checkpoint_soup=max(1, min(t.checkpoint_soup, evals)))  # copies kept
    return plan_run(shape, planned, micro, seq_len=config.data.max_length or 512,
                    precision=resolve_precision(t.precision, device), lim=lim, base=base,
                    device=device.type, checkpoint_ok=checkpoint_ok,
                    full_batch=t.batch_size == "full")


def fit_run(model: nn.Module, config: Any, micro: int, device: torch.device, *,
            frozen_depth: int | None = None) -> tuple[Any, int, Fitted]:
    """Fit a run to memory before it trains: ``(config, micro, fitted)`` with the batch size
    and accumulation changed when the run would not fit as set, and gradient checkpointing
    turned on in ``model`` when needed (or asked for). Raises ``DoesNotFit``."""
    from pretune.training import privacy

    t = config.train
    shape = shape_of(model, frozen_depth)
    held = (torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes())
    base = max(0, held - shape.param_bytes)  # the weights are there already
    lim = limit(device)
    if privacy.enabled(t):  # DP-SGD's batches and accounting are its own: estimated, not adapted
        lim = Limit(None, "not adapted under DP-SGD")
    fitted = plan_config(shape, config, micro, device, lim=lim, base=base,
                         checkpoint_ok=can_checkpoint(model))
    if fitted.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if fitted.adapted:
        log.warning("memory: %s", fitted.adapted)
    if fitted.micro_batch != micro and t.batch_size != "full":
        config = replace(config, train=replace(t, batch_size=fitted.micro_batch,
                                               grad_accum=fitted.grad_accum))
    reset_peak(device)
    return config, fitted.micro_batch, fitted


def check_device_settings(config: Any, device: torch.device) -> None:
    """Refuse the memory savers that need CUDA and bitsandbytes where they are not."""
    bits = getattr(config.train, "optimizer_bits", 32)
    four = getattr(config.model, "load_in_4bit", False)
    if bits not in (8, 32):
        raise ConfigError(f"optimizer_bits must be 32 or 8, but got {bits!r}. "
                          f"Pass --set optimizer_bits=8 or leave it out.")
    if four and config.model.transfer != "lora":
        raise ConfigError(f"load_in_4bit trains LoRA adapters on a frozen 4-bit model, but "
                          f"transfer is {config.model.transfer}. Pass --set transfer=lora.")
    if bits == 8 and config.train.optimizer not in ("adam", "adamw"):
        raise ConfigError(f"optimizer_bits=8 is AdamW with 8-bit state, but optimizer is "
                          f"{config.train.optimizer}. Pass --set optimizer=adamw.")
    for asked, name in ((bits == 8, "optimizer_bits=8"), (four, "load_in_4bit")):
        if not asked:
            continue
        if device.type != "cuda":
            raise ConfigError(f"{name} needs a CUDA GPU (bitsandbytes), but this run is on "
                              f"{device.type}. Leave {name.split('=')[0]} out on this machine.")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise ConfigError(f"{name} needs bitsandbytes, which is not installed. "
                              f"Run pip install bitsandbytes.") from err
    if four:  # loading is not wired in yet: refused rather than silently loading 32-bit
        raise ConfigError("load_in_4bit is not supported by this version of pretune, even on "
                          "CUDA. Use transfer=lora with optimizer_bits=8 instead.")


def eight_bit_adamw(groups: list[dict], settings: Any):
    """AdamW with 8-bit state (bitsandbytes; CUDA only, checked by ``check_device_settings``)."""
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2),
                               eps=settings.eps)


# --- recovering from out-of-memory ----------------------------------------------------------------


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` says memory ran out (CUDA, the CPU allocator, Python, the soft cap)."""
    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None),
                              getattr(torch.cuda, "OutOfMemoryError", None)) if k is not None)
    if isinstance(err, (MemoryError, OutOfMemory, *kinds)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text
                                              or "can't allocate memory" in text)


def free_memory() -> None:
    """Hand back what a failed run held: Python garbage, torch's CUDA cache, freed heap."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def halved(config: Any) -> Any | None:
    """``config`` at half the micro-batch with twice the accumulation; None at micro-batch 1."""
    t = config.train
    if t.batch_size == "full" or int(t.batch_size) < 2:
        return None
    return replace(config, train=replace(t, batch_size=int(t.batch_size) // 2,
                                         grad_accum=t.grad_accum * 2))


def retry_on_oom(run: Callable[[Any], Any], config: Any, *,
                 on_retry: Callable[[str], None] | None = None) -> Any:
    """``run(config)``; when it runs out of memory, free what it held and run it once more at
    half the micro-batch (``on_retry`` hears why). A second out-of-memory error propagates."""
    try:
        return run(config)
    except Exception as err:  # noqa: BLE001 - only out-of-memory errors are retried
        if not is_oom(err):
            raise
        why = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    # Outside the except block, so that the traceback (and the model it holds) is gone.
    free_memory()
    smaller = halved(config)
    if smaller is None:
        raise OutOfMemory(f"{why}; already at micro-batch 1, so nothing smaller to retry")
    note = (f"out of memory at micro-batch {config.train.batch_size} ({why}); retried at "
            f"micro-batch {smaller.train.batch_size} with {smaller.train.grad_accum} "
            f"accumulation steps")
    log.warning("%s", note)
    if on_retry is not None:
        on_retry(note)
    return run(smaller)
