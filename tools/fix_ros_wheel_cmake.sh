#!/bin/sh
# Rewrite build-machine paths baked into the ros-python-wheels' CMake export files, so that
# rosidl packages can be built against the venv (see shared/reference/environment.md, §1).
# Idempotent. usage: fix_ros_wheel_cmake.sh <venv>
set -eu
V=${1:-$VIRTUAL_ENV}
PY="$V/bin/python"
PYINC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
NPINC=$("$PY" -c "import numpy; print(numpy.get_include())")
grep -rl '/opt/python/cp3[0-9]*-cp3[0-9]*' "$V/share" --include='*.cmake' 2>/dev/null | while read -r f; do
  sed -i -E -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NPINC#g" \
            -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g" "$f"
done
