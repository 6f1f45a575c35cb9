"""Soak: 50 short trials in one process neither grow its memory nor its open files, and the run
directory ends with one best model, not fifty."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import pytest

import pretune

from .helpers import NARROW, data_files

pytestmark = pytest.mark.slow

TRIALS = 50


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_fifty_trials_keep_memory_and_open_files_flat_and_one_best_model(tiny_model_dir, tmp_path):
    train, valid = data_files(tmp_path / "data")
    out = tmp_path / "run"
    samples: list[tuple[int, int, int]] = []  # (trial, rss bytes, open files), after each trial
    saves = []  # trials whose model replaced best/

    def after_trial(report) -> None:
        samples.append((report.number, rss_bytes(), open_files()))
        if report.is_best:
            saves.append(report.number)

    # The loss (not accuracy, which this toy task ties) makes later trials replace best/ often.
    result = pretune.tune(
        model=tiny_model_dir, train=str(train), valid=str(valid), out=out,
        budget=f"{TRIALS}trials", space=NARROW, fixed={"epochs": 1, "threads": 1},
        metric="loss", pruner="none", precision="fp32", lr_range_test=False,
        on_trial=after_trial,
    )
    assert len(samples) == TRIALS and len(result.trials) == TRIALS
    assert (result.trials["state"] == "COMPLETE").all(), result.trials["fail_reason"].dropna()
    assert len(saves) >= 3, saves  # best/ was replaced, not only written once
    assert result.seed_check is not None  # the final pick ran, with its kept re-runs

    early, late = samples[10:20], samples[40:50]
    rss_early = statistics.mean(s[1] for s in early)
    rss_late = statistics.mean(s[1] for s in late)
    fds_early = statistics.mean(s[2] for s in early)
    fds_late = statistics.mean(s[2] for s in late)
    measured = (f"RSS {rss_early / 2**20:.1f} -> {rss_late / 2**20:.1f} MB, open files "
                f"{fds_early:.1f} -> {fds_late:.1f} (mean of trials 10-19 -> 40-49); best/ "
                f"written by trials {saves}")
    print(measured)
    assert rss_late <= 1.15 * rss_early, measured
    assert fds_late <= fds_early + 3, measured

    # One best model, the kept trials' (no more than --keep, default 5) and what the final
    # assembly built: one config.json and one weights file each (cache/ holds data, not
    # models), and no half-written, replaced or seed-check copies beside them.
    models = [p.relative_to(out) for p in out.rglob("*")
              if p.name in ("config.json", "model.safetensors") or p.suffix == ".bin"]
    places = sorted({p.parent for p in models})
    assert sorted(models) == sorted(q / n for q in places for n in ("config.json",
                                                                      "model.safetensors"))
    kept = [q for q in places if q.parts[0] == "kept"]
    built = [q for q in places if q.parts[0] == "assembly"]
    assert Path("best") in places and len(kept) == 5
    assert len(places) == 1 + len(kept) + len(built), places
    leftovers = [p.name for p in out.iterdir()
                 if p.name.startswith(("best.tmp-", "best.old-", "seed_check", ".trials.csv.tmp"))]
    assert leftovers == []
    assert result.best_trial is not None and (out / "best" / "pretune.yaml").is_file()
