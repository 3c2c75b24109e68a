"""rnnc.losses: values and gradients against PyTorch and finite differences, masks, errors."""
import numpy as np
import pytest

from rnnc import losses


def _torch():
    return pytest.importorskip("torch")


def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar f at x (float64)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        fp = f(x)
        x[i] = old - eps
        fm = f(x)
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


# -- mse ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mse_matches_torch(rng, dtype):
    torch = _torch()
    pred = rng.standard_normal((5, 3, 4)).astype(dtype)
    target = rng.standard_normal((5, 3, 4)).astype(dtype)
    loss, grad = losses.mse(pred, target)
    tp = torch.tensor(pred, requires_grad=True)
    tl = torch.nn.functional.mse_loss(tp, torch.tensor(target))
    tl.backward()
    assert isinstance(loss, float)
    assert grad.dtype == np.dtype(dtype) and grad.shape == pred.shape
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(loss, tl.item(), rtol=tol)
    np.testing.assert_allclose(grad, tp.grad.numpy(), rtol=tol, atol=tol)


def test_mse_position_mask_matches_torch_on_selected(rng):
    torch = _torch()
    T, B, F = 6, 4, 3
    pred = rng.standard_normal((T, B, F))
    target = rng.standard_normal((T, B, F))
    mask = losses.lengths_mask([6, 2, 4, 1], T)                 # (T, B)
    loss, grad = losses.mse(pred, target, mask)
    tp = torch.tensor(pred, requires_grad=True)
    sel = torch.tensor(mask)
    tl = torch.nn.functional.mse_loss(tp[sel], torch.tensor(target)[sel])
    tl.backward()
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, tp.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert np.all(grad[~mask] == 0)
    # The mean is over unmasked positions * F.
    np.testing.assert_allclose(
        loss, np.sum(((pred - target) ** 2)[mask]) / (mask.sum() * F), rtol=1e-12)


def test_mse_elementwise_and_broadcast_masks(rng):
    pred = rng.standard_normal((4, 3, 2))
    target = rng.standard_normal((4, 3, 2))
    full = rng.random((4, 3, 2)) < 0.5
    full[0, 0, 0] = True
    loss, grad = losses.mse(pred, target, full)
    d = pred - target
    np.testing.assert_allclose(loss, np.sum(d[full] ** 2) / full.sum(), rtol=1e-12)
    np.testing.assert_allclose(grad, np.where(full, 2 * d / full.sum(), 0), rtol=1e-12)
    # A (F,) mask broadcasts over the leading axes under NumPy's rules (feature mask).
    feat = np.array([True, False])
    loss, grad = losses.mse(pred, target, feat)
    np.testing.assert_allclose(loss, np.mean(d[..., 0] ** 2), rtol=1e-12)
    assert np.all(grad[..., 1] == 0)
    # 0/1 integer masks are accepted; (T, 1) position masks broadcast over the batch.
    loss_i, grad_i = losses.mse(pred, target, np.array([[1], [1], [0], [0]]))
    np.testing.assert_allclose(loss_i, np.mean(d[:2] ** 2), rtol=1e-12)


def test_mse_ignores_nan_target_at_masked_positions(rng):
    pred = rng.standard_normal((5, 2, 3))
    target = rng.standard_normal((5, 2, 3))
    mask = losses.lengths_mask([5, 3], 5)
    clean = losses.mse(pred, target, mask)
    target[~mask] = np.nan
    pred2 = pred.copy()
    pred2[~mask] = np.inf
    dirty = losses.mse(pred2, target, mask)
    assert clean[0] == dirty[0]
    np.testing.assert_array_equal(clean[1], dirty[1])


def test_mse_finite_differences(rng):
    pred = rng.standard_normal((3, 2, 2))
    target = rng.standard_normal((3, 2, 2))
    mask = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    _, grad = losses.mse(pred, target, mask)
    num = numeric_grad(lambda p: losses.mse(p, target, mask)[0], pred.copy())
    np.testing.assert_allclose(grad, num, rtol=1e-7, atol=1e-9)


def test_mse_integer_pred_becomes_float64():
    loss, grad = losses.mse([[1, 2], [3, 4]], [[0, 0], [0, 0]])
    assert loss == 7.5 and grad.dtype == np.float64


# -- softmax cross-entropy ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_matches_torch(rng, dtype):
    torch = _torch()
    T, B, C = 5, 3, 7
    logits = (3 * rng.standard_normal((T, B, C))).astype(dtype)
    labels = rng.integers(0, C, size=(T, B))
    loss, grad = losses.softmax_cross_entropy(logits, labels)
    tz = torch.tensor(logits, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz.reshape(-1, C), torch.tensor(labels).reshape(-1))
    tl.backward()
    assert isinstance(loss, float)
    assert grad.dtype == np.dtype(dtype) and grad.shape == logits.shape
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(loss, tl.item(), rtol=tol)
    np.testing.assert_allclose(grad, tz.grad.numpy(), rtol=tol, atol=tol)


def test_cross_entropy_mask_matches_torch_ignore_index(rng):
    torch = _torch()
    T, B, C = 6, 4, 5
    logits = rng.standard_normal((T, B, C))
    labels = rng.integers(0, C, size=(T, B))
    mask = losses.lengths_mask([6, 1, 3, 5], T)
    labels[~mask] = -100                      # padding labels outside [0, C) are fine there
    loss, grad = losses.softmax_cross_entropy(logits, labels, mask)
    tz = torch.tensor(logits, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz.reshape(-1, C), torch.tensor(labels).reshape(-1),
                                           ignore_index=-100)
    tl.backward()
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, tz.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert np.all(grad[~mask] == 0)


def test_cross_entropy_batch_first_mask_and_garbage_at_padding(rng):
    B, T, C = 3, 4, 6
    logits = rng.standard_normal((B, T, C))
    labels = rng.integers(0, C, size=(B, T))
    mask = losses.lengths_mask([4, 2, 3], T, batch_first=True)
    ref = losses.softmax_cross_entropy(logits, labels, mask)
    logits2 = logits.copy()
    logits2[~mask] = np.nan
    labels2 = labels.copy()
    labels2[~mask] = 999
    got = losses.softmax_cross_entropy(logits2, labels2, mask)
    assert ref[0] == got[0]
    np.testing.assert_array_equal(ref[1], got[1])


def test_cross_entropy_is_stable_for_huge_logits(rng):
    logits = rng.standard_normal((4, 5))
    labels = np.array([0, 4, 2, 2])
    base = losses.softmax_cross_entropy(logits, labels)
    for shift in (1e4, -1e4):
        got = losses.softmax_cross_entropy(logits + shift, labels)
        assert np.isfinite(got[0]) and np.all(np.isfinite(got[1]))
        np.testing.assert_allclose(got[0], base[0], rtol=1e-9)
        np.testing.assert_allclose(got[1], base[1], atol=1e-12)
    # One dominant logit: loss ~ 0 or ~ the gap, never inf/nan.
    z = np.array([[1000.0, 0.0, -1000.0]])
    assert losses.softmax_cross_entropy(z, [0])[0] == 0.0
    np.testing.assert_allclose(losses.softmax_cross_entropy(z, [1])[0], 1000.0)
    np.testing.assert_allclose(losses.softmax_cross_entropy(z.astype(np.float32), [2])[0],
                               2000.0)


def test_cross_entropy_finite_differences(rng):
    logits = rng.standard_normal((3, 2, 4))
    labels = rng.integers(0, 4, size=(3, 2))
    mask = np.array([[1, 1], [0, 1], [1, 0]], dtype=bool)
    _, grad = losses.softmax_cross_entropy(logits, labels, mask)
    num = numeric_grad(lambda z: losses.softmax_cross_entropy(z, labels, mask)[0],
                       logits.copy())
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_cross_entropy_single_position_and_broadcast_mask(rng):
    loss, grad = losses.softmax_cross_entropy(np.zeros(4), 1)        # (C,), scalar label
    np.testing.assert_allclose(loss, np.log(4))
    np.testing.assert_allclose(grad, [0.25, -0.75, 0.25, 0.25])
    logits = rng.standard_normal((3, 2, 5))
    labels = rng.integers(0, 5, size=(3, 2))
    got = losses.softmax_cross_entropy(logits, labels, np.array([True, False]))   # (B,)
    ref = losses.softmax_cross_entropy(logits[:, :1], labels[:, :1])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-12)


# -- lengths_mask ------------------------------------------------------------------------------
def test_lengths_mask():
    m = losses.lengths_mask([3, 0, 1], 4)
    assert m.dtype == bool and m.shape == (4, 3)
    np.testing.assert_array_equal(m.astype(int), [[1, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(losses.lengths_mask([3, 0, 1], 4, batch_first=True), m.T)
    assert losses.lengths_mask(np.array([2, 2], dtype=np.int32), 2).all()


@pytest.mark.parametrize("lengths, T, exc, match", [
    ([1, 5], 4, ValueError, "lengths"),
    ([-1, 2], 4, ValueError, "lengths"),
    ([[1, 2]], 4, ValueError, "lengths"),
    ([1.5, 2], 4, TypeError, "lengths"),
    ([1, 2], -1, ValueError, "T"),
    ([1, 2], 2.0, TypeError, "T"),
])
def test_lengths_mask_errors(lengths, T, exc, match):
    with pytest.raises(exc, match=match):
        losses.lengths_mask(lengths, T)


# -- errors ------------------------------------------------------------------------------------
def test_mse_errors():
    p = np.zeros((3, 2, 4))
    with pytest.raises(ValueError, match="target"):
        losses.mse(p, np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match="mask"):
        losses.mse(p, p, np.ones((2, 3), dtype=bool))        # (B, T) for a (T, B, F) pred
    with pytest.raises(ValueError, match="mask"):
        losses.mse(p, p, np.ones((3, 2, 4, 1), dtype=bool))
    with pytest.raises(ValueError, match="mask selects no elements"):
        losses.mse(p, p, np.zeros((3, 2), dtype=bool))
    with pytest.raises(ValueError, match="mask"):
        losses.mse(p, p, np.full((3, 2), 0.5))               # weights are not masks
    with pytest.raises(TypeError, match="mask"):
        losses.mse(p, p, np.full((3, 2), "x"))
    with pytest.raises(TypeError, match="pred"):
        losses.mse(np.zeros(3, dtype=complex), np.zeros(3))
    with pytest.raises(TypeError, match="target"):
        losses.mse(np.zeros(3), np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match="pred is empty"):
        losses.mse(np.zeros((0, 2)), np.zeros((0, 2)))


def test_cross_entropy_errors():
    z = np.zeros((3, 2, 4))
    y = np.zeros((3, 2), dtype=int)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\).*got 4 at index \(1, 0\)"):
        bad = y.copy()
        bad[1, 0] = 4
        losses.softmax_cross_entropy(z, bad)
    with pytest.raises(ValueError, match="labels must lie"):
        bad = y.copy()
        bad[2, 1] = -1
        losses.softmax_cross_entropy(z, bad)
    with pytest.raises(TypeError, match="labels must be integers"):
        losses.softmax_cross_entropy(z, y.astype(float))
    with pytest.raises(ValueError, match="labels must have shape"):
        losses.softmax_cross_entropy(z, np.zeros((2, 3), dtype=int))
    with pytest.raises(ValueError, match="mask"):
        losses.softmax_cross_entropy(z, y, np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="mask selects no elements"):
        losses.softmax_cross_entropy(z, y, np.zeros((3, 2), dtype=bool))
    with pytest.raises(ValueError, match="logits"):
        losses.softmax_cross_entropy(np.zeros((3, 0)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="logits"):
        losses.softmax_cross_entropy(np.float64(1.0), 0)
    with pytest.raises(TypeError, match="logits"):
        losses.softmax_cross_entropy(np.zeros((2, 3), dtype=bool), [0, 1])
