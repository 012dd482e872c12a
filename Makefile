# Every install step lives here: CI starts from a clean clone and runs `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 2

.PHONY: install demo test test-fast test-cuda lint examples bench bench-quick clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: install
	rm -rf demo
	$(BIN)/scaffold new demo --model lenet --no-git
	cd demo && ../$(BIN)/python train.py --epochs 1 --max-steps 20 --device cpu --workers 0 \
		--output-dir runs/demo
	test -f demo/runs/demo/last.pt
	@echo "checkpoint: $(CURDIR)/demo/runs/demo/last.pt"

test: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

test-cuda: install
	REQUIRE_CUDA=1 $(BIN)/python -m pytest tests/test_cuda.py

lint: install
	$(BIN)/black --check scaffold tests benchmarks
	$(BIN)/ruff check scaffold tests benchmarks

examples: install
	$(BIN)/scaffold examples

bench: install
	$(BIN)/python benchmarks/run.py

bench-quick: install
	$(BIN)/python benchmarks/run.py --quick

clean:
	rm -rf $(VENV) demo build dist .pytest_cache
