# One command each (README): `make demo` sets up and runs the main job, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench default-model cuda-build-check clean
setup:
	bash scripts/setup-venv.sh $(VENV)

demo: setup
	$(PY) -m reward_forcing
	$(VENV)/bin/reward-forcing generate --prompt "a red circle bouncing to the right" --seconds 10 --out demo.mp4

test: setup
	$(PY) -m pytest -q tests

# ruff (lint rules in pyproject.toml) and mypy over python/reward_forcing (zero errors).
lint: setup
	$(PY) -m ruff check python tests bench scripts
	$(PY) -m ruff format --check python tests bench scripts
	$(PY) -m mypy

# The embedded default model's recipe: stage budgets in minutes (TEACHER_MIN, ODE_MIN, DMD_MIN),
# resumable; the teacher continues from training/world-teacher/ (commit it after a run).
default-model: setup
	PY=$(PY) bash scripts/default_model.sh

bench: setup
	$(PY) bench/ops_cpu.py --out bench/results

# Compile-and-link check of the CUDA sources (no GPU needed; makes a ~5.5 GB CUDA-torch venv once
# with scripts/cuda-build-env.sh, then several minutes).
cuda-build-check:
	bash scripts/cuda-build-check.sh

clean:
	rm -rf build dist $(VENV)
