"""Build the compiled kernels of rnnc.

The extension list and the single dict of Cython compiler directives live here; everything else
about the package is in pyproject.toml. Set RNNC_DEBUG=1 to build with bounds checks and
initialisation checks on (slow, for hunting memory errors). RNNC_ONLY=_lstm_kernel,_blas builds
only the named modules (development: rebuild one kernel while another is being edited).
"""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("RNNC_DEBUG", "0") not in ("", "0")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "nonecheck": False,
    "embedsignature": True,
    "cpow": True,
}

# No -ffast-math: it changes exp/tanh and NaN behaviour, and the kernels must match the reference.
# -fno-trapping-math changes no value (we never read floating-point exception flags); it lets the
# compiler vectorise the branch-free selects of rnnc/_simd_math.h.
COMPILE_ARGS = (["-O3"] if not DEBUG else ["-O0", "-g"]) + ["-fno-trapping-math"]

MODULES = [
    "rnnc._kernels._blas",
    "rnnc._kernels._layer_job",
    "rnnc._kernels._rnn_kernel",
    "rnnc._kernels._gru_kernel",
    "rnnc._kernels._lstm_kernel",
    "rnnc._kernels._linear_kernel",
    "rnnc._kernels._parallel_forward",
    "rnnc._kernels._parallel_train",
    "rnnc._kernels._stream_kernel",
    "rnnc._kernels._options_kernel",
]
ONLY = [m for m in os.environ.get("RNNC_ONLY", "").split(",") if m]
if ONLY:
    MODULES = [m for m in MODULES if m.split(".")[-1] in ONLY]

extensions = [
    Extension(
        name,
        [name.replace(".", "/") + ".pyx"],
        include_dirs=[np.get_include(), "rnnc/_kernels"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        extra_compile_args=COMPILE_ARGS,
    )
    for name in MODULES
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))
