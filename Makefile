# hrtem-dataset: `make test` and `make demo` work from a fresh clone (they create .venv themselves).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev,abtem]'
	touch $(STAMP)

install: $(STAMP)

# Debian chromium is needed by the Dagster UI test; install it when we can (root + apt), else that test skips.
browser:
	-@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) ; } || \
	  echo "chromium not installable here: the browser test will skip"

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests

demo: $(STAMP)
	$(VENV)/bin/hrtem materialize configs/demo.yaml --out demo-output

lint: $(STAMP)
	$(VENV)/bin/ruff check hrtem_dataset models dagster_project tests benchmarks

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b; done

clean:
	rm -rf $(VENV) demo-output .hrtem
