# Two commands do all set-up: `make run` and `make test`. Both create .venv and install into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The quick-start comparison: every scheduler in conf/scheduler on the default mixed workload.
run: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/accelgen -m 'scheduler=glob(*)' $(ARGS)

test: $(STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/sim_speed.py

clean:
	rm -rf outputs multirun .pytest_cache
