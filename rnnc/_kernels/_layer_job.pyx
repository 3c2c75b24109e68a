"""Job descriptions of the one-thread layer kernels (rnnc/_kernels/_lstm_kernel.pyx,
_gru_kernel.pyx, _rnn_kernel.pyx): one layer and direction's arrays, passed to an entry point
as one object (as oneDNN passes a primitive's configuration) instead of two dozen arguments.

The kernels turn the attributes they read into typed memoryviews, which checks dtype, rank and
C-contiguity as the arguments' conversion did. An attribute left unset (None) or zero-size
means none, where an array is optional. The arrays must stay unchanged until the call
returns."""


cdef class _Described:
    """Attributes settable by keyword: LayerForward(x=..., h=...)."""

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)


cdef class LayerForward(_Described):
    """One layer and direction's forward over a packed sequence (lstm_forward, gru_forward,
    rnn_forward). G gates (LSTM 4, GRU 3, RNN 1), H hidden units, P = H or proj_size (LSTM).

    x (N, I) the packed input, batch_sizes and offsets (T,) its layout, reverse the direction;
    w_ih (G*H, I), w_hh (G*H, P), b_ih and b_hh (G*H,) or none; w_hr (P, H) LSTM's projection
    or none. h (B, P) and c (B, H, LSTM) the state in/out; out the output, written at columns
    [col0, col0 + P). xg (chunk_steps * B, G*H) workspace, or (N, G*H) in training (then
    chunk_steps = T), where it receives the activations; hbuf (B, H) LSTM projection
    workspace; hg (B, G*H) and rh (B, H; reset_after=False) GRU workspace. Training: h_prev
    (N, P) receives the state before each step, c_prev (N, H) LSTM's cell state, hn_keep (N, H)
    GRU's W_hn h + b_hn (reset_after); none in inference. w_hh_packed, w_ih_packed, w_hr_packed
    (LSTM) and w_hn_packed (GRU, reset_after=False; w_hh_packed then holds [W_hr; W_hz]^T):
    W^T in the small-batch kernel's panels, selecting it for that product, or none;
    ih_per_panel: w_ih_packed is one panel's buffer, filled as the projection goes.
    reset_after (GRU) and relu (RNN) select the cell's variant.
    The options kernel (options_forward) reads also cell_spec (float64 (11,): the cell
    options, rnnc/_engine/runners/options.py), w_p (3H,) LSTM peepholes or none, xg as its
    pre-activations (kept raw in training), hg (B, G*H) workspace and keep (N, H) or none:
    GRU's W_hn h + b_hn or r * h, the projected LSTM's o * h(c), in training."""


cdef class LayerBackward(_Described):
    """One layer and direction's BPTT after a training forward (lstm_backward, gru_backward,
    rnn_backward, lstm_fused_backward and its parts). Shapes as in LayerForward.

    x (N, I) the layer's packed input (fused LSTM: xh (N, I + H + 1), [x | h<t-1> | 1] as the
    fused training forward left it); act (N, G*H) the kept activations, overwritten with dA;
    h_prev and c_prev (LSTM) the kept states before each step; hn (N, H, GRU) W_hn h + b_hn
    (reset_after) or workspace. dout the output gradient at columns col0; dh (B, P) and dc
    (B, H, LSTM) the final states' gradients in, the initial states' out. dx (N, I) written,
    or added to when add_dx; dw_ih, dw_hh (and dw_hr, LSTM projection) written; db_ih, db_hh
    added to, or none without bias. Workspace: tc_row (H,) and db_acc (4H or H,), LSTM with
    projection dhh (B, H), hbuf_all (N, H), dhp_all (N, P); GRU work (B, 3H); fused LSTM
    dw_cat (4H, I + H + 1). w_hh_packed, w_hr_packed, w_hn_packed, w_ih_packed (fused LSTM,
    for dx): the weights in the small-batch kernel's panels, or none (BLAS).
    The options kernel (options_backward) reads also cell_spec, w_p and dw_p (added to), act
    (the kept pre-activations, overwritten with their gradients), keep (as its forward left
    it; overwritten), dhp_all (N, P) workspace with a projection, work (B, G*H)."""


include "_configure.pxi"
