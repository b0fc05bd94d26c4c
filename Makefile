# Two entry points: `make demo` and `make test`. Each creates or updates .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2
# Local runs never talk to SLURM, but Snakemake imports every installed executor plugin, and
# snakemake-executor-plugin-slurm 2.6 runs `scontrol show config` on import: where slurm is
# installed and /etc/slurm/slurm.conf names a controller that does not answer, every call
# waits ~9 s for it. An empty config makes scontrol give up at once (see the README).
LOCAL  := SLURM_CONF=/dev/null

.PHONY: demo test test-fast lint format clean-demo

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(LOCAL) $(BIN)/snakemake --cores $(CORES) --workflow-profile profiles/default

test: $(STAMP)
	$(BIN)/python -m pytest tests

# The inner loop: everything but the workflow runs, training, UMAP fits, TensorFlow and SLURM.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow and not slurm"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check .
	$(LOCAL) $(BIN)/snakemake --lint
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format workflow/scripts tests benchmarks
	$(BIN)/snakefmt .
