# Mini EC — every command a person or CI needs. `make help` lists them.
SHELL := /bin/bash
# uv: the one on PATH, else the one this Makefile installs into ~/.local/bin. Exported, so the
# tests that run uv find this same one whatever PATH holds.
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
export UV
PY := .venv/bin/python

.PHONY: help install preflight run run-sync load test test-browser test-rules check-asyncapi asyncapi test-unit test-integration test-e2e test-compose test-cluster chaos bench lint dlq clean

help:
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(UV):
	@echo "uv not found: installing uv $(UV_VERSION) into ~/.local/bin with pip --user"
	python3 -m pip install --quiet --user uv==$(UV_VERSION) || \
	  python3 -m pip install --quiet --user --break-system-packages uv==$(UV_VERSION)

.venv/.synced: $(UV) pyproject.toml uv.lock libs/*/pyproject.toml tools/*/pyproject.toml services/*/pyproject.toml apps/*/pyproject.toml
	$(UV) sync --all-packages --frozen
	@touch $@

install: .venv/.synced ## create the workspace environment (.venv) from uv.lock

run: install ## start the services, the failed-message console (prints its credentials) and a local SMTP sink (Ctrl-C stops all)
	$(PY) -m devstack

run-sync: install ## synchronous mode: one process (ports 8000-8003, no broker) and a local SMTP sink
	@$(PY) -m devstack.smtp_sink --port $${SMTP_PORT:-1025} --dir var/mail & sink=$$!; \
	trap "kill $$sink" EXIT; $(PY) -m inprocess

load: install ## shop traffic against `make run` (Locust, headless): make load ARGS="--users 20 --rate 10 --duration 2m"
	$(PY) -m load $(ARGS)

preflight: install ## check what the tests need (RabbitMQ, its management API, PostgreSQL); enable the plugin if off
	$(PY) -m devstack.preflight

# Test worker processes (pytest-xdist). The tests mostly wait on brokers, databases and the
# processes they start, so more workers than cores pays; each test has its own vhost,
# databases and ports. A module stays on one worker (conftest.py).
TEST_WORKERS ?= 3

test: preflight test-rules check-asyncapi ## everything: alert rules, AsyncAPI, unit, integration, end-to-end (needs a running RabbitMQ + PostgreSQL)
	@echo "make test: tests marked 'compose' are deselected (they need a running compose stack: make test-compose), and 'browser' (make test-browser)"
	$(PY) -m pytest -m "not compose and not chaos and not browser" -n $(TEST_WORKERS) --dist loadgroup
	@echo "make test: the chaos test restarts the broker under everyone: it runs alone, after the rest"
	$(PY) -m pytest -m "chaos and not compose"

# The browser test's driver, pinned by package-lock.json; reinstalled when the lock file changes.
BROWSER_NODE := tests/browser/node_modules/.package-lock.json
$(BROWSER_NODE): tests/browser/package.json tests/browser/package-lock.json
	@command -v npm >/dev/null || { echo "make: npm not found: install Node.js 20 (apt-get install nodejs npm)"; exit 1; }
	cd tests/browser && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

test-browser: preflight $(BROWSER_NODE) ## the console in headless Chromium: replay a group, login, CSRF (installs Debian's chromium; root)
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make test-browser: /usr/bin/chromium is missing and installing it needs root (apt-get install chromium); not run"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi
	$(PY) -m pytest -m browser tests/browser -n 0

test-rules: ## Prometheus alert rules: promtool check + unit tests (deploy/prometheus)
	@promtool="$$(tools/promtool.sh)" && \
	"$$promtool" check config deploy/prometheus/prometheus.yml && \
	"$$promtool" test rules deploy/prometheus/alerts_test.yml

# The AsyncAPI parser, pinned by package-lock.json; reinstalled when the lock file changes.
ASYNCAPI_NODE := tools/asyncapi/node_modules/.package-lock.json
$(ASYNCAPI_NODE): tools/asyncapi/package.json tools/asyncapi/package-lock.json
	@command -v npm >/dev/null || { echo "make: npm not found: install Node.js 20 (apt-get install nodejs npm)"; exit 1; }
	cd tools/asyncapi && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

check-asyncapi: install $(ASYNCAPI_NODE) ## docs/asyncapi.yaml is what the code generates, and valid AsyncAPI 3.0
	$(PY) -m devstack.asyncapi --check
	node tools/asyncapi/validate.mjs docs/asyncapi.yaml

asyncapi: install ## regenerate docs/asyncapi.yaml from the code
	$(PY) -m devstack.asyncapi

test-cluster: install ## node loss: 3 RabbitMQ 4 nodes + HAProxy, 2 payment instances, SIGKILLs (root; < 8 min)
	@if [ "$$(id -u)" != 0 ]; then echo "make test-cluster: needs root (RabbitMQ 4 nodes run in network namespaces); not run"; exit 1; fi
	$(PY) -m devstack.cluster_check $(ARGS)

test-unit: install ## unit tests only (no I/O)
	$(PY) -m pytest -m unit

test-integration: preflight ## integration tests (real RabbitMQ, SQLite, PostgreSQL, SMTP)
	$(PY) -m pytest -m integration

test-e2e: preflight ## end-to-end tests (the whole stack as local processes)
	$(PY) -m pytest -m e2e

bench: preflight ## benchmarks vs the raw broker ceiling (< 5 min; ARGS="--db postgres", "--only ceiling", ...)
	$(PY) -m bench $(ARGS)

chaos: preflight ## the full chaos check: 2,000 payments, consumers SIGKILLed, broker restarted (<= 3 min)
	$(PY) -m devstack.chaos

lint: install ## ruff, and mypy (strict for libs/, see [tool.mypy] in pyproject.toml)
	$(PY) -m ruff check .
	$(PY) -m mypy

dlq: install ## dead-letter queues: make dlq ARGS="list" | "show points" | "replay points --all"
	$(PY) -m messaging.operations.dlq $(ARGS)

clean: ## remove local state (databases, mails)
	rm -rf var/

# Base URLs of a running `docker compose up` (the defaults of .env); override any in the shell.
test-compose: install ## cross-service tests against a running compose stack (docker compose up --build -d)
	set -a && source .env && set +a && \
	PAYMENT_URL=$${PAYMENT_URL:-http://127.0.0.1:$${PAYMENT_PORT}} \
	POINTS_URL=$${POINTS_URL:-http://127.0.0.1:$${POINTS_HOST_PORTS%%-*}} \
	MAILER_URL=$${MAILER_URL:-http://127.0.0.1:$${MAILER_HOST_PORTS%%-*}} \
	AUDIT_URL=$${AUDIT_URL:-http://127.0.0.1:$${AUDIT_HOST_PORTS%%-*}} \
	SHIPPING_URL=$${SHIPPING_URL:-http://127.0.0.1:$${SHIPPING_HOST_PORTS%%-*}} \
	CONSOLE_URL=$${CONSOLE_URL:-http://127.0.0.1:$${CONSOLE_PORT}} \
	JAEGER_URL=$${JAEGER_URL:-http://127.0.0.1:$${JAEGER_UI_PORT}} \
	MAILPIT_URL=$${MAILPIT_URL:-http://127.0.0.1:$${MAILPIT_UI_PORT}} \
	RABBITMQ_MANAGEMENT_URL=$${RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:$${RABBITMQ_UI_PORT}} \
	RABBITMQ_MANAGEMENT_USER=$${RABBITMQ_MANAGEMENT_USER:-admin} \
	RABBITMQ_MANAGEMENT_PASSWORD=$${RABBITMQ_MANAGEMENT_PASSWORD:-$${RABBITMQ_ADMIN_PASSWORD}} \
	$(PY) -m pytest -m compose tests/compose
