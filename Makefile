# Every target creates the virtual environment itself, so a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint fuzz bench bench-quick model clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/plcbridge demo

# Two pytest-xdist workers: most tests wait on sockets, subprocesses and sped-up plants, so two
# share a 2-core box well; a test marked serial runs alone (tests/conftest.py). `-n 0` (or a plain
# `pytest`) runs in one process.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check bridge adapters bench models
	$(BIN)/mypy bridge adapters bench models

# The fuzz targets (config files, Modbus frames, OPC UA chunks, HTTP) with many more cases
# than `make test` runs (FUZZ_CASES per target).
fuzz: $(STAMP)
	FUZZ_CASES=5000 $(BIN)/python -m pytest -q -p no:cacheprovider -k fuzz tests/test_hostile_modbus.py tests/test_hostile_opcua.py tests/test_hostile_api.py tests/test_fuzz_config.py

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench --quick

model: $(STAMP)
	$(BIN)/python -m models.recipes.pump_pca --out models/pump_pca.onnx

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
