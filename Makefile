# Two commands on a fresh machine: `make demo` runs a small real job, `make test` runs the tests.
# Both create .venv when it is missing. torch is installed first, pinned to the CPU build that
# this machine keeps on disk: a plain `torch` requirement would pull a multi-GB CUDA build.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= ../shared/data/sst2
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.pretune-installed

.PHONY: env demo test test-slow clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# Fine-tune the packaged MiniLM on 2,000 SST-2 rows and report validation accuracy.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pretune train \
	    --train $(DATA)/train.csv --train-rows 2000 --valid $(DATA)/validation.csv \
	    --out runs/demo --epochs 3 --lr 1e-4 --batch-size 32
	$(BIN)/pretune predict runs/demo --input $(DATA)/test.csv --output runs/demo/test-predictions.csv
	$(BIN)/python -c "import pandas as p; d=p.read_csv('runs/demo/test-predictions.csv'); print(f'test accuracy: {(d.prediction.astype(str)==d.label.astype(str)).mean():.4f} on {len(d)} rows')"

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

clean:
	rm -rf runs/demo
