"""Where trials run and in which precision."""

from __future__ import annotations

import contextlib
import functools
import os

import torch


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX), where autocast pays."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run uses for the setting ``precision`` on ``device``.

    ``auto``: bf16 on GPUs that have it and on CPUs that compute it natively (AVX-512 BF16,
    AMX), fp16 with loss scaling on older GPUs, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset limit)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads: ``threads``, or every core this process may use."""
    torch.set_num_threads(threads or available_cores())
