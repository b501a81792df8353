# mailpipe: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench-webhook bench-memory bench-embed bench-replies bench-chaos \
	bench-search bench-db-scale bench-backfill bench-pipeline bench-hierarchy clean

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

# The embed stage against a bare sentence-transformers encode of the same texts, side by side (~5 minutes
# on 2 cores). Figures: docs/PERFORMANCE.md.
bench-embed: install
	HF_HUB_OFFLINE=1 $(PY) -m bench.embed_throughput --messages 300 --rounds 5 --report docs/PERFORMANCE.md

bench-replies: install
	$(PY) -m bench.eval_replies

# Search p50/p95/p99 at 100k messages (vectors from the project's OpenAI-compatible server; the import
# takes about an hour on 2 cores, `--data DIR` keeps it for reruns), then recall@10 on a labelled query
# set over 2k messages embedded with local MiniLM. Figures: docs/PERFORMANCE.md.
bench-search: install
	HF_HUB_OFFLINE=1 $(PY) -m bench.search --part latency --messages 100000 --report docs/PERFORMANCE.md
	HF_HUB_OFFLINE=1 $(PY) -m bench.search --part quality --messages 2000 --report docs/PERFORMANCE.md

# Every hot query of the product (status, run progress, claim/dispatch, the enrichment sweep, contacts,
# a thread, insights, search) at 1M messages over 100 accounts, COPY-loaded into the migrated schema:
# p50/p95/max, EXPLAIN (ANALYZE, BUFFERS) and sequential scans of large tables (~1 hour on 2 cores, ~20 GB
# in a temporary folder; `--data DIR` keeps it for reruns). Figures: docs/PERFORMANCE.md.
bench-db-scale: install
	$(PY) -m bench.db_scale --messages 1000000 --accounts 100 --report docs/PERFORMANCE.md

# A 10k-message Gmail sync while workers are SIGKILLed every 10 s and Redis and PostgreSQL restart once
# (needs redis-server on the PATH; ~10 minutes on 2 cores). Figures: docs/RELIABILITY.md.
bench-chaos: install
	$(PY) -m bench.chaos --messages 10000 --kill-every 10 --report docs/RELIABILITY.md

# Open-loop load on the sync web hook through a real `mailpipe serve` (300 requests/s for 60 s; ~2
# minutes). Figures: docs/PERFORMANCE.md.
bench-webhook: install
	$(PY) -m bench.webhook --rate 300 --seconds 60 --report docs/PERFORMANCE.md

# A generated Takeout mbox of 10k and 100k messages imported through the CLI (embeddings off), against a bare
# stdlib parse of the same file on as many processes (100k: ~20 minutes on 2 cores). `python -m bench --list`
# names every scenario. Figures: docs/PERFORMANCE.md.
bench-backfill: install
	HF_HUB_OFFLINE=1 $(PY) -m bench backfill --sizes 10000 100000 --embedder none --report docs/PERFORMANCE.md

# An import end to end against its slowest stage run alone over the same 2k messages (local embeddings: the
# embed stage bounds it; three rounds, ~6 minutes on 2 cores).
bench-pipeline: install
	HF_HUB_OFFLINE=1 $(PY) -m bench pipeline --size 2000 --embedder local --rounds 3 --report docs/PERFORMANCE.md

# 5x20, 10x50 and 15x100 concurrent runs x windows (10 messages each) on Celery workers over Redis: completion,
# integrity, lock errors, throughput scaling. Needs Redis on 127.0.0.1:6379 (MAILPIPE_BENCH_REDIS, db 5 by default).
bench-hierarchy: install
	$(PY) -m bench hierarchy --report docs/PERFORMANCE.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
