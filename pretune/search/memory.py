"""The memory of this process: measuring it during a trial, and giving it back after one.

Both read and free memory as ``pretune.training.memory`` does (one way of measuring for the
estimates, the trials' peaks and the soft cap), loaded when first called: torch is in the
process by then, since a trial has started."""

from __future__ import annotations


def rss_mb() -> float:
    """Resident memory of this process in MB (current, not peak)."""
    from pretune.training.memory import MB, rss_bytes

    return rss_bytes() / MB


def release_memory() -> None:
    """Collect garbage and hand freed memory back: the heap to the system, torch's CUDA cache."""
    from pretune.training.memory import free_memory

    free_memory()
