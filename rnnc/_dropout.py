"""The dropout convention shared by the compiled and the reference training forward, so that
one seed draws the same masks in both."""
import numpy as np


def dropout_mask(rng, shape, p, dtype):
    """Inverted-dropout mask: 0 with probability p, else 1 / (1 - p) (all 0 when p == 1)."""
    keep = 1.0 - p
    mask = (rng.random(shape) < keep).astype(dtype)
    if keep > 0:
        mask /= np.dtype(dtype).type(keep)
    return mask
