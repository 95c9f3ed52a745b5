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
STAMP_NAME := .m2a-setup-stamp
STAMP := $(VENV)/$(STAMP_NAME)
SETUP_INPUTS := Makefile tools/fix_ros_wheel_cmake.sh \
	$(MSGS_SRC)/CMakeLists.txt $(MSGS_SRC)/package.xml $(wildcard $(MSGS_SRC)/msg/*.msg) \
	ros2_ws/src/m2a_perception/setup.py training/pyproject.toml

# Jazzy check (`make test-jazzy`): a second venv with Python 3.12 and the ros-jazzy-* wheels
# (requirements-jazzy.txt, generated from requirements.in by `make lock-jazzy`). On Python 3.12
# `torch==2.13.0` is PyPI's CUDA build (about 4.7 GB in the venv); it runs on the CPU.
JAZZY_PYTHON ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)/versions/3.12.1/bin/python
JAZZY_VENV := .venv-jazzy
JAZZY_STAMP := $(JAZZY_VENV)/$(STAMP_NAME)
JAZZY_TESTS ?= tests/ros tests/replay
JAZZY_TEST_TIMEOUT ?= 2400

# pytest runs under an external timeout because Fast DDS can hang in teardown while holding the GIL;
# it is a hang guard, generous so that a loaded machine does not fail a healthy run.
TEST_TIMEOUT ?= 2400
# Two xdist workers (one per core, one torch thread each: tests/conftest.py); `loadgroup` keeps
# the tests of one `xdist_group` on one worker.
PYTEST_ARGS ?= -m "not slow" -n 2 --dist loadgroup --durations=25
# ROS environment for every process of the test run (environment.md gotchas 4 and 5); the Fast
# DDS large-frame profile comes from tests/conftest.py (m2a_perception.ros.processes).
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export CMAKE_PREFIX_PATH := $(abspath $(VENV))
# The Jazzy targets use their own venv as the ament prefix (also for their prerequisites).
setup-jazzy test-jazzy $(JAZZY_STAMP): export AMENT_PREFIX_PATH := $(abspath $(JAZZY_VENV))
setup-jazzy test-jazzy $(JAZZY_STAMP): export CMAKE_PREFIX_PATH := $(abspath $(JAZZY_VENV))

.PHONY: help setup setup-jazzy demo test test-slow test-jazzy lint format colcon lock lock-jazzy clean

help:
	@echo "make setup   create .venv, install pinned deps, build messages, install m2a (idempotent)"
	@echo "make demo    train the demo model (both stages), replay a bag through the node, gallery + figures"
	@echo "make test    run the test suite (CPU; gpu tests skip loudly)"
	@echo "make test-slow   run the slow tests too (full-size model export and parity)"
	@echo "make test-jazzy  release check: tests/ros and tests/replay on ROS 2 Jazzy + Python 3.12 (.venv-jazzy)"
	@echo "make lint    ruff over the whole repository"
	@echo "make colcon  colcon build of both ROS packages into ros2_ws/install"

# One set-up recipe for every venv: $(call setup_venv,VENV,BOOT_PYTHON,REQUIREMENTS).
# The interface package is built with plain cmake into the venv (build/<venv>/), so that
# `import m2a_perception_msgs` works from the venv's python without sourcing anything.
define setup_venv
@echo "== m2a setup: virtual environment in $(1) ($(2))"
test -x $(1)/bin/python || $(2) -m venv $(1)
$(1)/bin/python -m pip --disable-pip-version-check install -q $(SETUPTOOLS_SPEC)
@echo "== m2a setup: $(TORCH_SPEC) $(TORCH_PIP_ARGS)"
$(1)/bin/python -m pip --disable-pip-version-check install -q $(TORCH_SPEC) $(TORCH_PIP_ARGS)
@echo "== m2a setup: pinned dependencies ($(3))"
$(1)/bin/python -m pip --disable-pip-version-check install -q -r $(3)
sh tools/fix_ros_wheel_cmake.sh $(abspath $(1))
@echo "== m2a setup: building m2a_perception_msgs into the venv"
mkdir -p build/$(1)
AMENT_PREFIX_PATH=$(abspath $(1)) CMAKE_PREFIX_PATH=$(abspath $(1)) PATH=$(abspath $(1))/bin:$$PATH \
	cmake -S $(MSGS_SRC) -B build/$(1)/m2a_perception_msgs \
	-DCMAKE_INSTALL_PREFIX=$(abspath $(1)) -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
	-DPython3_EXECUTABLE=$(abspath $(1))/bin/python > build/$(1)/m2a_perception_msgs.log 2>&1 \
	|| (cat build/$(1)/m2a_perception_msgs.log; exit 1)
AMENT_PREFIX_PATH=$(abspath $(1)) CMAKE_PREFIX_PATH=$(abspath $(1)) PATH=$(abspath $(1))/bin:$$PATH \
	cmake --build build/$(1)/m2a_perception_msgs -j2 >> build/$(1)/m2a_perception_msgs.log 2>&1 \
	|| (tail -50 build/$(1)/m2a_perception_msgs.log; exit 1)
cmake --install build/$(1)/m2a_perception_msgs >> build/$(1)/m2a_perception_msgs.log 2>&1 \
	|| (tail -50 build/$(1)/m2a_perception_msgs.log; exit 1)
@echo "== m2a setup: editable install of m2a_perception and m2a_training"
$(1)/bin/python -m pip --disable-pip-version-check install -q --no-deps --no-build-isolation -e ros2_ws/src/m2a_perception
$(1)/bin/python -m pip --disable-pip-version-check install -q --no-deps --no-build-isolation -e training
$(1)/bin/python -c "import m2a_perception, m2a_training, m2a_perception_msgs.msg, rclpy; print('setup ok')"
touch $(1)/$(STAMP_NAME)
endef

setup: $(STAMP)

$(STAMP): requirements.txt $(SETUP_INPUTS)
	$(call setup_venv,$(VENV),$(PYTHON_BOOT),requirements.txt)

setup-jazzy: $(JAZZY_STAMP)

$(JAZZY_STAMP): requirements-jazzy.txt $(SETUP_INPUTS)
	@test -x $(JAZZY_PYTHON) || { echo "make setup-jazzy: no Python 3.12 at $(JAZZY_PYTHON) (pyenv install 3.12.1, or JAZZY_PYTHON=...)"; exit 1; }
	$(call setup_venv,$(JAZZY_VENV),$(JAZZY_PYTHON),requirements-jazzy.txt)

demo: setup
	$(VENV)/bin/m2a-demo --out out/demo

test: setup
	timeout -k 30 $(TEST_TIMEOUT) $(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	timeout -k 30 $(TEST_TIMEOUT) $(PY) -m pytest -m slow

# Release check, not in .ci/run (the CUDA torch download; docs/vehicle_deployment.md, "Jazzy").
test-jazzy: setup-jazzy
	timeout -k 30 $(JAZZY_TEST_TIMEOUT) $(JAZZY_VENV)/bin/python -m pytest -p no:cacheprovider \
		$(PYTEST_ARGS) $(JAZZY_TESTS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

colcon: setup
	cd ros2_ws && PATH=$(abspath $(VENV))/bin:$$PATH $(abspath $(VENV))/bin/colcon build --symlink-install

# Regenerate a lock (needs the network to PyPI):
#   $(call lock_requirements,PYTHON,INPUT,OUTPUT,WHAT,TARGET)
# pip's resolution report lists only real distributions (pip freeze would also list the packages
# bundled in ROS wheels). torch, and what only a CUDA torch pulls in (nvidia-*, cuda-*, triton),
# stay out: `make setup` installs torch on its own, pinned.
define lock_requirements
rm -rf /tmp/m2a-$(5) && $(1) -m venv /tmp/m2a-$(5)
/tmp/m2a-$(5)/bin/pip install --dry-run --ignore-installed -q --report /tmp/m2a-$(5)/report.json \
	-r $(2)
{ echo "# Full pinned lock of $(4) (pip's resolution report), generated with \`make $(5)\`."; \
  echo "# torch is installed separately by \`make setup\` (pinned there, CPU or CUDA build)."; \
  /tmp/m2a-$(5)/bin/python -c "import json, re; r = json.load(open('/tmp/m2a-$(5)/report.json')); \
    pins = sorted((i['metadata']['name'], i['metadata']['version']) for i in r['install']); \
    print(''.join(f'{n}=={v}\\n' for n, v in pins \
    if not re.fullmatch('torch|triton|nvidia-.*|cuda-.*', n.lower())), end='')"; \
} > $(3)
endef

lock:
	$(call lock_requirements,$(PYTHON_BOOT),requirements.in,requirements.txt,requirements.in,lock)

# Jazzy: requirements.in with ros-kilted-* -> ros-jazzy-*, ament-cmake-ros-core -> ament-cmake-ros
# (Jazzy has no -core split) and the build packages Jazzy's ament_cmake_ros and rosidl need.
JAZZY_EXTRA := ros-jazzy-ament-cmake-gmock ros-jazzy-ament-cmake-gtest ros-jazzy-ament-cmake-pytest \
	ros-jazzy-python-cmake-module
lock-jazzy:
	mkdir -p build
	{ sed -e 's/^ros-kilted-ament-cmake-ros-core$$/ros-jazzy-ament-cmake-ros/' -e 's/^ros-kilted-/ros-jazzy-/' \
		requirements.in; printf '%s\n' $(JAZZY_EXTRA); } > build/requirements-jazzy.in
	$(call lock_requirements,$(JAZZY_PYTHON),build/requirements-jazzy.in,requirements-jazzy.txt,requirements.in with the Jazzy swaps,lock-jazzy)

clean:
	rm -rf $(VENV) $(JAZZY_VENV) build ros2_ws/build ros2_ws/install ros2_ws/log out
