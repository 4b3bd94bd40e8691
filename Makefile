# Set-up, training and tests. Override e.g. `make train TORCH='torch>=2.5'` on a CUDA machine.
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
TORCH    ?= torch==2.13.0
RUN_DIR  ?= logs/train/default
EVAL_DIR ?= $(RUN_DIR)/eval
TRAIN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install data train evaluate test test-slow lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev,recon,track]'
	touch $@

install: $(VENV)/.installed

## generate the default synthetic electrode volumes (skipped when cached)
data: install
	$(PY) -m src.data.prepare task_name=prepare hydra.run.dir=logs/prepare

## train LRCS-Net with the default CPU recipe, then evaluate the best checkpoint on the held-out volume
train: data
	$(PY) train.py model=lrcsnet hydra.run.dir=$(RUN_DIR) $(TRAIN_ARGS)
	$(MAKE) evaluate

evaluate: install
	$(PY) evaluate.py ckpt_path=$(RUN_DIR)/checkpoints/best.ckpt \
		images='data/synthetic/test_s*_image.tif' labels='data/synthetic/test_s*_label.tif' \
		output_dir=$(EVAL_DIR)

lint: install
	$(PY) -m ruff check .

test: lint
	WANDB_MODE=offline $(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: install
	WANDB_MODE=offline $(PY) -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) logs .pytest_cache .ruff_cache
