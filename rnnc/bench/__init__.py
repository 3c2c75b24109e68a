"""The benchmark suite: rnnc against its NumPy reference, PyTorch and ONNX Runtime.

``python -m rnnc bench`` runs the quick subset (``suite.quick``); the full suite is
``suite.main`` (``python -P benchmarks/suite.py`` in a source checkout). ``cases`` holds the grid,
``peers`` the runner of each backend, ``report`` the markdown, JSON and chart output and the
header that names the CPU; results are kept per CPU (``report.results_dir``). ``busy`` times
rnnc idle and with other processes spinning (``python -m rnnc.bench.busy``).

Not imported by ``import rnnc``: ``peers`` imports PyTorch and ONNX Runtime when installed.
"""
