"""Frozen-feature cache: run the frozen bottom of a network once per data set, not once per step.

When the embeddings and the bottom ``d`` encoder layers are frozen (``linear_probe``: all of
them; ``freeze_bottom``: ``freeze_layers`` of them), their output for an example never changes
during training. ``compute_features`` runs that part once, in eval mode and fp32, and keeps each
example's hidden states after layer ``d`` (unpadded). Training then feeds those states to the
rest of the network: ``starting_at(model, d)`` swaps the body's embeddings for a pass-through of
``inputs_embeds`` and leaves only layers ``d..`` in the encoder, and ``FeatureBatches`` yields
``inputs_embeds`` (cached states, padded per batch) in place of token ids. The model's own
forward computes the attention mask, the upper layers, the pooler and the head as usual, so any
model whose body has an ``embeddings`` module and takes ``inputs_embeds`` works; others train
without the cache.

Frozen layers run in eval mode with or without the cache (``pretune.training.loop`` keeps them
there), so the cache changes speed, not results.

``FeatureStore`` keeps computed features by key (model, depth, tokenized data) in memory, and
on disk as safetensors when given a directory, so that every trial of a search, and every process
sharing the run directory, reuses them. Features for depth ``d`` are computed from those of a
lower depth when those are at hand (only the layers in between run).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from pretune.data.collate import Batches, batch_labels
from pretune.data.tokenize import Encoded
from pretune.models.heads import base_prefix
from pretune.models.transfer import find_layers
from pretune.outdir import atomic_write

log = logging.getLogger(__name__)

FORMAT = 1
_COMPUTE_BATCH = 64
_CHECK_ROWS = 8  # examples whose logits are compared, cached against plain, before trusting it


@dataclass
class Features:
    """Hidden states after ``depth`` frozen layers: ``states[offsets[i]:offsets[i+1]]`` are
    example ``i``'s, one row per token (float32, on the CPU)."""

    states: torch.Tensor
    offsets: np.ndarray
    depth: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, i: int) -> torch.Tensor:
        return self.states[int(self.offsets[i]):int(self.offsets[i + 1])]

    @property
    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()


# --- which part is frozen -----------------------------------------------------------------------


def frozen_depth(model: nn.Module, summary: dict[str, Any]) -> int | None:
    """How many bottom layers (after the embeddings) the cache can stand in for, or None.

    None when the embeddings train, when a frozen layer was re-initialized (its output then
    depends on the seed), or when the model cannot take cached states (no ``embeddings`` module
    in its body, or no ``inputs_embeds`` argument)."""
    if not summary.get("embeddings_frozen") or summary.get("transfer") == "lora":
        return None
    depth = int(summary.get("frozen_layers", 0))
    n_layers = int(summary.get("layers", 0))
    if summary.get("reinit_layers", 0) and depth + summary["reinit_layers"] > n_layers:
        return None
    try:
        base = getattr(model, base_prefix(model))
        find_layers(model)
    except Exception:  # noqa: BLE001 - any model pretune cannot take apart trains without it
        return None
    if not isinstance(getattr(base, "embeddings", None), nn.Module):
        return None
    if "inputs_embeds" not in inspect.signature(model.forward).parameters:
        return None
    return depth


class _PassThrough(nn.Module):
    """Stands in for the embeddings: returns the ``inputs_embeds`` it is given (cached states)."""

    def forward(self, *args: Any, inputs_embeds: torch.Tensor | None = None, **kwargs: Any):
        if inputs_embeds is None:  # passed positionally (DistilBERT: embeddings(ids, embeds))
            inputs_embeds = next((a for a in args if torch.is_tensor(a) and a.is_floating_point()), None)
        if inputs_embeds is None:
            raise RuntimeError("a model running from cached features needs inputs_embeds")
        return inputs_embeds


def _parent(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, attr = dotted.split(".")
    parent = model
    for name in path:
        parent = getattr(parent, name)
    return parent, attr


@contextlib.contextmanager
def starting_at(model: nn.Module, depth: int) -> Iterator[nn.Module]:
    """Within the block, ``model`` takes ``inputs_embeds`` = hidden states after layer ``depth``
    and runs only layers ``depth..`` of its encoder; on exit it is whole again (the same layer
    objects, so whatever trained is kept)."""
    base = getattr(model, base_prefix(model))
    layers_name, layers = find_layers(model)
    parent, attr = _parent(model, layers_name)
    embeddings = base.embeddings
    base.embeddings = _PassThrough()
    setattr(parent, attr, nn.ModuleList(list(layers)[depth:]))
    try:
        yield model
    finally:
        base.embeddings = embeddings
        setattr(parent, attr, layers)


class _Captured(Exception):
    def __init__(self, states: torch.Tensor):
        self.states = states


@torch.no_grad()
def compute_features(
    model: nn.Module,
    encoded: Encoded,
    depth: int,
    *,
    pad_id: int,
    start: Features | None = None,
    device: torch.device | None = None,
    batch_size: int = _COMPUTE_BATCH,
) -> Features:
    """Each example's hidden states after the embeddings and ``depth`` layers (fp32, eval mode).

    With ``start`` (features of the same data at a lower depth) only the layers in between run.
    """
    if start is not None and start.depth > depth:
        raise ValueError(f"features at depth {start.depth} cannot give depth {depth}")
    if start is not None and start.depth == depth:
        return start
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    _, layers = find_layers(model)
    base = getattr(model, base_prefix(model))
    first = 0 if start is None else start.depth

    source = (FeatureBatches(start, encoded, batch_size, shuffle=False) if start is not None
              else Batches(encoded, batch_size, pad_id=pad_id, shuffle=False))
    chunks: list[torch.Tensor | None] = [None] * len(encoded)
    lengths = encoded.lengths

    def capture(_module, _inputs, output):
        raise _Captured(output[0] if isinstance(output, tuple) else output)

    target = base.embeddings if depth == 0 else layers[depth - 1]
    context = starting_at(model, first) if start is not None else contextlib.nullcontext()
    with context:
        handle = target.register_forward_hook(capture)
        try:
            for batch in source:
                index = batch.pop("index").tolist()
                batch.pop("labels", None)
                batch = {k: v.to(device) for k, v in batch.items()}
                try:
                    model(**batch)
                except _Captured as got:
                    states = got.states.float().cpu()
                else:  # pragma: no cover - the hook always fires
                    raise RuntimeError("the frozen layers' output was not captured")
                for row, i in enumerate(index):
                    chunks[i] = states[row, :lengths[i]].clone()
        finally:
            handle.remove()
    if was_training:
        model.train()
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    hidden = chunks[0].shape[-1] if chunks and chunks[0] is not None else 0
    states = torch.cat(chunks) if chunks else torch.zeros(0, hidden)  # type: ignore[arg-type]
    return Features(states.contiguous(), offsets, depth)


class FeatureBatches(Batches):
    """``Batches`` of cached features: ``inputs_embeds`` (padded with zeros), ``attention_mask``,
    ``labels`` and ``index``, bucketed and shuffled exactly as token batches of the same data."""

    def __init__(self, features: Features, encoded: Encoded, batch_size: int | None, *,
                 shuffle: bool, seed: int = 0, bucket: bool = True, drop_last: bool = False):
        if len(features) != len(encoded):
            raise ValueError(f"{len(features)} cached examples for {len(encoded)} encoded ones")
        super().__init__(encoded, batch_size, pad_id=0, shuffle=shuffle, seed=seed,
                         bucket=bucket, drop_last=drop_last)
        self.features = features

    def _collate(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        lengths = self.encoded.lengths[idx]
        width = int(lengths.max())
        hidden = self.features.states.shape[-1]
        embeds = torch.zeros(len(idx), width, hidden, dtype=self.features.states.dtype)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, (i, n) in enumerate(zip(idx, lengths)):
            embeds[row, :n] = self.features.example(int(i))
            mask[row, :n] = 1
        batch = {"inputs_embeds": embeds, "attention_mask": mask}
        if self.encoded.labels is not None:
            batch["labels"] = batch_labels(self.encoded.labels, idx, width)
        batch["index"] = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return batch


@torch.no_grad()
def agrees(model: nn.Module, encoded: Encoded, features: Features, *, pad_id: int,
           device: torch.device | None = None, atol: float = 1e-4) -> bool:
    """Whether ``model`` fed ``features`` gives the logits it gives from tokens, on a few
    examples (fp32, eval mode). Guards against a model whose body does more than the cache
    knows (extra inputs to its layers, embeddings used again further up)."""
    n = min(_CHECK_ROWS, len(encoded))
    if n == 0:
        return True
    device = device or next(model.parameters()).device
    rows = np.arange(n)
    sub = Encoded([encoded.input_ids[i] for i in rows],
                  None if encoded.token_type_ids is None else [encoded.token_type_ids[i] for i in rows],
                  None)
    sub_features = Features(features.states[:int(features.offsets[n])], features.offsets[:n + 1],
                            features.depth)
    was_training = model.training
    model.eval()
    try:
        plain = next(iter(Batches(sub, n, pad_id=pad_id, shuffle=False, bucket=False)))
        plain.pop("index")
        expected = model(**{k: v.to(device) for k, v in plain.items()}).logits.float()
        cached = next(iter(FeatureBatches(sub_features, sub, n, shuffle=False, bucket=False)))
        cached.pop("index")
        with starting_at(model, features.depth):
            got = model(**{k: v.to(device) for k, v in cached.items()}).logits.float()
    except Exception as err:  # noqa: BLE001 - a model that cannot run from features trains without
        log.info("the feature cache does not fit %s: %s", type(model).__name__, err)
        return False
    finally:
        if was_training:
            model.train()
    if expected.dim() == 3:  # a tag per token: padded positions' outputs mean nothing
        mask = plain["attention_mask"].to(device).bool()
        expected, got = expected[mask], got[mask]
    scale = max(1.0, float(expected.abs().max()))
    return bool(torch.allclose(got, expected, atol=atol * scale, rtol=1e-4))


# --- the store ----------------------------------------------------------------------------------


def model_fingerprint(name: str, revision: str | None = None) -> str:
    """Names a pretrained model's weights: the id and revision, and for a local directory the
    name, size and modification time of each of its files."""
    parts: list[Any] = [name, revision]
    path = Path(name).expanduser()
    if path.is_dir():
        parts.append(str(path.resolve()))
        for f in sorted(path.iterdir()):
            if f.is_file():
                st = f.stat()
                parts.append((f.name, st.st_size, st.st_mtime_ns))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


def features_key(model_id: str, data_key: str, depth: int) -> str:
    return hashlib.sha256(json.dumps([FORMAT, model_id, data_key, depth]).encode()).hexdigest()[:32]


def _memory_budget() -> int:
    """Bytes of features kept in memory: a quarter of the machine's memory, at most 8 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        total = 8 * 2**30
    return int(min(8 * 2**30, total // 4))


class FeatureStore:
    """Computed features by key, in memory (least recently used dropped past ``max_bytes``) and
    in ``directory`` when given. ``hits``/``misses`` count ``get`` lookups."""

    def __init__(self, directory: str | Path | None = None, max_bytes: int | None = None):
        self.directory = None if directory is None else Path(directory)
        self.max_bytes = _memory_budget() if max_bytes is None else int(max_bytes)
        self._memory: OrderedDict[str, Features] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"features-{key}.safetensors"

    def get(self, key: str) -> Features | None:
        found = self._memory.get(key)
        if found is None:
            found = self._load(key)
            if found is not None:
                self._remember(key, found)
        else:
            self._memory.move_to_end(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: str, features: Features) -> None:
        self._remember(key, features)
        path = self._path(key)
        if path is None:
            return
        from safetensors.torch import save_file

        try:
            atomic_write(path, lambda tmp: save_file(
                {"states": features.states, "offsets": torch.from_numpy(features.offsets)},
                str(tmp), metadata={"depth": str(features.depth), "format": str(FORMAT)}))
        except OSError as err:  # a full or read-only disk costs speed, not the run
            log.warning("could not write the feature cache %s (%s)", path, err)

    def _remember(self, key: str, features: Features) -> None:
        self._memory[key] = features
        self._memory.move_to_end(key)
        while len(self._memory) > 1 and sum(f.nbytes for f in self._memory.values()) > self.max_bytes:
            self._memory.popitem(last=False)

    def _load(self, key: str) -> Features | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                states, offsets = f.get_tensor("states"), f.get_tensor("offsets").numpy()
            return Features(states, offsets, int(meta["depth"]))
        except Exception as err:  # noqa: BLE001 - a damaged cache file is recomputed
            log.warning("ignoring an unreadable feature cache file %s (%s)", path, err)
            return None

    def lower(self, keys_by_depth: dict[int, str], depth: int) -> Features | None:
        """The cached features of the deepest depth below ``depth`` among ``keys_by_depth``."""
        for d in sorted((d for d in keys_by_depth if d < depth), reverse=True):
            found = self._memory.get(keys_by_depth[d])
            if found is None:
                found = self._load(keys_by_depth[d])
            if found is not None:
                return found
        return None
