# Two entry points: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The CPU wheel of PyTorch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	# The optional extras too, so that their tests run: HF interop (transformers), Ray sweeps, TensorBoard.
	$(BIN)/pip install -e '.[dev,peers,distributed,tensorboard]'
	touch $(STAMP)

.PHONY: install test demo lint
install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check longseq tests benchmarks
	# Build the compiled kernels first: a failed build must fail CI, not make their tests skip.
	$(BIN)/python -m longseq.kernels
	$(BIN)/pytest -n 2 tests
	# The ops' plain PyTorch paths once more, with the compiled kernels switched off.
	LONGSEQ_KERNELS=off $(BIN)/pytest -n 2 tests/ops tests/modules tests/test_kernels_mechanism.py

demo: $(STAMP)
	$(BIN)/longseq demo

lint: $(STAMP)
	$(BIN)/ruff check longseq tests benchmarks
