# InternVL-Med. Two user-facing commands:
#   make demo   fresh machine with only Python: create .venv, build the tiny model and the demo data, evaluate,
#               finetune (CPU or GPU), evaluate again, chat once; prints the accuracies and timings
#   make test   create .venv if needed and run the test suite (pytest tests/)
# `make venv` only creates/updates the environment (python3 -m venv .venv; pip install -e '.[dev]').
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test venv demo-pathology demo-neuro demo-brainfound demo-mixed demo-grounding bench-train

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $@

demo: venv
	PYTHON=$(PY) sh shell/demo/run_demo.sh

test: venv
	$(PY) -m pytest tests/ $(PYTEST_ARGS)

# Second demos, one per plugin (documented in README.md; not part of the two main commands)
demo-pathology: venv
	PYTHON=$(PY) sh shell/pathology/demo.sh

demo-neuro: venv
	PYTHON=$(PY) sh shell/neuro/demo.sh

demo-brainfound: venv
	PYTHON=$(PY) sh shell/brainfound/demo.sh

# two vision towers in one model (image + volume), answers that need both
demo-mixed: venv
	PYTHON=$(PY) sh shell/neuro/demo_mixed.sh

# training throughput: plain transformers loop vs our finetune unpacked vs packed (README, "Training throughput")
bench-train: venv
	test -f pretrained/InternVL-tiny/config.json || $(PY) pretrained/build_tiny.py
	$(PY) -m internvl.tools.bench_train $(BENCH_ARGS)

# "Where is the lesion?" answered with a 2D / 3D box: IoU before / after fine-tuning and of a fixed centre box
demo-grounding: venv
	PYTHON=$(PY) sh shell/demo/grounding/demo.sh
