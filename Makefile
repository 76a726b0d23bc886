# The two commands of the README's quick start are `make demo` and `make test`; both install first (seconds when
# the environment in .venv/ is already up to date). `make demo` runs the CPU demo, tools/demo_train.py (generate
# a dataset, train, evaluate, draw); running a model on images is tools/predict.py.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-slow lint format lock clean

install:
	@bash tools/install.sh

demo: install
	$(PY) tools/demo_train.py --output-dir output/demo

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow --durations=20

lint: install
	$(PY) -m ruff check hieradet tools tests configs projects
	$(PY) -m ruff format --check hieradet tools tests configs projects

format: install
	$(PY) -m ruff check --fix hieradet tools tests configs projects
	$(PY) -m ruff format hieradet tools tests configs projects

lock:
	bash requirements/lock.sh

clean:
	rm -rf .venv output
