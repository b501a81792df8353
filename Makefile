# mailpipe: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench-memory bench-replies bench-chaos clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first and pinned: an unpinned torch pulls several GB of CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/mailpipe demo

test: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

test-fast: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -m "not integration"

lint: install
	$(VENV)/bin/ruff check pipeline tasks tests bench
	$(VENV)/bin/mypy

bench-memory: install
	HF_HUB_OFFLINE=1 $(PY) -m bench.memory

bench-replies: install
	$(PY) -m bench.eval_replies

# A 10k-message Gmail sync while workers are SIGKILLed every 10 s and Redis and PostgreSQL restart once
# (needs redis-server on the PATH; ~10 minutes on 2 cores). Figures: docs/RELIABILITY.md.
bench-chaos: install
	$(PY) -m bench.chaos --messages 10000 --kill-every 10 --report docs/RELIABILITY.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
