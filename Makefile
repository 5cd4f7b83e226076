# make train: set up everything and meta-train the default setup; make test: the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline

.PHONY: install train test test-fast bench clean

install: $(STAMP)

# torch first from its pinned build; learn2learn is built from source (see the script); then the
# project with everything else, the text extra included. The stamp makes a second `make install` a no-op.
$(STAMP): pyproject.toml scripts/install_learn2learn.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	bash scripts/install_learn2learn.sh $(PY)
	$(PY) -m pip install -q -e '.[dev,text,tables,rl,mujoco]'
	# wordllama holds the pretrained text encoder's weights; its own code (not used) needs numpy 2
	$(PY) -m pip install -q --no-deps wordllama==0.4.0.post1
	touch $(STAMP)

train: install
	$(PY) train.py $(ARGS)

test: install
	$(PY) -m pytest --durations=20 $(ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(ARGS)

bench: install
	$(PY) experiments/benchmark_sampler.py
	$(PY) experiments/benchmark_data.py $(ARGS)
	$(PY) experiments/benchmark_engine.py

clean:
	rm -rf $(VENV) outputs
