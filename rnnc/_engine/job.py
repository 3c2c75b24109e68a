"""What a runner is handed: the arrays of one layer and direction (forward), and of its
gradients (backward). The stack loop (rnnc/_engine/stack.py) fills them; runners only read."""


class LayerJob:
    """One layer and direction of a forward call.

    x (N, I) the layer's input rows in packed layout; layout (rnnc/_engine/layout.py); reverse;
    d the direction (0 or 1: names its scratch buffers); w_ih, w_hh, b_ih, b_hh, w_hr, w_p its
    parameters (zero-size when absent; w_p: LSTM peepholes); h (B, P), c (B, H) or None its
    state, updated in place;
    out (N, D * P) the layer's output, this direction's columns from col0; packs, name: a
    frozen module's kept weights and this layer and direction's key in them (packs None
    otherwise)."""
    __slots__ = ("x", "layout", "reverse", "d", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "w_p",
                 "h", "c", "out", "col0", "packs", "name")

    def __init__(self, x, layout, reverse, d, w_ih, w_hh, b_ih, b_hh, w_hr, w_p, h, c, out, col0,
                 packs, name):
        self.x, self.layout, self.reverse, self.d = x, layout, reverse, d
        self.w_ih, self.w_hh, self.b_ih, self.b_hh, self.w_hr = w_ih, w_hh, b_ih, b_hh, w_hr
        self.w_p = w_p
        self.h, self.c, self.out, self.col0, self.packs, self.name = h, c, out, col0, packs, name


class BackwardJob:
    """One layer and direction of a backward call.

    x, layout, reverse, d, w_ih, w_hh, w_hr as in LayerJob; kept what the forward's runner
    returned; dout (N, D * P) the gradient of the layer's output (this direction's columns
    from col0); dh (B, P), dc (B, H) or None the state gradients, updated in place; dx (N, I)
    the input gradient, written or (add_dx) added to; dw_ih, dw_hh, db_ih, db_hh, dw_hr, dw_p
    the parameter gradients, added to (w_p, dw_p: LSTM peepholes, zero-size when absent)."""
    __slots__ = ("x", "layout", "reverse", "d", "w_ih", "w_hh", "w_hr", "w_p", "kept", "dout",
                 "col0", "dh", "dc", "dx", "add_dx", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr",
                 "dw_p")

    def __init__(self, **fields):
        for k, v in fields.items():
            setattr(self, k, v)
