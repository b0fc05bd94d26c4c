# Two entry points: `make demo` and `make test`. Each creates or updates .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2

.PHONY: demo test test-fast lint format clean-demo

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --workflow-profile profiles/default

test: $(STAMP)
	$(BIN)/python -m pytest tests

# The inner loop: everything but the workflow runs, training, UMAP fits, TensorFlow and SLURM.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow and not slurm"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format workflow/scripts tests benchmarks
	$(BIN)/snakefmt .
