"""Deploying the SST-2 best model: pretune predict (torch) against ONNX Runtime fp32 and int8.

Takes a run directory whose best/ is the packaged MiniLM fine-tuned on SST-2 (a ``make demo``
run, ``runs/demo``), exports it with ``pretune.deploy.export.export_onnx`` (``--quantize
int8``; the export checks itself on 64 validation rows), then predicts ``test.csv`` (1,821 rows)
with each contender at batch 1 and batch 32, one after the other in this process: ``pretune
predict`` in fp32 and in bf16 autocast (where the CPU has it), and the ONNX export through
``pretune.deploy.runtime.predict`` in fp32 and int8. Each time is the whole call from the CSV
to the table (reading, preprocessing, tokenizing, the model), the best of ``--repeats``; rows
per second = 1,821 / seconds. Accuracy is each contender's on the test labels, at each batch
size (dynamic int8 quantizes activations with one scale per batch, so padding and neighbours
can change its predictions). torch and ONNX
Runtime both use ``--threads`` threads (default 1: on a shared 2-core machine, torch with 2
threads slows down by an order of magnitude whenever another process holds a core).

Run it (from the repo root; the run's data paths are relative to where it was trained, so run
it from there)::

    .venv/bin/python bench/deploy.py --run runs/demo                 # ~5 minutes on 2 cores
    .venv/bin/python bench/deploy.py --run runs/demo --rows 300      # a quick look

Exit status 0, or 2 when the data or the run is missing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import check_data, data_files, fail, print_table  # noqa: E402 - offline switches first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo", help="run directory with best/ (SST-2)")
    parser.add_argument("--rows", type=int, default=None, help="first N test rows only")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    check_data()
    if not (Path(args.run) / "best" / "config.json").is_file():
        fail(f"skipped: {args.run}/best holds no model; run make demo first or pass --run.")

    import pandas as pd
    import torch

    from pretune.deploy.export import export_onnx
    from pretune.deploy.runtime import predict as onnx_predict
    from pretune.training.run import predict as torch_predict

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="pretune-deploy-"))
    test = pd.read_csv(data_files()["test"])
    if args.rows:
        test = test.head(args.rows)
    source = tmp / "test.csv"
    test.to_csv(source, index=False)
    truth = test["label"].astype(str).to_numpy()

    start = time.perf_counter()
    result = export_onnx(args.run, tmp / "onnx", quantize="int8")
    print(f"export: {time.perf_counter() - start:.1f} s; torch vs onnx largest logit difference "
          f"{result.max_diff:.2g} on {result.rows} validation rows; int8 {result.int8}")

    from pretune.training.device import cpu_has_bf16

    bf16 = cpu_has_bf16()
    contenders = {
        "torch fp32": lambda b: torch_predict(args.run, source, batch_size=b, precision="fp32"),
        **({"torch bf16": lambda b: torch_predict(args.run, source, batch_size=b, precision="bf16")}
           if bf16 else {}),
        "onnxruntime fp32": lambda b: onnx_predict(tmp / "onnx", source, batch_size=b,
                                                        threads=args.threads),
        "onnxruntime int8": lambda b: onnx_predict(tmp / "onnx", source, batch_size=b, int8=True,
                                                        threads=args.threads),
    }
    rows = []
    for name, run in contenders.items():
        speeds, accuracies = [], []
        for batch in (1, 32):
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                frame = run(batch)
                best = min(best, time.perf_counter() - start)
            speeds.append(f"{len(test) / best:.0f}")
            accuracies.append(f"{(frame['prediction'].astype(str).to_numpy() == truth).mean():.4f}")
        rows.append([name, *speeds, *accuracies])
    # int8 quantizes activations per batch, so its accuracy can depend on the batch size
    print_table(["contender", "rows/s batch 1", "rows/s batch 32", "accuracy batch 1",
                 "accuracy batch 32"], rows)


if __name__ == "__main__":
    main()
