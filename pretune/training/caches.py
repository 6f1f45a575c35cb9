"""What runs on the same data share: tokenized data and frozen features.

A search makes one ``RunCaches`` on its run directory's ``cache/`` folder and hands it to every
trial, so tokenization happens once per data set and tokenizer, and the frozen part of a network
runs once per data set and depth. Other processes working in the same run directory (a resumed
search, parallel workers) find the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretune.data.cache import TokenCache, shared_cache
from pretune.data.tokenize import Encoded
from pretune.models.features import FeatureStore, Features, compute_features, features_key


class RunCaches:
    """A token cache and a feature store, in ``directory`` when given (else in memory)."""

    def __init__(self, directory: str | Path | None = None, *, tokens: TokenCache | None = None,
                 features: FeatureStore | None = None):
        self.directory = None if directory is None else Path(directory)
        self.tokens = tokens or TokenCache(self.directory)
        self.features = features or FeatureStore(self.directory)

    @classmethod
    def for_one_run(cls) -> "RunCaches":
        """Tokenized data kept in this process (cheap, and reused by the next run on the same
        data); features kept for this run only (they can take gigabytes)."""
        return cls(tokens=shared_cache(), features=FeatureStore())

    def features_for(self, model: Any, model_id: str, data_key: str, encoded: Encoded,
                     depth: int, pad_id: int) -> Features:
        """The hidden states after ``depth`` frozen layers for ``encoded``: from the store, else
        computed (from a lower depth's features when the store has them) and stored."""
        key = features_key(model_id, data_key, depth)
        found = self.features.get(key)
        if found is not None:
            return found
        lower = self.features.lower(
            {d: features_key(model_id, data_key, d) for d in range(depth)}, depth)
        found = compute_features(model, encoded, depth, pad_id=pad_id, start=lower)
        self.features.put(key, found)
        return found
