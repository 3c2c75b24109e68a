"""copy.copy, copy.deepcopy and pickle of every class, frozen and not: the copy computes what
the original computes, keeps its frozen state, and shares nothing with it (a shallow copy of a
frozen module once shared its parameters: loading zeros into the copy changed the original's
state_dict but not its outputs)."""
import copy
import pickle

import numpy as np
import pytest

import rnnc
from rnnc.sequential import Sequential

I, H = 5, 8


def make(name):
    kw = dict(dtype=np.float64, seed=3)
    if name in ("RNN", "GRU", "LSTM"):
        return getattr(rnnc, name)(I, H, num_layers=2, bidirectional=True, **kw)
    if name.endswith("Cell"):
        return getattr(rnnc, name)(I, H, **kw)
    if name == "Linear":
        return rnnc.Linear(I, H, activation="tanh", **kw)
    if name == "Bidirectional":
        return rnnc.Bidirectional(rnnc.LSTM(I, H, **kw), merge_mode="sum")
    return Sequential(rnnc.GRU(I, H, **kw), rnnc.Linear(H, 3, seed=4, dtype=np.float64))


NAMES = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "Linear", "Bidirectional",
         "Sequential"]
COPIES = {"copy": copy.copy, "deepcopy": copy.deepcopy,
          "pickle": lambda m: pickle.loads(pickle.dumps(m))}


def first_output(result):
    while isinstance(result, tuple):
        result = result[0]
    return result


def run(module):
    x = np.random.default_rng(0).standard_normal((4, 3, I) if not isinstance(
        module, (rnnc.RNNCell, rnnc.GRUCell, rnnc.LSTMCell, rnnc.Linear)) else (3, I))
    return first_output(module(x))


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("frozen", [False, True], ids=["unfrozen", "frozen"])
@pytest.mark.parametrize("name", NAMES)
def test_copy_is_independent_and_keeps_frozen_state(name, frozen, how):
    m = make(name)
    if frozen:
        m.freeze()
    y0 = run(m)                       # a frozen module has packed its weights now
    sd0 = m.state_dict()
    c = COPIES[how](m)
    assert c.frozen == m.frozen == frozen
    np.testing.assert_array_equal(run(c), y0)

    c.load_state_dict({k: np.zeros_like(v) for k, v in sd0.items()})
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, sd0[k], err_msg=k)
    np.testing.assert_array_equal(run(m), y0)
    assert not np.array_equal(run(c), y0)

    c.unfreeze()
    assert m.frozen == frozen
    for k, v in m.named_parameters():
        assert v.flags.writeable == (not frozen), k
    if not frozen:
        for _, v in c.named_parameters():       # in-place edits of the copy stay in the copy
            v += 1.0
        np.testing.assert_array_equal(run(m), y0)


@pytest.mark.parametrize("how", COPIES)
def test_copy_of_frozen_module_refuses_in_place_edits(how):
    c = COPIES[how](make("LSTM").freeze())
    with pytest.raises(ValueError):
        c.weight_ih_l0 += 1.0
