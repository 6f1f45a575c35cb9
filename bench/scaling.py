"""How a trial's time grows with its data: per training row, across row counts and text lengths.

A trial's training time should grow linearly in the rows (the same work per row, however many),
so the time per row should stay flat across row counts; and per row it should grow with the
text's length as the model's FLOPs do (linearly in the tokens, plus attention's quadratic term),
once the length is long enough that the fixed cost of a step stops dominating.

Two sweeps, each a ``pretune.training.run.fit`` of one epoch with pretune's defaults (batch 32,
bf16 where the CPU has it, fused AdamW), evaluated once at the end on 200 validation rows:

* rows: 2,000, 8,000 and 32,000 training rows of 32 tokens each;
* length: 2,000 rows of 32, 128 and 256 tokens each.

Every row has exactly its sweep's length: SST-2 training sentences, drawn at random with a fixed
seed, are joined until they have more words than the length, and ``max_length`` cuts them there
(so nothing is padded). The label is the first sentence's; the task is only there to be timed.
Seconds per row count the training phases (data, forward, backward, optimizer) measured by
``pretune.training.timing``, so the evaluation and model loading do not blur the per-row cost.

Run it (from the repo root)::

    PYTHONPATH=. .venv/bin/python bench/scaling.py            # the full sweeps: an hour or more on 2 cores
    PYTHONPATH=. .venv/bin/python bench/scaling.py --quick    # 200/400/800 rows; 200 rows per length

Exit status 0, or 2 when the data is missing or an option is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import check_data, data_files, model_dir, print_table  # noqa: E402 - sets offline switches

FULL = {"rows": (2000, 8000, 32000), "lengths": (32, 128, 256), "length_rows": 2000}
QUICK = {"rows": (200, 400, 800), "lengths": (32, 128, 256), "length_rows": 200}
BASE_LENGTH = 32
VALID_ROWS = 200


def rows_of(length: int, n: int, seed: int, out: Path) -> Path:
    """A CSV of ``n`` texts of more than ``length`` words each (SST-2 sentences joined)."""
    import numpy as np
    import pandas as pd

    path = out / f"rows-{length}-{n}-{seed}.csv"
    if path.is_file():
        return path
    source = pd.read_csv(data_files()["train"])
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    picks = iter(rng.integers(0, len(source), size=n * (length + 2)))
    for _ in range(n):
        first = next(picks)
        words = str(source.text.iloc[first]).split()
        while len(words) <= length:
            words += str(source.text.iloc[next(picks)]).split()
        texts.append(" ".join(words))
        labels.append(source.label.iloc[first])
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def trial(train_csv: Path, valid_csv: Path, length: int, threads: int) -> dict:
    """One epoch of a default trial; its training seconds, tokens and precision."""
    from pretune.api import build_config
    from pretune.training import timing
    from pretune.training.caches import RunCaches
    from pretune.training.run import fit

    config = build_config(None, dict(model=model_dir(), train=str(train_csv), valid=str(valid_csv),
                                     max_length=length, epochs=1, evals_per_epoch=1,
                                     patience=None, threads=threads))
    started = time.perf_counter()
    with timing.measure() as clock:
        result = fit(config, caches=RunCaches())
    wall = time.perf_counter() - started
    training = sum(clock.seconds[p] for p in ("data", "forward", "backward", "optimizer"))
    batches = clock.batches["train"]
    return {"rows": sum(b.rows for b in batches), "tokens": sum(b.tokens for b in batches),
            "padded": sum(b.padded for b in batches), "train_s": training, "wall_s": wall,
            "precision": result.train_result.precision,
            "accuracy": result.metrics.get("accuracy", float("nan"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Trial time per training row across row counts "
                                                 "and text lengths.")
    parser.add_argument("--quick", action="store_true",
                        help="small sweeps (200, 400, 800 rows; 200 rows per length)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    check_data()
    from throughput import matmul_rates, quiet

    quiet()
    from transformers import AutoConfig

    from pretune.training.flops import training_flops

    plan = QUICK if args.quick else FULL
    model_config = AutoConfig.from_pretrained(model_dir(), num_labels=2)
    work = Path(tempfile.mkdtemp(prefix="scaling-"))
    valid = rows_of(BASE_LENGTH, VALID_ROWS, seed=1, out=work)
    cells = [("rows", n, BASE_LENGTH) for n in plan["rows"]]
    cells += [("length", plan["length_rows"], L) for L in plan["lengths"]]
    results, done = [], {}
    for sweep, n, length in cells:
        if (n, length) not in done:  # a cell both sweeps share runs once
            print(f"{sweep}: {n} rows of {length} tokens", flush=True)
            done[n, length] = trial(rows_of(length, n, seed=0, out=work), valid, length,
                                    args.threads)
        results.append((sweep, n, length, done[n, length]))
    rates = matmul_rates(args.threads)

    base = next(g["train_s"] / g["rows"] for s, n, L, g in results if s == "length" and L == BASE_LENGTH)
    base_flops = training_flops(model_config, 1, BASE_LENGTH)
    table = []
    for sweep, n, length, got in results:
        per_row = got["train_s"] / got["rows"]
        flops = training_flops(model_config, got["rows"], length)
        table.append((sweep, n, length, got["precision"], f"{got['train_s']:.1f}",
                      f"{got['wall_s']:.1f}", f"{1000 * per_row:.1f}",
                      f"{per_row / base:.2f}x",
                      f"{training_flops(model_config, 1, length) / base_flops:.2f}x",
                      f"{100 * flops / got['train_s'] / rates[got['precision']]:.1f}%"))
    print(f"\nmatmul limit: bf16 {rates['bf16'] / 1e12:.2f}, fp32 {rates['fp32'] / 1e12:.2f} "
          f"TFLOP/s; {args.threads} threads of {os.cpu_count()} cores")
    print("ms/row: training seconds (data, forward, backward, optimizer) per training row; "
          f"vs {BASE_LENGTH}: against the {BASE_LENGTH}-token cell of the length sweep; FLOPs "
          "vs: the model FLOPs per row against that cell's; MFU: training FLOPs per training second")
    print_table(("sweep", "rows", "tokens", "precision", "train s", "wall s", "ms/row",
                 "time vs 32", "FLOPs vs 32", "MFU"), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
