# Fresh machine: `make install` then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; a plain `torch` requirement would pull a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0

.PHONY: install test demo gradcheck latent-table clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_CPU)"
	$(BIN)/pip install --quiet -e ".[test]"

test:
	$(BIN)/python -m pytest

demo:
	$(BIN)/sdo demo

gradcheck:
	$(BIN)/sdo gradcheck --steps 50

# The README's latent-optimization table (about 12 minutes on 2 CPU cores).
latent-table:
	$(BIN)/python benchmarks/latent_table.py --out runs/latent_table

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
