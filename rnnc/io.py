"""Saving and loading modules in the safetensors format: ``rnnc.save(module, path)``,
``rnnc.load(path)``.

A file holds the module's ``state_dict()`` -- the tensors, under PyTorch's names
(``weight_ih_l0``; ``0.weight_ih_l0`` inside a ``Sequential``; ``forward_layer.bias_hh_l0`` in
a ``Bidirectional``), in the module's dtype -- and, in the header's metadata (a str -> str
map in safetensors), what rebuilds the module:

- ``"format"``: ``"pt"``, the value PyTorch's own safetensors files carry, so tools that look
  for it read the tensors as a PyTorch state_dict;
- ``"rnnc.version"``: the ``rnnc.__version__`` that wrote the file;
- ``"rnnc.format"``: the version of this layout, ``"1"``;
- ``"rnnc.module"``: JSON of the module's description, ``{"class": name, "config": {...},
  "training": bool, "frozen": bool}`` where ``config`` is the constructor's keyword arguments
  (``_config()``: dtypes as their names, e.g. ``"float32"``) and containers add
  ``"children"``: a list of descriptions for ``Sequential``, ``{"forward_layer": ...,
  "backward_layer": ...}`` for ``Bidirectional``.

Loading never runs code from the file: no pickle, JSON only, and classes only from an
allow-list (``CLASSES``, filled by ``register``); a class name outside it is a ValueError
naming it. The module is built with its constructor, then gets the tensors through
``load_state_dict`` (strict: every key, every shape), so the round trip is bit-exact.

A PyTorch user reads the tensors with ``safetensors.torch.load_file(path)`` and loads them
into ``torch.nn.LSTM(...)`` (or GRU, RNN, Linear) with ``load_state_dict``.

Other modules register with one line (their class needs ``_config()``, ``state_dict()`` and
``load_state_dict()``; containers also ``_io_children()`` and a classmethod
``_io_build(config, children)``)::

    @rnnc.io.register
    class MyPooling(rnnc._module.Module): ...

Needs the ``safetensors`` package: ``pip install rnnc[safetensors]``.
"""
import json

import numpy as np

__all__ = ["save", "load", "register", "CLASSES", "FORMAT_VERSION"]

FORMAT_VERSION = "1"

# Name in the file -> class. Filled by register(); rnnc's own classes are added on first use
# (importing them here would make a cycle with modules that register themselves).
CLASSES = {}


def register(cls=None, *, name=None):
    """Allow ``cls`` in files: ``rnnc.save`` writes it under ``name`` (default: the class
    name) and ``rnnc.load`` builds it from that name. Usable as a decorator, with or without
    ``name=``. Returns the class."""
    def add(c):
        key = c.__name__ if name is None else name
        if not isinstance(key, str) or not key:
            raise TypeError(f"name must be a non-empty string, got {key!r}")
        known = CLASSES.get(key)
        if known is not None and known is not c:
            raise ValueError(f"the name {key!r} is already registered for "
                             f"{known.__module__}.{known.__qualname__}")
        CLASSES[key] = c
        return c
    return add if cls is None else add(cls)


def _builtin_classes():
    if "LSTM" in CLASSES:
        return
    import rnnc
    from rnnc import reference
    for name in ("RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "Linear",
                 "Bidirectional", "Sequential", "Pool"):
        register(getattr(rnnc, name))
    # The NumPy reference classes share the API; saved under their own names.
    for name in ("RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "Linear",
                 "Bidirectional"):
        register(getattr(reference, name), name=f"reference.{name}")


def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError as exc:
        raise ImportError("rnnc.save and rnnc.load need the safetensors package: "
                          "pip install rnnc[safetensors] (or pip install safetensors)") from exc
    return safetensors.numpy


# -- the description ------------------------------------------------------------------------------
def _children(module):
    """A container's parts: {"key": child} (Bidirectional) or [children] (Sequential)."""
    hook = getattr(module, "_io_children", None)
    if hook is not None:
        return hook()
    from rnnc.bidirectional import Bidirectional
    from rnnc.sequential import Sequential
    if isinstance(module, Sequential):
        return list(module)
    if isinstance(module, Bidirectional):
        return {"forward_layer": module.forward_layer, "backward_layer": module.backward_layer}
    return None


def _json_value(value, where):
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value).name
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_json_value(v, where) for v in value]
    raise TypeError(f"{where}: cannot store {type(value).__name__} {value!r} in a file's "
                    "metadata (JSON values and dtypes only)")


def describe(module, where="module"):
    """The JSON-able description of ``module`` that ``rnnc.save`` writes (see the module
    docstring)."""
    _builtin_classes()
    names = {c: n for n, c in CLASSES.items()}
    name = names.get(type(module))
    if name is None:
        raise TypeError(f"{where} is a {type(module).__module__}.{type(module).__qualname__}, "
                        "which rnnc.save does not know: register the class with "
                        "rnnc.io.register")
    config = getattr(module, "_config", None)
    if config is None:
        raise TypeError(f"{where} ({name}) has no _config(): a registered class needs one")
    out = {"class": name,
           "config": {k: _json_value(v, f"{where}.{k}") for k, v in config().items()},
           "training": bool(getattr(module, "training", False)),
           "frozen": bool(getattr(module, "frozen", False))}
    children = _children(module)
    if isinstance(children, dict):
        out["children"] = {k: describe(c, f"{where}.{k}") for k, c in children.items()}
    elif children is not None:
        out["children"] = [describe(c, f"{where}[{i}]") for i, c in enumerate(children)]
    return out


def _check_description(d, where):
    if not isinstance(d, dict):
        raise ValueError(f"{where}: a module description must be a JSON object, got "
                         f"{type(d).__name__}")
    unknown = sorted(set(d) - {"class", "config", "training", "frozen", "children"})
    if unknown:
        raise ValueError(f"{where}: unknown entries {unknown} in a module description")
    name = d.get("class")
    if not isinstance(name, str):
        raise ValueError(f"{where}: 'class' must be a string, got {name!r}")
    cls = CLASSES.get(name)
    if cls is None:
        raise ValueError(f"{where}: unknown class {name!r}: rnnc.load builds only registered "
                         f"classes ({', '.join(sorted(CLASSES))}); register it with "
                         "rnnc.io.register")
    config = d.get("config", {})
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise ValueError(f"{where}: 'config' of {name} must be a JSON object")
    for flag in ("training", "frozen"):
        if not isinstance(d.get(flag, False), bool):
            raise ValueError(f"{where}: {flag!r} must be true or false, got {d[flag]!r}")
    return cls, config


def build(d, where="module"):
    """A module from its description (parameters freshly initialised): the inverse of
    ``describe``, for allow-listed classes only."""
    _builtin_classes()
    cls, config = _check_description(d, where)
    children = d.get("children")
    try:
        if children is None:
            # A fixed seed: the values drawn are overwritten by the file's, and rnnc's global
            # seed sequence (rnnc.manual_seed) stays where the user's script left it.
            import inspect
            takes_seed = "seed" in inspect.signature(cls).parameters
            module = cls(**config, **({"seed": 0} if takes_seed and "seed" not in config
                                      else {}))
        else:
            if isinstance(children, dict):
                parts = {k: build(c, f"{where}.{k}") for k, c in children.items()}
            elif isinstance(children, list):
                parts = [build(c, f"{where}[{i}]") for i, c in enumerate(children)]
            else:
                raise ValueError(f"{where}: 'children' must be a list or an object")
            module = _build_container(cls, config, parts)
    except (TypeError, ValueError) as exc:
        if str(exc).startswith(where):
            raise
        raise ValueError(f"{where}: cannot build {d['class']} from the file's configuration "
                         f"{config}: {exc}") from exc
    _set_training(module, d)
    return module


def _set_training(module, d):
    """Give `module` and its children the training flags of their descriptions: the container
    first, as train() on a container sets every child."""
    module.train(bool(d.get("training", False)))
    children = d.get("children")
    if children is not None:
        parts = _children(module)
        pairs = ([(parts[k], c) for k, c in children.items()] if isinstance(parts, dict)
                 else zip(parts, children))
        for part, c in pairs:
            _set_training(part, c)


def _build_container(cls, config, parts):
    hook = getattr(cls, "_io_build", None)
    if hook is not None:
        return hook(config, parts)
    from rnnc.bidirectional import Bidirectional
    from rnnc.sequential import Sequential
    if issubclass(cls, Sequential):
        if not isinstance(parts, list):
            raise ValueError("a Sequential's children must be a list")
        return cls(*parts, **config)
    if issubclass(cls, Bidirectional):
        if not isinstance(parts, dict) or set(parts) != {"forward_layer", "backward_layer"}:
            raise ValueError("a Bidirectional's children must be forward_layer and "
                             "backward_layer")
        return cls(parts["forward_layer"], backward_layer=parts["backward_layer"], **config)
    raise ValueError(f"{cls.__name__} takes no children (it has no _io_build)")


def _freeze_as_described(module, d):
    """Freeze what was frozen: after the weights are in, so the packs are made for them."""
    if d.get("frozen", False) and hasattr(module, "freeze"):
        module.freeze()
        return
    children = d.get("children")
    parts = _children(module)
    if isinstance(children, dict) and isinstance(parts, dict):
        for k, c in children.items():
            _freeze_as_described(parts[k], c)
    elif isinstance(children, list) and isinstance(parts, list):
        for part, c in zip(parts, children):
            _freeze_as_described(part, c)


# -- files --------------------------------------------------------------------------------------
def save(module, path):
    """Write ``module`` to ``path`` in the safetensors format.

    The tensors are ``module.state_dict()`` under PyTorch's names, in the module's dtype;
    the header's metadata holds the class, the constructor's configuration (nested for
    ``Sequential`` and ``Bidirectional``), the training and frozen flags and
    ``rnnc.__version__`` (see rnnc.io). Gradients, optimizer state and the module's random
    generator are not saved.

    Parameters
    ----------
    module : an rnnc module (RNN, GRU, LSTM, a cell, Linear, Bidirectional, Sequential, or a
        class registered with ``rnnc.io.register``)
    path : str or os.PathLike

    Examples
    --------
    >>> import os, tempfile, numpy as np, rnnc
    >>> m = rnnc.LSTM(3, 8, num_layers=2, seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "lstm.safetensors")
    >>> rnnc.save(m, path)
    >>> m2 = rnnc.load(path)
    >>> m2
    LSTM(3, 8, num_layers=2, dtype='float32')
    >>> bool((m2.weight_hh_l1 == m.weight_hh_l1).all())
    True
    """
    st = _safetensors_numpy()
    from rnnc import __version__
    desc = describe(module)
    tensors = {k: np.ascontiguousarray(v) for k, v in module.state_dict().items()}
    metadata = {"format": "pt", "rnnc.version": __version__, "rnnc.format": FORMAT_VERSION,
                "rnnc.module": json.dumps(desc, sort_keys=True)}
    st.save_file(tensors, path, metadata=metadata)


def load(path):
    """Read a module written by ``rnnc.save``.

    The module is built from the file's description (allow-listed classes only; nothing in
    the file is executed), then its parameters are loaded, bit for bit, strictly: a missing,
    extra or misshapen tensor is a ValueError, as is a file without rnnc's metadata or of a
    newer layout.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    The module, in training mode if it was saved so, frozen if it was frozen.
    """
    st = _safetensors_numpy()
    from safetensors import safe_open
    with safe_open(path, framework="np") as f:
        metadata = f.metadata() or {}
    if "rnnc.module" not in metadata:
        raise ValueError(f"{path} has no rnnc metadata ('rnnc.module'): not written by "
                         "rnnc.save; read its tensors with safetensors.numpy.load_file and "
                         "load them with module.load_state_dict")
    version = metadata.get("rnnc.format", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} is in rnnc's file layout {version!r}; this rnnc reads "
                         f"{FORMAT_VERSION!r} (written by rnnc {metadata.get('rnnc.version')})")
    try:
        desc = json.loads(metadata["rnnc.module"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the 'rnnc.module' metadata is not valid JSON: {exc}") from exc
    module = build(desc)
    tensors = st.load_file(path)
    try:
        module.load_state_dict(tensors, strict=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: the tensors do not fit the {desc['class']} the file "
                         f"describes: {exc}") from exc
    _freeze_as_described(module, desc)
    return module
