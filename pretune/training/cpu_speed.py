"""Two costs of training on a CPU that come from outside the model, taken away while a run trains.

**Page faults on large blocks.** glibc's ``malloc`` serves a block above its mmap threshold (at
most 32 MiB) from a fresh mapping and unmaps it when it is freed, so a step that allocates such a
block touches new pages every time. A word-embedding gradient is one: every backward pass makes
it anew (all-MiniLM-L6-v2's is 30,522 x 384 floats, 47 MB; zeroing it took 9 ms of a 100-ms step,
against 1.7 ms in memory already mapped). While a run trains, ``reuse_freed_memory`` has malloc
keep freed blocks in its heap (``M_MMAP_MAX`` 0 and a high trim threshold, ``mallopt(3)``); after
it, the defaults are set again and the free memory goes back to the system (``malloc_trim``).
Setting them turns off glibc's dynamic mmap threshold for the rest of the process. With another
C library nothing changes.

**Dropout masks.** torch draws a CPU dropout mask one Mersenne-Twister number per element
(``bernoulli_``): 0.9 ms for a 32 x 14 x 384 activation, of which a MiniLM step has 14.
``fast_dropout`` swaps each ``nn.Dropout`` of the model for ``BitsDropout`` while it trains, which
takes 16 bits of numpy's SFC64 generator per element (0.19 ms for the same tensor; the rate is
rounded to 1/65536). Its generator is seeded from torch's, so a seeded run repeats itself; the
masks differ from torch's, as another seed's would. The dropout of the attention probabilities
happens inside ``scaled_dot_product_attention`` (``dropout_p``), where no module can reach it:
for transformers' ``sdpa`` attention in its plain case (an encoder's self-attention), the
attention is written out while a run trains, its dropout drawn from the same bits (at 128 tokens
these masks were a quarter of a MiniLM step). On a GPU all dropout stays torch's.

Measured side by side in ``bench/throughput.py`` (``bench/README.md``, "Trial speed").
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
from typing import Iterator

import numpy as np
import torch
from torch import nn

# mallopt(3) parameters and glibc's defaults for them.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_KEEP_FREED = 2**31 - 1  # the highest trim threshold: freed memory stays mapped

# Switches for measuring each change alone (``bench/throughput.py --only 9``); both on.
REUSE_FREED_MEMORY = True
FAST_DROPOUT = True

_lock = threading.Lock()
_active = 0  # runs inside reuse_freed_memory (trials may train in threads of one process)


@functools.lru_cache(maxsize=None)
def _glibc():
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        libc.mallopt, libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return None
    return libc


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Keep freed blocks mapped for reuse while inside (yields whether it could)."""
    global _active
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _lock:
        if _active == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED)
        _active += 1
    try:
        yield True
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)


class BitsDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks come from ``bits``, a numpy bit generator (16 bits an
    element); elsewhere, and where the rate is 0 or 1, torch's own."""

    def __init__(self, p: float, bits: np.random.BitGenerator):
        super().__init__(p)
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.p >= 1.0:
            return super().forward(x)
        return drop(x, self.p, self.bits)


def drop(x: torch.Tensor, p: float, bits: np.random.BitGenerator) -> torch.Tensor:
    """Dropout of rate ``p`` (0 < p < 1) on a CPU tensor, its mask from ``bits``."""
    drop_below = round(p * 65536)  # an element is dropped when its 16 bits are below this
    n = x.numel()
    words = bits.random_raw(-(-n // 4))  # 64 bits: four elements' worth
    keep = torch.from_numpy(words.view(np.uint16)[:n] >= drop_below).view(x.shape)
    return x * keep * (65536 / (65536 - drop_below))


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              mask: torch.Tensor | None, scale: float, dropout) -> torch.Tensor:
    """``scaled_dot_product_attention`` written out (``mask``: True where a query may attend,
    or added to the scores), with ``dropout`` (a function) on the attention probabilities."""
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    elif mask is not None:
        scores = scores + mask
    return torch.matmul(dropout(torch.softmax(scores, dim=-1)).to(value.dtype), value)


_bits: list[np.random.BitGenerator] = []  # the generators of the runs inside fast_dropout


def _sdpa_with_bits(original):
    """transformers' ``sdpa`` attention function, except in training on the CPU inside
    ``fast_dropout``, for the plain case (an encoder's self-attention: not causal, no
    grouped keys, no position bias or soft cap), where the probabilities' dropout takes its
    mask from the run's bits."""
    def forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                is_causal=None, **kwargs):
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        plain = (dropout > 0.0 and _bits and query.device.type == "cpu" and not causal
                 and getattr(module, "num_key_value_groups", 1) == 1
                 and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
                 and not kwargs.get("output_attentions", False))
        if not plain:
            return original(module, query, key, value, attention_mask, dropout=dropout,
                            scaling=scaling, is_causal=is_causal, **kwargs)
        bits = _bits[-1]
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = attention(query, key, value, attention_mask, scale, lambda x: drop(x, dropout, bits))
        return out.transpose(1, 2).contiguous(), None
    forward.original = original
    return forward


@contextlib.contextmanager
def _attention_with_bits(bits: np.random.BitGenerator) -> Iterator[None]:
    """transformers' ``sdpa`` attention, for every model of the process, with ``bits`` for
    its dropout while inside (``_sdpa_with_bits``)."""
    try:
        from transformers.modeling_utils import AttentionInterface
    except ImportError:  # pragma: no cover - transformers without the attention interface
        yield
        return
    mapping = AttentionInterface._global_mapping
    with _lock:
        _bits.append(bits)
        current = mapping.get("sdpa")
        if current is not None and not hasattr(current, "original"):
            mapping["sdpa"] = _sdpa_with_bits(current)
    try:
        yield
    finally:
        with _lock:
            _bits.remove(bits)
            current = mapping.get("sdpa")
            if not _bits and hasattr(current, "original"):
                mapping["sdpa"] = current.original


@contextlib.contextmanager
def fast_dropout(model: nn.Module) -> Iterator[int]:
    """``model`` with each plain ``nn.Dropout`` swapped for a ``BitsDropout`` while inside
    (yields how many), and the dropout of its ``sdpa`` attention drawn from the same bits;
    the originals are put back on the way out."""
    bits = np.random.SFC64(int(torch.randint(0, 2**63 - 1, (1,))))
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                fast = BitsDropout(child.p, bits)
                fast.train(child.training)
                setattr(parent, name, fast)
                swapped.append((parent, name, child))
    try:
        with _attention_with_bits(bits):
            yield len(swapped)
    finally:
        for parent, name, child in swapped:
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)


@contextlib.contextmanager
def training(model: nn.Module, device: torch.device, *, dropout: bool = True) -> Iterator[None]:
    """Both, where the run trains on the CPU (``dropout=False`` keeps torch's dropout)."""
    if device.type != "cpu":
        yield
        return
    with contextlib.ExitStack() as stack:
        if REUSE_FREED_MEMORY:
            stack.enter_context(reuse_freed_memory())
        if dropout and FAST_DROPOUT:
            stack.enter_context(fast_dropout(model))
        yield
