# Set-up and the two jobs the README starts with. `make demo` and `make test` create the virtual
# environment on first use (torch first, then the project pinned by constraints.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo
# Real data beside the checkout, used by the tests that need it (they skip when it is absent).
RELBENCH_TEST_SHARED_DATA ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch and torchvision first, together: a torch from elsewhere beside PyPI's torchvision fails to import.
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]' -c constraints.txt
	# Optional pose backend for the tests' real-model check: mediapipe without jax/jaxlib/sounddevice
	# (unused by its pose solution), then what it does import.
	$(BIN)/python -m pip install --quiet --no-deps mediapipe==0.10.14
	$(BIN)/python -m pip install --quiet opencv-contrib-python protobuf absl-py flatbuffers attrs -c constraints.txt
	touch $@

demo: setup
	$(BIN)/relbench evaluate --method all --benchmark demo --profile tiny --output $(DEMO_OUT)
	$(BIN)/relbench report $(DEMO_OUT)

test: setup
	RELBENCH_TEST_SHARED_DATA=$(RELBENCH_TEST_SHARED_DATA) $(BIN)/pytest

clean-venv:
	rm -rf $(VENV)
