# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test pytest lint format bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "asyncbackup needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## A real backup against a local S3 server: interrupted, checkpoint shown, resumed.
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## Lint, type-check and run every test against a local S3 server.
test: $(STAMP) lint pytest

pytest: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Benchmarks: asyncbackup against s5cmd, rclone and the AWS CLI on a local SeaweedFS (see README).
## Installs the peers under benchmarks/.work/; BENCH_ARGS=--quick checks the harness in ~2 min.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.install
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache demo-work
