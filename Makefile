# Two commands on a fresh machine: `make demo` runs a small real job, `make test` runs the tests.
# Both create .venv when it is missing. torch is installed first, pinned to the CPU build that
# this machine keeps on disk: a plain `torch` requirement would pull a multi-GB CUDA build.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= ../shared/data/sst2
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.pretune-installed

.PHONY: env demo test test-slow docs clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# Tune the packaged MiniLM on 2,000 SST-2 rows for 5 minutes, tuned on validation.csv,
# then report the best model's accuracy on test.csv. Run it again to continue the search.
DEMO_OUT    ?= runs/demo
DEMO_BUDGET ?= 5m

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pretune tune \
	    --train $(DATA)/train.csv --train-rows 2000 --valid $(DATA)/validation.csv \
	    --budget $(DEMO_BUDGET) --out $(DEMO_OUT)
	HF_HUB_OFFLINE=1 $(BIN)/pretune predict $(DEMO_OUT) --input $(DATA)/test.csv \
	    --output $(DEMO_OUT)/test-predictions.csv
	$(BIN)/python -c "import pandas as p; d = p.read_csv('$(DEMO_OUT)/test-predictions.csv'); \
	    print(f'test accuracy of the best model: {(d.prediction.astype(str) == d.label.astype(str)).mean():.4f} on {len(d)} rows')"

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

# The documentation site: the settings page is written from pretune/config.py and the search
# space first, then mkdocs builds docs/ into site/ and fails on any warning (a broken link, an
# anchor that is gone, a page left out of the navigation).
DOCS_STAMP := $(VENV)/.pretune-docs-installed

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python docs/gen_settings.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet

clean:
	rm -rf $(DEMO_OUT) site
