# Two commands for a fresh machine: `make demo` (install + quick start) and `make test` (install + tests).
# `make wheel` builds the (non-editable) wheel into dist/ and checks that the packaged recipes are in it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1

.PHONY: demo test lint install wheel

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medrs-diff quickstart

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -n 2 -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

wheel: $(STAMP)
	rm -rf dist
	$(PY) -m pip wheel --quiet --no-deps . -w dist
	$(PY) -m zipfile -l dist/medrs_diff-*.whl | grep -q 'medrs_diff/recipes/segdiff_phantom2d.yaml'
