# Included by every kernel module (rnnc/_kernels/*.pyx): the module's copy of the machine
# (_cpu.h) is set from rnnc/_engine/machine.py when the module is imported, and again whenever
# the machine's settings change (machine.use, for tests).
cdef extern from "_cpu.h":
    void rnnc_cpu_configure(int isa, Py_ssize_t l1d, Py_ssize_t l2, Py_ssize_t l3) nogil
    int rnnc_cpu_isa() nogil


def _configure(int isa, Py_ssize_t l1d, Py_ssize_t l2, Py_ssize_t l3):
    """Set this module's instruction set (capped at the CPU's) and cache sizes; returns the
    instruction set in use (0 baseline, 1 AVX2 + FMA, 2 AVX-512)."""
    rnnc_cpu_configure(isa, l1d, l2, l3)
    return rnnc_cpu_isa()


from rnnc._engine import machine as _machine
_machine.attach(_configure)
