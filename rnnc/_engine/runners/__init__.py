"""One module per strategy of rnnc/_engine/plan.py: ``forward(plan, job)`` runs one layer
and direction (a LayerJob) and returns what its backward needs (training) or None;
``backward(plan, job)`` (a BackwardJob) where training uses the strategy."""
from rnnc._engine.plan import FUSED, KERNEL, OPTIONS, PIPELINED, ROWS, UNITS
from rnnc._engine.runners import fused, kernel, options, pipelined, rows, units

RUNNERS = {KERNEL: kernel, FUSED: fused, UNITS: units, ROWS: rows, PIPELINED: pipelined,
           OPTIONS: options}
