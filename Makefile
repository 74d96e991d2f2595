# Two entry points: `make demo` (train on the built-in demo data) and `make test`.
# Each sets up its own virtual environment in .venv first (idempotent: re-run only
# when the requirements change).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test app app-screenshot clean-venv

$(STAMP): requirements.txt requirements-app.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python >= 3.11 is needed ($(PYTHON) is " + sys.version.split()[0] + "): make PYTHON=python3.11 ...")'
	@echo ">> setting up $(VENV) (first time: PyTorch from PyPI, a few GB, about a minute)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)
	@echo ">> $(VENV) is ready"

setup: $(STAMP)

demo: $(STAMP)
	@echo ">> training both stages on the built-in demo data (makes the data first if needed)"
	@$(PY) train.py DATA_NAME=demo $(ARGS)

test: $(STAMP)
	@echo ">> running the test suite (CPU)"
	@$(PY) -m pytest -q $(ARGS)

app: $(STAMP)
	@echo ">> starting the web app (it prints its address; Ctrl-C stops it)"
	@$(PY) app.py $(ARGS)

# docs/app.png: the browser test against the newest demo run (needs chromium and a `make demo` run)
app-screenshot: $(STAMP)
	@S2I_APP_SCREENSHOT=docs/app.png $(PY) -m pytest -q tests/test_app_browser.py $(ARGS)
	@echo ">> wrote docs/app.png"

clean-venv:
	rm -rf $(VENV)
