#!/usr/bin/env bash
# `make gpu-check`: everything scaffold checks on a GPU, in one call, for a machine with one or
# more NVIDIA GPUs and a CUDA build of torch.
#
#   1. the generated projects' CUDA tests: REQUIRE_CUDA=1 pytest -m cuda tests/test_variants.py
#   2. the GPU rows of BENCHMARKS.md: benchmarks/run.py --device cuda --only 3,7 (the training
#      loop against the bare loop: steps/s, time to the first step; operators and
#      synchronisations per step), written into BENCHMARKS.md in place of the CUDA rows, every
#      other row kept. Then the CUDA rows are printed.
#
# Without a GPU it stops at once: one line on stderr, exit 1.
#
# Python: $GPU_CHECK_PYTHON, else .venv/bin/python (made by `make install`), else python3. It needs
# torch (a CUDA build), torchvision, tqdm, typer, jinja2, pyyaml, pytest and pytest-xdist, and
# copier. Where copier is missing (a machine that cannot reach PyPI), its wheels are installed
# from build/wheels into build/gpu-site, which goes on PYTHONPATH. Make them where pip works, for
# the GPU machine's Python and platform (3.12 and x86-64 Linux here):
#
#   python -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --platform any -d build/wheels copier
#
# build/ is ignored by git: carry it along to a machine that gets a copy of the working tree, and
# bring BENCHMARKS.md back. With this workplace's device tool, for example (sized for under 6
# minutes on one H200; `bash benchmarks/gpu_check.sh` is what `make gpu-check` runs, for a
# machine without make):
#
#   run(command="bash benchmarks/gpu_check.sh; rc=$?; cp BENCHMARKS.md $OUT/; exit $rc",
#       carry=["build/wheels"], timeout_s=480)
#
# scaffold itself runs from this checkout (PYTHONPATH), so nothing has to be built.
#
# Settings: GPU_CHECK_WORKERS (pytest-xdist workers for the CUDA tests, default 4),
# GPU_CHECK_QUICK=1 (the benchmark's --quick mode: prints the rows, writes nothing),
# GPU_CHECK_SKIP_TESTS=1 (the benchmark alone).
set -uo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "gpu-check: $*" >&2
    exit 1
}

python=${GPU_CHECK_PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
command -v "$python" >/dev/null 2>&1 || fail "no Python at '$python' (set GPU_CHECK_PYTHON)"

probe='import torch
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "", torch.__version__, sep="|")'
answer=$("$python" -c "$probe" 2>/dev/null) || fail "$python cannot import torch"
gpu=${answer%%|*}
[ -n "$gpu" ] || fail "no GPU: torch ${answer#*|} ($python) sees no CUDA device; run it on a \
machine with an NVIDIA GPU and a CUDA build of torch"

wheels=${GPU_CHECK_WHEELS:-build/wheels}
if ! "$python" -c "import copier" 2>/dev/null; then
    ls "$wheels"/copier-*.whl >/dev/null 2>&1 ||
        fail "copier is not installed and $wheels holds no copier wheel (see $0 for how to make it)"
    echo "gpu-check: installing copier from $wheels into build/gpu-site" >&2
    "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-compile \
        --find-links "$wheels" --target build/gpu-site copier ||
        fail "pip could not install copier from $wheels"
    export PYTHONPATH="$PWD/build/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import copier, typer, jinja2, yaml, scaffold.render" ||
    fail "scaffold cannot be imported with $python (copier, typer, jinja2 and pyyaml needed)"

echo "gpu-check: $gpu, torch ${answer#*|}, $python" >&2
start=$SECONDS
if [ "${GPU_CHECK_SKIP_TESTS:-}" != 1 ]; then
    REQUIRE_CUDA=1 "$python" -m pytest -p no:cacheprovider -q -rs -m cuda \
        -n "${GPU_CHECK_WORKERS:-4}" tests/test_variants.py ||
        fail "the generated projects' CUDA tests failed (output above)"
    echo "gpu-check: CUDA tests passed in $((SECONDS - start)) s" >&2
fi

bench=(benchmarks/run.py --device cuda --only 3,7)
if [ "${GPU_CHECK_QUICK:-}" = 1 ]; then bench+=(--quick); else bench+=(--output BENCHMARKS.md); fi
mkdir -p build
bench_start=$SECONDS
"$python" "${bench[@]}" >build/gpu-check-table.md || {
    cat build/gpu-check-table.md 2>/dev/null
    fail "benchmarks/run.py --device cuda failed (output above)"
}
echo "gpu-check: benchmarks in $((SECONDS - bench_start)) s; the GPU rows:" >&2
grep -E '^\| # \||^\|---|CUDA' build/gpu-check-table.md
echo "gpu-check: done in $((SECONDS - start)) s" >&2
