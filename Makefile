# m2a: one-command set-up, demo and tests. See README.md.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# torch is pinned here and installed on its own so that the lock never drags in a CUDA build.
# On this CPU machine kind `torch==2.13.0` resolves to the local CPU wheel. On a GPU machine the
# same pin from PyPI is the CUDA build; pick another build with e.g.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu130
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
SETUPTOOLS_SPEC := setuptools==79.0.1

MSGS_SRC := ros2_ws/src/m2a_perception_msgs
MSGS_BUILD := build/m2a_perception_msgs
STAMP := $(VENV)/.m2a-setup-stamp
SETUP_INPUTS := requirements.txt Makefile tools/fix_ros_wheel_cmake.sh \
	$(MSGS_SRC)/CMakeLists.txt $(MSGS_SRC)/package.xml $(wildcard $(MSGS_SRC)/msg/*.msg) \
	ros2_ws/src/m2a_perception/setup.py training/pyproject.toml

# pytest runs under an external timeout because Fast DDS can hang in teardown while holding the GIL.
TEST_TIMEOUT ?= 1200
PYTEST_ARGS ?= -m "not slow"
# ROS environment for every process of the test run (environment.md gotchas 4 and 5).
export FASTDDS_BUILTIN_TRANSPORTS := LARGE_DATA
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export CMAKE_PREFIX_PATH := $(abspath $(VENV))

.PHONY: help setup demo test test-slow lint format colcon lock clean

help:
	@echo "make setup   create .venv, install pinned deps, build messages, install m2a (idempotent)"
	@echo "make demo    train the demo model (both stages), replay a bag through the node, gallery + figures"
	@echo "make test    run the test suite (CPU; gpu tests skip loudly)"
	@echo "make test-slow   run the slow tests too (full-size model export and parity)"
	@echo "make lint    ruff over the whole repository"
	@echo "make colcon  colcon build of both ROS packages into ros2_ws/install"

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	@echo "== m2a setup: virtual environment in $(VENV)"
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q $(SETUPTOOLS_SPEC)
	@echo "== m2a setup: $(TORCH_SPEC) $(TORCH_PIP_ARGS)"
	$(PIP) install -q $(TORCH_SPEC) $(TORCH_PIP_ARGS)
	@echo "== m2a setup: pinned dependencies (requirements.txt)"
	$(PIP) install -q -r requirements.txt
	sh tools/fix_ros_wheel_cmake.sh $(abspath $(VENV))
	@echo "== m2a setup: building m2a_perception_msgs into the venv"
	mkdir -p $(MSGS_BUILD)
	PATH=$(abspath $(VENV))/bin:$$PATH cmake -S $(MSGS_SRC) -B $(MSGS_BUILD) \
		-DCMAKE_INSTALL_PREFIX=$(abspath $(VENV)) -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
		-DPython3_EXECUTABLE=$(abspath $(PY)) > $(MSGS_BUILD).log 2>&1 || (cat $(MSGS_BUILD).log; exit 1)
	PATH=$(abspath $(VENV))/bin:$$PATH cmake --build $(MSGS_BUILD) -j2 >> $(MSGS_BUILD).log 2>&1 \
		|| (tail -50 $(MSGS_BUILD).log; exit 1)
	cmake --install $(MSGS_BUILD) >> $(MSGS_BUILD).log 2>&1 || (tail -50 $(MSGS_BUILD).log; exit 1)
	@echo "== m2a setup: editable install of m2a_perception and m2a_training"
	$(PIP) install -q --no-deps --no-build-isolation -e ros2_ws/src/m2a_perception
	$(PIP) install -q --no-deps --no-build-isolation -e training
	$(PY) -c "import m2a_perception, m2a_training, m2a_perception_msgs.msg, rclpy; print('setup ok')"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/m2a-demo --out out/demo

test: setup
	timeout -k 30 $(TEST_TIMEOUT) $(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	timeout -k 30 $(TEST_TIMEOUT) $(PY) -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

colcon: setup
	cd ros2_ws && PATH=$(abspath $(VENV))/bin:$$PATH $(abspath $(VENV))/bin/colcon build --symlink-install

# Regenerate the lock from requirements.in (needs the network to PyPI). pip's resolution report
# lists only real distributions (pip freeze would also list the packages bundled in ROS wheels).
lock:
	rm -rf /tmp/m2a-lock && $(PYTHON_BOOT) -m venv /tmp/m2a-lock
	/tmp/m2a-lock/bin/pip install -q $(TORCH_SPEC)
	/tmp/m2a-lock/bin/pip install --dry-run --ignore-installed -q --report /tmp/m2a-lock/report.json \
		-r requirements.in
	{ echo "# Full pinned lock of requirements.in (pip's resolution report), generated with \`make lock\`."; \
	  echo "# torch is installed separately by \`make setup\` (pinned there, CPU or CUDA build)."; \
	  /tmp/m2a-lock/bin/python -c "import json; r = json.load(open('/tmp/m2a-lock/report.json')); \
	    print(''.join(sorted(f\"{i['metadata']['name']}=={i['metadata']['version']}\\n\" \
	    for i in r['install'] if i['metadata']['name'].lower() != 'torch')), end='')"; } > requirements.txt

clean:
	rm -rf $(VENV) build ros2_ws/build ros2_ws/install ros2_ws/log out
