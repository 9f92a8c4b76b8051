# hrtem-dataset: `make test` and `make demo` work from a fresh clone (they create .venv themselves).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean browser prismatic

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

# PyPrismatic with the HRTEM algorithm, built from ../shared/prismatic (source + build-wheel; needs root + apt for
# cmake, g++, FFTW3, HDF5, Boost) into build/prismatic-wheel and installed into .venv: the Prismatic engine and
# tests/test_prismatic_live.py then run for real. Skipped (with a message) where the folder or apt is missing;
# not part of `make test` (the build takes minutes), whose Prismatic tests skip without it.
PRISMATIC_SRC ?= ../shared/prismatic
prismatic: $(STAMP)
	@if [ ! -x "$(PRISMATIC_SRC)/build-wheel" ]; then echo "$(PRISMATIC_SRC)/build-wheel not found: Prismatic not built (its tests skip)"; \
	elif ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ]; then echo "no root + apt-get: Prismatic not built (its tests skip)"; \
	elif $(PY) -c "from hrtem_dataset.simulation.prismatic_engine import hrtem_support as h; raise SystemExit(not h())"; then echo "pyprismatic with HRTEM already installed"; \
	else wheel=$$("$(PRISMATIC_SRC)/build-wheel" build/prismatic-wheel $(PY) | tail -n 1) && $(PIP) install --quiet "$$wheel" && \
	  $(PY) -c "from hrtem_dataset.simulation.prismatic_engine import prismatic_version as v; print('pyprismatic', v())"; fi

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
