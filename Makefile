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

.PHONY: demo serve-demo test test-slow install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): setup.py | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo is the main job: `tirec run` on the built-in synthetic logs (LogGen -> FeatureGen ->
# StatisticsGen -> Trainer -> Evaluator -> Pusher, a small DAIAN), its report, then the pushed
# version served and queried through gRPC.
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/tirec run --workdir $(DEMO_DIR) --users 300
	$(VENV)/bin/tirec report $(DEMO_DIR)
	$(VENV)/bin/tirec make-request --data $$($(VENV)/bin/tirec runs --workdir $(DEMO_DIR) --latest examples) \
	    --out $(DEMO_DIR)/request.json
	$(MAKE) --no-print-directory serve-demo

# Serves the exported model on free ports (the server prints them once the model is loaded),
# ranks the sample request through gRPC, checks served against offline scores, then stops it.
serve-demo: $(STAMP)
	@set -e; out=$(DEMO_DIR)/serve.out; \
	$(VENV)/bin/tirec serve --model-base-path $(DEMO_DIR)/serving/daian --model-name daian \
	    --port 0 --rest-port 0 > $$out 2> $(DEMO_DIR)/serve.log & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null || true' EXIT; \
	port=; for i in $$(seq 240); do \
	    port=$$(sed -n 's/^tirec serve: gRPC listening on .*:\([0-9]*\)$$/\1/p' $$out); \
	    [ -n "$$port" ] && break; kill -0 $$pid 2>/dev/null || break; sleep 0.5; done; \
	if [ -z "$$port" ]; then echo "tirec serve did not start; see $(DEMO_DIR)/serve.log" >&2; \
	    tail -20 $(DEMO_DIR)/serve.log >&2; exit 1; fi; \
	cat $$out; \
	$(VENV)/bin/tirec query --target 127.0.0.1:$$port --model-name daian --input $(DEMO_DIR)/request.json --top 10; \
	$(VENV)/bin/tirec verify-serving --target 127.0.0.1:$$port --model-name daian \
	    --run $$($(VENV)/bin/tirec runs --workdir $(DEMO_DIR) --latest model) \
	    --rows 500

# `make test` leaves out the tests marked slow (each over a minute on 2 cores); CI (.ci/run)
# runs them after it with `make test-slow`.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m slow tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_pipeline.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
