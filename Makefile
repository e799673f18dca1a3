# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## Run the whole pipeline on the bundled Alzheimer's cohort into runs/demo.
demo: $(STAMP)
	$(BIN)/discovery run --out runs/demo

## Lint and run the test suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n auto

lint: $(STAMP)
	$(BIN)/ruff check .

## Baseline yardstick over the three scenarios x 3 seeds.
benchmark: $(STAMP)
	$(BIN)/discovery benchmark --scenario alzheimers,null,confounded --seeds 0,1,2 \
		--methods wilcoxon,pseudobulk,logreg_l1,pydeseq2 \
		--out benchmarks/results/baselines.md

clean:
	rm -rf $(VENV) runs
