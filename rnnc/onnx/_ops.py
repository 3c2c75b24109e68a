"""A small NumPy interpreter for the glue around recurrent nodes.

Only the ops that ``torch.onnx.export`` and ``rnnc.onnx.export`` put around RNN / GRU / LSTM
nodes (reshaping, slicing, constants) and a dense head (MatMul, Gemm, Add and activations) are
here; ``OPS`` is the list ``load`` accepts, and any other op is refused when a model is loaded.
Each function takes the node's input arrays (None for an omitted optional input) and its
attributes, and returns its outputs.
"""
import numpy as np
from onnx import helper, numpy_helper


def _axes(inputs, attributes, position=1):
    """Axes from the input at ``position`` (opset >= 13) or the 'axes' attribute (older)."""
    if len(inputs) > position and inputs[position] is not None:
        return [int(a) for a in inputs[position]]
    return attributes.get("axes")


def _transpose(inputs, a):
    return [np.transpose(inputs[0], a.get("perm"))]


def _squeeze(inputs, a):
    axes = _axes(inputs, a)
    return [np.squeeze(inputs[0], axis=None if axes is None else tuple(axes))]


def _unsqueeze(inputs, a):
    x = inputs[0]
    axes = sorted(ax % (x.ndim + len(_axes(inputs, a))) for ax in _axes(inputs, a))
    for ax in axes:
        x = np.expand_dims(x, ax)
    return [x]


def _concat(inputs, a):
    return [np.concatenate([x for x in inputs if x is not None], axis=a["axis"])]


def _reshape(inputs, a):
    x, shape = inputs[0], [int(s) for s in inputs[1]]
    if not a.get("allowzero", 0):       # 0 copies the input's dimension
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _shape(inputs, a):
    shape = np.array(inputs[0].shape, dtype=np.int64)
    return [shape[a.get("start", 0):a.get("end", None)]]


def _gather(inputs, a):
    return [np.take(inputs[0], inputs[1].astype(np.int64), axis=a.get("axis", 0))]


def _slice(inputs, a):
    x = inputs[0]
    if len(inputs) > 1:
        starts, ends = inputs[1], inputs[2]
        axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
        steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    else:                               # opset < 10: attributes
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes", range(len(starts))), [1] * len(starts)
    index = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        # Python's slice clamps the huge sentinels exporters use for "to the end".
        index[int(ax)] = slice(int(s), int(e), int(st))
    return [x[tuple(index)]]


def _constant(inputs, a):
    for name, value in a.items():
        if name == "value":
            return [value]
        if name in ("value_float", "value_int"):
            return [np.array(value, np.float32 if name == "value_float" else np.int64)]
        if name in ("value_floats", "value_ints"):
            return [np.array(value, np.float32 if name == "value_floats" else np.int64)]
    raise ValueError(f"Constant node has no value rnnc can read (attributes {sorted(a)})")


def _constant_of_shape(inputs, a):
    value = a.get("value", np.zeros(1, np.float32))
    return [np.full([int(s) for s in inputs[0]], value.reshape(-1)[0], dtype=value.dtype)]


def _cast(inputs, a):
    return [inputs[0].astype(helper.tensor_dtype_to_np_dtype(a["to"]))]


def _gemm(inputs, a):
    A, B = inputs[0], inputs[1]
    A = A.T if a.get("transA", 0) else A
    B = B.T if a.get("transB", 0) else B
    y = a.get("alpha", 1.0) * (A @ B)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + a.get("beta", 1.0) * inputs[2]
    return [y.astype(A.dtype, copy=False)]


def _softmax(inputs, a):
    x = inputs[0]
    z = np.exp(x - x.max(axis=a.get("axis", -1), keepdims=True))
    return [z / z.sum(axis=a.get("axis", -1), keepdims=True)]


def _same_dtype(f):
    """Elementwise ops keep the dtype of their first input, as ONNX's type rules say."""
    return lambda inputs, a: [np.asarray(f(*inputs)).astype(inputs[0].dtype, copy=False)]


OPS = {
    "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Concat": _concat,
    "Reshape": _reshape, "Shape": _shape, "Gather": _gather, "Slice": _slice,
    "Constant": _constant, "ConstantOfShape": _constant_of_shape,
    "Identity": lambda inputs, a: [inputs[0]], "Cast": _cast,
    "MatMul": _same_dtype(np.matmul), "Gemm": _gemm,
    "Add": _same_dtype(np.add), "Sub": _same_dtype(np.subtract),
    "Mul": _same_dtype(np.multiply), "Div": _same_dtype(np.divide),
    "Relu": _same_dtype(lambda x: np.maximum(x, 0)), "Tanh": _same_dtype(np.tanh),
    "Sigmoid": _same_dtype(lambda x: 1 / (1 + np.exp(-x))), "Softmax": _softmax,
}


def attributes_of(node):
    """A node's attributes as Python values (strings decoded, tensors as arrays)."""
    out = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        elif hasattr(value, "data_type"):       # a TensorProto
            value = numpy_helper.to_array(value)
        out[attribute.name] = value
    return out
