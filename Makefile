# attnzoo: two commands, each does its own set-up on a fresh machine.
#   make bench   attnzoo bench: the smallest model of each family beside its timm twin, timed in
#                alternating rounds; a table and a picture in bench-results/<date>-<time>/ (a few
#                minutes on 2 cores). BENCH_ARGS='...' passes options, e.g. BENCH_ARGS=--all
#   make test    run the test suite (python -m pytest -q -n 2, then the Triton interpreter tests in a
#                process of their own), PYTEST_ARGS='...' to pass options to both;
#                also installs MMDetection / MMSegmentation and builds mmcv once (setup-mm)
# Set-up creates .venv (python3 -m venv) and installs attnzoo editable with the pinned versions
# in .ci/constraints.txt; it is redone only when pyproject.toml or the constraints change.

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.attnzoo-installed
MM_STAMP := $(VENV)/.attnzoo-mm-installed
# timm's own tests/test_models.py, from the sdist of the pinned timm (tests/timm_suite runs it).
TIMM_VERSION := $(shell sed -n 's/^timm==//p' .ci/constraints.txt)
TIMM_SRC := $(VENV)/timm-src
TIMM_TESTS := $(TIMM_SRC)/timm-$(TIMM_VERSION)/tests/test_models.py
PIP_FLAGS ?= -qq --disable-pip-version-check --progress-bar off
PYTEST_ARGS ?=
# Two pytest-xdist workers, whole files per worker (module fixtures such as timm's suite run once);
# each worker's torch uses one thread (tests/conftest.py). PYTEST_WORKERS= runs in one process.
PYTEST_WORKERS ?= -n 2 --dist loadfile
BENCH_ARGS ?=
# Where the interpreter run collects (every `interpreter`-marked test lives there).
INTERPRETER_TESTS ?= tests/kernels

.DEFAULT_GOAL := bench
.PHONY: bench test setup setup-mm setup-timm-tests gpu-check kernels setup-triton36

bench: setup
	$(VENV)/bin/attnzoo bench $(BENCH_ARGS)

# ATTNZOO_REQUIRE_MM=1: with OpenMMLab installed by setup-mm, its tests must run, not skip;
# ATTNZOO_REQUIRE_TIMM_TESTS=1: likewise timm's suite, unpacked by setup-timm-tests.
# Two pytest runs: everything, then the `interpreter`-marked tests (the fused kernels, all in
# tests/kernels) in a process started with TRITON_INTERPRET=1, which Triton must see before it is
# imported (tests/conftest.py: that process runs only them, the first skips them without CUDA).
# Both always run; the target fails if either does (the second finding no test, exit 5, is not a
# failure: PYTEST_ARGS may select none of them).
test: setup setup-mm setup-timm-tests
	@rc=0; \
	ATTNZOO_REQUIRE_MM=1 ATTNZOO_REQUIRE_TIMM_TESTS=1 $(VENV_PYTHON) -m pytest -q $(PYTEST_WORKERS) $(PYTEST_ARGS) || rc=1; \
	TRITON_INTERPRET=1 $(VENV_PYTHON) -m pytest -q $(PYTEST_WORKERS) $(INTERPRETER_TESTS) $(PYTEST_ARGS) || [ $$? -eq 5 ] || rc=1; \
	exit $$rc

setup: $(STAMP)

# The compile gate before a kernel commit: every fused kernel compiled for sm_90 in bf16 (no GPU).
kernels: setup
	$(VENV)/bin/attnzoo kernels --quick

# The extended tier's oldest Triton: a second venv with Triton 3.6 (what torch 2.11 ships) beside
# the pinned torch, in which tests/kernels/test_compile_gate.py runs the gate once more (the
# compiler is Triton's; torch only supplies meta tensors there).
TRITON36_VENV := .venv-triton36
setup-triton36: $(STAMP)
	@test -x $(TRITON36_VENV)/bin/python || $(PYTHON) -m venv $(TRITON36_VENV)
	$(TRITON36_VENV)/bin/python -m pip install $(PIP_FLAGS) -c .ci/constraints.txt torch timm huggingface_hub safetensors tqdm
	$(TRITON36_VENV)/bin/python -m pip install $(PIP_FLAGS) --no-deps --force-reinstall triton==3.6.0
	$(TRITON36_VENV)/bin/python -m pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .

# The prepared GPU check (tools/gpu_check.sh): gpu tests, selftest, bench-ops, bench; tables into
# results/. Needs no network or set-up beyond torch / triton / timm; SMALL=1 rehearses it on a CPU.
gpu-check:
	bash tools/gpu_check.sh

# The sdist of the pinned timm, unpacked into an ignored folder (the tests run offline from it).
setup-timm-tests: $(TIMM_TESTS)

$(TIMM_TESTS): $(STAMP)
	rm -rf $(TIMM_SRC) && mkdir -p $(TIMM_SRC)
	$(VENV_PYTHON) -m pip download $(PIP_FLAGS) --no-binary :all: --no-deps -d $(TIMM_SRC) timm==$(TIMM_VERSION)
	tar -xzf $(TIMM_SRC)/timm-$(TIMM_VERSION).tar.gz -C $(TIMM_SRC)
	@touch $@

# MMDetection / MMSegmentation for the tests of attnzoo.mm and configs/: the [mm] extra, then mmcv
# built from source once per machine (7-15 min on 2 cores; the wheel is cached in
# ~/.cache/attnzoo/wheels and reinstalled in seconds afterwards; see tools/install_mmcv.py).
setup-mm: $(MM_STAMP)

$(MM_STAMP): $(STAMP) tools/install_mmcv.py
	$(VENV_PYTHON) -m pip install $(PIP_FLAGS) -c .ci/constraints.txt -e '.[mm]'
	$(VENV)/bin/attnzoo install-mmcv
	@touch $@

$(STAMP): pyproject.toml .ci/constraints.txt
	@test -x $(VENV_PYTHON) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing attnzoo and its pinned dependencies into $(VENV) (first time: a few minutes, ~6 GB)"
	$(VENV_PYTHON) -m pip install $(PIP_FLAGS) -c .ci/constraints.txt -e '.[dev,triton,train]' torchvision
	@# NATTEN: an independent implementation the gna tests cross-check against. Built from source
	@# against the installed torch (no build isolation: seconds, not a second torch download); an
	@# empty CUDA_VISIBLE_DEVICES keeps the build Flex-only, with no nvcc step on GPU machines.
	CUDA_VISIBLE_DEVICES= $(VENV_PYTHON) -m pip install $(PIP_FLAGS) --no-build-isolation -c .ci/constraints.txt natten
	@touch $@
