"""The benchmark suite, run as a script: python -P benchmarks/suite.py --help.

The code lives in rnnc/bench/ so that an installed rnnc can run it (python -m rnnc bench).
"""
import sys

from rnnc.bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
