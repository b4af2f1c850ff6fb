# Set-up is idempotent: `.venv` is created once and the project re-installed only when
# setup.py changes (the stamp file records the last install).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tirec-installed
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=

.PHONY: demo test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): setup.py | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/tirec generate --out $(DEMO_DIR)/raw --users 300 --seed 7
	$(VENV)/bin/tirec pipeline --input $(DEMO_DIR)/raw --format synthetic --out $(DEMO_DIR)/tfrecords
	$(VENV)/bin/tirec train --data $(DEMO_DIR)/tfrecords --model daian --out $(DEMO_DIR)/daian \
	    --epochs 1 --batch-size 1024 --set model.att_units=32 --set 'model.tower=[128,64]'

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_pipeline.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
