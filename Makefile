# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: demo test test-fast install lint audit browser system clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# pip (not uv/poetry) so torch comes from this machine's local wheel cache.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/catalens demo --host $(HOST) --port $(PORT)

# What the tests run beside the project, from Debian: Chromium for the browser tests (never
# `playwright install`), docker-compose to validate the compose file, and PostgreSQL, which the
# tests start themselves (initdb + pg_ctl on 127.0.0.1, a temporary data dir, stopped at the end).
system: browser
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || { \
		echo "installing Debian's postgresql for the PostgreSQL tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
		 && (service postgresql stop >/dev/null 2>&1 || true)) \
		|| echo "WARNING: could not install postgresql; the PostgreSQL tests will fail under CI"; }

browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
		|| echo "WARNING: could not install chromium; browser tests will be skipped"; }
	@command -v docker-compose >/dev/null 2>&1 || { \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose) \
		|| echo "WARNING: could not install docker-compose; the compose check will be skipped"; }

PACKAGES := catalens indexer retrieval sampledata training bench cli

# Style, types and the layer contract (core <- indexer, retrieval <- tools).
lint: install
	$(BIN)/ruff check $(PACKAGES) tests migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

# Known vulnerabilities in the installed dependencies (pip-audit against PyPI's advisory data).
audit: install
	$(BIN)/python .ci/audit.py

# The whole suite: real SQLite, PostgreSQL, Milvus (embedded server), FAISS, Ray, models,
# `catalens serve` processes, Chromium.
test: install system lint audit
	$(BIN)/python -m pytest -q

# Under a minute: no subprocesses, no browser.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not browser"

clean:
	rm -rf catalens-data .pytest_cache .hypothesis test-artifacts
