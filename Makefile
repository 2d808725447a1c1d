# Two commands from a fresh machine (see README):
#   make demo        set up .venv, then draw and caption images with the embedded default model
#   make test        set up .venv, then lint (ruff) and run the whole test suite (what CI runs)
#   make test-fast   the same without the tests marked slow
# PyTorch is pinned to the CPU wheel used here; on a GPU machine install the CUDA build of
# torch first (pyproject.toml only asks for torch>=2.5) and `pip install -e '.[gpu]'`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo lint test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	bash scripts/demo.sh

lint: setup
	$(BIN)/ruff check .

# pytest exits 5 when it collects no test: that is a failure here too, as is any non-zero code.
test: lint
	$(BIN)/python -m pytest --durations=15

test-fast: lint
	$(BIN)/python -m pytest -m "not slow" --durations=15

clean:
	rm -rf $(VENV) out runs lightning_logs
