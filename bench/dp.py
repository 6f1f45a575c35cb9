"""Differential privacy on SST-2: one fixed `pretune train` recipe at several epsilons.

Protocol
--------
* Data: SST-2 from ``../shared/data/sst2``; ``--rows`` training rows (default 2,000) sampled
  with ``df.sample(rows, random_state=0)``, as the other benches do; ``validation.csv`` for
  the run's evaluations, ``test.csv`` for the score reported.
* Model: the packaged all-MiniLM-L6-v2.
* Runs: ``pretune train`` (the command, in a subprocess each) with one recipe for every run:
  ``--transfer`` (default ``linear_probe``: the head alone trains on the frozen encoder's
  features, the setting where DP-SGD's noise is smallest next to the signal), AdamW at
  ``--lr`` (default 2e-2: DP-SGD wants a larger rate than plain fine-tuning), ``--batch-size``
  (default 256: larger batches average the noise down), ``--epochs`` (default 10), a linear
  schedule without warm-up, fp32, seed 0. Once without DP, then with ``--dp-epsilon`` at each of
  ``--epsilons`` (default 1 3 8), delta 1 / rows and per-example clipping norm 1.0.
* Reported per run: validation and test accuracy, the epsilon spent (from the model's
  ``pretune.yaml``), the noise multiplier and the seconds of the run.

Run it (from the repo root)::

    .venv/bin/python bench/dp.py --rows 2000 --epochs 10 --lr 2e-2

Exit status: 0 when every run finished, 1 when one failed, 2 when the data is missing or an
option is wrong.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (  # noqa: E402 - bench/common.py sets the offline switches first
    REPO, check_data, data_files, fail, model_dir, print_table, test_accuracy, train_sample)


def one_run(train_csv: Path, epsilon: float | None, args: argparse.Namespace, out: Path) -> dict:
    """``pretune train`` with the recipe, at ``epsilon`` (None: without DP); its numbers."""
    import yaml

    command = [sys.executable, "-m", "pretune.cli.main", "train", "--model", model_dir(),
               "--train", str(train_csv), "--valid", str(data_files()["validation"]),
               "--out", str(out), "--transfer", args.transfer, "--lr", str(args.lr),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--schedule", "linear", "--precision", "fp32", "--seed", "0",
               "--set", "warmup_ratio=0.0"]
    if args.transfer == "freeze_bottom":
        command += ["--set", f"freeze_layers={args.freeze_layers}"]
    if args.threads:
        command += ["--set", f"threads={args.threads}"]
    if epsilon is not None:
        command += ["--dp-epsilon", str(epsilon)]
    started = time.perf_counter()
    code = subprocess.run(command, cwd=REPO).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"pretune train exited with status {code}")
    meta = yaml.safe_load((out / "pretune.yaml").read_text())
    spent = meta.get("privacy") or {}
    return {"epsilon": "none" if epsilon is None else f"{epsilon:g}",
            "spent": f"{spent['epsilon']:.3f}" if spent else "-",
            "noise": f"{spent['noise_multiplier']:.3f}" if spent else "-",
            "valid": float(meta["metrics"]["accuracy"]),
            "test": test_accuracy(out, data_files()["test"]), "seconds": seconds}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="training rows (default 2000)")
    parser.add_argument("--epochs", type=float, default=10.0,
                        help="epochs of every run (default 10)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0],
                        help="DP budgets to run besides the run without DP (default 1 3 8)")
    parser.add_argument("--transfer", default="linear_probe",
                        choices=["linear_probe", "freeze_bottom", "full", "lora"])
    parser.add_argument("--freeze-layers", type=int, default=5,
                        help="with --transfer freeze_bottom: frozen layers (default 5 of 6)")
    parser.add_argument("--lr", type=float, default=2e-2, help="learning rate (default 2e-2)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.rows < 10 or args.epochs <= 0 or any(e <= 0 for e in args.epsilons):
        fail("--rows must be at least 10, --epochs and every --epsilons above 0.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_data()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="pretune-dp-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    train_csv = train_sample(out_dir, args.rows)
    rows, failed = [], False
    for epsilon in [None, *args.epsilons]:
        name = "no-dp" if epsilon is None else f"eps{epsilon:g}"
        print(f"=== {name} ===", flush=True)
        try:
            rows.append(one_run(train_csv, epsilon, args, out_dir / name))
        except RuntimeError as err:
            print(f"{name} failed: {err}", file=sys.stderr)
            failed = True
    print(f"\nSST-2, {args.rows} training rows, all-MiniLM-L6-v2, {args.transfer}, lr {args.lr:g}, "
          f"batch {args.batch_size}, {args.epochs:g} epochs; runs in {out_dir}")
    print_table(("epsilon", "spent", "noise", "valid acc", "test acc", "seconds"),
                [(r["epsilon"], r["spent"], r["noise"], f"{r['valid']:.4f}", f"{r['test']:.4f}",
                  f"{r['seconds']:.0f}") for r in rows])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
