# The only commands: a developer and CI run the same ones.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint typecheck check bench soak container-test audit clean

install: $(STAMP)  ## create .venv with serving, training and dev dependencies (locked, hashed)

$(STAMP): requirements/dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

serve: $(STAMP)  ## start the service with the bundled models on http://127.0.0.1:8080
	$(BIN)/tabserve serve

test: $(STAMP)  ## lint, type-check, then the whole test suite
	$(BIN)/ruff check src tests bench deploy/audit.py
	$(BIN)/ruff format --check src tests bench deploy/audit.py
	$(BIN)/mypy
	$(BIN)/mypy deploy/audit.py
	$(BIN)/pytest -m "not container"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench deploy/audit.py
	$(BIN)/ruff format --check src tests bench deploy/audit.py
	$(BIN)/mypy
	$(BIN)/mypy deploy/audit.py

bench: $(STAMP)  ## the side-by-side benchmark (bench/README.md)
	bash bench/run.sh

soak: $(STAMP)  ## 10 minutes at half the measured capacity (docs/reliability.md); bench/results/soak.json
	$(BIN)/python -m bench.soak --duration 600 --window 60 --warmup 30 --out bench/results/soak.json

container-test: $(STAMP)  ## build the image with podman, run it locked down, predict, stop
	bash deploy/container-test.sh

audit: $(STAMP)  ## pip-audit the locked requirements (deploy/audit-ignore.toml); skips when offline
	$(BIN)/python deploy/audit.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
