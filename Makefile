# Fresh machine: `make install` then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; a plain `torch` requirement would pull a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
# pytest workers (pytest-xdist; one torch thread each, set in tests/conftest.py)
JOBS ?= 2

.PHONY: install test demo gradcheck latent-table finetune-table clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_CPU)"
	$(BIN)/pip install --quiet -e ".[test]"

test:
	$(BIN)/python -m pytest -n $(JOBS)

demo:
	$(BIN)/sdo demo

gradcheck:
	$(BIN)/sdo gradcheck --steps 50

# The latent-optimization table of docs/latent.md (about 25 minutes; one thread).
latent-table:
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/latent_table.py --out runs/latent_table

# The README's fine-tuning table (about 45 minutes; one thread, so that timings are not shared).
finetune-table:
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/finetune_table.py --out runs/finetune_table --docs docs/results

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
