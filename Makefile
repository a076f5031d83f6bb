# `make demo`: set up a virtual environment and train an NDM on the built-in default (checkerboard).
# `make test`: set up the same environment, run lint and the test suite, and build the docs
# strictly (a broken link or reference fails). `make docs`: the documentation site in site/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

FASHION_MNIST := /usr/share/datasets/fashion-mnist
SITE ?= site

.PHONY: demo test docs setup clean datasets

setup: $(VENV)/.installed datasets

# Fashion-MNIST for the image benchmark, from Debian's package (skipped where apt is absent).
datasets:
	@test -d $(FASHION_MNIST) || ! command -v apt-get >/dev/null || \
		apt-get install -y -qq dataset-fashion-mnist >/dev/null || \
		echo "note: could not install dataset-fashion-mnist; the image benchmark needs it"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $@

demo: setup
	$(BIN)/ndm train

test: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/pytest
	$(BIN)/mkdocs build --strict --quiet --site-dir $(SITE)

docs: setup
	$(BIN)/mkdocs build --strict --site-dir $(SITE)

clean:
	rm -rf $(VENV) runs .pytest_cache $(SITE)
