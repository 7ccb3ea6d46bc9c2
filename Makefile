# Two commands on a fresh machine with Python >= 3.10 (tools/bootstrap.py does the work, stdlib only):
#   make train   # venv .venv + torch 2.13.0 (CPU) + esper_fast[train], then the default training run
#   make test    # the same venv + esper_fast[test,triton], then python -m pytest -q
# ARGS="..." goes to esper-fast train / pytest (make train ARGS="--preset smoke").
PYTHON ?= python3
ARGS ?=

.PHONY: train test env
train:
	$(PYTHON) tools/bootstrap.py train $(ARGS)
test:
	$(PYTHON) tools/bootstrap.py test $(ARGS)
env:
	$(PYTHON) tools/bootstrap.py env
