#!/bin/sh
# Trims a serving virtualenv for the container image (run in the Dockerfile's deps stage only).
# Removes what the serving process never imports: test suites, build-time headers and sources, typing
# stubs, onnxruntime's optional python tool kits and its C-API library (the python binding
# onnxruntime_pybind11_state links none of it), numpy's f2py/distutils, the installer; strips debug
# symbols from extension modules; ships third-party Python code as byte code only. The Dockerfile then
# imports every serving module and runs the bundled models through OnnxModel (deploy/image-check.py),
# so a trim that breaks serving fails the build, not production.
# Usage: slim-venv.sh VENV_DIR
set -eu
venv=${1:?usage: slim-venv.sh VENV_DIR}
sp=$(find "$venv/lib" -maxdepth 2 -type d -name site-packages | head -n 1)
[ -n "$sp" ] || { echo "slim-venv: no site-packages under $venv" >&2; exit 1; }

# the venv needs no installer at run time
rm -rf "$sp"/pip "$sp"/pip-* "$sp"/setuptools "$sp"/setuptools-* "$sp"/_distutils_hack "$sp"/distutils-precedence.pth
rm -f "$venv"/bin/pip "$venv"/bin/pip3* "$venv"/bin/Activate.ps1
# test suites and test-only extension modules
find "$sp" -depth -type d -name tests -exec rm -rf {} +
rm -f "$sp"/numpy/_core/_*_tests.cpython-*.so "$sp"/numpy/_core/_simd.cpython-*.so
rm -rf "$sp/numpy/f2py" "$sp/numpy/distutils" "$sp/numpy/_pyinstaller" "$sp/numpy/_core/include" "$sp/numpy/conftest.py"
# onnxruntime: keep the inference binding, drop the tool kits and the unused C-API shared library
rm -rf "$sp/onnxruntime/transformers" "$sp/onnxruntime/quantization" "$sp/onnxruntime/tools" \
       "$sp/onnxruntime/datasets" "$sp/onnxruntime/backend"
rm -f "$sp"/onnxruntime/capi/libonnxruntime.so*
# cython sources, C headers, typing stubs
find "$sp" -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.c' -o -name '*.h' \
     -o -name '*.pyi' \) -delete
# strip extension modules, never the auditwheel-vendored libraries in *.libs/ (patchelf-edited ELF
# files break when stripped: "ELF load command address/offset not page-aligned")
find "$sp" -type f -name '*.so' -not -path '*.libs/*' -exec strip --strip-unneeded {} +
# third-party code as byte code only (legacy .pyc where the .py was; tracebacks keep file and line, the
# sources are the locked wheels'): ~14 MB. The project's own code (/opt/app) keeps its sources.
"$venv/bin/python" -m compileall -q -b -j 0 "$sp" >/dev/null
find "$sp" -type f -name '*.py' -exec sh -c 'for f; do if [ -f "${f}c" ]; then rm -f "$f"; fi; done' sh {} +
find "$sp" -depth -type d -name __pycache__ -exec rm -rf {} +
