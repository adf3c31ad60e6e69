# Two entry points: `make demo` (the main job) and `make test` (the whole suite). Both install into .venv first.
VENV ?= .venv
PRETRAINED ?= laion400m_e31
BIN := $(VENV)/bin

# Everything the test suite needs: the full library, export, Ray, ELPV's package and the dev tools (docs/install.md).
$(BIN)/zsad: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[full,export,ray,datasets,dev]'
	touch $@

.PHONY: install demo serve test lint
install: $(BIN)/zsad

# Generate sample images, then score them: predictions.csv, .npy maps and overlays in demo_out/.
# PRETRAINED=none runs offline on seeded random weights (a smoke test: the scores mean nothing).
demo: install
	$(BIN)/zsad samples demo_data
	$(BIN)/zsad detect demo_data/good demo_data/defect --class-name "washer" --pretrained $(PRETRAINED) --out demo_out

# The HTTP service and its web page on http://127.0.0.1:8000 (Ctrl-C stops it; PRETRAINED=none: random weights).
serve: install
	$(BIN)/zsad serve $(if $(filter none,$(PRETRAINED)),--pretrained none,)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile
