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

.PHONY: demo serve-demo test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): setup.py | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo trains a small DAIAN on small batches: 4 length groups instead of the default 16,
# whose trace time (16 copies of each attention block) outweighs their saving at this size.
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/tirec generate --out $(DEMO_DIR)/raw --users 300 --seed 7
	$(VENV)/bin/tirec pipeline --input $(DEMO_DIR)/raw --format synthetic --out $(DEMO_DIR)/tfrecords
	$(VENV)/bin/tirec train --data $(DEMO_DIR)/tfrecords --model daian --run $(DEMO_DIR)/daian \
	    --epochs 1 --batch-size 1024 --set model.daian.att_units=32 --set 'model.tower=[128,64]' \
	    --set model.hist_buckets=4 --set model.daian.explicit_buckets=4
	$(VENV)/bin/tirec export --run $(DEMO_DIR)/daian --out $(DEMO_DIR)/models --model-name daian
	$(VENV)/bin/tirec make-request --data $(DEMO_DIR)/tfrecords --out $(DEMO_DIR)/request.json
	$(MAKE) --no-print-directory serve-demo

# Serves the exported model on free ports (the server prints them once the model is loaded),
# ranks the sample request through gRPC, checks served against offline scores, then stops it.
serve-demo: $(STAMP)
	@set -e; out=$(DEMO_DIR)/serve.out; \
	$(VENV)/bin/tirec serve --model-base-path $(DEMO_DIR)/models/daian --model-name daian \
	    --port 0 --rest-port 0 > $$out 2> $(DEMO_DIR)/serve.log & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null || true' EXIT; \
	port=; for i in $$(seq 240); do \
	    port=$$(sed -n 's/^tirec serve: gRPC listening on .*:\([0-9]*\)$$/\1/p' $$out); \
	    [ -n "$$port" ] && break; kill -0 $$pid 2>/dev/null || break; sleep 0.5; done; \
	if [ -z "$$port" ]; then echo "tirec serve did not start; see $(DEMO_DIR)/serve.log" >&2; \
	    tail -20 $(DEMO_DIR)/serve.log >&2; exit 1; fi; \
	cat $$out; \
	$(VENV)/bin/tirec query --target 127.0.0.1:$$port --model-name daian --input $(DEMO_DIR)/request.json --top 10; \
	$(VENV)/bin/tirec verify-serving --target 127.0.0.1:$$port --model-name daian --run $(DEMO_DIR)/daian \
	    --rows 500

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_pipeline.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
