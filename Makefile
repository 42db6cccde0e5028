# make demo: set up, then run the main job (moco quickstart) on a local Ray cluster and a local MLflow store.
# make test: set up (Python packages, and the OS packages some tests use when they can be installed),
#            then run the whole test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup os-packages demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,server,dicom]'
	touch $(STAMP)

# PostgreSQL (under the MLflow server of tests/test_jobs.py) and docker-compose (checks docker/compose.yaml);
# never fails: where they cannot be installed, those tests are skipped and say why.
os-packages:
	@./.ci/os-packages

demo: $(STAMP)
	$(BIN)/moco quickstart

# lint first (seconds), then the suite
test: $(STAMP) os-packages lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
