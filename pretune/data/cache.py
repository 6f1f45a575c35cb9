"""Tokenization cache: tokenize a data set once, reuse it in every trial and every process.

A search trains the same data dozens of times; only the model's settings change between trials.
``TokenCache`` keys tokenized data by a hash of

- the texts (and second texts of pairs), in order,
- the tokenizer: its full serialized definition for fast tokenizers (vocabulary, normalizer,
  pre-tokenizer, post-processor: lowercasing or special tokens that differ give another key),
  else its vocabulary and init arguments,
- the settings that shape the result: ``max_length``, truncation, whether token type ids are kept,
- ``FORMAT``, bumped whenever what ``encode`` produces changes,

and keeps results in memory (this process) and, given a directory, on disk as ``.npz`` files
(plain integer arrays, read with ``allow_pickle=False``), written atomically so that several
processes can share one directory. Labels are not part of the key: they are attached on the way
out. ``choose_max_length``'s measurement is cached the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pretune.data.task import Split
from pretune.data.tokenize import Encoded, choose_max_length, encode, label_array
from pretune.outdir import atomic_write

log = logging.getLogger(__name__)

FORMAT = 1  # of the cached arrays and of encode's output
_MEMORY_ITEMS = 32  # tokenized sets kept in memory, least recently used dropped first


def texts_digest(texts: Sequence[str], pairs: Sequence[str] | None) -> str:
    """sha256 of the texts (and pairs) in order; a text boundary cannot be forged by content."""
    h = hashlib.sha256()
    for seq in (texts, pairs):
        if seq is None:
            h.update(b"\x00none")
            continue
        h.update(f"\x00{len(seq)}".encode())
        for text in seq:
            data = text.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides how ``tokenizer`` splits text into ids."""
    cached = getattr(tokenizer, "_pretune_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        # Its truncation and padding state is whatever the last call left (every call sets
        # what it needs), so clear both before serializing.
        backend.no_truncation()
        backend.no_padding()
        h.update(backend.to_str().encode())
    else:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    init = getattr(tokenizer, "init_kwargs", {}) or {}
    # Settings, not where the files were: a copied tokenizer is the same tokenizer.
    simple = {k: v for k, v in init.items()
              if isinstance(v, (str, int, float, bool, type(None)))
              and not k.endswith(("_file", "_path", "name_or_path"))}
    h.update(json.dumps(simple, sort_keys=True, default=str).encode())
    for name in ("model_input_names", "truncation_side", "padding_side", "all_special_ids"):
        h.update(repr(getattr(tokenizer, name, None)).encode())
    digest = h.hexdigest()
    try:
        tokenizer._pretune_fingerprint = digest
    except AttributeError:  # pragma: no cover - a tokenizer that refuses attributes
        pass
    return digest


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([FORMAT, *parts], default=str).encode()).hexdigest()[:32]


class TokenCache:
    """Tokenized data sets and measured max lengths, in memory and optionally in ``directory``.

    ``hits`` and ``misses`` count lookups of ``encode`` (memory or disk hits both count).
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = None if directory is None else Path(directory)
        self._memory: OrderedDict[str, Encoded] = OrderedDict()
        self._lengths: dict[str, int] = {}
        self.hits = 0
        self.misses = 0

    # -- max_length ---------------------------------------------------------------------------

    def max_length(self, split: Split, tokenizer: Any, cap: int | None = None) -> int:
        """``choose_max_length(split, tokenizer, cap)``, measured once per data and tokenizer."""
        key = _key("max_length", texts_digest(split.texts, split.pairs),
                   tokenizer_fingerprint(tokenizer), cap)
        if key in self._lengths:
            return self._lengths[key]
        path = self._path(f"max-length-{key}.json")
        if path is not None and path.is_file():
            try:
                value = int(json.loads(path.read_text())["max_length"])
                self._lengths[key] = value
                return value
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring an unreadable cache file %s", path)
        value = choose_max_length(split, tokenizer, cap=cap)
        self._lengths[key] = value
        if path is not None:
            _write_atomic(path, lambda f: f.write(json.dumps({"max_length": value}).encode()))
        return value

    # -- encode -------------------------------------------------------------------------------

    def data_key(self, split: Split, tokenizer: Any, max_length: int) -> str:
        """The key of ``split`` tokenized by ``tokenizer`` at ``max_length`` (labels aside)."""
        return _key("encode", texts_digest(split.texts, split.pairs),
                    tokenizer_fingerprint(tokenizer), int(max_length), "longest_first")

    def encode(self, split: Split, tokenizer: Any, max_length: int) -> Encoded:
        """``encode(split.texts, split.pairs, split.labels, tokenizer, max_length)``, cached."""
        key = self.data_key(split, tokenizer, max_length)
        found = self._memory.get(key)
        if found is None:
            found = self._load(key, len(split))
        if found is None:
            self.misses += 1
            found = encode(split.texts, split.pairs, None, tokenizer, max_length)
            self._save(key, found)
        else:
            self.hits += 1
        self._memory[key] = found
        self._memory.move_to_end(key)
        while len(self._memory) > _MEMORY_ITEMS:
            self._memory.popitem(last=False)
        return Encoded(input_ids=found.input_ids, token_type_ids=found.token_type_ids,
                       labels=None if split.labels is None else label_array(split.labels))

    def _path(self, name: str) -> Path | None:
        return None if self.directory is None else self.directory / name

    def _load(self, key: str, n: int) -> Encoded | None:
        path = self._path(f"tokens-{key}.npz")
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                ids, offsets = data["ids"], data["offsets"]
                types = data["types"] if "types" in data.files else None
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring an unreadable cache file %s (%s)", path, err)
            return None
        if len(offsets) != n + 1:
            log.warning("ignoring cache file %s: it holds %d rows, not %d", path,
                        len(offsets) - 1, n)
            return None
        bounds = offsets[1:-1]
        return Encoded(
            input_ids=[row.tolist() for row in np.split(ids, bounds)],
            token_type_ids=None if types is None else [row.tolist() for row in np.split(types, bounds)],
            labels=None,
        )

    def _save(self, key: str, enc: Encoded) -> None:
        path = self._path(f"tokens-{key}.npz")
        if path is None:
            return
        offsets = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum(enc.lengths, out=offsets[1:])
        arrays = {"ids": np.fromiter((t for row in enc.input_ids for t in row), dtype=np.int64,
                                     count=int(offsets[-1])).astype(np.int32),
                  "offsets": offsets}
        if enc.token_type_ids is not None:
            arrays["types"] = np.fromiter((t for row in enc.token_type_ids for t in row),
                                          dtype=np.int64, count=int(offsets[-1])).astype(np.int8)
        try:
            _write_atomic(path, lambda f: np.savez(f, **arrays))
        except OSError as err:  # a full or read-only disk costs speed, not the run
            log.warning("could not write the token cache %s (%s)", path, err)


def _write_atomic(path: Path, write) -> None:
    """``write(file)`` into an open binary file that becomes ``path`` atomically."""
    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    atomic_write(path, to_file)


_SHARED = TokenCache()


def shared_cache() -> TokenCache:
    """The process-wide in-memory cache, used when a caller gives none."""
    return _SHARED
