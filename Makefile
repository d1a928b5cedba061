# Two commands a newcomer needs: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-grpo demo-dpo test test-fast lint crd venv tools clean

# Every version from constraints.txt, the same set the images install. torch first, on its own: pinned, it is the
# CPU build here; an unpinned torch would pull a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[trainer,operator,dev]"
	touch $@

venv: $(BIN)/.installed

# helm, hadolint, yamllint, checkov for tests/deploy, pinned, in .tools/ (a no-op once there).
tools:
	PYTHON=$(PYTHON) bash scripts/install-tools.sh

demo: venv
	$(BIN)/rlhf run manifests/examples/sentiment-tiny.yaml

demo-grpo: venv
	$(BIN)/rlhf run manifests/examples/digit-reversal-tiny.yaml

demo-dpo: venv
	$(BIN)/rlhf run manifests/examples/sentiment-dpo-tiny.yaml

test: venv tools
	$(BIN)/python -m pytest

# The unit and operator tests without the slow ones (under 2 minutes here): the lane to run while editing.
test-fast: venv
	$(BIN)/python -m pytest -m "not slow" tests/unit tests/operator

lint: venv
	$(BIN)/ruff check .

# The CRD is generated from operator/rlhf_operator/api.py; a test keeps both copies equal to the generated one.
CRD_FILES := manifests/crd/rlhf.dev_rlhfjobs.yaml charts/rlhf-operator/crds/rlhf.dev_rlhfjobs.yaml
crd: venv
	for f in $(CRD_FILES); do mkdir -p $$(dirname $$f) && $(BIN)/rlhf crd > $$f; done

clean:
	rm -rf $(VENV) .tools rlhf-workspace .pytest_cache .ruff_cache
