# digit-agent — the two set-up commands are `make demo` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-lowest lint typecheck pytest clean fuzz reliability soak bench bench-quick

demo:                       ## install into .venv, start a broker, the daemon, and a live subscriber
	tools/bootstrap.sh runtime
	$(PY) -m tools.demo

# Every stage runs even when one fails, then a summary line per stage (tools/stages.sh). A literal
# "make", not $(MAKE): make -n would otherwise run the line, and with it the install.
test:                       ## install everything, then ruff + mypy + the whole pytest suite + test-lowest
	@tools/stages.sh "install:tools/bootstrap.sh dev" "lint:make -s lint" "typecheck:make -s typecheck" \
	  "pytest:make -s pytest" "test-lowest:make -s test-lowest"

test-lowest:                ## the daemon's tests on the lowest dependency versions (tools/lowest-deps.txt)
	tools/test-lowest.sh

lint:
	$(VENV)/bin/ruff check agent tools tests

typecheck:
	$(VENV)/bin/mypy

# Two workers, whole files each (module fixtures stay shared): most tests wait on daemons, brokers
# and ptys, and every test must pass with the other core busy anyway. Unbuffered (-u): progress
# shows even into a pipe; the 15 slowest tests are listed at the end.
pytest:                     ## the whole suite on 2 workers
	$(PY) -u -m pytest -n 2 --dist loadfile --durations=15

include tools/model/Makefile   # model: rebuild models/ from MNIST (train, export, quantize, validate)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .venv-lowest

fuzz:                       ## coverage-guided fuzzing (atheris), FUZZ_TIME s per target; bench/results/fuzz-*.json
	$(VENV)/bin/pip install -q atheris
	$(PY) -m tools.fuzz.run --time $(or $(FUZZ_TIME),60)

reliability:                ## full-size faults + 1 M-frame soak; figures in bench/results/reliability-*.jsonl
	DIGIT_AGENT_FULL=1 DIGIT_AGENT_FIGURES=bench/results/reliability-$$(date +%Y%m%d-%H%M%S).jsonl \
	  $(PY) -m pytest tests/reliability -q -s --timeout 7200

soak:                       ## 1 M frames through the daemon; bench/results/soak-<date>.{csv,json,png}
	$(PY) -m tools.soak --frames 1000000

bench:                      ## full benchmark (~15-30 min): model frontier + daemon end to end -> bench/results/
	$(PY) -m tools.bench --out bench/results

bench-quick:                ## smoke benchmark (<= 3 min, CI runs it too): shipped model, short runs -> build/bench/
	$(PY) -m tools.bench --quick --out build/bench

.PHONY: test-arm64 bench-arm64
test-arm64:                 ## as root: Raspberry Pi OS arm64 under qemu (Pi 4 and Pi 5 CPUs): install, selftest, unit suite, replay
	VENV=$(VENV) tools/test-arm64.sh

bench-arm64:                ## as root: aarch64 instructions per inference and per daemon frame -> bench/results/arm64-insns.*
	VENV=$(VENV) tools/bench-arm64.sh
