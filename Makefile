# Set-up, training and tests. Override e.g. `make train TORCH='torch>=2.5'` on a CUDA machine.
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
TORCH    ?= torch==2.13.0
# the versions the suite passed with (`make lock` refreshes it); `LOCK=` installs the newest allowed
LOCK     ?= requirements/lock.txt
EXTRAS   := dev,recon,track,stats
RUN_DIR  ?= logs/train/default
EVAL_DIR ?= $(RUN_DIR)/eval
TRAIN_ARGS ?=
PYTEST_ARGS ?=
comma    := ,

.PHONY: install data train evaluate test test-latest test-slow lint lock clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q $(if $(LOCK),-c $(LOCK)) -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

## generate the default synthetic electrode volumes (skipped when cached)
data: install
	$(PY) -m src.data.prepare task_name=prepare hydra.run.dir=logs/prepare

## train LRCS-Net with the default CPU recipe, then evaluate the best checkpoint on the held-out volume
train: data
	$(PY) train.py experiment=synthetic_lrcsnet hydra.run.dir=$(RUN_DIR) $(TRAIN_ARGS)
	$(MAKE) evaluate

evaluate: install
	$(PY) evaluate.py ckpt_path=$(RUN_DIR)/checkpoints/best.ckpt \
		images='data/synthetic/test_s*_image.tif' labels='data/synthetic/test_s*_label.tif' \
		output_dir=$(EVAL_DIR)

lint: install
	$(PY) -m ruff check .

test: lint
	WANDB_MODE=offline $(PY) -m pytest -q $(PYTEST_ARGS)

## the suite against the newest versions pyproject.toml allows, in its own venv (a drift report)
test-latest:
	$(MAKE) test VENV=.venv-latest LOCK=

## re-resolve requirements/lock.txt from pyproject.toml (torch stays with TORCH: it is left out)
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv
	printf 'torch ; sys_platform == "never"\n' > $(VENV)/no-torch.txt
	$(VENV)/bin/uv pip compile pyproject.toml $(addprefix --extra ,$(subst $(comma), ,$(EXTRAS))) \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		--override $(VENV)/no-torch.txt -o requirements/lock.txt

test-slow: install
	WANDB_MODE=offline $(PY) -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-latest logs .pytest_cache .ruff_cache
