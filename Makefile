# The two commands of the README: `make demo` (the main job) and `make test`.
# Both create or reuse the virtual environment .venv in this repository.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.rein-d2-installed

.PHONY: demo test install clean-venv

install: $(INSTALLED)

$(INSTALLED): setup.py tools/bootstrap.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/bootstrap.py --tests
	touch $@

demo: $(INSTALLED)
	$(PY) tools/quickstart.py

test: $(INSTALLED)
	$(PY) -m pytest -q -n auto --dist loadfile tests

clean-venv:
	rm -rf $(VENV)
