# CADExtension: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build pinned so a machine without a GPU does not pull gigabytes of CUDA wheels.
# On a CUDA machine: make setup TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url <your CUDA wheel index>"
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
DEMO_CASE      ?= sample_data/hippocampus/imagesTr/hippocampus_015.nii.gz
DEMO_OUT       ?= out/demo

.PHONY: setup demo test lint clean

$(BIN)/cad: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/cad

demo: setup
	mkdir -p $(DEMO_OUT)
	$(BIN)/cad segment $(DEMO_CASE) -m hippocampus-unet -o $(DEMO_OUT)/hippocampus_015_seg.seg.nrrd \
		--png $(DEMO_OUT)/hippocampus_015_overlay.png --device cpu --force
	@echo "Open $(DEMO_OUT)/hippocampus_015_seg.seg.nrrd in 3D Slicer (Data > Add Data) over $(DEMO_CASE)."

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out .pytest_cache
