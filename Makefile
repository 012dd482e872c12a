# Every install step lives here: CI starts from a clean clone and runs `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 2
VARIANT_GROUP ?=

.PHONY: install demo test test-fast test-min test-mutations test-variants test-cuda gpu-check test-wheel bundles \
	wheel lint examples bench bench-quick clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.demo-installed

# The demo needs scaffold and what a generated project trains and plots with (the `demo` extra),
# not the test tools and trackers of `make install`.
$(VENV)/.demo-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[demo]'
	touch $@

# A LeNet on shapes drawn in code (--dataset synthetic): validation accuracy climbs past 0.9 in
# about six epochs on two CPU cores, and plot.py draws the curves.
DEMO_TRAIN := --dataset synthetic --synthetic-size 2048 --epochs 6 --optimizer adamw --lr 0.003 \
	--device cpu --workers 0 --output-dir runs/demo

demo: $(VENV)/.demo-installed
	rm -rf demo
	$(BIN)/scaffold new demo --model lenet --dataset synthetic --no-git
	cd demo && ../$(BIN)/python train.py $(DEMO_TRAIN)
	cd demo && ../$(BIN)/python plot.py runs/demo
	@echo "checkpoint: $(CURDIR)/demo/runs/demo/best.pt"
	@echo "curves: $(CURDIR)/demo/runs/demo/curves.png"

# The template history (scaffold/bundles, see scaffold/release.py). A checkout would also build it
# on first use; building it here keeps the test workers from doing it at the same time.
bundles: install
	$(BIN)/python -m scaffold.release

test: install bundles
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=25

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# The lowest declared versions (.ci/test-min): scaffold's fast tests in build/min/scaffold-venv,
# each dependency pinned to its `>=` floor in pyproject.toml, then a generated lenet project's own
# suite on the floors of torch, torchvision and tqdm. Needs no .venv; a venv is rebuilt only when
# its pins change, so a second run is quick.
test-min:
	$(PYTHON) .ci/test-min --workers $(PYTEST_WORKERS)

# Named breaks of the code (.ci/mutations.py), one at a time, each run against the tests written to
# catch it: prints "N of N caught" and fails if any break survives. Not part of `make test`.
test-mutations: install bundles
	$(BIN)/python .ci/mutations.py

# The generated projects' own test suites (tests/test_variants.py -m slow). VARIANT_GROUP=N keeps
# the variants of group N (`scaffold list variants`), one CI matrix job per group; empty: all.
test-variants: install bundles
	SCAFFOLD_VARIANT_GROUP=$(VARIANT_GROUP) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) \
		-m slow tests/test_variants.py

# Renders every declared variant and runs its generated CUDA tests (AMP + GradScaler,
# channels-last, resume; NCCL DDP with 2+ GPUs) with REQUIRE_CUDA=1: on a machine without a
# usable GPU this fails with "REQUIRE_CUDA=1 ... torch sees no CUDA device", it never skips.
test-cuda: install bundles
	REQUIRE_CUDA=1 $(BIN)/python -m pytest -m cuda -rs tests/test_variants.py

# Everything a GPU machine checks, in one call: the CUDA tests above, then the GPU rows of
# BENCHMARKS.md (benchmarks/run.py --device cuda). Without a GPU it fails at once, in one line.
# It needs no `make install`: on a machine that cannot reach PyPI it takes python3 with a CUDA
# torch and installs copier from wheels in build/wheels (benchmarks/gpu_check.sh says how).
gpu-check:
	@benchmarks/gpu_check.sh

# Wheel and sdist; hatch_build.py puts the template history in both.
wheel: install
	rm -rf dist
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w dist .

# The update tests against the wheel installed into a fresh venv. The generated projects' own
# tests borrow torch and pytest from .venv (after the wheel's packages).
WHEEL_VENV := build/wheel-venv
test-wheel: wheel
	rm -rf $(WHEEL_VENV) && $(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/pip install --quiet --disable-pip-version-check dist/*.whl
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(WHEEL_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_test_deps.pth"
	cd $(WHEEL_VENV) && SCAFFOLD_TEST_WHEEL=1 PATH="$(abspath $(WHEEL_VENV))/bin:$$PATH:$(abspath $(BIN))" \
		bin/python -m pytest -p no:cacheprovider -n $(PYTEST_WORKERS) \
		$(abspath tests/test_update.py)

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
	rm -rf $(VENV) demo build dist .pytest_cache scaffold/bundles
