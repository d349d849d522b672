# digit-agent — the two set-up commands are `make demo` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint typecheck pytest clean

demo:                       ## install into .venv, start a broker, the daemon, and a live subscriber
	tools/bootstrap.sh runtime
	$(PY) -m tools.demo

test:                       ## install everything, then ruff + mypy + the whole pytest suite
	tools/bootstrap.sh dev
	$(MAKE) lint typecheck pytest

lint:
	$(VENV)/bin/ruff check agent tools tests

typecheck:
	$(VENV)/bin/mypy

pytest:
	$(PY) -m pytest -q

include tools/model/Makefile   # model: rebuild models/ from MNIST (train, export, quantize, validate)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
