# goflame: `make demo` records a real profile of an example Go program; `make test` runs the fast tier.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO_OUT ?= out

.PHONY: venv sysdeps demo test matrix lint bench clean toolchains flake

venv: $(STAMP)
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# System packages the tests use as oracles (perf, chromium, tmux, Go 1.19). Root only; no-op if present.
sysdeps:
	@bash scripts/sysdeps.sh

demo: venv
	@bash examples/demo.sh $(BIN) $(DEMO_OUT)

test: venv sysdeps
	$(BIN)/ruff check goflame tests bench scripts
	$(BIN)/python -m pytest -q -x

# The fast tier's health: run it RUNS times, print each test's failure count (FLAKE_ARGS=--load
# keeps one CPU busy meanwhile).
RUNS ?= 10
flake: venv sysdeps
	$(BIN)/python scripts/flake.py --runs $(RUNS) $(FLAKE_ARGS)

# The Go-version matrix: every toolchain 1.19, 1.21 ... 1.27, every build flavour.
matrix: venv sysdeps
	$(BIN)/python -m pytest -q -m matrix

# Install every toolchain of the matrix now rather than on first use (tests install on demand).
toolchains: venv
	$(BIN)/python -c 'import sys; sys.path.insert(0, "tests"); import gotoolchain as gt; [print(gt.goroot(m)) for m in gt.MATRIX]'

lint: venv
	$(BIN)/ruff check goflame tests bench scripts

bench: venv
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
