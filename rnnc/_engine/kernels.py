"""The compiled kernels (rnnc/_kernels/), imported on first use rather than with rnnc: they
cimport scipy.linalg.cython_blas, and importing scipy.linalg is most of `import rnnc`'s cost."""


class _Kernels:
    """The kernels' entry points as attributes, looked up once: an import statement in a
    function costs ~0.7 us a call even when the module is loaded."""

    def __getattr__(self, name):
        from rnnc._kernels import (
            _blas,
            _gru_kernel,
            _layer_job,
            _lstm_kernel,
            _options_kernel,
            _parallel_forward,
            _parallel_train,
            _rnn_kernel,
        )
        for module in (_lstm_kernel, _gru_kernel, _rnn_kernel, _layer_job, _blas,
                       _parallel_forward, _parallel_train, _options_kernel):
            if hasattr(module, name):
                value = getattr(module, name)
                setattr(self, name, value)
                return value
        raise AttributeError(name)


K = _Kernels()
