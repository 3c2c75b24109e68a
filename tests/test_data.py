"""rnnc.pad_sequences and rnnc.batches: layouts and values against loops (and PyTorch's
pad_sequence where installed), every sequence once per epoch, reproducible shuffles, bucketing
that cuts padding, and the errors."""
import numpy as np
import pytest

import rnnc
from rnnc import batches, pad_sequences


def ragged(rng, n, feat=(3,), low=1, high=30, dtype=np.float64):
    return [rng.standard_normal((int(T),) + feat).astype(dtype)
            for T in rng.integers(low, high + 1, size=n)]


# -- pad_sequences ---------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("feat", [(3,), (), (2, 2)], ids=["features", "univariate", "2-D"])
def test_pad_sequences_places_each_sequence_and_pads_the_rest(rng, feat, batch_first):
    seqs = ragged(rng, 5, feat, low=0, high=6)
    seqs[2] = seqs[2][:6] if len(seqs[2]) else seqs[2]
    padded, lengths = pad_sequences(seqs, batch_first=batch_first, padding_value=-7.5)
    T = max(len(s) for s in seqs)
    assert padded.shape == ((5, T) if batch_first else (T, 5)) + feat
    assert padded.dtype == np.float64 and lengths.dtype == np.intp
    np.testing.assert_array_equal(lengths, [len(s) for s in seqs])
    for b, s in enumerate(seqs):
        for t in range(T):
            cell = padded[b, t] if batch_first else padded[t, b]
            if t < len(s):
                np.testing.assert_array_equal(cell, s[t])
            else:
                assert np.all(cell == -7.5)


def test_pad_sequences_matches_torch_pad_sequence(rng):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pad_sequence
    seqs = ragged(rng, 6, (4,))
    for batch_first in (False, True):
        expected = pad_sequence([torch.tensor(s) for s in seqs], batch_first=batch_first,
                                padding_value=1.5).numpy()
        got, _ = pad_sequences(seqs, batch_first=batch_first, padding_value=1.5)
        np.testing.assert_array_equal(got, expected)


def test_pad_sequences_dtypes():
    ints, _ = pad_sequences([[1, 2, 3], [4]], padding_value=-1)
    assert ints.dtype.kind == "i"
    np.testing.assert_array_equal(ints, [[1, 4], [2, -1], [3, -1]])
    mixed, _ = pad_sequences([np.ones(2, np.float32), np.ones(1, np.float32)])
    assert mixed.dtype == np.float32
    assert pad_sequences([np.ones(2, np.float32), [1]], dtype=np.float64)[0].dtype == np.float64
    # Lengths and arrays feed the layers and pools directly.
    x, lengths = pad_sequences([np.ones((4, 3), np.float32), np.ones((2, 3), np.float32)])
    out = rnnc.Sequential(rnnc.GRU(3, 5, seed=0), rnnc.Pool("last"))(x, lengths=lengths)
    assert out.shape == (2, 5)


def test_pad_sequences_errors():
    with pytest.raises(ValueError, match="sequences is empty"):
        pad_sequences([])
    with pytest.raises(ValueError, match=r"sequences\[1\] must have shape \(T_i, 3\) like "
                                         r"sequences\[0\].*got \(2, 4\)"):
        pad_sequences([np.ones((3, 3)), np.ones((2, 4))])
    with pytest.raises(TypeError, match=r"sequences\[0\] must have a real numeric dtype"):
        pad_sequences([np.array(["a", "b"])])
    with pytest.raises(TypeError, match=r"sequences\[1\] must have a real numeric dtype"):
        pad_sequences([np.ones(2), np.array([True])])
    with pytest.raises(ValueError, match=r"sequences\[0\] must be an array of shape"):
        pad_sequences([3.0])
    with pytest.raises(TypeError, match="sequences must be a list"):
        pad_sequences("abc")
    with pytest.raises(TypeError, match="sequences must be a list"):
        pad_sequences(5)
    with pytest.raises(ValueError, match="padding_value 0.5 cannot be stored"):
        pad_sequences([[1, 2]], padding_value=0.5)
    with pytest.raises(TypeError, match="padding_value must be a real number"):
        pad_sequences([[1.0]], padding_value="0")
    with pytest.raises(TypeError, match="dtype must be a real numeric"):
        pad_sequences([[1.0]], dtype=np.complex64)
    with pytest.raises(TypeError, match="batch_first"):
        pad_sequences([[1.0]], batch_first="no")


# -- batches ---------------------------------------------------------------------------------------
def collect(it):
    return [(x, lengths, y) for x, lengths, y in it]


def padding(it):
    """Padded cells (time steps) of one epoch: sum over batches of b * T_batch - sum(lengths)."""
    return sum(len(lengths) * x.shape[0] - int(lengths.sum()) for x, lengths, _ in it)


@pytest.mark.parametrize("bucket", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_every_sequence_appears_once_per_epoch_with_its_data(rng, shuffle, bucket, batch_first):
    seqs = ragged(rng, 103)
    ids = np.arange(103)
    it = batches(seqs, ids, batch_size=8, shuffle=shuffle, seed=1, bucket=bucket,
                 bucket_size=3, batch_first=batch_first)
    assert len(it) == 13
    seen = []
    for x, lengths, y in it:
        assert x.shape[:2] == ((len(y), lengths.max()) if batch_first
                               else (lengths.max(), len(y)))
        for b, i in enumerate(y):
            assert lengths[b] == len(seqs[i])
            got = x[b, :lengths[b]] if batch_first else x[:lengths[b], b]
            np.testing.assert_array_equal(got, seqs[i])
            rest = x[b, lengths[b]:] if batch_first else x[lengths[b]:, b]
            assert not rest.any()
        seen += list(y)
    assert sorted(seen) == list(ids)
    assert (seen != list(ids)) == (shuffle or bucket)


def test_drop_last_drops_only_the_short_batch(rng):
    seqs = ragged(rng, 103)
    for bucket in (False, True):
        got = collect(batches(seqs, np.arange(103), batch_size=8, shuffle=True, seed=0,
                              bucket=bucket, bucket_size=4, drop_last=True))
        assert len(got) == 12 and all(len(y) == 8 for _, _, y in got)
        assert len({int(i) for _, _, y in got for i in y}) == 96


def test_same_seed_gives_the_same_batches_and_a_generator_moves_on(rng):
    seqs = ragged(rng, 60)

    def order(seed, bucket):
        return [tuple(y) for _, _, y in batches(seqs, np.arange(60), batch_size=7, shuffle=True,
                                                 seed=seed, bucket=bucket, bucket_size=2)]

    for bucket in (False, True):
        assert order(3, bucket) == order(3, bucket)
        assert order(3, bucket) != order(4, bucket)
    gen = np.random.default_rng(3)
    first, second = order(gen, False), order(gen, False)
    assert first != second
    assert first == order(np.random.default_rng(3), False)


def test_bucketing_cuts_padding(rng):
    seqs = ragged(rng, 1000, low=1, high=100)
    ids = np.arange(1000)
    plain = padding(batches(seqs, ids, batch_size=32, shuffle=True, seed=0))
    bucketed = padding(batches(seqs, ids, batch_size=32, shuffle=True, seed=0, bucket=True))
    # Lengths ~ U[1, 100]: a random batch of 32 pads to ~97 steps (about half padding); sorted
    # chunks of 50 batches leave ~1.5 steps of spread per batch.
    assert bucketed < 0.1 * plain
    # Bucketed batches still come in a shuffled order of lengths, not sorted.
    maxima = [int(lengths.max()) for _, lengths, _ in batches(seqs, ids, batch_size=32,
                                                              shuffle=True, seed=0,
                                                              bucket=True)]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


@pytest.mark.parametrize("batch_first", [False, True])
def test_padded_array_input_gives_the_batches_of_the_list(rng, batch_first):
    seqs = ragged(rng, 40, dtype=np.float32)
    X, lengths = pad_sequences(seqs, batch_first=batch_first)
    kw = dict(batch_size=6, shuffle=True, seed=2, bucket=True, bucket_size=2,
              batch_first=batch_first)
    from_list = collect(batches(seqs, np.arange(40), **kw))
    from_array = collect(batches(X, np.arange(40), lengths=lengths, **kw))
    assert len(from_list) == len(from_array)
    for (xa, la, ya), (xb, lb, yb) in zip(from_list, from_array):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(ya, yb)
        assert xb.dtype == np.float32
    # Without lengths every sequence of the array has all T steps.
    full = collect(batches(X, batch_size=40, batch_first=batch_first))
    assert full[0][2] is None and np.all(full[0][1] == max(lengths))


def test_batches_feed_a_model(rng):
    seqs = ragged(rng, 20, dtype=np.float32)
    model = rnnc.Sequential(rnnc.LSTM(3, 4, batch_first=True, seed=0), rnnc.Pool("mean"),
                            rnnc.Linear(4, 2, seed=1))
    for x, lengths, y in batches(seqs, np.arange(20) % 2, batch_size=8, batch_first=True):
        assert model(x, lengths=lengths).shape == (len(y), 2)


def test_batches_errors(rng):
    seqs = ragged(rng, 5)
    with pytest.raises(ValueError, match="lengths is for X given as a padded array"):
        batches(seqs, lengths=[1] * 5)
    with pytest.raises(ValueError, match=r"y must have one entry per sequence \(5\)"):
        batches(seqs, np.arange(4))
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        batches(seqs, batch_size=2.5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        batches(seqs, batch_size=0)
    with pytest.raises(ValueError, match="bucket_size must be >= 1"):
        batches(seqs, bucket_size=0)
    for flag in ("shuffle", "drop_last", "bucket", "batch_first"):
        with pytest.raises(TypeError, match=flag):
            batches(seqs, **{flag: "yes"})
    with pytest.raises(TypeError, match="seed"):
        batches(seqs, seed="0")
    with pytest.raises(ValueError, match="X is empty"):
        batches([])
    with pytest.raises(ValueError, match="lengths must lie in"):
        batches(np.ones((4, 3, 2)), lengths=[5, 1, 1])
    with pytest.raises(ValueError, match="at least 2-D"):
        batches(np.ones(4))
    with pytest.raises(TypeError, match="X must have a real numeric dtype"):
        batches(np.array([["a"]]))
