# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed
	@scripts/ensure-blender

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,train]'
	touch $@

demo: setup
	$(BIN)/farm demo

# The layers and the absence of import cycles are import-linter contracts (pyproject.toml); no
# module of the control plane grows past 450 lines.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	@find farm -name '*.py' -exec awk 'FNR == 451 { print FILENAME ": over 450 lines"; bad = 1 } END { exit bad }' {} +

# Two workers (pytest-xdist), a module each at a time, the longest first (tests/conftest.py).
test: lint
	@scripts/ensure-postgres
	@scripts/ensure-bwrap
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

bench: setup
	$(BIN)/python benchmarks/assembly.py
	$(BIN)/python benchmarks/render_shot.py
	$(BIN)/python benchmarks/scheduler.py
	$(BIN)/python benchmarks/accounts.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/preview.py
	$(BIN)/python benchmarks/comp.py
	$(BIN)/python benchmarks/upload.py

clean:
	rm -rf $(VENV) .farm renders
