"""rnnc's engine: how the public classes' layers are run.

- plan.py: every decision (strategy, products, chunking, threads) made once per layer, from
  the problem and the machine, into a LayerPlan; the tuning constants beside it.
- stack.py: the loop over layers and directions: lays the batch out, allocates, and calls the
  runner each plan names; the training cache keeps the plans for the backward.
- runners/: one module per strategy, forward (and backward where training uses it).
- job.py: the arrays of one layer and direction handed to a runner (LayerJob, BackwardJob).
- layout.py: the packed layout of a variable-length batch; workspace.py: buffers and packed
  weights; threads.py: rnnc's threads and BLAS's, and the pool of worker threads; kernels.py: the
  compiled kernels (rnnc/_kernels/), imported on first use.
"""
