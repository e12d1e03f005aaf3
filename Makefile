# mqadmin: `make run` serves it, `make test` tests it (SQLite and PostgreSQL).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint demo bench serve clean chaos soak

$(STAMP): requirements.txt
	@python=$$(scripts/find-python) || exit 1; \
	if [ ! -x $(PY) ]; then echo "Creating $(VENV) with $$python"; $$python -m venv $(VENV) || exit 1; fi
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

run: $(STAMP)
	$(PY) manage.py migrate --no-input -v0
	$(PY) manage.py mq operator
	$(PY) manage.py mq serve

test: $(STAMP)
	scripts/test

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy queues mqadmin dashboard mqtools

clean:
	rm -rf $(VENV) db.sqlite3* test-db.sqlite3* db-test-run.sqlite3* staticfiles

# The pizzeria against the server `make run` started: customers, three
# chefs, one crash. Token: $MQ_TOKEN, else a temporary one.
demo: $(STAMP)
	$(PY) manage.py mq demo

# The benchmark: mqadmin beside raw SQL, lean SQL, RabbitMQ and Procrastinate, on a
# PostgreSQL database of its own. BENCH_ARGS=--quick for a short run; the
# results and how to read them: docs/performance.md.
BENCH_DB ?= mqbench
BENCH_PG ?= postgres://postgres@127.0.0.1:5432
bench: $(STAMP)
	$(PY) -c 'import psycopg; c = psycopg.connect("$(BENCH_PG)/postgres", autocommit=True); c.execute("SELECT 1 FROM pg_database WHERE datname = %s", ["$(BENCH_DB)"]).fetchone() or c.execute("CREATE DATABASE $(BENCH_DB)")'
	DATABASE_URL=$(BENCH_PG)/$(BENCH_DB) $(PY) manage.py migrate --no-input -v0
	DATABASE_URL=$(BENCH_PG)/$(BENCH_DB) $(PY) manage.py mq bench $(BENCH_ARGS)

# Minutes of faults (workers and nodes SIGKILLed, PostgreSQL restarted) with a
# ledger at the end; CHAOS_SECONDS=40 for a short run.
CHAOS_SECONDS ?= 180
chaos: $(STAMP)
	$(PY) -m mqtools.chaos --seconds $(CHAOS_SECONDS)

# Sustained load with a dashboard open: memory, latency and table size must
# stay flat. SOAK_SECONDS / SOAK_RATE to change.
SOAK_SECONDS ?= 300
SOAK_RATE ?= 200
soak: $(STAMP)
	$(PY) -m mqtools.soak --seconds $(SOAK_SECONDS) --rate $(SOAK_RATE)
