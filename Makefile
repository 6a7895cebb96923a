# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: demo test test-fast install lint audit browser clean

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

# Chromium for the browser tests comes from Debian, never from `playwright install`.
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

# The whole suite: real SQLite, FAISS, models, `catalens serve` processes, Chromium.
test: install browser lint audit
	$(BIN)/python -m pytest -q

# Under a minute: no subprocesses, no browser.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not browser"

clean:
	rm -rf catalens-data .pytest_cache .hypothesis test-artifacts
