# Two commands set everything up on a fresh machine with Python 3.11+:
#   make demo   -> creates .venv, installs, runs the end-to-end demo on the embedded corpus (offline)
#   make test   -> creates .venv, installs, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= configs/demo.yaml

.PHONY: install browser demo data lint test bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt
	# torch first and pinned: the CPU build installs from a local file; an unpinned torch pulls CUDA wheels
	$(BIN)/python -m pip install -q torch==2.13.0 || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/plm run $(CONFIG)

data: install
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/plm data $(CONFIG)

# headless Chromium for the dashboard's browser tests (they skip with the reason when it is missing, and fail
# when CI=true); their screenshots are kept in build/test-artifacts/dashboard/ ($PLM_TEST_ARTIFACTS/dashboard/)
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "chromium not installed: the dashboard browser tests will skip, or fail with CI=true (apt-get install chromium chromium-driver)"

# ruff (pyflakes, pycodestyle, bugbear, import order, pyupgrade) on the whole tree, mypy on the library
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install browser
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: install
	$(BIN)/python bench/data_path.py --size-gb 1

clean:
	rm -rf work demo_work .pytest_cache
