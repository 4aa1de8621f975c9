# The two commands: `make serve` (start Tuna) and `make test` (the whole suite).
# Both set up .venv first (scripts/setup.sh; fast when nothing changed).

HOST ?= 127.0.0.1
PORT ?= 8000
DATA_DIR ?= var
SIZE_MB ?= 1024
PURPOSE ?= user_data
PYTEST_ARGS ?=

VENV := .venv
BIN := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help setup serve test lint format bench-upload bench-serve bench-grammar bench-scaling clean distclean

help:
	@echo "make serve         start Tuna at http://$(HOST):$(PORT) (HOST, PORT, DATA_DIR)"
	@echo "make test          run every test, slow ones included (PYTEST_ARGS)"
	@echo "make lint          ruff check, ruff format --check, mypy app worker tuna_core"
	@echo "make format        ruff format + ruff check --fix"
	@echo "make bench-upload  server memory during a streamed upload (SIZE_MB, PURPOSE)"
	@echo "make bench-serve   serving throughput: 1/8/32 clients, base and adapters, vs static batch"
	@echo "make bench-grammar grammar libraries for structured output: compile, per-token mask"
	@echo "make bench-scaling training on PROCESSES processes vs one (DEVICE, MODEL, TRAINING_TYPE)"
	@echo "make clean         caches and build leftovers (keeps .venv and $(DATA_DIR))"
	@echo "make distclean     clean + remove .venv"

setup:
	./scripts/setup.sh

serve:
	HOST=$(HOST) PORT=$(PORT) DATA_DIR=$(DATA_DIR) ./scripts/serve.sh

test:
	./scripts/test.sh $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app worker tuna_core

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench-upload: setup
	$(BIN)/python bench/upload_memory.py --size-mb $(SIZE_MB) --purpose $(PURPOSE)

bench-serve: setup
	$(BIN)/python bench/serve_throughput.py

# xgrammar and outlines-core are measured only where installed (they are not dependencies):
#   $(BIN)/pip install --no-deps xgrammar apache-tvm-ffi outlines-core
bench-grammar: setup
	$(BIN)/python bench/grammar_libraries.py

PROCESSES ?= 2
DEVICE ?= cpu
MODEL ?= tiny
TRAINING_TYPE ?= lora
bench-scaling: setup
	$(BIN)/python bench/train_scaling.py --processes $(PROCESSES) --device $(DEVICE) \
		--model $(MODEL) --training-type $(TRAINING_TYPE)

clean:
	rm -rf .pytest_cache .ruff_cache .mypy_cache .hypothesis build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
